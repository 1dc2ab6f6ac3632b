/* cf_service — engine table, request checks that need state, Save worker, health, Admin. */
#include "cf_service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cf_pidwatch.h"
#include "cf_reqcheck.h"
#include "cf_trace.h"
#include "cf_worker.h"
#include "gpu/cf_gpu.h"
#include "grpc/health/v1/health.pb-c.h"
#include "store/cf_remote.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

/* The daemon builds its store and data path only with a model: without one, that is the cause. */
#define CF__NO_MODEL(what) what " needs a model and its KV store: this cacheflowd runs without a model " \
                           "(set `model` or start it with --model DIR)"

typedef struct cf__watch_s {
  cf_rpc_call_t *call;
  struct cf__watch_s *next;
} cf__watch_t;

struct cf_service_s {
  uv_loop_t *loop;                 /* Lookup's thread-pool work answers here (with a remote tier) */
  const cf_config_t *cfg;
  const cf_model_info_t *model;
  cf_service_backend_t be;
  cf_rpc_server_t *rpc;
  cf_engine_t **engines;           /* [max_engines], NULL = free slot */
  int max_engines;
  uint64_t next_id;
  cf_batcher_t *batcher;            /* valid restores go there */
  cf_worker_t *saver;               /* Save's copies, off the loop (NULL without a save hook) */
  cf_worker_t *weigher;             /* borrowed weights' map/check/swap and give-back (NULL without the hooks) */
  struct cf__lease_s *lease;        /* the engine whose weights are borrowed (or being offered / given back) */
  cf_planner_t *planner;            /* borrowed: its re-fit's state for GetStats */
  cf__watch_t *watchers;
  int draining;
  /* counters read by other threads */
  uint32_t n_engines;
  uint64_t engines_died;
  double t_start;
};

static double cf__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void cf__lease_engine_gone(cf_service_t *s, cf_engine_t *e);

/* ---------------------------------------------------------------- engines */
/* The engine's memory (engine_removed, when it was added, has run before). */
static void cf__engine_free(cf_engine_t *e) {
  for (int l = 0; l < e->n_layers; l++) { free(e->layers[l].k.shm_path); free(e->layers[l].v.shm_path); }
  free(e->layers);
  free(e);
}

static void cf__engine_unref(cf_service_t *s, cf_engine_t *e) {
  if (--e->refs) return;
  if (s->be.engine_removed) s->be.engine_removed(s->be.ctx, e);
  cf__engine_free(e);
}

/* The batcher frees a restore: its engine reference goes. */
static void cf__restore_release(void *arg, cf_restore_t *r) { cf__engine_unref(arg, r->engine); }

static cf_engine_t *cf__engine_find(cf_service_t *s, uint64_t id) {
  if (!id) return NULL;
  for (int i = 0; i < s->max_engines; i++)
    if (s->engines[i] && s->engines[i]->id == id) return s->engines[i];
  return NULL;
}

/* Take the engine in `slot` out of the table: its restores waiting are aborted, those running
 * cancelled, its pid no longer watched; its memory goes with its last reference. */
static void cf__engine_drop(cf_service_t *s, int slot) {
  cf_engine_t *e = s->engines[slot];
  s->engines[slot] = NULL;
  __atomic_fetch_sub(&s->n_engines, 1, __ATOMIC_RELAXED);
  e->gone = 1;
  cf_pidwatch_stop(e->watch);
  e->watch = NULL;
  cf_batcher_cancel_engine(s->batcher, e, e->id);
  cf__lease_engine_gone(s, e); /* its borrowed weights, if it lent them, go back first */
  cf__engine_unref(s, e);
}

/* The engine's process exited while registered (killed, crashed): nobody will Unregister it. */
static void cf__engine_died(cf_pidwatch_t *w, void *arg) {
  cf_service_t *s = arg;
  for (int i = 0; i < s->max_engines; i++) {
    cf_engine_t *e = s->engines[i];
    if (!e || e->watch != w) continue;
    CF_WARN("engine id=%llu name=\"%s\": its process %d exited without Unregister; unregistered", (unsigned long long)e->id,
            e->name, e->pid);
    __atomic_fetch_add(&s->engines_died, 1, __ATOMIC_RELAXED);
    cf__engine_drop(s, i); /* stops w */
    return;
  }
  cf_pidwatch_stop(w); /* not reached: a dropped engine's watch is stopped (no callback after) */
}

/* Watch e->pid when the call came over the unix socket (a pid from another host means nothing
 * here). 0, or a status for the call with `why` filled. */
static int cf__engine_watch(cf_service_t *s, cf_rpc_call_t *c, cf_engine_t *e, char *why, size_t cap) {
  if (!e->pid) return 0;
  if (!cf_rpc_call_is_local(c)) {
    CF_INFO("engine \"%s\" states pid %d over TCP: not watched (a remote process)", e->name, e->pid);
    e->pid = 0;
    return 0;
  }
  int rc = cf_pidwatch_start(&e->watch, s->loop, e->pid, 0, cf__engine_died, s);
  if (rc) {
    snprintf(why, cap, "pid %d (the engine's process, RegisterEngineRequest.pid; 0 = not watched): %s", e->pid, cf_errmsg());
    return rc == CF_ENOTFOUND ? CF_RPC_FAILED_PRECONDITION : cf_rpc_status_from_err(rc);
  }
  return 0;
}

/* Field checks of RegisterEngine that need only the config (cf_reqcheck: the wire fuzzer runs them too). */
static int cf__v_register(const ProtobufCMessage *m, void *user, char *why, size_t cap) {
  const cf_service_t *s = user;
  return cf_reqcheck_register_fields(s->cfg, (const Cacheflow__V1__RegisterEngineRequest *)m, why, cap);
}

static void cf__copy_kvbuf(cf_kvbuf_t *d, const Cacheflow__V1__KvBuffer *b) {
  d->offset = b->offset;
  if (b->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH) d->shm_path = strdup(b->shm_path);
  else {
    memcpy(d->ipc_handle, b->cuda_ipc->ipc_handle.data, 64);
    snprintf(d->gpu_uuid, sizeof d->gpu_uuid, "%s", b->cuda_ipc->gpu_uuid);
  }
}

