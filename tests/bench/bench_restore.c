/* bench_restore — the executor against baselines measured in the same run.
 *
 * 1. Bandwidth: restore a long prefix (default 32768 tokens, demo-model KV geometry: 8 layers x
 *    2 kv heads x 64) entirely from the CPU tier of a real lib/store into a paged engine buffer
 *    in /dev/shm (block 16), plan h = 0, once with f32 cells (256 MiB) and once with bf16 cells
 *    (128 MiB: kv_dtype = bf16). Reported as GB/s and as a ratio to memcpy of the same bytes
 *    (one thread, and two threads: the executor runs two loaders), then bf16 vs f32: bytes moved
 *    and restore time.
 * 2. Plans: a synthetic llama (demo preset, 4 layers) on the CPU backend; a 1024-token prefix
 *    in chunks of 128 saved in the store; per policy (lib/sched, costs profiled on this backend)
 *    the executed restore time vs the planner's simulated prediction vs the lower bound, with
 *    the CPU tier rate-limited to an emulated 10 Gbps link and to a "balanced" link whose
 *    transfer time equals the predicted full recompute (where the split matters most).
 *
 * 3. SSD tier: the same kind of all-load restore (bf16, 8 layers, 128 KiB cells) with every
 *    chunk on the SSD tier only (O_DIRECT data file in CF_BENCH_DIR, default /var/tmp: a real
 *    disk), 2 loaders, the loaders' rings at depth 1 (one read in flight per loader: the
 *    executor before read_stream) and at depth 8, each as a ratio to a raw O_DIRECT io_uring
 *    sequential read of the same data file (same bytes, cell-sized blocks, queue depth 16 and
 *    2) measured in the same run, interleaved, best of N. O_DIRECT on every side: the page
 *    cache plays no part (the disk's own cache may: all sides read the same file).
 *
 * 4. Remote tier (when redis-server is installed: one is started here on a loopback port and
 *    killed at the end): (a) cell reads through the remote tier (cf_remote_get_each: pipelines of 16
 *    GETs, every value's header and checksum verified) vs raw hiredis pipelines of 16 GETs of
 *    the same keys (the same bytes, nothing checked), 256 KiB and 1 MiB cells, interleaved, best
 *    of 9; (b) part 2's plans with the prefix saved by one store ("node A", written back to
 *    Redis) and restored by another whose local tiers are empty ("node B": every loaded cell
 *    comes from Redis; promotion off, so every restore reads Redis), 2 loaders as in the daemon,
 *    the remote reads held to an emulated 10 and 40 Gbps link (capped at what this Redis
 *    delivers) and to the same links time-scaled to this backend (the H100 setting's load /
 *    recompute balance), each policy's time the median of 3 restores, planned with the daemon's
 *    online re-fit (cf_refit) of the compute term; then the paper-shaped TTFT table.
 *
 *   bench_restore [--tokens N] [--quick] [--ssd] [--remote]   (--ssd: only part 3; --remote: only 4)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cf_bench_raw.h"
#include "cf_refit.h" /* daemon/: the online re-fit the daemon plans with */
#include "cf_toy_backend.h"
#include "exec/cf_cellsrc_store.h"
#include "exec/cf_exec.h"
#include "exec/cf_exec_plan.h"
#include "exec/cf_profile.h"
#include "model/cf_kv.h"
#include "model/cf_model_synth.h"
#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "store/cf_remote.h"
#include "unit/redis_testlib.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
  double Bps;     /* the emulated link */
  char name[40];
  int scaled;     /* time-scaled to this backend (the paper-shaped rows) */
} link_t;

static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_dbl);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_restore: %s: %s: %s\n", what, cf_strerror(rc), cf_errmsg());
  exit(1);
}

typedef struct { char *dst; const char *src; size_t n, piece; } cp_t;
static void *cp_thread(void *a) {
  cp_t *c = a;
  for (size_t o = 0; o < c->n; o += c->piece) memcpy(c->dst + o, c->src + o, c->n - o < c->piece ? c->n - o : c->piece);
  __asm__ volatile("" : : "r"(c->dst) : "memory");
  return NULL;
}

