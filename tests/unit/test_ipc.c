/* lib/ipc: shared paged KV buffer and readiness counters, across real processes (fork). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "ipc/cf_shmguard.h"

static void path_in_tmp(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", cf_test_tmpdir(), name);
}

CF_TEST(kvmap_layout_is_vllm_paged) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 3, 10, 16, 2, 8, CF_DT_F32));
  CF_CHECK_EQ(L.head_stride, 8 * 4);
  CF_CHECK_EQ(L.token_stride, 16 * 4);
  CF_CHECK_EQ(L.block_stride, 256 * 4);
  CF_CHECK_EQ(cf_kv_layout_plane_bytes(&L), 2560 * 4);
  uint64_t ko, vo;
  cf_kvmap_file_offsets(&L, 2, &ko, &vo);
  CF_CHECK_EQ(ko, CF_KVMAP_HEADER + 2 * 2 * 2560 * 4);
  CF_CHECK_EQ(vo, ko + 2560 * 4);
  CF_CHECK_ERR(cf_kv_layout_init(&L, 3, 0, 16, 2, 8, CF_DT_F32), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "num_blocks");
  CF_CHECK_ERR(cf_kv_layout_init(&L, 3, 1, 16, 2, 8, CF_DT_I32), CF_EDTYPE);
  cf_kv_shape_t mc = {.n_layers = 3, .n_kv_heads = 2, .head_dim = 4};
  CF_CHECK_OK(cf_kv_layout_init(&L, 3, 10, 16, 2, 8, CF_DT_F32));
  CF_CHECK_ERR(cf_kv_layout_check(&L, &mc), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "head_dim 8, model has 4");
  L.block_stride = 10;
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_stride 10");
  CF_CHECK_OK(cf_kv_layout_init(&L, 3, 10, 16, 2, 8, CF_DT_F32));
  L.token_stride = 40; /* rows of two heads (64 bytes) overlap */
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
  /* HND: [block][head][token][dim] */
  L.token_stride = 32; L.head_stride = 32 * 16; L.block_stride = 2 * 32 * 16;
  CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
}

CF_TEST(kvmap_check_blocks) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 100, 16, 1, 4, CF_DT_F32));
  int32_t ok[] = {5, 99, 0, 7};
  CF_CHECK_OK(cf_kvmap_check_blocks(&L, ok, 4));
  int32_t bad[] = {5, 100};
  CF_CHECK_ERR(cf_kvmap_check_blocks(&L, bad, 2), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_ids[1] = 100");
  int32_t dup[] = {5, 6, 5};
  CF_CHECK_ERR(cf_kvmap_check_blocks(&L, dup, 3), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "block_ids[2] = 5 repeats");
  int32_t neg[] = {-1};
  CF_CHECK_ERR(cf_kvmap_check_blocks(&L, neg, 1), CF_ERANGE);
}

/* Scatter then gather over an odd token range and a shuffled block table returns the rows,
 * and each row lands at the documented paged address. */
CF_TEST(kvmap_scatter_gather_roundtrip) {
  char path[512];
  path_in_tmp(path, sizeof path, "kv_rt");
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 2, 8, 4, 2, 3, CF_DT_F32));
  cf_kvmap_t b;
  CF_CHECK_OK(cf_kvmap_create(&b, path, &L));
  int32_t blocks[] = {6, 1, 3, 0, 7};
  int t0 = 3, t1 = 17, row = 6, n = t1 - t0;
  float *k = malloc(sizeof(float) * n * row), *v = malloc(sizeof(float) * n * row);
  for (int i = 0; i < n * row; i++) { k[i] = (float)i; v[i] = -(float)i - 0.5f; }
  cf_kvmap_scatter(&b, 1, blocks, t0, t1, k, v);
  for (int t = t0; t < t1; t++) {
    float *pk = (float *)(b.maps[0].addr + CF_KVMAP_HEADER + 2 * cf_kv_layout_plane_bytes(&L) +
                          blocks[t / 4] * L.block_stride + (t % 4) * L.token_stride);
    float *pv = (float *)((uint8_t *)pk + cf_kv_layout_plane_bytes(&L));
    CF_CHECK_EQ(pk[0], (float)((t - t0) * row));
    CF_CHECK_EQ(pv[5], -(float)((t - t0) * row + 5) - 0.5f);
  }
  float *k2 = calloc(n * row, sizeof(float)), *v2 = calloc(n * row, sizeof(float));
  cf_kvmap_gather(&b, 1, blocks, t0, t1, k2, v2);
  CF_CHECK(memcmp(k, k2, sizeof(float) * n * row) == 0);
  CF_CHECK(memcmp(v, v2, sizeof(float) * n * row) == 0);
  /* layer 0 untouched */
  for (size_t i = 0; i < 2 * cf_kv_layout_plane_bytes(&L); i++)
    if (b.k[0][i]) { CF_CHECK(!"layer 0 written"); break; }
  free(k); free(v); free(k2); free(v2);
  cf_kvmap_close(&b);
  CF_CHECK(access(path, F_OK) != 0); /* creator unlinks */
}

