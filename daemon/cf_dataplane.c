/* cf_dataplane — see cf_dataplane.h. */
#include "cf_dataplane.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_batch.h"
#include "cf_planner.h"
#include "cf_storage.h"
#include "exec/cf_cellsrc_store.h"
#include "exec/cf_exec_plan.h"
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__READY_SLOTS 64

typedef struct {
  cf_engine_t *e;
  cf_kvmap_t *kv;            /* cf_storage's view of the engine's mappings (the executor writes through it) */
  const cf_gpu_kv_t *gkv;    /* or, for a CUDA IPC engine, cf_storage's device view of its buffers */
  cf_ready_t ready;
  cf_gpu_ready_t gready;     /* CUDA IPC engines: the GPU writes `ready`'s gates (registered mapping) */
  int has_gready;
  uint8_t slot_used[CF__READY_SLOTS];
} cf__engine_priv_t;

typedef struct {
  cf_batch_job_t b;          /* first: the executor's callbacks get a cf_batch_job_t * */
  cf_restore_t *r;
  cf_dataplane_t *dp;
  cf__engine_priv_t *ep;
  int32_t *tokens, *blocks;
  int slot;                  /* readiness slot or -1 */
  double bound_s;
} cf__job_t;

enum { CF__EV_LAYERS, CF__EV_DONE };
typedef struct cf__ev_s {
  int kind;
  cf__job_t *job;
  int layers;
  int err;
  cf_batch_result_t res;
  char detail[512];
  struct cf__ev_s *next;
} cf__ev_t;

struct cf_dataplane_s {
  const cf_config_t *cfg;
  cf_service_backend_t inner;      /* cf_storage's hooks */
  cf_backend_t *be;
  cf_store_t *store;
  cf_batch_t *batch;
  uv_async_t async;
  pthread_mutex_t mu;
  cf__ev_t *head, *tail;
  cf__engine_priv_t **engines;     /* loop thread only */
  int n_engines;
  uint64_t next_req;
};

static double cf__Bps(double gbps) { return gbps > 0 ? gbps * 1e9 / 8 : 0; }

/* ---------------------------------------------------------------- engines (loop thread) */
static cf__engine_priv_t *cf__priv(cf_dataplane_t *dp, const cf_engine_t *e) {
  for (int i = 0; i < dp->n_engines; i++)
    if (dp->engines[i]->e == e) return dp->engines[i];
  return NULL;
}

static int cf__engine_added(void *ctx, cf_engine_t *e) {
  cf_dataplane_t *dp = ctx;
  int rc = dp->inner.engine_added ? dp->inner.engine_added(dp->inner.ctx, e) : 0;
  if (rc) return rc;
  cf_engine_map_t *map = e->exec_priv;
  cf__engine_priv_t *p = calloc(1, sizeof *p);
  cf__engine_priv_t **grown = realloc(dp->engines, (size_t)(dp->n_engines + 1) * sizeof *grown);
  if (grown) dp->engines = grown;
  if (!p || !grown || !map) { rc = cf_seterr(CF_ENOMEM, "engine %llu: executor state", (unsigned long long)e->id); goto fail; }
  p->e = e;
  p->kv = map->gpu ? NULL : &map->kv;
  p->gkv = map->gpu ? &map->gkv : NULL;
  char path[256];
  struct stat st;
  if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode))
    snprintf(path, sizeof path, "/dev/shm/cacheflowd-%d-ready-%llu", (int)getpid(), (unsigned long long)e->id);
  else if (snprintf(path, sizeof path, "%.200s/ready-%llu", dp->cfg->store_dir, (unsigned long long)e->id) >= (int)sizeof path) {
    rc = cf_seterr(CF_EINVAL, "readiness file path under store_dir %s too long", dp->cfg->store_dir);
    goto fail;
  }
  unlink(path); /* a leftover of a crashed daemon that had our pid */
  if ((rc = cf_ready_create(&p->ready, path, CF__READY_SLOTS))) goto fail;
  if (map->gpu) { /* the engine's streams wait on gates the daemon's GPU writes in stream order */
    if ((rc = cf_gpu_ready_init(&p->gready, &p->ready, 0))) { cf_ready_close(&p->ready); goto fail; }
    p->has_gready = 1;
  }
  snprintf(e->readiness_path, sizeof e->readiness_path, "%s", path);
  e->readiness_slots = CF__READY_SLOTS;
  dp->engines[dp->n_engines++] = p;
  return 0;
