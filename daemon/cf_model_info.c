/* cf_model_info — model geometry and fingerprint from config.json + the safetensors header. */
#include "cf_model_info.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "util/cf_err.h"
#include "util/cf_json.h"

#define CF__MAX_CONFIG (4u << 20)
#define CF__MAX_HEADER (100u << 20) /* safetensors caps its header at 100 MB too */

/* Read the whole of a small file; caller frees *out. */
static int cf__slurp(const char *path, size_t cap, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(cf_err_from_errno(-errno), "%s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (n < 0 || (size_t)n > cap) { fclose(f); return cf_seterr(CF_EFORMAT, "%s: size %ld over %zu bytes", path, n, cap); }
  char *buf = malloc((size_t)n + 1);
  if (!buf) { fclose(f); return cf_seterr(CF_ENOMEM, "%s", path); }
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); fclose(f); return cf_seterr(CF_EIO, "%s: short read", path); }
  fclose(f);
  buf[n] = 0;
  *out = buf;
  *len = (size_t)n;
  return 0;
}

static int cf__get_int(const cf_json_t *cfg, const char *path, const char *key, int *out, int def) {
  const cf_json_t *v = cf_json_get(cfg, key);
  if (!v || v->type == CF_JSON_NULL) {
    if (def < 0) return cf_seterr(CF_EFORMAT, "%s: key '%s' missing", path, key);
    *out = def;
    return 0;
  }
  if (v->type != CF_JSON_NUM || !v->is_int || v->i64 <= 0 || v->i64 > (1 << 30))
    return cf_seterr(CF_EFORMAT, "%s: key '%s': expected a positive integer, found %s", path, key,
                     cf_json_type_name(v->type));
  *out = (int)v->i64;
  return 0;
}

/* Hash the 8-byte length and the JSON header of a safetensors file, or a whole index file. */
static int cf__hash_weights_header(const char *dir, XXH3_state_t *st) {
  char path[1024];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *idx;
    size_t n;
    int rc = cf__slurp(path, CF__MAX_CONFIG, &idx, &n);
    if (rc) return cf_seterr(CF_ENOENT, "%s: neither model.safetensors nor model.safetensors.index.json", dir);
    XXH3_128bits_update(st, idx, n);
    free(idx);
    return 0;
  }
  uint8_t lenb[8];
  if (fread(lenb, 1, 8, f) != 8) { fclose(f); return cf_seterr(CF_EFORMAT, "%s: shorter than 8 bytes", path); }
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | lenb[i];
  if (hl == 0 || hl > CF__MAX_HEADER) { fclose(f); return cf_seterr(CF_EFORMAT, "%s: header length %llu out of range", path, (unsigned long long)hl); }
  char *h = malloc(hl);
  if (!h) { fclose(f); return cf_seterr(CF_ENOMEM, "%s", path); }
  if (fread(h, 1, hl, f) != hl) { free(h); fclose(f); return cf_seterr(CF_EFORMAT, "%s: truncated header", path); }
  fclose(f);
  XXH3_128bits_update(st, lenb, 8);
  XXH3_128bits_update(st, h, hl);
  free(h);
  return 0;
}

int cf_model_info_load(const char *dir, cf_model_info_t *out) {
  memset(out, 0, sizeof *out);
  snprintf(out->dir, sizeof out->dir, "%s", dir);
  char path[1024], *text = NULL;
  size_t n;
  snprintf(path, sizeof path, "%s/config.json", dir);
  int rc = cf__slurp(path, CF__MAX_CONFIG, &text, &n);
  if (rc) return rc;
  cf_json_t *cfg = NULL;
  if ((rc = cf_json_parse(text, n, &cfg))) { free(text); return cf_err_prefix(rc, "%s: ", path); }
  int heads = 0, hidden = 0;
  if ((rc = cf__get_int(cfg, path, "num_hidden_layers", &out->n_layers, -1)) ||
      (rc = cf__get_int(cfg, path, "num_attention_heads", &heads, -1)) ||
      (rc = cf__get_int(cfg, path, "hidden_size", &hidden, -1)) ||
      (rc = cf__get_int(cfg, path, "num_key_value_heads", &out->n_kv_heads, heads)) ||
      (rc = cf__get_int(cfg, path, "head_dim", &out->head_dim, hidden / heads)) ||
      (rc = cf__get_int(cfg, path, "vocab_size", &out->vocab, -1)))
    goto out;
  XXH3_state_t *st = XXH3_createState();
  if (!st) { rc = cf_seterr(CF_ENOMEM, "xxhash state"); goto out; }
  XXH3_128bits_reset(st);
  XXH3_128bits_update(st, text, n);
  rc = cf__hash_weights_header(dir, st);
  if (!rc) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    memcpy(out->fingerprint, c.digest, 16);
  }
  XXH3_freeState(st);
out:
  cf_json_free(cfg);
  free(text);
  return rc;
}

void cf_model_info_hex(const uint8_t fp[16], char buf[33]) {
  for (int i = 0; i < 16; i++) sprintf(buf + 2 * i, "%02x", fp[i]);
}
