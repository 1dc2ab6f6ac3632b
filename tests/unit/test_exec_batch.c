/* daemon/cf_executor.c — cacheflowd's executor thread — on its own: planned jobs over a real store
 * (CPU + SSD tiers) restore the right KV; a chunk gone from the store since planning is
 * recomputed; quiesce ends the running job (cancelled) and the queued ones (shutdown), each
 * job's on_done exactly once; submissions after it end at once; with a planner, a round is
 * looked up and planned once, on the executor thread, before anything runs.
 * The executor is daemon code, not part of libcacheflow: this test links libcfdaemon. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_executor.h"
#include "cf_test.h"
#include "cf_toy_backend.h"
#include "ipc/cf_kvmap.h"

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
  cf_executor_job_t b;
  cf_kvmap_t kv;
  int32_t blocks[64];
  int h[8];
  int done, err, last_layers;
  cf_executor_result_t res;
} tjob_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;

static void tj_on_layer(cf_executor_job_t *bj, int layers) {
  __atomic_store_n(&((tjob_t *)bj)->last_layers, layers, __ATOMIC_RELEASE);
}
static void tj_on_done(cf_executor_job_t *bj, int err, const cf_executor_result_t *res) {
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
  j->b = (cf_executor_job_t){.tokens = w->tok, .n_tokens = w->T, .blocks = j->blocks, .n_blocks = w->T / 8,
                          .kv = &j->kv, .plan = {.h = j->h}, .on_layer = tj_on_layer, .on_done = tj_on_done};
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
  cf_executor_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4};
  cf_executor_t *b;
  CF_CHECK_OK(cf_executor_start(&b, &o));
  int h1[6] = {3, 2, 1, 0, 0, 0}, h2[6] = {0, 0, 0, 0, 0, 0}, h3[6] = {1, 1, 1, 1, 1, 1};
  tjob_t j1, j2, j3;
  tj_init(&j1, &w, "e1", h1);
  tj_init(&j2, &w, "e2", h2);
  tj_init(&j3, &w, "e3", h3);
  /* chunk 4 leaves the store after "planning": j2 planned to load it, must compute it instead;
   * chunk 5 is still stored and still loads (the pin looks every chunk up: a hole, issue 15) */
  CF_CHECK_OK(cf_store_remove(w.st, &w.keys[4]));
  cf_executor_job_t *js[3] = {&j1.b, &j2.b, &j3.b};
  cf_executor_submit(b, js, 3);
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
  CF_CHECK_EQ(j2.h[5], 0);
  CF_CHECK_EQ(j2.res.stats.cells_computed, (uint64_t)w.L);
  CF_CHECK_GT(j2.res.stats.cells_loaded[1], 0); /* some from SSD (io_uring reader) */
  cf_executor_stop(b);
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
    cf_executor_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4, .gpu = with_gpu ? &gx : NULL};
    cf_executor_t *b;
    CF_CHECK_OK(cf_executor_start(&b, &o));
    int h[6] = {1, 1, 0, 0, 2, 3};
    tjob_t jc, jg;
    tj_init(&jc, &w, with_gpu ? "gc1" : "gc0", h);
    tj_init(&jg, &w, with_gpu ? "gg1" : "gg0", h);
    cf_gpu_kv_t gkv;
    memset(&gkv, 0, sizeof gkv);
    gkv.layout = jg.kv.layout;
    jg.b.kv = NULL;
    jg.b.gkv = &gkv;
    cf_executor_job_t *js[2] = {&jg.b, &jc.b};
    cf_executor_submit(b, js, 2);
    tjob_t *all[2] = {&jg, &jc};
    wait_done(all, 2);
    CF_CHECK_EQ(jc.done, 1);
    CF_CHECK_EQ(jc.err, 0);
    CF_CHECK_EQ(kv_bad(&jc, &w), 0);
    CF_CHECK_EQ(jg.done, 1);
    CF_CHECK_ERR(jg.err, with_gpu ? CF_ENODEV : CF_EINVAL);
    cf_executor_stop(b);
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
  cf_executor_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 1, .batch_max = 1, .cpu_Bps = 25e3, .ssd_Bps = 25e3};
  cf_executor_t *b;
  CF_CHECK_OK(cf_executor_start(&b, &o));
  int h0[6] = {0};
  tjob_t j1, j2, j3;
  tj_init(&j1, &w, "q1", h0);
  tj_init(&j2, &w, "q2", h0);
  tj_init(&j3, &w, "q3", h0);
  cf_executor_job_t *js[2] = {&j1.b, &j2.b};
  cf_executor_submit(b, js, 2);
  /* j1 runs (batch_max 1), j2 waits: wait for j1's first layer (its loads then need ~1 s more) */
  for (int i = 0; i < 30000 && __atomic_load_n(&j1.last_layers, __ATOMIC_ACQUIRE) < 1; i++) usleep(1000);
  CF_CHECK_MSG(__atomic_load_n(&j1.last_layers, __ATOMIC_ACQUIRE) >= 1, "j1 never started");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  cf_executor_quiesce(b);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  CF_CHECK_EQ(j1.done, 1);
  CF_CHECK_EQ(j2.done, 1);
  CF_CHECK_ERR(j1.err, CF_ECANCELED);
  CF_CHECK_ERR(j2.err, CF_ESHUTDOWN);
  /* behaviour: j1's ECANCELED (not a finished restore) shows quiesce did not wait for it; how
   * long it took is this machine's business */
  printf("  quiesce took %.3f s (j1 alone needs ~1.5 s at 25 kB/s)\n", s);
  cf_executor_job_t *late[1] = {&j3.b};
  cf_executor_submit(b, late, 1);
  CF_CHECK_EQ(j3.done, 1); /* at once, in the caller */
  CF_CHECK_ERR(j3.err, CF_ESHUTDOWN);
  cf_executor_stop(b);
  CF_CHECK_EQ(j1.done + j2.done + j3.done, 3); /* nobody heard twice */
  cf_kvmap_close(&j1.kv); cf_kvmap_close(&j2.kv); cf_kvmap_close(&j3.kv);
  bw_free(&w);
}

