/* daemon/cf_batch.c — cacheflowd's executor thread — on its own: planned jobs over a real store
 * (CPU + SSD tiers) restore the right KV; a chunk gone from the store since planning is
 * recomputed; quiesce ends the running job (cancelled) and the queued ones (shutdown), each
 * job's on_done exactly once; submissions after it end at once.
 * The executor thread is daemon code, not part of libcacheflow: it is compiled into this test. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "cf_test.h"
#include "cf_toy_backend.h"
#include "cf_batch.c"
#include "cf_refit.c" /* cf_batch feeds the planner's re-fit */
#include "cf_planner.c" /* cf_batch re-plans as the planner plans (cf_planner_plan_loadable) */

typedef struct {
  cf_backend_t *be;
  int L, C, T, n;
  size_t row;
  int32_t *tok;
  float **rk, **rv;           /* reference KV per layer [T][row] */
  cf_store_t *st;
  cf_store_key_t keys[16];
} bw_t;

static void bw_init(bw_t *w, const char *name) {
  memset(w, 0, sizeof *w);
  w->L = 3; w->C = 16; w->n = 6; w->T = w->C * w->n; w->row = 16;
  w->be = cf_toy_create(w->L, 24, 2, 8, 97, 99);
  w->tok = malloc(sizeof(int32_t) * w->T);
  for (int t = 0; t < w->T; t++) w->tok[t] = (t * 13 + 1) % 97;
  w->rk = malloc(sizeof(float *) * w->L); w->rv = malloc(sizeof(float *) * w->L);
  for (int l = 0; l < w->L; l++) { w->rk[l] = calloc((size_t)w->T * w->row, 4); w->rv[l] = calloc((size_t)w->T * w->row, 4); }
  cf_fwd_args_t a = {.l0 = 0, .l1 = w->L, .t0 = 0, .t1 = w->T, .tokens = w->tok, .k = w->rk, .v = w->rv};
  CF_CHECK_OK(w->be->forward(w->be, &a));
  cf_store_geom_t g = {.dtype_size = 4, .chunk_tokens = (uint32_t)w->C, .n_layers = (uint32_t)w->L, .n_kv_heads = 2, .head_dim = 8};
  g.fingerprint[0] = 7;
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = 1 << 20; sc.ssd_bytes = 4 << 20; sc.spill = 0;
  char dir[512];
  snprintf(dir, sizeof dir, "%s/%s", cf_test_tmpdir(), name);
  CF_CHECK_OK(cf_store_open(dir, &g, &sc, &w->st));
  cf_store_chain_keys(g.fingerprint, w->tok, (size_t)w->T, (uint32_t)w->C, w->keys);
  size_t cell = 2 * (size_t)w->C * w->row;
  float *buf = malloc(sizeof(float) * cell * w->L);
  const void *cells[8];
  for (int c = 0; c < w->n; c++) {
    for (int l = 0; l < w->L; l++) {
      memcpy(buf + l * cell, w->rk[l] + (size_t)c * w->C * w->row, sizeof(float) * w->C * w->row);
      memcpy(buf + l * cell + w->C * w->row, w->rv[l] + (size_t)c * w->C * w->row, sizeof(float) * w->C * w->row);
      cells[l] = buf + l * cell;
    }
    CF_CHECK_OK(cf_store_save(w->st, &w->keys[c], (uint32_t)w->C, cells, CF_STORE_SAVE_DURABLE));
  }
  free(buf);
  /* half the chunks only on SSD */
  cf_store_stats_t ss;
  cf_store_get_stats(w->st, &ss);
  CF_CHECK_OK(cf_store_evict_cpu(w->st, ss.cpu_bytes_used / 2));
}

static void bw_free(bw_t *w) {
  cf_store_close(w->st);
  for (int l = 0; l < w->L; l++) { free(w->rk[l]); free(w->rv[l]); }
  free(w->rk); free(w->rv); free(w->tok);
  w->be->free(w->be);
}