static void cf__h_register(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__RegisterEngineRequest *r = (void *)m;
  char why[512];
  cf_engine_t *e = NULL;
  int heads = 0;
  int st = cf_reqcheck_register_model(s->cfg, s->model, s->be.kv_dtype, r, &heads, why, sizeof why);
  if (st) { cf_rpc_finish(c, st, "%s", why); goto out; }
  int slot = -1;
  for (int i = 0; i < s->max_engines && slot < 0; i++)
    if (!s->engines[i]) slot = i;
  if (slot < 0) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "%d engines registered already (max_engines)", s->max_engines); goto out; }
  e = calloc(1, sizeof *e);
  if (e) e->layers = calloc(r->n_layers, sizeof *e->layers);
  if (!e || !e->layers) { free(e); e = NULL; cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); goto out; }
  e->refs = 1;
  e->n_layers = (int)r->n_layers;
  e->block_size = r->layers[0]->block_size;
  e->num_blocks = r->layers[0]->num_blocks;
  e->dtype = r->layers[0]->dtype;
  e->dtype_size = cf_reqcheck_dtype_size(e->dtype);
  e->head0 = (int)r->kv_head_start;
  e->n_heads = heads;
  e->tp_group = r->tp_group;
  e->pid = (int)r->pid;
  snprintf(e->name, sizeof e->name, "%s", r->name);
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    cf_layer_layout_t *d = &e->layers[L->layer];
    cf__copy_kvbuf(&d->k, L->k);
    cf__copy_kvbuf(&d->v, L->v);
    d->block_stride = L->block_stride;
    d->token_stride = L->token_stride;
    d->head_stride = L->head_stride;
    d->dim_stride = L->dim_stride;
    if (L->v_strides)
      d->vs = (cf_kv_strides_t){L->v_strides->block_stride, L->v_strides->token_stride, L->v_strides->head_stride,
                                L->v_strides->dim_stride};
  }
  /* Ids never repeat within a run, and a restart changes the high bits, so a stale id from
   * an earlier daemon is NOT_FOUND rather than someone else's engine. */
  e->id = ++s->next_id;
  if ((st = cf__engine_watch(s, c, e, why, sizeof why))) {
    cf_rpc_finish(c, st, "%s", why);
    cf__engine_free(e); /* engine_removed must not run for an engine never added */
    goto out;
  }
  if (s->be.engine_added) {
    int rc = s->be.engine_added(s->be.ctx, e);
    if (rc) {
      cf_rpc_finish(c, cf_rpc_status_from_err(rc), "%s: %s", cf_strerror(rc), cf_errmsg());
      cf_pidwatch_stop(e->watch);
      cf__engine_free(e); /* engine_removed must not run for an engine never added */
      goto out;
    }
  }
  s->engines[slot] = e;
  __atomic_fetch_add(&s->n_engines, 1, __ATOMIC_RELAXED);
  CF_INFO("engine registered: id=%llu name=\"%s\" layers=%d block_size=%u num_blocks=%u", (unsigned long long)e->id,
          e->name, e->n_layers, e->block_size, e->num_blocks);
  Cacheflow__V1__RegisterEngineResponse resp = CACHEFLOW__V1__REGISTER_ENGINE_RESPONSE__INIT;
  resp.engine_id = e->id;
  resp.daemon_fingerprint.data = (uint8_t *)s->model->fingerprint;
  resp.daemon_fingerprint.len = 16;
  resp.readiness_shm_path = e->readiness_path; /* set by the backend's engine_added ("" without one) */
  resp.readiness_slots = e->readiness_slots;
  cf_rpc_reply(c, &resp.base);
out:
  protobuf_c_message_free_unpacked(m, NULL);
}

static void cf__h_unregister(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__UnregisterRequest *r = (void *)m;
  int slot = -1;
  for (int i = 0; i < s->max_engines; i++)
    if (s->engines[i] && s->engines[i]->id == r->engine_id) slot = i;
  if (slot < 0) {
    cf_rpc_finish(c, CF_RPC_NOT_FOUND, "engine_id %llu is not registered", (unsigned long long)r->engine_id);
  } else {
    CF_INFO("engine unregistered: id=%llu", (unsigned long long)s->engines[slot]->id);
    cf__engine_drop(s, slot);
    Cacheflow__V1__UnregisterResponse resp = CACHEFLOW__V1__UNREGISTER_RESPONSE__INIT;
    cf_rpc_reply(c, &resp.base);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---------------------------------------------------------------- token / block checks */
static int cf__check_tokens(const cf_service_t *s, const uint32_t *t, size_t n, char *why, size_t cap) {
  return cf_reqcheck_tokens(s->cfg, s->model, t, n, why, cap);
}

static int cf__check_blocks(const cf_engine_t *e, size_t ntok, const uint32_t *b, size_t nb, char *why, size_t cap) {
  return cf_reqcheck_blocks(e->block_size, e->num_blocks, ntok, b, nb, why, cap);
}

/* Common front half of Lookup/Save/Restore: the engine exists, the tokens are in range. */
static cf_engine_t *cf__engine_and_tokens(cf_service_t *s, cf_rpc_call_t *c, uint64_t id, const uint32_t *t, size_t n) {
  char why[512];
  cf_engine_t *e = cf__engine_find(s, id);
  if (!e) { cf_rpc_finish(c, CF_RPC_NOT_FOUND, "engine_id %llu is not registered", (unsigned long long)id); return NULL; }
  if (cf__check_tokens(s, t, n, why, sizeof why)) { cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why); return NULL; }
  return e;
}

/* Lookup's answer from the per-tier token counts of the leading run, and (chunk_tiers: every
 * chunk's tier, C tokens each, of a prompt of n tokens) the runs over all of it. */
static void cf__lookup_reply(cf_rpc_call_t *c, const uint32_t per[4], const uint8_t *chunk_tiers, size_t n,
                             size_t C) {
  Cacheflow__V1__LookupResponse resp = CACHEFLOW__V1__LOOKUP_RESPONSE__INIT;
  Cacheflow__V1__TierTokens tt[3], *tp[3];
  size_t nk = C ? (n + C - 1) / C : 0, nr = 0;
  Cacheflow__V1__TierTokens *rt = chunk_tiers ? malloc((nk ? nk : 1) * sizeof *rt) : NULL;
  Cacheflow__V1__TierTokens **rp = chunk_tiers ? malloc((nk ? nk : 1) * sizeof *rp) : NULL;
  if (!rt || !rp) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "lookup: out of memory"); free(rt); free(rp); return; }
  for (size_t i = 0; i < nk; i++) { /* runs of one tier (0: none) */
    uint32_t nt = (uint32_t)(n - i * C < C ? n - i * C : C);
    if (chunk_tiers[i] != CF_STORE_TIER_NONE) resp.stored_tokens += nt;
    if (nr && (int)rt[nr - 1].tier == (int)chunk_tiers[i]) { rt[nr - 1].tokens += nt; continue; }
    cacheflow__v1__tier_tokens__init(&rt[nr]);
    rt[nr].tier = (Cacheflow__V1__Tier)chunk_tiers[i];
    rt[nr].tokens = nt;
    rp[nr] = &rt[nr];
    nr++;
  }
  resp.n_runs = nr;
  resp.runs = rp;
  /* CPU and SSD always; REMOTE only when it holds some of the prefix (no remote tier: never) */
  int nt = per[CACHEFLOW__V1__TIER__TIER_REMOTE] ? 3 : 2;
  for (int i = 0; i < nt; i++) {
    int tier = CACHEFLOW__V1__TIER__TIER_CPU + i;
    cacheflow__v1__tier_tokens__init(&tt[i]);
    tt[i].tier = tier;
    tt[i].tokens = per[tier];
    tp[i] = &tt[i];
  }
  resp.cached_tokens = per[1] + per[2] + per[3];
  resp.n_per_tier = (size_t)nt;
  resp.per_tier = tp;
  cf_rpc_reply(c, &resp.base);
  free(rt);
  free(rp);
}

/* With a remote tier a lookup may wait on the network (remote_timeout_ms at worst): it runs on
 * libuv's thread pool and answers back on the loop, so the loop never blocks on Redis. */
typedef struct {
  uv_work_t work;
  cf_service_t *s;
  cf_rpc_call_t *call;
  cf_engine_t *e;
  Cacheflow__V1__LookupRequest *req;
  uint32_t per[4];
  uint8_t *tiers; /* every chunk's tier */
  size_t n_tokens;
  int rc;
  char err[512];
} cf__lookup_job_t;

