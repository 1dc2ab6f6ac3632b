/* lib/ipc: shared paged KV buffer and readiness counters, across real processes (fork). */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "ipc/cf_kvbuf.h"
#include "ipc/cf_ready.h"

static void path_in_tmp(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", cf_test_tmpdir(), name);
}

CF_TEST(kvbuf_layout_is_vllm_paged) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 3, 10, 16, 2, 8, CF_DT_F32));
  CF_CHECK_EQ(L.stride_head, 8);
  CF_CHECK_EQ(L.stride_token, 16);
  CF_CHECK_EQ(L.stride_block, 256);
  CF_CHECK_EQ(L.stride_plane, 2560);
  CF_CHECK_EQ(L.layer_bytes, 2 * 2560 * 4);
  CF_CHECK_ERR(cf_kv_layout_init(&L, 3, 0, 16, 2, 8, CF_DT_F32), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "num_blocks");
  CF_CHECK_ERR(cf_kv_layout_init(&L, 3, 1, 16, 2, 8, CF_DT_I32), CF_EDTYPE);
  cf_model_config_t mc = {.n_layers = 3, .n_kv_heads = 2, .head_dim = 4};
  CF_CHECK_OK(cf_kv_layout_init(&L, 3, 10, 16, 2, 8, CF_DT_F32));
  CF_CHECK_ERR(cf_kv_layout_check(&L, &mc), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "head_dim 8, model has 4");
  L.stride_block = 10;
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
}

CF_TEST(kvbuf_check_blocks) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 100, 16, 1, 4, CF_DT_F32));
  int32_t ok[] = {5, 99, 0, 7};
  CF_CHECK_OK(cf_kvbuf_check_blocks(&L, ok, 4));
  int32_t bad[] = {5, 100};
  CF_CHECK_ERR(cf_kvbuf_check_blocks(&L, bad, 2), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_ids[1] = 100");
  int32_t dup[] = {5, 6, 5};
  CF_CHECK_ERR(cf_kvbuf_check_blocks(&L, dup, 3), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_ids[2] = 5 repeats");
  int32_t neg[] = {-1};
  CF_CHECK_ERR(cf_kvbuf_check_blocks(&L, neg, 1), CF_ERANGE);
}

/* Scatter then gather over an odd token range and a shuffled block table returns the rows,
 * and each row lands at the documented paged address. */
CF_TEST(kvbuf_scatter_gather_roundtrip) {
  char path[512];
  path_in_tmp(path, sizeof path, "kv_rt");
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 2, 8, 4, 2, 3, CF_DT_F32));
  cf_kvbuf_t b;
  CF_CHECK_OK(cf_kvbuf_create(&b, path, &L));
  int32_t blocks[] = {6, 1, 3, 0, 7};
  int t0 = 3, t1 = 17, row = 6, n = t1 - t0;
  float *k = malloc(sizeof(float) * n * row), *v = malloc(sizeof(float) * n * row);
  for (int i = 0; i < n * row; i++) { k[i] = (float)i; v[i] = -(float)i - 0.5f; }
  cf_kvbuf_scatter(&b, 1, blocks, t0, t1, k, v);
  for (int t = t0; t < t1; t++) {
    float *pk = (float *)(b.data + L.layer_bytes) + blocks[t / 4] * L.stride_block + (t % 4) * L.stride_token;
    float *pv = pk + L.stride_plane;
    CF_CHECK_EQ(pk[0], (float)((t - t0) * row));
    CF_CHECK_EQ(pv[5], -(float)((t - t0) * row + 5) - 0.5f);
  }
  float *k2 = calloc(n * row, sizeof(float)), *v2 = calloc(n * row, sizeof(float));
  cf_kvbuf_gather(&b, 1, blocks, t0, t1, k2, v2);
  CF_CHECK(memcmp(k, k2, sizeof(float) * n * row) == 0);
  CF_CHECK(memcmp(v, v2, sizeof(float) * n * row) == 0);
  /* layer 0 untouched */
  for (size_t i = 0; i < L.layer_bytes; i++) if (b.data[i]) { CF_CHECK(!"layer 0 written"); break; }
  free(k); free(v); free(k2); free(v2);
  cf_kvbuf_close(&b);
  CF_CHECK(access(path, F_OK) != 0); /* creator unlinks */
}

/* A child process opens the buffer by path and writes; the parent sees the bytes. A mismatched
 * expected layout and a garbage file are refused with the reason. */
