/* cf_model_info — what the daemon's front end must know about its model: the KV geometry
 * (layers, kv heads, head dim), the vocabulary size (token-id range checks) and the model
 * fingerprint (cf_model_fingerprint: engines must present it at RegisterEngine; the store keys
 * every chunk with it).
 *
 * Two sources: cf_model_info_check() reads config.json only (the loader's own parser, so the
 * same rules) and checks the weights file exists — cheap enough for `--check-config`, which
 * systemd runs before every start; cf_model_info_from_model() takes everything, fingerprint
 * included, from a model loaded with cf_model_load().
 */
#ifndef CF_MODEL_INFO_H
#define CF_MODEL_INFO_H

#include <stdint.h>

#include "model/cf_model.h"

typedef struct {
  int n_layers, n_kv_heads, head_dim, vocab;
  uint8_t fingerprint[16]; /* zero after cf_model_info_check */
  uint8_t weights[16];     /* cf_model_weights_digest; zero when not taken */
  char dir[512];
} cf_model_info_t;

/* Parse `dir`/config.json and check that model.safetensors or model.safetensors.index.json is
 * there. Returns 0, or CF_ENOENT/CF_EFORMAT/CF_EUNSUPPORTED/CF_ERANGE with the loader's detail. */
int cf_model_info_check(const char *dir, cf_model_info_t *out);

/* Geometry and fingerprint of a loaded model. */
void cf_model_info_from_model(const cf_model_t *m, cf_model_info_t *out);

#endif