/* Every chunk's tier of a Lookup's tokens (NULL when out of memory: the lookup fails). */
static uint8_t *cf__lookup_tiers(const cf_service_t *s, size_t n) {
  size_t C = (size_t)s->cfg->chunk_tokens;
  return calloc(C ? (n + C - 1) / C + 1 : 1, 1);
}

static void cf__lookup_work(uv_work_t *w) {
  cf__lookup_job_t *j = w->data;
  j->rc = j->tiers ? j->s->be.lookup(j->s->be.ctx, j->e, j->req->token_ids, j->req->n_token_ids, j->per, j->tiers)
                   : cf_seterr(CF_ENOMEM, "lookup of %zu tokens", j->req->n_token_ids);
  if (j->rc) snprintf(j->err, sizeof j->err, "%s", cf_errmsg());
}

static void cf__lookup_done(uv_work_t *w, int status) {
  cf__lookup_job_t *j = w->data;
  /* the engine and request first: ending the call may be what lets the daemon close the service */
  cf__engine_unref(j->s, j->e);
  protobuf_c_message_free_unpacked(&j->req->base, NULL);
  if (status) cf_rpc_finish(j->call, CF_RPC_UNAVAILABLE, "lookup: cancelled");
  else if (j->rc) cf_rpc_finish(j->call, cf_rpc_status_from_err(j->rc), "lookup: %s", j->err);
  else cf__lookup_reply(j->call, j->per, j->tiers, j->n_tokens, (size_t)j->s->cfg->chunk_tokens);
  free(j->tiers);
  free(j);
}

static void cf__h_lookup(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__LookupRequest *r = (void *)m;
  cf_engine_t *e = cf__engine_and_tokens(s, c, r->engine_id, r->token_ids, r->n_token_ids);
  if (!e) goto out;
  if (!s->be.lookup) { cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, CF__NO_MODEL("Lookup")); goto out; }
  if (s->be.remote) {
    cf__lookup_job_t *j = calloc(1, sizeof *j);
    if (!j) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); goto out; }
    *j = (cf__lookup_job_t){.s = s, .call = c, .e = e, .req = r, .tiers = cf__lookup_tiers(s, r->n_token_ids),
                            .n_tokens = r->n_token_ids};
    j->work.data = j;
    e->refs++;
    if (uv_queue_work(s->loop, &j->work, cf__lookup_work, cf__lookup_done) == 0) return; /* j owns m now */
    e->refs--;
    free(j->tiers);
    free(j);
    cf_rpc_finish(c, CF_RPC_UNAVAILABLE, "lookup: cannot queue the remote lookup");
    goto out;
  }
  uint32_t per[4] = {0, 0, 0, 0};
  uint8_t *tiers = cf__lookup_tiers(s, r->n_token_ids);
  int rc = tiers ? s->be.lookup(s->be.ctx, e, r->token_ids, r->n_token_ids, per, tiers)
                 : cf_seterr(CF_ENOMEM, "lookup of %zu tokens", r->n_token_ids);
  if (rc) cf_rpc_finish(c, cf_rpc_status_from_err(rc), "lookup: %s", cf_errmsg());
  else cf__lookup_reply(c, per, tiers, r->n_token_ids, (size_t)s->cfg->chunk_tokens);
  free(tiers);
out:
  protobuf_c_message_free_unpacked(m, NULL);
}

/* A Save on its way: checked on the loop, copied on the save worker (the copy reads the
 * engine's blocks and may wait for SSD writes), answered on the loop. The engine stays
 * referenced meanwhile, so an Unregister never unmaps the blocks being copied. */
typedef struct {
  cf_worker_job_t w;                /* first: the worker's callbacks get a cf_worker_job_t * */
  cf_service_t *s;
  cf_rpc_call_t *call;
  cf_engine_t *e;
  Cacheflow__V1__SaveRequest *req;
  int rc, durable;
  uint32_t saved, pending;          /* pending: a TP shard's tokens waiting for its group's other heads */
  char detail[512];                 /* cf_errmsg is per thread: copied on the worker */
} cf__save_t;

static void cf__save_run(cf_worker_job_t *w) {
  cf__save_t *sv = (cf__save_t *)w;
  sv->rc = sv->s->be.save(sv->s->be.ctx, sv->e, sv->req, &sv->saved, &sv->durable, &sv->pending);
  if (sv->rc) snprintf(sv->detail, sizeof sv->detail, "%s", cf_errmsg());
}

static void cf__save_done(cf_worker_job_t *w) {
  cf__save_t *sv = (cf__save_t *)w;
  if (sv->rc) {
    cf_rpc_finish(sv->call, cf_rpc_status_from_err(sv->rc), "save: %s", sv->detail);
  } else {
    Cacheflow__V1__SaveResponse resp = CACHEFLOW__V1__SAVE_RESPONSE__INIT;
    resp.saved_tokens = sv->saved;
    resp.durable = sv->durable;
    resp.pending_tokens = sv->pending;
    cf_rpc_reply(sv->call, &resp.base);
  }
  protobuf_c_message_free_unpacked(&sv->req->base, NULL);
  cf__engine_unref(sv->s, sv->e);
  free(sv);
}

static void cf__h_save(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__SaveRequest *r = (void *)m;
  char why[512];
  cf_engine_t *e = cf__engine_and_tokens(s, c, r->engine_id, r->token_ids, r->n_token_ids);
  if (!e) goto out;
  if (cf__check_blocks(e, r->n_token_ids, r->block_ids, r->n_block_ids, why, sizeof why)) { cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why); goto out; }
  if (!s->be.save || !s->saver) { cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, CF__NO_MODEL("Save")); goto out; }
  if (r->durable && !s->be.has_ssd) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "durable save needs an SSD tier (store_dir with ssd_tier_bytes > 0); "
                  "this daemon keeps KV in its CPU tier only");
    goto out;
  }
  cf__save_t *sv = calloc(1, sizeof *sv);
  if (!sv) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); goto out; }
  *sv = (cf__save_t){.w = {.run = cf__save_run, .done = cf__save_done}, .s = s, .call = c, .e = e, .req = r};
  e->refs++;
  cf_worker_submit(s->saver, &sv->w);
  return; /* the request is the save's now */
out:
  protobuf_c_message_free_unpacked(m, NULL);
}


/* ---------------------------------------------------------------- borrowed weights (OfferWeights)
 * A lease: the OfferWeights stream of one engine. OFFERING (the weights worker maps and checks
 * them, swaps the executor) -> HELD (the first event sent; the call stays open) -> RETURNING
 * (the worker reloads the own copy and swaps back) when the client closes the call (cancel, or
 * its process died: the connection closed), the engine unregisters, or the daemon shuts down;
 * then the call ends and the lease goes. */
enum { CF__L_OFFERING, CF__L_HELD, CF__L_RETURNING };
typedef struct cf__lease_s {
  cf_worker_job_t w;
  cf_service_t *s;
  cf_rpc_call_t *call;
  cf_engine_t *engine;              /* referenced while the lease lives */
  Cacheflow__V1__OfferWeightsRequest *req; /* freed once checked */
  int state, closed, unregistered, ended, rc;
  cf_weights_report_t rep;
  char why[512];
} cf__lease_t;

static void cf__lease_free(cf__lease_t *l) {
  cf_service_t *s = l->s;
  if (s->lease == l) s->lease = NULL;
  if (l->req) protobuf_c_message_free_unpacked(&l->req->base, NULL);
  cf__engine_unref(s, l->engine);
  free(l);
}

