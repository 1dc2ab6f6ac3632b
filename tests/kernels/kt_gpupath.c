/* kt_gpupath — the GPU restore data path (lib/gpu) on a real GPU, across real processes.
 *
 * Default: for each variant, two processes started from this binary:
 *   engine  allocates paged KV blocks (cudaMalloc), poisons them, exports CUDA IPC handles,
 *           creates the readiness file, registers (a file), then enqueues on its own stream,
 *           per layer l, cf_gpu_ready_stream_wait(l+1) followed by a D2H copy of layer l; it
 *           checks every byte of every block (restored rows bit-exact, everything else still
 *           poison) and the CPU view of the counters (cf_ready_wait, req_id, DONE).
 *   daemon  opens the handles (cf_gpu_kv_open; a wrong UUID first, which must be refused),
 *           builds a store (CPU tier in cudaHostAlloc'd memory, SSD tier), evicts part of it
 *           to SSD, and loads layer by layer: CPU-tier cells from their pinned slots, SSD-tier
 *           cells through cf_stage_ring + cf_gpu_ring_sink, publishing layer l+1 on the
 *           loader's stream after each layer, sleeping between layers so a stream wait that
 *           does not wait shows up as poison on the engine side.
 *   variants: 0 NHD vLLM layout (two layers share one allocation), driver stream memory ops,
 *             STAGED loads; 1 HND layout with separate K and V allocations (V below K), the
 *             kernel fallback of the readiness gate, ZEROCOPY loads; 2 NHD, memops, ARENA loads;
 *             3 as 0 but the restore fails after 2 layers (cf_gpu_ready_fail): the engine's
 *             stream must be released (not hang), cf_ready_wait must report CF_EIO, layers 0-1
 *             restored, layers 2-3 untouched.
 * --bench: load 1 GiB into paged blocks of 16 KiB..1 MiB (each mode) vs one contiguous 1 GiB
 *   pinned cudaMemcpy; compute (cf_backend_cuda_forward_dev, a Llama-3-8B-shaped layer, 8192
 *   tokens) overlapped with loads of about the same duration, as a ratio to the longer alone;
 *   SSD-tier cells through the ring with the GPU sink vs the same ring with a memcpy sink.
 * Without a GPU it prints a skip line. Ends with "N passed, N failed[, N skipped]".
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpu/cf_gpu_kv.h"
#include "gpu/cf_gpu_load.h"
#include "gpu/cf_gpu_ready.h"
#include "kernels/cf_probe.h"
#include "model/cf_backend_cuda.h"
#include "model/cf_model_synth.h"
#include "store/cf_stage_ring.h"
#include "util/cf_err.h"

#include "tests/kernels/kt_check.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* ---------------------------------------------------------------- the shared geometry */

enum { L = 4, NKV = 4, HD = 64, C = 16, NCHUNK = 10, LASTTOK = 11, NBLK = 64, SLOT = 2 };
#define T_TOTAL ((NCHUNK - 1) * C + LASTTOK)
#define ROW (NKV * HD) /* elements per token row */
#define REQ_ID 1234u

static uint16_t cell_elem(uint64_t seed, int chunk, int layer, int plane, int t, int h, int d) {
  uint64_t z = mix(seed ^ ((uint64_t)chunk << 40) ^ ((uint64_t)layer << 32) ^ ((uint64_t)plane << 31) ^
                   ((uint64_t)t << 16) ^ ((uint64_t)h << 8) ^ (uint64_t)d);
  uint16_t v = (uint16_t)z;
  return v == 0xffff ? 0x3f80 : v; /* never the poison */
}

static int chunk_tokens(int c) { return c == NCHUNK - 1 ? LASTTOK : C; }

/* Cell of (chunk, layer): [2][t][NKV][HD]. */
static void make_cell(uint64_t seed, int chunk, int layer, uint16_t *out) {
  int n = chunk_tokens(chunk);
  for (int p = 0; p < 2; p++)
    for (int t = 0; t < n; t++)
      for (int h = 0; h < NKV; h++)
        for (int d = 0; d < HD; d++)
          out[(((size_t)p * n + t) * NKV + h) * HD + d] = cell_elem(seed, chunk, layer, p, t, h, d);
}

/* What the engine registers (a file: the RegisterEngine message's GPU fields). */
typedef struct {
  uint8_t uuid[CF_GPU_UUID_BYTES];
  cf_kv_layout_t lay;
  int bs, n_table, variant;
  int32_t table[NBLK];
  cf_gpu_ipc_handle_t kh[L], vh[L];
  uint64_t koff[L], voff[L];
  uint64_t seed;
  char ready_path[256];
} reg_t;

static void layout_for(int variant, cf_kv_layout_t *lay, int *bs) {
  if (variant == 1) { /* HND: [block][head][token][dim] */
    *bs = 8;
    cf_kv_layout_init(lay, L, NBLK, *bs, NKV, HD, CF_DT_BF16);
    lay->token_stride = HD * 2;
    lay->head_stride = (uint64_t)*bs * HD * 2;
    lay->block_stride = lay->head_stride * NKV;
  } else {
    *bs = 16;
    cf_kv_layout_init(lay, L, NBLK, *bs, NKV, HD, CF_DT_BF16);
  }
}

