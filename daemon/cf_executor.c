/* cf_executor — see cf_executor.h. */
#include "cf_executor.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cf_refit.h"
#include "exec/cf_cellsrc_store.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

struct cf_executor_s {
  cf_executor_opts_t o;
  cf_ratelimit_t lim_cpu, lim_ssd, lim_remote;
  cf_ratelimit_t link;           /* the one link both tiers' limited reads cross (its clock) */
  cf_cellsrc_store_t cs;
  cf_exec_t ex;
  cf_exec_t gex;                 /* the GPU data path (o.gpu), for jobs with gkv */
  atomic_ullong mem_waits;       /* cf_exec_stats_t.mem_waits of every executed restore */
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  cf_executor_job_t *head, *tail;   /* queued */
  cf_executor_job_t **running;      /* [batch_max] the round being executed (for quiesce) */
  cf_executor_job_t **mine;         /* [batch_max] the same round, for this thread (cf__done clears running[]) */
  int n_running, busy, stopping, closed;
  void (*swap_fn)(void *arg);   /* cf_executor_between_rounds: run on this thread between rounds */
  void *swap_arg;
  int swap_pending;
};

/* A job's pinned chunks for one round (its chunk keys, store refs, cell sources). A job runs in
 * one round: its keys are hashed once (cf__keys), for the lookup and the pins both. */
typedef struct {
  cf_store_key_t *keys;             /* [n_keys]: ceil(n_tokens / C), the last partial; NULL: no memory */
  size_t n_keys;
  cf_store_chunkref_t *refs;
  cf_cellsrc_t **srcs;
  void **refp;
  size_t found;
} cf__pins_t;

uint64_t cf_executor_mem_waits(cf_executor_t *x) { return atomic_load(&x->mem_waits); }

void cf_executor_set_rates(cf_executor_t *x, double cpu_Bps, double ssd_Bps, double remote_Bps) {
  cf_ratelimit_set(&x->lim_cpu, cpu_Bps);
  cf_ratelimit_set(&x->lim_ssd, ssd_Bps);
  cf_ratelimit_set(&x->lim_remote, remote_Bps);
}

/* End job j: it leaves the running set (under the lock, so quiesce never touches it again)
 * before its owner hears of it and may free it. */
static void cf__done(cf_executor_t *x, cf_executor_job_t *j, int err, const cf_executor_result_t *res) {
  pthread_mutex_lock(&x->mu);
  for (int i = 0; i < x->n_running; i++)
    if (x->running[i] == j) x->running[i] = NULL;
  pthread_mutex_unlock(&x->mu);
  j->on_done(j, err, res);
}

static void cf__exec_on_layer(cf_exec_req_t *r, int layers, void *arg) {
  (void)r;
  cf_executor_job_t *j = arg;
  if (j->on_layer) j->on_layer(j, layers);
}

static void cf__unpin(cf_executor_t *x, cf__pins_t *s) {
  if (s->refs && s->found) cf_cellsrc_store_unprepare(&x->cs, s->refs, s->found);
  free(s->keys); free(s->refs); free(s->srcs); free(s->refp);
  memset(s, 0, sizeof *s);
}

/* j's chunk keys into s->keys (the round's one hashing of them). Without memory s->keys stays
 * NULL: the lookup is skipped and nothing pinned (every chunk computed). */
static void cf__keys(cf_executor_t *x, cf__pins_t *s, const cf_executor_job_t *j) {
  const cf_store_geom_t *g = cf_store_geom(x->o.store);
  size_t C = g->chunk_tokens, n = ((size_t)j->n_tokens + C - 1) / C;
  if (!(s->keys = malloc((n ? n : 1) * sizeof *s->keys))) return;
  s->n_keys = cf_store_chain_keys_partial(g->fingerprint, j->tokens, (size_t)j->n_tokens, (uint32_t)C, s->keys);
}

/* Pin what the store holds of j's prefix (by s->keys' full chunks); chunks it no longer holds
 * are computed whole. */