CF_TEST(kvbuf_shared_across_processes) {
  char path[512];
  path_in_tmp(path, sizeof path, "kv_share");
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 2, 4, 8, 1, 4, CF_DT_F32));
  cf_kvbuf_t owner, b;
  CF_CHECK_OK(cf_kvbuf_create(&owner, path, &L));
  CF_CHECK_ERR(cf_kvbuf_create(&b, path, &L), CF_EEXIST);
  CF_CHECK_OK(cf_kvbuf_open(&b, path, &L));
  cf_kvbuf_close(&b);
  pid_t pid = fork();
  if (pid == 0) {
    cf_kvbuf_t c;
    if (cf_kvbuf_open(&c, path, &L)) _exit(2);
    float *p = cf_kvbuf_row(&c, 1, 1, 3, 7);
    for (int i = 0; i < 4; i++) p[i] = 42.0f + i;
    cf_kvbuf_close(&c);
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  CF_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  float *p = cf_kvbuf_row(&owner, 1, 1, 3, 7);
  CF_CHECK_EQ(p[3], 45.0f);
  cf_kv_layout_t other = L;
  other.num_blocks = 5;
  CF_CHECK_ERR(cf_kvbuf_open(&b, path, &other), CF_EMISMATCH);
  CF_CHECK_CONTAINS(cf_errmsg(), "num_blocks is 4, expected 5");
  char junk[512];
  path_in_tmp(junk, sizeof junk, "junk");
  FILE *f = fopen(junk, "w");
  fputs("hello", f);
  fclose(f);
  CF_CHECK_ERR(cf_kvbuf_open(&b, junk, NULL), CF_EFORMAT);
  CF_CHECK_ERR(cf_kvbuf_open(&b, "/nonexistent/kv", NULL), CF_ENOENT);
  cf_kvbuf_close(&owner);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The engine (child) waits for each layer in turn while the writer (parent) publishes them
 * slowly: every wait returns only once its layer is published, in order. */
CF_TEST(ready_engine_waits_for_layers_across_processes) {
  char path[512];
  path_in_tmp(path, sizeof path, "ready");
  cf_ready_t r;
  CF_CHECK_OK(cf_ready_create(&r, path, 4));
  cf_ready_begin(&r, 2, 77);
  int pfd[2];
  CF_CHECK_EQ(pipe(pfd), 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(pfd[0]);
    cf_ready_t e;
    if (cf_ready_open(&e, path)) _exit(2);
    if (atomic_load(&e.slots[2].req_id) != 77) _exit(3);
    for (uint64_t l = 0; l < 6; l++) {
      uint64_t got;
      if (cf_ready_wait(&e, 2, l + 1, 5000000000LL, &got)) _exit(4);
      if (got < l + 1) _exit(5);
      int64_t t = now_ns();
      if (write(pfd[1], &t, sizeof t) != sizeof t) _exit(6);
    }
    /* the writer finishes with an error: waiting for more layers reports it */
    int rc = cf_ready_wait(&e, 2, 7, 5000000000LL, NULL);
    _exit(rc == CF_ECANCELED ? 0 : 7);
  }
  close(pfd[1]);
  int64_t pub[6];
  for (int l = 0; l < 6; l++) {
    struct timespec d = {0, 20 * 1000 * 1000};
    nanosleep(&d, NULL);
    pub[l] = now_ns();
    cf_ready_publish(&r, 2, (uint64_t)l + 1);
  }
  cf_ready_finish(&r, 2, CF_ECANCELED);
  for (int l = 0; l < 6; l++) {
    int64_t seen;
    CF_CHECK_EQ(read(pfd[0], &seen, sizeof seen), sizeof seen);
    CF_CHECK_MSG(seen >= pub[l], "layer %d seen %lld ns before it was published", l,
                 (long long)(pub[l] - seen));
  }
  int st;
  waitpid(pid, &st, 0);
  CF_CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "engine child exit status %d", WEXITSTATUS(st));
  close(pfd[0]);
  cf_ready_close(&r);
}

CF_TEST(ready_wait_times_out_and_reports_done) {
  char path[512];
  path_in_tmp(path, sizeof path, "ready2");
  cf_ready_t r;
  CF_CHECK_OK(cf_ready_create(&r, path, 1));
  cf_ready_begin(&r, 0, 1);
  int64_t t = now_ns();
  CF_CHECK_ERR(cf_ready_wait(&r, 0, 1, 30 * 1000 * 1000, NULL), CF_ETIMEDOUT);
  CF_CHECK_GE(now_ns() - t, 30 * 1000 * 1000);
  cf_ready_publish(&r, 0, 3);
  cf_ready_publish(&r, 0, 2); /* never goes back */
  uint64_t got;
  CF_CHECK_OK(cf_ready_wait(&r, 0, 3, 0, &got));
  CF_CHECK_EQ(got, 3);
  cf_ready_finish(&r, 0, 0);
  CF_CHECK_ERR(cf_ready_wait(&r, 0, 4, -1, NULL), CF_ERANGE);
  CF_CHECK_ERR(cf_ready_wait(&r, 1, 1, 0, NULL), CF_ERANGE);
  CF_CHECK_ERR(cf_ready_create(&r, path, 0), CF_EINVAL);
  cf_ready_close(&r);
}