/* A child process opens the buffer by path and writes; the parent sees the bytes. A mismatched
 * expected layout and a garbage file are refused with the reason. */
CF_TEST(kvmap_shared_across_processes) {
  char path[512];
  path_in_tmp(path, sizeof path, "kv_share");
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 2, 4, 8, 1, 4, CF_DT_F32));
  cf_kvmap_t owner, b;
  CF_CHECK_OK(cf_kvmap_create(&owner, path, &L));
  CF_CHECK_ERR(cf_kvmap_create(&b, path, &L), CF_EEXIST);
  CF_CHECK_OK(cf_kvmap_open(&b, path, &L));
  cf_kvmap_close(&b);
  pid_t pid = fork();
  if (pid == 0) {
    cf_kvmap_t c;
    if (cf_kvmap_open(&c, path, &L)) _exit(2);
    float *p = cf_kvmap_row(&c, 1, 1, 3, 7);
    for (int i = 0; i < 4; i++) p[i] = 42.0f + i;
    cf_kvmap_close(&c);
    _exit(0);
  }
  int st;
  waitpid(pid, &st, 0);
  CF_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  float *p = cf_kvmap_row(&owner, 1, 1, 3, 7);
  CF_CHECK_EQ(p[3], 45.0f);
  cf_kv_layout_t other = L;
  other.num_blocks = 5;
  CF_CHECK_ERR(cf_kvmap_open(&b, path, &other), CF_EMISMATCH);
  CF_CHECK_CONTAINS(cf_errmsg(), "num_blocks is 4, expected 5");
  /* attach by (path, offset) per layer as RegisterEngine declares it: same bytes */
  const char *paths[2] = {path, path};
  uint64_t ko[2], vo[2];
  for (int l = 0; l < 2; l++) cf_kvmap_file_offsets(&L, l, &ko[l], &vo[l]);
  CF_CHECK_OK(cf_kvmap_attach(&b, &L, paths, ko, paths, vo));
  CF_CHECK_EQ(b.n_maps, 1);
  CF_CHECK_EQ(((float *)cf_kvmap_row(&b, 1, 1, 3, 7))[3], 45.0f);
  cf_kvmap_close(&b);
  CF_CHECK(access(path, F_OK) == 0); /* an attach never unlinks */
  vo[1] += 4096; /* past the end of the file */
  CF_CHECK_ERR(cf_kvmap_attach(&b, &L, paths, ko, paths, vo), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer 1 V buffer");
  char junk[512];
  path_in_tmp(junk, sizeof junk, "junk");
  FILE *f = fopen(junk, "w");
  fputs("hello", f);
  fclose(f);
  CF_CHECK_ERR(cf_kvmap_open(&b, junk, NULL), CF_EFORMAT);
  CF_CHECK_ERR(cf_kvmap_open(&b, "/nonexistent/kv", NULL), CF_ENOENT);
  cf_kvmap_close(&owner);
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

/* A non-dense (HND) layout across two files, attached: scatter/gather still round-trip and
 * land at the strided addresses. */
CF_TEST(kvmap_attach_hnd_two_files) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 3, 4, 2, 2, CF_DT_F32));
  L.token_stride = 8; L.head_stride = 4 * 8; L.block_stride = 2 * 4 * 8 + 16; /* padded blocks */
  CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
  char pk[512], pv[512];
  path_in_tmp(pk, sizeof pk, "hnd_k");
  path_in_tmp(pv, sizeof pv, "hnd_v");
  for (int i = 0; i < 2; i++) {
    FILE *f = fopen(i ? pv : pk, "w");
    char z[512] = {0};
    fwrite(z, 1, sizeof z, f);
    fclose(f);
  }
  const char *kp[1] = {pk}, *vp[1] = {pv};
  uint64_t ko[1] = {100}, vo[1] = {0};
  cf_kvmap_t m;
  CF_CHECK_OK(cf_kvmap_attach(&m, &L, kp, ko, vp, vo));
  CF_CHECK_EQ(m.n_maps, 2);
  CF_CHECK_EQ(m.dense_rows, 0);
  int32_t blocks[3] = {2, 0, 1};
  float k[10 * 4], v[10 * 4], k2[10 * 4], v2[10 * 4];
  for (int i = 0; i < 40; i++) { k[i] = (float)i + 1; v[i] = -(float)i - 1; }
  cf_kvmap_scatter(&m, 0, blocks, 1, 11, k, v);
  /* token 5 -> block blocks[1] = 0, slot 1; head 1, dim 0 */
  float *p = (float *)(m.k[0] + 0 * L.block_stride + 1 * L.token_stride + 1 * L.head_stride);
  CF_CHECK_EQ(p[0], k[(5 - 1) * 4 + 2]);
  cf_kvmap_gather(&m, 0, blocks, 1, 11, k2, v2);
  CF_CHECK(memcmp(k, k2, sizeof k) == 0 && memcmp(v, v2, sizeof v) == 0);
  cf_kvmap_close(&m);
}

