/* libFuzzer target: config.json text through cf_hfconfig_parse. On success the result must
 * satisfy the invariants the engine relies on (checked with __builtin_trap so the fuzzer
 * reports a violation as a crash). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "model/cf_hfconfig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cf_model_config_t c;
  if (cf_hfconfig_parse((const char *)data, size, "fuzz/config.json", &c) != 0) return 0;
  if (c.n_layers < 1 || c.hidden < 1 || c.n_heads < 1 || c.n_kv_heads < 1 ||
      c.n_heads % c.n_kv_heads != 0 || c.head_dim < 2 || c.head_dim % 2 || c.intermediate < 1 ||
      c.vocab < 1 || !(c.rms_eps > 0) || !isfinite(c.rms_eps) || !(c.rope_theta > 0) ||
      !isfinite(c.rope_theta))
    __builtin_trap();
  if (c.rope_kind == CF_ROPE_LLAMA3 &&
      (!(c.rope_factor > 0) || !(c.rope_high_freq_factor > c.rope_low_freq_factor) ||
       c.rope_orig_max_pos < 1))
    __builtin_trap();
  if ((c.rope_kind == CF_ROPE_LINEAR || c.rope_kind == CF_ROPE_YARN) &&
      (!(c.rope_factor > 0) || !isfinite(c.rope_factor)))
    __builtin_trap();
  if (c.rope_kind == CF_ROPE_YARN &&
      (c.rope_orig_max_pos < 1 || !(c.rope_beta_fast > 0) || !(c.rope_beta_slow > 0) ||
       !(c.rope_attn_factor > 0) || !isfinite(c.rope_attn_factor)))
    __builtin_trap();
  return 0;
}
