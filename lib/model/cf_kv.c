/* cf_kv — see cf_kv.h. */
#include "model/cf_kv.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cf_safetensors.h"
#include "util/cf_err.h"

int cf_kv_init(cf_kv_t *kv, const cf_model_config_t *c, int T) {
  memset(kv, 0, sizeof *kv);
  if (T <= 0) return cf_seterr(CF_EINVAL, "kv: %d tokens (need at least 1)", T);
  kv->n_layers = c->n_layers;
  kv->T = T;
  kv->n_kv_heads = c->n_kv_heads;
  kv->head_dim = c->head_dim;
  kv->row = cf_model_kv_row_floats(c);
  kv->k = calloc(c->n_layers, sizeof(float *));
  kv->v = calloc(c->n_layers, sizeof(float *));
  if (!kv->k || !kv->v) goto nomem;
  for (int l = 0; l < c->n_layers; l++) {
    kv->k[l] = calloc(kv->row * T, sizeof(float));
    kv->v[l] = calloc(kv->row * T, sizeof(float));
    if (!kv->k[l] || !kv->v[l]) goto nomem;
  }
  return 0;
nomem:
  cf_kv_free(kv);
  return cf_seterr(CF_ENOMEM, "kv: %d layers x %d tokens x %zu floats x 2", c->n_layers, T,
                   cf_model_kv_row_floats(c));
}

void cf_kv_free(cf_kv_t *kv) {
  for (int l = 0; l < kv->n_layers; l++) {
    if (kv->k) free(kv->k[l]);
    if (kv->v) free(kv->v[l]);
  }
  free(kv->k);
  free(kv->v);
  memset(kv, 0, sizeof *kv);
}

static int cf__fwd(cf_backend_t *be, const int32_t *tokens, int l1, int t0, int t1, cf_kv_t *kv) {
  cf_fwd_args_t a = {.l0 = 0, .l1 = l1, .t0 = t0, .t1 = t1, .tokens = tokens + t0,
                     .k = kv->k, .v = kv->v};
  return cf_backend_forward(be, &a);
}

int cf_kv_compute(cf_backend_t *be, const int32_t *tokens, int chunk, cf_kv_t *kv) {
  int T = kv->T;
  if (chunk <= 0 || chunk > T) chunk = T;
  for (int t0 = 0; t0 < T; t0 += chunk) {
    int rc = cf__fwd(be, tokens, kv->n_layers, t0, t0 + chunk < T ? t0 + chunk : T, kv);
    if (rc) return rc;
  }
  return 0;
}

int cf_kv_compute_staircase(cf_backend_t *be, const int32_t *tokens, int chunk, const int *h,
                            int nh, cf_kv_t *kv) {
  int T = kv->T, L = kv->n_layers;
  if (chunk <= 0) return cf_seterr(CF_EINVAL, "staircase: chunk %d (must be > 0)", chunk);
  int nc = (T + chunk - 1) / chunk;
  if (nh != nc)
    return cf_seterr(CF_EINVAL, "staircase: %d heights for %d chunks (%d tokens, chunk %d)", nh,
                     nc, T, chunk);
  for (int c = 0; c < nc; c++)
    if (h[c] < 0 || h[c] > L)
      return cf_seterr(CF_EINVAL, "staircase: height %d of chunk %d outside [0, %d]", h[c], c, L);
  cf_model_config_t cfg = {.n_layers = L, .n_kv_heads = kv->n_kv_heads, .head_dim = kv->head_dim};
  cf_kv_t full;
  int rc = cf_kv_init(&full, &cfg, T);
  if (rc) return rc;
  rc = cf_kv_compute(be, tokens, 0, &full);
  if (rc) goto out;
  size_t row = kv->row;
  for (int c = 0; c < nc; c++) {
    size_t r0 = (size_t)c * chunk, n = (size_t)(c == nc - 1 ? T - c * chunk : chunk);
    for (int l = 0; l < L; l++) {
      float *dk = kv->k[l] + r0 * row, *dv = kv->v[l] + r0 * row;
      if (l >= h[c]) { /* loaded */
        memcpy(dk, full.k[l] + r0 * row, sizeof(float) * n * row);
        memcpy(dv, full.v[l] + r0 * row, sizeof(float) * n * row);
      } else { /* to be computed: poisoned until written */
        for (size_t i = 0; i < n * row; i++) dk[i] = dv[i] = NAN;
      }
    }
  }
  for (int c = 0; c < nc && !rc; c++) {
    int t0 = c * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
    if (h[c] > 0) rc = cf__fwd(be, tokens, h[c], t0, t1, kv);
  }
out:
  cf_kv_free(&full);
  return rc;
}