/* 2-byte dtypes, dense (NHD) and strided (HND) layouts: the raw scatter/gather moves the bytes
 * unchanged; the converting ones round fp32 to nearest even on the way in (ties to even, the
 * CUDA kernels' __float2bfloat16 / __float2half) and widen exactly on the way out. */
CF_TEST(kvmap_bf16_f16_raw_and_converting) {
  const cf_dtype_t dts[2] = {CF_DT_BF16, CF_DT_F16};
  for (int di = 0; di < 2; di++)
    for (int hnd = 0; hnd < 2; hnd++) {
      cf_dtype_t dt = dts[di];
      cf_kv_layout_t L;
      CF_CHECK_OK(cf_kv_layout_init(&L, 2, 6, 4, 2, 3, dt));
      CF_CHECK_EQ(L.head_stride, 3 * 2);
      if (hnd) { L.token_stride = 3 * 2; L.head_stride = 4 * 3 * 2; L.block_stride = 2 * 4 * 3 * 2 + 8; }
      CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
      uint8_t *kp = calloc(1, 2 * cf_kv_layout_plane_bytes(&L)), *vp = kp + cf_kv_layout_plane_bytes(&L);
      uint8_t *k0[2] = {kp, kp}, *v0[2] = {vp, vp};
      cf_kvmap_t m;
      CF_CHECK_OK(cf_kvmap_view(&m, &L, k0, v0));
      CF_CHECK_EQ(m.dense_rows, !hnd);
      int32_t blocks[4] = {5, 2, 0, 3};
      enum { N = 13 * 6 }; /* tokens [2, 15), 6 elements a row */
      uint16_t rk[N], rv[N], gk[N], gv[N];
      for (int i = 0; i < N; i++) { rk[i] = (uint16_t)(0x3c00 + 7 * i); rv[i] = (uint16_t)(0xbc00 + 5 * i); }
      cf_kvmap_scatter(&m, 1, blocks, 2, 15, rk, rv);
      /* token 9 -> block blocks[2] = 0, slot 1; head 1, dim 2 = element (9-2)*6 + 3 + 2 */
      uint16_t got;
      memcpy(&got, m.k[1] + 0 * L.block_stride + 1 * L.token_stride + 1 * L.head_stride + 2 * 2, 2);
      CF_CHECK_EQ(got, rk[7 * 6 + 5]);
      cf_kvmap_gather(&m, 1, blocks, 2, 15, gk, gv);
      CF_CHECK(memcmp(rk, gk, sizeof rk) == 0 && memcmp(rv, gv, sizeof rv) == 0);
      /* converting: values with known roundings, then exact widening */
      float fk[N], fv[N], wk[N], wv[N];
      for (int i = 0; i < N; i++) { fk[i] = 1.0f + (float)i / 1024.0f + 1e-7f * (float)(i % 3); fv[i] = -3.0f * fk[i]; }
      if (dt == CF_DT_BF16) {
        fk[0] = 1.0f + 1.0f / 256; /* halfway between 1 and 1 + 2^-7: ties to even -> 1 */
        fk[1] = 1.0f + 3.0f / 256; /* halfway between 1 + 2^-7 and 1 + 2^-6: -> 1 + 2^-6 */
      } else {
        fk[0] = 1.0f + 1.0f / 2048; /* halfway between 1 and 1 + 2^-10: -> 1 */
        fk[1] = 1.0f + 3.0f / 2048; /* -> 1 + 2^-9 */
      }
      cf_kvmap_scatter_f32(&m, 0, blocks, 2, 15, fk, fv);
      cf_kvmap_gather_f32(&m, 0, blocks, 2, 15, wk, wv);
      CF_CHECK_EQ(wk[0], 1.0f);
      CF_CHECK_EQ(wk[1], dt == CF_DT_BF16 ? 1.0f + 1.0f / 64 : 1.0f + 1.0f / 512);
      float ulp = dt == CF_DT_BF16 ? 1.0f / 128 : 1.0f / 1024; /* at [1, 2) */
      int ok = 1;
      for (int i = 2; i < N; i++) {
        if (fabsf(wk[i] - fk[i]) > ulp / 2 || fabsf(wv[i] - fv[i]) > 4 * ulp / 2) ok = 0;
        /* the stored bits are the library's rounding of the same value */
        uint16_t want, bits;
        if (dt == CF_DT_BF16) cf_f32_to_bf16(&fk[i], &want, 1); else cf_f32_to_f16(&fk[i], &want, 1);
        cf_kvmap_gather(&m, 0, blocks, 2 + i / 6, 3 + i / 6, gk, gv);
        memcpy(&bits, &gk[i % 6], 2);
        if (bits != want) ok = 0;
      }
      CF_CHECK(ok);
      cf_kvmap_close(&m);
      free(kp);
    }
}

