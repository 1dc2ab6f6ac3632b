/* lib/exec: restores with random staircases and injected load failures produce exactly the KV
 * of a full recompute in the engine's paged shared-memory buffer; readiness arrives in order
 * (checked by a real engine process waiting on the counter); cancel, backend errors, bad plans. */
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "util/cf_assert.h"
#include "cf_toy_backend.h"
#include "exec/cf_exec.h"
#include "exec/cf_exec_plan.h"
#include "model/cf_model_synth.h"
#include "util/cf_mempool.h"

typedef struct {
  cf_backend_t *be;
  int L, C, T, n_chunks;
  size_t row;
  float *refk, *refv;     /* [L][T][row] full recompute */
  float *cells;           /* [n_chunks][L][2][C][row]: stored = ref with the lowest mantissa bit flipped */
  int32_t *tokens;
  cf_kvmap_t kv;
  int32_t *blocks;
  int n_blocks;
} fx_t;

/* Fixture on backend `be` (owned by the fixture from now on). */
static void fx_init_be(fx_t *f, cf_backend_t *be, int C, int T, int block_size, const char *name) {
  memset(f, 0, sizeof *f);
  f->be = be;
  const cf_model_config_t *mc = &be->model->cfg;
  int L = mc->n_layers;
  f->L = L; f->C = C; f->T = T;
  f->n_chunks = (T + C - 1) / C;
  f->row = (size_t)mc->n_kv_heads * mc->head_dim;
  f->tokens = malloc(sizeof(int32_t) * T);
  for (int t = 0; t < T; t++) f->tokens[t] = (int32_t)((t * 31 + 7) % 97);
  f->refk = malloc(sizeof(float) * L * T * f->row);
  f->refv = malloc(sizeof(float) * L * T * f->row);
  float **k = malloc(sizeof(float *) * L), **v = malloc(sizeof(float *) * L);
  for (int l = 0; l < L; l++) { k[l] = f->refk + (size_t)l * T * f->row; v[l] = f->refv + (size_t)l * T * f->row; }
  cf_fwd_args_t a = {.l0 = 0, .l1 = L, .t0 = 0, .t1 = T, .tokens = f->tokens, .k = k, .v = v};
  CF_ASSERT(f->be->forward(f->be, &a) == 0);
  free(k); free(v);
  size_t cell = (size_t)C * f->row;
  f->cells = calloc((size_t)f->n_chunks * L * 2 * cell, sizeof(float));
  for (int c = 0; c < f->n_chunks; c++)
    for (int l = 0; l < L; l++)
      for (int t = c * C; t < (c + 1) * C && t < T; t++)
        for (size_t j = 0; j < f->row; j++) {
          float *dk = f->cells + (((size_t)c * L + l) * 2) * cell + (size_t)(t - c * C) * f->row + j;
          float *dv = dk + cell;
          *dk = f->refk[((size_t)l * T + t) * f->row + j];
          *dv = f->refv[((size_t)l * T + t) * f->row + j];
          uint32_t u;
          memcpy(&u, dk, 4); u ^= 1; memcpy(dk, &u, 4);
          memcpy(&u, dv, 4); u ^= 1; memcpy(dv, &u, 4);
        }
  /* the engine's block table: a shuffled subset of a larger pool */
  f->n_blocks = (T + block_size - 1) / block_size;
  int pool = f->n_blocks * 2 + 3;
  cf_kv_layout_t lay;
  CF_ASSERT(cf_kv_layout_init(&lay, L, pool, block_size, mc->n_kv_heads, mc->head_dim, CF_DT_F32) == 0);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", cf_test_tmpdir(), name);
  CF_ASSERT(cf_kvmap_create(&f->kv, path, &lay) == 0);
  int *perm = malloc(sizeof(int) * pool);
  for (int i = 0; i < pool; i++) perm[i] = i;
  for (int i = pool - 1; i > 0; i--) { int j = (int)(cf_test_rand() % (unsigned)(i + 1)); int x = perm[i]; perm[i] = perm[j]; perm[j] = x; }
  f->blocks = malloc(sizeof(int32_t) * f->n_blocks);
  for (int i = 0; i < f->n_blocks; i++) f->blocks[i] = perm[i];
  free(perm);
}

static void fx_init(fx_t *f, int L, int C, int T, int block_size, const char *name) {
  fx_init_be(f, cf_toy_create(L, 24, 2, 8, 97, 1234), C, T, block_size, name);
}

static void fx_free(fx_t *f) {
  f->be->free(f->be);
  free(f->refk); free(f->refv); free(f->cells); free(f->tokens); free(f->blocks);
  cf_kvmap_close(&f->kv);
}

static const float *stored(const fx_t *f, int c, int l, int kv, int t) {
  size_t cell = (size_t)f->C * f->row;
  return f->cells + (((size_t)c * f->L + l) * 2 + kv) * cell + (size_t)(t - c * f->C) * f->row;
}

/* Check the engine buffer against the plan: layers >= H[c] hold the stored bytes exactly,
 * everything is within 1e-4 of the full recompute. Returns the number of bad cells. */
static int fx_verify(const fx_t *f, const int *H, const char *what) {
  int bad = 0;
  float *k = malloc(sizeof(float) * f->row * f->C), *v = malloc(sizeof(float) * f->row * f->C);
  for (int c = 0; c < f->n_chunks; c++)
    for (int l = 0; l < f->L; l++) {
      int t0 = c * f->C, t1 = t0 + f->C < f->T ? t0 + f->C : f->T;
      cf_kvmap_gather(&f->kv, l, f->blocks, t0, t1, k, v);
      int exact = l >= H[c], cell_bad = 0;
      for (int t = t0; t < t1 && !cell_bad; t++)
        for (size_t j = 0; j < f->row; j++) {
          float gk = k[(size_t)(t - t0) * f->row + j], gv = v[(size_t)(t - t0) * f->row + j];
          if (exact) {
            if (memcmp(&gk, stored(f, c, l, 0, t) + j, 4) || memcmp(&gv, stored(f, c, l, 1, t) + j, 4)) { cell_bad = 1; break; }
          } else {
            float rk = f->refk[((size_t)l * f->T + t) * f->row + j], rv = f->refv[((size_t)l * f->T + t) * f->row + j];
            if (!(fabsf(gk - rk) <= 1e-4f && fabsf(gv - rv) <= 1e-4f)) { cell_bad = 1; break; }
          }
        }
      if (cell_bad) {
        if (bad < 5) printf("    %s: cell (chunk %d, layer %d) wrong (%s)\n", what, c, l, exact ? "loaded, not bit-exact" : "computed, off by > 1e-4");
        bad++;
      }
    }
  free(k); free(v);
  return bad;
}

static void fx_req(fx_t *f, cf_exec_req_t *r, const int *h, cf_cellsrc_t **srcs, void **refs) {
  memset(r, 0, sizeof *r);
  for (int c = 0; c < f->n_chunks; c++) refs[c] = CF_CELLSRC_REF(c);
  r->n_tokens = f->T; r->tokens = f->tokens; r->chunk_tokens = f->C; r->h = h;
  r->src = srcs; r->ref = refs; r->kv = &f->kv; r->blocks = f->blocks; r->n_blocks = f->n_blocks;
}

static void clear_engine(fx_t *f) {
  for (int l = 0; l < f->L; l++) {
    memset(f->kv.k[l], 0xff, cf_kv_layout_plane_bytes(&f->kv.layout));
    memset(f->kv.v[l], 0xff, cf_kv_layout_plane_bytes(&f->kv.layout));
  }
}

CF_TEST(exec_fixed_policies_match_full_recompute) {
  fx_t f;
  fx_init(&f, 4, 16, 16 * 6, 8, "kv_fixed");
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  cf_cellsrc_mem_t mem;
  /* the source holds full chunks only */
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
  cf_cellsrc_t *srcs[6];
  void *refs[6];
  for (int c = 0; c < 6; c++) srcs[c] = &mem.src;
  int plans[5][6] = {{4, 4, 4, 4, 4, 4},   /* recompute */
                     {0, 0, 0, 0, 0, 0},   /* load */
                     {4, 4, 4, 0, 0, 0},   /* cake-like: compute front, load back */
                     {2, 2, 2, 2, 2, 2},   /* layerwise */
                     {0, 1, 2, 3, 3, 4}};  /* rising staircase: computed chunks attend over loaded ones */
  for (int p = 0; p < 5; p++) {
    clear_engine(&f);
    cf_exec_req_t r;
    fx_req(&f, &r, plans[p], srcs, refs);
    int64_t lr[4];
    r.layer_ready_ns = lr;
    CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
    char what[32];
    snprintf(what, sizeof what, "plan %d", p);
    CF_CHECK_EQ(fx_verify(&f, plans[p], what), 0);
    int sum = 0;
    for (int c = 0; c < 6; c++) sum += plans[p][c];
    CF_CHECK_EQ(r.stats.cells_computed, sum);
    CF_CHECK_EQ(r.stats.cells_loaded[0], 24 - sum);
    CF_CHECK_EQ(r.stats.layers_ready, 4);
    for (int l = 1; l < 4; l++) CF_CHECK_LE(lr[l - 1], lr[l]);
  }
  fx_free(&f);
}

/* One random restore on fixture f (n_full full chunks, maybe a partial tail): a random
 * staircase, each stored cell failing with probability 1/fail_one_in (evicted or corrupt), run
 * with n_loaders loaders; the engine must end with the full-recompute KV, loaded cells exact. */
