/* lib/gpu pieces that need no GPU: argument and layout checks before any CUDA call, the UUID
 * format, the failure path of the GPU readiness gate (a CPU store that must release CPU
 * waiters with the error), and the CPU-only build's CF_ENODEV. The GPU halves are checked by
 * tests/kernels/kt_gpupath.cu on a device (tests/device/run.sh). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cf_test.h"
#include "gpu/cf_gpu.h"
#include "gpu/cf_gpu_kv.h"
#include "gpu/cf_gpu_load.h"
#include "gpu/cf_gpu_ready.h"

CF_TEST(gpu_uuid_string_matches_nvidia_smi_format) {
  uint8_t u[16];
  for (int i = 0; i < 16; i++) u[i] = (uint8_t)(0x10 * (i % 16) + i);
  char s[48];
  cf_gpu_uuid_str(u, s);
  CF_CHECK_MSG(strcmp(s, "GPU-00112233-4455-6677-8899-aabbccddeeff") == 0, "got %s", s);
}

/* What engines send (nvidia-smi -L, cf_gpu_uuid_str, MIG instances, torch's bare form) parses
 * to the same 16 bytes; anything else is refused naming the string. */
CF_TEST(gpu_uuid_parse_accepts_the_driver_spellings_and_nothing_else) {
  uint8_t u[16], got[16];
  for (int i = 0; i < 16; i++) u[i] = (uint8_t)(0x10 * (i % 16) + i);
  char s[48];
  cf_gpu_uuid_str(u, s);
  const char *ok[] = {s, "GPU-00112233-4455-6677-8899-AABBCCDDEEFF", "MIG-00112233-4455-6677-8899-aabbccddeeff",
                      "00112233-4455-6677-8899-aabbccddeeff", "00112233445566778899aabbccddeeff"};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    memset(got, 0xA5, sizeof got);
    CF_CHECK_MSG(cf_gpu_uuid_parse(ok[i], got) == 0, "%s: %s", ok[i], cf_errmsg());
    CF_CHECK_MSG(memcmp(got, u, 16) == 0, "%s parsed to other bytes", ok[i]);
  }
  const char *bad[] = {"", "GPU-", "GPU-00112233-4455-6677-8899-aabbccddeef",    /* one digit short */
                       "GPU-00112233-4455-6677-8899-aabbccddeeff0",                  /* one too many */
                       "GPU-0011223-34455-6677-8899-aabbccddeeff",                   /* dash misplaced */
                       "GPU-00112233-4455-6677-8899-aabbccddeefg",                   /* not hex */
                       "MIG-GPU-00112233-4455-6677-8899-aabbccddeeff/1/0",           /* old MIG form */
                       "gpu-00112233-4455-6677-8899-aabbccddeeff", "GPU-00112233-4455-6677-8899-aabbccddeeff "};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CF_CHECK_MSG(cf_gpu_uuid_parse(bad[i], got) == CF_EINVAL, "'%s' accepted", bad[i]);
    CF_CHECK_CONTAINS(cf_errmsg(), bad[i]);
  }
  CF_CHECK_EQ(cf_gpu_uuid_parse(NULL, got), CF_EINVAL);
}

CF_TEST(gpu_kv_rejects_bad_layouts_before_touching_a_gpu) {
  cf_kv_layout_t lay;
  CF_CHECK_OK(cf_kv_layout_init(&lay, 2, 8, 16, 2, 64, CF_DT_F32));
  cf_gpu_ipc_handle_t h[2];
  memset(h, 0, sizeof h);
  uint8_t uuid[16] = {0};
  cf_gpu_kv_t kv;
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &lay, h, NULL, h, NULL), CF_EDTYPE);
  CF_CHECK(strstr(cf_errmsg(), "2-byte") != NULL);
  CF_CHECK_OK(cf_kv_layout_init(&lay, 2, 8, 16, 2, 64, CF_DT_BF16));
  cf_kv_layout_t bad = lay;
  bad.token_stride = 64; /* smaller than one token's heads (2 x 128 bytes) in NHD order */
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &bad, h, NULL, h, NULL), CF_ESHAPE);
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &lay, NULL, NULL, h, NULL), CF_EINVAL);
  CF_CHECK(kv.k == NULL && kv.n_opened == 0);
  /* what the paged kernels cannot address (one set of strides, contiguous head vectors, whole
   * rows): refused naming it, before any GPU call */
  bad = lay;
  bad.dim_stride = 4; bad.head_stride = 64 * 4; bad.token_stride = 2 * 64 * 4; bad.block_stride = 16 * 2 * 64 * 4;
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &bad, h, NULL, h, NULL), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "dim_stride 4");
  bad = lay;
  bad.vs = (cf_kv_strides_t){lay.block_stride, lay.token_stride, lay.head_stride * 2, 2};
  bad.vs.token = lay.head_stride * 4; bad.vs.block = bad.vs.token * 16;
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &bad, h, NULL, h, NULL), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "V strides");
  CF_CHECK_OK(cf_kv_layout_init(&bad, 2, 8, 16, 1, 64, CF_DT_BF16));
  bad.head0 = 1; bad.model_heads = 2;
  CF_CHECK_EQ(cf_gpu_kv_open(&kv, 0, uuid, &bad, h, NULL, h, NULL), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "TP shard");
  /* a good layout gets as far as the device: no GPU here, so ENODEV (or ECUDA from a driver
   * stub), never success */
  int rc = cf_gpu_kv_open(&kv, 0, uuid, &lay, h, NULL, h, NULL);
  CF_CHECK_MSG(rc == CF_ENODEV || rc == CF_ECUDA, "got %s: %s", cf_err_name(rc), cf_errmsg());
  cf_gpu_kv_close(&kv);
}

