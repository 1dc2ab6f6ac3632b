/* cf_model — a Hugging Face checkpoint loaded for the model engine.
 *
 * cf_model_load() reads config.json (transformers 4.x and 5.x keys) and the safetensors
 * weights (single file or sharded), memory-mapped, and exposes every weight as fp32
 * (F32 tensors point straight into the mapping; BF16/F16 ones are converted once at load).
 * Backends (cf_backend.h) compute from these; the CUDA backend uploads them as bf16.
 *
 * Weight matrices keep the HF layout: row-major [out_features][in_features].
 */
#ifndef CF_MODEL_H
#define CF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "util/cf_dtype.h" /* cf_dtype_t: weights, KV cells and engine blocks share it */

typedef enum {
  CF_ARCH_LLAMA = 0, CF_ARCH_MISTRAL, CF_ARCH_QWEN2, CF_ARCH_QWEN3, CF_ARCH_QWEN3_MOE,
  CF_ARCH_MIXTRAL
} cf_arch_t;
/* RoPE variants, computed as transformers 5's _compute_<type>_parameters: llama3 (frequency
 * bands), linear (every frequency / factor), yarn (ramp between interpolated and extrapolated
 * frequencies, cos/sin scaled by rope_attn_factor). dynamic is refused: its frequencies depend on
 * the length of the sequence computed with a token, so a prefix's KV would not be stable. */
typedef enum { CF_ROPE_DEFAULT = 0, CF_ROPE_LLAMA3, CF_ROPE_LINEAR, CF_ROPE_YARN } cf_rope_kind_t;

/* Bound on num_hidden_layers (config.json), so per-layer flags fit in the config. */
#define CF_MODEL_MAX_LAYERS 1024

typedef struct {
  cf_arch_t arch;
  int n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, max_pos;
  double rms_eps;
  cf_rope_kind_t rope_kind;
  double rope_theta;
  /* rope scaling: factor (llama3, linear, yarn; 1 otherwise), low/high freq factor (llama3),
   * original max positions (llama3, yarn) */
  double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
  int rope_orig_max_pos;
  /* yarn only: ramp bounds and whether they are rounded outwards (truncate); rope_attn_factor
   * multiplies cos and sin (yarn's attention_factor / mscale; 1 for every other kind) */
  double rope_beta_fast, rope_beta_slow, rope_attn_factor;
  int rope_truncate;
  int qkv_bias;       /* q/k/v projections have biases (qwen2, or llama attention_bias) */
  int o_bias;         /* o_proj has a bias (llama attention_bias) */
  int mlp_bias;       /* gate/up/down have biases (llama mlp_bias) */
  int qk_norm;        /* per-head RMSNorm of q and k before RoPE (qwen3) */
  int tie_embeddings;
  cf_dtype_t dtype;   /* the checkpoint's declared dtype (dtype / torch_dtype) */
  /* Mixture of experts (qwen3_moe, mixtral); n_experts == 0: a dense model. On a MoE layer the
   * MLP is: router logits = x·Wrᵀ, p = softmax (fp32), the top_k experts by p (renormalised to
   * sum 1 when norm_topk), y = sum_k p_k · down_e(silu(gate_e(x)) * up_e(x)), each expert of
   * width moe_intermediate. Layers with layer_moe[l] == 0 use the dense MLP (intermediate). */
  int n_experts, top_k, moe_intermediate, norm_topk;
  /* Sliding-window attention: on layers with layer_sliding[l], the query at position t sees
   * keys (t - sliding_window, t] only. 0: no layer has a window. The KV of every token is
   * still computed and kept: the window changes attention, not the cells. */
  int sliding_window;
  uint8_t layer_moe[CF_MODEL_MAX_LAYERS], layer_sliding[CF_MODEL_MAX_LAYERS];
} cf_model_config_t;

typedef struct {
  const float *attn_norm;               /* [hidden] */
  const float *wq, *wk, *wv, *wo;       /* [n_heads*hd][hidden], [n_kv*hd][hidden] x2, [hidden][n_heads*hd] */
  const float *bq, *bk, *bv, *bo;       /* biases or NULL */
  const float *q_norm, *k_norm;         /* [head_dim] (qwen3) or NULL */
  const float *mlp_norm;                /* [hidden] */
  const float *w_gate, *w_up, *w_down;  /* [inter][hidden] x2, [hidden][inter] */
  const float *b_gate, *b_up, *b_down;  /* biases or NULL */
  /* MoE layers (cfg.layer_moe[l]): the dense w_gate/w_up/w_down above are NULL; instead */
  const float *router;                   /* [n_experts][hidden] */
  const float **e_gate, **e_up, **e_down; /* [n_experts] each: [moe_inter][hidden] x2, [hidden][moe_inter] */
} cf_layer_weights_t;