static void random_restore_in(fx_t *f, int n_full, int fail_one_in, int n_loaders, cf_mempool_t *pool,
                              const char *what) {
  int n = f->n_chunks, L = f->L;
  int *h = malloc(sizeof(int) * n), *H = malloc(sizeof(int) * n), *fail = calloc((size_t)n * L, sizeof(int));
  for (int c = 0; c < n; c++) h[c] = c >= n_full ? L : (int)(cf_test_rand() % (L + 1));
  for (int c = 0; c < n; c++) {
    H[c] = h[c];
    for (int l = 0; c < n_full && l < L; l++)
      if (cf_test_rand() % fail_one_in == 0) {
        fail[c * L + l] = cf_test_rand() % 2 ? CF_ECORRUPT : CF_ENOTFOUND;
        if (l >= h[c] && l + 1 > H[c]) H[c] = l + 1;
      }
  }
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "ssd", 1, CF_DT_F32, f->cells, n, L, f->C, f->row, fail, NULL);
  cf_cellsrc_t **srcs = malloc(sizeof(void *) * n);
  void **refs = malloc(sizeof(void *) * n);
  for (int c = 0; c < n; c++) srcs[c] = &mem.src;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f->be, n_loaders));
  CF_CHECK_OK(cf_exec_set_pool(&ex, pool));
  clear_engine(f);
  cf_exec_req_t r;
  fx_req(f, &r, h, srcs, refs);
  CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
  CF_CHECK_EQ(fx_verify(f, H, what), 0);
  CF_CHECK_EQ(r.stats.cells_computed + r.stats.cells_loaded[1], (uint64_t)n * L);
  uint64_t sumH = 0;
  for (int c = 0; c < n; c++) sumH += (uint64_t)H[c];
  /* cells of a raised chunk loaded before the raise keep their loaded bytes */
  CF_CHECK_LE(r.stats.cells_computed, sumH);
  CF_CHECK_GE(r.stats.cells_computed + r.stats.load_failures, r.stats.cells_planned_compute);
  free(h); free(H); free(fail); free(srcs); free(refs);
}
static void random_restore(fx_t *f, int n_full, int fail_one_in, int n_loaders, const char *what) {
  random_restore_in(f, n_full, fail_one_in, n_loaders, NULL, what);
}

/* Random staircases, random faults (evicted / corrupt cells), random block sizes and a
 * partial last chunk: the engine always ends with the full-recompute KV. */
CF_TEST(exec_random_plans_with_faults) {
  for (int iter = 0; iter < 12; iter++) {
    int L = 2 + (int)(cf_test_rand() % 4), C = 8 << (cf_test_rand() % 2);
    int n_full = 2 + (int)(cf_test_rand() % 6), tail = (int)(cf_test_rand() % 2) * (1 + (int)(cf_test_rand() % (C - 1)));
    int T = n_full * C + tail, bs = 1 << (cf_test_rand() % 5);
    char name[32], what[64];
    snprintf(name, sizeof name, "kv_rand%d", iter);
    snprintf(what, sizeof what, "iter %d (L %d, C %d, T %d, bs %d)", iter, L, C, T, bs);
    fx_t f;
    fx_init(&f, L, C, T, bs, name);
    random_restore(&f, n_full, 5, 1 + iter % 3, what);
    fx_free(&f);
  }
}

/* A real engine process maps the buffer and the readiness file, waits for each layer and
 * checks that layer's KV is complete the moment the counter says so. */
CF_TEST(exec_engine_process_sees_layers_in_order) {
  fx_t f;
  fx_init(&f, 5, 16, 16 * 8, 16, "kv_engine");
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_engine", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 2));
  int h[8] = {5, 3, 3, 2, 1, 1, 0, 0};
  int H[8] = {5, 3, 3, 2, 1, 1, 0, 0};
  /* slow loads so the engine really waits: 8 chunks x 5 layers x 2 KiB at 2 MB/s ~ 40 ms */
  cf_ratelimit_t rl;
  CF_CHECK_OK(cf_ratelimit_init(&rl, 2e6, 0));
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, &rl);
  cf_cellsrc_t *srcs[8];
  void *refs[8];
  for (int c = 0; c < 8; c++) srcs[c] = &mem.src;
  clear_engine(&f);
  cf_ready_begin(&rd, 1, 0); /* a stale value from an earlier restore must not be trusted */
  cf_ready_publish(&rd, 1, 99);
  cf_ready_finish(&rd, 1, 0);
  pid_t pid = fork();
  if (pid == 0) {
    cf_ready_t e;
    cf_kvmap_t kv;
    if (cf_ready_open(&e, rpath) || cf_kvmap_open(&kv, f.kv.maps[0].path, &f.kv.layout)) _exit(2);
    /* wait until our restore (req_id 42) owns the slot */
    for (int i = 0; i < 5000 && atomic_load(&e.slots[1].req_id) != 42; i++) usleep(1000);
    if (atomic_load(&e.slots[1].req_id) != 42) _exit(3);
    float *k = malloc(sizeof(float) * f.row * f.T), *v = malloc(sizeof(float) * f.row * f.T);
    for (int l = 0; l < f.L; l++) {
      if (cf_ready_wait(&e, 1, (uint64_t)l + 1, 10000000000LL, NULL)) _exit(4);
      cf_kvmap_gather(&kv, l, f.blocks, 0, f.T, k, v);
      for (size_t i = 0; i < f.row * f.T; i++) {
        float rk = f.refk[(size_t)l * f.T * f.row + i], rv = f.refv[(size_t)l * f.T * f.row + i];
        if (!(fabsf(k[i] - rk) <= 1e-4f && fabsf(v[i] - rv) <= 1e-4f)) _exit(10 + l);
      }
    }
    _exit(0);
  }
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  r.ready = &rd; r.ready_slot = 1; r.req_id = 42;
  CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
  int st;
  waitpid(pid, &st, 0);
  CF_CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "engine process exit %d (10+l: layer l incomplete when announced)",
               WEXITSTATUS(st));
  CF_CHECK_EQ(atomic_load(&rd.slots[1].status), CF_READY_DONE);
  CF_CHECK_EQ(atomic_load(&rd.slots[1].layers), 5);
  CF_CHECK_EQ(fx_verify(&f, H, "engine"), 0);
  cf_ratelimit_close(&rl);
  cf_ready_close(&rd);
  fx_free(&f);
}

/* Three requests in one batch (different plans, different buffers): all correct. */
CF_TEST(exec_batch_of_requests) {
  fx_t f[3];
  int plans[3][5] = {{3, 3, 3, 3, 3}, {0, 0, 0, 0, 0}, {3, 2, 1, 0, 0}};
  cf_cellsrc_mem_t mem[3];
  cf_cellsrc_t *srcs[3][5];
  void *refs[3][5];
  cf_exec_req_t r[3];
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "kv_batch%d", i);
    fx_init(&f[i], 3, 8, 40, 4, name);
    cf_cellsrc_mem_init(&mem[i], "cpu", 0, CF_DT_F32, f[i].cells, 5, 3, 8, f[i].row, NULL, NULL);
    for (int c = 0; c < 5; c++) srcs[i][c] = &mem[i].src;
    fx_req(&f[i], &r[i], plans[i], srcs[i], refs[i]);
    r[i].req_id = (uint64_t)i;
  }
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f[0].be, 2));
  CF_CHECK_OK(cf_exec_run(&ex, r, 3));
  for (int i = 0; i < 3; i++) {
    CF_CHECK_EQ(r[i].err, 0);
    CF_CHECK_EQ(fx_verify(&f[i], plans[i], "batch"), 0);
    fx_free(&f[i]);
  }
}

/* Cancels the restore once its first layer is ready: mid-restore by construction, however slow
 * the machine (a timer thread would race the rate-limited loads). */
static void cancel_after_first_layer(cf_exec_req_t *r, int layers_ready, void *arg) {
  (void)r;
  if (layers_ready >= 1) atomic_store((atomic_int *)arg, 1);
}

/* Cancelling mid-restore (the engine unregistered) stops it with CF_ECANCELED in the result
 * and in the readiness slot, before the loads would have finished. */
CF_TEST(exec_cancel_mid_restore) {
  fx_t f;
  fx_init(&f, 4, 16, 16 * 8, 16, "kv_cancel");
  cf_ratelimit_t rl;
  CF_CHECK_OK(cf_ratelimit_init(&rl, 1e5, 0)); /* 32 cells x 2 KiB at 100 kB/s: ~650 ms */
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, &rl);
  cf_cellsrc_t *srcs[8];
  void *refs[8];
  for (int c = 0; c < 8; c++) srcs[c] = &mem.src;
  int h[8] = {0};
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_cancel", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 1));
  atomic_int cancel = 0;
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  r.cancel = &cancel; r.ready = &rd;
  r.on_layer = cancel_after_first_layer; r.on_layer_arg = &cancel;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  CF_CHECK_ERR(cf_exec_run(&ex, &r, 1), CF_ECANCELED);
  CF_CHECK_EQ(r.err, CF_ECANCELED);
  CF_CHECK_EQ(atomic_load(&rd.slots[0].status), CF_ECANCELED);
  CF_CHECK_LT(r.stats.cells_loaded[0], 32);
  CF_CHECK_ERR(cf_ready_wait(&rd, 0, 4, 0, NULL), CF_ECANCELED);
  cf_ready_close(&rd);
  cf_ratelimit_close(&rl);
  fx_free(&f);
}

typedef struct { cf_backend_t be; cf_backend_t *inner; int calls, fail_at; } failing_be_t;
static int failing_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  failing_be_t *fb = (failing_be_t *)be;
  if (++fb->calls == fb->fail_at) return cf_seterr(CF_EIO, "injected backend failure");
  return fb->inner->forward(fb->inner, a);
}

/* A backend failure fails that request with its error; the readiness slot says so. */
CF_TEST(exec_backend_error_fails_request) {
  fx_t f;
  fx_init(&f, 3, 8, 32, 8, "kv_beerr");
  failing_be_t fb = {.be = {.name = "failing", .model = f.be->model, .forward = failing_forward},
                     .inner = f.be, .fail_at = 3};
  int h[4] = {3, 3, 3, 3};
  cf_cellsrc_t *srcs[4] = {0};
  void *refs[4];
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_beerr", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 1));
  r.ready = &rd;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, &fb.be, 1));
  CF_CHECK_ERR(cf_exec_run(&ex, &r, 1), CF_EIO);
  CF_CHECK_CONTAINS(cf_errmsg(), "injected backend failure");
  CF_CHECK_EQ(atomic_load(&rd.slots[0].status), CF_EIO);
  cf_ready_close(&rd);
  fx_free(&f);
}