fail:
  free(p);
  if (dp->inner.engine_removed) dp->inner.engine_removed(dp->inner.ctx, e);
  return rc;
}

static void cf__engine_removed(void *ctx, cf_engine_t *e) {
  cf_dataplane_t *dp = ctx;
  for (int i = 0; i < dp->n_engines; i++)
    if (dp->engines[i]->e == e) {
      cf__engine_priv_t *p = dp->engines[i];
      if (p->has_gready) cf_gpu_ready_close(&p->gready);
      cf_ready_close(&p->ready); /* p->kv is cf_storage's: closed with its mappings */
      free(p);
      dp->engines[i] = dp->engines[--dp->n_engines];
      break;
    }
  if (dp->inner.engine_removed) dp->inner.engine_removed(dp->inner.ctx, e);
}

/* ---------------------------------------------------------------- events (any thread -> loop) */
static void cf__post(cf_dataplane_t *dp, cf__ev_t *ev) {
  pthread_mutex_lock(&dp->mu);
  if (dp->tail) dp->tail->next = ev;
  else dp->head = ev;
  dp->tail = ev;
  pthread_mutex_unlock(&dp->mu);
  uv_async_send(&dp->async);
}

static void cf__job_free(cf__job_t *j) {
  free(j->b.load_rank);
  free(j->b.cops);
  free(j->tokens);
  free(j->blocks);
  free(j->b.h);
  free(j);
}

static void cf__deliver(cf__ev_t *ev) {
  cf__job_t *j = ev->job;
  cf_restore_t *r = j->r;
  if (ev->kind == CF__EV_LAYERS) {
    Cacheflow__V1__LayersReady lr = CACHEFLOW__V1__LAYERS_READY__INIT;
    lr.layers_ready = (uint32_t)ev->layers;
    Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
    e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS;
    e.layers = &lr;
    cf_service_restore_event(r, &e);
    return;
  }
  if (j->slot >= 0 && j->ep) j->ep->slot_used[j->slot] = 0;
  r->exec_priv = NULL;
  if (!ev->err) {
    const cf_exec_stats_t *st = &ev->res.stats;
    Cacheflow__V1__RestoreStats s = CACHEFLOW__V1__RESTORE_STATS__INIT;
    s.cells_loaded_cpu = st->cells_loaded[CF_EXEC_TIER_CPU];
    s.cells_loaded_ssd = st->cells_loaded[CF_EXEC_TIER_SSD];
    s.cells_computed = st->cells_computed;
    s.cells_recomputed_fallback = st->load_failures;
    s.time_us = ev->res.time_s * 1e6;
    s.predicted_us = j->b.predicted_s * 1e6; /* the round's joint plan if it was re-planned */
    s.bound_us = j->bound_s * 1e6;
    s.ratio_to_bound = j->bound_s > 0 ? ev->res.time_s / j->bound_s : 0;
    s.restored_tokens = (uint32_t)j->b.n_tokens;
    cf_service_restore_done(r, CF_RPC_OK, &s, NULL);
  } else if (r->engine->gone) {
    char why[600];
    snprintf(why, sizeof why, "engine %llu was unregistered during the restore (%s)",
             (unsigned long long)r->engine->id, ev->detail);
    cf_service_restore_done(r, CF_RPC_ABORTED, NULL, why);
  } else {
    int st = ev->err == CF_ESHUTDOWN ? CF_RPC_UNAVAILABLE
           : ev->err == CF_ECANCELED ? CF_RPC_CANCELLED : cf_rpc_status_from_err(ev->err);
    cf_service_restore_done(r, st, NULL, ev->detail);
  }
  cf__job_free(j);
}

