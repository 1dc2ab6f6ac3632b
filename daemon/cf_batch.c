/* cf_batch — see cf_batch.h. One round = the jobs queued when the thread wakes (<= batch_max),
 * split by policy; each policy's sub-batch is planned jointly and executed as one exec run. */
#include "cf_batch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "exec/cf_cellsrc_store.h"
#include "exec/cf_profile.h"
#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

struct cf_batch_s {
  cf_batch_opts_t o;
  cf_sched_cost_t cost;
  double memcpy_Bps;             /* the link when no rate limit is set */
  cf_ratelimit_t lim_cpu, lim_ssd;
  cf_cellsrc_store_t cs;
  cf_exec_t ex;
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cf_batch_job_t *head, *tail;   /* queued */
  cf_batch_job_t **running;      /* the round being executed (for quiesce) */
  int n_running, busy, stopping, closed;
  cf_sched_plan_t plan;
  cf_sim_result_t sim;
};

/* Per job scratch of one round. */
typedef struct {
  cf_batch_job_t *j;
  int n_chunks;
  size_t found;
  cf_store_key_t *keys;
  cf_store_chunkref_t *refs;
  cf_cellsrc_t **srcs;
  void **refp;
  uint8_t *tiers;
  int *h;
  double tail_s;                 /* compute of the chunks not stored */
} cf__slot_t;

const cf_sched_cost_t *cf_batch_cost(const cf_batch_t *b) { return &b->cost; }

void cf_batch_set_rates(cf_batch_t *b, double cpu_Bps, double ssd_Bps) {
  cf_ratelimit_set(&b->lim_cpu, cpu_Bps);
  cf_ratelimit_set(&b->lim_ssd, ssd_Bps);
  pthread_mutex_lock(&b->mu);
  b->cost.link_Bps = cpu_Bps > 0 ? cpu_Bps : b->memcpy_Bps;
  pthread_mutex_unlock(&b->mu);
}

/* End job j: it leaves the running set (under the lock, so quiesce never touches it again)
 * before its owner hears of it and may free it. */
static void cf__done(cf_batch_t *b, cf_batch_job_t *j, int err, const cf_batch_result_t *res) {
  pthread_mutex_lock(&b->mu);
  for (int i = 0; i < b->n_running; i++)
    if (b->running[i] == j) b->running[i] = NULL;
  pthread_mutex_unlock(&b->mu);
  j->on_done(j, err, res);
}

static void cf__exec_on_layer(cf_exec_req_t *r, int layers, void *arg) {
  (void)r;
  cf_batch_job_t *j = arg;
  if (j->on_layer) j->on_layer(j, layers);
}

static void cf__slot_free(cf_batch_t *b, cf__slot_t *s) {
  if (s->refs && s->found) cf_cellsrc_store_unprepare(&b->cs, s->refs, s->found);
  free(s->keys); free(s->refs); free(s->srcs); free(s->refp); free(s->tiers); free(s->h);
  memset(s, 0, sizeof *s);
}

static int cf__slot_prepare(cf_batch_t *b, cf__slot_t *s, cf_batch_job_t *j) {
  int C = b->cost.chunk_tokens, L = b->cost.n_layers;
  s->j = j;
  s->n_chunks = (j->n_tokens + C - 1) / C;
  size_t full = (size_t)j->n_tokens / C, n = (size_t)s->n_chunks;
  s->keys = calloc(full + 1, sizeof *s->keys);
  s->refs = calloc(full + 1, sizeof *s->refs);
  s->srcs = calloc(n, sizeof *s->srcs);
  s->refp = calloc(n, sizeof *s->refp);
  s->tiers = calloc(full + 1, 1);
  s->h = calloc(n, sizeof *s->h);
  if (!s->keys || !s->refs || !s->srcs || !s->refp || !s->tiers || !s->h)
    return cf_seterr(CF_ENOMEM, "batch: plan buffers for %d chunks", s->n_chunks);
  cf_store_chain_keys(cf_store_geom(b->o.store)->fingerprint, j->tokens, full * C, (uint32_t)C, s->keys);
  s->found = cf_cellsrc_store_prepare(&b->cs, s->keys, full, s->refs, s->srcs, s->tiers);
  for (size_t c = 0; c < n; c++) {
    s->refp[c] = c < s->found ? &s->refs[c] : NULL;
    if (c >= s->found) {
      s->h[c] = L;
      int t0 = (int)c * C, nt = j->n_tokens - t0 < C ? j->n_tokens - t0 : C;
      s->tail_s += L * cf_cost_step(&b->cost, t0, nt);
    }
  }
  return 0;
}