int cf_kv_write(const cf_kv_t *kv, const int32_t *tokens, const char *path) {
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  int64_t shape[3] = {kv->T, kv->n_kv_heads, kv->head_dim};
  int64_t tshape[1] = {kv->T};
  int rc = 0;
  char name[64];
  for (int l = 0; l < kv->n_layers && !rc; l++) {
    snprintf(name, sizeof name, "layers.%d.k", l);
    rc = cf_st_writer_add(&w, name, CF_DT_F32, 3, shape, kv->k[l]);
    snprintf(name, sizeof name, "layers.%d.v", l);
    if (!rc) rc = cf_st_writer_add(&w, name, CF_DT_F32, 3, shape, kv->v[l]);
  }
  if (!rc && tokens) rc = cf_st_writer_add(&w, "tokens", CF_DT_I32, 1, tshape, tokens);
  if (!rc) rc = cf_st_writer_write(&w, path);
  cf_st_writer_close(&w);
  return rc;
}

int cf_kv_load(const char *path, cf_kv_t *kv, int32_t **tokens) {
  memset(kv, 0, sizeof *kv);
  if (tokens) *tokens = NULL;
  cf_st_file_t f;
  int rc = cf_st_open(path, &f);
  if (rc) return rc;
  char name[64];
  const cf_st_tensor_t *k0 = cf_st_find(&f, "layers.0.k");
  if (!k0) { rc = cf_seterr(CF_EFORMAT, "%s: no tensor 'layers.0.k'", path); goto out; }
  if (k0->ndim != 3 || k0->shape[0] <= 0 || k0->shape[0] > (1 << 28)) {
    rc = cf_seterr(CF_EFORMAT, "%s: 'layers.0.k' has %d dims, expected [T, n_kv_heads, head_dim]",
                   path, k0->ndim);
    goto out;
  }
  int L = 0;
  for (;; L++) {
    snprintf(name, sizeof name, "layers.%d.k", L);
    if (!cf_st_find(&f, name)) break;
  }
  cf_model_config_t c = {.n_layers = L, .n_kv_heads = (int)k0->shape[1], .head_dim = (int)k0->shape[2]};
  if ((rc = cf_kv_init(kv, &c, (int)k0->shape[0]))) goto out;
  for (int l = 0; l < L && !rc; l++) {
    for (int j = 0; j < 2 && !rc; j++) {
      snprintf(name, sizeof name, "layers.%d.%c", l, j ? 'v' : 'k');
      const cf_st_tensor_t *t = cf_st_find(&f, name);
      if (!t) rc = cf_seterr(CF_EFORMAT, "%s: no tensor '%s'", path, name);
      else if (t->dtype != CF_DT_F32)
        rc = cf_seterr(CF_EDTYPE, "%s: '%s' has dtype %s, expected F32", path, name,
                       cf_dtype_name(t->dtype));
      else if (t->ndim != 3 || t->shape[0] != kv->T || t->shape[1] != c.n_kv_heads ||
               t->shape[2] != c.head_dim)
        rc = cf_seterr(CF_EFORMAT, "%s: '%s' is not [%d, %d, %d] like layers.0.k", path, name,
                       kv->T, c.n_kv_heads, c.head_dim);
      else
        memcpy(j ? kv->v[l] : kv->k[l], t->data, sizeof(float) * kv->row * kv->T);
    }
  }
  const cf_st_tensor_t *tt = cf_st_find(&f, "tokens");
  if (!rc && tokens && tt && (tt->dtype == CF_DT_I32 || tt->dtype == CF_DT_I64) &&
      tt->numel == (uint64_t)kv->T) {
    if (!(*tokens = malloc(sizeof(int32_t) * kv->T))) rc = cf_seterr(CF_ENOMEM, "%s: tokens", path);
    for (int i = 0; !rc && i < kv->T; i++) {
      int64_t v;
      if (tt->dtype == CF_DT_I32) { int32_t x; memcpy(&x, (const char *)tt->data + 4 * (size_t)i, 4); v = x; }
      else memcpy(&v, (const char *)tt->data + 8 * (size_t)i, 8);
      (*tokens)[i] = (int32_t)v;
    }
  }
  if (rc) {
    cf_kv_free(kv);
    if (tokens) { free(*tokens); *tokens = NULL; }
  }
out:
  cf_st_close(&f);
  return rc;
}