static void path_in(char *out, const char *dir, const char *name) { snprintf(out, 1024, "%s/%s", dir, name); }

static int wait_file(const char *path, double ms) {
  double t0 = now_ms();
  struct stat sb;
  while (stat(path, &sb) != 0) {
    if (now_ms() - t0 > ms) return 0;
    usleep(2000);
  }
  return 1;
}

/* ---------------------------------------------------------------- engine process */

static int engine(const char *dir, int variant) {
  g_role = "engine";
  CU(cudaSetDevice(0));
  reg_t R;
  memset(&R, 0, sizeof R);
  R.variant = variant;
  R.seed = mix((uint64_t)getpid() ^ (uint64_t)time(NULL));
  layout_for(variant, &R.lay, &R.bs);
  uint64_t plane = cf_kv_layout_plane_bytes(&R.lay);
  uint8_t *k[L], *v[L];
  void *allocs[2 * L];
  int n_alloc = 0;
  if (variant == 1) { /* separate K and V tensors; V allocated first so it tends to lie below K */
    for (int l = 0; l < L; l++) {
      CU(cudaMalloc((void **)&v[l], plane));
      CU(cudaMalloc((void **)&k[l], plane));
      allocs[n_alloc++] = v[l];
      allocs[n_alloc++] = k[l];
    }
  } else { /* vLLM: one [2][blocks]... tensor per layer; layers 0 and 1 in one allocation */
    uint8_t *a01;
    CU(cudaMalloc((void **)&a01, 4 * plane));
    allocs[n_alloc++] = a01;
    k[0] = a01; v[0] = a01 + plane; k[1] = a01 + 2 * plane; v[1] = a01 + 3 * plane;
    for (int l = 2; l < L; l++) {
      uint8_t *a;
      CU(cudaMalloc((void **)&a, 2 * plane));
      allocs[n_alloc++] = a;
      k[l] = a; v[l] = a + plane;
    }
  }
  for (int l = 0; l < L; l++) { CU(cudaMemset(k[l], 0xff, plane)); CU(cudaMemset(v[l], 0xff, plane)); }
  CU(cudaDeviceSynchronize());
  int ok = 1;
  for (int l = 0; l < L; l++) {
    ok &= RC(cf_gpu_ipc_export(k[l], &R.kh[l], &R.koff[l]));
    ok &= RC(cf_gpu_ipc_export(v[l], &R.vh[l], &R.voff[l]));
  }
  if (variant != 1)
    check(ok && R.koff[1] == 2 * plane && R.voff[1] == 3 * plane && R.voff[3] == plane &&
          !memcmp(&R.kh[0], &R.vh[1], sizeof R.kh[0]),
          "IPC export: layer 1 shares layer 0's allocation at offsets %llu/%llu",
          (unsigned long long)R.koff[1], (unsigned long long)R.voff[1]);
  ok &= RC(cf_gpu_device_uuid(0, R.uuid));
  /* block table: a random permutation, one logical block unmapped (-1: must stay untouched) */
  int32_t perm[NBLK];
  for (int i = 0; i < NBLK; i++) perm[i] = i;
  for (int i = NBLK - 1; i > 0; i--) { int j = (int)(mix(R.seed + i) % (uint64_t)(i + 1)); int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
  R.n_table = (T_TOTAL + R.bs - 1) / R.bs;
  for (int p = 0; p < R.n_table; p++) R.table[p] = perm[p];
  R.table[1] = -1;
  char rp[1024], tmp[1024], p2[1024];
  /* the counters live in shared memory (tmpfs), as cacheflowd's do: pinning pages of a
   * writable mapping of a disk file may be refused by the kernel */
  struct stat sb;
  if (stat("/dev/shm", &sb) == 0) snprintf(rp, sizeof rp, "/dev/shm/kt_gpupath_ready.%d", (int)getpid());
  else path_in(rp, dir, "ready");
  snprintf(R.ready_path, sizeof R.ready_path, "%.250s", rp);
  cf_ready_t r;
  if (!RC(cf_ready_create(&r, rp, 4))) return 1;
  cf_gpu_ready_t g;
  if (!RC(cf_gpu_ready_init(&g, &r, variant == 1 ? CF_GPU_READY_KERNEL : 0))) return 1;
  printf("engine: readiness via %s\n", cf_gpu_ready_uses_memops(&g) ? "cuStreamWaitValue64" : "the wait kernel");
  if (variant != 1) check(cf_gpu_ready_uses_memops(&g), "driver provides cuStreamWriteValue64/WaitValue64");
  cudaStream_t s;
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint16_t *hk, *hv;
  CU(cudaMallocHost((void **)&hk, plane * L));
  CU(cudaMallocHost((void **)&hv, plane * L));
  memset(hk, 0, plane * L);
  memset(hv, 0, plane * L);
  /* enqueue the waits and the read-backs before the daemon can have loaded anything */
  for (int l = 0; l < L; l++) {
    ok &= RC(cf_gpu_ready_stream_wait(&g, SLOT, (uint64_t)l + 1, s));
    CU(cudaMemcpyAsync((uint8_t *)hk + l * plane, k[l], plane, cudaMemcpyDeviceToHost, s));
    CU(cudaMemcpyAsync((uint8_t *)hv + l * plane, v[l], plane, cudaMemcpyDeviceToHost, s));
  }
  path_in(tmp, dir, "reg.tmp");
  path_in(p2, dir, "reg");
  FILE *f = fopen(tmp, "wb");
  if (!f || fwrite(&R, sizeof R, 1, f) != 1 || fclose(f) || rename(tmp, p2)) { check(0, "write %s", p2); return 1; }
  /* the stream must drain once the daemon has published every layer */
  double t0 = now_ms();
  cudaError_t e;
  while ((e = cudaStreamQuery(s)) == cudaErrorNotReady) {
    if (now_ms() - t0 > 20000) { check(0, "engine stream still waiting after 20 s"); fflush(stdout); _exit(1); }
    usleep(500);
  }
  check(e == cudaSuccess, "engine stream drained after the waits (%.0f ms): %s", now_ms() - t0, cudaGetErrorString(e));
  uint64_t seen = 0;
  int loaded = variant == 3 ? 2 : L; /* layers the daemon restores before it fails (variant 3) */
  int wrc = cf_ready_wait(&r, SLOT, L, 10000000000LL, &seen);
  if (variant == 3)
    check(wrc == CF_EIO && seen <= 2, "CPU waiter of a failed restore: cf_ready_wait(%d layers) = %s "
          "(expected CF_EIO), layers %llu", L, cf_err_name(wrc), (unsigned long long)seen);
  else
    check(wrc == 0 && seen == L, "CPU waiter: cf_ready_wait(%d layers) = %s, layers %llu", L,
          cf_err_name(wrc), (unsigned long long)seen);
  int64_t want_status = variant == 3 ? CF_EIO : CF_READY_DONE;
  for (int i = 0; i < 2000 && atomic_load(&r.slots[SLOT].status) == CF_READY_RUNNING; i++) usleep(1000);
  check(atomic_load(&r.slots[SLOT].status) == want_status && atomic_load(&r.slots[SLOT].req_id) == REQ_ID,
        "slot status %lld (expected %lld) for request %u (req %llu)", (long long)atomic_load(&r.slots[SLOT].status),
        (long long)want_status, REQ_ID, (unsigned long long)atomic_load(&r.slots[SLOT].req_id));
  /* every element of every block: a restored row, or poison */
  uint16_t *cell = malloc(2 * C * ROW * 2);
  for (int l = 0; l < L; l++) {
    long bad = 0, restored = 0, first = -1;
    uint16_t *pk = hk + l * plane / 2, *pv = hv + l * plane / 2;
    uint8_t *want_set = calloc(plane / 2, 1); /* element written by the restore */
    for (int c = 0; c < NCHUNK && l < loaded; c++) {
      make_cell(R.seed, c, l, cell);
      int n = chunk_tokens(c);
      for (int t = 0; t < n; t++) {
        int tok = c * C + t, blk = R.table[tok / R.bs], sl = tok % R.bs;
        if (blk < 0) continue;
        for (int h = 0; h < NKV; h++)
          for (int d = 0; d < HD; d++) {
            size_t off = ((uint64_t)blk * R.lay.block_stride + (uint64_t)sl * R.lay.token_stride +
                          (uint64_t)h * R.lay.head_stride) / 2 + d;
            uint16_t wk = cell[((size_t)t * NKV + h) * HD + d], wv = cell[(((size_t)n + t) * NKV + h) * HD + d];
            want_set[off] = 1;
            restored++;
            if (pk[off] != wk || pv[off] != wv) { if (first < 0) first = tok; bad++; }
          }
      }
    }
    long poison_bad = 0;
    for (size_t i = 0; i < plane / 2; i++)
      if (!want_set[i] && (pk[i] != 0xffff || pv[i] != 0xffff)) poison_bad++;
    check(bad == 0 && poison_bad == 0 && (restored > 0) == (l < loaded),
          "layer %d: %ld restored elements per plane bit-exact (%ld wrong, first at token %ld), %ld "
          "elements outside the restore disturbed", l, restored, bad, first, poison_bad);
    free(want_set);
  }
  free(cell);
  path_in(p2, dir, "daemon.done");
  check(wait_file(p2, 10000), "daemon finished");
  cf_gpu_ready_close(&g);
  cf_ready_close(&r);
  cudaFreeHost(hk);
  cudaFreeHost(hv);
  for (int i = 0; i < n_alloc; i++) cudaFree(allocs[i]);
  return g_fail ? 1 : 0;
}

/* ---------------------------------------------------------------- daemon process */

static void key_of(int chunk, uint64_t seed, cf_store_key_t *k) {
  for (int i = 0; i < 16; i++) k->b[i] = (uint8_t)(mix(seed + (uint64_t)chunk * 977 + i) >> 8);
}

static cf_gpu_ready_t *g_gate;
#define BAIL() do { if (g_gate) cf_gpu_ready_fail(g_gate, SLOT, CF_EIO, NULL); return 1; } while (0)

static int daemon_proc(const char *dir, int variant) {
  g_role = "daemon";
  char p[1024];
  path_in(p, dir, "reg");
  if (!wait_file(p, 30000)) { check(0, "no registration from the engine"); return 1; }
  reg_t R;
  FILE *f = fopen(p, "rb");
  if (!f || fread(&R, sizeof R, 1, f) != 1) { check(0, "read %s", p); return 1; }
  fclose(f);
  CU(cudaSetDevice(0));
  cf_gpu_kv_t kv;
  uint8_t wrong[CF_GPU_UUID_BYTES];
  memcpy(wrong, R.uuid, sizeof wrong);
  wrong[5] ^= 0x40;
  int rc = cf_gpu_kv_open(&kv, 0, wrong, &R.lay, R.kh, R.koff, R.vh, R.voff);
  check(rc == CF_EMISMATCH && strstr(cf_errmsg(), "GPU-"), "another GPU's UUID is refused: %s: %s",
        cf_err_name(rc), cf_errmsg());
  if (!RC(cf_gpu_kv_open(&kv, 0, R.uuid, &R.lay, R.kh, R.koff, R.vh, R.voff))) return 1;
  int distinct = variant == 1 ? 2 * L : L - 1;
  check(kv.n_opened == distinct, "each distinct IPC handle opened once: %d (expected %d)", kv.n_opened, distinct);
  cf_ready_t r;
  if (!RC(cf_ready_open(&r, R.ready_path))) return 1;
  cf_gpu_ready_t g;
  if (!RC(cf_gpu_ready_init(&g, &r, variant == 1 ? CF_GPU_READY_KERNEL : 0))) return 1;
  g_gate = &g; /* from here a failure opens the gate: the engine's stream must not hang */
  /* the store: CPU tier in pinned memory, SSD tier; then half the chunks evicted to SSD */
  cf_store_geom_t geom;
  memset(&geom, 0, sizeof geom);
  for (int i = 0; i < 16; i++) geom.fingerprint[i] = (uint8_t)(i * 7 + 1);
  geom.dtype_size = 2; geom.chunk_tokens = C; geom.n_layers = L; geom.n_kv_heads = NKV; geom.head_dim = HD;
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.cpu_bytes = 8u << 20;
  cfg.ssd_bytes = 64u << 20;
  cfg.file_bytes = 16u << 20;
  cfg.spill = 0;
  cfg.cpu_alloc = cf_gpu_pinned_alloc;
  cfg.cpu_free = cf_gpu_pinned_free;
  path_in(p, dir, "store");
  cf_store_t *st = NULL;
  if (!RC(cf_store_open(p, &geom, &cfg, &st))) BAIL();
  uint16_t *cellbuf = malloc((size_t)L * 2 * C * ROW * 2);
  cf_store_key_t keys[NCHUNK];
  for (int c = 0; c < NCHUNK; c++) {
    const void *cells[L];
    for (int l = 0; l < L; l++) {
      make_cell(R.seed, c, l, cellbuf + (size_t)l * 2 * C * ROW);
      cells[l] = cellbuf + (size_t)l * 2 * C * ROW;
    }
    key_of(c, R.seed, &keys[c]);
    if (!RC(cf_store_save(st, &keys[c], (uint32_t)chunk_tokens(c), cells, 0))) BAIL();
  }
  free(cellbuf);
  RC(cf_store_flush(st));
  size_t slot_bytes = (size_t)L * cf_ring_slot_bytes(st);
  RC(cf_store_evict_cpu(st, slot_bytes * (NCHUNK / 2)));
  uint8_t tiers[NCHUNK];
  size_t have = cf_store_lookup(st, keys, NCHUNK, tiers);
  int n_cpu = 0, n_ssd = 0;
  for (int c = 0; c < NCHUNK; c++) {
    if (tiers[c] == CF_STORE_TIER_CPU) n_cpu++;
    else n_ssd++;
  }
  check(have == NCHUNK && n_cpu > 0 && n_ssd > 0, "store: %d chunks in the pinned CPU tier, %d only on SSD", n_cpu, n_ssd);
  cf_gpu_load_mode_t mode = variant == 0 || variant == 3 ? CF_GPU_LOAD_STAGED : variant == 1 ? CF_GPU_LOAD_ZEROCOPY : CF_GPU_LOAD_ARENA;
  cf_gpu_loader_t ld;
  if (!RC(cf_gpu_loader_init(&ld, mode, 0))) BAIL();
  RC(cf_gpu_loader_set_table(&ld, R.table, R.n_table));
  size_t rbytes = 4 * cf_ring_slot_bytes(st);
  void *rmem = cf_gpu_pinned_alloc(rbytes, NULL);
  check(rmem != NULL, "pinned staging ring of %zu bytes", rbytes);
  cf_ring_t ring;
  if (!rmem || !RC(cf_ring_init(&ring, st, 4, rmem))) BAIL();
  cf_ring_sink_t sink;
  cf_gpu_ring_sink(&ld, &kv, &sink);
  cf_store_pin_t pins[NCHUNK];
  int pinned[NCHUNK] = {0};
  cf_ready_begin(&r, SLOT, REQ_ID);
  usleep(100000); /* the engine's waits are queued by now: a wait that does not wait reads poison */
  int failed = 0;
  for (int l = 0; l < L; l++) {
    if (variant == 3 && l == 2) { /* a failure mid-restore: release the engine, report CF_EIO */
      cudaStream_t ls = cf_gpu_loader_stream(&ld);
      /* layers 0-1 are complete first: the CPU store of the open gate below releases the
       * engine's waits at once, and the check that layers 0-1 are restored bit-exact must not
       * depend on the 20 ms sleep having outlasted their loads */
      cudaError_t se = cudaStreamSynchronize(ls);
      if (se != cudaSuccess) check(0, "loader stream before the failure: %s", cudaGetErrorString(se));
      cf_gpu_ready_fail(&g, SLOT, CF_EIO, &ls); /* opens the gate even when the sync failed */
      failed = 1;
      break;
    }
    cf_ring_cell_t rc_cells[NCHUNK];
    int n_ring = 0, status[NCHUNK];
    for (int c = 0; c < NCHUNK; c++) {
      if (tiers[c] == CF_STORE_TIER_CPU) {
        if (!pinned[c]) {
          if (!RC(cf_store_pin(st, &keys[c], &pins[c]))) BAIL();
          pinned[c] = 1;
        }
        RC(cf_gpu_load_cell(&ld, &kv, l, c * C, pins[c].base + (size_t)l * pins[c].cell_stride,
                            (int)pins[c].n_tokens));
      } else {
        rc_cells[n_ring].key = keys[c];
        rc_cells[n_ring].layer = (uint32_t)l;
        rc_cells[n_ring].tok0 = c * C;
        rc_cells[n_ring].tag = (uint64_t)c;
        n_ring++;
      }
    }
    size_t n_ok = 0;
    RC(cf_ring_run(&ring, rc_cells, (size_t)n_ring, &sink, status, &n_ok));
    if (n_ok != (size_t)n_ring) check(0, "layer %d: %zu of %d SSD cells delivered", l, n_ok, n_ring);
    RC(cf_gpu_loader_flush(&ld, NULL));
    RC(cf_gpu_ready_publish(&g, SLOT, (uint64_t)l + 1, cf_gpu_loader_stream(&ld)));
    usleep(20000);
  }
  if (!failed) RC(cf_gpu_ready_finish(&g, SLOT, cf_gpu_loader_stream(&ld)));
  RC(cf_ring_drain(&ring, &sink));
  CU(cudaDeviceSynchronize());
  check(ld.cells == (uint64_t)(failed ? 2 : L) * NCHUNK, "loader moved %llu cells (%llu bytes)", (unsigned long long)ld.cells,
        (unsigned long long)ld.bytes);
  for (int c = 0; c < NCHUNK; c++) if (pinned[c]) cf_store_unpin(st, &pins[c]);
  cf_ring_close(&ring);
  cf_gpu_pinned_free(rmem, rbytes, NULL);
  cf_gpu_loader_close(&ld);
  cf_gpu_ready_close(&g);
  cf_ready_close(&r);
  cf_store_close(st);
  cf_gpu_kv_close(&kv);
  path_in(p, dir, "daemon.done");
  FILE *d = fopen(p, "w");
  if (d) fclose(d);
  return g_fail ? 1 : 0;
}

/* ---------------------------------------------------------------- driver */

static pid_t spawn(const char *self, const char *role, const char *dir, int variant) {
  char vs[16];
  snprintf(vs, sizeof vs, "%d", variant);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    execl(self, self, role, dir, vs, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int reap(pid_t pid, double deadline_ms) {
  int st = 0;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (now_ms() > deadline_ms) { kill(pid, SIGKILL); waitpid(pid, &st, 0); return 124; }
    usleep(5000);
  }
}

static void run_pair(const char *self, int variant) {
  char dir[] = "/tmp/kt_gpupath.XXXXXX";
  if (!mkdtemp(dir)) { check(0, "mkdtemp"); return; }
  pid_t e = spawn(self, "--engine", dir, variant);
  pid_t d = spawn(self, "--daemon", dir, variant);
  double dl = now_ms() + 30000;
  int rd = reap(d, dl), re = reap(e, dl);
  static const char *names[] = {"NHD, memops, STAGED", "HND split K/V, wait kernel, ZEROCOPY", "NHD, memops, ARENA",
                                "NHD, memops, STAGED, restore fails after 2 layers"};
  check(re == 0 && rd == 0, "variant %d (%s): engine exit %d, daemon exit %d", variant, names[variant], re, rd);
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf %s /dev/shm/kt_gpupath_ready.%d", dir, (int)e);
  if (system(cmd)) { /* leftovers in /tmp are harmless */ }
}

/* ---------------------------------------------------------------- benchmarks */

typedef struct {
  const cf_gpu_kv_t *kv;
  cf_gpu_loader_t *ld;
  const uint8_t *host;
  int n_cells, cell_tok;
  size_t cell_bytes;
} bload_t;

static int bench_enqueue(bload_t *b) {
  for (int i = 0; i < b->n_cells; i++) {
    int rc = cf_gpu_load_cell(b->ld, b->kv, 0, i * b->cell_tok, b->host + (size_t)i * b->cell_bytes, b->cell_tok);
    if (rc) return rc;
  }
  return cf_gpu_loader_flush(b->ld, NULL);
}

static double median3(double a, double b, double c) {
  return a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
}

/* One layer, n_kv 8 x head_dim 128 (2 KiB token rows), bs tokens per block, T tokens. */
static int bench_pool(int bs, int T, uint8_t **pool, cf_gpu_kv_t *kv, int32_t **table, int *n_table) {
  cf_kv_layout_t lay;
  cf_kv_layout_init(&lay, 1, T / bs, bs, 8, 128, CF_DT_BF16);
  uint64_t plane = cf_kv_layout_plane_bytes(&lay);
  CU(cudaMalloc((void **)pool, 2 * plane));
  uint8_t *k = *pool, *v = *pool + plane;
  int rc = cf_gpu_kv_wrap(kv, 0, &lay, &k, &v);
  *n_table = T / bs;
  *table = malloc(sizeof(int32_t) * (size_t)*n_table);
  for (int i = 0; i < *n_table; i++) (*table)[i] = i;
  for (int i = *n_table - 1; i > 0; i--) { int j = (int)(mix((uint64_t)i * 31 + bs) % (uint64_t)(i + 1)); int32_t t = (*table)[i]; (*table)[i] = (*table)[j]; (*table)[j] = t; }
  return rc;
}

static void bench_bandwidth(void) {
  const size_t GB = 1u << 30;
  const int T = (int)(GB / (2 * 2048)), CT = 256; /* 262144 tokens; 1 MiB cells */
  uint8_t *host, *dev;
  CU(cudaHostAlloc((void **)&host, GB, cudaHostAllocPortable | cudaHostAllocMapped));
  memset(host, 0x3c, GB);
  CU(cudaMalloc((void **)&dev, GB));
  cudaStream_t s;
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  double base[3];
  for (int i = 0; i < 3; i++) {
    CU(cudaDeviceSynchronize());
    double t0 = now_ms();
    CU(cudaMemcpyAsync(dev, host, GB, cudaMemcpyHostToDevice, s));
    CU(cudaStreamSynchronize(s));
    base[i] = now_ms() - t0;
  }
  double bms = median3(base[0], base[1], base[2]);
  CU(cudaFree(dev));
  printf("baseline: one contiguous 1 GiB pinned cudaMemcpy %.2f ms = %.1f GB/s\n", bms, GB / bms / 1e6);
  printf("RESULT gpuload_baseline %.4f\n", bms);
  static const char *mname[] = {"staged", "zerocopy", "arena"};
  for (int kib = 16; kib <= 1024; kib *= 4) {
    int bs = kib * 1024 / 2048;
    uint8_t *pool;
    cf_gpu_kv_t kv;
    int32_t *table;
    int nt;
    if (!RC(bench_pool(bs, T, &pool, &kv, &table, &nt))) return;
    for (int mode = 0; mode < 3; mode++) {
      cf_gpu_loader_t ld;
      if (!RC(cf_gpu_loader_init(&ld, (cf_gpu_load_mode_t)mode, mode == 0 ? 64u << 20 : 0))) continue;
      RC(cf_gpu_loader_set_table(&ld, table, nt));
      bload_t b = {&kv, &ld, host, T / CT, CT, (size_t)CT * 2 * 2048};
      double ms[3];
      for (int i = 0; i < 3; i++) {
        CU(cudaDeviceSynchronize());
        double t0 = now_ms();
        if (!RC(bench_enqueue(&b))) break;
        CU(cudaDeviceSynchronize());
        ms[i] = now_ms() - t0;
      }
      double m = median3(ms[0], ms[1], ms[2]);
      printf("load 1 GiB into %4d KiB blocks, %-8s: %.2f ms = %.1f GB/s = %.3f of the contiguous copy\n",
             kib, mname[mode], m, GB / m / 1e6, bms / m);
      printf("RESULT gpuload %s %d %.4f %.4f\n", mname[mode], kib, m, bms);
      cf_gpu_loader_close(&ld);
    }
    cf_gpu_kv_close(&kv);
    free(table);
    CU(cudaFree(pool));
  }
  CU(cudaFreeHost(host));
  CU(cudaStreamDestroy(s));
}

static void bench_overlap(void) {
  cf_model_config_t c;
  memset(&c, 0, sizeof c);
  cf_synth_preset("tiny", &c);
  c.n_layers = 1; c.hidden = 4096; c.n_heads = 32; c.n_kv_heads = 8; c.head_dim = 128;
  c.intermediate = 14336; c.vocab = 1024; c.rope_theta = 500000; c.max_pos = 131072;
  cf_synth_opts_t o = {42, 0.02f, 0.1f};
  cf_model_t *m = NULL;
  cf_backend_t *be = NULL;
  if (!RC(cf_model_synth(&c, &o, &m)) || !RC(cf_backend_cuda_create(m, 0, &be))) return;
  const int Tc = 8192;
  int32_t *dtok;
  uint16_t *dk, *dv;
  CU(cudaMalloc((void **)&dtok, Tc * 4));
  CU(cudaMemset(dtok, 0, Tc * 4));
  CU(cudaMalloc((void **)&dk, (size_t)Tc * 1024 * 2));
  CU(cudaMalloc((void **)&dv, (size_t)Tc * 1024 * 2));
  cudaStream_t s;
  CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cf_cuda_fwd_args_t a = {0, 1, 0, Tc, dtok, NULL, &dk, &dv, 1024, NULL};
  double cms = 0;
  for (int i = 0; i < 6; i++) {
    CU(cudaDeviceSynchronize());
    double t0 = now_ms();
    if (!RC(cf_backend_cuda_forward_dev(be, &a, s))) return;
    CU(cudaDeviceSynchronize());
    if (i >= 3) cms += (now_ms() - t0) / 3;
  }
  /* loads of about the compute's duration at ~50 GB/s, in 1 MiB cells into 32 KiB blocks */
  int CT = 256, ncell = (int)(cms * 1e-3 * 50e9 / (CT * 4096.0)) + 1, T = ncell * CT;
  uint8_t *host, *pool;
  size_t bytes = (size_t)T * 4096;
  CU(cudaHostAlloc((void **)&host, bytes, cudaHostAllocPortable | cudaHostAllocMapped));
  memset(host, 0x3c, bytes);
  cf_gpu_kv_t kv;
  int32_t *table;
  int nt;
  if (!RC(bench_pool(16, T, &pool, &kv, &table, &nt))) return;
  uint8_t *dref;
  CU(cudaMalloc((void **)&dref, bytes));
  cudaStream_t s2;
  CU(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  static const char *mname[] = {"staged ring (copy engine + high-priority scatter)", "zero-copy kernel, 32 CTAs",
                                "arena: copy engine during compute, scatter on the compute stream after it",
                                "reference: one contiguous cudaMemcpy, no paging"};
  for (int mode = 0; mode < 4; mode++) {
    cf_gpu_loader_t ld;
    memset(&ld, 0, sizeof ld);
    if (mode < 3) {
      if (!RC(cf_gpu_loader_init(&ld, (cf_gpu_load_mode_t)mode, mode == 2 ? bytes + (1u << 20) : 0))) continue;
      RC(cf_gpu_loader_set_table(&ld, table, nt));
    }
    bload_t b = {&kv, &ld, host, ncell, CT, (size_t)CT * 4096};
    double tl[5], tb[5];
    for (int i = 0; i < 5; i++) {
      CU(cudaDeviceSynchronize());
      double t0 = now_ms();
      if (mode == 3) CU(cudaMemcpyAsync(dref, host, bytes, cudaMemcpyHostToDevice, s2));
      else {
        for (int j = 0; j < ncell; j++) RC(cf_gpu_load_cell(&ld, &kv, 0, j * CT, host + (size_t)j * b.cell_bytes, CT));
        RC(cf_gpu_loader_flush(&ld, s));
      }
      CU(cudaDeviceSynchronize());
      tl[i] = now_ms() - t0;
      t0 = now_ms();
      RC(cf_backend_cuda_forward_dev(be, &a, s));
      if (mode == 3) CU(cudaMemcpyAsync(dref, host, bytes, cudaMemcpyHostToDevice, s2));
      else {
        for (int j = 0; j < ncell; j++) RC(cf_gpu_load_cell(&ld, &kv, 0, j * CT, host + (size_t)j * b.cell_bytes, CT));
        RC(cf_gpu_loader_flush(&ld, s)); /* ARENA: the scatters queue behind the layer */
      }
      CU(cudaDeviceSynchronize());
      tb[i] = now_ms() - t0;
    }
    double wl = median3(tl[2], tl[3], tl[4]), wb = median3(tb[2], tb[3], tb[4]);
    double longer = wl > cms ? wl : cms;
    printf("overlap, %s: compute %.2f ms, load %.2f ms (%.0f MiB, %.1f GB/s), both %.2f ms = %.3f x the longer alone (goal <= 1.05)\n",
           mname[mode], cms, wl, bytes / 1048576.0, bytes / wl / 1e6, wb, wb / longer);
    printf("RESULT gpuoverlap %d %.4f %.4f %.4f\n", mode, cms, wl, wb);
    if (mode < 3) cf_gpu_loader_close(&ld);
  }
  cf_gpu_kv_close(&kv);
  free(table);
  cudaFree(pool); cudaFree(dref); cudaFreeHost(host);
  cudaFree(dtok); cudaFree(dk); cudaFree(dv);
  cudaStreamDestroy(s); cudaStreamDestroy(s2);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

/* memcpy sink for the ring baseline */
static int memsink_deliver(void *ud, size_t i, const cf_ring_cell_t *c, int slot, const void *buf, size_t bytes,
                           uint32_t n_tokens) {
  (void)c; (void)slot; (void)n_tokens;
  memcpy((uint8_t *)ud + i % 64 * bytes, buf, bytes);
  return 0;
}

static void bench_ssd(void) {
  const char *base = getenv("KT_SSD_DIR") ? getenv("KT_SSD_DIR") : "/var/tmp";
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/kt_gpupath_ssd.%d", base, (int)getpid());
  cf_store_geom_t geom;
  memset(&geom, 0, sizeof geom);
  geom.dtype_size = 2; geom.chunk_tokens = 256; geom.n_layers = 1; geom.n_kv_heads = 8; geom.head_dim = 128;
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.cpu_bytes = 0;
  cfg.ssd_bytes = 300u << 20;
  const int N = 256; /* 256 MiB of 1 MiB cells */
  cf_store_t *st;
  if (!RC(cf_store_open(dir, &geom, &cfg, &st))) return;
  uint8_t *cell = malloc(1u << 20);
  memset(cell, 0x3c, 1u << 20);
  cf_ring_cell_t *cells = calloc(N, sizeof *cells);
  for (int i = 0; i < N; i++) {
    key_of(i, 99, &cells[i].key);
    cells[i].tok0 = i * 256;
    const void *cp = cell;
    RC(cf_store_save(st, &cells[i].key, 256, &cp, CF_STORE_SAVE_DURABLE));
  }
  cf_store_stats_t ss;
  cf_store_get_stats(st, &ss);
  printf("ssd store in %s: O_DIRECT %s\n", dir, ss.ssd_direct ? "yes" : "no (page cache: ratios still compare the sinks)");
  uint8_t *pool;
  cf_gpu_kv_t kv;
  int32_t *table;
  int nt;
  if (!RC(bench_pool(16, N * 256, &pool, &kv, &table, &nt))) return;
  void *rmem = cf_gpu_pinned_alloc(8 * cf_ring_slot_bytes(st), NULL);
  uint8_t *sinkmem = malloc(64u << 20);
  cf_gpu_loader_t ld;
  if (!rmem || !RC(cf_gpu_loader_init(&ld, CF_GPU_LOAD_STAGED, 0))) return;
  RC(cf_gpu_loader_set_table(&ld, table, nt));
  double tm[3], tg[3];
  for (int rep = 0; rep < 3; rep++)
    for (int which = 0; which < 2; which++) {
      cf_ring_t ring;
      if (!RC(cf_ring_init(&ring, st, 8, rmem))) return;
      cf_ring_sink_t sink = {memsink_deliver, NULL, NULL, sinkmem};
      if (which) cf_gpu_ring_sink(&ld, &kv, &sink);
      size_t ok = 0;
      double t0 = now_ms();
      RC(cf_ring_run(&ring, cells, N, &sink, NULL, &ok));
      RC(cf_ring_drain(&ring, &sink));
      CU(cudaDeviceSynchronize());
      (which ? tg : tm)[rep] = now_ms() - t0;
      if (ok != (size_t)N) check(0, "ssd ring: %zu of %d cells", ok, N);
      cf_ring_close(&ring);
    }
  double m = median3(tm[0], tm[1], tm[2]), gms = median3(tg[0], tg[1], tg[2]);
  printf("SSD tier -> ring -> sink, 256 MiB of 1 MiB cells: memcpy sink %.1f ms (%.2f GB/s), GPU sink (H2D + scatter into 32 KiB blocks) %.1f ms (%.2f GB/s) = %.3f of the memcpy sink\n",
         m, 268435456.0 / m / 1e6, gms, 268435456.0 / gms / 1e6, m / gms);
  printf("RESULT gpussd %.4f %.4f\n", m, gms);
  cf_gpu_loader_close(&ld);
  cf_gpu_pinned_free(rmem, 0, NULL);
  cf_gpu_kv_close(&kv);
  free(table); free(cell); free(cells); free(sinkmem);
  cudaFree(pool);
  cf_store_close(st);
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) { /* best effort */ }
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 4 && !strcmp(argv[1], "--engine")) return engine(argv[2], atoi(argv[3]));
  if (argc == 4 && !strcmp(argv[1], "--daemon")) return daemon_proc(argv[2], atoi(argv[3]));
  if (cf_probe_gpu_count() <= 0) {
    printf("skip: no CUDA GPU on this machine\n");
    g_skip++;
    return finish();
  }
  if (argc > 1 && !strcmp(argv[1], "--bench")) {
    bench_bandwidth();
    bench_overlap();
    bench_ssd();
    return finish();
  }
  for (int v = 0; v < 4; v++) run_pair("/proc/self/exe", v);
  return finish();
}