CF_TEST(gpu_ipc_export_refuses_host_memory) {
  static uint8_t host[4096];
  cf_gpu_ipc_handle_t h;
  uint64_t off = 7;
  int rc = cf_gpu_ipc_export(host + 64, &h, &off);
  /* EINVAL naming the pointer (with CUDA), ENODEV in a build without it; never a handle */
  CF_CHECK_MSG(rc == CF_EINVAL || rc == CF_ENODEV, "got %s: %s", cf_err_name(rc), cf_errmsg());
  if (rc == CF_EINVAL) CF_CHECK(strstr(cf_errmsg(), "not device memory") != NULL);
  CF_CHECK_EQ(off, 7);
}

CF_TEST(gpu_kv_wrap_keeps_per_layer_pointers) {
  cf_kv_layout_t lay;
  CF_CHECK_OK(cf_kv_layout_init(&lay, 3, 4, 16, 2, 64, CF_DT_BF16));
  uint8_t *k[3] = {(uint8_t *)0x1000, (uint8_t *)0x9000, (uint8_t *)0x11000};
  uint8_t *v[3] = {(uint8_t *)0x5000, (uint8_t *)0xd000, (uint8_t *)0x800};
  cf_gpu_kv_t kv;
  CF_CHECK_OK(cf_gpu_kv_wrap(&kv, 0, &lay, k, v));
  for (int l = 0; l < 3; l++) { CF_CHECK(kv.k[l] == k[l]); CF_CHECK(kv.v[l] == v[l]); }
  CF_CHECK_EQ(kv.layout.block_stride, 16 * 2 * 64 * 2);
  cf_gpu_kv_close(&kv);
  CF_CHECK(kv.k == NULL);
  cf_gpu_kv_close(&kv); /* twice is fine */
}

typedef struct {
  cf_ready_t *r;
  int rc;
  uint64_t seen;
} waiter_t;

static void *wait_thread(void *p) {
  waiter_t *w = p;
  w->rc = cf_ready_wait(w->r, 1, 3, 5000000000LL, &w->seen);
  return NULL;
}

/* A fresh counter file `name` in the test's directory with n_slots slots. */
static int ready_file(cf_ready_t *r, const char *name, int n_slots) {
  char path[1100];
  snprintf(path, sizeof path, "%s/%s", cf_test_tmpdir(), name);
  return cf_ready_create(r, path, n_slots);
}

CF_TEST(gpu_ready_fail_opens_gate_and_wakes_cpu_waiters_with_the_error) {
  cf_ready_t r;
  CF_CHECK_OK(ready_file(&r, "ready", 4));
  cf_ready_begin(&r, 1, 77);
  cf_ready_publish(&r, 1, 1);
  CF_CHECK_EQ(atomic_load(&r.slots[1].gate), 0);
  waiter_t w = {&r, 1, 0};
  pthread_t th;
  pthread_create(&th, NULL, wait_thread, &w);
  usleep(20000);
  cf_gpu_ready_t g;
  memset(&g, 0, sizeof g);
  g.r = &r; /* the failure path is CPU-only: it must work when the GPU side is broken */
  cf_gpu_ready_fail(&g, 1, CF_EIO, NULL);
  pthread_join(th, NULL);
  CF_CHECK_EQ(w.rc, CF_EIO);
  CF_CHECK_EQ(w.seen, 1);
  CF_CHECK_EQ(atomic_load(&r.slots[1].gate), CF_READY_GATE_OPEN);
  CF_CHECK_EQ(atomic_load(&r.slots[1].layers), 1); /* CPU waiters still see the true count */
  cf_gpu_ready_fail(&g, 9, CF_EIO, NULL); /* out of range: ignored, not a crash */
  cf_ready_begin(&r, 1, 78);        /* a new restore closes the gate again */
  CF_CHECK_EQ(atomic_load(&r.slots[1].gate), 0);
  cf_ready_close(&r);
}