/* Element (b, t, h, d) of a plane by the formula the proto documents, from explicit strides. */
static uint8_t *elem_at(uint8_t *base, cf_kv_strides_t s, int b, int t, int h, int d) {
  return base + (uint64_t)b * s.block + (uint64_t)t * s.token + (uint64_t)h * s.head + (uint64_t)d * s.dim;
}

/* Elements of tokens [t0, t1) (flat rows k, v of nh x hd elements of es bytes, row 0 = t0)
 * not where the strides ks / vs put them in the paged planes at k0 / v0: the count. */
static int misplaced(uint8_t *k0, uint8_t *v0, cf_kv_strides_t ks, cf_kv_strides_t vs, const int32_t *blocks, int bs,
                     int t0, int t1, int nh, int hd, const void *k, const void *v, size_t es) {
  int bad = 0;
  for (int t = t0; t < t1; t++)
    for (int h = 0; h < nh; h++)
      for (int d = 0; d < hd; d++) {
        size_t e = ((size_t)(t - t0) * nh * hd + (size_t)h * hd + d) * es;
        bad += memcmp(elem_at(k0, ks, blocks[t / bs], t % bs, h, d), (const uint8_t *)k + e, es) != 0;
        bad += memcmp(elem_at(v0, vs, blocks[t / bs], t % bs, h, d), (const uint8_t *)v + e, es) != 0;
      }
  return bad;
}

/* vLLM's CPU attention backend, float32: per layer one tensor [num_blocks][heads][block_size]
 * [2*head_dim]; per (block, head) a K area stored dimension-major ([head_dim][block_size]) then
 * a V area token-major ([block_size][head_dim]). It registers as K and V planes with their own
 * strides (V at offset bs*hd elements), and scatter/gather put every element where the
 * engine's own indexing expects it. The GPU layouts (FlashAttention NHD [2][blocks][bs][heads]
 * [hd], HND, blocks-first [blocks][2][bs][heads][hd]) register too: same test, other strides. */
