/* cf_reqcheck — the checks of each request's fields, out of the handlers' way.
 *
 * No gRPC and no libuv here: cf_service's handlers and validators call these, and so does the
 * wire fuzzer (tests/fuzz/fuzz_wire.c), which feeds arbitrary bytes through the same unpacking
 * and the same functions. What needs the live engine table (finding an engine, taking a slot)
 * stays in cf_service; what an engine's registration fixed (block_size, num_blocks) is passed in.
 *
 * Each check fills `why` (a detail naming what was wrong) on refusal and returns either -1
 * (the validator form: cf_rpc answers INVALID_ARGUMENT) or a CF_RPC_* status, as said below.
 */
#ifndef CF_REQCHECK_H
#define CF_REQCHECK_H

#include <stddef.h>
#include <stdint.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_config.h"
#include "cf_model_info.h"

#define CF_REQCHECK_MAX_LAYERS 1024
#define CF_REQCHECK_MAX_BLOCK_SIZE 4096
#define CF_REQCHECK_MAX_NAME 128

/* Element bytes of a proto DType (0: not F32, BF16 or F16). */
size_t cf_reqcheck_dtype_size(int dt);
const char *cf_reqcheck_dtype_name(int dt);

/* RegisterEngine's field checks that need only the config (layers numbered once each, one
 * block geometry and dtype, strides that nest, buffers well formed). 0 or -1. */
int cf_reqcheck_register_fields(const cf_config_t *cfg, const Cacheflow__V1__RegisterEngineRequest *r,
                                char *why, size_t cap);

/* RegisterEngine against the daemon's model and store, after the field checks passed: the
 * fingerprint, layer count, KV heads (a TP shard's range), head_dim, buffer kinds, shm files big
 * enough, and the store's dtype (kv_dtype: proto DType, 0 = anything). model may be NULL.
 * 0 with *heads = the engine's KV heads, or a CF_RPC_* status. */
int cf_reqcheck_register_model(const cf_config_t *cfg, const cf_model_info_t *model, int kv_dtype,
                               const Cacheflow__V1__RegisterEngineRequest *r, int *heads, char *why, size_t cap);

/* The bytes each plane (K, V) of a layer spans from its offset. 0 or -1. */
int cf_reqcheck_layout_extent(const Cacheflow__V1__LayerLayout *L, uint64_t extent[2], char *why, size_t cap);

/* token_ids of Lookup/Save/Restore: 1 .. max_request_tokens, each < the model's vocab. 0 or -1. */
int cf_reqcheck_tokens(const cf_config_t *cfg, const cf_model_info_t *model, const uint32_t *t, size_t n,
                       char *why, size_t cap);

/* block_ids of Save/Restore for an engine of that geometry: one per block_size tokens, each in
 * range. 0 or -1. */
int cf_reqcheck_blocks(uint32_t block_size, uint32_t num_blocks, size_t ntok, const uint32_t *b, size_t nb,
                       char *why, size_t cap);

/* Restore's fields that need no state (policy, priority, deadline, present_tokens). 0 or -1. */
int cf_reqcheck_restore_fields(const Cacheflow__V1__RestoreRequest *r, char *why, size_t cap);

/* OfferWeights' fields (borrowed weights): engine_id set, a 16-byte fingerprint, 1 ..
 * CF_REQCHECK_MAX_WTENSORS tensors, each named (<= CF_REQCHECK_MAX_WNAME bytes), 1-2 dimensions
 * of 1 .. 2^32, F32/BF16/F16, strides absent or row-major contiguous, an element-aligned offset,
 * shm_path absolute or cuda_ipc well formed, tp_rank < tp_size <= CF_REQCHECK_MAX_TP, no
 * (name, tp_rank) twice; samples <= 4096. 0 or -1. */
#define CF_REQCHECK_MAX_WTENSORS 65536
#define CF_REQCHECK_MAX_WNAME 160
#define CF_REQCHECK_MAX_TP 64
int cf_reqcheck_offer_fields(const Cacheflow__V1__OfferWeightsRequest *r, char *why, size_t cap);
/* OfferWeights against the served model: the fingerprint (FAILED_PRECONDITION), every shm file a
 * regular file holding its tensor (INVALID_ARGUMENT). 0 or a CF_RPC_* status. model may be NULL. */
int cf_reqcheck_offer_model(const cf_model_info_t *model, const Cacheflow__V1__OfferWeightsRequest *r, char *why,
                            size_t cap);

/* Admin.Evict's tier. 0 or -1. */
int cf_reqcheck_evict(const Cacheflow__V1__EvictRequest *r, char *why, size_t cap);

#endif
