/* cf_service — engine table, request checks that need state, Save worker, health, Admin. */
#include "cf_service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cf_trace.h"
#include "cf_worker.h"
#include "gpu/cf_gpu.h"
#include "grpc/health/v1/health.pb-c.h"
#include "store/cf_remote.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__MAX_LAYERS 1024
#define CF__MAX_BLOCK_SIZE 4096
#define CF__MAX_NAME 128
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
  cf_planner_t *planner;            /* borrowed: its re-fit's state for GetStats */
  cf__watch_t *watchers;
  int draining;
  /* counters read by other threads */
  uint32_t n_engines;
  double t_start;
};

static double cf__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *cf__dtype_name(int dt) {
  return dt == CACHEFLOW__V1__DTYPE__DTYPE_F32 ? "F32" : dt == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "BF16"
       : dt == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? "F16" : "UNSPECIFIED";
}
/* The config's spelling (kv_dtype = ...). */
static const char *cf__dtype_lower(int dt) {
  return dt == CACHEFLOW__V1__DTYPE__DTYPE_F32 ? "f32" : dt == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "bf16" : "f16";
}
static size_t cf__dtype_size(int dt) {
  switch (dt) {
    case CACHEFLOW__V1__DTYPE__DTYPE_F32: return 4;
    case CACHEFLOW__V1__DTYPE__DTYPE_BF16: case CACHEFLOW__V1__DTYPE__DTYPE_F16: return 2;
    default: return 0;
  }
}

/* ---------------------------------------------------------------- engines */
static void cf__engine_unref(cf_service_t *s, cf_engine_t *e) {
  if (--e->refs) return;
  if (s->be.engine_removed) s->be.engine_removed(s->be.ctx, e);
  for (int l = 0; l < e->n_layers; l++) { free(e->layers[l].k.shm_path); free(e->layers[l].v.shm_path); }
  free(e->layers);
  free(e);
}

/* The batcher frees a restore: its engine reference goes. */
static void cf__restore_release(void *arg, cf_restore_t *r) { cf__engine_unref(arg, r->engine); }

static cf_engine_t *cf__engine_find(cf_service_t *s, uint64_t id) {
  if (!id) return NULL;
  for (int i = 0; i < s->max_engines; i++)
    if (s->engines[i] && s->engines[i]->id == id) return s->engines[i];
  return NULL;
}

/* The proto's layout of one layer as lib/ipc's (heads = the engine's; its rows checked as such). */
static void cf__proto_layout(const Cacheflow__V1__LayerLayout *L, cf_kv_layout_t *lay) {
  cf_dtype_t dt = L->dtype == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? CF_DT_BF16
                  : L->dtype == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? CF_DT_F16 : CF_DT_F32;
  *lay = (cf_kv_layout_t){.n_layers = 1, .num_blocks = (int)L->num_blocks, .block_size = (int)L->block_size,
                          .n_kv_heads = (int)L->num_kv_heads, .head_dim = (int)L->head_dim, .dtype = dt,
                          .block_stride = L->block_stride, .token_stride = L->token_stride,
                          .head_stride = L->head_stride, .dim_stride = L->dim_stride};
  if (L->v_strides)
    lay->vs = (cf_kv_strides_t){L->v_strides->block_stride, L->v_strides->token_stride, L->v_strides->head_stride,
                                L->v_strides->dim_stride};
}

/* The bytes each plane (K, V) of one layer spans from its offset, after checking that its four
 * strides are whole elements and nest without overlap (cf_kv_layout_check: any order, vLLM's
 * CPU layout with K dimension-major included). */
static int cf__layout_extent(const Cacheflow__V1__LayerLayout *L, uint64_t extent[2], char *why, size_t cap) {
  cf_kv_layout_t lay;
  cf__proto_layout(L, &lay);
  if (L->v_strides && !(L->v_strides->block_stride | L->v_strides->token_stride | L->v_strides->head_stride |
                        L->v_strides->dim_stride)) {
    snprintf(why, cap, "layer %u: v_strides set but all zero (leave it unset for V = K's strides)", L->layer);
    return -1;
  }
  if (cf_kv_layout_check(&lay, NULL)) { snprintf(why, cap, "layer %u: %s", L->layer, cf_errmsg()); return -1; }
  extent[0] = cf_kv_layout_extent(&lay, 0);
  extent[1] = cf_kv_layout_extent(&lay, 1);
  return 0;
}