/* With a planner, each round is looked up (the store's real answer) and planned once, on the
 * executor thread: jobs of one policy get the joint plan of all of them (the same staircase
 * lib/sched gives for them together), with its link and compute order and prediction; each
 * job's owner hears of its plan (on_plan) before its first layer; the KV is right (the store's
 * per-cell checksums verified on every load). Each chunk key is hashed once per restore: the
 * lookup gets the keys the executor pins by. */
typedef struct {
  bw_t *w;
  int looked_up, bad_keys;
  pthread_t lookup_thread;
  cf_store_key_t want[16]; /* the prefix's keys, hashed before the restores */
  size_t n_want;
} tlookup_t;

static int t_lookup(void *ctx, cf_executor_job_t *j, const cf_store_key_t *keys, size_t nk, int64_t *cached,
                    uint8_t *tiers) {
  tlookup_t *lk = ctx;
  bw_t *w = lk->w;
  /* the executor's keys are the prefix's own (every job restores the same prefix) */
  if (lk->n_want != nk || memcmp(lk->want, keys, nk * sizeof *keys)) __atomic_fetch_add(&lk->bad_keys, 1, __ATOMIC_RELAXED);
  size_t hit = cf_store_lookup(w->st, keys, nk, tiers);
  *cached = (int64_t)hit * w->C;
  __atomic_fetch_add(&lk->looked_up, 1, __ATOMIC_RELAXED);
  lk->lookup_thread = pthread_self();
  return 0;
}

typedef struct {
  tjob_t t;
  int plans, layers_before_plan;
} pjob_t;

static void pj_on_plan(cf_executor_job_t *bj) {
  pjob_t *p = (pjob_t *)bj;
  p->plans++;
  p->layers_before_plan = p->t.last_layers;
}