CF_TEST(exec_rejects_bad_requests) {
  fx_t f;
  fx_init(&f, 3, 8, 36, 8, "kv_bad");
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 1));
  CF_CHECK_ERR(cf_exec_init(&ex, f.be, 0), CF_EINVAL);
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, 3, 8, f.row, NULL, NULL);
  cf_cellsrc_t *srcs[5] = {&mem.src, &mem.src, &mem.src, &mem.src, &mem.src};
  void *refs[5];
  int h[5] = {0, 1, 2, 3, 3};
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  CF_CHECK_OK(cf_exec_validate(&ex, &r));
  h[4] = 2; /* the partial tail chunk (4 tokens) cannot be loaded */
  CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "partial last chunk 4");
  h[4] = 3; h[1] = 4;
  CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "h[1] = 4");
  h[1] = 1; srcs[2] = NULL;
  CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "chunk 2 loads layers [2, 3) but has no cell source");
  srcs[2] = &mem.src;
  r.n_blocks = 4;
  CF_CHECK_ERR(cf_exec_run(&ex, &r, 1), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "need 5 blocks");
  r.n_blocks = 5;
  int32_t saved = f.blocks[2];
  f.blocks[2] = f.blocks[0];
  CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "repeats");
  f.blocks[2] = saved;
  r.tokens = NULL;
  CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EINVAL);
  fx_free(&f);
}

static int64_t mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The limiter holds callers to the rate, shared by threads (lower bound only: the machine is
 * shared, so no upper bound on time is asserted). */
CF_TEST(ratelimit_holds_rate) {
  cf_ratelimit_t rl;
  CF_CHECK_OK(cf_ratelimit_init(&rl, 10e6, 0));
  int64_t t = mono();
  for (int i = 0; i < 20; i++) cf_ratelimit_acquire(&rl, 10000); /* 200 kB at 10 MB/s = 20 ms */
  CF_CHECK_GE(mono() - t, 19 * 1000 * 1000);
  CF_CHECK_EQ(rl.bytes_total, 200000);
  cf_ratelimit_close(&rl);
  CF_CHECK_ERR(cf_ratelimit_init(&rl, -1, 0), CF_EINVAL);
  CF_CHECK_OK(cf_ratelimit_init(&rl, 0, 0)); /* unlimited */
  cf_ratelimit_acquire(&rl, 1u << 30);
  CF_CHECK_EQ(rl.waited_ns, 0); /* never sleeps (behaviour, not a time bound) */
  cf_ratelimit_close(&rl);
  cf_ratelimit_acquire(NULL, 5);
}

/* A pure-load plan whose last chunk fails at layer 2: that chunk is recomputed from layer 0
 * to 2, attending over loaded cells that were never staged (gathered back from the engine). */
CF_TEST(exec_failure_recomputes_over_gathered_prefix) {
  fx_t f;
  fx_init(&f, 4, 16, 16 * 6, 8, "kv_gather");
  int fail[6 * 4] = {0};
  fail[5 * 4 + 2] = CF_ECORRUPT;
  fail[3 * 4 + 0] = CF_ENOTFOUND;
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "ssd", 1, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, fail, NULL);
  mem.src.acquire = NULL; /* exercise the copying read path too */
  cf_cellsrc_t *srcs[6];
  void *refs[6];
  for (int c = 0; c < 6; c++) srcs[c] = &mem.src;
  int h[6] = {0}, H[6] = {0, 0, 0, 1, 0, 3};
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  clear_engine(&f);
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
  CF_CHECK_EQ(fx_verify(&f, H, "gather"), 0);
  CF_CHECK_EQ(r.stats.load_failures, 2);
  CF_CHECK_EQ(r.stats.cells_computed + r.stats.cells_loaded[1], 24);
  CF_CHECK_GE(r.stats.cells_computed, 2);
  fx_free(&f);
}

/* The same random plans with faults on the real CPU backend (lib/model, OpenBLAS) and a
 * synthetic llama: computed cells within 1e-4 of one whole-sequence forward. */
CF_TEST(exec_cpu_backend_random_plans_with_faults) {
  cf_model_config_t mc;
  CF_CHECK_OK(cf_synth_preset("tiny", &mc));
  mc.n_layers = 4;
  cf_synth_opts_t so = {.seed = 7, .std = 0.05f, .norm_jitter = 0.1f};
  cf_model_t *m;
  CF_CHECK_OK(cf_model_synth(&mc, &so, &m));
  for (int iter = 0; iter < 6; iter++) {
    cf_backend_t *be;
    CF_CHECK_OK(cf_backend_cpu_create(m, 1, &be));
    int C = 16, n_full = 3 + iter % 4, T = n_full * C + (iter % 2) * 5;
    char name[32];
    snprintf(name, sizeof name, "kv_cpu%d", iter);
    fx_t f;
    fx_init_be(&f, be, C, T, 1 << (iter % 4), name);
    random_restore(&f, n_full, 8, 2, "cpu backend");
    fx_free(&f);
  }
  cf_model_synth_free(m);
}

/* A source that records the order cells are asked for (one loader: deterministic). */
typedef struct { cf_cellsrc_mem_t mem; cf_cellsrc_t src; pthread_mutex_t mu; int log[256][2]; int n; } logsrc_t;
static int logsrc_acquire(cf_cellsrc_t *s, void *ref, int layer, const void **k, const void **v, void **hold) {
  logsrc_t *ls = s->ctx;
  pthread_mutex_lock(&ls->mu);
  if (ls->n < 256) { ls->log[ls->n][0] = (int)(intptr_t)ref; ls->log[ls->n][1] = layer; ls->n++; }
  pthread_mutex_unlock(&ls->mu);
  return ls->mem.src.acquire(&ls->mem.src, ref, layer, k, v, hold);
}
static int logsrc_read(cf_cellsrc_t *s, void *ref, int layer, void *kv) {
  logsrc_t *ls = s->ctx;
  return ls->mem.src.read(&ls->mem.src, ref, layer, kv);
}

/* With a load_rank (the plan's link order) the loads are issued in that order; without one,
 * layer-major. The KV is right either way. */
CF_TEST(exec_loads_follow_the_plan_link_order) {
  fx_t f;
  fx_init(&f, 3, 8, 8 * 4, 8, "kv_order");
  logsrc_t ls;
  memset(&ls, 0, sizeof ls);
  pthread_mutex_init(&ls.mu, NULL);
  cf_cellsrc_mem_init(&ls.mem, "cpu", 0, CF_DT_F32, f.cells, 4, 3, 8, f.row, NULL, NULL);
  ls.src = (cf_cellsrc_t){.tier = "cpu", .tier_index = 0, .read = logsrc_read, .acquire = logsrc_acquire, .ctx = &ls};
  cf_cellsrc_t *srcs[4] = {&ls.src, &ls.src, &ls.src, &ls.src};
  void *refs[4];
  int h[4] = {0, 0, 0, 0};
  uint32_t rank[4 * 3];
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 3; l++) rank[c * 3 + l] = (uint32_t)((3 - c) * 3 + l); /* last chunk first, all its layers */
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 1));
  for (int pass = 0; pass < 2; pass++) {
    clear_engine(&f);
    ls.n = 0;
    cf_exec_req_t r;
    fx_req(&f, &r, h, srcs, refs);
    r.load_rank = pass ? rank : NULL;
    CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
    CF_CHECK_EQ(fx_verify(&f, h, "order"), 0);
    CF_CHECK_EQ(ls.n, 12);
    for (int i = 0; i < 12 && i < ls.n; i++) {
      int c = pass ? 3 - i / 3 : i % 4, l = pass ? i % 3 : i / 4;
      CF_CHECK_MSG(ls.log[i][0] == c && ls.log[i][1] == l, "pass %d load %d: (chunk %d, layer %d), expected (%d, %d)",
                   pass, i, ls.log[i][0], ls.log[i][1], c, l);
    }
  }
  fx_free(&f);
}

typedef struct { cf_backend_t be; cf_backend_t *inner; int n, log[64][3]; } logging_be_t;
static int logging_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  logging_be_t *lb = (logging_be_t *)be;
  if (lb->n < 64) { lb->log[lb->n][0] = a->l0; lb->log[lb->n][1] = a->t0; lb->log[lb->n][2] = a->t1; lb->n++; }
  return lb->inner->forward(lb->inner, a);
}

/* With the plan's compute ops (cops) the compute worker runs exactly those steps in their
 * order (here chunk by chunk, all layers, where its own order would take each layer's four
 * chunks in one step); ops that do not cover the staircase are ignored (work-conserving).
 * The KV is right either way. */
CF_TEST(exec_compute_follows_the_plan_ops) {
  fx_t f;
  fx_init(&f, 3, 8, 32, 8, "kv_cops");
  logging_be_t lb = {.be = {.name = "logging", .model = f.be->model, .forward = logging_forward}, .inner = f.be};
  int h[4] = {3, 3, 3, 3};
  cf_cellsrc_t *srcs[4] = {0};
  void *refs[4];
  cf_exec_cop_t cops[12];
  for (int c = 0; c < 4; c++)
    for (int l = 0; l < 3; l++) cops[c * 3 + l] = (cf_exec_cop_t){.rank = (uint32_t)(10 + 2 * (c * 3 + l)), .l = l, .c0 = c, .c1 = c + 1};
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, &lb.be, 1));
  for (int pass = 0; pass < 2; pass++) {
    clear_engine(&f);
    lb.n = 0;
    cf_exec_req_t r;
    fx_req(&f, &r, h, srcs, refs);
    r.cops = cops;
    r.n_cops = pass ? 11 : 12; /* pass 1: one cell missing -> not the plan of this staircase */
    CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
    CF_CHECK_EQ(fx_verify(&f, h, "cops"), 0);
    if (!pass) {
      CF_CHECK_EQ(lb.n, 12);
      for (int i = 0; i < 12 && i < lb.n; i++)
        CF_CHECK_MSG(lb.log[i][0] == cops[i].l && lb.log[i][1] == cops[i].c0 * 8 && lb.log[i][2] == cops[i].c1 * 8,
                     "step %d: layer %d tokens [%d, %d), expected op %d", i, lb.log[i][0], lb.log[i][1], lb.log[i][2], i);
    } else {
      CF_CHECK_EQ(lb.n, 3); /* work-conserving: one step of the four chunks per layer */
    }
  }
  fx_free(&f);
}

/* A plan made for the cached 3 chunks of a 4-chunk restore (the 4th, uncached, is computed
 * whole and no op covers it): the planned ops still run exactly, in order, and the tail chunk is
 * computed layer by layer in between, whenever the plan's next op waits (here never: recompute
 * only), so all of it after the planned ops of its layer. */
