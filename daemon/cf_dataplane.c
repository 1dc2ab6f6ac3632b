/* cf_dataplane — see cf_dataplane.h. */
#include "cf_dataplane.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_executor.h"
#include "cf_storage.h"
#include "exec/cf_cellsrc_store.h" /* CF_EXEC_TIER_*: the executor's stats per tier */
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "util/cf_err.h"
#include "util/cf_log.h"
#include "util/cf_mempool.h"

#define CF__READY_SLOTS 64

/* Per engine: where the executor writes its KV and the readiness file it reports through. */
typedef struct {
  cf_engine_t *e;
  cf_kvmap_t *kv;            /* cf_storage's view of the engine's mappings (the executor writes through it) */
  const cf_gpu_kv_t *gkv;    /* or, for a CUDA IPC engine, cf_storage's device view of its buffers */
  cf_ready_t ready;
  cf_gpu_ready_t gready;     /* CUDA IPC engines: the GPU writes `ready`'s gates (registered mapping) */
  int has_gready;
  uint8_t slot_used[CF__READY_SLOTS];
} cf__engine_out_t;

enum { CF__EV_PLAN, CF__EV_LAYERS, CF__EV_DONE };
struct cf_dataplane_job_s;
typedef struct cf__ev_s {
  int kind;
  struct cf_dataplane_job_s *job;
  int layers;
  int err;
  cf_executor_result_t res;
  char detail[512];
  int owned;                 /* malloc'ed (layer events); else one of the job's own */
  struct cf__ev_s *next;
} cf__ev_t;

/* A restore on its way through the executor. */
struct cf_dataplane_job_s {
  cf_executor_job_t x;       /* first: the executor's callbacks get a cf_executor_job_t * */
  cf_restore_t *r;
  cf_dataplane_t *dp;
  cf__engine_out_t *eo;
  int32_t *tokens, *blocks;
  int slot;                  /* readiness slot or -1 */
  /* the events that must arrive, allocated with the job: the executor thread never waits for memory */
  cf__ev_t ev_plan, ev_done;
};
typedef struct cf_dataplane_job_s cf__job_t;


struct cf_dataplane_s {
  const cf_config_t *cfg;
  cf_service_backend_t inner;      /* cf_storage's hooks */
  cf_backend_t *be;
  cf_store_t *store;
  cf_executor_t *executor;
  uv_async_t async;
  pthread_mutex_t mu;
  cf__ev_t *head, *tail;
  cf__engine_out_t **engines;      /* loop thread only */
  int n_engines;
  uint64_t next_req;
  cf_mempool_t *host_pool;         /* host_memory_bytes > 0: the CPU executor's budget */
  cf_exec_gpu_t *gpu;              /* NULL or the GPU data path (its arena: gpu_memory_bytes) */
  cf_trace_t *trace;               /* NULL (trace_restores = 0) or the executed restores' traces */
  cf_weights_t *weights;           /* borrowed weights (NULL: the daemon has no own model to swap) */
};

static double cf__Bps(double gbps) { return gbps > 0 ? gbps * 1e9 / 8 : 0; }

/* ---------------------------------------------------------------- engines (loop thread) */
static cf__engine_out_t *cf__engine_out(cf_dataplane_t *dp, const cf_engine_t *e) {
  for (int i = 0; i < dp->n_engines; i++)
    if (dp->engines[i]->e == e) return dp->engines[i];
  return NULL;
}

