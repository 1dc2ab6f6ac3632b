/* cf_batch — see cf_batch.h. */
#include "cf_batch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cf_planner.h"
#include "cf_refit.h"
#include "exec/cf_cellsrc_store.h"
#include "exec/cf_exec_plan.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

struct cf_batch_s {
  cf_batch_opts_t o;
  cf_ratelimit_t lim_cpu, lim_ssd;
  cf_ratelimit_t link;           /* the one link both tiers' limited reads cross (its clock) */
  cf_cellsrc_store_t cs;
  cf_exec_t ex;
  cf_exec_t gex;                 /* the GPU data path (o.gpu), for jobs with gkv */
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cf_batch_job_t *head, *tail;   /* queued */
  cf_batch_job_t **running;      /* the round being executed (for quiesce) */
  int n_running, busy, stopping, closed;
};

/* Per job scratch of one round. */
typedef struct {
  cf_store_key_t *keys;
  cf_store_chunkref_t *refs;
  cf_cellsrc_t **srcs;
  void **refp;
  size_t found;
} cf__slot_t;

void cf_batch_set_rates(cf_batch_t *b, double cpu_Bps, double ssd_Bps) {
  cf_ratelimit_set(&b->lim_cpu, cpu_Bps);
  cf_ratelimit_set(&b->lim_ssd, ssd_Bps);
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
  free(s->keys); free(s->refs); free(s->srcs); free(s->refp);
  memset(s, 0, sizeof *s);
}

/* Pin what the store holds of j's prefix; chunks it no longer holds are computed whole. */
static int cf__slot_prepare(cf_batch_t *b, cf__slot_t *s, cf_batch_job_t *j) {
  const cf_store_geom_t *g = cf_store_geom(b->o.store);
  int C = (int)g->chunk_tokens, L = (int)g->n_layers;
  size_t n = (size_t)(j->n_tokens + C - 1) / C, full = (size_t)j->n_tokens / C;
  s->keys = calloc(full + 1, sizeof *s->keys);
  s->refs = calloc(full + 1, sizeof *s->refs);
  s->srcs = calloc(n, sizeof *s->srcs);
  s->refp = calloc(n, sizeof *s->refp);
  if (!s->keys || !s->refs || !s->srcs || !s->refp)
    return cf_seterr(CF_ENOMEM, "restore %llu: buffers for %zu chunks", (unsigned long long)j->req_id, n);
  cf_store_chain_keys(g->fingerprint, j->tokens, full * C, (uint32_t)C, s->keys);
  s->found = cf_cellsrc_store_prepare(&b->cs, s->keys, full, s->refs, s->srcs, NULL);
  for (size_t c = 0; c < n; c++) {
    s->refp[c] = c < s->found ? &s->refs[c] : NULL;
    if (c >= s->found && j->h[c] < L) {
      CF_DEBUG("restore %llu: chunk %zu left the store since the lookup: recomputing it",
               (unsigned long long)j->req_id, c);
      j->h[c] = L;
    }
  }
  return 0;
}

/* Plan jobs[0..n) (one policy, from different service batches) again as one batch: they share
 * this round's compute worker and link, which their separate plans each assumed to be theirs.
 * On success every job gets the joint plan's staircase, link and compute order and prediction;
 * on failure (out of memory, a plan error) they keep their own plans. */
static void cf__replan(cf_batch_job_t *const *jobs, int n, int C, int L) {
  cf_sched_req_t *rq = calloc((size_t)n, sizeof *rq);
  cf_sched_plan_t plan;
  cf_sim_result_t sim;
  cf_sched_plan_init(&plan);
  cf_sim_result_init(&sim);
  if (!rq) return;
  for (int i = 0; i < n; i++)
    rq[i] = (cf_sched_req_t){.arrival_s = 0, .prefix_tokens = jobs[i]->cached_tokens,
                             .new_tokens = jobs[i]->n_tokens - jobs[i]->cached_tokens, .device = -1,
                             .chunk_tier = jobs[i]->chunk_tier};
  cf_sched_input_t in = {.cost = jobs[0]->cost, .reqs = rq, .n_reqs = n, .refine_evals = -1};
  int rc = cf_planner_plan_loadable(&in, rq, jobs[0]->policy, &plan);
  if (!rc) rc = cf_sim_run(&in, &plan, &sim);
  if (rc) { CF_WARN("joint re-plan of %d restores: %s: %s", n, cf_strerror(rc), cf_errmsg()); goto out; }
  for (int i = 0; i < n; i++) {
    cf_batch_job_t *j = jobs[i];
    int n_chunks = (j->n_tokens + C - 1) / C, planned = plan.n_chunks[i], n_cops = 0;
    uint32_t *rank = cf_exec_plan_load_rank(&plan, i, n_chunks, L);
    cf_exec_cop_t *cops = cf_exec_plan_cops(&plan, i, &n_cops);
    for (int c = 0; c < n_chunks; c++) j->h[c] = c < planned ? plan.h[plan.h_off[i] + c] : L;
    free(j->load_rank); free(j->cops);
    j->load_rank = rank;
    j->cops = cops;
    j->n_cops = n_cops;
    j->cached_tokens = rq[i].prefix_tokens; /* a partial last chunk: maybe no longer planned */
    int64_t rest = (int64_t)j->n_tokens - j->cached_tokens;
    j->predicted_s = sim.restore_s[i] + (rest > 0 ? cf_cost_prefill(&j->cost, j->cached_tokens, rest) : 0);
  }
  CF_DEBUG("re-planned %d restores (%s) as one batch: predicted makespan %.1f ms", n,
           cf_policy_name((cf_policy_t)jobs[0]->policy), sim.makespan_s * 1e3);
out:
  cf_sched_plan_free(&plan);
  cf_sim_result_free(&sim);
  free(rq);
}