CF_TEST(gpu_loader_and_ready_refuse_without_a_gpu) {
  cf_gpu_loader_t ld;
  int rc = cf_gpu_loader_init(&ld, CF_GPU_LOAD_STAGED, 0);
  if (rc == 0) { /* a GPU after all (a developer machine): nothing to check here */
    cf_gpu_loader_close(&ld);
    cf_test_skip("a CUDA device is present: kt_gpupath covers it");
    return;
  }
  CF_CHECK_MSG(rc == CF_ENODEV || rc == CF_ECUDA, "got %s", cf_err_name(rc));
  CF_CHECK(ld.scatter == NULL);
  CF_CHECK(cf_gpu_pinned_alloc(1 << 20, NULL) == NULL); /* nothing to pin with: NULL, no leak */
  int32_t t[2] = {0, 1};
  rc = cf_gpu_loader_set_table(&ld, t, 2); /* a failed init leaves nothing usable */
  CF_CHECK_MSG(rc == CF_EINVAL || rc == CF_ENODEV, "got %s", cf_err_name(rc));
  cf_ready_t r;
  CF_CHECK_OK(ready_file(&r, "ready2", 2));
  cf_gpu_ready_t g;
  rc = cf_gpu_ready_init(&g, &r, 0);
  CF_CHECK_MSG(rc == CF_ENODEV || rc == CF_ECUDA, "got %s", cf_err_name(rc));
  cf_gpu_ready_close(&g);
  cf_ready_close(&r);
  cf_gpu_loader_close(&ld);
}

/* The host callback of a GPU publish / finish (cf_gpu_ready_apply): it runs whenever the side
 * stream gets to it, possibly after the slot was failed or begun again for another request. */
CF_TEST(gpu_ready_late_callbacks_do_not_touch_a_reused_or_failed_slot) {
  cf_ready_t r;
  CF_CHECK_OK(ready_file(&r, "ready_cb", 2));
  cf_ready_begin(&r, 0, 100);
  cf_gpu_ready_apply(&r, 0, 100, 2, 0); /* this request's publish: counts */
  CF_CHECK_EQ(atomic_load(&r.slots[0].layers), 2);
  cf_gpu_ready_apply(&r, 0, 100, 1, 0); /* callbacks never lower the count */
  CF_CHECK_EQ(atomic_load(&r.slots[0].layers), 2);
  /* the slot is begun again for request 101; request 100's queued callbacks must be no-ops */
  cf_ready_begin(&r, 0, 101);
  cf_gpu_ready_apply(&r, 0, 100, 4, 0);
  cf_gpu_ready_apply(&r, 0, 100, 0, 1);
  CF_CHECK_EQ(atomic_load(&r.slots[0].layers), 0);
  CF_CHECK_EQ(atomic_load(&r.slots[0].status), CF_READY_RUNNING);
  cf_gpu_ready_apply(&r, 0, 101, 0, 1);
  CF_CHECK_EQ(atomic_load(&r.slots[0].status), CF_READY_DONE);
  /* a failure reported from the CPU while a finish callback was queued keeps its error */
  cf_ready_begin(&r, 1, 7);
  cf_gpu_ready_t g;
  memset(&g, 0, sizeof g);
  g.r = &r;
  cf_gpu_ready_fail(&g, 1, CF_EIO, NULL);
  cf_gpu_ready_apply(&r, 1, 7, 0, 1);
  CF_CHECK_EQ(atomic_load(&r.slots[1].status), CF_EIO);
  uint64_t seen = 0;
  CF_CHECK_EQ(cf_ready_wait(&r, 1, 1, 0, &seen), CF_EIO);
  cf_gpu_ready_apply(&r, 2, 7, 5, 0); /* out of range: ignored */
  cf_gpu_ready_apply(NULL, 0, 7, 5, 0);
  cf_ready_close(&r);
}

/* cuStreamWaitValue64's default condition (CU_STREAM_WAIT_VALUE_GEQ) is CYCLIC:
 * (int64_t)(*addr - value) >= 0 (cuda.h). The open gate of a failed restore must release every
 * wait under it as well as under the kernel fallback's plain >=, and the closed gate (0, after
 * cf_ready_begin) must hold every wait for >= 1 layer. (A gate of ~0 would look "open" to the
 * kernel but -1 - v < 0 to the driver: the engine's stream would hang.) */
static int memop_geq(uint64_t cur, uint64_t v) { return (int64_t)(cur - v) >= 0; }

CF_TEST(gpu_gate_values_mean_the_same_to_the_driver_wait_and_the_kernel_wait) {
  const uint64_t waits[] = {1, 2, 32, 80, 126, 1u << 20, 1ull << 31, 1ull << 40};
  for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
    uint64_t v = waits[i];
    CF_CHECK_MSG(memop_geq(CF_READY_GATE_OPEN, v) && CF_READY_GATE_OPEN >= v, "open gate holds a wait for %llu",
                 (unsigned long long)v);
    CF_CHECK(!memop_geq(0, v) && !(0 >= v));
    CF_CHECK(memop_geq(v, v) && !memop_geq(v - 1, v)); /* layer counts: the n-th publish releases >= n */
  }
}