CF_TEST(exec_plan_ops_with_an_uncached_tail) {
  fx_t f;
  fx_init(&f, 3, 8, 32, 8, "kv_tail");
  logging_be_t lb = {.be = {.name = "logging", .model = f.be->model, .forward = logging_forward}, .inner = f.be};
  cf_sched_cost_t cost = {.n_layers = 3, .chunk_tokens = 8, .kv_bytes_per_token = 2.0 * f.row * 4, .gamma_s = 1e-4,
                          .alpha_s = 1e-5, .beta_s = 1e-9, .n_devices = 1, .link_Bps = 1e6, .link_latency_s = 1e-6};
  cf_sched_req_t rq = {.arrival_s = 0, .prefix_tokens = 24, .new_tokens = 8, .device = -1};
  cf_sched_input_t in = {.cost = cost, .reqs = &rq, .n_reqs = 1, .refine_evals = 0};
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  CF_CHECK_OK(cf_sched_plan(&in, CF_POLICY_RECOMPUTE, &plan));
  CF_CHECK_EQ(plan.n_chunks[0], 3);
  int n_cops = 0;
  cf_exec_cop_t *cops = cf_exec_plan_cops(&plan, 0, &n_cops);
  CF_CHECK(cops != NULL);
  int h[4] = {3, 3, 3, 3};
  cf_cellsrc_t *srcs[4] = {0};
  void *refs[4];
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, &lb.be, 1));
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  r.cops = cops;
  r.n_cops = n_cops;
  CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
  CF_CHECK_EQ(fx_verify(&f, h, "tail"), 0);
  CF_CHECK_EQ(lb.n, n_cops + 3);
  int k = 0, tail_l = 0;
  for (int i = 0; i < lb.n; i++) {
    if (lb.log[i][1] == 24) { /* the tail chunk: layers in order, each after the plan's ops at it */
      CF_CHECK_MSG(lb.log[i][0] == tail_l && lb.log[i][2] == 32, "step %d: tail at layer %d, expected %d", i,
                   lb.log[i][0], tail_l);
      for (int j = k; j < n_cops; j++) CF_CHECK_MSG(cops[j].l != tail_l, "tail layer %d ran before op %d", tail_l, j);
      tail_l++;
      continue;
    }
    CF_CHECK_MSG(k < n_cops && lb.log[i][0] == cops[k].l && lb.log[i][1] == cops[k].c0 * 8 && lb.log[i][2] == cops[k].c1 * 8,
                 "step %d: layer %d tokens [%d, %d), expected op %d", i, lb.log[i][0], lb.log[i][1], lb.log[i][2], k);
    k++;
  }
  CF_CHECK_EQ(k, n_cops);
  CF_CHECK_EQ(tail_l, 3);
  free(cops);
  cf_sched_plan_free(&plan);
  fx_free(&f);
}

/* bf16 and f16 engine buffers: the source holds cells in that dtype (the full recompute rounded,
 * then the lowest bit flipped so a loaded cell is told from a recomputed one). Every plan shape,
 * with load failures too: loaded cells reach the engine bit for bit, recomputed ones (fp32 math
 * over the widened loaded prefix, rounded on the way in) are within the dtype's tolerance of the
 * fp32 recompute; a source of another dtype is refused naming both. */
CF_TEST(exec_bf16_f16_engine_buffers) {
  const cf_dtype_t dts[2] = {CF_DT_BF16, CF_DT_F16};
  for (int di = 0; di < 2; di++) {
    cf_dtype_t dt = dts[di];
    fx_t f;
    fx_init(&f, 4, 16, 16 * 5 + 9, 8, di ? "kv_f16_f32" : "kv_bf16_f32"); /* a partial tail chunk */
    cf_kv_layout_t lay = f.kv.layout;
    CF_CHECK_OK(cf_kv_layout_init(&lay, f.L, lay.num_blocks, lay.block_size, lay.n_kv_heads, lay.head_dim, dt));
    cf_kvmap_t kv;
    char path[512];
    snprintf(path, sizeof path, "%s/kv_%s", cf_test_tmpdir(), cf_dtype_name(dt));
    CF_CHECK_OK(cf_kvmap_create(&kv, path, &lay));
    size_t cell = (size_t)f.C * f.row, ncell = (size_t)f.n_chunks * f.L * 2 * cell;
    uint16_t *cells = malloc(2 * ncell);
    cf_dtype_from_f32(dt, f.cells, cells, ncell);
    for (size_t i = 0; i < ncell; i++) cells[i] ^= 1;
    cf_exec_t ex;
    CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
    cf_cellsrc_mem_t mem;
    int fail[6 * 4] = {0};
    fail[1 * 4 + 3] = CF_ECORRUPT; /* chunk 1, layer 3: recomputed from chunk 1's layer h */
    cf_cellsrc_mem_init(&mem, "cpu", 0, dt, cells, f.n_chunks, f.L, f.C, f.row, fail, NULL);
    cf_cellsrc_t *srcs[6];
    void *refs[6];
    for (int c = 0; c < 6; c++) srcs[c] = &mem.src;
    int plans[4][6] = {{4, 4, 4, 4, 4, 4}, {0, 0, 0, 0, 0, 4}, {4, 4, 0, 0, 0, 4}, {0, 1, 2, 3, 3, 4}};
    float rtol = dt == CF_DT_BF16 ? 1.0f / 64 : 1.0f / 512, atol = dt == CF_DT_BF16 ? 1.0f / 128 : 1.0f / 1024;
    float mx = 0;
    for (size_t i = 0; i < (size_t)f.L * f.T * f.row; i++) mx = fmaxf(mx, fmaxf(fabsf(f.refk[i]), fabsf(f.refv[i])));
    for (int p = 0; p < 4; p++) {
      for (int l = 0; l < f.L; l++) {
        memset(kv.k[l], 0xff, cf_kv_layout_plane_bytes(&lay));
        memset(kv.v[l], 0xff, cf_kv_layout_plane_bytes(&lay));
      }
      cf_exec_req_t r;
      fx_req(&f, &r, plans[p], srcs, refs);
      r.kv = &kv;
      CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
      CF_CHECK_EQ(r.stats.bytes_loaded[0], r.stats.cells_loaded[0] * 2 * cell * 2);
      int bad = 0, exact_loaded = 0;
      uint16_t gk[16 * 16], gv[16 * 16];
      float wk[16 * 16], wv[16 * 16];
      for (int c = 0; c < f.n_chunks; c++)
        for (int l = 0; l < f.L; l++) {
          int t0 = c * f.C, t1 = t0 + f.C < f.T ? t0 + f.C : f.T;
          size_t n = (size_t)(t1 - t0) * f.row;
          cf_kvmap_gather(&kv, l, f.blocks, t0, t1, gk, gv);
          cf_kvmap_gather_f32(&kv, l, f.blocks, t0, t1, wk, wv);
          int loaded = l >= plans[p][c] && !(c == 1 && l == 3);
          const uint16_t *sk = cells + (((size_t)c * f.L + l) * 2) * cell, *sv = sk + cell;
          /* chunk 1's cells below the failed layer 3 are loaded unless a loader was still
           * reading one when (1, 3) failed: then that cell is recomputed (either is right KV) */
          int either = loaded && c == 1 && l < 3;
          if (loaded && !memcmp(gk, sk, 2 * n) && !memcmp(gv, sv, 2 * n)) { exact_loaded++; continue; }
          if (loaded && !either) { bad++; continue; }
          for (size_t i = 0; i < n; i++) {
            float rk = f.refk[((size_t)l * f.T + t0) * f.row + i], rv = f.refv[((size_t)l * f.T + t0) * f.row + i];
            if (!(fabsf(wk[i] - rk) <= atol * mx + rtol * fabsf(rk) && fabsf(wv[i] - rv) <= atol * mx + rtol * fabsf(rv))) { bad++; break; }
          }
        }
      if (bad) printf("    %s plan %d: %d bad cells\n", cf_dtype_name(dt), p, bad);
      CF_CHECK_EQ(bad, 0);
      CF_CHECK_EQ(exact_loaded, (int)r.stats.cells_loaded[0]);
    }
    /* the source's dtype must be the engine's */
    cf_cellsrc_mem_t m32;
    cf_cellsrc_mem_init(&m32, "ssd", 1, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
    cf_cellsrc_t *s32[6] = {&m32.src, &m32.src, &m32.src, &m32.src, &m32.src, &m32.src};
    cf_exec_req_t r;
    fx_req(&f, &r, plans[1], s32, refs);
    r.kv = &kv;
    CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EDTYPE);
    char want[128];
    snprintf(want, sizeof want, "ssd tier holds F32 cells, the engine buffer is %s", cf_dtype_name(dt));
    CF_CHECK_CONTAINS(cf_errmsg(), want);
    free(cells);
    cf_kvmap_close(&kv);
    fx_free(&f);
  }
}

/* ---------------------------------------------------------------- the data-path interface */

/* The CPU data path's ops called directly, in the order the scheduler uses them: a loaded cell
 * lands in the engine bit for bit; a computed chunk attends over the staging (loaded-and-staged
 * or gathered rows) and its write lands within 1e-4 of the full recompute; without the gather
 * the staging lacks the prefix and the computed rows are wrong (so the gather really moves
 * rows); publish/finish reach the readiness file. */