/* The round's planned jobs of each policy that came from more than one plan: plan them jointly. */
static void cf__replan_round(cf_batch_t *b, cf_batch_job_t *const *jobs, int n) {
  const cf_store_geom_t *g = cf_store_geom(b->o.store);
  cf_batch_job_t **grp = malloc((size_t)n * sizeof *grp);
  if (!grp) return;
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    int m = 0, groups = 0;
    for (int i = 0; i < n; i++) {
      cf_batch_job_t *j = jobs[i];
      if (!j->plan_group || j->policy != p || atomic_load(&j->cancel)) continue;
      int seen = 0;
      for (int k = 0; k < m && !seen; k++) seen = grp[k]->plan_group == j->plan_group;
      groups += !seen;
      grp[m++] = j;
    }
    if (groups > 1) cf__replan(grp, m, (int)g->chunk_tokens, (int)g->n_layers);
  }
  free(grp);
}

/* Execute one round: every job that pinned and validated runs in one exec run. */
static void cf__round(cf_batch_t *b, cf_batch_job_t *const *jobs, int n) {
  int C = (int)cf_store_geom(b->o.store)->chunk_tokens;
  cf__slot_t *sl = calloc((size_t)n, sizeof *sl);
  cf_exec_req_t *run = calloc((size_t)n, sizeof *run);
  int *map = calloc((size_t)n, sizeof *map), *err = calloc((size_t)n, sizeof *err);
  if (!sl || !run || !map || !err) {
    for (int i = 0; i < n; i++) cf__done(b, jobs[i], cf_seterr(CF_ENOMEM, "executor: round of %d", n), NULL);
    free(sl); free(run); free(map); free(err);
    return;
  }
  cf__replan_round(b, jobs, n);
  /* GPU jobs first (one run on the GPU data path), then the rest on the CPU one: run[0..mg) and
   * run[mg..m). Both are the same scheduler (lib/exec); only the data movement differs. */
  int m = 0, mg = 0;
  for (int pass = 0; pass < 2; pass++) {
    cf_exec_t *ex = pass == 0 ? &b->gex : &b->ex;
    for (int i = 0; i < n; i++) {
      cf_batch_job_t *j = jobs[i];
      if ((pass == 0) != (j->gkv && b->o.gpu)) continue;
      if (atomic_load(&j->cancel)) {
        err[i] = cf_seterr(CF_ECANCELED, "restore %llu cancelled before it ran", (unsigned long long)j->req_id);
      } else if (!(err[i] = cf__slot_prepare(b, &sl[i], j))) {
        cf_exec_req_t *r = &run[m];
        *r = (cf_exec_req_t){.n_tokens = j->n_tokens, .tokens = j->tokens, .chunk_tokens = C, .h = j->h,
                             .src = sl[i].srcs, .load_rank = j->load_rank,
                             .cops = j->cops, .n_cops = j->n_cops, .ref = sl[i].refp, .kv = j->kv, .gkv = j->gkv,
                             .blocks = j->blocks, .n_blocks = j->n_blocks, .ready = j->ready, .gready = j->gready,
                             .ready_slot = j->ready_slot, .req_id = j->req_id, .on_layer = cf__exec_on_layer,
                             .on_layer_arg = j, .cancel = &j->cancel};
        if ((err[i] = cf_exec_validate(ex, r))) CF_WARN("restore %llu: %s", (unsigned long long)j->req_id, cf_errmsg());
        else map[m++] = i;
      }
      if (err[i]) { /* the error's detail is thread-local: report it before the next job's */
        cf__slot_free(b, &sl[i]);
        cf__done(b, j, err[i], NULL);
      }
    }
    if (pass == 0) mg = m;
  }
  /* each request's outcome is in run[k].err */
  if (mg) cf_exec_run(&b->gex, run, mg);
  if (m > mg) cf_exec_run(&b->ex, run + mg, m - mg);
  for (int k = 0; k < m; k++) {
    int i = map[k];
    cf__slot_free(b, &sl[i]);
    cf_batch_result_t res = {.stats = run[k].stats,
                             .time_s = (run[k].stats.t_done_ns - run[k].stats.t_start_ns) * 1e-9};
    if (run[k].err) cf_seterr(run[k].err, "restore %llu: %s", (unsigned long long)jobs[i]->req_id,
                              cf_strerror(run[k].err));
    if (!run[k].err) { /* executed vs predicted, whole and compute term (log_level = debug) */
      const cf_exec_stats_t *st = &run[k].stats;
      const cf_sched_cost_t *co = &jobs[i]->cost;
      double pc = co->gamma_s * st->forward_calls + co->alpha_s * st->step_tokens + co->beta_s * st->step_attn;
      CF_DEBUG("restore %llu: %d tokens, %.2f ms (predicted %.2f ms): compute %.2f ms in %llu steps "
               "(%.0f tokens; predicted %.2f ms), cells computed %llu, loaded %llu+%llu, load busy %.2f ms",
               (unsigned long long)jobs[i]->req_id, jobs[i]->n_tokens, res.time_s * 1e3, jobs[i]->predicted_s * 1e3,
               st->compute_busy_ns * 1e-6, (unsigned long long)st->forward_calls, st->step_tokens, pc * 1e3,
               (unsigned long long)st->cells_computed, (unsigned long long)st->cells_loaded[0],
               (unsigned long long)st->cells_loaded[1], (st->load_busy_ns[0] + st->load_busy_ns[1]) * 1e-6);
    }
    if (!run[k].err && jobs[i]->refit) /* how the plan ran: the online re-fit */
      cf_refit_sample(jobs[i]->refit, &jobs[i]->cost, &res.stats, res.time_s, jobs[i]->predicted_s);
    cf__done(b, jobs[i], run[k].err, run[k].err ? NULL : &res);
  }
  free(sl); free(run); free(map); free(err);
}