static int cf__engine_added(void *ctx, cf_engine_t *e) {
  cf_dataplane_t *dp = ctx;
  int rc = dp->inner.engine_added ? dp->inner.engine_added(dp->inner.ctx, e) : 0;
  if (rc) return rc;
  cf__engine_out_t *p = calloc(1, sizeof *p);
  cf__engine_out_t **grown = realloc(dp->engines, (size_t)(dp->n_engines + 1) * sizeof *grown);
  if (grown) dp->engines = grown;
  if (!p || !grown) { rc = cf_seterr(CF_ENOMEM, "engine %llu: executor state", (unsigned long long)e->id); goto fail; }
  p->e = e;
  cf_storage_engine_kv(e, &p->kv, &p->gkv);
  if (!p->kv && !p->gkv) { rc = cf_seterr(CF_EINVAL, "engine %llu: its buffers are not mapped", (unsigned long long)e->id); goto fail; }
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
  if (p->gkv) { /* the engine's streams wait on gates the daemon's GPU writes in stream order */
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
      cf__engine_out_t *p = dp->engines[i];
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
  cf_restore_plan_free(&j->x.plan);
  free(j->tokens);
  free(j->blocks);
  free(j);
}

/* The PlanSummary of a planned restore: the planner's numbers and the readiness slot. */
static void cf__send_plan(cf__job_t *j) {
  const cf_restore_plan_t *p = &j->x.plan;
  Cacheflow__V1__PlanSummary ps = CACHEFLOW__V1__PLAN_SUMMARY__INIT;
  ps.policy = p->policy + 1; /* proto Policy = cf_policy_t + 1 (0 is "default") */
  ps.chunks = p->chunks;
  ps.cells_load_cpu = p->cells_load_cpu;
  ps.cells_load_ssd = p->cells_load_ssd;
  ps.cells_load_remote = p->cells_load_remote;
  ps.cells_skipped = p->cells_skip;
  ps.cells_compute = p->cells_compute;
  ps.predicted_us = p->predicted_us;
  ps.bound_us = p->bound_us;
  ps.readiness_slot = j->slot >= 0 ? (uint32_t)j->slot : UINT32_MAX;
  ps.present_tokens = (uint32_t)j->x.present_tokens;
  ps.present_chunks = p->present_chunks;
  ps.hole_chunks = p->hole_chunks;
  ps.restore_id = j->x.req_id; /* Admin.Trace's key */
  Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
  e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN;
  e.plan = &ps;
  cf_restore_event(j->r, &e);
}

static void cf__deliver(cf__ev_t *ev) {
  cf__job_t *j = ev->job;
  cf_restore_t *r = j->r;
  if (ev->kind == CF__EV_PLAN) { cf__send_plan(j); return; }
  if (ev->kind == CF__EV_LAYERS) {
    Cacheflow__V1__LayersReady lr = CACHEFLOW__V1__LAYERS_READY__INIT;
    lr.layers_ready = (uint32_t)ev->layers;
    Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
    e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS;
    e.layers = &lr;
    cf_restore_event(r, &e);
    return;
  }
  if (j->slot >= 0 && j->eo) j->eo->slot_used[j->slot] = 0;
  r->job = NULL;
  if (!r->engine->gone) { /* before the engine hears back, so its next Save sees the marks */
    const cf_store_geom_t *g = cf_store_geom(j->dp->store);
    cf_storage_restored(r->engine, g->fingerprint, (int)g->chunk_tokens, (int)g->n_layers, j->x.tokens, j->x.n_tokens,
                        j->x.blocks, j->x.n_blocks, j->x.present_tokens, j->x.plan.skip, !ev->err);
  }
  const char *broken = NULL;
  if (!ev->err && !r->engine->gone && cf_storage_engine_broken(r->engine, &broken)) {
    char why[700];
    snprintf(why, sizeof why, "engine KV buffer %s was truncated below its registered size during the restore "
             "(SIGBUS absorbed): the restored KV never reached the engine; register its buffers again", broken);
    cf_restore_done(r, CF_RPC_INVALID_ARGUMENT, NULL, why);
  } else if (!ev->err) {
    const cf_exec_stats_t *st = &ev->res.stats;
    double bound_s = j->x.plan.bound_us * 1e-6;
    Cacheflow__V1__RestoreStats s = CACHEFLOW__V1__RESTORE_STATS__INIT;
    s.cells_loaded_cpu = st->cells_loaded[CF_EXEC_TIER_CPU];
    s.cells_loaded_ssd = st->cells_loaded[CF_EXEC_TIER_SSD];
    s.cells_loaded_remote = st->cells_loaded[CF_EXEC_TIER_REMOTE];
    s.cells_computed = st->cells_computed;
    s.cells_recomputed_fallback = st->load_failures;
    s.time_us = ev->res.time_s * 1e6;
    s.predicted_us = j->x.plan.predicted_us;
    s.bound_us = j->x.plan.bound_us;
    s.ratio_to_bound = bound_s > 0 ? ev->res.time_s / bound_s : 0;
    s.restored_tokens = (uint32_t)j->x.n_tokens;
    cf_restore_done(r, CF_RPC_OK, &s, NULL);
  } else if (r->engine->gone) {
    char why[600];
    snprintf(why, sizeof why, "engine %llu was unregistered during the restore (%s)",
             (unsigned long long)r->engine->id, ev->detail);
    cf_restore_done(r, CF_RPC_ABORTED, NULL, why);
  } else {
    int st = ev->err == CF_ESHUTDOWN ? CF_RPC_UNAVAILABLE
           : ev->err == CF_ECANCELED ? CF_RPC_CANCELLED : cf_rpc_status_from_err(ev->err);
    cf_restore_done(r, st, NULL, ev->detail);
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
    int owned = ev->owned; /* a DONE event is the job's, freed with it by cf__deliver */
    cf__deliver(ev);
    if (owned) free(ev);
    ev = next;
  }
}

static void cf__on_async(uv_async_t *a) { cf__drain_events(a->data); }

/* Executor thread: the round is planned; the PlanSummary goes out before any progress. */
static void cf__job_on_plan(cf_executor_job_t *xj) {
  cf__ev_t *ev = &((cf__job_t *)xj)->ev_plan;
  ev->kind = CF__EV_PLAN;
  ev->job = (cf__job_t *)xj;
  cf__post(((cf__job_t *)xj)->dp, ev);
}

static void cf__job_on_layer(cf_executor_job_t *xj, int layers) {
  cf__ev_t *ev = calloc(1, sizeof *ev);
  if (!ev) return; /* progress is best effort; the final event is not */
  ev->kind = CF__EV_LAYERS;
  ev->owned = 1;
  ev->job = (cf__job_t *)xj;
  ev->layers = layers;
  cf__post(((cf__job_t *)xj)->dp, ev);
}

static void cf__job_on_done(cf_executor_job_t *xj, int err, const cf_executor_result_t *res) {
  cf__ev_t *ev = &((cf__job_t *)xj)->ev_done;
  ev->kind = CF__EV_DONE;
  ev->job = (cf__job_t *)xj;
  ev->err = err;
  if (res) ev->res = *res;
  if (err) snprintf(ev->detail, sizeof ev->detail, "%s: %s", cf_strerror(err), cf_errmsg());
  cf__post(((cf__job_t *)xj)->dp, ev);
}

/* Executor thread: the store lookup of a job's prefix by the keys the executor hashed (cf_storage's
 * answer, thread-safe). The restore's request stays untouched until the job ends. */
static int cf__job_lookup(void *ctx, cf_executor_job_t *xj, const cf_store_key_t *keys, size_t nk, int64_t *cached,
                          uint8_t *chunk_tiers) {
  cf_dataplane_t *dp = ctx;
  const cf__job_t *j = (const cf__job_t *)xj;
  uint32_t per[4] = {0, 0, 0, 0};
  int rc = cf_storage_lookup_keys(dp->store, keys, nk, j->r->req->n_token_ids, cf_store_geom(dp->store)->chunk_tokens, per,
                                  chunk_tiers);
  *cached = rc ? 0 : (int64_t)per[1] + per[2] + per[3];
  return rc;
}

/* ---------------------------------------------------------------- restores (loop thread) */
/* A free readiness slot of the engine, reset to 0 layers now, before the PlanSummary carrying
 * its number can reach the engine (a reused slot still says DONE); -1 when all are taken. */
static int cf__take_slot(cf__engine_out_t *eo, uint64_t req_id) {
  for (int s = 0; s < CF__READY_SLOTS; s++)
    if (!eo->slot_used[s]) {
      eo->slot_used[s] = 1;
      cf_ready_begin(&eo->ready, s, req_id);
      return s;
    }
  return -1;
}

static int32_t *cf__i32(const uint32_t *a, size_t n) {
  int32_t *o = malloc((n ? n : 1) * sizeof *o);
  if (o) for (size_t i = 0; i < n; i++) o[i] = (int32_t)a[i]; /* validated < vocab / num_blocks */
  return o;
}

/* A batch from the batcher: one executor job per restore (its tokens, blocks, engine buffers and
 * readiness slot); the executor looks them up, plans and runs them. */
static void cf__restore_batch(void *ctx, cf_restore_t **batch, int n) {
  cf_dataplane_t *dp = ctx;
  cf_executor_job_t **jobs = calloc((size_t)n, sizeof *jobs);
  int m = 0;
  for (int i = 0; i < n; i++) {
    cf_restore_t *r = batch[i];
    cf__job_t *j = calloc(1, sizeof *j);
    if (j) {
      j->r = r;
      j->dp = dp;
      j->eo = cf__engine_out(dp, r->engine);
      j->tokens = cf__i32(r->req->token_ids, r->req->n_token_ids);
      j->blocks = cf__i32(r->req->block_ids, r->req->n_block_ids);
    }
    if (!jobs || !j || !j->tokens || !j->blocks || !j->eo) {
      const char *why = j && !j->eo ? "engine has no executor state" : "out of memory";
      if (j) cf__job_free(j);
      cf_restore_done(r, CF_RPC_RESOURCE_EXHAUSTED, NULL, why);
      continue;
    }
    r->job = j;
    j->x.req_id = ++dp->next_req;
    j->slot = cf__take_slot(j->eo, j->x.req_id);
    j->x.tokens = j->tokens;
    j->x.n_tokens = (int)r->req->n_token_ids;
    j->x.blocks = j->blocks;
    j->x.n_blocks = (int)r->req->n_block_ids;
    j->x.present_tokens = (int)r->req->present_tokens; /* < n_token_ids: cf_service checked */
    j->x.kv = j->eo->kv;
    j->x.gkv = j->eo->gkv;
    j->x.ready = j->slot >= 0 ? &j->eo->ready : NULL;
    j->x.gready = j->slot >= 0 && j->eo->has_gready ? &j->eo->gready : NULL;
    j->x.ready_slot = j->slot;
    j->x.policy = r->policy;
    atomic_init(&j->x.cancel, r->engine->gone ? 1 : 0);
    j->x.on_plan = cf__job_on_plan;
    j->x.on_layer = cf__job_on_layer;
    j->x.on_done = cf__job_on_done;
    jobs[m++] = &j->x;
  }
  if (m) cf_executor_submit(dp->executor, jobs, m);
  free(jobs);
}

static void cf__restore_cancel(void *ctx, cf_restore_t *r) {
  (void)ctx;
  if (r->job) atomic_store(&r->job->x.cancel, 1);
}

/* cf_storage's hooks, called with its own ctx (the service hands every hook ours). */
static int cf__lookup(void *ctx, cf_engine_t *e, const uint32_t *t, size_t n, uint32_t per[4], uint8_t *tiers) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.lookup(dp->inner.ctx, e, t, n, per, tiers);
}
static int cf__save(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved, int *durable,
                   uint32_t *pending) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.save(dp->inner.ctx, e, req, saved, durable, pending);
}
static int cf__flush(void *ctx, uint64_t *ssd_chunks) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.flush(dp->inner.ctx, ssd_chunks);
}
static int cf__evict(void *ctx, int tier, uint64_t bytes, uint64_t *be, uint64_t *ce) {
  cf_dataplane_t *dp = ctx;
  return dp->inner.evict(dp->inner.ctx, tier, bytes, be, ce);
}
static void cf__usage(void *ctx, uint64_t *cpu, uint64_t *ssd) {
  cf_dataplane_t *dp = ctx;
  dp->inner.usage(dp->inner.ctx, cpu, ssd);
}
static void cf__memory(void *ctx, cf_service_memory_t *m) {
  cf_dataplane_t *dp = ctx;
  memset(m, 0, sizeof *m);
  if (dp->inner.memory) dp->inner.memory(dp->inner.ctx, m); /* the device side, if any */
  if (dp->host_pool) {
    cf_mempool_stats_t st;
    cf_mempool_stats(dp->host_pool, &st);
    m->host_budget = st.budget;
    m->host_used = st.used;
    m->host_peak = st.peak;
    m->host_refusals = st.refusals;
  }
  if (dp->gpu && dp->gpu->dpool) { /* the device: the backend's own bytes + the restore arena's use */
    cf_mempool_stats_t st;
    cf_mempool_stats(dp->gpu->dpool, &st);
    size_t held = cf_backend_cuda_device_bytes(dp->be);
    m->gpu_budget = (uint64_t)dp->cfg->gpu_memory_bytes;
    m->gpu_used = held + st.used;
    m->gpu_peak = held + st.peak;
  }
  m->mem_waits = cf_executor_mem_waits(dp->executor);
  if (dp->weights) cf_weights_stats(dp->weights, &m->weights);
}