static void cf__drain_events(cf_dataplane_t *dp) {
  pthread_mutex_lock(&dp->mu);
  cf__ev_t *ev = dp->head;
  dp->head = dp->tail = NULL;
  pthread_mutex_unlock(&dp->mu);
  while (ev) {
    cf__ev_t *next = ev->next;
    cf__deliver(ev);
    free(ev);
    ev = next;
  }
}

static void cf__on_async(uv_async_t *a) { cf__drain_events(a->data); }

static void cf__job_on_layer(cf_batch_job_t *bj, int layers) {
  cf__ev_t *ev = calloc(1, sizeof *ev);
  if (!ev) return; /* progress is best effort; the final event is not */
  ev->kind = CF__EV_LAYERS;
  ev->job = (cf__job_t *)bj;
  ev->layers = layers;
  cf__post(((cf__job_t *)bj)->dp, ev);
}

static void cf__job_on_done(cf_batch_job_t *bj, int err, const cf_batch_result_t *res) {
  cf__ev_t *ev;
  while (!(ev = calloc(1, sizeof *ev))) usleep(1000); /* the final event must arrive */
  ev->kind = CF__EV_DONE;
  ev->job = (cf__job_t *)bj;
  ev->err = err;
  if (res) ev->res = *res;
  if (err) snprintf(ev->detail, sizeof ev->detail, "%s: %s", cf_strerror(err), cf_errmsg());
  cf__post(((cf__job_t *)bj)->dp, ev);
}

/* ---------------------------------------------------------------- restores (loop thread) */
static cf__job_t *cf__job_of(cf_dataplane_t *dp, cf_restore_t *r) {
  if (r->exec_priv) return r->exec_priv;
  cf__job_t *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->r = r;
  j->dp = dp;
  j->slot = -1;
  j->ep = cf__priv(dp, r->engine);
  r->exec_priv = j;
  return j;
}

static int cf__restore_slot(void *ctx, cf_restore_t *r) {
  cf_dataplane_t *dp = ctx;
  cf__job_t *j = cf__job_of(dp, r);
  if (!j || !j->ep) return -1;
  if (j->slot < 0) {
    if (!j->b.req_id) j->b.req_id = ++dp->next_req;
    for (int s = 0; s < CF__READY_SLOTS && j->slot < 0; s++)
      if (!j->ep->slot_used[s]) { j->ep->slot_used[s] = 1; j->slot = s; }
    /* reset before the engine can read the slot number: a reused slot still says DONE */
    if (j->slot >= 0) cf_ready_begin(&j->ep->ready, j->slot, j->b.req_id);
  }
  return j->slot;
}

/* A restore the planner did not plan (no cost model, or its group failed to plan): load what
 * the lookup found cached, compute the rest; tell the engine with a PlanSummary of our own. */
static void cf__fallback_plan(cf_dataplane_t *dp, cf__job_t *j, int n_chunks, int L, int C) {
  cf_restore_t *r = j->r;
  Cacheflow__V1__PlanSummary ps = CACHEFLOW__V1__PLAN_SUMMARY__INIT;
  ps.policy = CACHEFLOW__V1__POLICY__POLICY_LOAD;
  ps.chunks = (uint32_t)n_chunks;
  for (int c = 0; c < n_chunks; c++) {
    int cached = (uint32_t)(c + 1) * (uint32_t)C <= r->cached_tokens;
    j->b.h[c] = cached ? 0 : L;
    if (!cached) ps.cells_compute += (uint64_t)L;
    else if (r->chunk_tiers && r->chunk_tiers[c] == CF_STORE_TIER_SSD) ps.cells_load_ssd += (uint64_t)L;
    else ps.cells_load_cpu += (uint64_t)L;
  }
  int slot = cf__restore_slot(dp, r);
  ps.readiness_slot = slot >= 0 ? (uint32_t)slot : UINT32_MAX;
  Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
  e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN;
  e.plan = &ps;
  cf_service_restore_event(r, &e);
}