typedef struct {
  cf_batch_job_t b;
  cf_kvmap_t kv;
  int32_t blocks[64];
  int h[8];
  int done, err, last_layers;
  cf_batch_result_t res;
} tjob_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static void tj_on_layer(cf_batch_job_t *bj, int layers) {
  __atomic_store_n(&((tjob_t *)bj)->last_layers, layers, __ATOMIC_RELEASE);
}
static void tj_on_done(cf_batch_job_t *bj, int err, const cf_batch_result_t *res) {
  tjob_t *j = (tjob_t *)bj;
  pthread_mutex_lock(&g_mu);
  j->done++;
  j->err = err;
  if (res) j->res = *res;
  pthread_cond_broadcast(&g_cv);
  pthread_mutex_unlock(&g_mu);
}

static void tj_init(tjob_t *j, bw_t *w, const char *name, const int *h) {
  memset(j, 0, sizeof *j);
  cf_kv_layout_t lay;
  CF_CHECK_OK(cf_kv_layout_init(&lay, w->L, 2 * w->T / 8, 8, 2, 8, CF_DT_F32));
  char path[512];
  snprintf(path, sizeof path, "%s/%s", cf_test_tmpdir(), name);
  CF_CHECK_OK(cf_kvmap_create(&j->kv, path, &lay));
  for (int i = 0; i < w->T / 8; i++) j->blocks[i] = 2 * i + 1;
  memcpy(j->h, h, sizeof(int) * w->n);
  j->b = (cf_batch_job_t){.tokens = w->tok, .n_tokens = w->T, .blocks = j->blocks, .n_blocks = w->T / 8,
                          .kv = &j->kv, .h = j->h, .on_layer = tj_on_layer, .on_done = tj_on_done};
  atomic_init(&j->b.cancel, 0);
}

static void wait_done(tjob_t *const *js, int n) {
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < n; i++)
    while (!js[i]->done) pthread_cond_wait(&g_cv, &g_mu);
  pthread_mutex_unlock(&g_mu);
}

/* Engine KV within 1e-4 of the reference (loaded cells are the reference's bytes). */
static int kv_bad(const tjob_t *j, const bw_t *w) {
  float *k = malloc(sizeof(float) * w->T * w->row), *v = malloc(sizeof(float) * w->T * w->row);
  int bad = 0;
  for (int l = 0; l < w->L; l++) {
    cf_kvmap_gather(&j->kv, l, j->blocks, 0, w->T, k, v);
    for (size_t i = 0; i < (size_t)w->T * w->row; i++)
      if (!(fabsf(k[i] - w->rk[l][i]) <= 1e-4f && fabsf(v[i] - w->rv[l][i]) <= 1e-4f)) bad++;
  }
  free(k); free(v);
  return bad;
}

CF_TEST(batch_executes_planned_jobs_and_recomputes_vanished_chunks) {
  bw_t w;
  bw_init(&w, "st1");
  cf_batch_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4};
  cf_batch_t *b;
  CF_CHECK_OK(cf_batch_start(&b, &o));
  int h1[6] = {3, 2, 1, 0, 0, 0}, h2[6] = {0, 0, 0, 0, 0, 0}, h3[6] = {1, 1, 1, 1, 1, 1};
  tjob_t j1, j2, j3;
  tj_init(&j1, &w, "e1", h1);
  tj_init(&j2, &w, "e2", h2);
  tj_init(&j3, &w, "e3", h3);
  /* chunk 4 leaves the store after "planning": j2 planned to load it, must compute it instead;
   * and with it every later chunk (the store's lookup is a prefix) */
  CF_CHECK_OK(cf_store_remove(w.st, &w.keys[4]));
  cf_batch_job_t *js[3] = {&j1.b, &j2.b, &j3.b};
  cf_batch_submit(b, js, 3);
  tjob_t *all[3] = {&j1, &j2, &j3};
  wait_done(all, 3);
  for (int i = 0; i < 3; i++) {
    CF_CHECK_EQ(all[i]->done, 1);
    CF_CHECK_EQ(all[i]->err, 0);
    CF_CHECK_EQ(all[i]->last_layers, w.L);
    CF_CHECK_EQ(kv_bad(all[i], &w), 0);
    CF_CHECK_EQ(all[i]->res.stats.cells_computed + all[i]->res.stats.cells_loaded[0] + all[i]->res.stats.cells_loaded[1],
                (uint64_t)w.n * w.L);
  }
  CF_CHECK_EQ(j2.h[4], w.L);
  CF_CHECK_EQ(j2.h[5], w.L);
  CF_CHECK_EQ(j2.res.stats.cells_computed, (uint64_t)2 * w.L);
  CF_CHECK_GT(j2.res.stats.cells_loaded[1], 0); /* some from SSD (io_uring reader) */
  cf_batch_stop(b);
  for (int i = 0; i < 3; i++) cf_kvmap_close(&all[i]->kv);
  bw_free(&w);
}