CF_TEST(kvmap_strided_layouts_vllm_cpu_and_gpu) {
  enum { NB = 5, BS = 4, NH = 2, HD = 3, E = 4 };
  for (int variant = 0; variant < 4; variant++) {
    cf_kv_layout_t L;
    CF_CHECK_OK(cf_kv_layout_init(&L, 1, NB, BS, NH, HD, CF_DT_F32));
    uint64_t voff;
    cf_kv_strides_t ks, vs;
    const char *name;
    if (variant == 0) { /* vLLM CPU f32 */
      name = "vllm-cpu";
      ks = (cf_kv_strides_t){NH * BS * 2 * HD * E, E, BS * 2 * HD * E, BS * E};
      vs = (cf_kv_strides_t){NH * BS * 2 * HD * E, HD * E, BS * 2 * HD * E, E};
      voff = BS * HD * E;
    } else if (variant == 1) { /* FlashAttention NHD [2][NB][BS][NH][HD] */
      name = "flash-nhd";
      ks = vs = (cf_kv_strides_t){BS * NH * HD * E, NH * HD * E, HD * E, E};
      voff = (uint64_t)NB * BS * NH * HD * E;
    } else if (variant == 2) { /* HND [2][NB][NH][BS][HD] */
      name = "hnd";
      ks = vs = (cf_kv_strides_t){NH * BS * HD * E, HD * E, BS * HD * E, E};
      voff = (uint64_t)NB * BS * NH * HD * E;
    } else { /* blocks-first [NB][2][BS][NH][HD] */
      name = "blocks-first";
      ks = vs = (cf_kv_strides_t){2 * BS * NH * HD * E, NH * HD * E, HD * E, E};
      voff = (uint64_t)BS * NH * HD * E;
    }
    L.block_stride = ks.block; L.token_stride = ks.token; L.head_stride = ks.head; L.dim_stride = ks.dim;
    if (variant == 0) L.vs = vs;
    (void)name; /* which variant failed: the line of the failing check and variant loop */
    CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
    size_t bytes = (size_t)NB * BS * NH * HD * E * 2;
    uint8_t *buf = calloc(1, bytes);
    uint8_t *k0[1] = {buf}, *v0[1] = {buf + voff};
    cf_kvmap_t m;
    CF_CHECK_OK(cf_kvmap_view(&m, &L, k0, v0));
    CF_CHECK_EQ(m.dense_rows, variant == 1 || variant == 3); /* token rows dense inside a block */
    CF_CHECK(voff + cf_kv_layout_extent(&L, 1) <= bytes); /* V's last element inside the buffer */
    int32_t blocks[4] = {3, 0, 4, 1};
    enum { T = 14, ROW = NH * HD };
    float k[T * ROW], v[T * ROW], k2[T * ROW], v2[T * ROW];
    for (int i = 0; i < T * ROW; i++) { k[i] = (float)i + 0.5f; v[i] = -(float)i - 0.25f; }
    cf_kvmap_scatter(&m, 0, blocks, 1, 1 + T, k, v);
    /* every element where the engine's indexing has it; K and V areas never collide */
    CF_CHECK_EQ(misplaced(k0[0], v0[0], ks, vs, blocks, BS, 1, 1 + T, NH, HD, k, v, 4), 0);
    cf_kvmap_gather(&m, 0, blocks, 1, 1 + T, k2, v2);
    CF_CHECK(memcmp(k, k2, sizeof k) == 0 && memcmp(v, v2, sizeof v) == 0);
    cf_kvmap_gather_f32(&m, 0, blocks, 1, 1 + T, k2, v2);
    CF_CHECK(memcmp(k, k2, sizeof k) == 0 && memcmp(v, v2, sizeof v) == 0);
    cf_kvmap_close(&m);
    free(buf);
  }
}

/* The same vLLM CPU addressing with 2-byte elements (a bf16 engine that kept the f32 layout's
 * shape, K dimension-major): raw scatter/gather move every element where the formula says,
 * and the converting ones round/widen on the way (element by element). */