static int cf__weights_borrow(void *ctx, const Cacheflow__V1__OfferWeightsRequest *r, cf_weights_report_t *rep) {
  return cf_weights_borrow(((cf_dataplane_t *)ctx)->weights, r, rep);
}
static int cf__weights_give_back(void *ctx) { return cf_weights_give_back(((cf_dataplane_t *)ctx)->weights); }

/* ---------------------------------------------------------------- life cycle */
int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                      cf_store_t *store, cf_planner_t *planner, cf_service_backend_t *hooks, cf_exec_gpu_t *gpu,
                      cf_model_t *own) {
  *out = NULL;
  cf_dataplane_t *dp = calloc(1, sizeof *dp);
  if (!dp) return cf_seterr(CF_ENOMEM, "executor");
  dp->cfg = cfg;
  dp->be = be;
  dp->store = store;
  dp->inner = *hooks;
  dp->gpu = gpu;
  int rc = 0;
  if (cfg->trace_restores > 0 && cf_trace_init(&dp->trace, (int)cfg->trace_restores, (int)cfg->trace_ops)) {
    free(dp);
    return CF_ENOMEM;
  }
  if (cfg->host_memory_bytes > 0 && (rc = cf_mempool_create("host", (size_t)cfg->host_memory_bytes, &dp->host_pool))) {
    cf_trace_free(dp->trace);
    free(dp);
    return cf_err_prefix(rc, "host_memory_bytes = %lld: ", (long long)cfg->host_memory_bytes);
  }
  /* the executor computes on this thread's backend (fp32) and writes host memory in the store's KV dtype */
  cf_executor_opts_t xo = {.be = be, .store = store, .n_loaders = 2, .batch_max = (int)cfg->batch_max,
                           .cpu_Bps = cf__Bps(cfg->cpu_read_gbps), .ssd_Bps = cf__Bps(cfg->ssd_read_gbps),
                           .remote_Bps = cf__Bps(cfg->remote_read_gbps),
                           .gpu = gpu, .planner = planner, .lookup = dp->inner.lookup ? cf__job_lookup : NULL,
                           .lookup_ctx = dp, .host_pool = dp->host_pool, .trace = dp->trace};
  rc = cf_executor_start(&dp->executor, &xo);
  if (!rc && own && (rc = cf_weights_init(&dp->weights, own, be, dp->executor))) cf_executor_stop(dp->executor);
  if (rc) { cf_mempool_destroy(dp->host_pool); cf_trace_free(dp->trace); free(dp); return rc; }
  if (dp->host_pool)
    CF_INFO("host_memory_bytes: %lld bytes reserved for restore working memory", (long long)cfg->host_memory_bytes);
  pthread_mutex_init(&dp->mu, NULL);
  uv_async_init(loop, &dp->async, cf__on_async);
  dp->async.data = dp;
  /* lookup, save, evict, usage stay cf_storage's, forwarded with its own ctx */
  *hooks = (cf_service_backend_t){.ctx = dp, .kv_dtype = dp->inner.kv_dtype, .has_ssd = dp->inner.has_ssd, .engine_added = cf__engine_added, .engine_removed = cf__engine_removed,
                                  .restore_batch = cf__restore_batch, .restore_cancel = cf__restore_cancel,
                                  .lookup = dp->inner.lookup ? cf__lookup : NULL,
                                  .save = dp->inner.save ? cf__save : NULL,
                                  .evict = dp->inner.evict ? cf__evict : NULL,
                                  .flush = dp->inner.flush ? cf__flush : NULL,
                                  .usage = dp->inner.usage ? cf__usage : NULL,
                                  .remote = dp->inner.remote, .memory = cf__memory, .trace = dp->trace,
                                  .weights_borrow = dp->weights ? cf__weights_borrow : NULL,
                                  .weights_give_back = dp->weights ? cf__weights_give_back : NULL};
  *out = dp;
  return 0;
}

void cf_dataplane_reload(cf_dataplane_t *dp) {
  if (dp)
    cf_executor_set_rates(dp->executor, cf__Bps(dp->cfg->cpu_read_gbps), cf__Bps(dp->cfg->ssd_read_gbps),
                          cf__Bps(dp->cfg->remote_read_gbps));
}

void cf_dataplane_quiesce(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_executor_quiesce(dp->executor);
  cf__drain_events(dp);
}

static void cf__async_closed(uv_handle_t *h) {
  cf_dataplane_t *dp = h->data;
  pthread_mutex_destroy(&dp->mu);
  free(dp->engines);
  cf_mempool_destroy(dp->host_pool); /* the executor stopped: nothing holds it */
  cf_trace_free(dp->trace); /* the executor has stopped: nobody records any more */
  free(dp);
}

void cf_dataplane_close(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_executor_stop(dp->executor);
  cf_weights_close(dp->weights); /* the executor stopped: the views go, the own copy is not reloaded */
  cf__drain_events(dp);
  uv_close((uv_handle_t *)&dp->async, cf__async_closed);
}