CF_TEST(exec_ops_cpu_direct) {
  fx_t f;
  fx_init(&f, 2, 8, 8 * 3, 4, "kv_ops");
  const cf_exec_ops_t *o = &cf_exec_cpu_ops;
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_ops", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 1));
  int h[3] = {0, 2, 2};
  cf_cellsrc_t *srcs[3] = {NULL, NULL, NULL};
  void *refs[3];
  for (int round = 0; round < 3; round++) { /* 0: staged on load, 1: gathered, 2: neither */
    clear_engine(&f);
    cf_exec_req_t r;
    fx_req(&f, &r, h, srcs, refs);
    r.ready = &rd; r.req_id = 7 + round;
    void *rs = NULL, *ls = NULL;
    CF_CHECK_OK(o->validate(f.be, &r));
    CF_CHECK_OK(o->req_init(f.be, &r, &rs));
    CF_CHECK_OK(o->req_stage(rs, 0));
    CF_CHECK_OK(o->req_stage(rs, 1));
    CF_CHECK_OK(o->req_hidden(rs));
    CF_CHECK_OK(o->loader_init(f.be, 0, &ls));
    o->begin(rs);
    size_t cell = (size_t)f.C * f.row;
    float *gk = malloc(cell * 4), *gv = malloc(cell * 4);
    float *wk = malloc(2 * cell * 4), *wv = malloc(2 * cell * 4);
    float err = 0;
    for (int l = 0; l < 2; l++) {
      /* chunk 0 loaded (its stored bytes: the lowest mantissa bit flipped): bit for bit */
      const float *ck = stored(&f, 0, l, 0, 0), *cv = stored(&f, 0, l, 1, 0);
      CF_CHECK_OK(o->load(ls, rs, l, 0, f.C, ck, cv, round == 0));
      cf_kvmap_gather(&f.kv, l, f.blocks, 0, f.C, gk, gv);
      CF_CHECK(memcmp(gk, ck, cell * 4) == 0 && memcmp(gv, cv, cell * 4) == 0);
      if (round == 1) CF_CHECK_OK(o->gather(rs, l, 0, f.C));
      /* chunks 1-2 over the prefix; layer 1's K/V depend on layer 0's attention */
      CF_CHECK_OK(o->forward(rs, l, f.C, 3 * f.C));
      CF_CHECK_OK(o->write(rs, l, f.C, 3 * f.C));
      cf_kvmap_gather(&f.kv, l, f.blocks, f.C, 3 * f.C, wk, wv);
      const float *rk = f.refk + ((size_t)l * f.T + f.C) * f.row, *rv = f.refv + ((size_t)l * f.T + f.C) * f.row;
      for (size_t i = 0; i < 2 * cell; i++) {
        float dk = fabsf(wk[i] - rk[i]), dv = fabsf(wv[i] - rv[i]);
        if (dk > err) err = dk;
        if (dv > err) err = dv;
      }
      o->publish(rs, l);
    }
    if (round < 2) CF_CHECK_LE(err, 1e-4f);
    else CF_CHECK(err > 1e-3f); /* the prefix was never staged: attention saw zeros */
    o->publish(rs, 1);
    uint64_t seen = 0;
    CF_CHECK_OK(cf_ready_wait(&rd, 0, 1, 0, &seen));
    CF_CHECK_EQ(seen, 1);
    o->finish(rs, CF_EIO);
    CF_CHECK_ERR(cf_ready_wait(&rd, 0, 2, 0, NULL), CF_EIO);
    o->loader_free(ls);
    o->req_free(rs);
    free(gk); free(gv); free(wk); free(wv);
  }
  /* the CPU path wants a shared-memory buffer */
  cf_exec_req_t r;
  fx_req(&f, &r, h, srcs, refs);
  r.kv = NULL;
  CF_CHECK_ERR(o->validate(f.be, &r), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "shared-memory");
  cf_ready_close(&rd);
  fx_free(&f);
}

/* A recording data path: the CPU ops, every call checked against the interface's contract
 * and logged. `fail_load` makes load() itself fail for chosen cells (a device copy error):
 * the scheduler must recompute them like a failed read. */
typedef struct {
  const cf_exec_ops_t *in;
  void *dev;
  pthread_mutex_t mu;
  int L, C, n_chunks;
  uint8_t *engine;    /* [n_chunks * L]: times the cell was written to the engine */
  uint8_t *staged;    /* [n_chunks * L]: the cell's rows are in the staging */
  const int *fail_load; /* NULL or [n_chunks * L] */
  int load_fails, stage_missing, last_pub, pubs_out_of_order, finishes, finish_err, begins;
  int fail_stage_layer; /* req_stage(l) fails for this layer (an allocation failure); -1: never */
  int calls_load, calls_gather, calls_forward, calls_write;
} rec_t;
static rec_t *g_rec;

static int rec_validate(void *d, const cf_exec_req_t *r) { (void)d; return g_rec->in->validate(g_rec->dev, r); }
static int rec_req_init(void *d, cf_exec_req_t *r, void **rs) { (void)d; return g_rec->in->req_init(g_rec->dev, r, rs); }
static void rec_req_free(void *rs) { g_rec->in->req_free(rs); }
static int rec_req_stage(void *rs, int l) {
  if (l == g_rec->fail_stage_layer) return cf_seterr(CF_ENOMEM, "injected staging failure (layer %d)", l);
  return g_rec->in->req_stage(rs, l);
}
static int rec_req_hidden(void *rs) { return g_rec->in->req_hidden(rs); }
static int rec_loader_init(void *d, int i, void **ls) { (void)d; return g_rec->in->loader_init(g_rec->dev, i, ls); }
static void rec_loader_free(void *ls) { g_rec->in->loader_free(ls); }
static void *rec_host_alloc(void *d, size_t b) { (void)d; return g_rec->in->host_alloc(g_rec->dev, b); }
static void rec_host_free(void *d, void *p, size_t b) { (void)d; g_rec->in->host_free(g_rec->dev, p, b); }
static void rec_mark(int l, int t0, int t1, uint8_t *arr, int add) {
  for (int c = t0 / g_rec->C; c * g_rec->C < t1; c++) {
    if (add) arr[c * g_rec->L + l]++;
    else arr[c * g_rec->L + l] = 1;
  }
}
static int rec_load(void *ls, void *rs, int l, int t0, int t1, const void *k, const void *v, int stage) {
  rec_t *x = g_rec;
  pthread_mutex_lock(&x->mu);
  x->calls_load++;
  int c = t0 / x->C, fail = x->fail_load && x->fail_load[c * x->L + l];
  if (fail) x->load_fails++;
  pthread_mutex_unlock(&x->mu);
  if (fail) return cf_seterr(CF_ECUDA, "injected copy failure (chunk %d, layer %d)", c, l);
  int rc = x->in->load(ls, rs, l, t0, t1, k, v, stage);
  pthread_mutex_lock(&x->mu);
  rec_mark(l, t0, t1, x->engine, 1);
  if (stage) rec_mark(l, t0, t1, x->staged, 0);
  pthread_mutex_unlock(&x->mu);
  return rc;
}
static int rec_gather(void *rs, int l, int t0, int t1) {
  pthread_mutex_lock(&g_rec->mu);
  g_rec->calls_gather++;
  for (int c = t0 / g_rec->C; c * g_rec->C < t1; c++) /* only cells already in the engine */
    if (!g_rec->engine[c * g_rec->L + l]) g_rec->stage_missing++;
  rec_mark(l, t0, t1, g_rec->staged, 0);
  pthread_mutex_unlock(&g_rec->mu);
  return g_rec->in->gather(rs, l, t0, t1);
}
static int rec_forward(void *rs, int l, int t0, int t1) {
  pthread_mutex_lock(&g_rec->mu);
  g_rec->calls_forward++;
  for (int c = 0; c * g_rec->C < t0; c++) /* the prefix it attends over must be staged */
    if (!g_rec->staged[c * g_rec->L + l]) g_rec->stage_missing++;
  rec_mark(l, t0, t1, g_rec->staged, 0);
  pthread_mutex_unlock(&g_rec->mu);
  return g_rec->in->forward(rs, l, t0, t1);
}
static int rec_write(void *rs, int l, int t0, int t1) {
  pthread_mutex_lock(&g_rec->mu);
  g_rec->calls_write++;
  rec_mark(l, t0, t1, g_rec->engine, 1);
  pthread_mutex_unlock(&g_rec->mu);
  return g_rec->in->write(rs, l, t0, t1);
}
static void rec_begin(void *rs) { g_rec->last_pub = 0; g_rec->begins++; g_rec->in->begin(rs); }
static void rec_publish(void *rs, int n) {
  if (n <= g_rec->last_pub) g_rec->pubs_out_of_order++;
  g_rec->last_pub = n;
  g_rec->in->publish(rs, n);
}
static void rec_finish(void *rs, int err) { g_rec->finishes++; g_rec->finish_err = err; g_rec->in->finish(rs, err); }

static const cf_exec_ops_t rec_ops = {
    .name = "rec", .validate = rec_validate, .req_init = rec_req_init, .req_free = rec_req_free,
    .req_stage = rec_req_stage, .req_hidden = rec_req_hidden, .loader_init = rec_loader_init,
    .loader_free = rec_loader_free, .host_alloc = rec_host_alloc, .host_free = rec_host_free,
    .load = rec_load, .gather = rec_gather, .forward = rec_forward, .write = rec_write,
    .begin = rec_begin, .publish = rec_publish, .finish = rec_finish};

/* The scheduler through the interface: random staircases, reads failing and load() itself
 * failing; every cell reaches the engine exactly once, every forward finds its prefix staged,
 * readiness rises 1..L and finishes once, and the engine holds the right KV. */