CF_TEST(kvmap_strided_bf16_dim_major) {
  enum { NB = 3, BS = 4, NH = 2, HD = 3, E = 2, T = 10, ROW = NH * HD };
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, NB, BS, NH, HD, CF_DT_BF16));
  cf_kv_strides_t ks = {NH * BS * 2 * HD * E, E, BS * 2 * HD * E, BS * E};
  cf_kv_strides_t vs = {NH * BS * 2 * HD * E, HD * E, BS * 2 * HD * E, E};
  L.block_stride = ks.block; L.token_stride = ks.token; L.head_stride = ks.head; L.dim_stride = ks.dim;
  L.vs = vs;
  CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
  uint8_t *buf = calloc(1, (size_t)NB * NH * BS * 2 * HD * E);
  uint8_t *k0[1] = {buf}, *v0[1] = {buf + BS * HD * E};
  cf_kvmap_t m;
  CF_CHECK_OK(cf_kvmap_view(&m, &L, k0, v0));
  int32_t blocks[3] = {2, 0, 1};
  uint16_t k[T * ROW], v[T * ROW], k2[T * ROW], v2[T * ROW];
  for (int i = 0; i < T * ROW; i++) { k[i] = (uint16_t)(0x3f80 + i); v[i] = (uint16_t)(0xbf80 + i); }
  cf_kvmap_scatter(&m, 0, blocks, 1, 1 + T, k, v);
  CF_CHECK_EQ(misplaced(k0[0], v0[0], ks, vs, blocks, BS, 1, 1 + T, NH, HD, k, v, 2), 0);
  cf_kvmap_gather(&m, 0, blocks, 1, 1 + T, k2, v2);
  CF_CHECK(memcmp(k, k2, sizeof k) == 0 && memcmp(v, v2, sizeof v) == 0);
  float fk[T * ROW], fv[T * ROW], wk[T * ROW], wv[T * ROW];
  for (int i = 0; i < T * ROW; i++) { fk[i] = 1.0f + (float)i / 64; fv[i] = -fk[i]; } /* exact in bf16 */
  cf_kvmap_scatter_f32(&m, 0, blocks, 1, 1 + T, fk, fv);
  cf_kvmap_gather_f32(&m, 0, blocks, 1, 1 + T, wk, wv);
  CF_CHECK(memcmp(fk, wk, sizeof fk) == 0 && memcmp(fv, wv, sizeof fv) == 0);
  cf_kvmap_close(&m);
  free(buf);
}

/* Layouts no engine could hold without elements sharing bytes, or strides that are not whole
 * elements, are refused naming the plane and the stride. */
CF_TEST(kvmap_stride_errors_name_the_stride) {
  cf_kv_layout_t L;
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 4, 4, 2, 3, CF_DT_F32));
  L.dim_stride = 6;
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "K dim_stride 6 is not a nonzero multiple of the element size 4");
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 4, 4, 2, 3, CF_DT_F32));
  L.vs = (cf_kv_strides_t){L.block_stride, L.token_stride, L.head_stride, 8}; /* V dims overlap heads */
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "V head_stride 12 overlaps: dim_stride spans 20 bytes");
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 4, 4, 2, 3, CF_DT_F32));
  L.dim_stride = 4 * 4; L.token_stride = 4; L.head_stride = 3 * 16; L.block_stride = 2 * 48; /* K dim-major, fine */
  CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
  L.token_stride = 0;
  CF_CHECK_ERR(cf_kv_layout_check(&L, NULL), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "K token_stride 0");
  /* a dimension of count 1 may carry any stride (torch reports odd ones for size-1 dims) */
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 4, 1, 2, 3, CF_DT_F32));
  L.token_stride = 7;
  CF_CHECK_OK(cf_kv_layout_check(&L, NULL));
  /* the file format cannot record these: create refuses */
  CF_CHECK_OK(cf_kv_layout_init(&L, 1, 4, 4, 2, 3, CF_DT_F32));
  L.dim_stride = 8; L.head_stride = 24; L.token_stride = 48; L.block_stride = 4 * 48;
  char p[512];
  path_in_tmp(p, sizeof p, "strided_create");
  cf_kvmap_t m;
  CF_CHECK_ERR(cf_kvmap_create(&m, p, &L), CF_EINVAL);
}