double cf_rel_err(const float *a, const float *b, size_t n) {
  double e = 0, mx = 0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (d != d) return INFINITY;
    if (d > e) e = d;
    if (fabs(b[i]) > mx) mx = fabs(b[i]);
  }
  return mx > 0 ? e / mx : e;
}

int cf_kv_max_rel_err(const cf_kv_t *a, const cf_kv_t *ref, double *err, int *worst_layer,
                      char *worst_kv) {
  if (a->n_layers != ref->n_layers || a->T != ref->T || a->row != ref->row)
    return cf_seterr(CF_ESHAPE, "kv compare: %d layers x %d tokens x %zu vs reference %d x %d x %zu",
                     a->n_layers, a->T, a->row, ref->n_layers, ref->T, ref->row);
  double worst = -1;
  for (int l = 0; l < a->n_layers; l++)
    for (int j = 0; j < 2; j++) {
      double e = j ? cf_rel_err(a->v[l], ref->v[l], a->row * a->T)
                   : cf_rel_err(a->k[l], ref->k[l], a->row * a->T);
      if (e > worst) {
        worst = e;
        if (worst_layer) *worst_layer = l;
        if (worst_kv) *worst_kv = j ? 'v' : 'k';
      }
    }
  *err = worst;
  return 0;
}

/* ---------------------------------------------------------------- token files */

static int cf__tokens_st(const char *path, int vocab, int32_t **out, int *T) {
  cf_st_file_t f;
  int rc = cf_st_open(path, &f);
  if (rc) return rc;
  const cf_st_tensor_t *t = cf_st_find(&f, "tokens");
  if (!t) {
    rc = cf_seterr(CF_EFORMAT, "%s: no tensor 'tokens'", path);
  } else if (t->dtype != CF_DT_I32 && t->dtype != CF_DT_I64) {
    rc = cf_seterr(CF_EDTYPE, "%s: tensor 'tokens' has dtype %s, expected I32 or I64", path,
                   cf_dtype_name(t->dtype));
  } else if (!(t->ndim == 1 || (t->ndim == 2 && t->shape[0] == 1)) || t->numel == 0 ||
             t->numel > (1u << 28)) {
    rc = cf_seterr(CF_EFORMAT, "%s: tensor 'tokens' has %d dims and %llu elements, expected "
                   "[T] or [1, T] with 1 <= T <= %d", path, t->ndim,
                   (unsigned long long)t->numel, 1 << 28);
  }
  if (rc) { cf_st_close(&f); return rc; }
  int n = (int)t->numel;
  int32_t *tok = malloc(sizeof(int32_t) * n);
  if (!tok) { cf_st_close(&f); return cf_seterr(CF_ENOMEM, "%s: %d tokens", path, n); }
  for (int i = 0; i < n && !rc; i++) {
    int64_t v;
    if (t->dtype == CF_DT_I32) {
      int32_t x;
      memcpy(&x, (const char *)t->data + 4 * (size_t)i, 4);
      v = x;
    } else {
      memcpy(&v, (const char *)t->data + 8 * (size_t)i, 8);
    }
    if (v < 0 || v >= vocab)
      rc = cf_seterr(CF_ERANGE, "%s: token id %lld at position %d outside [0, %d)", path,
                     (long long)v, i, vocab);
    tok[i] = (int32_t)v;
  }
  cf_st_close(&f);
  if (rc) { free(tok); return rc; }
  *out = tok;
  *T = n;
  return 0;
}