CF_TEST(exec_ops_scheduler_contract) {
  fx_t f;
  fx_init(&f, 4, 8, 8 * 7, 4, "kv_rec");
  int n = f.n_chunks, L = f.L;
  rec_t rec = {.in = &cf_exec_cpu_ops, .dev = f.be, .L = L, .C = f.C, .n_chunks = n, .fail_stage_layer = -1};
  pthread_mutex_init(&rec.mu, NULL);
  g_rec = &rec;
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_rec", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 1));
  for (int round = 0; round < 12; round++) {
    int h[7], H[7], fail_read[7 * 4] = {0}, fail_load[7 * 4] = {0};
    for (int c = 0; c < n; c++) H[c] = h[c] = (int)(cf_test_rand() % (L + 1));
    for (int c = 0; c < n; c++)
      for (int l = h[c]; l < L; l++) {
        unsigned x = cf_test_rand() % 10;
        if (x == 0) fail_read[c * L + l] = CF_ENOTFOUND;
        else if (x == 1) fail_load[c * L + l] = 1;
        if (x <= 1 && l + 1 > H[c]) H[c] = l + 1;
      }
    rec.engine = calloc((size_t)n * L, 1);
    rec.staged = calloc((size_t)n * L, 1);
    rec.fail_load = fail_load;
    rec.load_fails = rec.stage_missing = rec.pubs_out_of_order = rec.finishes = 0;
    rec.finish_err = 99;
    cf_cellsrc_mem_t mem;
    cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, n, L, f.C, f.row, fail_read, NULL);
    cf_cellsrc_t *srcs[7];
    void *refs[7];
    for (int c = 0; c < n; c++) srcs[c] = &mem.src;
    cf_exec_t ex;
    CF_CHECK_OK(cf_exec_init_ops(&ex, f.be, 1 + round % 3, &rec_ops, NULL));
    clear_engine(&f);
    cf_exec_req_t r;
    fx_req(&f, &r, h, srcs, refs);
    r.ready = &rd;
    CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
    char what[32];
    snprintf(what, sizeof what, "round %d", round);
    CF_CHECK_EQ(fx_verify(&f, H, what), 0);
    int twice = 0, never = 0;
    for (int i = 0; i < n * L; i++) { twice += rec.engine[i] > 1; never += rec.engine[i] == 0; }
    CF_CHECK_EQ(twice, 0);
    CF_CHECK_EQ(never, 0);
    CF_CHECK_EQ(rec.stage_missing, 0);
    CF_CHECK_EQ(rec.pubs_out_of_order, 0);
    CF_CHECK_EQ(rec.last_pub, L);
    CF_CHECK_EQ(rec.finishes, 1);
    CF_CHECK_EQ(rec.finish_err, 0);
    int nfail = 0;
    for (int i = 0; i < n * L; i++) nfail += fail_read[i] != 0;
    CF_CHECK_EQ(r.stats.load_failures, (uint64_t)(nfail + rec.load_fails));
    CF_CHECK_OK(cf_ready_wait(&rd, 0, (uint64_t)L, 0, NULL));
    free(rec.engine); free(rec.staged);
  }
  CF_CHECK(rec.calls_gather > 0 && rec.calls_forward > 0 && rec.calls_write > 0 && rec.calls_load > 0);
  cf_ready_close(&rd);
  pthread_mutex_destroy(&rec.mu);
  fx_free(&f);
}

/* A request whose init fails inside the data path (its staging allocation) and the request
 * after it in the same run, never initialised: both readiness slots must be begun for THEIR
 * request and end with the error, through the data path (a GPU data path opens the stream gate
 * there; an engine waiting on its req_id or its gate would otherwise wait forever). */
CF_TEST(exec_init_failure_fails_every_requests_slot) {
  fx_t f;
  fx_init(&f, 4, 8, 8 * 3, 4, "kv_initfail");
  rec_t rec = {.in = &cf_exec_cpu_ops, .dev = f.be, .L = f.L, .C = f.C, .n_chunks = f.n_chunks,
               .fail_stage_layer = 1};
  pthread_mutex_init(&rec.mu, NULL);
  g_rec = &rec;
  char rpath[512];
  snprintf(rpath, sizeof rpath, "%s/ready_initfail", cf_test_tmpdir());
  cf_ready_t rd;
  CF_CHECK_OK(cf_ready_create(&rd, rpath, 2));
  /* both slots left by an earlier, finished request */
  for (int s = 0; s < 2; s++) {
    cf_ready_begin(&rd, s, 7);
    cf_ready_publish(&rd, s, (uint64_t)f.L);
    cf_ready_finish(&rd, s, 0);
  }
  int h[3] = {f.L, f.L, f.L};
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
  cf_cellsrc_t *srcs[3];
  void *refs[3];
  for (int c = 0; c < f.n_chunks; c++) srcs[c] = &mem.src;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init_ops(&ex, f.be, 2, &rec_ops, NULL));
  cf_exec_req_t r[2];
  for (int i = 0; i < 2; i++) {
    fx_req(&f, &r[i], h, srcs, refs);
    r[i].ready = &rd;
    r[i].ready_slot = i;
    r[i].req_id = 100 + (uint64_t)i;
  }
  CF_CHECK_ERR(cf_exec_run(&ex, r, 2), CF_ENOMEM);
  for (int i = 0; i < 2; i++) {
    CF_CHECK_EQ(atomic_load(&rd.slots[i].req_id), 100 + (uint64_t)i);
    CF_CHECK_EQ(atomic_load(&rd.slots[i].status), (int64_t)CF_ENOMEM);
    CF_CHECK_EQ(atomic_load(&rd.slots[i].layers), 0);
    CF_CHECK_EQ(r[i].err, CF_ENOMEM);
  }
  /* no request state for the second: the scheduler opened its GPU gate itself (the first's is
   * the data path's finish: the CPU one has no GPU waiters) */
  CF_CHECK_EQ(atomic_load(&rd.slots[1].gate), CF_READY_GATE_OPEN);
  CF_CHECK_EQ(rec.begins, 1);   /* the first through the data path; the second from the CPU */
  CF_CHECK_EQ(rec.finishes, 1);
  CF_CHECK_EQ(rec.finish_err, CF_ENOMEM);
  cf_ready_close(&rd);
  pthread_mutex_destroy(&rec.mu);
  fx_free(&f);
}

/* Fill the engine's rows [0, k) of every layer with the full-recompute KV plus a marker (the
 * engine's own prefix cache: what vLLM computed itself), everything else with NaN. */
static void engine_holds_prefix(fx_t *f, int k, float marker) {
  clear_engine(f);
  float *rk = malloc(sizeof(float) * f->row * (size_t)(k ? k : 1)), *rv = malloc(sizeof(float) * f->row * (size_t)(k ? k : 1));
  for (int l = 0; l < f->L && k; l++) {
    for (size_t i = 0; i < (size_t)k * f->row; i++) {
      rk[i] = f->refk[(size_t)l * f->T * f->row + i] + marker;
      rv[i] = f->refv[(size_t)l * f->T * f->row + i] + marker;
    }
    cf_kvmap_scatter_f32(&f->kv, l, f->blocks, 0, k, rk, rv);
  }
  free(rk); free(rv);
}

/* Restore of [k, n) into an engine that holds [0, k): rows below k keep the engine's own bytes
 * (marker intact), rows >= k are the stored cells (loaded layers, exact) or the recompute
 * (within 1e-4); chunks inside [0, k) are neither loaded nor computed; k anywhere (block and
 * chunk unaligned, in the middle of a loaded or a computed chunk). */
CF_TEST(exec_present_tokens_writes_only_k_to_n) {
  const float marker = 1e-6f; /* small: the context stays within 1e-4 of the recompute */
  int ks[] = {1, 7, 16, 21, 40, 47, 63};
  for (int ki = 0; ki < (int)(sizeof ks / sizeof ks[0]); ki++) {
    int k = ks[ki];
    fx_t f;
    char name[32];
    snprintf(name, sizeof name, "kv_present%d", ki);
    fx_init(&f, 3, 16, 16 * 4, 4 + 2 * (ki % 2), name); /* block size 4 or 6: k block-unaligned too */
    cf_exec_t ex;
    CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
    cf_cellsrc_mem_t mem;
    cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
    cf_cellsrc_t *srcs[4] = {&mem.src, &mem.src, &mem.src, &mem.src};
    void *refs[4];
    int plans[3][4] = {{0, 0, 0, 0}, {3, 3, 3, 3}, {3, 1, 2, 0}};
    for (int p = 0; p < 3; p++) {
      engine_holds_prefix(&f, k, marker);
      cf_exec_req_t r;
      fx_req(&f, &r, plans[p], srcs, refs);
      r.present_tokens = k;
      CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
      int P = k / f.C;
      CF_CHECK_EQ(cf_exec_present_chunks(&f.kv.layout, k, f.C), P);
      uint64_t want_loaded = 0, want_computed = 0;
      for (int c = P; c < f.n_chunks; c++) { want_computed += plans[p][c]; want_loaded += f.L - plans[p][c]; }
      CF_CHECK_EQ(r.stats.cells_loaded[0], want_loaded);
      CF_CHECK_EQ(r.stats.cells_computed, want_computed);
      CF_CHECK_EQ(r.stats.layers_ready, f.L);
      float *gk = malloc(sizeof(float) * f.row * f.T), *gv = malloc(sizeof(float) * f.row * f.T);
      int bad = 0;
      for (int l = 0; l < f.L; l++) {
        cf_kvmap_gather(&f.kv, l, f.blocks, 0, f.T, gk, gv);
        for (int t = 0; t < f.T; t++)
          for (size_t j = 0; j < f.row; j++) {
            float ek = f.refk[((size_t)l * f.T + t) * f.row + j], ev = f.refv[((size_t)l * f.T + t) * f.row + j];
            float ok = gk[t * f.row + j], ov = gv[t * f.row + j];
            int c = t / f.C, good;
            if (t < k) good = ok == ek + marker && ov == ev + marker;              /* untouched */
            else if (l >= plans[p][c]) good = !memcmp(&ok, stored(&f, c, l, 0, t) + j, 4) &&
                                              !memcmp(&ov, stored(&f, c, l, 1, t) + j, 4); /* loaded */
            else good = fabsf(ok - ek) <= 1e-4f && fabsf(ov - ev) <= 1e-4f;        /* computed */
            if (!good && bad++ < 3) printf("    k %d plan %d: layer %d token %d elem %zu wrong\n", k, p, l, t, j);
          }
      }
      CF_CHECK_EQ(bad, 0);
      free(gk); free(gv);
    }
    cf_exec_req_t r;
    fx_req(&f, &r, plans[0], srcs, refs);
    r.present_tokens = f.T;
    CF_CHECK_ERR(cf_exec_validate(&ex, &r), CF_EINVAL);
    CF_CHECK_CONTAINS(cf_errmsg(), "present_tokens 64 must be in [0, 64 tokens)");
    fx_free(&f);
  }
}

/* Two TP shards (one KV head each of the model's two) restore the same prefix with the same
 * block table, each into its own buffer: each gets exactly its heads of the whole stored cells
 * (loaded exact, computed within 1e-4), with present_tokens too (a shard cannot lend the other
 * heads as context, so every chunk is restored into the daemon's staging; rows < k untouched). */