static void cf__lease_end(cf__lease_t *l, int status, const char *msg) {
  if (!l->ended) cf_rpc_finish(l->call, status, "%s", msg);
  l->ended = 1;
}

static void cf__give_back_run(cf_worker_job_t *w) {
  cf__lease_t *l = (cf__lease_t *)w;
  l->rc = l->s->be.weights_give_back(l->s->be.ctx);
  if (l->rc) snprintf(l->why, sizeof l->why, "%s: %s", cf_strerror(l->rc), cf_errmsg());
}

static void cf__give_back_done(cf_worker_job_t *w) {
  cf__lease_t *l = (cf__lease_t *)w;
  if (l->rc) CF_ERROR("borrowed weights of engine %llu: giving them back failed: %s", (unsigned long long)l->engine->id, l->why);
  else CF_INFO("borrowed weights of engine %llu given back (%s)", (unsigned long long)l->engine->id,
               l->closed ? "the engine closed the call or went away" : l->unregistered ? "the engine unregistered" : "shutdown");
  if (l->rc) cf__lease_end(l, CF_RPC_INTERNAL, "reloading the daemon's own weights failed (the engine's stay in use)");
  else cf__lease_end(l, l->closed ? CF_RPC_CANCELLED : CF_RPC_OK,
                     l->unregistered ? "the engine unregistered: the daemon computes on its own weights again"
                                     : "the daemon computes on its own weights again");
  cf__lease_free(l);
}

static void cf__lease_return(cf__lease_t *l) {
  if (l->state != CF__L_HELD) return;
  l->state = CF__L_RETURNING;
  l->w = (cf_worker_job_t){.run = cf__give_back_run, .done = cf__give_back_done};
  cf_worker_submit(l->s->weigher, &l->w);
}

static void cf__lease_closed(cf_rpc_call_t *c, void *arg) {
  (void)c;
  cf__lease_t *l = arg;
  l->closed = 1;
  cf__lease_return(l); /* OFFERING: the borrow's done sees closed */
}

static void cf__lease_engine_gone(cf_service_t *s, cf_engine_t *e) {
  cf__lease_t *l = s->lease;
  if (!l || l->engine != e) return;
  l->unregistered = 1;
  cf__lease_return(l);
}

static void cf__borrow_run(cf_worker_job_t *w) {
  cf__lease_t *l = (cf__lease_t *)w;
  l->rc = l->s->be.weights_borrow(l->s->be.ctx, l->req, &l->rep);
  if (l->rc) snprintf(l->why, sizeof l->why, "%s", cf_errmsg());
}

static void cf__borrow_done(cf_worker_job_t *w) {
  cf__lease_t *l = (cf__lease_t *)w;
  protobuf_c_message_free_unpacked(&l->req->base, NULL);
  l->req = NULL;
  if (l->rc) {
    CF_WARN("OfferWeights of engine %llu refused: %s: %s (the daemon keeps its own weights)",
            (unsigned long long)l->engine->id, cf_strerror(l->rc), l->why);
    int st = l->rc == CF_EBUSY ? CF_RPC_ALREADY_EXISTS : l->rc == CF_EMISMATCH || l->rc == CF_EUNSUPPORTED
                                                             ? CF_RPC_FAILED_PRECONDITION : cf_rpc_status_from_err(l->rc);
    cf__lease_end(l, st, l->why);
    cf__lease_free(l);
    return;
  }
  l->state = CF__L_HELD;
  if (l->closed || l->unregistered || l->s->draining) { cf__lease_return(l); return; }
  Cacheflow__V1__OfferWeightsEvent ev = CACHEFLOW__V1__OFFER_WEIGHTS_EVENT__INIT;
  ev.borrowed = 1;
  ev.weights_checked = l->rep.weights_checked;
  ev.tensors_used = l->rep.tensors_used;
  ev.elements_checked = l->rep.elements_checked;
  ev.bytes_borrowed = l->rep.bytes_borrowed;
  ev.own_bytes_released = l->rep.own_bytes_released;
  cf_rpc_send(l->call, &ev.base);
}

static int cf__v_offer(const ProtobufCMessage *m, void *user, char *why, size_t cap) {
  (void)user;
  return cf_reqcheck_offer_fields((const Cacheflow__V1__OfferWeightsRequest *)m, why, cap);
}

static void cf__h_offer(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__OfferWeightsRequest *r = (void *)m;
  char why[512];
  cf_engine_t *e = cf__engine_find(s, r->engine_id);
  int st;
  if (!s->weigher) st = CF_RPC_FAILED_PRECONDITION, snprintf(why, sizeof why, "%s", CF__NO_MODEL("OfferWeights"));
  else if (!e) st = CF_RPC_NOT_FOUND, snprintf(why, sizeof why, "engine_id %llu is not registered", (unsigned long long)r->engine_id);
  else if (s->lease)
    st = CF_RPC_ALREADY_EXISTS, snprintf(why, sizeof why, "the daemon already borrows the weights of engine %llu (\"%s\"); "
                                         "one engine's at a time", (unsigned long long)s->lease->engine->id, s->lease->engine->name);
  else st = cf_reqcheck_offer_model(s->model, r, why, sizeof why);
  cf__lease_t *l = st ? NULL : calloc(1, sizeof *l);
  if (!st && !l) st = CF_RPC_RESOURCE_EXHAUSTED, snprintf(why, sizeof why, "out of memory");
  if (st) { cf_rpc_finish(c, st, "%s", why); protobuf_c_message_free_unpacked(m, NULL); return; }
  *l = (cf__lease_t){.w = {.run = cf__borrow_run, .done = cf__borrow_done}, .s = s, .call = c, .engine = e, .req = r};
  e->refs++;
  s->lease = l;
  cf_rpc_on_close(c, cf__lease_closed, l);
  cf_worker_submit(s->weigher, &l->w);
}

/* ---------------------------------------------------------------- restore (then cf_batcher) */
static int cf__v_restore(const ProtobufCMessage *m, void *user, char *why, size_t cap) {
  return cf_reqcheck_restore_fields((const Cacheflow__V1__RestoreRequest *)m, why, cap);
}

static void cf__h_restore(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__RestoreRequest *r = (void *)m;
  char why[512];
  cf_engine_t *e = cf__engine_and_tokens(s, c, r->engine_id, r->token_ids, r->n_token_ids);
  if (!e) { protobuf_c_message_free_unpacked(m, NULL); return; }
  if (cf__check_blocks(e, r->n_token_ids, r->block_ids, r->n_block_ids, why, sizeof why)) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why);
    protobuf_c_message_free_unpacked(m, NULL);
    return;
  }
  cf_restore_t *rs = calloc(1, sizeof *rs);
  if (!rs) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); protobuf_c_message_free_unpacked(m, NULL); return; }
  rs->call = c;
  rs->engine = e;
  e->refs++;
  rs->req = r;
  rs->policy = r->policy ? (int)r->policy - 1 : s->cfg->policy;
  rs->arrival_ns = uv_hrtime();
  cf_batcher_add(s->batcher, rs);
}