static int cf__check_kvbuf(const Cacheflow__V1__KvBuffer *b, uint32_t layer, const char *kv, char *why, size_t cap) {
  if (!b) { snprintf(why, cap, "layer %u: %s buffer missing", layer, kv); return -1; }
  switch (b->location_case) {
    case CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH:
      if (b->shm_path[0] != '/' || strlen(b->shm_path) >= 512) {
        snprintf(why, cap, "layer %u: %s shm_path '%.64s' must be an absolute path under 512 bytes", layer, kv, b->shm_path);
        return -1;
      }
      return 0;
    case CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC:
      if (!b->cuda_ipc || b->cuda_ipc->ipc_handle.len != 64) {
        snprintf(why, cap, "layer %u: %s cuda_ipc.ipc_handle must be exactly 64 bytes", layer, kv);
        return -1;
      }
      if (strlen(b->cuda_ipc->gpu_uuid) == 0 || strlen(b->cuda_ipc->gpu_uuid) >= 64) {
        snprintf(why, cap, "layer %u: %s cuda_ipc.gpu_uuid must be 1 .. 63 bytes", layer, kv);
        return -1;
      }
      { /* the format too, whatever gpu_executor says: a typo is an invalid argument */
        uint8_t u[CF_GPU_UUID_BYTES];
        if (cf_gpu_uuid_parse(b->cuda_ipc->gpu_uuid, u)) {
          snprintf(why, cap, "layer %u: %s cuda_ipc.%s", layer, kv, cf_errmsg());
          return -1;
        }
      }
      return 0;
    default:
      snprintf(why, cap, "layer %u: %s buffer has neither shm_path nor cuda_ipc", layer, kv);
      return -1;
  }
}

/* Field checks of RegisterEngine that need only the config. */
static int cf__v_register(const ProtobufCMessage *m, void *user, char *why, size_t cap) {
  const cf_service_t *s = user;
  const Cacheflow__V1__RegisterEngineRequest *r = (const void *)m;
  if (r->model_fingerprint.len != 16) { snprintf(why, cap, "model_fingerprint must be 16 bytes, got %zu", r->model_fingerprint.len); return -1; }
  if (strlen(r->name) > CF__MAX_NAME) { snprintf(why, cap, "name longer than %d bytes", CF__MAX_NAME); return -1; }
  if (r->n_layers == 0 || r->n_layers > CF__MAX_LAYERS) { snprintf(why, cap, "layers: %zu given, allowed 1 .. %d", r->n_layers, CF__MAX_LAYERS); return -1; }
  uint8_t seen[CF__MAX_LAYERS] = {0};
  const Cacheflow__V1__LayerLayout *L0 = r->layers[0];
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    if (L->layer >= r->n_layers) { snprintf(why, cap, "layers[%zu].layer = %u out of range 0 .. %zu", i, L->layer, r->n_layers - 1); return -1; }
    if (seen[L->layer]++) { snprintf(why, cap, "layer %u declared twice", L->layer); return -1; }
    size_t esz = cf__dtype_size(L->dtype);
    if (!esz) { snprintf(why, cap, "layer %u: dtype %d is not F32, BF16 or F16", L->layer, (int)L->dtype); return -1; }
    if (L->block_size < 1 || L->block_size > CF__MAX_BLOCK_SIZE) { snprintf(why, cap, "layer %u: block_size %u out of range 1 .. %d", L->layer, L->block_size, CF__MAX_BLOCK_SIZE); return -1; }
    if (L->num_blocks < 1 || L->num_blocks > (uint64_t)s->cfg->max_blocks) { snprintf(why, cap, "layer %u: num_blocks %u out of range 1 .. %lld (max_blocks)", L->layer, L->num_blocks, (long long)s->cfg->max_blocks); return -1; }
    if (L->block_size != L0->block_size || L->num_blocks != L0->num_blocks || L->dtype != L0->dtype) {
      snprintf(why, cap, "layer %u: block_size/num_blocks/dtype differ from layer %u's (all layers must share them)", L->layer, L0->layer);
      return -1;
    }
    if (L->num_kv_heads < 1 || L->head_dim < 1 || L->num_kv_heads > 1024 || L->head_dim > 4096) { snprintf(why, cap, "layer %u: num_kv_heads %u / head_dim %u out of range", L->layer, L->num_kv_heads, L->head_dim); return -1; }
    uint64_t ext[2];
    if (cf__layout_extent(L, ext, why, cap)) return -1;
    if (cf__check_kvbuf(L->k, L->layer, "K", why, cap) || cf__check_kvbuf(L->v, L->layer, "V", why, cap)) return -1;
  }
  return 0;
}

