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
#include "exec/cf_save.h"
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "model/cf_backend.h"
#include "model/cf_model.h"
#include "store/cf_store.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__READY_SLOTS 64

typedef struct {
  cf_kvmap_t kv;
  cf_ready_t ready;
  uint8_t slot_used[CF__READY_SLOTS];
} cf__engine_priv_t;

typedef struct {
  cf_batch_job_t b;        /* first: the batch callbacks get a cf_batch_job_t * */
  cf_restore_t *r;
  cf_dataplane_t *dp;
  int32_t *tokens, *blocks;
  int slot;                /* readiness slot or -1 */
} cf__job_t;

enum { CF__EV_PLAN, CF__EV_LAYERS, CF__EV_DONE };
typedef struct cf__ev_s {
  int kind;
  cf__job_t *job;
  cf_batch_plan_info_t plan;
  int layers;
  int err;
  int has_res;
  cf_batch_result_t res;
  char detail[512];
  struct cf__ev_s *next;
} cf__ev_t;

struct cf_dataplane_s {
  const cf_config_t *cfg;
  cf_service_backend_t hooks;
  cf_model_t *model;
  cf_backend_t *be;
  cf_store_t *store;
  cf_batch_t *batch;
  uv_async_t async;
  pthread_mutex_t mu;
  cf__ev_t *head, *tail;
  uint64_t next_req;
  Cacheflow__V1__TierTokens tt[2];
  Cacheflow__V1__TierTokens *ttp[2];
};

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
  free(j->tokens);
  free(j->blocks);
  free(j);
}

