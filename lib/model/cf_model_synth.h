/* cf_model_synth — deterministic random-weight models built in memory.
 *
 * Used by the demo-model generator (cacheflowctl gen-model writes one to disk as an HF
 * checkpoint), by tests (synthetic models exercising every feature without a checkpoint) and by
 * the CPU benchmark. Weights are N(0, std) from a seeded splitmix64/Box-Muller stream, so the
 * same (config, seed, std) gives the same bytes on every machine.
 */
#ifndef CF_MODEL_SYNTH_H
#define CF_MODEL_SYNTH_H

#include <stdint.h>

#include "model/cf_model.h"

typedef struct {
  uint64_t seed;
  float std;         /* weight standard deviation (HF initializer_range; 0.02 for the demo) */
  float norm_jitter; /* norm weights are 1 + N(0, norm_jitter); 0 gives exactly 1 */
} cf_synth_opts_t;

/* Presets: "demo" (8 layers, hidden 512, 8 heads, 2 KV heads, MLP 1408, vocab 32000, rope theta
 * 10000) and "tiny" (2 layers, hidden 64, 4/2 heads, MLP 128, vocab 256). Fills *c; returns 0 or
 * CF_EINVAL naming the unknown preset. */
int cf_synth_preset(const char *name, cf_model_config_t *c);

/* Build a model for config c (c->head_dim must be set). Every weight the config implies is
 * present (biases when qkv_bias/o_bias/mlp_bias, q/k norms when qk_norm; lm_head shares the
 * embedding when tie_embeddings; router and experts on layers with layer_moe when n_experts). The model owns its weights: free with cf_model_synth_free(),
 * not cf_model_free(). Errors: CF_EINVAL (inconsistent config), CF_ENOMEM. */
int cf_model_synth(const cf_model_config_t *c, const cf_synth_opts_t *o, cf_model_t **out);
void cf_model_synth_free(cf_model_t *m);

/* One weight tensor under its Hugging Face name ("model.layers.3.self_attn.q_proj.weight"). */
typedef struct {
  char name[112];
  int ndim;
  int64_t shape[2];
  const float *data;
} cf_hf_tensor_t;

/* List the model's tensors with HF llama/qwen names into t (capacity cap); experts with
 * qwen3_moe names, or for mixtral the block_sparse_moe.experts.N.w1/w2/w3 names of
 * transformers 4.x. Returns how many
 * there are (may exceed cap: call with cap 0 to size the array). */
int cf_model_hf_tensors(const cf_model_t *m, cf_hf_tensor_t *t, int cap);

#endif