/* A TP shard's map holds model heads [head0, head0 + n): scatter takes those heads out of whole
 * rows and leaves its buffer's other bytes alone; gather fills only those heads of the rows. */
CF_TEST(kvmap_shard_moves_only_its_heads) {
  enum { NB = 3, BS = 4, MH = 4, HD = 2, T = 9, ROW = MH * HD };
  for (int h0 = 0; h0 < MH; h0 += 2) {
    cf_kv_layout_t L;
    CF_CHECK_OK(cf_kv_layout_init(&L, 1, NB, BS, 2, HD, CF_DT_F32));
    L.head0 = h0;
    L.model_heads = MH;
    cf_kv_shape_t mc = {.n_layers = 1, .n_kv_heads = MH, .head_dim = HD};
    CF_CHECK_OK(cf_kv_layout_check(&L, &mc));
    size_t plane = cf_kv_layout_plane_bytes(&L);
    float *buf = calloc(1, 2 * plane);
    uint8_t *k0[1] = {(uint8_t *)buf}, *v0[1] = {(uint8_t *)buf + plane};
    cf_kvmap_t m;
    CF_CHECK_OK(cf_kvmap_view(&m, &L, k0, v0));
    CF_CHECK_EQ(m.dense_rows, 0);
    int32_t blocks[3] = {2, 0, 1};
    float k[T * ROW], v[T * ROW], g[2][T * ROW];
    for (int i = 0; i < T * ROW; i++) { k[i] = (float)i + 1; v[i] = -(float)i - 1; }
    cf_kvmap_scatter(&m, 0, blocks, 0, T, k, v);
    for (int t = 0; t < T; t++)
      for (int h = 0; h < 2; h++)
        for (int d = 0; d < HD; d++) {
          float *pk = (float *)((uint8_t *)cf_kvmap_row(&m, 0, 0, blocks[t / BS], t % BS) + h * L.head_stride) + d;
          CF_CHECK_EQ(*pk, k[t * ROW + (h0 + h) * HD + d]);
        }
    for (int i = 0; i < T * ROW; i++) g[0][i] = g[1][i] = 7.0f;
    cf_kvmap_gather(&m, 0, blocks, 0, T, g[0], g[1]);
    for (int t = 0; t < T; t++)
      for (int j = 0; j < ROW; j++) {
        int mine = j / HD >= h0 && j / HD < h0 + 2;
        CF_CHECK_EQ(g[0][t * ROW + j], mine ? k[t * ROW + j] : 7.0f);
        CF_CHECK_EQ(g[1][t * ROW + j], mine ? v[t * ROW + j] : 7.0f);
      }
    cf_kvmap_close(&m);
    free(buf);
    L.head0 = 3; /* heads 3..4 of 4 */
    CF_CHECK_ERR(cf_kv_layout_check(&L, &mc), CF_ESHAPE);
    CF_CHECK_CONTAINS(cf_errmsg(), "heads 3..4 of a 4-head row");
  }
}

/* ---------------------------------------------------------------- cf_shmguard
 * A real file mapped MAP_SHARED, truncated under the mapping: the next read past the new end
 * raises a real SIGBUS. Run under `make asan` and `make tsan` too (the sanitizers install
 * their own SIGBUS handling; cf_shmguard's handler must still be the one that runs). */
static unsigned char *shm_file_map(const char *name, size_t len, char *path, size_t pn) {
  path_in_tmp(path, pn, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || ftruncate(fd, (off_t)len) != 0) { if (fd >= 0) close(fd); return NULL; }
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return NULL;
  memset(p, 0xab, len);
  return p;
}

/* The copy out of a truncated watched mapping completes on zeros (memcpy, as Save copies, and
 * plain loads), the mapping is reported broken with its path, errno is what it was before the
 * fault, and a SIGBUS anywhere else keeps its default action (the child dies of it). */