static int32_t *cf__i32(const uint32_t *a, size_t n) {
  int32_t *o = malloc((n ? n : 1) * sizeof *o);
  if (o) for (size_t i = 0; i < n; i++) o[i] = (int32_t)a[i]; /* validated < vocab / num_blocks */
  return o;
}

static void cf__restore_batch(void *ctx, cf_restore_t **batch, int n) {
  cf_dataplane_t *dp = ctx;
  const cf_store_geom_t *g = cf_store_geom(dp->store);
  int C = (int)g->chunk_tokens, L = (int)g->n_layers;
  cf_batch_job_t **jobs = calloc((size_t)n, sizeof *jobs);
  int m = 0;
  for (int i = 0; i < n; i++) {
    cf_restore_t *r = batch[i];
    cf__job_t *j = cf__job_of(dp, r);
    int n_chunks = (int)((r->req->n_token_ids + C - 1) / C);
    if (j) {
      j->tokens = cf__i32(r->req->token_ids, r->req->n_token_ids);
      j->blocks = cf__i32(r->req->block_ids, r->req->n_block_ids);
      j->b.h = malloc((size_t)n_chunks * sizeof(int));
    }
    if (!jobs || !j || !j->tokens || !j->blocks || !j->b.h || !j->ep) {
      const char *why = j && !j->ep ? "engine has no executor state" : "out of memory";
      if (j) { if (j->slot >= 0 && j->ep) j->ep->slot_used[j->slot] = 0; r->exec_priv = NULL; cf__job_free(j); }
      cf_service_restore_done(r, CF_RPC_RESOURCE_EXHAUSTED, NULL, why);
      continue;
    }
    if (r->plan) { /* the planner's staircase; chunks past what it planned are computed */
      const cf_sched_plan_t *p = &r->plan->plan;
      int planned = p->n_chunks[r->plan_req];
      for (int c = 0; c < n_chunks; c++) j->b.h[c] = c < planned ? p->h[p->h_off[r->plan_req] + c] : L;
      /* the plan's link order and compute order (op indices: comparable across the group) */
      j->b.load_rank = cf_exec_plan_load_rank(p, r->plan_req, n_chunks, L); /* NULL: layer-major */
      j->b.cops = cf_exec_plan_cops(p, r->plan_req, &j->b.n_cops);         /* NULL: work-conserving */
      j->b.plan_group = r->plan;
      j->b.policy = r->policy;
      j->b.cached_tokens = r->plan->reqs[r->plan_req].prefix_tokens; /* planned: a loaded partial chunk never */
      j->b.cost = r->plan->in.cost;
      j->b.chunk_tier = r->plan->reqs[r->plan_req].chunk_tier; /* a re-plan keeps the tier rates */
      j->b.refit = r->plan->refit;                               /* the cost model's online re-fit */
      j->b.predicted_s = r->summary.predicted_us * 1e-6;
      j->bound_s = r->summary.bound_us * 1e-6;
      cf__restore_slot(dp, r); /* normally assigned already, when the PlanSummary went out */
    } else {
      cf__fallback_plan(dp, j, n_chunks, L, C);
    }
    j->b.tokens = j->tokens;
    j->b.n_tokens = (int)r->req->n_token_ids;
    j->b.blocks = j->blocks;
    j->b.n_blocks = (int)r->req->n_block_ids;
    j->b.kv = j->ep->kv;
    j->b.gkv = j->ep->gkv;
    j->b.ready = j->slot >= 0 ? &j->ep->ready : NULL;
    j->b.gready = j->slot >= 0 && j->ep->has_gready ? &j->ep->gready : NULL;
    j->b.ready_slot = j->slot;
    atomic_init(&j->b.cancel, r->engine->gone ? 1 : 0);
    j->b.on_layer = cf__job_on_layer;
    j->b.on_done = cf__job_on_done;
    jobs[m++] = &j->b;
  }
  if (m) cf_batch_submit(dp->batch, jobs, m);
  free(jobs);
}