static void cf__deliver(cf_dataplane_t *dp, cf__ev_t *ev) {
  cf__job_t *j = ev->job;
  cf_restore_t *r = j->r;
  if (ev->kind == CF__EV_PLAN) {
    Cacheflow__V1__PlanSummary ps = CACHEFLOW__V1__PLAN_SUMMARY__INIT;
    ps.policy = (Cacheflow__V1__Policy)(ev->plan.policy + 1);
    ps.chunks = ev->plan.chunks;
    ps.cells_load_cpu = ev->plan.cells_load_cpu;
    ps.cells_load_ssd = ev->plan.cells_load_ssd;
    ps.cells_compute = ev->plan.cells_compute;
    ps.predicted_us = ev->plan.predicted_s * 1e6;
    ps.bound_us = ev->plan.bound_s * 1e6;
    ps.readiness_slot = j->slot >= 0 ? (uint32_t)j->slot : UINT32_MAX;
    Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
    e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN;
    e.plan = &ps;
    cf_service_restore_event(r, &e);
  } else if (ev->kind == CF__EV_LAYERS) {
    Cacheflow__V1__LayersReady lr = CACHEFLOW__V1__LAYERS_READY__INIT;
    lr.layers_ready = (uint32_t)ev->layers;
    Cacheflow__V1__RestoreEvent e = CACHEFLOW__V1__RESTORE_EVENT__INIT;
    e.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS;
    e.layers = &lr;
    cf_service_restore_event(r, &e);
  } else {
    cf__engine_priv_t *ep = r->engine->exec_priv;
    if (j->slot >= 0 && ep) ep->slot_used[j->slot] = 0;
    if (!ev->err) {
      const cf_exec_stats_t *st = &ev->res.stats;
      Cacheflow__V1__RestoreStats s = CACHEFLOW__V1__RESTORE_STATS__INIT;
      s.cells_loaded_cpu = st->cells_loaded[0];
      s.cells_loaded_ssd = st->cells_loaded[1];
      s.cells_computed = st->cells_computed;
      s.cells_recomputed_fallback = st->load_failures;
      s.time_us = ev->res.time_s * 1e6;
      s.predicted_us = ev->res.predicted_s * 1e6;
      s.bound_us = ev->res.bound_s * 1e6;
      s.ratio_to_bound = ev->res.bound_s > 0 ? ev->res.time_s / ev->res.bound_s : 0;
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
}

static void cf__drain_events(cf_dataplane_t *dp) {
  pthread_mutex_lock(&dp->mu);
  cf__ev_t *ev = dp->head;
  dp->head = dp->tail = NULL;
  pthread_mutex_unlock(&dp->mu);
  while (ev) {
    cf__ev_t *next = ev->next;
    cf__deliver(dp, ev);
    free(ev);
    ev = next;
  }
}

static void cf__on_async(uv_async_t *a) { cf__drain_events(a->data); }

static cf__ev_t *cf__ev(int kind, cf_batch_job_t *bj) {
  cf__ev_t *ev = calloc(1, sizeof *ev);
  if (ev) { ev->kind = kind; ev->job = (cf__job_t *)bj; }
  return ev;
}

static void cf__job_on_plan(cf_batch_job_t *bj, const cf_batch_plan_info_t *p) {
  cf__ev_t *ev = cf__ev(CF__EV_PLAN, bj);
  if (!ev) return; /* progress is best effort; the final event is not */
  ev->plan = *p;
  cf__post(((cf__job_t *)bj)->dp, ev);
}

static void cf__job_on_layer(cf_batch_job_t *bj, int layers) {
  cf__ev_t *ev = cf__ev(CF__EV_LAYERS, bj);
  if (!ev) return;
  ev->layers = layers;
  cf__post(((cf__job_t *)bj)->dp, ev);
}

static void cf__job_on_done(cf_batch_job_t *bj, int err, const cf_batch_result_t *res) {
  cf__job_t *j = (cf__job_t *)bj;
  cf__ev_t *ev;
  /* the final event must arrive: retry the allocation rather than lose a call */
  while (!(ev = cf__ev(CF__EV_DONE, bj))) usleep(1000);
  ev->err = err;
  if (res) { ev->res = *res; ev->has_res = 1; }
  if (err) snprintf(ev->detail, sizeof ev->detail, "%s: %s", cf_strerror(err), cf_errmsg());
  cf__post(j->dp, ev);
}

/* ---------------------------------------------------------------- hooks (loop thread) */
static int cf__engine_added(void *ctx, cf_engine_t *e) {
  cf_dataplane_t *dp = ctx;
  if (e->dtype != CACHEFLOW__V1__DTYPE__DTYPE_F32)
    return cf_seterr(CF_EDTYPE, "the CPU executor writes f32 KV buffers; this engine registered dtype %d", e->dtype);
  cf__engine_priv_t *p = calloc(1, sizeof *p);
  const char **kp = calloc((size_t)e->n_layers, sizeof *kp), **vp = calloc((size_t)e->n_layers, sizeof *vp);
  uint64_t *ko = calloc((size_t)e->n_layers, 8), *vo = calloc((size_t)e->n_layers, 8);
  int rc = 0;
  if (!p || !kp || !vp || !ko || !vo) { rc = cf_seterr(CF_ENOMEM, "engine %llu", (unsigned long long)e->id); goto out; }
  /* The service checked one layout for every layer; take layer 0's strides. */
  cf_kv_layout_t lay = {.n_layers = e->n_layers, .num_blocks = (int)e->num_blocks, .block_size = (int)e->block_size,
                        .n_kv_heads = dp->model->cfg.n_kv_heads, .head_dim = dp->model->cfg.head_dim,
                        .dtype = CF_DT_F32, .block_stride = e->layers[0].block_stride,
                        .token_stride = e->layers[0].token_stride, .head_stride = e->layers[0].head_stride};
  for (int l = 0; l < e->n_layers; l++) {
    const cf_layer_layout_t *L = &e->layers[l];
    if (L->block_stride != lay.block_stride || L->token_stride != lay.token_stride || L->head_stride != lay.head_stride) {
      rc = cf_seterr(CF_EUNSUPPORTED, "layer %d strides differ from layer 0's; the CPU executor needs one layout", l);
      goto out;
    }
    kp[l] = L->k.shm_path; vp[l] = L->v.shm_path;
    ko[l] = L->k.offset; vo[l] = L->v.offset;
  }
  if ((rc = cf_kv_layout_check(&lay, &dp->model->cfg)) || (rc = cf_kvmap_attach(&p->kv, &lay, kp, ko, vp, vo))) goto out;
  /* readiness counters: /dev/shm when there is one (engines map it), else the store dir */
  struct stat st;
  char path[256];
  if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode))
    snprintf(path, sizeof path, "/dev/shm/cacheflowd-%d-ready-%llu", (int)getpid(), (unsigned long long)e->id);
  else if (snprintf(path, sizeof path, "%.200s/ready-%llu", dp->cfg->store_dir, (unsigned long long)e->id) >= (int)sizeof path)
    { rc = cf_seterr(CF_EINVAL, "readiness path under store_dir %s too long", dp->cfg->store_dir); cf_kvmap_close(&p->kv); goto out; }
  unlink(path); /* a leftover of a crashed daemon with our pid */
  if ((rc = cf_ready_create(&p->ready, path, CF__READY_SLOTS))) { cf_kvmap_close(&p->kv); goto out; }
  snprintf(e->readiness_path, sizeof e->readiness_path, "%s", path);
  e->readiness_slots = CF__READY_SLOTS;
  e->exec_priv = p;
  p = NULL;
out:
  free(p); free(kp); free(vp); free(ko); free(vo);
  return rc;
}