/* best-of-3 memcpy of `bytes` split over `threads` threads, in calls of `piece` bytes (GB/s) */
static double memcpy_gbs(char *dst, const char *src, size_t bytes, int threads, size_t piece) {
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {
    pthread_t th[8];
    cp_t c[8];
    double t = now_s();
    for (int i = 0; i < threads; i++) {
      size_t a = bytes / threads * i, b = i == threads - 1 ? bytes : bytes / threads * (i + 1);
      c[i] = (cp_t){dst + a, src + a, b - a, piece};
      pthread_create(&th[i], NULL, cp_thread, &c[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    t = now_s() - t;
    if (bytes / t / 1e9 > best) best = bytes / t / 1e9;
  }
  return best;
}

static cf_store_t *open_store_remote(const char *dir, const uint8_t fp[16], int C, int L, int kvh, int hd,
                                     uint64_t cpu, cf_dtype_t dt, const char *remote_url);
static cf_store_t *open_store(const char *dir, const uint8_t fp[16], int C, int L, int kvh, int hd, uint64_t cpu,
                              cf_dtype_t dt) {
  return open_store_remote(dir, fp, C, L, kvh, hd, cpu, dt, NULL);
}

/* remote_url: the store's remote tier (NULL: none) */
static cf_store_t *open_store_remote(const char *dir, const uint8_t fp[16], int C, int L, int kvh, int hd,
                                     uint64_t cpu, cf_dtype_t dt, const char *remote_url) {
  cf_store_geom_t g = {.chunk_tokens = (uint32_t)C, .n_layers = (uint32_t)L,
                       .n_kv_heads = (uint32_t)kvh, .head_dim = (uint32_t)hd};
  memcpy(g.fingerprint, fp, 16);
  cf_exec_geom_dtype(&g, dt);
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = cpu;
  sc.ssd_bytes = 0;
  sc.spill = 0;
  sc.remote_url = remote_url;
  sc.remote_promote_bytes = -1; /* every restore reads the remote tier (no promotion into node B's CPU tier) */
  cf_store_t *st;
  int rc = cf_store_open(dir, &g, &sc, &st);
  if (rc) die("store", rc);
  return st;
}

/* An all-load restore of n_chunks stored chunks: sources over `st`, every chunk prepared (CPU-tier
 * ones pinned), plan h = 0, a scattered block table of n_blocks. Exits when a chunk is missing. */
typedef struct {
  cf_cellsrc_store_t cs;
  cf_store_chunkref_t *refs;
  cf_cellsrc_t **srcs;
  void **refp;
  int *h;
  int32_t *blocks;
  size_t found;
} allload_t;

/* The engine's KV buffer at `path` (a shm file) in layout lay; exits on failure. An engine's
 * buffer is resident: every plane is faulted in here, outside the timing. */
static void engine_buffer(cf_kvmap_t *kv, const char *path, const cf_kv_layout_t *lay) {
  int rc = cf_kvmap_create(kv, path, lay);
  if (rc) die("engine buffer", rc);
  for (int l = 0; l < lay->n_layers; l++) {
    memset(kv->k[l], 0, cf_kv_layout_plane_bytes(lay));
    memset(kv->v[l], 0, cf_kv_layout_plane_bytes(lay));
  }
}

static void allload_init(allload_t *a, cf_store_t *st, const cf_store_key_t *keys, int n_chunks, int n_blocks) {
  a->blocks = malloc(sizeof(int32_t) * n_blocks);
  for (int i = 0; i < n_blocks; i++) a->blocks[i] = (int32_t)((i * 7919) % n_blocks); /* scattered */
  cf_cellsrc_store_init(&a->cs, st, NULL, NULL);
  a->refs = malloc(sizeof *a->refs * n_chunks);
  a->srcs = malloc(sizeof(void *) * n_chunks);
  a->refp = malloc(sizeof(void *) * n_chunks);
  a->h = calloc((size_t)n_chunks, sizeof(int));
  a->found = cf_cellsrc_store_prepare(&a->cs, keys, n_chunks, a->refs, a->srcs, NULL);
  if ((int)a->found != n_chunks) { fprintf(stderr, "bench_restore: only %zu of %d chunks stored\n", a->found, n_chunks); exit(1); }
  for (int c = 0; c < n_chunks; c++) a->refp[c] = &a->refs[c];
}

static void allload_free(allload_t *a) {
  cf_cellsrc_store_unprepare(&a->cs, a->refs, a->found);
  cf_cellsrc_store_close(&a->cs);
  free(a->blocks); free(a->refs); free(a->srcs); free(a->refp); free(a->h);
}

typedef struct { double bytes, restore_s, restore_gbs, memcpy1_gbs, memcpy2_gbs; } bw_t;

static void bench_bandwidth(const char *tmp, int T, cf_dtype_t dt, bw_t *res) {
  const int L = 8, KVH = 2, HD = 64, C = 256, BS = 16;
  int n_chunks = T / C;
  T = n_chunks * C;
  size_t es = cf_dtype_size(dt);
  size_t row = (size_t)KVH * HD, cell = 2 * (size_t)C * row, total = (size_t)n_chunks * L * cell * es;
  cf_backend_t *be = cf_toy_create(L, 32, KVH, HD, 1000, 1); /* shape only: an all-load plan computes nothing */
  uint8_t fp[16] = {1, 2, 3};
  char dir[512];
  snprintf(dir, sizeof dir, "%s/store_bw_%s", tmp, cf_dtype_name(dt));
  cf_store_t *st = open_store(dir, fp, C, L, KVH, HD, total + (64u << 20), dt);
  int32_t *tok = malloc(sizeof(int32_t) * T);
  for (int i = 0; i < T; i++) tok[i] = (i * 7) % 1000;
  cf_store_key_t *keys = malloc(sizeof *keys * n_chunks);
  cf_store_chain_keys(fp, tok, (size_t)T, C, keys);
  float *fbuf = malloc(sizeof(float) * cell * L);
  uint8_t *buf = malloc(es * cell * L);
  const void **cells = malloc(sizeof(void *) * L);
  for (size_t i = 0; i < cell * L; i++) fbuf[i] = (float)(i % 977) / 977.0f;
  for (int l = 0; l < L; l++) cells[l] = buf + (size_t)l * cell * es;
  for (int c = 0; c < n_chunks; c++) {
    fbuf[0] = (float)c;
    cf_dtype_from_f32(dt, fbuf, buf, cell * L);
    int rc = cf_store_save(st, &keys[c], C, cells, 0);
    if (rc) die("save", rc);
  }
  cf_kv_layout_t lay;
  cf_kv_layout_init(&lay, L, T / BS, BS, KVH, HD, dt);
  cf_kvmap_t kv;
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/cf-bench-%d-%s", (int)getpid(), cf_dtype_name(dt));
  engine_buffer(&kv, path, &lay);
  allload_t al;
  allload_init(&al, st, keys, n_chunks, T / BS);
  int32_t *blocks = al.blocks, *h = al.h;
  cf_cellsrc_t **srcs = al.srcs;
  void **refp = al.refp;
  double best[3] = {0, 0, 0}, best_s = 1e30;
  for (int nl = 1; nl <= 2; nl++) {
    cf_exec_t ex;
    cf_exec_init(&ex, be, nl);
    for (int rep = 0; rep < 3; rep++) {
      cf_exec_req_t r = {.n_tokens = T, .tokens = tok, .chunk_tokens = C, .h = h, .src = srcs, .ref = refp,
                         .kv = &kv, .blocks = blocks, .n_blocks = T / BS};
      double t = now_s();
      int rc = cf_exec_run(&ex, &r, 1);
      if (rc) die("restore", rc);
      t = now_s() - t;
      if (r.stats.bytes_loaded[CF_EXEC_TIER_CPU] != total) {
        fprintf(stderr, "bench_restore: %llu bytes loaded, expected %zu\n", (unsigned long long)r.stats.bytes_loaded[0], total);
        exit(1);
      }
      if (total / t / 1e9 > best[nl]) best[nl] = total / t / 1e9;
      if (nl == 2 && t < best_s) best_s = t;
    }
  }
  allload_free(&al);
  char *a = malloc(total), *b = malloc(total);
  memset(a, 1, total);
  memset(b, 2, total);
  double m1 = memcpy_gbs(b, a, total, 1, total), m2 = memcpy_gbs(b, a, total, 2, total);
  size_t piece = (size_t)BS * row * es; /* the executor's copy unit: one block plane */
  double mp = memcpy_gbs(b, a, total, 1, piece), base = m1 > mp ? m1 : mp;
  *res = (bw_t){.bytes = (double)total, .restore_s = best_s, .restore_gbs = best[2], .memcpy1_gbs = m1, .memcpy2_gbs = m2};
  printf("restore of a %d-token prefix (%d layers, %.0f MiB %s KV) from the CPU tier into paged blocks of %d:\n", T, L,
         total / 1048576.0, cf_dtype_name(dt), BS);
  printf("  %-34s %8s %10s %10s\n", "", "GB/s", "/memcpy1", "/memcpy2");
  printf("  %-34s %8.2f %10.2f %10.2f\n", "memcpy, 1 thread (baseline)", m1, 1.0, m1 / m2);
  printf("  %-34s %8.2f %10.2f %10.2f\n", "memcpy, 2 threads", m2, m2 / m1, 1.0);
  printf("  %-34s %8.2f %10.2f %10.2f\n", "memcpy, 1 thread, block-sized calls", mp, mp / m1, mp / m2);
  printf("  %-34s %8.2f %10.2f %10.2f\n", "restore, 1 loader", best[1], best[1] / m1, best[1] / m2);
  printf("  %-34s %8.2f %10.2f %10.2f\n", "restore, 2 loaders", best[2], best[2] / m1, best[2] / m2);
  /* same parallelism on both sides: two loaders against memcpy on two threads */
  printf("  goal: restore (2 loaders) >= 0.8 x memcpy (2 threads): %s (%.2f; %.2f x the best 1-thread memcpy)\n",
         best[2] / m2 >= 0.8 ? "met" : "NOT met", best[2] / m2, best[2] / base);
  free(a); free(b);
  cf_kvmap_close(&kv);
  cf_store_close(st);
  be->free(be);
  free(tok); free(keys); free(fbuf); free(buf); free(cells);
}

static void bench_ssd(int T, int quick) {
  const int L = 8, KVH = 2, HD = 64, C = 256, BS = 16;
  const cf_dtype_t dt = CF_DT_BF16;
  int n_chunks = T / C;
  T = n_chunks * C;
  size_t row = (size_t)KVH * HD, cell_el = 2 * (size_t)C * row, cb = cell_el * 2;
  size_t total = (size_t)n_chunks * L * cb;
  const char *base = getenv("CF_BENCH_DIR") ? getenv("CF_BENCH_DIR") : "/var/tmp";
  char dir[600], data[700];
  snprintf(dir, sizeof dir, "%s/cf-bench-ssd-restore.%d", base, (int)getpid());
  snprintf(data, sizeof data, "%s/data.000", dir);
  cf_store_geom_t g = {.chunk_tokens = (uint32_t)C, .n_layers = (uint32_t)L, .n_kv_heads = (uint32_t)KVH,
                       .head_dim = (uint32_t)HD};
  uint8_t fp[16] = {7, 7, 7};
  memcpy(g.fingerprint, fp, 16);
  cf_exec_geom_dtype(&g, dt);
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = 0;
  sc.ssd_bytes = total + (16u << 20);
  sc.file_bytes = sc.ssd_bytes; /* one data file: the raw baseline reads the same file */
  sc.spill = 0;
  cf_store_t *st;
  int rc = cf_store_open(dir, &g, &sc, &st);
  if (rc) die("ssd store", rc);
  int32_t *tok = malloc(sizeof(int32_t) * T);
  for (int i = 0; i < T; i++) tok[i] = (i * 13) % 1000;
  cf_store_key_t *keys = malloc(sizeof *keys * n_chunks);
  cf_store_chain_keys(fp, tok, (size_t)T, C, keys);
  uint16_t *buf = malloc(cb * L);
  const void **cells = malloc(sizeof(void *) * L);
  for (int l = 0; l < L; l++) cells[l] = (uint8_t *)buf + (size_t)l * cb;
  for (int c = 0; c < n_chunks; c++) {
    for (size_t i = 0; i < cell_el * L; i++) buf[i] = (uint16_t)(0x3c00 + (i * 31 + (size_t)c) % 512);
    if ((rc = cf_store_save(st, &keys[c], C, cells, 0))) die("save", rc);
  }
  if ((rc = cf_store_flush(st)) || (rc = cf_store_evict_cpu(st, 0))) die("flush", rc);
  cf_store_stats_t ss;
  cf_store_get_stats(st, &ss);
  cf_backend_t *be = cf_toy_create(L, 32, KVH, HD, 1000, 1); /* shape only: nothing is computed */
  cf_kv_layout_t lay;
  cf_kv_layout_init(&lay, L, T / BS, BS, KVH, HD, dt);
  cf_kvmap_t kv;
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/cf-bench-ssd-%d", (int)getpid());
  engine_buffer(&kv, path, &lay);
  allload_t al;
  allload_init(&al, st, keys, n_chunks, T / BS);
  int32_t *blocks = al.blocks, *h = al.h;
  cf_cellsrc_t **srcs = al.srcs;
  void **refp = al.refp;
  for (int c = 0; c < n_chunks; c++)
    if (srcs[c] != &al.cs.ssd) { fprintf(stderr, "bench_restore: chunk %d not on the SSD tier only\n", c); exit(1); }
  cf_exec_t ex;
  cf_exec_init(&ex, be, 2);
  uint8_t *rb = aligned_alloc(4096, cb * 16);
  const int reps = quick ? 2 : 4, depths[2] = {1, CF_CELLSRC_SSD_DEPTH};
  double raw16 = 1e30, raw2 = 1e30, tr[2] = {1e30, 1e30};
  int peak[2] = {0, 0};
  for (int rep = 0; rep < reps; rep++) {
    double t = cf_bench_raw_read(data, total, cb, 16, rb);
    if (t < raw16) raw16 = t;
    t = cf_bench_raw_read(data, total, cb, 2, rb);
    if (t < raw2) raw2 = t;
    for (int d = 0; d < 2; d++) {
      al.cs.ssd_depth = depths[d];
      cf_exec_req_t r = {.n_tokens = T, .tokens = tok, .chunk_tokens = C, .h = h, .src = srcs, .ref = refp,
                         .kv = &kv, .blocks = blocks, .n_blocks = T / BS};
      t = now_s();
      if ((rc = cf_exec_run(&ex, &r, 1))) die("ssd restore", rc);
      t = now_s() - t;
      if (r.stats.bytes_loaded[CF_EXEC_TIER_SSD] != total || r.stats.load_failures) {
        fprintf(stderr, "bench_restore: ssd restore loaded %llu bytes (%llu failures), expected %zu\n",
                (unsigned long long)r.stats.bytes_loaded[CF_EXEC_TIER_SSD], (unsigned long long)r.stats.load_failures, total);
        exit(1);
      }
      if (t < tr[d]) tr[d] = t;
      peak[d] = r.stats.load_depth_peak;
    }
  }
  printf("restore of a %d-token prefix (%d layers, %.0f MiB bf16 KV, 128 KiB cells) from the SSD tier only,\n"
         "2 loaders, O_DIRECT=%d, %s, best of %d (raw and restores interleaved):\n",
         T, L, total / 1048576.0, ss.ssd_direct, base, reps);
  printf("  %-44s %8s %10s %10s\n", "", "GB/s", "/raw qd16", "/raw qd2");
  printf("  %-44s %8.2f %10.2f %10.2f\n", "raw O_DIRECT io_uring seq read, qd 16", total / raw16 / 1e9, 1.0, raw2 / raw16);
  printf("  %-44s %8.2f %10.2f %10.2f\n", "raw O_DIRECT io_uring seq read, qd 2", total / raw2 / 1e9, raw16 / raw2, 1.0);
  for (int d = 0; d < 2; d++) {
    char lbl[96];
    snprintf(lbl, sizeof lbl, "restore, ring depth %d (peak %d in flight/loader)", depths[d], peak[d]);
    printf("  %-44s %8.2f %10.2f %10.2f\n", lbl, total / tr[d] / 1e9, raw16 / tr[d], raw2 / tr[d]);
  }
  printf("  depth %d vs depth 1: %.2fx\n", CF_CELLSRC_SSD_DEPTH, tr[0] / tr[1]);
  allload_free(&al);
  cf_kvmap_close(&kv);
  unlink(path);
  cf_store_close(st);
  be->free(be);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) {}
  free(rb); free(tok); free(keys); free(buf); free(cells);
}

/* remote_url NULL: the prefix restores from the CPU tier (links: 10 Gbps and "balanced"); else
 * from the remote tier at remote_url, saved there by another store (links: 10 and 40 Gbps). */
static void bench_policies(const char *tmp, int quick, const char *remote_url) {
  cf_model_config_t mc;
  cf_synth_preset("demo", &mc);
  mc.n_layers = 4;
  cf_synth_opts_t so = {.seed = 3, .std = 0.02f, .norm_jitter = 0.0f};
  cf_model_t *m;
  int rc = cf_model_synth(&mc, &so, &m);
  if (rc) die("model", rc);
  cf_backend_t *be;
  if ((rc = cf_backend_cpu_create(m, 1, &be))) die("backend", rc);
  const int C = 128, T = quick ? 512 : 1024, BS = 16, L = mc.n_layers, n = T / C;
  int32_t *tok = malloc(sizeof(int32_t) * T);
  for (int i = 0; i < T; i++) tok[i] = (i * 31 + 3) % mc.vocab;
  cf_kv_t kvr;
  if ((rc = cf_kv_init(&kvr, &mc, T)) || (rc = cf_kv_compute(be, tok, 0, &kvr))) die("reference KV", rc);
  char dir[512];
  snprintf(dir, sizeof dir, "%s/store_pol%s", tmp, remote_url ? "_node_a" : "");
  size_t row = kvr.row, cellf = 2 * (size_t)C * row;
  cf_store_t *st = open_store_remote(dir, m->fingerprint, C, L, mc.n_kv_heads, mc.head_dim, 256u << 20, CF_DT_F32,
                                     remote_url);
  cf_store_key_t keys[64];
  cf_store_chain_keys(m->fingerprint, tok, (size_t)T, C, keys);
  float *buf = malloc(sizeof(float) * cellf * L);
  const void *cells[64];
  for (int c = 0; c < n; c++) {
    for (int l = 0; l < L; l++) {
      memcpy(buf + l * cellf, kvr.k[l] + (size_t)c * C * row, sizeof(float) * C * row);
      memcpy(buf + l * cellf + C * row, kvr.v[l] + (size_t)c * C * row, sizeof(float) * C * row);
      cells[l] = buf + l * cellf;
    }
    if ((rc = cf_store_save(st, &keys[c], C, cells, 0))) die("save", rc);
  }
  if (remote_url) { /* node A wrote the prefix back to Redis; node B, empty, restores it */
    if ((rc = cf_remote_flush(cf_store_remote(st), 60000))) die("remote write-back", rc);
    cf_store_close(st);
    snprintf(dir, sizeof dir, "%s/store_pol_node_b", tmp);
    st = open_store_remote(dir, m->fingerprint, C, L, mc.n_kv_heads, mc.head_dim, 256u << 20, CF_DT_F32, remote_url);
    if (cf_store_lookup(st, keys, (size_t)n, NULL) != 0 || cf_store_lookup_all(st, keys, (size_t)n, NULL) != (size_t)n)
      die("node B: the prefix is not (only) in the remote tier", CF_EINTERNAL);
  }
  cf_sched_cost_t cost;
  memset(&cost, 0, sizeof cost); /* as cf_calib_cost: the fields profiling leaves (tier_Bps: 0 = link_Bps) */
  if ((rc = cf_profile_compute(be, C, 9, &cost))) die("profile", rc); /* median of 9: a shared machine */
  cost.link_latency_s = 2e-6;
  cost.shared_link = 0;
  cf_kv_layout_t lay;
  cf_kv_layout_init(&lay, L, T / BS, BS, mc.n_kv_heads, mc.head_dim, CF_DT_F32);
  cf_kvmap_t kv;
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/cf-bench-pol-%d", (int)getpid());
  if ((rc = cf_kvmap_create(&kv, path, &lay))) die("engine buffer", rc);
  int32_t blocks[1024];
  for (int i = 0; i < T / BS; i++) blocks[i] = i;
  double bytes = (double)T * L * cost.kv_bytes_per_token;
  /* "balanced": the link moves the whole prefix in the time the model predicts a full recompute takes */
  double t_recompute = 0;
  for (int c = 0; c < n; c++) t_recompute += L * cf_cost_step(&cost, (double)c * C, C);
  /* The links. CPU tier: 10 Gbps and "balanced" (the link moves the whole prefix in the time the
   * model predicts a full recompute takes). Remote tier: 10 and 40 Gbps as such, capped at what
   * a probe of this Redis delivers (it cannot beat the server: the daemon plans with the probed
   * rate too), and the same two links time-scaled to this backend (see below). */
  link_t links[4];
  int nl = 0;
  double probe_Bps = 0, lat1_s = 0;
  size_t cellb = cf_store_cell_bytes(cf_store_geom(st));
  int depth = CF_CELLSRC_REMOTE_DEPTH, loaders = remote_url ? 2 : 1; /* the daemon runs 2 loaders */
  if (remote_url && getenv("CF_BENCH_LOADERS")) loaders = atoi(getenv("CF_BENCH_LOADERS")) < 2 ? 1 : 2;
  if (remote_url) {
    double b1 = 0;
    if ((rc = cf_remote_probe(cf_store_remote(st), depth, 8, &probe_Bps)) ||
        (rc = cf_remote_probe(cf_store_remote(st), 1, 16, &b1)))
      die("remote probe", rc);
    lat1_s = (double)cellb / b1; /* one GET of one cell: the round trip a pipeline starts with */
    printf("\nremote tier probe: cell reads at %.3f GB/s in pipelines of %d, %.3f ms for a pipeline of one %zu KiB "
           "cell\n", probe_Bps / 1e9, depth, lat1_s * 1e3, cellb >> 10);
    /* The paper's network setting is an H100 with Llama-3.1-8B restoring over 10 / 40 Gbps. This
     * CPU backend computes far slower than that GPU, so a real 10 Gbps link would make loading
     * free here. A time-scaled link keeps the setting's balance instead: its rate makes "load
     * alone / recompute alone" here equal to that ratio for the same prefix on the H100 model
     * (cf_cost_h100_llama8b: the calib/h100.json fit), i.e. the link is as slow relative to this
     * compute as 10 (40) Gbps is relative to an H100's. */
    cf_sched_cost_t h;
    cf_cost_h100_llama8b(&h);
    double h_rec = 0;
    for (int c = 0; c < T; c += h.chunk_tokens)
      h_rec += h.n_layers * cf_cost_step(&h, c, T - c < h.chunk_tokens ? T - c : h.chunk_tokens);
    double h_bytes = (double)T * h.n_layers * h.kv_bytes_per_token;
    for (int g = 0; g < 2; g++) {
      double gb = g ? 40 : 10, lr = cf_gbps(gb);
      links[nl++] = (link_t){probe_Bps < lr ? probe_Bps : lr, "", 0};
      snprintf(links[nl - 1].name, sizeof links[nl - 1].name, "%g Gbps%s", gb, probe_Bps < lr ? " (= Redis)" : "");
      double ratio = h_bytes / lr / h_rec; /* load alone / recompute alone on the H100 */
      links[nl++] = (link_t){bytes / (ratio * t_recompute), "", 1};
      snprintf(links[nl - 1].name, sizeof links[nl - 1].name, "%g Gbps H100-scaled", gb);
      printf("  %g Gbps on the H100 model, %d-token prefix: load alone %.1f ms, recompute alone %.1f ms (ratio %.2f)\n",
             gb, T, h_bytes / lr * 1e3, h_rec * 1e3, ratio);
    }
  } else {
    links[nl++] = (link_t){cf_gbps(10), "10 Gbps", 0};
    links[nl++] = (link_t){bytes / t_recompute, "balanced", 0};
  }
  int reps = quick ? 1 : 3;
  printf("\nplans on the CPU backend, loads from the %s: synthetic llama (hidden %d, %d layers), %d-token prefix in %d "
         "chunks of %d, %d loader(s);\nprofiled gamma %.3g s, alpha %.3g s/token, beta %.3g s/token^2, re-fitted online "
         "(cf_refit); time = executed restore, median of %d\n",
         remote_url ? "REMOTE tier (Redis, saved by another store)" : "CPU tier", mc.hidden, L, T, n, C, loaders,
         cost.gamma_s, cost.alpha_s, cost.beta_s, reps);
  cf_exec_t ex;
  cf_exec_init(&ex, be, loaders);
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  cf_sim_result_t sim;
  cf_sim_result_init(&sim);
  double res[4][CF_POLICY_COUNT][3]; /* [link][policy]: time, predicted, bound */
  /* The machine is shared (other builds): the compute speed drifts between the profile and the
   * restores. As in the daemon, every executed restore feeds cf_refit, and each plan uses the
   * re-fitted compute scale (cf_refit_apply); each link starts with one unmeasured recompute-only
   * restore so the scale reflects the machine's load now. */
  cf_sched_cost_t calib = cost;
  cf_refit_t fit;
  cf_refit_init(&fit, 0.5);
  cf_refit_set_base(&fit, &calib);
  for (int ri = 0; ri < nl; ri++) {
    calib.link_Bps = links[ri].Bps;
    if (remote_url) /* the remote read pipelines (cf_cellsrc_remote_plan_Bps) */
      calib.link_Bps = cf_cellsrc_remote_plan_Bps(links[ri].Bps, probe_Bps, cellb, depth, loaders);
    cf_ratelimit_t rl;
    cf_ratelimit_init(&rl, links[ri].Bps, 0);
    cf_cellsrc_store_t cs;
    cf_cellsrc_store_init(&cs, st, &rl, NULL);
    cs.remote.limit = &rl; /* the remote tier's cells cross the same emulated link */
    printf("\n  link %s (%.4f GB/s, planned at %.4f GB/s, load alone %.1f ms)\n", links[ri].name, links[ri].Bps / 1e9,
           calib.link_Bps / 1e9, bytes / calib.link_Bps * 1e3);
    printf("  %-10s %10s %12s %10s %10s %10s %8s %8s %9s\n", "policy", "time ms", "predicted ms", "time/pred", "time/bound",
           "pred/bound", "computed", "loaded", "bound ms");
    double bound = 0;
    for (int p = -1; p < CF_POLICY_COUNT; p++) { /* -1: the warm-up recompute (not reported) */
      cost = calib;
      cf_refit_apply(&fit, &cost);
      cf_sched_req_t rq = {.arrival_s = 0, .prefix_tokens = T, .new_tokens = 0, .device = 0};
      cf_sched_input_t in = {.cost = cost, .reqs = &rq, .n_reqs = 1, .refine_evals = -1};
      cf_policy_t pol = p < 0 ? CF_POLICY_RECOMPUTE : (cf_policy_t)p;
      if ((rc = cf_sched_plan(&in, pol, &plan)) || (rc = cf_sim_run(&in, &plan, &sim))) die("plan", rc);
      int h[64];
      for (int c = 0; c < n; c++) h[c] = plan.h[plan.h_off[0] + c];
      /* the plan's link and compute order, as the daemon hands them to the executor */
      uint32_t *rank = cf_exec_plan_load_rank(&plan, 0, n, L);
      int ncops = 0;
      cf_exec_cop_t *cops = cf_exec_plan_cops(&plan, 0, &ncops);
      double ts[8], preds[8];
      cf_exec_req_t r;
      for (int rep = 0; rep < (p < 0 ? 1 : reps); rep++) {
        if (rep) { /* plan again with what the previous restore taught the re-fit */
          cost = calib;
          cf_refit_apply(&fit, &cost);
          in.cost = cost;
          free(rank);
          free(cops);
          if ((rc = cf_sched_plan(&in, pol, &plan)) || (rc = cf_sim_run(&in, &plan, &sim))) die("plan", rc);
          for (int c = 0; c < n; c++) h[c] = plan.h[plan.h_off[0] + c];
          rank = cf_exec_plan_load_rank(&plan, 0, n, L);
          cops = cf_exec_plan_cops(&plan, 0, &ncops);
        }
        preds[rep] = sim.restore_s[0];
        cf_store_chunkref_t refs[64];
        cf_cellsrc_t *srcs[64];
        void *refp[64];
        size_t found = cf_cellsrc_store_prepare(&cs, keys, n, refs, srcs, NULL);
        for (int c = 0; c < n; c++) refp[c] = &refs[c];
        r = (cf_exec_req_t){.n_tokens = T, .tokens = tok, .chunk_tokens = C, .h = h, .src = srcs, .ref = refp,
                            .load_rank = rank, .cops = cops, .n_cops = ncops, .kv = &kv, .blocks = blocks, .n_blocks = T / BS};
        double t = now_s();
        if ((rc = cf_exec_run(&ex, &r, 1))) die("restore", rc);
        ts[rep] = now_s() - t;
        cf_cellsrc_store_unprepare(&cs, refs, found);
        if (r.stats.load_failures) die("restore: a load failed", CF_EIO);
        cf_refit_sample(&fit, &cost, &r.stats, ts[rep], preds[rep]);
      }
      free(rank);
      free(cops);
      if (p < 0) continue;
      double med = median(ts, reps), pred = median(preds, reps);
      /* the bound under the cost model this policy was planned with (the re-fit moves it) */
      bound = cf_bound_single(&cost, T);
      res[ri][p][0] = med;
      res[ri][p][1] = pred;
      res[ri][p][2] = bound;
      printf("  %-10s %10.1f %12.1f %10.2f %10.2f %10.2f %8llu %8llu %9.1f\n", cf_policy_name((cf_policy_t)p), med * 1e3,
             pred * 1e3, med / pred, med / bound, pred / bound, (unsigned long long)r.stats.cells_computed,
             (unsigned long long)(r.stats.cells_loaded[CF_EXEC_TIER_CPU] + r.stats.cells_loaded[CF_EXEC_TIER_SSD] +
                                  r.stats.cells_loaded[CF_EXEC_TIER_REMOTE]), bound * 1e3);
    }
    cf_cellsrc_store_close(&cs);
    cf_ratelimit_close(&rl);
  }
  cf_refit_stats_t fs;
  cf_refit_stats(&fit, &fs);
  printf("\n  re-fit: compute now %.2f x the profile (%llu samples)\n", fs.scale, (unsigned long long)fs.samples);
  cf_refit_close(&fit);
  if (remote_url) { /* the paper's network table: TTFT (the restore: no new tokens) per policy */
    static const cf_policy_t cols[] = {CF_POLICY_RECOMPUTE, CF_POLICY_LOAD, CF_POLICY_LAYERWISE, CF_POLICY_CAKE,
                                       CF_POLICY_OPTIMAL};
    printf("\n  TTFT from the remote tier, time-scaled links: executed (median) / bound | / recompute-only; "
           "executed / predicted\n  %-22s", "link");
    for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++) printf(" %22s", cf_policy_name(cols[k]));
    printf("\n");
    for (int ri = 0; ri < nl; ri++) {
      if (!links[ri].scaled) continue;
      printf("  %-22s", links[ri].name);
      for (size_t k = 0; k < sizeof cols / sizeof cols[0]; k++) {
        const double *v = res[ri][cols[k]];
        printf("    %5.2f | %5.2f; %5.2f", v[0] / v[2], v[0] / res[ri][CF_POLICY_RECOMPUTE][0], v[0] / v[1]);
      }
      printf("\n");
    }
  }
  cf_sched_plan_free(&plan);
  cf_sim_result_free(&sim);
  cf_kvmap_close(&kv);
  cf_store_close(st);
  cf_kv_free(&kvr);
  cf_backend_free(be);
  cf_model_synth_free(m);
  free(tok); free(buf);
}

static void bench_cell_ok(void *ud, size_t i, const cf_remote_cell_t *c) {
  (void)ud, (void)i;
  if (c->status) die("remote cell", c->status);
}

/* Part 4a: remote-tier cell reads vs raw hiredis GET pipelines of the same keys. */
static void bench_remote_cells(const rt_server_t *srv, const char *url, int quick) {
  printf("\nremote tier cell reads (redis-server on loopback, one connection, pipelines of 16 GETs; best of 9,\n"
         "interleaved): cf_remote_get_each, the executor's path (header, key, layer and xxh3 checksum verified)\nvs raw hiredis GETs\n");
  printf("  %-10s %8s %14s %14s %8s\n", "cell", "cells", "remote GB/s", "raw GB/s", "ratio");
  const size_t sizes[2] = {256u << 10, 1u << 20};
  for (int si = 0; si < 2; si++) {
    /* bf16 cells of the given size: C = 256 tokens, 8 KV heads, head_dim 64 (256 KiB) or 256 (1 MiB) */
    cf_store_geom_t g = {.chunk_tokens = 256, .n_layers = 8, .n_kv_heads = 8,
                         .head_dim = (uint32_t)(sizes[si] / (2 * 256 * 8 * 2))};
    for (int i = 0; i < 16; i++) g.fingerprint[i] = (uint8_t)(0x40 + si + i);
    cf_exec_geom_dtype(&g, CF_DT_BF16);
    cf_remote_config_t rc;
    cf_remote_config_default(&rc);
    rc.url = url;
    rc.pool = 1;
    rc.writer = 0;
    cf_remote_t *r;
    int e = cf_remote_open(&rc, &g, &r);
    if (e) die("remote", e);
    const int n_chunks = quick ? 8 : 16, L = (int)g.n_layers, n = n_chunks * L, depth = 16;
    size_t cb = cf_store_cell_bytes(&g);
    uint8_t *buf = malloc(cb * L);
    const void *cells[64];
    for (size_t i = 0; i < cb * L; i++) buf[i] = (uint8_t)(i * 2654435761u >> 13);
    cf_store_key_t *keys = malloc(sizeof *keys * n_chunks);
    for (int c = 0; c < n_chunks; c++) {
      memset(&keys[c], 0, sizeof keys[c]);
      keys[c].b[0] = (uint8_t)c, keys[c].b[1] = (uint8_t)si;
      for (int l = 0; l < L; l++) cells[l] = buf + (size_t)l * cb;
      if ((e = cf_remote_put(r, &keys[c], g.chunk_tokens, cells))) die("remote put", e);
    }
    /* the same keys, as raw GETs on a plain hiredis connection */
    char (*kstr)[200] = malloc(sizeof *kstr * n);
    size_t *klen = malloc(sizeof *klen * n);
    for (int i = 0; i < n; i++) klen[i] = cf_remote_key(r, &keys[i / L], i % L, kstr[i], sizeof kstr[i]);
    redisContext *hc = redisConnect("127.0.0.1", srv->port);
    if (!hc || hc->err) die("hiredis connect", CF_EIO);
    double best_r = 1e30, best_h = 1e30, bytes = 0;
    for (int rep = 0; rep < 9; rep++) {
      /* raw: pipelines of 16 GETs, each reply freed as it is read */
      double t = now_s(), got = 0;
      for (int b = 0; b < n; b += depth) {
        int m = n - b < depth ? n - b : depth;
        for (int i = 0; i < m; i++) redisAppendCommand(hc, "GET %b", kstr[b + i], klen[b + i]);
        for (int i = 0; i < m; i++) {
          void *rep_ = NULL;
          if (redisGetReply(hc, &rep_) != REDIS_OK) die("hiredis GET", CF_EIO);
          got += (double)((redisReply *)rep_)->len;
          freeReplyObject(rep_);
        }
      }
      t = now_s() - t;
      if (t < best_h) best_h = t;
      bytes = got;
      /* the tier: the same pipelines through cf_remote_get, every cell verified */
      t = now_s();
      cf_remote_cell_t rq[16];
      for (int b = 0; b < n; b += depth) {
        int m = n - b < depth ? n - b : depth;
        for (int i = 0; i < m; i++) rq[i] = (cf_remote_cell_t){.key = keys[(b + i) / L], .layer = (uint32_t)((b + i) % L)};
        if ((e = cf_remote_get_each(r, rq, (size_t)m, bench_cell_ok, NULL))) die("remote get", e);
      }
      t = now_s() - t;
      if (t < best_r) best_r = t;
    }
    printf("  %6zu KiB %8d %14.2f %14.2f %8.2f\n", sizes[si] >> 10, n, bytes / best_r / 1e9, bytes / best_h / 1e9,
           best_h / best_r);
    redisFree(hc);
    free(kstr), free(klen), free(keys), free(buf);
    cf_remote_close(r);
  }
}

static void bench_remote(const char *tmp, int quick) {
  if (!rt_have_redis()) {
    printf("\nremote tier: skipped (redis-server not installed: make deps)\n");
    return;
  }
  rt_server_t srv;
  if (rt_standalone(&srv, tmp, "redis", NULL)) die("redis-server", CF_EIO);
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
  bench_remote_cells(&srv, url, quick);
  bench_policies(tmp, quick, url);
  rt_stop(&srv);
}

int main(int argc, char **argv) {
  int T = 32768, quick = 0, ssd_only = 0, remote_only = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quick")) quick = 1;
    else if (!strcmp(argv[i], "--ssd")) ssd_only = 1;
    else if (!strcmp(argv[i], "--remote")) remote_only = 1;
    else { fprintf(stderr, "usage: bench_restore [--tokens N] [--quick] [--ssd] [--remote]\n"); return 2; }
  }
  if (T < 256) T = 256;
  if (ssd_only) {
    bench_ssd(T, quick);
    return 0;
  }
  char tmp[] = "/tmp/cf-bench-restore.XXXXXX";
  if (!mkdtemp(tmp)) { perror("mkdtemp"); return 1; }
  if (remote_only) {
    bench_remote(tmp, quick);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd)) {}
    return 0;
  }
  bw_t f32, bf16;
  bench_bandwidth(tmp, quick ? 4096 : T, CF_DT_F32, &f32);
  printf("\n");
  bench_bandwidth(tmp, quick ? 4096 : T, CF_DT_BF16, &bf16);
  printf("\nkv_dtype bf16 vs f32, same prefix (2 loaders; each against memcpy of its own bytes, same run):\n");
  printf("  %-6s %10s %10s %14s %14s\n", "dtype", "MiB moved", "restore ms", "/memcpy 2 thr", "/memcpy 1 thr");
  const bw_t *rs[2] = {&f32, &bf16};
  for (int i = 0; i < 2; i++)
    printf("  %-6s %10.0f %10.2f %14.2f %14.2f\n", i ? "bf16" : "f32", rs[i]->bytes / 1048576.0, rs[i]->restore_s * 1e3,
           rs[i]->restore_gbs / rs[i]->memcpy2_gbs, rs[i]->restore_gbs / rs[i]->memcpy1_gbs);
  printf("  bytes bf16/f32 %.2f, restore time bf16/f32 %.2f\n", bf16.bytes / f32.bytes, bf16.restore_s / f32.restore_s);
  printf("\n");
  bench_ssd(quick ? 8192 : T, quick);
  printf("\n");
  bench_policies(tmp, quick, NULL);
  bench_remote(tmp, quick);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
  if (system(cmd)) {}
  return 0;
}