CF_TEST(shmguard_truncated_mapping_reads_zeros) {
  CF_CHECK_OK(cf_shmguard_install());
  size_t len = 4 * (size_t)sysconf(_SC_PAGESIZE);
  char path[512];
  unsigned char *p = shm_file_map("guarded.kv", len, path, sizeof path);
  CF_CHECK(p != NULL);
  if (!p) return;
  CF_CHECK_OK(cf_shmguard_add(p, len, path));
  const char *bp = NULL;
  CF_CHECK_EQ(cf_shmguard_broken(p + 1, &bp), 0);
  unsigned long f0 = cf_shmguard_faults();
  CF_CHECK_EQ(truncate(path, 0), 0);
  unsigned char *buf = malloc(len);
  memset(buf, 0x55, len);
  errno = 1234;
  memcpy(buf, p, len);
  CF_CHECK_EQ(errno, 1234);
  size_t nz = 0;
  for (size_t i = 0; i < len; i++) nz += buf[i] != 0;
  CF_CHECK_EQ(nz, 0);
  volatile unsigned char *vp = p;
  CF_CHECK_EQ(vp[len - 1], 0);
  vp[7] = 9; /* the zeros are private pages: writable, the file stays empty */
  CF_CHECK_EQ(vp[7], 9);
  CF_CHECK_EQ(cf_shmguard_faults(), f0 + 1);
  CF_CHECK_EQ(cf_shmguard_broken(p + len / 2, &bp), 1);
  CF_CHECK_STR(bp, path);
  CF_CHECK_EQ(cf_shmguard_broken(buf, &bp), 0); /* outside every watched mapping */
  struct stat sb;
  CF_CHECK(stat(path, &sb) == 0 && sb.st_size == 0);
  cf_shmguard_remove(p);
  CF_CHECK_EQ(cf_shmguard_broken(p, NULL), 0);
  munmap(p, len);
  free(buf);

  char upath[512];
  unsigned char *u = shm_file_map("unguarded.kv", len, upath, sizeof upath);
  CF_CHECK(u != NULL);
  if (!u) return;
  pid_t pid = fork();
  if (pid == 0) {
    if (truncate(upath, 0) != 0) _exit(2);
    volatile unsigned char *vu = u;
    _exit(vu[len - 1] == 0 ? 3 : 4); /* not reached: SIGBUS, default action */
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CF_CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGBUS, "child status %#x, expected death by SIGBUS", st);
  munmap(u, len);
}

/* Engines come and go (their slots freed and reused) while another thread asks about a mapping
 * that stays: the answer never changes and no slot is read while half written (under TSan: the
 * slot's len and broken were plain fields, written by the reuse while the reader read them). */
static atomic_int shm_stop;
static void *shm_churn(void *arg) {
  unsigned char *pages = arg;
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  for (int i = 0; !atomic_load(&shm_stop) && i < 200000; i++) {
    unsigned char *a = pages + (size_t)(i % 4) * pg;
    if (cf_shmguard_add(a, pg, "churn") == 0) cf_shmguard_remove(a);
  }
  return NULL;
}
CF_TEST(shmguard_slots_reused_while_read) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  unsigned char *stay = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char *pages = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CF_CHECK(stay != MAP_FAILED && pages != MAP_FAILED);
  if (stay == MAP_FAILED || pages == MAP_FAILED) return;
  /* free slots below the one that stays, so the churn reuses slots the reader scans past */
  unsigned char *lo[3];
  for (int i = 0; i < 3; i++) { lo[i] = pages + (size_t)i * pg; CF_CHECK_OK(cf_shmguard_add(lo[i], pg, "lo")); }
  CF_CHECK_OK(cf_shmguard_add(stay, pg, "stay"));
  for (int i = 0; i < 3; i++) cf_shmguard_remove(lo[i]);
  atomic_store(&shm_stop, 0);
  pthread_t th[2];
  for (int t = 0; t < 2; t++) pthread_create(&th[t], NULL, shm_churn, pages);
  int wrong = 0;
  for (int i = 0; i < 20000; i++) {
    const char *bp = NULL;
    wrong += cf_shmguard_broken(stay + (size_t)(i % (int)pg), &bp) != 0;
    wrong += cf_shmguard_broken(pages + (size_t)(i % 4) * pg, &bp) != 0;
  }
  atomic_store(&shm_stop, 1);
  for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
  CF_CHECK_EQ(wrong, 0);
  cf_shmguard_remove(stay);
  munmap(stay, pg);
  munmap(pages, 4 * pg);
}