/* Plan, report and execute the jobs of one policy. */
static void cf__run_group(cf_batch_t *b, cf_batch_job_t **jobs, int n, int policy) {
  cf__slot_t *sl = calloc((size_t)n, sizeof *sl);
  cf_sched_req_t *rq = calloc((size_t)n, sizeof *rq);
  cf_exec_req_t *er = calloc((size_t)n, sizeof *er);
  cf_batch_result_t *res = calloc((size_t)n, sizeof *res);
  int *live = calloc((size_t)n, sizeof *live), *err = calloc((size_t)n, sizeof *err);
  int rc = 0;
  if (!sl || !rq || !er || !res || !live || !err) rc = cf_seterr(CF_ENOMEM, "batch: %d jobs", n);
  for (int i = 0; i < n && !rc; i++) {
    if ((err[i] = cf__slot_prepare(b, &sl[i], jobs[i]))) continue;
    rq[i] = (cf_sched_req_t){.arrival_s = 0, .prefix_tokens = (int64_t)sl[i].found * b->cost.chunk_tokens,
                             .new_tokens = 0, .device = 0};
  }
  if (!rc) {
    pthread_mutex_lock(&b->mu);
    cf_sched_cost_t cost = b->cost;
    pthread_mutex_unlock(&b->mu);
    cf_sched_input_t in = {.cost = cost, .reqs = rq, .n_reqs = n, .refine_evals = -1};
    rc = cf_sched_plan(&in, (cf_policy_t)policy, &b->plan);
    if (!rc) rc = cf_sim_run(&in, &b->plan, &b->sim);
    if (rc) cf_err_prefix(rc, "plan (%s, %d requests): ", cf_policy_name((cf_policy_t)policy), n);
    for (int i = 0; i < n && !rc; i++) {
      if (err[i]) continue;
      cf__slot_t *s = &sl[i];
      cf_batch_plan_info_t pi = {.policy = policy, .chunks = (uint32_t)s->n_chunks};
      for (int c = 0; c < b->plan.n_chunks[i] && c < s->n_chunks; c++) s->h[c] = b->plan.h[b->plan.h_off[i] + c];
      for (int c = 0; c < s->n_chunks; c++) {
        uint64_t loads = (uint64_t)(cost.n_layers - s->h[c]);
        if (loads && s->tiers[c] == CF_STORE_TIER_CPU) pi.cells_load_cpu += loads;
        else if (loads) pi.cells_load_ssd += loads;
        pi.cells_compute += (uint64_t)s->h[c];
      }
      /* Not stored chunks are computed whole after the planned part (pessimistic); the bound
       * takes the larger of the stored part's bound and that compute alone. */
      double bound = cf_bound_single(&cost, rq[i].prefix_tokens);
      pi.predicted_s = b->sim.restore_s[i] + s->tail_s;
      pi.bound_s = bound > s->tail_s ? bound : s->tail_s;
      res[i].predicted_s = pi.predicted_s;
      res[i].bound_s = pi.bound_s;
      /* Reset the readiness slot BEFORE the engine learns it from the plan event: a reused
       * slot still says DONE with every layer from its previous restore. */
      if (jobs[i]->ready) cf_ready_begin(jobs[i]->ready, jobs[i]->ready_slot, jobs[i]->req_id);
      if (jobs[i]->on_plan) jobs[i]->on_plan(jobs[i], &pi);
      cf_exec_req_t *r = &er[i];
      *r = (cf_exec_req_t){.n_tokens = jobs[i]->n_tokens, .tokens = jobs[i]->tokens,
                           .chunk_tokens = cost.chunk_tokens, .h = s->h, .src = s->srcs, .ref = s->refp,
                           .kv = jobs[i]->kv, .blocks = jobs[i]->blocks, .n_blocks = jobs[i]->n_blocks,
                           .ready = jobs[i]->ready, .ready_slot = jobs[i]->ready_slot, .req_id = jobs[i]->req_id,
                           .on_layer = cf__exec_on_layer, .on_layer_arg = jobs[i], .cancel = &jobs[i]->cancel};
      if ((err[i] = cf_exec_validate(&b->ex, r))) {
        CF_WARN("restore %llu: %s", (unsigned long long)jobs[i]->req_id, cf_errmsg());
        continue;
      }
      live[i] = 1;
    }
  }
  if (!rc) {
    /* compact the runnable requests (array order = compute priority, as the service sorted) */
    cf_exec_req_t *run = calloc((size_t)n, sizeof *run);
    int m = 0, *map = calloc((size_t)n, sizeof *map);
    if (!run || !map) rc = cf_seterr(CF_ENOMEM, "batch: exec requests");
    for (int i = 0; i < n && !rc; i++) if (live[i]) { map[m] = i; run[m++] = er[i]; }
    if (!rc && m) {
      cf_exec_run(&b->ex, run, m); /* each request's outcome is in run[k].err */
      for (int k = 0; k < m; k++) {
        int i = map[k];
        er[i] = run[k];
        err[i] = run[k].err;
        res[i].stats = run[k].stats;
        res[i].time_s = (run[k].stats.t_done_ns - run[k].stats.t_start_ns) * 1e-9;
      }
    }
    free(run); free(map);
  }
  for (int i = 0; i < n; i++) {
    if (sl) cf__slot_free(b, &sl[i]);
    int e = rc ? rc : err[i];
    cf__done(b, jobs[i], e, e ? NULL : &res[i]);
  }
  free(sl); free(rq); free(er); free(res); free(live); free(err);
}