static int cf__pin(cf_executor_t *x, cf__pins_t *s, cf_executor_job_t *j) {
  const cf_store_geom_t *g = cf_store_geom(x->o.store);
  int C = (int)g->chunk_tokens, L = (int)g->n_layers;
  size_t n = (size_t)(j->n_tokens + C - 1) / C, full = s->keys ? (size_t)j->n_tokens / C : 0;
  s->refs = calloc(full + 1, sizeof *s->refs);
  s->srcs = calloc(n, sizeof *s->srcs);
  s->refp = calloc(n, sizeof *s->refp);
  if (!s->refs || !s->srcs || !s->refp)
    return cf_seterr(CF_ENOMEM, "restore %llu: buffers for %zu chunks", (unsigned long long)j->req_id, n);
  /* every chunk, not only a leading run: the plan may load chunks past a hole */
  cf_cellsrc_store_prepare_each(&x->cs, s->keys, full, s->refs, s->srcs, NULL);
  s->found = full; /* unpin all (absent ones hold no pin) */
  for (size_t c = 0; c < n; c++) {
    s->refp[c] = s->srcs[c] ? &s->refs[c] : NULL;
    if (!s->srcs[c] && j->plan.h[c] < L) {
      CF_DEBUG("restore %llu: chunk %zu left the store since the lookup: recomputing it",
               (unsigned long long)j->req_id, c);
      j->plan.h[c] = L;
    }
  }
  return 0;
}

/* The round's planning step: look every live job's prefix up, then plan them all at once
 * (cf_planner_plan: one lib/sched plan per policy). Each job gets its plan, and its owner hears
 * of it (on_plan) before anything executes. err[i] is set for a job left without a plan. */
static void cf__plan_round(cf_executor_t *x, cf_executor_job_t *const *jobs, const cf__pins_t *pins, int n, int *err) {
  const cf_store_geom_t *g = cf_store_geom(x->o.store);
  int C = (int)g->chunk_tokens, L = (int)g->n_layers, m = 0;
  cf_plan_input_t *ins = calloc((size_t)n, sizeof *ins);
  cf_restore_plan_t *out = calloc((size_t)n, sizeof *out);
  uint8_t **tiers = calloc((size_t)n, sizeof *tiers);
  int *idx = calloc((size_t)n, sizeof *idx);
  if (!ins || !out || !tiers || !idx) {
    for (int i = 0; i < n; i++) err[i] = CF_ENOMEM;
    goto out;
  }
  for (int i = 0; i < n; i++) {
    cf_executor_job_t *j = jobs[i];
    if (atomic_load(&j->cancel)) continue; /* ends cancelled, unplanned */
    int64_t cached = 0;
    int32_t nk = (j->n_tokens + C - 1) / C;
    tiers[m] = calloc((size_t)nk + 1, 1);
    if (tiers[m] && (!x->o.lookup || !pins[i].keys)) { /* nothing looked up: every chunk a hole */
      memset(tiers[m], CF_STORE_TIER_NONE, (size_t)nk + 1);
    } else if (tiers[m] && x->o.lookup(x->o.lookup_ctx, j, pins[i].keys, pins[i].n_keys, &cached, tiers[m])) {
      cached = 0;
      memset(tiers[m], CF_STORE_TIER_NONE, (size_t)nk + 1);
    }
    /* the planned prefix ends with the last stored chunk: the absent ones before it are holes
     * (chunk_tiers NONE), computed at every layer while the stored ones after them load */
    for (int32_t c = nk - 1; tiers[m] && c >= 0; c--)
      if (tiers[m][c] != CF_STORE_TIER_NONE) {
        int64_t end = (int64_t)(c + 1) * C;
        if (end > cached) cached = end < j->n_tokens ? end : j->n_tokens;
        break;
      }
    /* a restore of [k, n): a whole-head engine's chunks inside [0, k) are its own (context) */
    const cf_kv_layout_t *lay = j->kv ? &j->kv->layout : &j->gkv->layout;
    int k = j->present_tokens, pc = cf_exec_present_chunks(lay, k, C);
    ins[m] = (cf_plan_input_t){.n_tokens = j->n_tokens, .policy = j->policy, .cached_tokens = tiers[m] ? cached : 0,
                               .chunk_tiers = tiers[m], .present_chunks = pc,
                               .compute_partial = j->gkv && x->o.gpu && k % C != 0, .want_ops = x->o.trace != NULL};
    idx[m++] = i;
  }
  cf_planner_plan(x->o.planner, ins, out, m, C, L);
  for (int k = 0; k < m; k++) {
    cf_executor_job_t *j = jobs[idx[k]];
    cf_restore_plan_free(&j->plan);
    j->plan = out[k];
    if (!j->plan.h) err[idx[k]] = CF_ENOMEM;
    else if (j->on_plan) j->on_plan(j);
  }
out:
  for (int k = 0; tiers && k < m; k++) free(tiers[k]);
  free(ins); free(out); free(tiers); free(idx);
}

