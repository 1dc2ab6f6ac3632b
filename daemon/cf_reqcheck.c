/* cf_reqcheck — request field checks shared by cf_service's handlers and the wire fuzzer. */
#include "cf_reqcheck.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cf_rpc.h"
#include "gpu/cf_gpu.h"
#include "ipc/cf_kvmap.h"
#include "util/cf_err.h"
#include "util/cf_hex.h"

size_t cf_reqcheck_dtype_size(int dt) {
  switch (dt) {
    case CACHEFLOW__V1__DTYPE__DTYPE_F32: return 4;
    case CACHEFLOW__V1__DTYPE__DTYPE_BF16: case CACHEFLOW__V1__DTYPE__DTYPE_F16: return 2;
    default: return 0;
  }
}

const char *cf_reqcheck_dtype_name(int dt) {
  return dt == CACHEFLOW__V1__DTYPE__DTYPE_F32 ? "F32" : dt == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "BF16"
       : dt == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? "F16" : "UNSPECIFIED";
}
/* The config's spelling (kv_dtype = ...). */
static const char *cf__dtype_lower(int dt) {
  return dt == CACHEFLOW__V1__DTYPE__DTYPE_F32 ? "f32" : dt == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "bf16" : "f16";
}

/* 1 (why filled, naming both) when a request's 16-byte fingerprint is not the served model's. */
static int cf__fingerprint_differs(const cf_model_info_t *model, const uint8_t *fp, char *why, size_t cap) {
  char hex[33], hex2[33];
  if (!memcmp(fp, model->fingerprint, 16)) return 0;
  cf_hex(fp, 16, hex);
  cf_hex(model->fingerprint, 16, hex2);
  snprintf(why, cap, "model_fingerprint %s does not match the daemon's model %s (%s)", hex, hex2, model->dir);
  return 1;
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

/* After checking that its four strides are whole elements and nest without overlap
 * (cf_kv_layout_check: any order, vLLM's CPU layout with K dimension-major included). */
int cf_reqcheck_layout_extent(const Cacheflow__V1__LayerLayout *L, uint64_t extent[2], char *why, size_t cap) {
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

int cf_reqcheck_register_fields(const cf_config_t *cfg, const Cacheflow__V1__RegisterEngineRequest *r,
                                char *why, size_t cap) {
  if (r->model_fingerprint.len != 16) { snprintf(why, cap, "model_fingerprint must be 16 bytes, got %zu", r->model_fingerprint.len); return -1; }
  if (strlen(r->name) > CF_REQCHECK_MAX_NAME) { snprintf(why, cap, "name longer than %d bytes", CF_REQCHECK_MAX_NAME); return -1; }
  if (r->n_layers == 0 || r->n_layers > CF_REQCHECK_MAX_LAYERS) { snprintf(why, cap, "layers: %zu given, allowed 1 .. %d", r->n_layers, CF_REQCHECK_MAX_LAYERS); return -1; }
  uint8_t seen[CF_REQCHECK_MAX_LAYERS] = {0};
  const Cacheflow__V1__LayerLayout *L0 = r->layers[0];
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    if (L->layer >= r->n_layers) { snprintf(why, cap, "layers[%zu].layer = %u out of range 0 .. %zu", i, L->layer, r->n_layers - 1); return -1; }
    if (seen[L->layer]++) { snprintf(why, cap, "layer %u declared twice", L->layer); return -1; }
    size_t esz = cf_reqcheck_dtype_size(L->dtype);
    if (!esz) { snprintf(why, cap, "layer %u: dtype %d is not F32, BF16 or F16", L->layer, (int)L->dtype); return -1; }
    if (L->block_size < 1 || L->block_size > CF_REQCHECK_MAX_BLOCK_SIZE) { snprintf(why, cap, "layer %u: block_size %u out of range 1 .. %d", L->layer, L->block_size, CF_REQCHECK_MAX_BLOCK_SIZE); return -1; }
    if (L->num_blocks < 1 || L->num_blocks > (uint64_t)cfg->max_blocks) { snprintf(why, cap, "layer %u: num_blocks %u out of range 1 .. %lld (max_blocks)", L->layer, L->num_blocks, (long long)cfg->max_blocks); return -1; }
    if (L->block_size != L0->block_size || L->num_blocks != L0->num_blocks || L->dtype != L0->dtype) {
      snprintf(why, cap, "layer %u: block_size/num_blocks/dtype differ from layer %u's (all layers must share them)", L->layer, L0->layer);
      return -1;
    }
    if (L->num_kv_heads < 1 || L->head_dim < 1 || L->num_kv_heads > 1024 || L->head_dim > 4096) { snprintf(why, cap, "layer %u: num_kv_heads %u / head_dim %u out of range", L->layer, L->num_kv_heads, L->head_dim); return -1; }
    uint64_t ext[2];
    if (cf_reqcheck_layout_extent(L, ext, why, cap)) return -1;
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

int cf_reqcheck_register_model(const cf_config_t *cfg, const cf_model_info_t *model, int kv_dtype,
                               const Cacheflow__V1__RegisterEngineRequest *r, int *heads_out, char *why, size_t cap) {
  if (!model) { snprintf(why, cap, "no model configured: start cacheflowd with --model DIR"); return CF_RPC_FAILED_PRECONDITION; }
  if (cf__fingerprint_differs(model, r->model_fingerprint.data, why, cap)) return CF_RPC_INVALID_ARGUMENT;
  if ((int)r->n_layers != model->n_layers) {
    snprintf(why, cap, "layers: %zu given, the model has %d", r->n_layers, model->n_layers);
    return CF_RPC_INVALID_ARGUMENT;
  }
  /* tensor parallelism: a shard holds model KV heads [kv_head_start, + kv_head_count) */
  int heads = r->kv_head_count ? (int)r->kv_head_count : model->n_kv_heads;
  if ((uint64_t)r->kv_head_start + (uint64_t)heads > (uint64_t)model->n_kv_heads) {
    snprintf(why, cap, "kv_head_start %u + kv_head_count %d exceeds the model's %d KV heads",
             r->kv_head_start, heads, model->n_kv_heads);
    return CF_RPC_INVALID_ARGUMENT;
  }
  if (heads < model->n_kv_heads && !r->tp_group) {
    snprintf(why, cap, "a shard engine (KV heads %u..%u of %d) needs a nonzero tp_group shared by "
             "its engine's ranks (their saves are assembled into whole cells)", r->kv_head_start,
             r->kv_head_start + heads - 1, model->n_kv_heads);
    return CF_RPC_INVALID_ARGUMENT;
  }
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    if ((int)L->num_kv_heads != heads || (int)L->head_dim != model->head_dim) {
      snprintf(why, cap, "layer %u: num_kv_heads %u, head_dim %u; %s %d, %d", L->layer,
               L->num_kv_heads, L->head_dim, r->kv_head_count ? "the shard (kv_head_count) has" : "the model has",
               heads, model->head_dim);
      return CF_RPC_INVALID_ARGUMENT;
    }
    uint64_t ext[2];
    cf_reqcheck_layout_extent(L, ext, why, cap); /* validated already */
    for (int kv = 0; kv < 2; kv++) {
      const Cacheflow__V1__KvBuffer *b = kv ? L->v : L->k;
      int ipc = b->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC;
      /* CUDA IPC buffers are opened (UUID checked against the daemon's device) by engine_added:
       * the GPU executor's */
      if (ipc && !cfg->gpu_executor) {
        snprintf(why, cap, "layer %u: CUDA IPC buffers need the GPU executor "
                 "(gpu_executor = on with backend = cuda; this daemon runs with gpu_executor = off); use shm_path", L->layer);
        return CF_RPC_FAILED_PRECONDITION;
      }
      /* every buffer of one kind: each is compared with layer 0's K (checked first) */
      if (ipc != (r->layers[0]->k->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC)) {
        snprintf(why, cap, "layer %u: CUDA IPC and shm_path buffers mixed in one engine; register all of one kind", L->layer);
        return CF_RPC_INVALID_ARGUMENT;
      }
      if (ipc) continue;
      if (cf__check_shm(b, ext[kv], L->layer, kv ? "V" : "K", why, cap)) return CF_RPC_INVALID_ARGUMENT;
    }
  }
  /* loaded cells are copied bit for bit: the engine's KV must be the store's dtype. A precondition
   * of this daemon (its kv_dtype), not a malformed request. */
  if (kv_dtype && (int)r->layers[0]->dtype != kv_dtype) {
    snprintf(why, cap, "engine KV dtype %s, but this daemon's store holds %s cells "
             "(kv_dtype); register %s buffers or run a daemon with kv_dtype = %s on another store_dir",
             cf_reqcheck_dtype_name(r->layers[0]->dtype), cf_reqcheck_dtype_name(kv_dtype),
             cf_reqcheck_dtype_name(kv_dtype), cf__dtype_lower(r->layers[0]->dtype));
    return CF_RPC_FAILED_PRECONDITION;
  }
  *heads_out = heads;
  return 0;
}

int cf_reqcheck_tokens(const cf_config_t *cfg, const cf_model_info_t *model, const uint32_t *t, size_t n,
                       char *why, size_t cap) {
  if (n == 0) { snprintf(why, cap, "token_ids is empty"); return -1; }
  if (n > (size_t)cfg->max_request_tokens) {
    snprintf(why, cap, "token_ids: %zu tokens, allowed 1 .. %lld (max_request_tokens)", n, (long long)cfg->max_request_tokens);
    return -1;
  }
  if (model)
    for (size_t i = 0; i < n; i++)
      if (t[i] >= (uint32_t)model->vocab) {
        snprintf(why, cap, "token_ids[%zu] = %u out of range 0 .. %d (vocab_size)", i, t[i], model->vocab - 1);
        return -1;
      }
  return 0;
}

int cf_reqcheck_blocks(uint32_t block_size, uint32_t num_blocks, size_t ntok, const uint32_t *b, size_t nb,
                       char *why, size_t cap) {
  size_t need = (ntok + block_size - 1) / block_size;
  if (nb != need) {
    snprintf(why, cap, "block_ids: %zu given, %zu tokens need %zu blocks of %u", nb, ntok, need, block_size);
    return -1;
  }
  for (size_t i = 0; i < nb; i++)
    if (b[i] >= num_blocks) {
      snprintf(why, cap, "block_ids[%zu] = %u out of range 0 .. %u", i, b[i], num_blocks - 1);
      return -1;
    }
  return 0;
}

int cf_reqcheck_restore_fields(const Cacheflow__V1__RestoreRequest *r, char *why, size_t cap) {
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

int cf_reqcheck_evict(const Cacheflow__V1__EvictRequest *r, char *why, size_t cap) {
  if ((int)r->tier < 0 || (int)r->tier > CACHEFLOW__V1__TIER__TIER_SSD) { /* the remote tier evicts by Redis's policy */
    snprintf(why, cap, "tier %d unknown (0 = all, 1 = cpu, 2 = ssd)", (int)r->tier);
    return -1;
  }
  return 0;
}

/* ---------------------------------------------------------------- OfferWeights */
static int cf__name_cmp(const void *a, const void *b) {
  const Cacheflow__V1__WeightTensor *x = *(const Cacheflow__V1__WeightTensor *const *)a,
                                    *y = *(const Cacheflow__V1__WeightTensor *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->tp_rank > y->tp_rank) - (x->tp_rank < y->tp_rank);
}

/* One tensor's fields: name, shape, dtype, strides (contiguous), where it lives, its shard. */
static int cf__check_wtensor(const Cacheflow__V1__WeightTensor *q, size_t i, char *why, size_t cap) {
  size_t nl = strlen(q->name);
  if (nl == 0 || nl > CF_REQCHECK_MAX_WNAME) { snprintf(why, cap, "tensors[%zu]: name must be 1 .. %d bytes", i, CF_REQCHECK_MAX_WNAME); return -1; }
  size_t esz = cf_reqcheck_dtype_size(q->dtype);
  if (!esz) { snprintf(why, cap, "tensor '%s': dtype %d is not F32, BF16 or F16", q->name, (int)q->dtype); return -1; }
  /* 3: vLLM's fused MoE experts [E][rows][cols] */
  if (q->n_shape < 1 || q->n_shape > 3) { snprintf(why, cap, "tensor '%s': %zu dimensions (1 to 3 expected)", q->name, q->n_shape); return -1; }
  uint64_t elems = 1;
  for (size_t d = 0; d < q->n_shape; d++) {
    if (q->shape[d] < 1 || q->shape[d] > (1ull << 32)) { snprintf(why, cap, "tensor '%s': shape[%zu] = %llu out of range 1 .. 2^32", q->name, d, (unsigned long long)q->shape[d]); return -1; }
    elems *= q->shape[d];
  }
  if (elems > (1ull << 40)) { snprintf(why, cap, "tensor '%s': %llu elements (at most 2^40)", q->name, (unsigned long long)elems); return -1; }
  if (q->n_strides) { /* only row-major contiguous tensors: the backends read rows as they are */
    if (q->n_strides != q->n_shape) { snprintf(why, cap, "tensor '%s': %zu strides for %zu dimensions", q->name, q->n_strides, q->n_shape); return -1; }
    uint64_t want = esz;
    for (size_t d = q->n_shape; d-- > 0;) {
      if (q->strides[d] != want && q->shape[d] != 1) {
        snprintf(why, cap, "tensor '%s': stride[%zu] = %llu bytes, a contiguous row-major tensor has %llu (offer contiguous tensors)",
                 q->name, d, (unsigned long long)q->strides[d], (unsigned long long)want);
        return -1;
      }
      want *= q->shape[d];
    }
  }
  if (q->offset % esz) { snprintf(why, cap, "tensor '%s': offset %llu is not a multiple of its element size %zu", q->name, (unsigned long long)q->offset, esz); return -1; }
  if (q->offset > UINT64_MAX - elems * esz) { snprintf(why, cap, "tensor '%s': offset %llu overflows", q->name, (unsigned long long)q->offset); return -1; }
  if (q->tp_size > CF_REQCHECK_MAX_TP) { snprintf(why, cap, "tensor '%s': tp_size %u out of range 0 .. %d", q->name, q->tp_size, CF_REQCHECK_MAX_TP); return -1; }
  if (q->tp_rank >= (q->tp_size ? q->tp_size : 1)) { snprintf(why, cap, "tensor '%s': tp_rank %u not below tp_size %u", q->name, q->tp_rank, q->tp_size ? q->tp_size : 1); return -1; }
  switch (q->location_case) {
    case CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_SHM_PATH:
      if (q->shm_path[0] != '/' || strlen(q->shm_path) >= 512) {
        snprintf(why, cap, "tensor '%s': shm_path '%.64s' must be an absolute path under 512 bytes", q->name, q->shm_path);
        return -1;
      }
      return 0;
    case CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_CUDA_IPC: {
      uint8_t u[CF_GPU_UUID_BYTES];
      if (!q->cuda_ipc || q->cuda_ipc->ipc_handle.len != 64) { snprintf(why, cap, "tensor '%s': cuda_ipc.ipc_handle must be exactly 64 bytes", q->name); return -1; }
      if (cf_gpu_uuid_parse(q->cuda_ipc->gpu_uuid, u)) { snprintf(why, cap, "tensor '%s': cuda_ipc.%s", q->name, cf_errmsg()); return -1; }
      return 0;
    }
    default:
      snprintf(why, cap, "tensor '%s': neither shm_path nor cuda_ipc given", q->name);
      return -1;
  }
}

int cf_reqcheck_offer_fields(const Cacheflow__V1__OfferWeightsRequest *r, char *why, size_t cap) {
  if (!r->engine_id) { snprintf(why, cap, "engine_id 0: offer weights as a registered engine (RegisterEngine's engine_id)"); return -1; }
  if (r->model_fingerprint.len != 16) { snprintf(why, cap, "model_fingerprint must be 16 bytes, got %zu", r->model_fingerprint.len); return -1; }
  if (r->n_tensors < 1 || r->n_tensors > CF_REQCHECK_MAX_WTENSORS) { snprintf(why, cap, "tensors: %zu given, allowed 1 .. %d", r->n_tensors, CF_REQCHECK_MAX_WTENSORS); return -1; }
  if (r->samples > 4096) { snprintf(why, cap, "samples %u out of range 0 .. 4096", r->samples); return -1; }
  for (size_t i = 0; i < r->n_tensors; i++)
    if (cf__check_wtensor(r->tensors[i], i, why, cap)) return -1;
  /* one tensor per (name, tp_rank): sorted copy, neighbours compared */
  const Cacheflow__V1__WeightTensor **s = malloc(r->n_tensors * sizeof *s);
  if (!s) { snprintf(why, cap, "out of memory checking %zu tensors", r->n_tensors); return -1; }
  memcpy(s, r->tensors, r->n_tensors * sizeof *s);
  qsort(s, r->n_tensors, sizeof *s, cf__name_cmp);
  int rc = 0;
  for (size_t i = 1; i < r->n_tensors && !rc; i++)
    if (!cf__name_cmp(&s[i - 1], &s[i])) {
      snprintf(why, cap, "tensor '%s' (tp_rank %u) offered twice", s[i]->name, s[i]->tp_rank);
      rc = -1;
    }
  free(s);
  return rc;
}

int cf_reqcheck_offer_model(const cf_model_info_t *model, const Cacheflow__V1__OfferWeightsRequest *r, char *why,
                            size_t cap) {
  if (!model) { snprintf(why, cap, "no model configured: start cacheflowd with --model DIR"); return CF_RPC_FAILED_PRECONDITION; }
  if (cf__fingerprint_differs(model, r->model_fingerprint.data, why, cap)) return CF_RPC_FAILED_PRECONDITION;
  for (size_t i = 0; i < r->n_tensors; i++) {
    const Cacheflow__V1__WeightTensor *q = r->tensors[i];
    if (q->location_case != CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_SHM_PATH) continue;
    struct stat st;
    uint64_t bytes = cf_reqcheck_dtype_size(q->dtype); /* shapes checked: at most 2^40 elements */
    for (size_t d = 0; d < q->n_shape; d++) bytes *= q->shape[d];
    if (stat(q->shm_path, &st) != 0) { snprintf(why, cap, "tensor '%s': shm_path %s: %s", q->name, q->shm_path, strerror(errno)); return CF_RPC_INVALID_ARGUMENT; }
    if (!S_ISREG(st.st_mode)) { snprintf(why, cap, "tensor '%s': shm_path %s is not a regular file", q->name, q->shm_path); return CF_RPC_INVALID_ARGUMENT; }
    if ((uint64_t)st.st_size < q->offset + bytes) {
      snprintf(why, cap, "tensor '%s': shm_path %s is %lld bytes; the tensor needs offset %llu + %llu", q->name,
               q->shm_path, (long long)st.st_size, (unsigned long long)q->offset, (unsigned long long)bytes);
      return CF_RPC_INVALID_ARGUMENT;
    }
  }
  return 0;
}
