/* cf_hfwrite — write a model (cf_model_synth's, or any cf_model_t) as a Hugging Face checkpoint:
 * config.json with the keys transformers 5.19's <Family>Config.save_pretrained writes for that
 * model_type (sorted, the same values: tests/engines/test_model_golden.py loads it with
 * transformers, saves it again and compares), and model.safetensors or N shards plus
 * model.safetensors.index.json, in F32, BF16 or F16.
 *
 * cf_hfwrite_check() is the one place that says which shapes each family can express in its
 * config.json (a head_dim key, a window, experts, biases), so `cacheflowctl gen-model` refuses a
 * combination transformers could not load as asked instead of writing a checkpoint that means
 * something else. */
#ifndef CF_HFWRITE_H
#define CF_HFWRITE_H

#include "model/cf_model.h"

/* CF_EINVAL, naming the config key and what was wrong, when c is not a model its family's
 * config.json can describe: heads not a multiple of kv heads; an odd head_dim; head_dim other
 * than hidden / heads where the family has no head_dim key (qwen2, qwen3_moe); a window on llama;
 * layers that differ in windowing outside qwen2/qwen3 (their layer_types); experts on a dense
 * family or none on a MoE one, top_k outside 1..experts; biases the family does not have (qwen2's
 * q/k/v biases are always there, o_proj's never); llama3 RoPE with factor < 1 or
 * high_freq_factor <= low_freq_factor; rope kinds other than default/linear/llama3. */
int cf_hfwrite_check(const cf_model_config_t *c);

/* Writes DIR/config.json for c (cf_hfwrite_check must pass), declared dtype `dtype` (F32,
 * BF16 or F16), initializer_range `std`. Errors: CF_EINVAL, CF_EIO (errno's text in the detail). */
int cf_hfwrite_config(const char *dir, const cf_model_config_t *c, cf_dtype_t dtype, double std);

/* Writes m's weights (cf_model_hf_tensors names) into DIR in `dtype`: shards == 1 gives
 * model.safetensors; shards > 1 splits the tensors in order into `shards` files of about equal
 * bytes, model-0000K-of-0000N.safetensors, plus model.safetensors.index.json (metadata
 * total_size, weight_map). Errors: CF_EINVAL (shards < 1 or more than tensors), the safetensors
 * writer's (CF_EIO, CF_ENOSPC, ...), CF_ENOMEM. */
int cf_hfwrite_weights(const char *dir, const cf_model_t *m, cf_dtype_t dtype, int shards);

#endif