/* Execute one round: plan it (with a planner), then every job that pinned and validated runs
 * in one exec run. */
static void cf__round(cf_executor_t *x, cf_executor_job_t *const *jobs, int n) {
  int C = (int)cf_store_geom(x->o.store)->chunk_tokens;
  cf__pins_t *pins = calloc((size_t)n, sizeof *pins);
  cf_exec_req_t *run = calloc((size_t)n, sizeof *run);
  int *map = calloc((size_t)n, sizeof *map), *err = calloc((size_t)n, sizeof *err);
  if (!pins || !run || !map || !err) {
    for (int i = 0; i < n; i++) cf__done(x, jobs[i], cf_seterr(CF_ENOMEM, "executor: round of %d", n), NULL);
    free(pins); free(run); free(map); free(err);
    return;
  }
  for (int i = 0; i < n; i++)
    if (!atomic_load(&jobs[i]->cancel)) cf__keys(x, &pins[i], jobs[i]);
  if (x->o.planner) cf__plan_round(x, jobs, pins, n, err);
  /* GPU jobs first (one run on the GPU data path), then the rest on the CPU one: run[0..mg) and
   * run[mg..m). Both are the same scheduler (lib/exec); only the data movement differs. */
  int m = 0, mg = 0;
  for (int pass = 0; pass < 2; pass++) {
    cf_exec_t *ex = pass == 0 ? &x->gex : &x->ex;
    for (int i = 0; i < n; i++) {
      cf_executor_job_t *j = jobs[i];
      if ((pass == 0) != (j->gkv && x->o.gpu)) continue;
      if (atomic_load(&j->cancel)) {
        err[i] = cf_seterr(CF_ECANCELED, "restore %llu cancelled before it ran", (unsigned long long)j->req_id);
      } else if (err[i]) {
        err[i] = cf_seterr(err[i], "restore %llu: no memory for its plan", (unsigned long long)j->req_id);
      } else if (!(err[i] = cf__pin(x, &pins[i], j))) {
        cf_exec_req_t *r = &run[m];
        *r = (cf_exec_req_t){.n_tokens = j->n_tokens, .tokens = j->tokens, .chunk_tokens = C, .h = j->plan.h, .skip = j->plan.skip,
                             .src = pins[i].srcs, .load_rank = j->plan.load_rank,
                             .cops = j->plan.cops, .n_cops = j->plan.n_cops, .ref = pins[i].refp, .kv = j->kv, .gkv = j->gkv,
                             .blocks = j->blocks, .n_blocks = j->n_blocks, .present_tokens = j->present_tokens, .ready = j->ready, .gready = j->gready,
                             .ready_slot = j->ready_slot, .req_id = j->req_id, .on_layer = cf__exec_on_layer,
                             .on_layer_arg = j, .cancel = &j->cancel};
        if ((err[i] = cf_exec_validate(ex, r))) CF_WARN("restore %llu: %s", (unsigned long long)j->req_id, cf_errmsg());
        else map[m++] = i;
      }
      if (err[i]) { /* the error's detail is thread-local: report it before the next job's */
        cf__unpin(x, &pins[i]);
        cf__done(x, j, err[i], NULL);
      }
    }
    if (pass == 0) mg = m;
  }
  /* each request's outcome is in run[k].err */
  for (int k = 0; x->o.trace && k < m; k++) run[k].trace = cf_trace_begin(x->o.trace); /* NULL: untraced */
  if (mg) cf_exec_run(&x->gex, run, mg);
  if (m > mg) cf_exec_run(&x->ex, run + mg, m - mg);
  for (int k = 0; k < m; k++) {
    int i = map[k];
    cf_executor_job_t *j = jobs[i];
    const cf_restore_plan_t *pl = &j->plan;
    if (x->o.trace)
      cf_trace_end(x->o.trace, run[k].trace, &run[k], pl, (int)cf_store_geom(x->o.store)->n_layers, x->o.n_loaders);
    cf__unpin(x, &pins[i]);
    atomic_fetch_add(&x->mem_waits, run[k].stats.mem_waits);
    cf_executor_result_t res = {.stats = run[k].stats,
                                .time_s = (run[k].stats.t_done_ns - run[k].stats.t_start_ns) * 1e-9};
    if (run[k].err && run[k].err_detail[0]) /* lib/exec's detail names the restore */
      cf_seterr(run[k].err, "%s", run[k].err_detail);
    else if (run[k].err)
      cf_seterr(run[k].err, "restore %llu: %s", (unsigned long long)j->req_id, cf_strerror(run[k].err));
    if (!run[k].err && pl->have_cost) { /* executed vs predicted, whole and compute term (log_level = debug) */
      const cf_exec_stats_t *st = &run[k].stats;
      const cf_sched_cost_t *co = &pl->cost;
      double pc = co->gamma_s * st->forward_calls + co->alpha_s * st->step_tokens + co->beta_s * st->step_attn;
      CF_DEBUG("restore %llu: %d tokens, %.2f ms (predicted %.2f ms): compute %.2f ms in %llu steps "
               "(%.0f tokens; predicted %.2f ms), cells computed %llu, loaded %llu+%llu, load busy %.2f ms",
               (unsigned long long)j->req_id, j->n_tokens, res.time_s * 1e3, pl->predicted_us * 1e-3,
               st->compute_busy_ns * 1e-6, (unsigned long long)st->forward_calls, st->step_tokens, pc * 1e3,
               (unsigned long long)st->cells_computed, (unsigned long long)st->cells_loaded[0],
               (unsigned long long)st->cells_loaded[1], (st->load_busy_ns[0] + st->load_busy_ns[1]) * 1e-6);
      if (x->o.planner) /* how the plan ran: the online re-fit */
        cf_refit_sample(cf_planner_refit(x->o.planner), &pl->cost, &res.stats, res.time_s, pl->predicted_us * 1e-6);
    }
    cf__done(x, j, run[k].err, run[k].err ? NULL : &res);
  }
  free(pins); free(run); free(map); free(err);
}

