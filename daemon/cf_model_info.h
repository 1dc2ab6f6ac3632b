/* cf_model_info — what the daemon's front end must know about its model before any engine
 * registers: the KV geometry (layers, kv heads, head dim), the vocabulary size (token-id
 * range checks) and the model fingerprint (DESIGN.md §3: a hash of config.json and the
 * weights' header). Reads config.json and the safetensors header only, never the weights, so
 * `--check-config` and start-up validation stay cheap; the model engine (cf_model_load) loads
 * the weights for compute.
 */
#ifndef CF_MODEL_INFO_H
#define CF_MODEL_INFO_H

#include <stdint.h>

typedef struct {
  int n_layers, n_kv_heads, head_dim, vocab;
  uint8_t fingerprint[16];
  char dir[512];
} cf_model_info_t;

/* Read `dir`/config.json and the header of `dir`/model.safetensors (or the shard index
 * model.safetensors.index.json). Returns 0, or CF_ENOENT/CF_EFORMAT/CF_EUNSUPPORTED with a
 * detail naming the file and key. */
int cf_model_info_load(const char *dir, cf_model_info_t *out);

/* 32 lowercase hex digits of the fingerprint into buf[33]. */
void cf_model_info_hex(const uint8_t fp[16], char buf[33]);

#endif