static void cf__round(cf_batch_t *b, cf_batch_job_t *const *round, int n) {
  cf_batch_job_t **grp = malloc((size_t)n * sizeof *grp), **jobs = malloc((size_t)n * sizeof *jobs);
  if (!jobs) { /* cannot even group: end them all */
    for (int i = 0; i < n; i++) cf__done(b, round[i], cf_seterr(CF_ENOMEM, "batch: grouping"), NULL);
    free(grp);
    return;
  }
  memcpy(jobs, round, (size_t)n * sizeof *jobs);
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    int m = 0;
    for (int i = 0; i < n; i++) {
      if (!jobs[i] || jobs[i]->policy != p) continue;
      if (atomic_load(&jobs[i]->cancel)) {
        cf__done(b, jobs[i], cf_seterr(CF_ECANCELED, "restore %llu cancelled before it ran",
                                       (unsigned long long)jobs[i]->req_id), NULL);
      } else if (grp) {
        grp[m++] = jobs[i];
      } else {
        cf__done(b, jobs[i], cf_seterr(CF_ENOMEM, "batch: grouping"), NULL);
      }
      jobs[i] = NULL;
    }
    if (m) cf__run_group(b, grp, m, p);
  }
  for (int i = 0; i < n; i++) /* a policy out of range */
    if (jobs[i]) cf__done(b, jobs[i], cf_seterr(CF_EINVAL, "policy %d unknown", jobs[i]->policy), NULL);
  free(grp);
  free(jobs);
}

static void *cf__thread(void *arg) {
  cf_batch_t *b = arg;
  cf_batch_job_t **round = malloc((size_t)b->o.batch_max * sizeof *round);
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (!b->head && !b->stopping) pthread_cond_wait(&b->cv, &b->mu);
    if (!b->head) break;
    int n = 0;
    while (b->head && n < b->o.batch_max) {
      round[n++] = b->head;
      b->head = b->head->next_;
    }
    if (!b->head) b->tail = NULL;
    b->busy = 1;
    b->running = round;
    b->n_running = n;
    pthread_mutex_unlock(&b->mu);
    cf__round(b, (cf_batch_job_t *const *)round, n);
    pthread_mutex_lock(&b->mu);
    b->busy = 0;
    b->running = NULL;
    b->n_running = 0;
    pthread_cond_broadcast(&b->cv);
  }
  pthread_mutex_unlock(&b->mu);
  free(round);
  return NULL;
}