static void *cf__thread(void *arg) {
  cf_executor_t *x = arg;
  pthread_mutex_lock(&x->mu);
  for (;;) {
    while (!x->head && !x->stopping && !x->swap_pending) pthread_cond_wait(&x->cv, &x->mu);
    if (x->swap_pending) { /* between rounds: no restore sees two models */
      x->swap_fn(x->swap_arg);
      x->swap_pending = 0;
      pthread_cond_broadcast(&x->cv);
      continue;
    }
    if (!x->head) break;
    int n = 0;
    while (x->head && n < x->o.batch_max) {
      x->running[n++] = x->head;
      x->head = x->head->next_;
    }
    if (!x->head) x->tail = NULL;
    x->busy = 1;
    x->n_running = n;
    memcpy(x->mine, x->running, (size_t)n * sizeof *x->mine);
    pthread_mutex_unlock(&x->mu);
    cf__round(x, x->mine, n);
    pthread_mutex_lock(&x->mu);
    x->busy = 0;
    x->n_running = 0;
    pthread_cond_broadcast(&x->cv);
  }
  pthread_mutex_unlock(&x->mu);
  return NULL;
}

int cf_executor_start(cf_executor_t **out, const cf_executor_opts_t *o) {
  *out = NULL;
  if (!o->be || !o->store) return cf_seterr(CF_EINVAL, "executor: backend and store required");
  cf_executor_t *x = calloc(1, sizeof *x);
  if (!x) return cf_seterr(CF_ENOMEM, "executor");
  x->o = *o;
  if (x->o.batch_max < 1) x->o.batch_max = 1;
  if (x->o.n_loaders < 1) x->o.n_loaders = 1;
  /* the round buffers up front: the thread allocates nothing to take a round */
  x->running = calloc((size_t)x->o.batch_max, sizeof *x->running);
  x->mine = calloc((size_t)x->o.batch_max, sizeof *x->mine);
  if (!x->running || !x->mine) { free(x->running); free(x->mine); free(x); return cf_seterr(CF_ENOMEM, "executor"); }
  int rc;
  if ((rc = cf_ratelimit_init(&x->lim_cpu, o->cpu_Bps, 0)) || (rc = cf_ratelimit_init(&x->lim_ssd, o->ssd_Bps, 0)) ||
      (rc = cf_ratelimit_init(&x->lim_remote, o->remote_Bps, 0)) ||
      (rc = cf_ratelimit_init(&x->link, 0, 0)) ||
      (rc = cf_cellsrc_store_init(&x->cs, o->store, &x->lim_cpu, &x->lim_ssd)) ||
      (rc = cf_exec_init(&x->ex, o->be, x->o.n_loaders)) ||
      (rc = cf_exec_set_pool(&x->ex, o->host_pool)) ||
      (o->gpu && (rc = cf_exec_init_ops(&x->gex, o->be, x->o.n_loaders, &cf_exec_gpu_ops, o->gpu))) ||
      /* a device arena (gpu_memory_bytes): the GPU path's scheduler in its budget mode */
      (o->gpu && o->gpu->dpool && (rc = cf_exec_set_budget_mode(&x->gex)))) {
    free(x->running); free(x->mine); free(x);
    return rc;
  }
  /* The planner puts both tiers' cells on the engine's one link, each at its tier's rate
   * (cf_cost.h): the emulated tiers share one clock the same way, so an SSD cell and a CPU cell
   * never cross it at once. A tier without a limit takes no link time. */
  cf_ratelimit_share(&x->lim_cpu, &x->link);
  cf_ratelimit_share(&x->lim_ssd, &x->link);
  cf_ratelimit_share(&x->lim_remote, &x->link);
  x->cs.remote.limit = &x->lim_remote;
  pthread_mutex_init(&x->mu, NULL);
  pthread_cond_init(&x->cv, NULL);
  if (pthread_create(&x->th, NULL, cf__thread, x)) {
    free(x->running); free(x->mine); free(x);
    return cf_seterr(CF_ENOMEM, "executor: cannot start its thread");
  }
  *out = x;
  return 0;
}