CF_TEST(exec_tp_shards_get_their_heads) {
  fx_t f;
  fx_init(&f, 3, 8, 8 * 5, 4, "kv_tp");
  const cf_model_config_t *mc = &f.be->model->cfg;
  CF_CHECK_EQ(mc->n_kv_heads, 2);
  int hd = mc->head_dim;
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
  cf_cellsrc_t *srcs[5] = {&mem.src, &mem.src, &mem.src, &mem.src, &mem.src};
  void *refs[5];
  int h[5] = {3, 0, 2, 1, 0};
  for (int k = 0; k <= 13; k += 13)
    for (int s = 0; s < 2; s++) {
      cf_kv_layout_t lay;
      CF_CHECK_OK(cf_kv_layout_init(&lay, f.L, f.kv.layout.num_blocks, 4, 1, hd, CF_DT_F32));
      lay.head0 = s;
      lay.model_heads = 2;
      size_t plane = cf_kv_layout_plane_bytes(&lay);
      uint8_t *buf = malloc(2 * plane * f.L);
      memset(buf, 0x7f, 2 * plane * f.L);
      uint8_t *kp[3], *vp[3];
      for (int l = 0; l < f.L; l++) { kp[l] = buf + 2 * plane * l; vp[l] = kp[l] + plane; }
      cf_kvmap_t m;
      CF_CHECK_OK(cf_kvmap_view(&m, &lay, kp, vp));
      CF_CHECK_EQ(cf_exec_present_chunks(&lay, k, f.C), 0);
      cf_exec_req_t r;
      fx_req(&f, &r, h, srcs, refs);
      r.kv = &m;
      r.present_tokens = k;
      CF_CHECK_OK(cf_exec_run(&ex, &r, 1));
      int bad = 0;
      float *gk = malloc(sizeof(float) * f.row * f.T), *gv = malloc(sizeof(float) * f.row * f.T);
      for (int l = 0; l < f.L; l++) {
        for (size_t i = 0; i < f.row * f.T; i++) gk[i] = gv[i] = 0;
        cf_kvmap_gather(&m, l, f.blocks, 0, f.T, gk, gv);
        for (int t = 0; t < f.T; t++)
          for (int j = 0; j < hd; j++) {
            size_t e = (size_t)t * f.row + (size_t)s * hd + j;
            float ok = gk[e], ov = gv[e];
            float ek = f.refk[(size_t)l * f.T * f.row + e], ev = f.refv[(size_t)l * f.T * f.row + e];
            int c = t / f.C, good;
            uint32_t bits;
            memcpy(&bits, &ok, 4);
            if (t < k) good = bits == 0x7f7f7f7fu;
            else if (l >= h[c]) good = !memcmp(&ok, stored(&f, c, l, 0, t) + s * hd + j, 4) &&
                                       !memcmp(&ov, stored(&f, c, l, 1, t) + s * hd + j, 4);
            else good = fabsf(ok - ek) <= 1e-4f && fabsf(ov - ev) <= 1e-4f;
            if (!good && bad++ < 3) printf("    shard %d k %d: layer %d token %d dim %d wrong\n", s, k, l, t, j);
          }
      }
      CF_CHECK_EQ(bad, 0);
      free(gk); free(gv);
      cf_kvmap_close(&m);
      free(buf);
    }
  fx_free(&f);
}

/* ---------------------------------------------------------------- memory budget (issue 18) */

#define PG 4096
/* One request's working set under a budget (cf_exec.h): hidden states and one staging block of
 * E_0 rows, in whole pages. */
static size_t fx_workset(const fx_t *f, int e0) {
  const cf_model_config_t *mc = &f->be->model->cfg;
  return cf_mempool_charge(2 * (size_t)e0 * mc->hidden * 4) + cf_mempool_charge(2 * (size_t)e0 * f->row * 4);
}

/* Runs `n` requests (plans[i], engine fx f[i]) within `budget` bytes (0: no pool). Returns the
 * run's result; *peak: the pool's high-water mark. */
static int budget_run(fx_t *f, int n, int (*plans)[6], size_t budget, int n_loaders, size_t *peak,
                      uint64_t *waits) {
  cf_mempool_t *pool = NULL;
  if (budget) CF_ASSERT(cf_mempool_create("test", budget, &pool) == 0);
  cf_exec_t ex;
  CF_ASSERT(cf_exec_init(&ex, f[0].be, n_loaders) == 0);
  CF_ASSERT(cf_exec_set_pool(&ex, pool) == 0);
  cf_cellsrc_mem_t mem[4];
  cf_cellsrc_t *srcs[4][6];
  void *refs[4][6];
  cf_exec_req_t r[4];
  for (int i = 0; i < n; i++) {
    clear_engine(&f[i]);
    cf_cellsrc_mem_init(&mem[i], "cpu", 0, CF_DT_F32, f[i].cells, f[i].n_chunks, f[i].L, f[i].C, f[i].row, NULL, NULL);
    for (int c = 0; c < 6; c++) srcs[i][c] = &mem[i].src;
    fx_req(&f[i], &r[i], plans[i], srcs[i], refs[i]);
    r[i].req_id = (uint64_t)i + 1;
  }
  int rc = cf_exec_run(&ex, r, n);
  *waits = 0;
  for (int i = 0; i < n; i++) {
    *waits += r[i].stats.mem_waits;
    if (!r[i].err) {
      char what[64];
      snprintf(what, sizeof what, "request %d, budget %zu", i, budget);
      CF_CHECK_EQ(fx_verify(&f[i], plans[i], what), 0);
      CF_CHECK_EQ(r[i].stats.layers_ready, f[i].L);
    } else {
      CF_CHECK_EQ(r[i].err, CF_ENOMEM);
    }
  }
  *peak = 0;
  if (pool) {
    cf_mempool_stats_t st;
    cf_mempool_stats(pool, &st);
    CF_CHECK_LE(st.peak, budget);
    CF_CHECK_EQ(st.used, 0); /* everything went back */
    *peak = st.peak;
    cf_mempool_destroy(pool);
  }
  return rc;
}

/* Every plan, alone and as a batch of three, at every budget from below one request's need to
 * unbounded: each restore either completes with the recompute's KV (loaded cells bit for bit)
 * or — only below the smallest budget that holds one request's working set — fails with
 * CF_ENOMEM naming it; never wrong KV, never a hang, the pool's high-water mark within the
 * budget and all of it given back. */
CF_TEST(exec_budget_every_plan_every_budget) {
  int plans[6][6] = {{4, 4, 4, 4, 4, 4}, {0, 0, 0, 0, 0, 0}, {4, 4, 4, 0, 0, 0},
                     {2, 2, 2, 2, 2, 2}, {0, 1, 2, 3, 3, 4}, {4, 0, 4, 1, 0, 3}};
  fx_t f[3];
  for (int i = 0; i < 3; i++) {
    char name[32];
    snprintf(name, sizeof name, "kv_budget%d", i);
    fx_init(&f[i], 4, 16, 16 * 6, 8, name);
  }
  size_t ws = fx_workset(&f[0], 96);
  int ok_min = -1;
  for (int p = 0; p < 6; p++) {
    int mine[1][6];
    memcpy(mine[0], plans[p], sizeof mine[0]);
    size_t peak;
    uint64_t waits;
    CF_CHECK_OK(budget_run(f, 1, mine, 0, 2, &peak, &waits));
    for (size_t b = PG; b <= 48 * PG; b += PG) {
      int rc = budget_run(f, 1, mine, b, 2, &peak, &waits);
      if (rc == 0 && (ok_min < 0 || (int)(b / PG) < ok_min) && p == 0) ok_min = (int)(b / PG);
      /* enough for the bookkeeping, the loaders and one working set: it must complete */
      if (b >= ws + 8 * PG) CF_CHECK_MSG(rc == 0, "plan %d budget %zu pages: %s", p, b / PG, cf_errmsg());
    }
  }
  printf("    one request (96 tokens, 4 layers): working set %zu pages, smallest budget that ran the "
         "recompute plan: %d pages\n", ws / PG, ok_min);
  /* batches of three requests with different plans: they wait for each other's memory */
  int batch[3][6];
  uint64_t total_waits = 0;
  for (int k = 0; k < 6; k++) {
    for (int i = 0; i < 3; i++) memcpy(batch[i], plans[(k + i) % 6], sizeof batch[i]);
    for (size_t b = 8 * PG; b <= 40 * PG; b += 2 * PG) {
      size_t peak;
      uint64_t waits;
      int rc = budget_run(f, 3, batch, b, 2, &peak, &waits);
      total_waits += waits;
      if (b >= ws + 12 * PG) CF_CHECK_MSG(rc == 0, "batch %d budget %zu pages: %s", k, b / PG, cf_errmsg());
    }
  }
  CF_CHECK_GT(total_waits, 0); /* the tight budgets did make requests wait */
  for (int i = 0; i < 3; i++) fx_free(&f[i]);
}

/* Random staircases with injected load failures (chunks raised mid-restore: staging grown,
 * layers staged again) within a budget: the recompute's KV every time. */
CF_TEST(exec_budget_random_plans_with_faults) {
  for (int iter = 0; iter < 10; iter++) {
    int L = 2 + (int)(cf_test_rand() % 4), C = 8 << (cf_test_rand() % 2);
    int n_full = 2 + (int)(cf_test_rand() % 6), tail = (int)(cf_test_rand() % 2) * (1 + (int)(cf_test_rand() % (C - 1)));
    int T = n_full * C + tail, bs = 1 << (cf_test_rand() % 5);
    char name[32], what[64];
    snprintf(name, sizeof name, "kv_brand%d", iter);
    snprintf(what, sizeof what, "budget iter %d (L %d, C %d, T %d, bs %d)", iter, L, C, T, bs);
    fx_t f;
    fx_init(&f, L, C, T, bs, name);
    cf_mempool_t *pool;
    /* bookkeeping + loaders + one request's working set and a little: layers wait for each other */
    CF_CHECK_OK(cf_mempool_create("test", fx_workset(&f, T) + 30 * PG, &pool));
    random_restore_in(&f, n_full, 5, 1 + iter % 3, pool, what);
    cf_mempool_stats_t st;
    cf_mempool_stats(pool, &st);
    CF_CHECK_EQ(st.used, 0);
    cf_mempool_destroy(pool);
    fx_free(&f);
  }
}

/* Below one request's working set and nothing else running: a clear error, not a hang. */
CF_TEST(exec_budget_too_small_is_a_clear_error) {
  fx_t f;
  fx_init(&f, 4, 16, 16 * 6, 8, "kv_bsmall");
  int plan[1][6] = {{4, 4, 4, 4, 4, 4}};
  size_t peak;
  uint64_t waits;
  int rc = budget_run(&f, 1, plan, 10 * PG, 2, &peak, &waits);
  CF_CHECK_EQ(rc, CF_ENOMEM);
  CF_CHECK_MSG(strstr(cf_errmsg(), "working memory") && strstr(cf_errmsg(), "budget"), "error: %s", cf_errmsg());
  printf("    %s\n", cf_errmsg());
  fx_free(&f);
}

