/* cf_model_synth — see cf_model_synth.h. */
#include "model/cf_model_synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

int cf_synth_preset(const char *name, cf_model_config_t *c) {
  memset(c, 0, sizeof *c);
  c->arch = CF_ARCH_LLAMA;
  c->rms_eps = 1e-5;
  c->rope_kind = CF_ROPE_DEFAULT;
  c->rope_theta = 10000.0;
  c->dtype = CF_DT_F32;
  c->max_pos = 32768;
  if (name && !strcmp(name, "demo")) {
    c->n_layers = 8; c->hidden = 512; c->n_heads = 8; c->n_kv_heads = 2; c->head_dim = 64;
    c->intermediate = 1408; c->vocab = 32000;
  } else if (name && !strcmp(name, "tiny")) {
    c->n_layers = 2; c->hidden = 64; c->n_heads = 4; c->n_kv_heads = 2; c->head_dim = 16;
    c->intermediate = 128; c->vocab = 256;
  } else {
    return cf_seterr(CF_EINVAL, "preset '%s': expected demo or tiny", name ? name : "(null)");
  }
  return 0;
}

typedef struct { uint64_t s; int have; float spare; } cf__rng_t;

static uint64_t cf__next(cf__rng_t *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static float cf__normal(cf__rng_t *r) { /* Box-Muller, both outputs used */
  if (r->have) { r->have = 0; return r->spare; }
  double u1 = ((cf__next(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0); /* (0, 1] */
  double u2 = (cf__next(r) >> 11) * (1.0 / 9007199254740992.0);
  double rad = sqrt(-2.0 * log(u1)), th = 2.0 * M_PI * u2;
  r->spare = (float)(rad * sin(th));
  r->have = 1;
  return (float)(rad * cos(th));
}

/* Weight layout in one allocation, in the order cf_model_hf_tensors lists them. */
typedef struct { float *buf; const float **experts; } cf__synth_priv_t;

static float *cf__take(float **cur, size_t n) { float *p = *cur; *cur += n; return p; }

/* Next n weights of the layout: N(0, std). */
static float *cf__rand(float **cur, cf__rng_t *r, float std, size_t n) {
  float *p = cf__take(cur, n);
  for (size_t i = 0; i < n; i++) p[i] = std * cf__normal(r);
  return p;
}

/* Next n norm weights: 1 + N(0, jitter), exactly 1 when jitter is 0. */
static float *cf__norm(float **cur, cf__rng_t *r, float jitter, size_t n) {
  float *p = cf__take(cur, n);
  for (size_t i = 0; i < n; i++) p[i] = 1.0f + (jitter ? jitter * cf__normal(r) : 0.0f);
  return p;
}

int cf_model_synth(const cf_model_config_t *c, const cf_synth_opts_t *o, cf_model_t **out) {
  *out = NULL;
  if (c->n_layers <= 0 || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
      c->head_dim <= 0 || c->intermediate <= 0 || c->vocab <= 0 || c->n_heads % c->n_kv_heads)
    return cf_seterr(CF_EINVAL, "synth: config layers=%d hidden=%d heads=%d/%d head_dim=%d "
                     "inter=%d vocab=%d is not a valid model", c->n_layers, c->hidden,
                     c->n_heads, c->n_kv_heads, c->head_dim, c->intermediate, c->vocab);
  size_t D = c->hidden, qd = (size_t)c->n_heads * c->head_dim;
  size_t kvd = (size_t)c->n_kv_heads * c->head_dim, I = c->intermediate, hd = c->head_dim;
  size_t per = 2 * D + qd * D + 2 * kvd * D + D * qd;
  if (c->qkv_bias) per += qd + 2 * kvd;
  if (c->o_bias) per += D;
  if (c->qk_norm) per += 2 * hd;
  size_t E = c->n_experts, MI = c->moe_intermediate, n_moe = 0;
  if (E && (MI <= 0 || c->top_k <= 0 || c->top_k > (int)E))
    return cf_seterr(CF_EINVAL, "synth: %zu experts, top_k %d, moe_intermediate %zu", E,
                     c->top_k, MI);
  size_t dense = 3 * I * D + (c->mlp_bias ? 2 * I + D : 0), moe = E * D + E * 3 * MI * D;
  for (int l = 0; l < c->n_layers; l++) n_moe += E && c->layer_moe[l];
  size_t total = (size_t)c->vocab * D * (c->tie_embeddings ? 1 : 2) + D + per * c->n_layers +
                 dense * (c->n_layers - n_moe) + moe * n_moe;

  cf_model_t *m = calloc(1, sizeof *m);
  cf__synth_priv_t *pv = calloc(1, sizeof *pv);
  float *buf = malloc(total * sizeof(float));
  cf_layer_weights_t *L = calloc(c->n_layers, sizeof *L);
  const float **ex = calloc(3 * E * n_moe + 1, sizeof *ex);
  if (!m || !pv || !buf || !L || !ex) {
    free(m); free(pv); free(buf); free(L); free(ex);
    return cf_seterr(CF_ENOMEM, "synth: %zu weights", total);
  }
  m->cfg = *c;
  m->layers = L;
  m->priv = pv;
  pv->buf = buf;
  pv->experts = ex;
  cf__rng_t r = {.s = o->seed};
  float *cur = buf;
  float std = o->std;
  m->embed = cf__rand(&cur, &r, std, (size_t)c->vocab * D);
  for (int l = 0; l < c->n_layers; l++) {
    cf_layer_weights_t *w = &L[l];
    w->attn_norm = cf__norm(&cur, &r, o->norm_jitter, D);
    w->wq = cf__rand(&cur, &r, std, qd * D);
    w->wk = cf__rand(&cur, &r, std, kvd * D);
    w->wv = cf__rand(&cur, &r, std, kvd * D);
    w->wo = cf__rand(&cur, &r, std, D * qd);
    if (c->qkv_bias) { w->bq = cf__rand(&cur, &r, std, qd); w->bk = cf__rand(&cur, &r, std, kvd); w->bv = cf__rand(&cur, &r, std, kvd); }
    if (c->o_bias) w->bo = cf__rand(&cur, &r, std, D);
    if (c->qk_norm) { w->q_norm = cf__norm(&cur, &r, o->norm_jitter, hd); w->k_norm = cf__norm(&cur, &r, o->norm_jitter, hd); }
    w->mlp_norm = cf__norm(&cur, &r, o->norm_jitter, D);
    if (E && c->layer_moe[l]) { /* router, then per expert gate, up, down */
      w->router = cf__rand(&cur, &r, std, E * D);
      w->e_gate = ex; w->e_up = ex + E; w->e_down = ex + 2 * E;
      ex += 3 * E;
      for (size_t e = 0; e < E; e++) {
        w->e_gate[e] = cf__rand(&cur, &r, std, MI * D);
        w->e_up[e] = cf__rand(&cur, &r, std, MI * D);
        w->e_down[e] = cf__rand(&cur, &r, std, D * MI);
      }
      continue;
    }
    w->w_gate = cf__rand(&cur, &r, std, I * D);
    w->w_up = cf__rand(&cur, &r, std, I * D);
    w->w_down = cf__rand(&cur, &r, std, D * I);
    if (c->mlp_bias) { w->b_gate = cf__rand(&cur, &r, std, I); w->b_up = cf__rand(&cur, &r, std, I); w->b_down = cf__rand(&cur, &r, std, D); }
  }
  m->final_norm = cf__norm(&cur, &r, o->norm_jitter, D);
  m->lm_head = c->tie_embeddings ? m->embed : cf__rand(&cur, &r, std, (size_t)c->vocab * D);
  if ((size_t)(cur - buf) != total) {
    cf_model_synth_free(m);
    return cf_seterr(CF_EINTERNAL, "synth: laid out %zu of %zu weights", (size_t)(cur - buf), total);
  }
  *out = m;
  return 0;
}

void cf_model_synth_free(cf_model_t *m) {
  if (!m) return;
  cf__synth_priv_t *pv = m->priv;
  if (pv) { free(pv->buf); free(pv->experts); }
  free(pv);
  free(m->layers);
  free(m->dir);
  free(m);
}

int cf_model_hf_tensors(const cf_model_t *m, cf_hf_tensor_t *t, int cap) {
  const cf_model_config_t *c = &m->cfg;
  int64_t D = c->hidden, qd = (int64_t)c->n_heads * c->head_dim;
  int64_t kvd = (int64_t)c->n_kv_heads * c->head_dim, I = c->intermediate, V = c->vocab;
  int n = 0;
#define CF__ADD(ptr, d0, d1, ...) do {                                            \
    if ((ptr) && n < cap) {                                                       \
      snprintf(t[n].name, sizeof t[n].name, __VA_ARGS__);                         \
      t[n].ndim = (d1) ? 2 : 1; t[n].shape[0] = (d0); t[n].shape[1] = (d1);       \
      t[n].data = (ptr);                                                          \
    }                                                                             \
    if (ptr) n++;                                                                 \
  } while (0)
  CF__ADD(m->embed, V, D, "model.embed_tokens.weight");
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    CF__ADD(w->attn_norm, D, 0, "model.layers.%d.input_layernorm.weight", l);
    CF__ADD(w->wq, qd, D, "model.layers.%d.self_attn.q_proj.weight", l);
    CF__ADD(w->wk, kvd, D, "model.layers.%d.self_attn.k_proj.weight", l);
    CF__ADD(w->wv, kvd, D, "model.layers.%d.self_attn.v_proj.weight", l);
    CF__ADD(w->wo, D, qd, "model.layers.%d.self_attn.o_proj.weight", l);
    CF__ADD(w->bq, qd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
    CF__ADD(w->bk, kvd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
    CF__ADD(w->bv, kvd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
    CF__ADD(w->bo, D, 0, "model.layers.%d.self_attn.o_proj.bias", l);
    CF__ADD(w->q_norm, c->head_dim, 0, "model.layers.%d.self_attn.q_norm.weight", l);
    CF__ADD(w->k_norm, c->head_dim, 0, "model.layers.%d.self_attn.k_norm.weight", l);
    CF__ADD(w->mlp_norm, D, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    CF__ADD(w->w_gate, I, D, "model.layers.%d.mlp.gate_proj.weight", l);
    CF__ADD(w->w_up, I, D, "model.layers.%d.mlp.up_proj.weight", l);
    CF__ADD(w->w_down, D, I, "model.layers.%d.mlp.down_proj.weight", l);
    CF__ADD(w->b_gate, I, 0, "model.layers.%d.mlp.gate_proj.bias", l);
    CF__ADD(w->b_up, I, 0, "model.layers.%d.mlp.up_proj.bias", l);
    CF__ADD(w->b_down, D, 0, "model.layers.%d.mlp.down_proj.bias", l);
    if (!w->router) continue;
    /* experts: qwen3_moe names, or mixtral's as transformers 4.x saves them */
    int mx = c->arch == CF_ARCH_MIXTRAL;
    const char *mod = mx ? "block_sparse_moe" : "mlp";
    int64_t E = c->n_experts, MI = c->moe_intermediate;
    CF__ADD(w->router, E, D, "model.layers.%d.%s.gate.weight", l, mod);
    for (int e = 0; e < E; e++) {
      CF__ADD(w->e_gate[e], MI, D, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e,
              mx ? "w1" : "gate_proj");
      CF__ADD(w->e_up[e], MI, D, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e,
              mx ? "w3" : "up_proj");
      CF__ADD(w->e_down[e], D, MI, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e,
              mx ? "w2" : "down_proj");
    }
  }
  CF__ADD(m->final_norm, D, 0, "model.norm.weight");
  if (!c->tie_embeddings) CF__ADD(m->lm_head, V, D, "lm_head.weight");
#undef CF__ADD
  return n;
}