/* ---------------------------------------------------------------- health */
static int cf__health_status(const cf_service_t *s) {
  return s->draining ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static int cf__known_service(const char *name) {
  return !*name || !strcmp(name, "cacheflow.v1.CacheFlow") || !strcmp(name, "cacheflow.v1.Admin") ||
         !strcmp(name, "grpc.health.v1.Health");
}

static void cf__h_health_check(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Grpc__Health__V1__HealthCheckRequest *r = (void *)m;
  if (!cf__known_service(r->service)) {
    cf_rpc_finish(c, CF_RPC_NOT_FOUND, "unknown service '%.100s'", r->service);
  } else {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = cf__health_status(s);
    cf_rpc_reply(c, &resp.base);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

static void cf__watch_send(cf_rpc_call_t *c, int status) {
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = status;
  cf_rpc_send(c, &resp.base);
}

static void cf__watch_closed(cf_rpc_call_t *c, void *arg) {
  cf_service_t *s = arg;
  for (cf__watch_t **p = &s->watchers; *p; p = &(*p)->next)
    if ((*p)->call == c) {
      cf__watch_t *w = *p;
      *p = w->next;
      free(w);
      break;
    }
  cf_rpc_finish(c, CF_RPC_CANCELLED, "%s", "client closed the watch");
}

static void cf__h_health_watch(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Grpc__Health__V1__HealthCheckRequest *r = (void *)m;
  int known = cf__known_service(r->service);
  protobuf_c_message_free_unpacked(m, NULL);
  cf__watch_t *w = calloc(1, sizeof *w);
  if (!w) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); return; }
  cf__watch_send(c, known ? cf__health_status(s) : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN);
  w->call = c;
  w->next = s->watchers;
  s->watchers = w;
  cf_rpc_on_close(c, cf__watch_closed, s);
}

/* ---------------------------------------------------------------- admin */
static void cf__h_stats(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  protobuf_c_message_free_unpacked(m, NULL);
  cf_service_stats_t st;
  cf_service_stats(s, &st);
  cf_rpc_stats_t rs = {0};
  if (s->rpc) cf_rpc_stats(s->rpc, &rs);
  Cacheflow__V1__StatsResponse resp = CACHEFLOW__V1__STATS_RESPONSE__INIT;
  resp.uptime_s = cf__now() - s->t_start;
  resp.engines = st.engines;
  resp.requests_total = rs.calls_total;
  resp.errors_total = rs.calls_total - rs.status_total[CF_RPC_OK] - rs.calls_in_flight;
  resp.restores_in_flight = st.restores_in_flight;
  resp.cpu_tier_bytes_used = st.cpu_bytes;
  resp.ssd_tier_bytes_used = st.ssd_bytes;
  resp.draining = st.draining;
  if (s->model) {
    resp.model_fingerprint.data = (uint8_t *)s->model->fingerprint;
    resp.model_fingerprint.len = 16;
    resp.model_dir = (char *)s->model->dir;
    resp.model_layers = s->model->n_layers;
    resp.model_kv_heads = s->model->n_kv_heads;
    resp.model_head_dim = s->model->head_dim;
    resp.model_vocab = s->model->vocab;
  }
  resp.kv_dtype = (Cacheflow__V1__DType)s->be.kv_dtype;
  Cacheflow__V1__MemoryStats mem = CACHEFLOW__V1__MEMORY_STATS__INIT;
  mem.host_budget_bytes = st.mem.host_budget;
  mem.host_used_bytes = st.mem.host_used;
  mem.host_peak_bytes = st.mem.host_peak;
  mem.gpu_budget_bytes = st.mem.gpu_budget;
  mem.gpu_used_bytes = st.mem.gpu_used;
  mem.gpu_peak_bytes = st.mem.gpu_peak;
  mem.waits = st.mem.mem_waits;
  mem.refusals = st.mem.host_refusals;
  mem.weights_borrowed = st.mem.weights.borrowed;
  mem.weights_borrowed_bytes = st.mem.weights.borrowed_bytes;
  mem.weights_own_bytes = st.mem.weights.own_bytes;
  resp.memory = &mem;
  cf_service_metric_t ms[CF_SERVICE_METRICS_MAX];
  int nc = cf_service_metrics(s, ms);
  Cacheflow__V1__Counter cs[CF_SERVICE_METRICS_MAX], *cp[CF_SERVICE_METRICS_MAX];
  char names[CF_SERVICE_METRICS_MAX][96];
  for (int i = 0; i < nc; i++) {
    cacheflow__v1__counter__init(&cs[i]);
    cs[i].name = (char *)cf_service_metric_flat_name(&ms[i], names[i], sizeof names[i]);
    cs[i].value = ms[i].value;
    cp[i] = &cs[i];
  }
  resp.n_counters = (size_t)nc;
  resp.counters = cp;
  cf_rpc_reply(c, &resp.base);
}

/* ---------------------------------------------------------------- the shared counters */
typedef struct {
  cf_service_stats_t st;
  cf_rpc_stats_t rs;
  cf_refit_stats_t fs;
  int refit_on;
  cf_remote_stats_t rst;
} cf__snap_t;

#define CF__GET(name, expr) static double name(const cf__snap_t *x) { return (double)(expr); }
CF__GET(cf__g_restores, x->st.restores_total)
CF__GET(cf__g_engines_died, x->st.engines_died)
CF__GET(cf__g_batches, x->st.batches_total)
CF__GET(cf__g_batched, x->st.restores_batched_total)
CF__GET(cf__g_in_flight, x->st.restores_in_flight)
CF__GET(cf__g_rpc_in_flight, x->rs.calls_in_flight)
CF__GET(cf__g_scale, x->fs.scale)
CF__GET(cf__g_ratio_compute, x->fs.compute_ratio)
CF__GET(cf__g_ratio_restore, x->fs.restore_ratio)
CF__GET(cf__g_ratio_load_cpu, x->fs.load_ratio[0])
CF__GET(cf__g_ratio_load_ssd, x->fs.load_ratio[1])
CF__GET(cf__g_samples, x->fs.samples)
CF__GET(cf__g_clipped, x->fs.clipped)
CF__GET(cf__g_refit_on, x->refit_on)
CF__GET(cf__g_rate_cpu, x->fs.rate_Bps[0])
CF__GET(cf__g_rate_ssd, x->fs.rate_Bps[1])
CF__GET(cf__g_load_samples_cpu, x->fs.load_samples[0])
CF__GET(cf__g_load_samples_ssd, x->fs.load_samples[1])
CF__GET(cf__g_ratio_load_remote, x->fs.load_ratio[2])
CF__GET(cf__g_rate_remote, x->fs.rate_Bps[2])
CF__GET(cf__g_load_samples_remote, x->fs.load_samples[2])
CF__GET(cf__g_mem_host_budget, x->st.mem.host_budget)
CF__GET(cf__g_mem_host_used, x->st.mem.host_used)
CF__GET(cf__g_mem_host_peak, x->st.mem.host_peak)
CF__GET(cf__g_mem_gpu_budget, x->st.mem.gpu_budget)
CF__GET(cf__g_mem_gpu_used, x->st.mem.gpu_used)
CF__GET(cf__g_mem_gpu_peak, x->st.mem.gpu_peak)
CF__GET(cf__g_mem_waits, x->st.mem.mem_waits)
CF__GET(cf__g_mem_refusals, x->st.mem.host_refusals)
CF__GET(cf__g_w_borrowed, x->st.mem.weights.borrowed)
CF__GET(cf__g_w_own, x->st.mem.weights.own_bytes)
CF__GET(cf__g_w_bbytes, x->st.mem.weights.borrowed_bytes)
CF__GET(cf__g_w_borrows, x->st.mem.weights.borrows)
CF__GET(cf__g_w_refusals, x->st.mem.weights.refusals)
CF__GET(cf__g_w_backs, x->st.mem.weights.give_backs)
/* the remote tier's rows (only with one: cf_service_metrics appends them) */
CF__GET(cf__g_r_up, x->rst.connected)
CF__GET(cf__g_r_ok, x->rst.cells_read)
CF__GET(cf__g_r_missing, x->rst.cells_missing)
CF__GET(cf__g_r_corrupt, x->rst.cells_corrupt)
CF__GET(cf__g_r_error, x->rst.read_errors)
CF__GET(cf__g_r_written, x->rst.chunks_written)
CF__GET(cf__g_r_skipped, x->rst.put_skipped)
CF__GET(cf__g_r_dropped, x->rst.put_dropped)
CF__GET(cf__g_r_oom, x->rst.put_oom)
CF__GET(cf__g_r_werror, x->rst.put_errors)
CF__GET(cf__g_r_bread, x->rst.bytes_read)
CF__GET(cf__g_r_bwrite, x->rst.bytes_written)
CF__GET(cf__g_r_promoted, x->rst.promoted)
CF__GET(cf__g_r_pskipped, x->rst.promote_skipped)
CF__GET(cf__g_r_pfailed, x->rst.promote_failed)

/* One row per sample; a family's rows are consecutive, its HELP on the first. */
static const struct {
  const char *family, *type, *help, *label_key, *label_value;
  double (*get)(const cf__snap_t *);
} cf__metric_rows[] = {
  {"cacheflow_restores_total", "counter", "Restores accepted.", NULL, NULL, cf__g_restores},
  {"cacheflow_engines_died_total", "counter", "Engines unregistered by the daemon because their process exited "
   "without Unregister (RegisterEngineRequest.pid).", NULL, NULL, cf__g_engines_died},
  {"cacheflow_restore_batches_total", "counter", "Restore batches dispatched.", NULL, NULL, cf__g_batches},
  {"cacheflow_restores_batched_total", "counter", "Restores handed over in those batches.", NULL, NULL, cf__g_batched},
  {"cacheflow_restores_in_flight", "gauge", "Restores accepted and not yet ended.", NULL, NULL, cf__g_in_flight},
  {"cacheflow_rpc_in_flight", "gauge", "gRPC calls being handled.", NULL, NULL, cf__g_rpc_in_flight},
  {"cacheflow_cost_compute_scale", "gauge", "Compute cost now / the start-up calibration (online re-fit).", NULL, NULL, cf__g_scale},
  {"cacheflow_predicted_ratio", "gauge", "Executed / predicted, EWMA over restores (term=compute: forward steps; "
   "restore: whole restore; load_<tier>: the tier's bytes at the planned rate vs its measured rate).", "term", "compute", cf__g_ratio_compute},
  {"cacheflow_predicted_ratio", "gauge", NULL, "term", "restore", cf__g_ratio_restore},
  {"cacheflow_predicted_ratio", "gauge", NULL, "term", "load_cpu", cf__g_ratio_load_cpu},
  {"cacheflow_predicted_ratio", "gauge", NULL, "term", "load_ssd", cf__g_ratio_load_ssd},
  {"cacheflow_predicted_ratio", "gauge", NULL, "term", "load_remote", cf__g_ratio_load_remote},
  {"cacheflow_cost_refit_samples_total", "counter", "Executed restores the compute re-fit used (clipped: clamped as outliers).", NULL, NULL, cf__g_samples},
  {"cacheflow_cost_refit_samples_total", "counter", NULL, "result", "clipped", cf__g_clipped},
  {"cacheflow_cost_refit_enabled", "gauge", "1 while restores are planned with the re-fitted cost model (cost_refit).", NULL, NULL, cf__g_refit_on},
  {"cacheflow_tier_read_bytes_per_second", "gauge", "Read rate per tier the planner uses now (re-fitted from executed loads, "
   "never above the configured limit).", "tier", "cpu", cf__g_rate_cpu},
  {"cacheflow_tier_read_bytes_per_second", "gauge", NULL, "tier", "ssd", cf__g_rate_ssd},
  {"cacheflow_tier_read_bytes_per_second", "gauge", NULL, "tier", "remote", cf__g_rate_remote},
  {"cacheflow_load_refit_samples_total", "counter", "Executed restores the load-rate re-fit used, per tier.", "tier", "cpu", cf__g_load_samples_cpu},
  {"cacheflow_load_refit_samples_total", "counter", NULL, "tier", "ssd", cf__g_load_samples_ssd},
  {"cacheflow_load_refit_samples_total", "counter", NULL, "tier", "remote", cf__g_load_samples_remote},
  {"cacheflow_memory_budget_bytes", "gauge", "Memory budget of restores per pool (host_memory_bytes, gpu_memory_bytes; "
   "0 = unbounded).", "pool", "host", cf__g_mem_host_budget},
  {"cacheflow_memory_budget_bytes", "gauge", NULL, "pool", "gpu", cf__g_mem_gpu_budget},
  {"cacheflow_memory_used_bytes", "gauge", "Bytes of the budget held now per pool (gpu: what the backend holds).",
   "pool", "host", cf__g_mem_host_used},
  {"cacheflow_memory_used_bytes", "gauge", NULL, "pool", "gpu", cf__g_mem_gpu_used},
  {"cacheflow_memory_peak_bytes", "gauge", "High-water mark of the budget's use per pool since start.", "pool", "host",
   cf__g_mem_host_peak},
  {"cacheflow_memory_peak_bytes", "gauge", NULL, "pool", "gpu", cf__g_mem_gpu_peak},
  {"cacheflow_memory_waits_total", "counter", "Compute steps of restores that waited for memory (the budget was in use).",
   NULL, NULL, cf__g_mem_waits},
  {"cacheflow_memory_refusals_total", "counter", "Pool requests that found no room (then waited or took other work).",
   NULL, NULL, cf__g_mem_refusals},
  {"cacheflow_weights_borrowed", "gauge", "1 while the backend computes on an engine's weights (OfferWeights).", NULL,
   NULL, cf__g_w_borrowed},
  {"cacheflow_weights_bytes", "gauge", "Weight bytes the backend computes on, by where they live (own: the daemon's "
   "copy, 0 while borrowing; borrowed: the engine's memory).", "source", "own", cf__g_w_own},
  {"cacheflow_weights_bytes", "gauge", NULL, "source", "borrowed", cf__g_w_bbytes},
  {"cacheflow_weights_offers_total", "counter", "OfferWeights by result (refused: a mismatch or an unsupported "
   "layout, the own copy kept; given_back: the engine left and the own copy was reloaded).", "result", "borrowed",
   cf__g_w_borrows},
  {"cacheflow_weights_offers_total", "counter", NULL, "result", "refused", cf__g_w_refusals},
  {"cacheflow_weights_offers_total", "counter", NULL, "result", "given_back", cf__g_w_backs},
  /* from here on: only with a remote tier. Its health is reported here, never as NOT_SERVING: the
   * daemon serves from its local tiers and recomputes while the remote store is down. */
  {"cacheflow_remote_up", "gauge", "1 when the remote tier's last command reached every node it needed (0: down; "
   "restores recompute, the daemon keeps serving).", NULL, NULL, cf__g_r_up},
  {"cacheflow_remote_cells_total", "counter", "Remote cell reads by result (missing, corrupt, error: recomputed, never "
   "served).", "result", "ok", cf__g_r_ok},
  {"cacheflow_remote_cells_total", "counter", NULL, "result", "missing", cf__g_r_missing},
  {"cacheflow_remote_cells_total", "counter", NULL, "result", "corrupt", cf__g_r_corrupt},
  {"cacheflow_remote_cells_total", "counter", NULL, "result", "error", cf__g_r_error},
  {"cacheflow_remote_writes_total", "counter", "Chunks of the write-back by result (skipped: the remote held it; dropped: "
   "queue full; oom: Redis maxmemory).", "result", "written", cf__g_r_written},
  {"cacheflow_remote_writes_total", "counter", NULL, "result", "skipped", cf__g_r_skipped},
  {"cacheflow_remote_writes_total", "counter", NULL, "result", "dropped", cf__g_r_dropped},
  {"cacheflow_remote_writes_total", "counter", NULL, "result", "oom", cf__g_r_oom},
  {"cacheflow_remote_writes_total", "counter", NULL, "result", "error", cf__g_r_werror},
  {"cacheflow_remote_bytes_total", "counter", "Cell bytes moved to and from the remote tier.", "dir", "read", cf__g_r_bread},
  {"cacheflow_remote_bytes_total", "counter", NULL, "dir", "write", cf__g_r_bwrite},
  {"cacheflow_remote_promotions_total", "counter", "Remote hits saved into this node's tiers by result (skipped: "
   "remote_promote_bytes full; failed: the local save refused).", "result", "promoted", cf__g_r_promoted},
  {"cacheflow_remote_promotions_total", "counter", NULL, "result", "skipped", cf__g_r_pskipped},
  {"cacheflow_remote_promotions_total", "counter", NULL, "result", "failed", cf__g_r_pfailed},
};
#define CF__REMOTE_ROWS 15 /* the last rows above */

int cf_service_metrics(cf_service_t *s, cf_service_metric_t *out) {
  cf__snap_t x;
  memset(&x, 0, sizeof x);
  cf_service_stats(s, &x.st);
  if (s->rpc) cf_rpc_stats(s->rpc, &x.rs);
  cf_refit_stats(cf_planner_refit(s->planner), &x.fs);
  x.refit_on = (int)s->cfg->cost_refit;
  int n = (int)(sizeof cf__metric_rows / sizeof cf__metric_rows[0]);
  if (s->be.remote) cf_remote_get_stats(s->be.remote, &x.rst);
  else n -= CF__REMOTE_ROWS;
  for (int i = 0; i < n && i < CF_SERVICE_METRICS_MAX; i++)
    out[i] = (cf_service_metric_t){cf__metric_rows[i].family, cf__metric_rows[i].type, cf__metric_rows[i].help,
                                   cf__metric_rows[i].label_key, cf__metric_rows[i].label_value, cf__metric_rows[i].get(&x)};
  return n < CF_SERVICE_METRICS_MAX ? n : CF_SERVICE_METRICS_MAX;
}

const char *cf_service_metric_flat_name(const cf_service_metric_t *m, char *buf, size_t cap) {
  if (!m->label_value) return m->family;
  size_t n = strlen(m->family);
  if (n > 6 && !strcmp(m->family + n - 6, "_total")) n -= 6;
  snprintf(buf, cap, "%.*s_%s", (int)n, m->family, m->label_value);
  return buf;
}

static void cf__h_evict(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__EvictRequest *r = (void *)m;
  char why[128];
  if (cf_reqcheck_evict(r, why, sizeof why)) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why);
  } else if (!s->be.evict) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, CF__NO_MODEL("Evict"));
  } else {
    Cacheflow__V1__EvictResponse resp = CACHEFLOW__V1__EVICT_RESPONSE__INIT;
    int rc = s->be.evict(s->be.ctx, r->tier, r->bytes, &resp.bytes_evicted, &resp.chunks_evicted);
    if (rc) cf_rpc_finish(c, cf_rpc_status_from_err(rc), "evict: %s", cf_errmsg());
    else cf_rpc_reply(c, &resp.base);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

/* Admin.Flush on the save worker: after every Save submitted before it (the worker runs jobs in
 * order), and off the loop (it writes and fsyncs). */
typedef struct {
  cf_worker_job_t w;                /* first: the worker's callbacks get a cf_worker_job_t * */
  cf_service_t *s;
  cf_rpc_call_t *call;
  int rc;
  uint64_t ssd_chunks;
  char detail[512];
} cf__flush_t;

static void cf__flush_run(cf_worker_job_t *w) {
  cf__flush_t *f = (cf__flush_t *)w;
  f->rc = f->s->be.flush(f->s->be.ctx, &f->ssd_chunks);
  if (f->rc) snprintf(f->detail, sizeof f->detail, "%s", cf_errmsg());
}

static void cf__flush_done(cf_worker_job_t *w) {
  cf__flush_t *f = (cf__flush_t *)w;
  if (f->rc) {
    cf_rpc_finish(f->call, cf_rpc_status_from_err(f->rc), "flush: %s", f->detail);
  } else {
    Cacheflow__V1__FlushResponse resp = CACHEFLOW__V1__FLUSH_RESPONSE__INIT;
    resp.ssd_chunks = f->ssd_chunks;
    cf_rpc_reply(f->call, &resp.base);
  }
  free(f);
}

static void cf__h_flush(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  protobuf_c_message_free_unpacked(m, NULL); /* FlushRequest carries nothing */
  if (!s->be.flush || !s->saver) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, CF__NO_MODEL("Flush"));
    return;
  }
  if (!s->be.has_ssd) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "flush needs an SSD tier (store_dir with ssd_tier_bytes > 0); "
                  "this daemon keeps KV in its CPU tier only");
    return;
  }
  cf__flush_t *f = calloc(1, sizeof *f);
  if (!f) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); return; }
  *f = (cf__flush_t){.w = {.run = cf__flush_run, .done = cf__flush_done}, .s = s, .call = c};
  cf_worker_submit(s->saver, &f->w);
}