/* Every allocation the C library serves while counting is on (any thread): the restore path
 * within a budget must ask for none. glibc's own entry points do the work.
 * Not under a sanitizer: ASan and TSan bring their own malloc/free, and this interposer (the
 * executable's symbols win) handed them glibc's blocks to free — `make asan` aborted in
 * ASan's start-up ("free not malloced", then CHECK tsd_key_inited) before any test ran. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CF__SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define CF__SANITIZED 1
#endif
#endif
#ifndef CF__SANITIZED
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static atomic_int g_count_allocs;
static atomic_long g_allocs, g_alloc_bytes;
static void count_alloc(size_t n) {
  if (atomic_load_explicit(&g_count_allocs, memory_order_relaxed)) {
    atomic_fetch_add(&g_allocs, 1);
    atomic_fetch_add(&g_alloc_bytes, (long)n);
  }
}
void *malloc(size_t n) { count_alloc(n); return __libc_malloc(n); }
void *calloc(size_t n, size_t s) { count_alloc(n * s); return __libc_calloc(n, s); }
void *realloc(void *p, size_t n) { count_alloc(n); return __libc_realloc(p, n); }
void *aligned_alloc(size_t al, size_t n) { count_alloc(n); return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n) {
  count_alloc(n);
  *out = __libc_memalign(al, n);
  return *out ? 0 : 12;
}
#else
static atomic_int g_count_allocs;
static atomic_long g_allocs;
#endif

/* Restores on the real CPU backend within a budget (a warm run first: threads started, their
 * stacks cached): not one call to the C library's allocator from any thread of the run, while
 * the same restores without a budget allocate their buffers per request. */
CF_TEST(exec_budget_restore_path_allocates_nothing) {
#ifdef CF__SANITIZED
  cf_test_skip("under a sanitizer malloc is the sanitizer's: the C library's calls cannot be counted");
  return;
#endif
  cf_model_config_t mc;
  CF_CHECK_OK(cf_synth_preset("tiny", &mc));
  mc.n_layers = 3;
  cf_synth_opts_t so = {.seed = 11, .std = 0.05f, .norm_jitter = 0.1f};
  cf_model_t *m;
  CF_CHECK_OK(cf_model_synth(&mc, &so, &m));
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  fx_t f;
  fx_init_be(&f, be, 16, 16 * 5, 4, "kv_malloc");
  int plan[2][6] = {{3, 2, 1, 0, 0, 0}, {3, 3, 3, 3, 3, 0}};
  cf_mempool_t *pool;
  CF_CHECK_OK(cf_mempool_create("test", 4 << 20, &pool));
  for (int budget = 1; budget >= 0; budget--) {
    long allocs[2];
    for (int run = 0; run < 2; run++) {
      cf_exec_t ex;
      CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
      CF_CHECK_OK(cf_exec_set_pool(&ex, budget ? pool : NULL));
      cf_cellsrc_mem_t mem;
      cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
      cf_cellsrc_t *srcs[5] = {&mem.src, &mem.src, &mem.src, &mem.src, &mem.src};
      void *refs[5];
      cf_exec_req_t r;
      fx_req(&f, &r, plan[run], srcs, refs);
      clear_engine(&f);
      atomic_store(&g_allocs, 0);
      atomic_store(&g_count_allocs, 1);
      int rc = cf_exec_run(&ex, &r, 1);
      atomic_store(&g_count_allocs, 0);
      allocs[run] = atomic_load(&g_allocs);
      CF_CHECK_OK(rc);
      CF_CHECK_EQ(fx_verify(&f, plan[run], budget ? "malloc count, budget" : "malloc count, unbounded"), 0);
    }
    printf("    %s: %ld and %ld allocations in the two restores\n", budget ? "within a budget" : "unbounded",
           allocs[0], allocs[1]);
    if (budget) CF_CHECK_EQ(allocs[1], 0);
    else CF_CHECK_GT(allocs[1], 0);
  }
  cf_mempool_destroy(pool);
  fx_free(&f);
  cf_model_synth_free(m);
}

/* Batches of three random staircases with injected load failures (chunks raised mid-restore,
 * staging grown while other requests hold memory) within a budget that holds one working set:
 * every request ends (no hang) with the recompute's KV, or — only when a raise made its own
 * working set larger than the budget — with CF_ENOMEM; all memory given back. */
CF_TEST(exec_budget_batches_with_faults) {
  int ok = 0, enomem = 0;
  for (int iter = 0; iter < 8; iter++) {
    int L = 2 + (int)(cf_test_rand() % 3), C = 8, n_full = 3 + (int)(cf_test_rand() % 4), T = n_full * C;
    fx_t f[3];
    cf_cellsrc_mem_t mem[3];
    cf_cellsrc_t *srcs[3][8];
    void *refs[3][8];
    int h[3][8], H[3][8], fail[3][8 * 5];
    cf_exec_req_t r[3];
    for (int i = 0; i < 3; i++) {
      char name[32];
      snprintf(name, sizeof name, "kv_bbf%d_%d", iter, i);
      fx_init(&f[i], L, C, T, 4, name);
      memset(fail[i], 0, sizeof fail[i]);
      for (int c = 0; c < n_full; c++) {
        h[i][c] = H[i][c] = (int)(cf_test_rand() % (L + 1));
        for (int l = 0; l < L; l++)
          if (cf_test_rand() % 6 == 0) {
            fail[i][c * L + l] = CF_ENOTFOUND;
            if (l >= h[i][c] && l + 1 > H[i][c]) H[i][c] = l + 1;
          }
      }
      cf_cellsrc_mem_init(&mem[i], "cpu", 0, CF_DT_F32, f[i].cells, n_full, L, C, f[i].row, fail[i], NULL);
      for (int c = 0; c < n_full; c++) srcs[i][c] = &mem[i].src;
      clear_engine(&f[i]);
      fx_req(&f[i], &r[i], h[i], srcs[i], refs[i]);
      r[i].req_id = (uint64_t)i + 1;
    }
    cf_mempool_t *pool;
    CF_CHECK_OK(cf_mempool_create("test", fx_workset(&f[0], T) + 16 * PG, &pool)); /* + bookkeeping of three, loaders */
    cf_exec_t ex;
    CF_CHECK_OK(cf_exec_init(&ex, f[0].be, 2));
    CF_CHECK_OK(cf_exec_set_pool(&ex, pool));
    cf_exec_run(&ex, r, 3);
    for (int i = 0; i < 3; i++) {
      if (r[i].err == CF_ENOMEM) { enomem++; continue; }
      CF_CHECK_EQ(r[i].err, 0);
      CF_CHECK_EQ(fx_verify(&f[i], H[i], "budget batch with faults"), 0);
      ok++;
    }
    cf_mempool_stats_t st;
    cf_mempool_stats(pool, &st);
    CF_CHECK_EQ(st.used, 0);
    cf_mempool_destroy(pool);
    for (int i = 0; i < 3; i++) fx_free(&f[i]);
  }
  printf("    %d restores verified, %d refused for memory\n", ok, enomem);
  CF_CHECK_GT(ok, 0);
}

/* A windowed restore whose every cell is skipped (window 1: the next token attends only to
 * itself, so no cell of the prefix is needed) has nothing to load or compute: it must still
 * complete, every layer ready, instead of waiting for a cell that never arrives (the daemon's
 * Restore of a whole-chunk prefix on a window-1 model hung until the client's deadline). Also a
 * layer skipped whole below a layer with work. cf_exec_run runs in a thread so a regression fails
 * (after a minute, cancelling it) rather than hanging the suite. */
typedef struct { cf_exec_t *ex; cf_exec_req_t *r; int rc, done; pthread_mutex_t mu; pthread_cond_t cv; } skip_run_t;

static void *skip_runner(void *arg) {
  skip_run_t *s = arg;
  int rc = cf_exec_run(s->ex, s->r, 1);
  pthread_mutex_lock(&s->mu);
  s->rc = rc; s->done = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

CF_TEST(exec_every_cell_skipped_completes) {
  fx_t f;
  fx_init(&f, 2, 16, 32, 16, "kv_allskip");
  cf_exec_t ex;
  CF_CHECK_OK(cf_exec_init(&ex, f.be, 2));
  cf_cellsrc_mem_t mem;
  cf_cellsrc_mem_init(&mem, "cpu", 0, CF_DT_F32, f.cells, f.n_chunks, f.L, f.C, f.row, NULL, NULL);
  cf_cellsrc_t *srcs[2] = {&mem.src, &mem.src};
  void *refs[2];
  int h[2] = {0, 0};
  uint8_t all[4] = {1, 1, 1, 1}, layer0[4] = {1, 0, 1, 0}; /* cell (c, l) at c * L + l */
  const uint8_t *masks[2] = {all, layer0};
  for (int m = 0; m < 2; m++) {
    clear_engine(&f);
    cf_exec_req_t r;
    fx_req(&f, &r, h, srcs, refs);
    r.skip = masks[m];
    atomic_int cancel = 0;
    r.cancel = &cancel;
    skip_run_t s = {.ex = &ex, .r = &r};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    pthread_t th;
    CF_CHECK_EQ(pthread_create(&th, NULL, skip_runner, &s), 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 60; /* a limit for a hang, not a speed goal */
    pthread_mutex_lock(&s.mu);
    while (!s.done && pthread_cond_timedwait(&s.cv, &s.mu, &ts) == 0) {}
    int finished = s.done;
    pthread_mutex_unlock(&s.mu);
    if (!finished) atomic_store(&cancel, 1);
    pthread_join(th, NULL);
    CF_CHECK_MSG(finished, "mask %d: cf_exec_run did not return within 60 s", m);
    CF_CHECK_OK(s.rc);
    CF_CHECK_EQ(r.stats.layers_ready, f.L);
    CF_CHECK_EQ(r.stats.cells_skipped, m == 0 ? 4u : 2u);
    CF_CHECK_EQ(r.stats.cells_loaded[0], m == 0 ? 0u : 2u);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
  }
  fx_free(&f);
}
