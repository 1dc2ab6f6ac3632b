/* A tiny transformer-shaped backend for executor tests: real causal attention over the
 * prefix KV the caller passes (so a wrong or missing prefix cell changes the results), in
 * plain fp32 loops. Header-only; tests and benchmarks include it. It implements exactly the
 * cf_backend_t forward() contract, so the same tests run on the CPU backend of lib/model. */
#ifndef CF_TOY_BACKEND_H
#define CF_TOY_BACKEND_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/cf_backend.h"
#include "util/cf_err.h"

typedef struct {
  cf_backend_t be;
  cf_model_t model;
  float *w;           /* per layer: wq, wk, wv [kvd][D], wo [D][kvd] */
  float *embed;       /* [vocab][D] */
} cf_toy_t;

static inline float cf_toy_rand(unsigned long long *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return ((float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f);
}

static int cf_toy_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  cf_toy_t *t = (cf_toy_t *)be;
  const cf_model_config_t *c = &t->model.cfg;
  int D = c->hidden, H = c->n_kv_heads, hd = c->head_dim, kvd = H * hd, n = a->t1 - a->t0;
  float *x = malloc(sizeof(float) * n * D), *q = malloc(sizeof(float) * kvd);
  float *att = malloc(sizeof(float) * kvd), *sc = malloc(sizeof(float) * a->t1);
  for (int i = 0; i < n; i++) {
    if (a->l0 == 0) memcpy(x + i * D, t->embed + (size_t)(a->tokens[i] % c->vocab) * D, sizeof(float) * D);
    else memcpy(x + i * D, a->hidden_in + (size_t)i * D, sizeof(float) * D);
  }
  for (int l = a->l0; l < a->l1; l++) {
    const float *wq = t->w + (size_t)l * 4 * kvd * D, *wk = wq + kvd * D, *wv = wk + kvd * D, *wo = wv + kvd * D;
    float *K = a->k[l - a->l0], *V = a->v[l - a->l0];
    for (int i = 0; i < n; i++) { /* K, V of the new rows first: causal attention reads them */
      int tok = a->t0 + i;
      for (int j = 0; j < kvd; j++) {
        float sk = 0, sv = 0;
        for (int d = 0; d < D; d++) { sk += wk[j * D + d] * x[i * D + d]; sv += wv[j * D + d] * x[i * D + d]; }
        K[(size_t)tok * kvd + j] = sk + 0.01f * (float)(tok % 7); /* a position signal, like RoPE */
        V[(size_t)tok * kvd + j] = sv;
      }
    }
    for (int i = 0; i < n; i++) {
      int tok = a->t0 + i;
      for (int j = 0; j < kvd; j++) {
        float s = 0;
        for (int d = 0; d < D; d++) s += wq[j * D + d] * x[i * D + d];
        q[j] = s;
      }
      for (int h = 0; h < H; h++) {
        float mx = -1e30f;
        for (int u = 0; u <= tok; u++) {
          float s = 0;
          for (int d = 0; d < hd; d++) s += q[h * hd + d] * K[(size_t)u * kvd + h * hd + d];
          sc[u] = s / sqrtf((float)hd);
          if (sc[u] > mx) mx = sc[u];
        }
        float z = 0;
        for (int u = 0; u <= tok; u++) { sc[u] = expf(sc[u] - mx); z += sc[u]; }
        for (int d = 0; d < hd; d++) {
          float s = 0;
          for (int u = 0; u <= tok; u++) s += sc[u] * V[(size_t)u * kvd + h * hd + d];
          att[h * hd + d] = s / z;
        }
      }
      for (int d = 0; d < D; d++) {
        float s = 0;
        for (int j = 0; j < kvd; j++) s += wo[d * kvd + j] * att[j];
        x[i * D + d] = tanhf(x[i * D + d] + s);
      }
    }
  }
  if (a->hidden_out) memcpy(a->hidden_out, x, sizeof(float) * n * D);
  free(x); free(q); free(att); free(sc);
  return 0;
}

static void cf_toy_free(cf_backend_t *be) {
  cf_toy_t *t = (cf_toy_t *)be;
  free(t->w); free(t->embed); free(t->model.layers); free(t);
}

/* A toy model: L layers, hidden D, H kv heads of hd. Free with be->free(be). */
static inline cf_backend_t *cf_toy_create(int L, int D, int H, int hd, int vocab, unsigned long long seed) {
  cf_toy_t *t = calloc(1, sizeof *t);
  cf_model_config_t *c = &t->model.cfg;
  c->n_layers = L; c->hidden = D; c->n_heads = H; c->n_kv_heads = H; c->head_dim = hd;
  c->vocab = vocab; c->intermediate = D; c->max_pos = 1 << 20;
  int kvd = H * hd;
  t->w = malloc(sizeof(float) * (size_t)L * 4 * kvd * D);
  t->embed = malloc(sizeof(float) * (size_t)vocab * D);
  for (size_t i = 0; i < (size_t)L * 4 * kvd * D; i++) t->w[i] = cf_toy_rand(&seed) * 2.0f / sqrtf((float)D);
  for (size_t i = 0; i < (size_t)vocab * D; i++) t->embed[i] = cf_toy_rand(&seed) * 2.0f;
  t->model.layers = calloc((size_t)L, sizeof(cf_layer_weights_t));
  t->be.name = "toy";
  t->be.model = &t->model;
  t->be.forward = cf_toy_forward;
  t->be.free = cf_toy_free;
  return &t->be;
}

#endif