static void *cf__thread(void *arg) {
  cf_batch_t *b = arg;
  cf_batch_job_t **round = malloc((size_t)b->o.batch_max * sizeof *round);
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (!b->head && !b->stopping) pthread_cond_wait(&b->cv, &b->mu);
    if (!b->head) break;
    int n = 0;
    while (b->head && n < b->o.batch_max && round) {
      round[n++] = b->head;
      b->head = b->head->next_;
    }
    if (!b->head) b->tail = NULL;
    b->busy = 1;
    b->running = round;
    b->n_running = n;
    pthread_mutex_unlock(&b->mu);
    cf_batch_job_t **mine = malloc((size_t)n * sizeof *mine); /* cf__done clears round[] entries */
    if (mine) {
      memcpy(mine, round, (size_t)n * sizeof *mine);
      cf__round(b, mine, n);
    } else {
      for (int i = 0; i < n; i++) cf__done(b, round[i], cf_seterr(CF_ENOMEM, "executor round"), NULL);
    }
    free(mine);
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
  if (!o->be || !o->store) return cf_seterr(CF_EINVAL, "executor: backend and store required");
  cf_batch_t *b = calloc(1, sizeof *b);
  if (!b) return cf_seterr(CF_ENOMEM, "executor");
  b->o = *o;
  if (b->o.batch_max < 1) b->o.batch_max = 1;
  if (b->o.n_loaders < 1) b->o.n_loaders = 1;
  int rc;
  if ((rc = cf_ratelimit_init(&b->lim_cpu, o->cpu_Bps, 0)) || (rc = cf_ratelimit_init(&b->lim_ssd, o->ssd_Bps, 0)) ||
      (rc = cf_ratelimit_init(&b->link, 0, 0)) ||
      (rc = cf_cellsrc_store_init(&b->cs, o->store, &b->lim_cpu, &b->lim_ssd)) ||
      (rc = cf_exec_init(&b->ex, o->be, b->o.n_loaders)) ||
      (o->gpu && (rc = cf_exec_init_ops(&b->gex, o->be, b->o.n_loaders, &cf_exec_gpu_ops, o->gpu)))) {
    free(b);
    return rc;
  }
  /* The planner puts both tiers' cells on the engine's one link, each at its tier's rate
   * (cf_cost.h): the emulated tiers share one clock the same way, so an SSD cell and a CPU cell
   * never cross it at once. A tier without a limit takes no link time. */
  cf_ratelimit_share(&b->lim_cpu, &b->link);
  cf_ratelimit_share(&b->lim_ssd, &b->link);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  if (pthread_create(&b->th, NULL, cf__thread, b)) {
    free(b);
    return cf_seterr(CF_ENOMEM, "executor: cannot start its thread");
  }
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
  pthread_mutex_unlock(&b->mu);
  while (q) {
    cf_batch_job_t *next = q->next_;
    q->on_done(q, cf_seterr(CF_ESHUTDOWN, "cacheflowd is shutting down"), NULL);
    q = next;
  }
  pthread_mutex_lock(&b->mu);
  while (b->busy) {
    for (int i = 0; i < b->n_running; i++)
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
  cf_cellsrc_store_close(&b->cs);
  cf_ratelimit_close(&b->lim_cpu);
  cf_ratelimit_close(&b->lim_ssd);
  cf_ratelimit_close(&b->link);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
}