static void cf__restore_cancel(void *ctx, cf_restore_t *r) {
  (void)ctx;
  cf__job_t *j = r->exec_priv;
  if (j) atomic_store(&j->b.cancel, 1);
}

/* cf_storage's hooks, called with its own ctx (the service hands every hook ours). */
static int cf__lookup(void *ctx, cf_engine_t *e, const uint32_t *t, size_t n, uint32_t per[3], uint8_t *tiers) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.lookup(dp->inner.ctx, e, t, n, per, tiers);
}
static int cf__save(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved, int *durable) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.save(dp->inner.ctx, e, req, saved, durable);
}
static int cf__evict(void *ctx, int tier, uint64_t bytes, uint64_t *be, uint64_t *ce) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.evict(dp->inner.ctx, tier, bytes, be, ce);
}
static void cf__usage(void *ctx, uint64_t *cpu, uint64_t *ssd) {
  cf_dataplane_t *dp = ctx;
  dp->inner.usage(dp->inner.ctx, cpu, ssd);
}

/* ---------------------------------------------------------------- life cycle */
int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                      cf_store_t *store, cf_service_backend_t *hooks) {
  return cf_dataplane_open_gpu(out, loop, cfg, be, store, hooks, NULL);
}

int cf_dataplane_open_gpu(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                          cf_store_t *store, cf_service_backend_t *hooks, cf_exec_gpu_t *gpu) {
  *out = NULL;
  cf_dataplane_t *dp = calloc(1, sizeof *dp);
  if (!dp) return cf_seterr(CF_ENOMEM, "executor");
  dp->cfg = cfg;
  dp->be = be;
  dp->store = store;
  dp->inner = *hooks;
  /* the executor computes on this thread's backend (fp32) and writes host memory in the store's KV dtype */
  cf_batch_opts_t bo = {.be = be, .store = store, .n_loaders = 2, .batch_max = (int)cfg->batch_max,
                        .cpu_Bps = cf__Bps(cfg->cpu_read_gbps), .ssd_Bps = cf__Bps(cfg->ssd_read_gbps),
                        .gpu = gpu};
  int rc = cf_batch_start(&dp->batch, &bo);
  if (rc) { free(dp); return rc; }
  pthread_mutex_init(&dp->mu, NULL);
  uv_async_init(loop, &dp->async, cf__on_async);
  dp->async.data = dp;
  /* lookup, save, evict, usage stay cf_storage's, forwarded with its own ctx */
  *hooks = (cf_service_backend_t){.ctx = dp, .kv_dtype = dp->inner.kv_dtype, .engine_added = cf__engine_added, .engine_removed = cf__engine_removed,
                                  .restore_batch = cf__restore_batch, .restore_cancel = cf__restore_cancel,
                                  .restore_slot = cf__restore_slot,
                                  .lookup = dp->inner.lookup ? cf__lookup : NULL,
                                  .save = dp->inner.save ? cf__save : NULL,
                                  .evict = dp->inner.evict ? cf__evict : NULL,
                                  .usage = dp->inner.usage ? cf__usage : NULL};
  *out = dp;
  return 0;
}

void cf_dataplane_reload(cf_dataplane_t *dp) {
  if (dp) cf_batch_set_rates(dp->batch, cf__Bps(dp->cfg->cpu_read_gbps), cf__Bps(dp->cfg->ssd_read_gbps));
}

void cf_dataplane_quiesce(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_batch_quiesce(dp->batch);
  cf__drain_events(dp);
}

static void cf__async_closed(uv_handle_t *h) {
  cf_dataplane_t *dp = h->data;
  pthread_mutex_destroy(&dp->mu);
  free(dp->engines);
  free(dp);
}

void cf_dataplane_close(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_batch_stop(dp->batch);
  cf__drain_events(dp);
  uv_close((uv_handle_t *)&dp->async, cf__async_closed);
}
