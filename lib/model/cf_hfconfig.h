/* cf_hfconfig — Hugging Face config.json → cf_model_config_t.
 *
 * Accepts the keys of transformers 4.x (rope_theta, rope_scaling {type|rope_type, ...},
 * torch_dtype) and 5.x (rope_parameters {rope_type, rope_theta, ...}, dtype) for the families
 * llama, mistral, qwen2, qwen3, qwen3_moe and mixtral, with the defaults transformers applies
 * to absent keys. Mixture of experts: see cf__moe (cf_hfconfig.c). Sliding windows: mistral and
 * mixtral (sliding_window, every layer), qwen2/qwen3 (use_sliding_window with layer_types, or
 * max_window_layers when layer_types is absent), qwen3_moe (use_sliding_window: every layer, as
 * transformers 5 does).
 * Everything the engine cannot reproduce exactly is refused with CF_EUNSUPPORTED naming it:
 * another model_type/architecture, rope types other than default/llama3, partial rotary,
 * an activation other than silu, shared experts, logit soft-capping, attention sinks, a
 * window on llama, a qwen3_moe layer_types mixing full and sliding layers, layer types other than full/sliding attention.
 */
#ifndef CF_HFCONFIG_H
#define CF_HFCONFIG_H

#include <stddef.h>

#include "model/cf_model.h"

/* Parses config text json[0..len); `file` names it in error details ("dir/config.json").
 * Fills *c completely on success. Errors: CF_EFORMAT (bad JSON, wrong type of a key, missing
 * required key), CF_ERANGE (a value out of bounds, e.g. heads not dividing), CF_EUNSUPPORTED,
 * CF_EDTYPE (unknown dtype string), CF_ENOMEM; the detail names file and key, expected vs found. */
int cf_hfconfig_parse(const char *json, size_t len, const char *file, cf_model_config_t *c);
/* The family's transformers class prefix ("Llama", "Qwen3Moe", ...: <prefix>ForCausalLM), the one
 * the parser checks "architectures" against; "?" for an unknown arch. */
const char *cf_hfconfig_class_prefix(cf_arch_t a);

#endif