int cf_batch_start(cf_batch_t **out, const cf_batch_opts_t *o) {
  *out = NULL;
  if (!o->be || !o->store) return cf_seterr(CF_EINVAL, "batch: backend and store required");
  cf_batch_t *b = calloc(1, sizeof *b);
  if (!b) return cf_seterr(CF_ENOMEM, "batch");
  b->o = *o;
  if (b->o.batch_max < 1) b->o.batch_max = 1;
  if (b->o.n_loaders < 1) b->o.n_loaders = 1;
  const cf_store_geom_t *g = cf_store_geom(o->store);
  int rc = cf_profile_compute(o->be, (int)g->chunk_tokens, o->profile_reps, &b->cost);
  if (rc) { free(b); return cf_err_prefix(rc, "profiling the %s backend: ", o->be->name); }
  b->cost.shared_link = 0;
  b->cost.link_latency_s = 2e-6;
  b->memcpy_Bps = cf_profile_memcpy_Bps(64u << 20);
  if (!(b->memcpy_Bps > 0)) b->memcpy_Bps = 1e9;
  b->cost.link_Bps = o->cpu_Bps > 0 ? o->cpu_Bps : b->memcpy_Bps;
  if ((rc = cf_cost_check(&b->cost))) { free(b); return rc; }
  cf_ratelimit_init(&b->lim_cpu, o->cpu_Bps, 0);
  cf_ratelimit_init(&b->lim_ssd, o->ssd_Bps, 0);
  if ((rc = cf_cellsrc_store_init(&b->cs, o->store, &b->lim_cpu, &b->lim_ssd)) ||
      (rc = cf_exec_init(&b->ex, o->be, b->o.n_loaders))) {
    free(b);
    return rc;
  }
  cf_sched_plan_init(&b->plan);
  cf_sim_result_init(&b->sim);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  if (pthread_create(&b->th, NULL, cf__thread, b)) {
    free(b);
    return cf_seterr(CF_ENOMEM, "batch: cannot start the scheduler thread");
  }
  CF_INFO("scheduler: profiled %s backend: gamma=%.3g s alpha=%.3g s/token beta=%.3g s/token^2; link %.2f GB/s%s",
          o->be->name, b->cost.gamma_s, b->cost.alpha_s, b->cost.beta_s, b->cost.link_Bps / 1e9,
          o->cpu_Bps > 0 ? " (rate limit)" : " (memcpy)");
  *out = b;
  return 0;
}

void cf_batch_submit(cf_batch_t *b, cf_batch_job_t **jobs, int n) {
  pthread_mutex_lock(&b->mu);
  int closed = b->closed;
  for (int i = 0; i < n && !closed; i++) {
    jobs[i]->next_ = NULL;
    if (b->tail) b->tail->next_ = jobs[i];
    else b->head = jobs[i];
    b->tail = jobs[i];
  }
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  if (closed)
    for (int i = 0; i < n; i++)
      jobs[i]->on_done(jobs[i], cf_seterr(CF_ESHUTDOWN, "cacheflowd is shutting down"), NULL);
}

void cf_batch_quiesce(cf_batch_t *b) {
  pthread_mutex_lock(&b->mu);
  b->closed = 1;
  cf_batch_job_t *q = b->head;
  b->head = b->tail = NULL;
  for (int i = 0; i < b->n_running; i++)
    if (b->running[i]) atomic_store(&b->running[i]->cancel, 1);
  pthread_mutex_unlock(&b->mu);
  while (q) {
    cf_batch_job_t *next = q->next_;
    q->on_done(q, cf_seterr(CF_ESHUTDOWN, "cacheflowd is shutting down"), NULL);
    q = next;
  }
  pthread_mutex_lock(&b->mu);
  while (b->busy) {
    for (int i = 0; i < b->n_running; i++) /* a round may have started in between */
      if (b->running[i]) atomic_store(&b->running[i]->cancel, 1);
    pthread_cond_wait(&b->cv, &b->mu);
  }
  pthread_mutex_unlock(&b->mu);
}

void cf_batch_stop(cf_batch_t *b) {
  if (!b) return;
  cf_batch_quiesce(b);
  pthread_mutex_lock(&b->mu);
  b->stopping = 1;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->th, NULL);
  cf_sched_plan_free(&b->plan);
  cf_sim_result_free(&b->sim);
  cf_ratelimit_close(&b->lim_cpu);
  cf_ratelimit_close(&b->lim_ssd);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
}