static void cf__h_trace(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  cf_trace_rpc(c, s->be.trace, ((Cacheflow__V1__TraceRequest *)m)->restore_id);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void cf__h_get_config(cf_rpc_call_t *c, ProtobufCMessage *m, void *user) {
  cf_service_t *s = user;
  Cacheflow__V1__GetConfigRequest *r = (void *)m;
  size_t n = cf_config_count;
  Cacheflow__V1__ConfigEntry *es = calloc(n, sizeof *es);
  Cacheflow__V1__ConfigEntry **ep = calloc(n, sizeof *ep);
  char (*vals)[CF_CFG_STR_MAX] = calloc(n, sizeof *vals);
  char (*allowed)[160] = calloc(n, sizeof *allowed);
  if (!es || !ep || !vals || !allowed) { cf_rpc_finish(c, CF_RPC_RESOURCE_EXHAUSTED, "out of memory"); goto out; }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const cf_config_entry_t *e = &cf_config_table[i];
    if (*r->name && strcmp(r->name, e->name)) continue;
    cacheflow__v1__config_entry__init(&es[k]);
    es[k].name = (char *)e->name;
    es[k].value = (char *)cf_config_format(s->cfg, e, vals[k], sizeof vals[k]);
    es[k].default_value = (char *)e->def;
    es[k].reloadable = e->reloadable;
    es[k].help = (char *)e->help;
    es[k].allowed = (char *)cf_config_allowed(e, allowed[k], sizeof allowed[k]);
    ep[k] = &es[k];
    k++;
  }
  if (*r->name && !k) { cf_rpc_finish(c, CF_RPC_NOT_FOUND, "no setting named '%.100s'", r->name); goto out; }
  Cacheflow__V1__GetConfigResponse resp = CACHEFLOW__V1__GET_CONFIG_RESPONSE__INIT;
  resp.n_entries = k;
  resp.entries = ep;
  cf_rpc_reply(c, &resp.base);
out:
  free(es); free(ep); free(vals); free(allowed);
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---------------------------------------------------------------- table, lifecycle */
static const cf_rpc_method_t cf__methods[] = {
  {"/cacheflow.v1.CacheFlow/RegisterEngine", &cacheflow__v1__register_engine_request__descriptor, cf__v_register, cf__h_register, 0},
  {"/cacheflow.v1.CacheFlow/Lookup", &cacheflow__v1__lookup_request__descriptor, NULL, cf__h_lookup, 0},
  {"/cacheflow.v1.CacheFlow/Save", &cacheflow__v1__save_request__descriptor, NULL, cf__h_save, 0},
  {"/cacheflow.v1.CacheFlow/Restore", &cacheflow__v1__restore_request__descriptor, cf__v_restore, cf__h_restore, 0},
  {"/cacheflow.v1.CacheFlow/Unregister", &cacheflow__v1__unregister_request__descriptor, NULL, cf__h_unregister, CF_RPC_DRAIN_OK},
  {"/cacheflow.v1.CacheFlow/OfferWeights", &cacheflow__v1__offer_weights_request__descriptor, cf__v_offer, cf__h_offer, 0},
  {"/cacheflow.v1.Admin/Stats", &cacheflow__v1__stats_request__descriptor, NULL, cf__h_stats, CF_RPC_DRAIN_OK},
  {"/cacheflow.v1.Admin/Evict", &cacheflow__v1__evict_request__descriptor, NULL, cf__h_evict, 0},
  {"/cacheflow.v1.Admin/GetConfig", &cacheflow__v1__get_config_request__descriptor, NULL, cf__h_get_config, CF_RPC_DRAIN_OK},
  {"/cacheflow.v1.Admin/Flush", &cacheflow__v1__flush_request__descriptor, NULL, cf__h_flush, 0},
  {"/cacheflow.v1.Admin/Trace", &cacheflow__v1__trace_request__descriptor, NULL, cf__h_trace, CF_RPC_DRAIN_OK},
  {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor, NULL, cf__h_health_check, CF_RPC_DRAIN_OK},
  {"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor, NULL, cf__h_health_watch, CF_RPC_DRAIN_OK},
};

const cf_rpc_method_t *cf_service_methods(int *n) {
  *n = (int)(sizeof cf__methods / sizeof cf__methods[0]);
  return cf__methods;
}

int cf_service_init(cf_service_t **out, uv_loop_t *loop, const cf_config_t *cfg, const cf_model_info_t *model,
                    const cf_service_backend_t *backend, cf_planner_t *planner) {
  cf_service_t *s = calloc(1, sizeof *s);
  if (!s) return cf_seterr(CF_ENOMEM, "service");
  s->max_engines = (int)cfg->max_engines;
  s->engines = calloc(s->max_engines, sizeof *s->engines);
  if (!s->engines) { free(s); return cf_seterr(CF_ENOMEM, "engine table"); }
  s->loop = loop;
  s->cfg = cfg;
  s->model = model;
  if (backend) s->be = *backend;
  s->planner = planner;
  s->t_start = cf__now();
  s->next_id = (uv_hrtime() & 0xffffffull) << 32; /* differs per run: stale ids are NOT_FOUND */
  cf_batcher_path_t path = {.ctx = s->be.ctx, .restore_batch = s->be.restore_batch, .restore_cancel = s->be.restore_cancel};
  if (cf_batcher_init(&s->batcher, loop, cfg, &path, cf__restore_release, s)) {
    free(s->engines);
    free(s);
    return cf_seterr(CF_ENOMEM, "batcher");
  }
  if (s->be.save && cf_worker_start(&s->saver, loop)) {
    cf_batcher_close(s->batcher);
    free(s->engines);
    free(s);
    return cf_seterr(CF_ENOMEM, "save worker");
  }
  if (s->be.weights_borrow && s->be.weights_give_back && cf_worker_start(&s->weigher, loop)) {
    cf_worker_close(s->saver);
    cf_batcher_close(s->batcher);
    free(s->engines);
    free(s);
    return cf_seterr(CF_ENOMEM, "weights worker");
  }
  *out = s;
  return 0;
}

void cf_service_set_rpc(cf_service_t *s, cf_rpc_server_t *rpc) { s->rpc = rpc; }

void cf_service_drain(cf_service_t *s) {
  if (s->draining) return;
  __atomic_store_n(&s->draining, 1, __ATOMIC_RELAXED); /* cf_service_stats reads it on the HTTP thread */
  for (cf__watch_t *w = s->watchers; w; w = w->next) cf__watch_send(w->call, cf__health_status(s));
}

int cf_service_restores_in_flight(const cf_service_t *s) {
  cf_batcher_stats_t bs;
  cf_batcher_stats(s->batcher, &bs);
  return (int)bs.in_flight;
}

void cf_service_abort_all(cf_service_t *s, const char *why) {
  if (s->saver) cf_worker_flush(s->saver); /* Saves being copied finish and are answered: nothing saved is lost */
  cf_batcher_abort_all(s->batcher, why);
  /* borrowed weights: a check running finishes (its done may queue the give-back, run too);
   * a held lease's call ends now. The weights stay borrowed until the executor stops (the
   * dataplane's close frees the views): no reload on the way out. */
  if (s->weigher) cf_worker_flush(s->weigher);
  if (s->lease) cf__lease_end(s->lease, CF_RPC_UNAVAILABLE, why);
  while (s->watchers) {
    cf__watch_t *w = s->watchers;
    s->watchers = w->next;
    cf__watch_send(w->call, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    cf_rpc_finish(w->call, CF_RPC_OK, "%s", "shutting down");
    free(w);
  }
}

void cf_service_close(cf_service_t *s) {
  cf_service_abort_all(s, "cacheflowd is shutting down");
  cf_batcher_close(s->batcher); /* no restore left: it holds no engine */
  cf_worker_close(s->saver);    /* flushed by abort_all: no Save holds an engine */
  cf_worker_close(s->weigher);
  if (s->lease) cf__lease_free(s->lease);
  for (int i = 0; i < s->max_engines; i++)
    if (s->engines[i]) { cf_engine_t *e = s->engines[i]; s->engines[i] = NULL; cf_pidwatch_stop(e->watch); cf__engine_unref(s, e); }
  free(s->engines);
  free(s);
}

void cf_service_stats(const cf_service_t *s, cf_service_stats_t *o) {
  memset(o, 0, sizeof *o);
  o->engines = __atomic_load_n(&s->n_engines, __ATOMIC_RELAXED);
  o->engines_died = __atomic_load_n(&s->engines_died, __ATOMIC_RELAXED);
  cf_batcher_stats_t bs;
  cf_batcher_stats(s->batcher, &bs);
  o->restores_in_flight = bs.in_flight;
  o->restores_total = bs.restores_total;
  o->batches_total = bs.batches_total;
  o->restores_batched_total = bs.restores_batched_total;
  o->draining = __atomic_load_n(&s->draining, __ATOMIC_RELAXED);
  if (s->be.usage) s->be.usage(s->be.ctx, &o->cpu_bytes, &o->ssd_bytes);
  if (s->be.memory) s->be.memory(s->be.ctx, &o->mem);
}