static void cf__engine_removed(void *ctx, cf_engine_t *e) {
  (void)ctx;
  cf__engine_priv_t *p = e->exec_priv;
  if (!p) return;
  cf_kvmap_close(&p->kv);
  cf_ready_close(&p->ready);
  free(p);
  e->exec_priv = NULL;
}

/* uint32 wire ids -> int32 (validated < vocab / num_blocks by the service, so they fit). */
static int32_t *cf__i32(const uint32_t *a, size_t n) {
  int32_t *o = malloc((n ? n : 1) * sizeof *o);
  if (o) for (size_t i = 0; i < n; i++) o[i] = (int32_t)a[i];
  return o;
}

static int cf__lookup(void *ctx, cf_engine_t *e, const uint32_t *tokens, size_t n, Cacheflow__V1__LookupResponse *out) {
  (void)e;
  cf_dataplane_t *dp = ctx;
  uint32_t C = cf_store_geom(dp->store)->chunk_tokens;
  size_t full = n / C;
  int32_t *t = cf__i32(tokens, n);
  cf_store_key_t *keys = malloc((full + 1) * sizeof *keys);
  uint8_t *tiers = malloc(full + 1);
  int rc = 0;
  if (!t || !keys || !tiers) { rc = cf_seterr(CF_ENOMEM, "lookup of %zu tokens", n); goto out; }
  cf_store_chain_keys(cf_store_geom(dp->store)->fingerprint, t, full * C, C, keys);
  size_t found = cf_store_lookup(dp->store, keys, full, tiers);
  uint32_t cpu = 0, ssd = 0;
  for (size_t i = 0; i < found; i++) {
    if (tiers[i] == CF_STORE_TIER_CPU) cpu += C;
    else ssd += C;
  }
  out->cached_tokens = (uint32_t)(found * C);
  for (int i = 0; i < 2; i++) {
    cacheflow__v1__tier_tokens__init(&dp->tt[i]);
    dp->ttp[i] = &dp->tt[i];
  }
  dp->tt[0].tier = CACHEFLOW__V1__TIER__TIER_CPU; dp->tt[0].tokens = cpu;
  dp->tt[1].tier = CACHEFLOW__V1__TIER__TIER_SSD; dp->tt[1].tokens = ssd;
  out->per_tier = dp->ttp; /* lives in dp: the service packs the reply before the next call */
  out->n_per_tier = 2;
out:
  free(t); free(keys); free(tiers);
  return rc;
}