/* A round mixing engine kinds: a job with device buffers (gkv) goes to the GPU data path, the
 * shared-memory one to the CPU data path, each run by the same scheduler. Here no GPU executor
 * can start: the GPU job ends with a clear error (not initialised; without o.gpu: the CPU path's
 * "needs a shared-memory buffer"), and the CPU job of the same round still restores correctly. */
CF_TEST(batch_routes_device_buffer_jobs_to_the_gpu_data_path) {
  bw_t w;
  bw_init(&w, "st_gpu");
  cf_exec_gpu_t gx;
  CF_CHECK(cf_exec_gpu_init(&gx, w.be, 0, CF_GPU_LOAD_STAGED) != 0); /* the toy backend is not cuda */
  for (int with_gpu = 1; with_gpu >= 0; with_gpu--) {
    cf_batch_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4, .gpu = with_gpu ? &gx : NULL};
    cf_batch_t *b;
    CF_CHECK_OK(cf_batch_start(&b, &o));
    int h[6] = {1, 1, 0, 0, 2, 3};
    tjob_t jc, jg;
    tj_init(&jc, &w, with_gpu ? "gc1" : "gc0", h);
    tj_init(&jg, &w, with_gpu ? "gg1" : "gg0", h);
    cf_gpu_kv_t gkv;
    memset(&gkv, 0, sizeof gkv);
    gkv.layout = jg.kv.layout;
    jg.b.kv = NULL;
    jg.b.gkv = &gkv;
    cf_batch_job_t *js[2] = {&jg.b, &jc.b};
    cf_batch_submit(b, js, 2);
    tjob_t *all[2] = {&jg, &jc};
    wait_done(all, 2);
    CF_CHECK_EQ(jc.done, 1);
    CF_CHECK_EQ(jc.err, 0);
    CF_CHECK_EQ(kv_bad(&jc, &w), 0);
    CF_CHECK_EQ(jg.done, 1);
    CF_CHECK_ERR(jg.err, with_gpu ? CF_ENODEV : CF_EINVAL);
    cf_batch_stop(b);
    cf_kvmap_close(&jc.kv);
    cf_kvmap_close(&jg.kv);
  }
  cf_exec_gpu_close(&gx);
  bw_free(&w);
}

CF_TEST(batch_quiesce_cancels_running_and_ends_queued) {
  bw_t w;
  bw_init(&w, "st2");
  /* 25 kB/s: the running all-load job needs ~1.5 s, quiesce must not wait for it */
  cf_batch_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 1, .batch_max = 1, .cpu_Bps = 25e3, .ssd_Bps = 25e3};
  cf_batch_t *b;
  CF_CHECK_OK(cf_batch_start(&b, &o));
  int h0[6] = {0};
  tjob_t j1, j2, j3;
  tj_init(&j1, &w, "q1", h0);
  tj_init(&j2, &w, "q2", h0);
  tj_init(&j3, &w, "q3", h0);
  cf_batch_job_t *js[2] = {&j1.b, &j2.b};
  cf_batch_submit(b, js, 2);
  /* j1 runs (batch_max 1), j2 waits: wait for j1's first layer (its loads then need ~1 s more) */
  for (int i = 0; i < 30000 && __atomic_load_n(&j1.last_layers, __ATOMIC_ACQUIRE) < 1; i++) usleep(1000);
  CF_CHECK_MSG(__atomic_load_n(&j1.last_layers, __ATOMIC_ACQUIRE) >= 1, "j1 never started");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  cf_batch_quiesce(b);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  CF_CHECK_EQ(j1.done, 1);
  CF_CHECK_EQ(j2.done, 1);
  CF_CHECK_ERR(j1.err, CF_ECANCELED);
  CF_CHECK_ERR(j2.err, CF_ESHUTDOWN);
  /* behaviour: j1's ECANCELED (not a finished restore) shows quiesce did not wait for it; how
   * long it took is this machine's business */
  printf("  quiesce took %.3f s (j1 alone needs ~1.5 s at 25 kB/s)\n", s);
  cf_batch_job_t *late[1] = {&j3.b};
  cf_batch_submit(b, late, 1);
  CF_CHECK_EQ(j3.done, 1); /* at once, in the caller */
  CF_CHECK_ERR(j3.err, CF_ESHUTDOWN);
  cf_batch_stop(b);
  CF_CHECK_EQ(j1.done + j2.done + j3.done, 3); /* nobody heard twice */
  cf_kvmap_close(&j1.kv); cf_kvmap_close(&j2.kv); cf_kvmap_close(&j3.kv);
  bw_free(&w);
}