/* Separators of a text token file: whitespace, commas, and the brackets of a JSON-style list. */
static int cf__tok_sep(char c) {
  return isspace((unsigned char)c) || c == ',' || c == '[' || c == ']';
}

static int cf__tokens_text(const char *path, const char *s, size_t len, int vocab,
                           int32_t **out, int *T) {
  size_t cap = 1024;
  int n = 0;
  int32_t *tok = malloc(sizeof(int32_t) * cap);
  if (!tok) return cf_seterr(CF_ENOMEM, "%s: tokens", path);
  size_t i = 0;
  for (;;) {
    while (i < len && cf__tok_sep(s[i])) i++;
    if (i >= len) break;
    size_t j = i;
    if (s[j] == '-' || s[j] == '+') j++;
    while (j < len && isdigit((unsigned char)s[j])) j++;
    int digits = j > i && isdigit((unsigned char)s[j - 1]);
    if (!digits || (j < len && !cf__tok_sep(s[j]))) {
      size_t e = j;
      while (e < len && !cf__tok_sep(s[e]) && e - i < 24) e++;
      free(tok);
      return cf_seterr(CF_EFORMAT, "%s: token %d: '%.*s' is not an integer", path, n,
                       (int)(e > i ? e - i : 1), s + i);
    }
    char buf[32];
    size_t w = j - i < sizeof buf - 1 ? j - i : sizeof buf - 1;
    memcpy(buf, s + i, w);
    buf[w] = 0;
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno || j - i > 20 || v < 0 || v >= vocab) {
      free(tok);
      return cf_seterr(CF_ERANGE, "%s: token id %s at position %d outside [0, %d)", path, buf,
                       n, vocab);
    }
    if ((size_t)n == cap) {
      if (cap >= (1u << 28)) { free(tok); return cf_seterr(CF_ERANGE, "%s: more than %u tokens", path, 1u << 28); }
      int32_t *nt = realloc(tok, sizeof(int32_t) * cap * 2);
      if (!nt) { free(tok); return cf_seterr(CF_ENOMEM, "%s: %d tokens", path, n); }
      tok = nt;
      cap *= 2;
    }
    tok[n++] = (int32_t)v;
    i = j;
  }
  if (n == 0) { free(tok); return cf_seterr(CF_EFORMAT, "%s: no tokens", path); }
  *out = tok;
  *T = n;
  return 0;
}

int cf_tokens_load(const char *path, int vocab, int32_t **out, int *T) {
  *out = NULL;
  *T = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(cf_err_from_errno(-errno), "%s: %s", path, strerror(errno));
  unsigned char head[9];
  size_t got = fread(head, 1, sizeof head, f);
  /* safetensors: 8-byte header length, then the JSON header's '{'. A text file of token ids
   * cannot have '{' there. */
  if (got == 9 && head[8] == '{') {
    fclose(f);
    return cf__tokens_st(path, vocab, out, T);
  }
  if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return cf_seterr(CF_EIO, "%s: cannot seek", path); }
  long len = ftell(f);
  if (len < 0 || len > (1L << 32)) { fclose(f); return cf_seterr(CF_EIO, "%s: size %ld unusable", path, len); }
  char *s = malloc((size_t)len + 1);
  if (!s) { fclose(f); return cf_seterr(CF_ENOMEM, "%s: %ld bytes", path, len); }
  rewind(f);
  size_t rd = fread(s, 1, (size_t)len, f);
  fclose(f);
  if (rd != (size_t)len) { free(s); return cf_seterr(CF_EIO, "%s: short read", path); }
  int rc = cf__tokens_text(path, s, (size_t)len, vocab, out, T);
  free(s);
  return rc;
}