static int cf__save(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved, int *durable) {
  cf_dataplane_t *dp = ctx;
  cf__engine_priv_t *p = e->exec_priv;
  int32_t *t = cf__i32(req->token_ids, req->n_token_ids), *b = cf__i32(req->block_ids, req->n_block_ids);
  int rc;
  if (!t || !b) rc = cf_seterr(CF_ENOMEM, "save of %zu tokens", req->n_token_ids);
  else {
    cf_save_result_t sr;
    rc = cf_save_blocks(dp->store, &p->kv, t, (int)req->n_token_ids, b, (int)req->n_block_ids, 0, &sr);
    *saved = sr.saved_tokens;
    *durable = sr.durable;
  }
  free(t); free(b);
  return rc;
}

static void cf__restore_batch(void *ctx, cf_restore_t **batch, int n) {
  cf_dataplane_t *dp = ctx;
  cf_batch_job_t **jobs = calloc((size_t)n, sizeof *jobs);
  int m = 0;
  for (int i = 0; i < n; i++) {
    cf_restore_t *r = batch[i];
    cf__engine_priv_t *ep = r->engine->exec_priv;
    cf__job_t *j = calloc(1, sizeof *j);
    if (j) {
      j->tokens = cf__i32(r->req->token_ids, r->req->n_token_ids);
      j->blocks = cf__i32(r->req->block_ids, r->req->n_block_ids);
    }
    if (!jobs || !j || !j->tokens || !j->blocks) {
      if (j) cf__job_free(j);
      cf_service_restore_done(r, CF_RPC_RESOURCE_EXHAUSTED, NULL, "out of memory");
      continue;
    }
    j->r = r;
    j->dp = dp;
    j->slot = -1;
    for (int s = 0; s < CF__READY_SLOTS && j->slot < 0; s++)
      if (!ep->slot_used[s]) { ep->slot_used[s] = 1; j->slot = s; }
    j->b.tokens = j->tokens;
    j->b.n_tokens = (int)r->req->n_token_ids;
    j->b.blocks = j->blocks;
    j->b.n_blocks = (int)r->req->n_block_ids;
    j->b.kv = &ep->kv;
    j->b.ready = j->slot >= 0 ? &ep->ready : NULL;
    j->b.ready_slot = j->slot;
    j->b.policy = r->policy; /* cf_policy_kind_t and cf_policy_t share the proto's order */
    j->b.req_id = ++dp->next_req;
    atomic_init(&j->b.cancel, 0);
    j->b.on_plan = cf__job_on_plan;
    j->b.on_layer = cf__job_on_layer;
    j->b.on_done = cf__job_on_done;
    r->exec_priv = j;
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

static int cf__evict(void *ctx, int tier, uint64_t bytes, uint64_t *bytes_evicted, uint64_t *chunks_evicted) {
  cf_dataplane_t *dp = ctx;
  if (tier == CACHEFLOW__V1__TIER__TIER_SSD)
    return cf_seterr(CF_EUNSUPPORTED, "evicting the SSD tier on request is not supported; evict TIER_CPU");
  cf_store_stats_t a, b;
  cf_store_get_stats(dp->store, &a);
  uint64_t keep = bytes == 0 || bytes >= a.cpu_bytes_used ? 0 : a.cpu_bytes_used - bytes;
  int rc = cf_store_evict_cpu(dp->store, keep);
  cf_store_get_stats(dp->store, &b);
  *bytes_evicted = a.cpu_bytes_used > b.cpu_bytes_used ? a.cpu_bytes_used - b.cpu_bytes_used : 0;
  *chunks_evicted = a.cpu_chunks > b.cpu_chunks ? a.cpu_chunks - b.cpu_chunks : 0;
  return rc;
}

static void cf__usage(void *ctx, uint64_t *cpu, uint64_t *ssd) {
  cf_dataplane_t *dp = ctx;
  cf_store_stats_t s;
  cf_store_get_stats(dp->store, &s);
  *cpu = s.cpu_bytes_used;
  *ssd = s.ssd_bytes_used;
}

/* ---------------------------------------------------------------- life cycle */
static const char *cf__backend_name(int kind) {
  return kind == CF_BACKEND_CPU ? "cpu" : kind == CF_BACKEND_CUDA ? "cuda" : "auto";
}

int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg) {
  *out = NULL;
  cf_dataplane_t *dp = calloc(1, sizeof *dp);
  if (!dp) return cf_seterr(CF_ENOMEM, "dataplane");
  dp->cfg = cfg;
  int rc = cf_model_load(cfg->model, &dp->model);
  if (rc) { cf_err_prefix(rc, "model %s: ", cfg->model); goto fail; }
  if ((rc = cf_backend_create(cf__backend_name(cfg->backend), dp->model, &dp->be))) goto fail;
  if (strcmp(dp->be->name, "cpu")) { /* the executor writes host memory: CUDA engines need the CUDA executor */
    cf_backend_free(dp->be);
    dp->be = NULL;
    if ((rc = cf_backend_cpu_create(dp->model, (int)cfg->threads, &dp->be))) goto fail;
  }
  cf_store_geom_t g = {.dtype_size = 4, .chunk_tokens = (uint32_t)cfg->chunk_tokens,
                       .n_layers = (uint32_t)dp->model->cfg.n_layers, .n_kv_heads = (uint32_t)dp->model->cfg.n_kv_heads,
                       .head_dim = (uint32_t)dp->model->cfg.head_dim};
  memcpy(g.fingerprint, dp->model->fingerprint, 16);
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = (uint64_t)cfg->cpu_tier_bytes;
  sc.ssd_bytes = (uint64_t)cfg->ssd_tier_bytes;
  sc.cpu_evict = cfg->eviction == CF_EVICT_S3FIFO ? CF_STORE_EVICT_S3FIFO : CF_STORE_EVICT_LRU;
  if ((rc = cf_store_open(cfg->store_dir, &g, &sc, &dp->store))) { cf_err_prefix(rc, "store %s: ", cfg->store_dir); goto fail; }
  cf_batch_opts_t bo = {.be = dp->be, .store = dp->store, .n_loaders = 2, .batch_max = (int)cfg->batch_max,
                        .cpu_Bps = cfg->cpu_read_gbps * 1e9 / 8, .ssd_Bps = cfg->ssd_read_gbps * 1e9 / 8};
  if ((rc = cf_batch_start(&dp->batch, &bo))) goto fail;
  pthread_mutex_init(&dp->mu, NULL);
  uv_async_init(loop, &dp->async, cf__on_async);
  dp->async.data = dp;
  dp->hooks = (cf_service_backend_t){.ctx = dp, .engine_added = cf__engine_added, .engine_removed = cf__engine_removed,
                                     .lookup = cf__lookup, .save = cf__save, .restore_batch = cf__restore_batch,
                                     .restore_cancel = cf__restore_cancel, .evict = cf__evict, .usage = cf__usage};
  *out = dp;
  return 0;
fail:
  cf_store_close(dp->store);
  if (dp->be) cf_backend_free(dp->be);
  if (dp->model) cf_model_free(dp->model);
  free(dp);
  return rc;
}

const cf_service_backend_t *cf_dataplane_backend(cf_dataplane_t *dp) { return &dp->hooks; }

void cf_dataplane_reload(cf_dataplane_t *dp) {
  if (dp) cf_batch_set_rates(dp->batch, dp->cfg->cpu_read_gbps * 1e9 / 8, dp->cfg->ssd_read_gbps * 1e9 / 8);
}

void cf_dataplane_quiesce(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_batch_quiesce(dp->batch);
  cf__drain_events(dp);
}

static void cf__async_closed(uv_handle_t *h) {
  cf_dataplane_t *dp = h->data;
  pthread_mutex_destroy(&dp->mu);
  free(dp);
}

void cf_dataplane_close(cf_dataplane_t *dp) {
  if (!dp) return;
  cf_batch_stop(dp->batch);
  cf__drain_events(dp);
  cf_store_close(dp->store);
  cf_backend_free(dp->be);
  cf_model_free(dp->model);
  uv_close((uv_handle_t *)&dp->async, cf__async_closed);
}