void cf_executor_submit(cf_executor_t *x, cf_executor_job_t **jobs, int n) {
  pthread_mutex_lock(&x->mu);
  int closed = x->closed;
  for (int i = 0; i < n && !closed; i++) {
    jobs[i]->next_ = NULL;
    if (x->tail) x->tail->next_ = jobs[i];
    else x->head = jobs[i];
    x->tail = jobs[i];
  }
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  if (closed)
    for (int i = 0; i < n; i++)
      jobs[i]->on_done(jobs[i], cf_seterr(CF_ESHUTDOWN, "cacheflowd is shutting down"), NULL);
}

void cf_executor_quiesce(cf_executor_t *x) {
  pthread_mutex_lock(&x->mu);
  x->closed = 1;
  cf_executor_job_t *q = x->head;
  x->head = x->tail = NULL;
  pthread_mutex_unlock(&x->mu);
  while (q) {
    cf_executor_job_t *next = q->next_;
    q->on_done(q, cf_seterr(CF_ESHUTDOWN, "cacheflowd is shutting down"), NULL);
    q = next;
  }
  pthread_mutex_lock(&x->mu);
  while (x->busy) {
    for (int i = 0; i < x->n_running; i++)
      if (x->running[i]) atomic_store(&x->running[i]->cancel, 1);
    pthread_cond_wait(&x->cv, &x->mu);
  }
  pthread_mutex_unlock(&x->mu);
}

void cf_executor_between_rounds(cf_executor_t *x, void (*fn)(void *arg), void *arg) {
  pthread_mutex_lock(&x->mu);
  while (x->swap_pending) pthread_cond_wait(&x->cv, &x->mu); /* one at a time */
  x->swap_fn = fn;
  x->swap_arg = arg;
  x->swap_pending = 1;
  pthread_cond_broadcast(&x->cv);
  while (x->swap_pending && !x->stopping) pthread_cond_wait(&x->cv, &x->mu);
  if (x->swap_pending) { fn(arg); x->swap_pending = 0; } /* the thread has stopped: nothing runs */
  pthread_mutex_unlock(&x->mu);
}

typedef struct { cf_backend_t *be; const cf_model_t *m; } cf__swap_t;
static void cf__swap_model(void *arg) { cf__swap_t *s = arg; s->be->model = s->m; }

void cf_executor_set_model(cf_executor_t *x, const cf_model_t *m) {
  cf__swap_t s = {x->o.be, m};
  cf_executor_between_rounds(x, cf__swap_model, &s);
}

void cf_executor_stop(cf_executor_t *x) {
  if (!x) return;
  cf_executor_quiesce(x);
  pthread_mutex_lock(&x->mu);
  x->stopping = 1;
  pthread_cond_broadcast(&x->cv);
  pthread_mutex_unlock(&x->mu);
  pthread_join(x->th, NULL);
  cf_cellsrc_store_close(&x->cs);
  cf_ratelimit_close(&x->lim_cpu);
  cf_ratelimit_close(&x->lim_ssd);
  cf_ratelimit_close(&x->lim_remote);
  cf_ratelimit_close(&x->link);
  pthread_mutex_destroy(&x->mu);
  pthread_cond_destroy(&x->cv);
  free(x->running);
  free(x->mine);
  free(x);
}