CF_TEST(executor_plans_each_round_once_on_its_thread) {
  bw_t w;
  bw_init(&w, "st3");
  cf_sched_cost_t cost = {.n_layers = w.L, .chunk_tokens = w.C, .kv_bytes_per_token = 2.0 * w.row * 4,
                          .gamma_s = 1e-4, .alpha_s = 2e-5, .beta_s = 1e-9, .n_devices = 1,
                          .link_Bps = 2e5, .link_latency_s = 2e-6}; /* compute ~ loads: a split wins */
  cf_planner_t pl;
  cf_planner_init(&pl, 0.2);
  cf_planner_set_cost(&pl, &cost, 0);
  tlookup_t lk = {.w = &w};
  cf_executor_opts_t o = {.be = w.be, .store = w.st, .n_loaders = 2, .batch_max = 4, .planner = &pl,
                          .lookup = t_lookup, .lookup_ctx = &lk};
  cf_executor_t *b;
  CF_CHECK_OK(cf_executor_start(&b, &o));
  int h0[6] = {0};
  pjob_t j[4];
  const char *names[4] = {"r1", "r2", "r3", "r4"};
  for (int i = 0; i < 4; i++) {
    memset(&j[i], 0, sizeof j[i]);
    tj_init(&j[i].t, &w, names[i], h0);
    j[i].t.b.plan.h = NULL; /* the planner's */
    j[i].t.b.policy = i < 2 ? CF_POLICY_OPTIMAL : CF_POLICY_CAKE;
    j[i].t.b.on_plan = pj_on_plan;
  }
  cf_executor_job_t *js[4] = {&j[0].t.b, &j[1].t.b, &j[2].t.b, &j[3].t.b};
  lk.n_want = cf_store_chain_keys_partial(cf_store_geom(w.st)->fingerprint, w.tok, (size_t)w.T, (uint32_t)w.C, lk.want);
  uint64_t hashed0 = cf_store_keys_hashed();
  cf_executor_submit(b, js, 4);
  tjob_t *all[4] = {&j[0].t, &j[1].t, &j[2].t, &j[3].t};
  wait_done(all, 4);
  CF_CHECK_EQ(lk.looked_up, 4);
  CF_CHECK_EQ(lk.bad_keys, 0);
  /* 4 restores of ceil(T / C) chunks: each chunk's key hashed once per restore (the lookup and
   * the pins share the keys; before, the lookup hashed them and the pins hashed them again) */
  CF_CHECK_EQ(cf_store_keys_hashed() - hashed0, (uint64_t)(4 * lk.n_want));
  CF_CHECK(!pthread_equal(lk.lookup_thread, pthread_self())); /* off the submitting thread */
  /* what lib/sched plans for each policy's pair together, with the tiers the store reported */
  uint8_t st_tiers[16], tiers[16];
  cf_store_key_t keys[16];
  size_t nk = cf_store_chain_keys_partial(cf_store_geom(w.st)->fingerprint, w.tok, (size_t)w.T, (uint32_t)w.C, keys);
  CF_CHECK_EQ(cf_store_lookup(w.st, keys, nk, st_tiers), (size_t)w.n);
  for (int c = 0; c < w.n; c++) tiers[c] = st_tiers[c] == CF_STORE_TIER_SSD ? CF_PLAN_TIER_SSD : CF_PLAN_TIER_CPU;
  for (int p = 0; p < 2; p++) {
    cf_sched_req_t rq[2] = {{0, w.T, 0, -1, tiers}, {0, w.T, 0, -1, tiers}};
    cf_sched_input_t in = {.cost = cost, .reqs = rq, .n_reqs = 2, .refine_evals = CF_PLANNER_REFINE_EVALS};
    cf_sched_plan_t plan;
    cf_sched_plan_init(&plan);
    CF_CHECK_OK(cf_sched_plan(&in, p == 0 ? CF_POLICY_OPTIMAL : CF_POLICY_CAKE, &plan));
    int computed = 0;
    for (int k = 0; k < 2; k++) {
      pjob_t *q = &j[2 * p + k];
      CF_CHECK_EQ(q->t.err, 0);
      CF_CHECK_EQ(kv_bad(&q->t, &w), 0);
      CF_CHECK_EQ(q->plans, 1);
      CF_CHECK_EQ(q->layers_before_plan, 0);
      CF_CHECK(q->t.b.plan.predicted_us > 0);
      CF_CHECK_EQ(q->t.b.plan.policy, p == 0 ? CF_POLICY_OPTIMAL : CF_POLICY_CAKE);
      CF_CHECK_EQ(q->t.b.plan.chunks, (uint32_t)w.n);
      uint64_t cells = q->t.b.plan.cells_compute + q->t.b.plan.cells_load_cpu + q->t.b.plan.cells_load_ssd;
      CF_CHECK_EQ(cells, (uint64_t)w.n * w.L);
      for (int c = 0; c < w.n; c++) {
        CF_CHECK_EQ(q->t.b.plan.h[c], (int)plan.h[plan.h_off[k] + c]);
        computed += q->t.b.plan.h[c];
      }
      if (p == 0) CF_CHECK(q->t.b.plan.load_rank != NULL);
    }
    if (p == 0) CF_CHECK_GT(computed, 0); /* the joint plan splits: the test exercises the compute order too */
    cf_sched_plan_free(&plan);
  }
  cf_executor_stop(b);
  for (int i = 0; i < 4; i++) { cf_restore_plan_free(&j[i].t.b.plan); cf_kvmap_close(&j[i].t.kv); }
  cf_planner_close(&pl);
  bw_free(&w);
}