/* Jobs of one policy planned in different service batches but run in one round are planned
 * again as one batch: each gets the joint plan's staircase (the same as lib/sched gives for the
 * two together), link and compute order and prediction; the KV is right. Jobs from one plan
 * keep theirs. */
CF_TEST(batch_replans_jobs_planned_apart_as_one_batch) {
  bw_t w;
  bw_init(&w, "st3");
  cf_sched_cost_t cost = {.n_layers = w.L, .chunk_tokens = w.C, .kv_bytes_per_token = 2.0 * w.row * 4,
                          .gamma_s = 1e-4, .alpha_s = 2e-5, .beta_s = 1e-9, .n_devices = 1,
                          .link_Bps = 2e5, .link_latency_s = 2e-6}; /* compute ~ loads: a split wins */
  cf_batch_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4};
  cf_batch_t *b;
  CF_CHECK_OK(cf_batch_start(&b, &o));
  int h0[6] = {0};
  tjob_t j[4];
  const char *names[4] = {"r1", "r2", "r3", "r4"};
  static int g1, g2, g3;
  const void *grp[4] = {&g1, &g2, &g3, &g3}; /* jobs 0, 1 planned apart; 2, 3 together */
  for (int i = 0; i < 4; i++) {
    tj_init(&j[i], &w, names[i], h0);
    j[i].b.plan_group = grp[i];
    j[i].b.policy = i < 2 ? CF_POLICY_OPTIMAL : CF_POLICY_CAKE;
    j[i].b.cached_tokens = w.T;
    j[i].b.cost = cost;
    j[i].b.predicted_s = -1;
  }
  cf_batch_job_t *js[4] = {&j[0].b, &j[1].b, &j[2].b, &j[3].b};
  cf_batch_submit(b, js, 4);
  tjob_t *all[4] = {&j[0], &j[1], &j[2], &j[3]};
  wait_done(all, 4);
  /* what lib/sched plans for jobs 0 and 1 together */
  cf_sched_req_t rq[2] = {{0, w.T, 0, -1}, {0, w.T, 0, -1}};
  cf_sched_input_t in = {.cost = cost, .reqs = rq, .n_reqs = 2, .refine_evals = -1};
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  CF_CHECK_OK(cf_sched_plan(&in, CF_POLICY_OPTIMAL, &plan));
  int computed = 0;
  for (int i = 0; i < 2; i++) {
    CF_CHECK_EQ(j[i].err, 0);
    CF_CHECK_EQ(kv_bad(&j[i], &w), 0);
    CF_CHECK(j[i].b.predicted_s > 0);
    CF_CHECK(j[i].b.load_rank != NULL);
    for (int c = 0; c < w.n; c++) {
      CF_CHECK_EQ(j[i].h[c], (int)plan.h[plan.h_off[i] + c]);
      computed += j[i].h[c];
    }
  }
  CF_CHECK_GT(computed, 0); /* the joint plan splits: the test exercises the compute order too */
  for (int i = 2; i < 4; i++) {
    CF_CHECK_EQ(j[i].err, 0);
    CF_CHECK_EQ(kv_bad(&j[i], &w), 0);
    CF_CHECK(j[i].b.predicted_s == -1); /* one plan: not re-planned */
    for (int c = 0; c < w.n; c++) CF_CHECK_EQ(j[i].h[c], 0);
  }
  cf_sched_plan_free(&plan);
  cf_batch_stop(b);
  for (int i = 0; i < 4; i++) { free(j[i].b.load_rank); free(j[i].b.cops); cf_kvmap_close(&j[i].kv); }
  bw_free(&w);
}