/* The shared-memory file must exist, be a regular file and hold the whole layout. */
static int cf__check_shm(const Cacheflow__V1__KvBuffer *b, uint64_t extent, uint32_t layer, const char *kv, char *why, size_t cap) {
  struct stat st;
  if (stat(b->shm_path, &st) != 0) { snprintf(why, cap, "layer %u: %s shm_path %s: %s", layer, kv, b->shm_path, strerror(errno)); return -1; }
  if (!S_ISREG(st.st_mode)) { snprintf(why, cap, "layer %u: %s shm_path %s is not a regular file", layer, kv, b->shm_path); return -1; }
  if (b->offset > UINT64_MAX - extent || (uint64_t)st.st_size < b->offset + extent) {
    snprintf(why, cap, "layer %u: %s shm_path %s is %lld bytes; the layout needs offset %llu + %llu", layer, kv,
             b->shm_path, (long long)st.st_size, (unsigned long long)b->offset, (unsigned long long)extent);
    return -1;
  }
  return 0;
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
  char why[512], hex[33], hex2[33];
  cf_engine_t *e = NULL;
  if (!s->model) { cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "no model configured: start cacheflowd with --model DIR"); goto out; }
  if (memcmp(r->model_fingerprint.data, s->model->fingerprint, 16)) {
    cf_model_fingerprint_hex(r->model_fingerprint.data, hex);
    cf_model_fingerprint_hex(s->model->fingerprint, hex2);
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "model_fingerprint %s does not match the daemon's model %s (%s)", hex, hex2, s->model->dir);
    goto out;
  }
  if ((int)r->n_layers != s->model->n_layers) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "layers: %zu given, the model has %d", r->n_layers, s->model->n_layers);
    goto out;
  }
  /* tensor parallelism: a shard holds model KV heads [kv_head_start, + kv_head_count) */
  int heads = r->kv_head_count ? (int)r->kv_head_count : s->model->n_kv_heads;
  if ((uint64_t)r->kv_head_start + (uint64_t)heads > (uint64_t)s->model->n_kv_heads) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "kv_head_start %u + kv_head_count %d exceeds the model's %d KV heads",
                  r->kv_head_start, heads, s->model->n_kv_heads);
    goto out;
  }
  if (heads < s->model->n_kv_heads && !r->tp_group) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "a shard engine (KV heads %u..%u of %d) needs a nonzero tp_group shared by "
                  "its engine's ranks (their saves are assembled into whole cells)", r->kv_head_start,
                  r->kv_head_start + heads - 1, s->model->n_kv_heads);
    goto out;
  }
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    if ((int)L->num_kv_heads != heads || (int)L->head_dim != s->model->head_dim) {
      cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "layer %u: num_kv_heads %u, head_dim %u; %s %d, %d", L->layer,
                    L->num_kv_heads, L->head_dim, r->kv_head_count ? "the shard (kv_head_count) has" : "the model has",
                    heads, s->model->head_dim);
      goto out;
    }
    uint64_t ext[2];
    cf__layout_extent(L, ext, why, sizeof why); /* validated already */
    for (int kv = 0; kv < 2; kv++) {
      const Cacheflow__V1__KvBuffer *b = kv ? L->v : L->k;
      int ipc = b->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC;
      /* CUDA IPC buffers are opened (UUID checked against the daemon's device) by engine_added:
       * the GPU executor's */
      if (ipc && !s->cfg->gpu_executor) {
        cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "layer %u: CUDA IPC buffers need the GPU executor "
                      "(gpu_executor = on with backend = cuda; this daemon runs with gpu_executor = off); use shm_path", L->layer);
        goto out;
      }
      /* every buffer of one kind: each is compared with layer 0's K (checked first) */
      if (ipc != (r->layers[0]->k->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC)) {
        cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "layer %u: CUDA IPC and shm_path buffers mixed in one engine; "
                      "register all of one kind", L->layer);
        goto out;
      }
      if (ipc) continue;
      if (cf__check_shm(b, ext[kv], L->layer, kv ? "V" : "K", why, sizeof why)) {
        cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why);
        goto out;
      }
    }
  }
  /* loaded cells are copied bit for bit: the engine's KV must be the store's dtype. A precondition
   * of this daemon (its kv_dtype), not a malformed request. */
  if (s->be.kv_dtype && (int)r->layers[0]->dtype != s->be.kv_dtype) {
    cf_rpc_finish(c, CF_RPC_FAILED_PRECONDITION, "engine KV dtype %s, but this daemon's store holds %s cells "
                  "(kv_dtype); register %s buffers or run a daemon with kv_dtype = %s on another store_dir",
                  cf__dtype_name(r->layers[0]->dtype), cf__dtype_name(s->be.kv_dtype), cf__dtype_name(s->be.kv_dtype),
                  cf__dtype_lower(r->layers[0]->dtype));
    goto out;
  }
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
  e->dtype_size = cf__dtype_size(e->dtype);
  e->head0 = (int)r->kv_head_start;
  e->n_heads = heads;
  e->tp_group = r->tp_group;
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
  if (s->be.engine_added) {
    int rc = s->be.engine_added(s->be.ctx, e);
    if (rc) {
      cf_rpc_finish(c, cf_rpc_status_from_err(rc), "%s: %s", cf_strerror(rc), cf_errmsg());
      /* freed by hand: engine_removed must not run for an engine never added */
      for (int l = 0; l < e->n_layers; l++) { free(e->layers[l].k.shm_path); free(e->layers[l].v.shm_path); }
      free(e->layers);
      free(e);
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
    cf_engine_t *e = s->engines[slot];
    s->engines[slot] = NULL;
    __atomic_fetch_sub(&s->n_engines, 1, __ATOMIC_RELAXED);
    e->gone = 1;
    cf_batcher_cancel_engine(s->batcher, e, e->id);
    CF_INFO("engine unregistered: id=%llu", (unsigned long long)e->id);
    cf__engine_unref(s, e);
    Cacheflow__V1__UnregisterResponse resp = CACHEFLOW__V1__UNREGISTER_RESPONSE__INIT;
    cf_rpc_reply(c, &resp.base);
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

/* ---------------------------------------------------------------- token / block checks */
static int cf__check_tokens(const cf_service_t *s, const uint32_t *t, size_t n, char *why, size_t cap) {
  if (n == 0) { snprintf(why, cap, "token_ids is empty"); return -1; }
  if (n > (size_t)s->cfg->max_request_tokens) {
    snprintf(why, cap, "token_ids: %zu tokens, allowed 1 .. %lld (max_request_tokens)", n, (long long)s->cfg->max_request_tokens);
    return -1;
  }
  if (s->model)
    for (size_t i = 0; i < n; i++)
      if (t[i] >= (uint32_t)s->model->vocab) {
        snprintf(why, cap, "token_ids[%zu] = %u out of range 0 .. %d (vocab_size)", i, t[i], s->model->vocab - 1);
        return -1;
      }
  return 0;
}

static int cf__check_blocks(const cf_engine_t *e, size_t ntok, const uint32_t *b, size_t nb, char *why, size_t cap) {
  size_t need = (ntok + e->block_size - 1) / e->block_size;
  if (nb != need) {
    snprintf(why, cap, "block_ids: %zu given, %zu tokens need %zu blocks of %u", nb, ntok, need, e->block_size);
    return -1;
  }
  for (size_t i = 0; i < nb; i++)
    if (b[i] >= e->num_blocks) {
      snprintf(why, cap, "block_ids[%zu] = %u out of range 0 .. %u", i, b[i], e->num_blocks - 1);
      return -1;
    }
  return 0;
}

/* Common front half of Lookup/Save/Restore: the engine exists, the tokens are in range. */
static cf_engine_t *cf__engine_and_tokens(cf_service_t *s, cf_rpc_call_t *c, uint64_t id, const uint32_t *t, size_t n) {
  char why[512];
  cf_engine_t *e = cf__engine_find(s, id);
  if (!e) { cf_rpc_finish(c, CF_RPC_NOT_FOUND, "engine_id %llu is not registered", (unsigned long long)id); return NULL; }
  if (cf__check_tokens(s, t, n, why, sizeof why)) { cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s", why); return NULL; }
  return e;
}

/* Lookup's answer from the per-tier token counts. */
static void cf__lookup_reply(cf_rpc_call_t *c, const uint32_t per[4]) {
  Cacheflow__V1__LookupResponse resp = CACHEFLOW__V1__LOOKUP_RESPONSE__INIT;
  Cacheflow__V1__TierTokens tt[3], *tp[3];
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
  int rc;
  char err[512];
} cf__lookup_job_t;

static void cf__lookup_work(uv_work_t *w) {
  cf__lookup_job_t *j = w->data;
  j->rc = j->s->be.lookup(j->s->be.ctx, j->e, j->req->token_ids, j->req->n_token_ids, j->per, NULL);
  if (j->rc) snprintf(j->err, sizeof j->err, "%s", cf_errmsg());
}

static void cf__lookup_done(uv_work_t *w, int status) {
  cf__lookup_job_t *j = w->data;
  /* the engine and request first: ending the call may be what lets the daemon close the service */
  cf__engine_unref(j->s, j->e);
  protobuf_c_message_free_unpacked(&j->req->base, NULL);
  if (status) cf_rpc_finish(j->call, CF_RPC_UNAVAILABLE, "lookup: cancelled");
  else if (j->rc) cf_rpc_finish(j->call, cf_rpc_status_from_err(j->rc), "lookup: %s", j->err);
  else cf__lookup_reply(j->call, j->per);
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
    *j = (cf__lookup_job_t){.s = s, .call = c, .e = e, .req = r};
    j->work.data = j;
    e->refs++;
    if (uv_queue_work(s->loop, &j->work, cf__lookup_work, cf__lookup_done) == 0) return; /* j owns m now */
    e->refs--;
    free(j);
    cf_rpc_finish(c, CF_RPC_UNAVAILABLE, "lookup: cannot queue the remote lookup");
    goto out;
  }
  uint32_t per[4] = {0, 0, 0, 0};
  int rc = s->be.lookup(s->be.ctx, e, r->token_ids, r->n_token_ids, per, NULL);
  if (rc) { cf_rpc_finish(c, cf_rpc_status_from_err(rc), "lookup: %s", cf_errmsg()); goto out; }
  cf__lookup_reply(c, per);
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

/* ---------------------------------------------------------------- restore (then cf_batcher) */
static int cf__v_restore(const ProtobufCMessage *m, void *user, char *why, size_t cap) {
  const Cacheflow__V1__RestoreRequest *r = (const void *)m;
  if ((int)r->policy < 0 || (int)r->policy > CACHEFLOW__V1__POLICY__POLICY_OPTIMAL) { snprintf(why, cap, "policy %d unknown (0 .. 6)", (int)r->policy); return -1; }
  if (r->priority < -100 || r->priority > 100) { snprintf(why, cap, "priority %d out of range -100 .. 100", r->priority); return -1; }
  if (r->deadline_us > 3600ull * 1000000) { snprintf(why, cap, "deadline_us %llu over one hour", (unsigned long long)r->deadline_us); return -1; }
  if (r->present_tokens && r->present_tokens >= r->n_token_ids) {
    snprintf(why, cap, "present_tokens %u must be < the %zu token_ids (the engine holds [0, present_tokens); the "
             "restore writes the rest)", r->present_tokens, r->n_token_ids);
    return -1;
  }
  return 0;
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

/* One row per sample; a family's rows are consecutive, its HELP on the first. */
static const struct {
  const char *family, *type, *help, *label_key, *label_value;
  double (*get)(const cf__snap_t *);
} cf__metric_rows[] = {
  {"cacheflow_restores_total", "counter", "Restores accepted.", NULL, NULL, cf__g_restores},
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
};
#define CF__REMOTE_ROWS 12 /* the last rows above */

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
  if ((int)r->tier < 0 || (int)r->tier > CACHEFLOW__V1__TIER__TIER_SSD) { /* the remote tier evicts by Redis's policy */
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "tier %d unknown (0 = all, 1 = cpu, 2 = ssd)", (int)r->tier);
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
  *out = s;
  return 0;
}

void cf_service_set_rpc(cf_service_t *s, cf_rpc_server_t *rpc) { s->rpc = rpc; }

void cf_service_drain(cf_service_t *s) {
  if (s->draining) return;
  s->draining = 1;
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
  for (int i = 0; i < s->max_engines; i++)
    if (s->engines[i]) { cf_engine_t *e = s->engines[i]; s->engines[i] = NULL; cf__engine_unref(s, e); }
  free(s->engines);
  free(s);
}

void cf_service_stats(const cf_service_t *s, cf_service_stats_t *o) {
  memset(o, 0, sizeof *o);
  o->engines = __atomic_load_n(&s->n_engines, __ATOMIC_RELAXED);
  cf_batcher_stats_t bs;
  cf_batcher_stats(s->batcher, &bs);
  o->restores_in_flight = bs.in_flight;
  o->restores_total = bs.restores_total;
  o->batches_total = bs.batches_total;
  o->restores_batched_total = bs.restores_batched_total;
  o->draining = s->draining;
  if (s->be.usage) s->be.usage(s->be.ctx, &o->cpu_bytes, &o->ssd_bytes);
  if (s->be.memory) s->be.memory(s->be.ctx, &o->mem);
}
