/* cf_model_info — model geometry for request checks, from config.json or a loaded model. */
#include "cf_model_info.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/cf_hfconfig.h"
#include "util/cf_err.h"

#define CF__MAX_CONFIG (4u << 20)

static void cf__from_config(const cf_model_config_t *c, const char *dir, cf_model_info_t *out) {
  memset(out, 0, sizeof *out);
  out->n_layers = c->n_layers;
  out->n_kv_heads = c->n_kv_heads;
  out->head_dim = c->head_dim;
  out->vocab = c->vocab;
  snprintf(out->dir, sizeof out->dir, "%s", dir);
}

int cf_model_info_check(const char *dir, cf_model_info_t *out) {
  char path[1024];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(cf_err_from_errno(-errno), "%s: %s", path, strerror(errno));
  char *buf = malloc(CF__MAX_CONFIG + 1);
  size_t n = buf ? fread(buf, 1, CF__MAX_CONFIG + 1, f) : 0;
  fclose(f);
  if (!buf) return cf_seterr(CF_ENOMEM, "%s", path);
  if (n > CF__MAX_CONFIG) { free(buf); return cf_seterr(CF_EFORMAT, "%s: larger than %u bytes", path, CF__MAX_CONFIG); }
  cf_model_config_t c;
  int rc = cf_hfconfig_parse(buf, n, path, &c);
  free(buf);
  if (rc) return rc;
  char w1[1024], w2[1024];
  snprintf(w1, sizeof w1, "%s/model.safetensors", dir);
  snprintf(w2, sizeof w2, "%s/model.safetensors.index.json", dir);
  if (access(w1, R_OK) && access(w2, R_OK))
    return cf_seterr(CF_ENOENT, "%s: neither model.safetensors nor model.safetensors.index.json is readable", dir);
  cf__from_config(&c, dir, out);
  return 0;
}

void cf_model_info_from_model(const cf_model_t *m, cf_model_info_t *out) {
  cf__from_config(&m->cfg, m->dir ? m->dir : "", out);
  memcpy(out->fingerprint, m->fingerprint, 16);
}