typedef struct cf_model_s {
  cf_model_config_t cfg;
  const float *embed;          /* [vocab][hidden] */
  const float *final_norm;     /* [hidden] */
  const float *lm_head;        /* [vocab][hidden] (== embed when tied); NULL if absent */
  cf_layer_weights_t *layers;  /* [n_layers] */
  uint8_t fingerprint[16];     /* see cf_model_fingerprint() */
  char *dir;                   /* checkpoint directory as given */
  void *priv;                  /* loader-owned: mappings and converted buffers */
} cf_model_t;

/* Load the checkpoint in directory `dir`: config.json, then model.safetensors or (when that is
 * absent) model.safetensors.index.json and its shards. On success *out is owned by the caller
 * (free with cf_model_free). Errors: CF_ENOENT (missing file), CF_EFORMAT (bad JSON /
 * safetensors), CF_ENOTFOUND (a tensor the config needs is missing), CF_ESHAPE, CF_EDTYPE,
 * CF_EUNSUPPORTED (architecture, rope type, sliding window, activation), CF_ERANGE (a config
 * value out of bounds), CF_ENOMEM, with a detail naming file, key or tensor and expected vs
 * found (cf_errmsg()). */
int cf_model_load(const char *dir, cf_model_t **out);
/* Unmaps and frees everything cf_model_load made; NULL-safe. Weight pointers die with it. */
void cf_model_free(cf_model_t *m);

/* Bytes of the weights m holds as fp32 (mapped F32 tensors and converted buffers alike); 0 after
 * cf_model_release_weights. */
size_t cf_model_weight_bytes(const cf_model_t *m);
/* Drop m's weights (unmap the checkpoint, free converted buffers) but keep its config,
 * fingerprint and directory: for a process that computes on borrowed weights (cf_borrow). Every
 * weight pointer of m becomes NULL. Returns the bytes released (cf_model_weight_bytes before). */
size_t cf_model_release_weights(cf_model_t *m);
/* Load m's weights again from m->dir after cf_model_release_weights (0 when it holds them).
 * Returns 0, cf_model_load's errors, or CF_EMISMATCH when the checkpoint on disk has another
 * fingerprint (m keeps no weights then). */
int cf_model_reload_weights(cf_model_t *m);

/* Model fingerprint: XXH3-128 over a canonical little-endian serialisation of
 *   "cacheflow-model-v1", arch, n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate,
 *   vocab, rms_eps, rope_kind, rope_theta, (llama3 only: factor, low/high freq factor,
 *   original max positions; linear: factor; yarn: factor, beta_fast, beta_slow, attention
 *   factor, original max positions, truncate), qkv_bias, o_bias, mlp_bias, qk_norm,
 *   tie_embeddings, dtype,
 *   (only for MoE or windowed models, so dense models keep their v1 fingerprints: the tag
 *   "moe-window", n_experts, top_k, moe_intermediate, norm_topk, sliding_window, and per layer
 *   layer_moe and layer_sliding), then the number of tensors and each tensor's (name, dtype, shape) sorted by name
 *   (byte order of the names; every tensor of every shard, used or not).
 * Not included: max_position_embeddings (does not change any KV), token ids, generation
 * settings, transformers_version, shard layout (a sharded and a single-file copy of a model
 * have the same fingerprint) and the weight values themselves (hashing GBs at every start
 * is too slow; the headers pin the layout, the config pins the math). `names`, `dtypes`,
 * `ndims`, `shapes` describe the n tensors in sorted order. */
void cf_model_fingerprint(const cf_model_config_t *c, size_t n, const char *const *names,
                          const cf_dtype_t *dtypes, const int *ndims,
                          const int64_t *const *shapes, uint8_t out[16]);
/* A digest of the weights' bytes in `dir` (every *.safetensors file there, by name: its name,
 * size and 64 windows of 4 KiB spread evenly over it, the whole file when smaller), XXH3-128.
 * Why: the fingerprint pins the config and the tensor headers, not the values (hashing every
 * weight at every start is too slow), so a fine-tune or a re-export with the same shapes put in
 * place of the checkpoint between restarts has the same fingerprint; the store records this
 * digest and refuses a directory made with other weights, whose KV would be wrong for these.
 * Sampled: a checkpoint whose changes miss every window is not told apart (a fine-tune changes
 * every tensor). Returns 0, or CF_ENOENT/CF_EIO naming the file (CF_ENOENT naming dir when it
 * holds no *.safetensors file). */
int cf_model_weights_digest(const char *dir, uint8_t out[16]);
/* Writes fp as 32 lowercase hex chars plus NUL into out[33]; returns out. */
char *cf_model_fingerprint_hex(const uint8_t fp[16], char out[33]);

/* Floats of K (or V) per token per layer: n_kv_heads * head_dim (times 4 for bytes). */
size_t cf_model_kv_row_floats(const cf_model_config_t *c);

/* "llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral"; "?" when out of range. */
const char *cf_arch_name(cf_arch_t a);
/* Window of layer l's attention in keys: 0 when the layer attends every earlier key. */
static inline int cf_model_layer_window(const cf_model_config_t *c, int l) {
  return c->sliding_window > 0 && l >= 0 && l < CF_MODEL_MAX_LAYERS && c->layer_sliding[l]
             ? c->sliding_window : 0;
}

#endif
