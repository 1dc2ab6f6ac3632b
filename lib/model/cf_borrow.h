/* cf_borrow — run on an engine's weights instead of a second copy (issue 18, borrowed weights).
 *
 * An engine offers its parameters as named tensors (vLLM's names and layouts): fused
 * `model.layers.N.self_attn.qkv_proj.weight` [(n_heads + 2 n_kv) hd / tp][hidden] and
 * `mlp.gate_up_proj.weight` [2 inter / tp][hidden] (vLLM's QKVParallelLinear /
 * MergedColumnParallelLinear), or the unfused q_proj/k_proj/v_proj, gate_proj/up_proj of
 * transformers; `o_proj` [hidden][n_heads hd / tp] and `down_proj` [hidden][inter / tp]
 * (row-parallel: a shard holds input columns); norms, `model.embed_tokens`, `model.norm`,
 * `lm_head` whole. A tensor-parallel engine offers each rank's shard (tp_rank of tp_size):
 * column-parallel weights hold their rank's heads / rows (q, k and v each split by heads),
 * row-parallel ones their columns.
 * Mixture-of-experts layers (qwen3_moe, mixtral): the router `<mod>.gate.weight` [E][hidden]
 * whole, and the experts as vLLM's FusedMoE keeps them, `<mod>.experts.w13_weight`
 * [E][2 moe_inter / tp][hidden] (each expert's gate rows, then its up rows) and
 * `<mod>.experts.w2_weight` [E][hidden][moe_inter / tp] (shards hold columns), or transformers'
 * per-expert `<mod>.experts.<e>.{gate,up,down}_proj.weight` (mixtral: w1, w3, w2); <mod> is
 * "mlp", or "block_sparse_moe" (mixtral in vLLM). The CUDA backend does not read borrowed
 * experts yet (cf_borrow_device: CF_EUNSUPPORTED after the check).
 *
 * cf_borrow_check resolves every weight the served checkpoint has to the offered tensors
 * (shapes and dtypes checked, each shard's slice located) and compares `samples` elements of
 * each (deterministic positions spread over the tensor) with the checkpoint, after rounding the
 * checkpoint's value to the tensor's dtype: bit-exact or CF_EMISMATCH naming the tensor and the
 * element. cf_borrow_model then builds a model whose weights POINT INTO the offered memory (no
 * copy): a fused tensor's parts are row slices of it. The CPU backend computes in fp32, so views
 * need fp32 tensors offered whole (tp_size 1); bf16 tensors and TP shards are checked but not
 * viewed (CF_EUNSUPPORTED: the daemon then keeps its own copy, counted in its budget). The CUDA
 * backend computes on device tensors (CUDA IPC) through cf_borrow_device: vLLM's fused bf16
 * matrices are its own layout (written, not run on a GPU).
 */
#ifndef CF_BORROW_H
#define CF_BORROW_H

#include <stdint.h>

#include "model/cf_model.h"
#include "util/cf_dtype.h"

typedef struct {
  const char *name;     /* the engine's parameter name */
  int ndim;             /* 1, 2 or 3 (fused MoE experts) */
  int64_t shape[3];
  cf_dtype_t dtype;     /* CF_DT_F32, CF_DT_BF16 or CF_DT_F16 */
  const void *data;     /* its elements, row-major, mapped into this process (borrowed) */
  int tp_rank, tp_size; /* which shard (0 of 1: the whole tensor) */
} cf_borrow_tensor_t;

typedef struct {
  int weights;          /* checkpoint weights resolved */
  int tensors_used;     /* offered tensors they came from */
  int64_t elements_checked;
  int64_t bytes_viewed; /* weight bytes the borrowed model reads from the engine (not copied) */
} cf_borrow_report_t;

/* Check the offered tensors t[0..n) against checkpoint model m (above). Returns 0, CF_ENOTFOUND
 * (a weight no tensor offers; the detail names the expected name), CF_ESHAPE / CF_EDTYPE
 * (naming the tensor, what it has and what was expected), CF_EMISMATCH (a sampled element
 * differs: tensor, index, both values). */
int cf_borrow_check(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples,
                    cf_borrow_report_t *rep);

/* cf_borrow_check, then a model with m's config and fingerprint whose weights are views of the
 * offered tensors (free with cf_borrow_free; the tensors must outlive it). CF_EUNSUPPORTED when
 * a weight is not an fp32 whole tensor (above). */
int cf_borrow_model(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples,
                    cf_model_t **out, cf_borrow_report_t *rep);
void cf_borrow_free(cf_model_t *b);

/* Device tensors (a GPU engine's, opened with CUDA IPC): `data` are device addresses and
 * fetch(ctx, src, dst, bytes) copies sampled elements to the host (0 or CF_E*). */
typedef int (*cf_borrow_fetch_fn)(void *ctx, const void *src, void *dst, size_t bytes);
/* Where the CUDA backend's matrices are in the engine's memory: its own layout is vLLM's (bf16,
 * [q; k; v] rows in wqkv, [gate; up] in wgu), so fused tensors are used as they are. */
typedef struct { const void *wqkv, *wo, *wgu, *wdown; } cf_borrow_dev_layer_t;
typedef struct cf_borrow_dev_s {
  const void *embed;                  /* [vocab][hidden] bf16 */
  cf_borrow_dev_layer_t *layers;      /* [n_layers] */
} cf_borrow_dev_t;
/* cf_borrow_check over device tensors, then their device addresses for the CUDA backend
 * (cf_backend_cuda_borrow). CF_EUNSUPPORTED (checked, not used) unless every matrix is a whole
 * bf16 tensor under vLLM's fused names. Free *out with cf_borrow_device_free. */
int cf_borrow_device(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples, cf_borrow_fetch_fn fetch,
                     void *ctx, cf_borrow_dev_t *out, cf_borrow_report_t *rep);
void cf_borrow_device_free(cf_borrow_dev_t *d);

#endif
