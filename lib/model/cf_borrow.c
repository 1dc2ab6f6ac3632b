/* cf_borrow — see cf_borrow.h. Every checkpoint weight is a "logical" matrix [R][K] (a vector:
 * [R][1]); where the engine keeps it is a source: a tensor name, the rows before it inside a
 * fused tensor (part offset, per shard), the fused tensor's rows per shard, and how shards split
 * it (by rows: column-parallel, or by columns: row-parallel). */
#include "model/cf_borrow.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

typedef struct {
  const float *ck;      /* the checkpoint's values [R][K] */
  int64_t R, K;
  char name[160];       /* the engine's tensor */
  int64_t off, rows;    /* this part's first row in a shard of it; the shard's rows (split by rows) */
  int by_cols;          /* row-parallel: shards hold columns */
  int64_t experts;      /* > 0: a fused MoE tensor [experts][rows / experts][K] (vLLM's FusedMoE) */
  const float **view;   /* where the borrowed model's pointer goes */
} cf__w_t;

typedef struct {
  const cf_borrow_tensor_t *t;
  int n;
  int samples;
  cf_borrow_report_t *rep;
  uint8_t *used;        /* [n] */
  int viewable;         /* every weight so far an fp32 whole tensor */
  cf_borrow_fetch_fn fetch; /* device tensors: copies sampled elements to the host (NULL: host memory) */
  void *fetch_ctx;
  int fetch_err;
} cf__ctx_t;

/* The offered tensor `name` of shard `rank` (NULL: none), and its tp_size in *tp. */
static const cf_borrow_tensor_t *cf__find(const cf__ctx_t *x, const char *name, int rank, int *tp) {
  for (int i = 0; i < x->n; i++)
    if (x->t[i].name && !strcmp(x->t[i].name, name) && (rank < 0 || x->t[i].tp_rank == rank)) {
      if (tp) *tp = x->t[i].tp_size > 0 ? x->t[i].tp_size : 1;
      return &x->t[i];
    }
  return NULL;
}

static float cf__elem(cf__ctx_t *x, const cf_borrow_tensor_t *t, int64_t i) {
  float f;
  size_t es = cf_dtype_size(t->dtype);
  const uint8_t *src = (const uint8_t *)t->data + (size_t)i * es;
  uint8_t buf[4];
  if (x->fetch) { /* a device address: one element over */
    int rc = x->fetch(x->fetch_ctx, src, buf, es);
    if (rc && !x->fetch_err) x->fetch_err = rc;
    src = buf;
  }
  cf_dtype_to_f32(t->dtype, src, &f, 1);
  return f;
}

/* Check one logical weight against its source tensor(s) and point its view into them. */
static int cf__check(cf__ctx_t *x, cf__w_t *w) {
  int tp = 1;
  const cf_borrow_tensor_t *t0 = cf__find(x, w->name, -1, &tp);
  if (!t0) return cf_seterr(CF_ENOTFOUND, "borrowed weights: no tensor '%s' offered", w->name);
  int64_t split = w->by_cols ? w->K : w->R; /* the dimension shards divide */
  if (split % tp)
    return cf_seterr(CF_ESHAPE, "borrowed weights: '%s': %lld %s do not split over %d shards", w->name,
                     (long long)split, w->by_cols ? "columns" : "rows", tp);
  int64_t er = w->by_cols ? w->rows : w->rows / tp, ec = w->by_cols ? w->K / tp : w->K;
  const cf_borrow_tensor_t *sh[64];
  if (tp > 64) return cf_seterr(CF_EUNSUPPORTED, "borrowed weights: '%s': %d shards (at most 64)", w->name, tp);
  for (int r = 0; r < tp; r++) {
    int tpr = 0;
    sh[r] = cf__find(x, w->name, r, &tpr);
    if (!sh[r]) return cf_seterr(CF_ENOTFOUND, "borrowed weights: '%s': shard %d of %d not offered", w->name, r, tp);
    if (tpr != tp)
      return cf_seterr(CF_ESHAPE, "borrowed weights: '%s': shards say tp_size %d and %d", w->name, tp, tpr);
    const cf_borrow_tensor_t *t = sh[r];
    int ok = t->data && (w->experts ? t->ndim == 3 && t->shape[0] == w->experts && t->shape[0] * t->shape[1] == er &&
                                          t->shape[2] == ec
                         : w->K == 1 && !w->by_cols ? (t->ndim == 1 && t->shape[0] == er) ||
                                                          (t->ndim == 2 && t->shape[0] == er && t->shape[1] == 1)
                                                    : t->ndim == 2 && t->shape[0] == er && t->shape[1] == ec);
    if (!ok) {
      char has[96], want[96];
      int k = snprintf(has, sizeof has, "[%lld", (long long)t->shape[0]);
      for (int d = 1; d < t->ndim && d < 3; d++) k += snprintf(has + k, sizeof has - (size_t)k, ", %lld", (long long)t->shape[d]);
      snprintf(has + k, sizeof has - (size_t)k, "]");
      if (w->experts)
        snprintf(want, sizeof want, "[%lld, %lld, %lld]", (long long)w->experts, (long long)(er / w->experts), (long long)ec);
      else
        snprintf(want, sizeof want, "[%lld, %lld]", (long long)er, (long long)ec);
      return cf_seterr(CF_ESHAPE, "borrowed weights: '%s' (shard %d of %d): shape %s, expected %s%s", w->name, r, tp,
                       has, want, t->data ? "" : " (and no data)");
    }
    if (t->dtype != CF_DT_F32 && t->dtype != CF_DT_BF16 && t->dtype != CF_DT_F16)
      return cf_seterr(CF_EDTYPE, "borrowed weights: '%s': dtype %s (f32, bf16 or f16 expected)", w->name,
                       cf_dtype_name(t->dtype));
    if (t->dtype != t0->dtype)
      return cf_seterr(CF_EDTYPE, "borrowed weights: '%s': shards of dtypes %s and %s", w->name,
                       cf_dtype_name(t0->dtype), cf_dtype_name(t->dtype));
    x->used[t - x->t] = 1;
  }
  /* samples: the first and last element and `samples` spread by a hash of the name */
  int64_t n = w->R * w->K;
  uint64_t hsh = 1469598103934665603ULL;
  for (const char *p = w->name; *p; p++) hsh = (hsh ^ (uint8_t)*p) * 1099511628211ULL;
  hsh ^= (uint64_t)w->off; /* each expert of a fused tensor at its own positions */
  for (int k = 0; k < x->samples + 2; k++) {
    int64_t e = k == 0 ? 0 : k == 1 ? n - 1 : (int64_t)((hsh = hsh * 6364136223846793005ULL + 1442695040888963407ULL) >> 11) % n;
    int64_t i = e / w->K, j = e % w->K, r, li, lj;
    if (w->by_cols) { r = j / ec; li = w->off + i; lj = j % ec; }
    else { int64_t per = w->R / tp; r = i / per; li = w->off / tp + i % per; lj = j; }
    const cf_borrow_tensor_t *t = sh[r];
    float want = w->ck[e], got = cf__elem(x, t, li * ec + lj);
    if (x->fetch_err) return x->fetch_err;
    uint8_t buf[4];
    cf_dtype_from_f32(t->dtype, &want, buf, 1); /* the checkpoint as the engine's dtype holds it */
    cf_dtype_to_f32(t->dtype, buf, &want, 1);
    if (memcmp(&want, &got, 4))
      return cf_seterr(CF_EMISMATCH, "borrowed weights: '%s' (shard %lld of %d) element [%lld, %lld] = %.9g, the "
                       "checkpoint has %.9g: not the served model's weights", w->name, (long long)r, tp,
                       (long long)li, (long long)lj, (double)got, (double)want);
    x->rep->elements_checked++;
  }
  x->rep->weights++;
  if (tp != 1 || t0->dtype != CF_DT_F32) x->viewable = 0;
  if (w->view) *w->view = x->viewable ? (const float *)t0->data + (size_t)w->off * w->K : NULL;
  x->rep->bytes_viewed += w->R * w->K * 4;
  return 0;
}

/* A weight that may be fused: `fused` with parts of the given row counts (part index `part`), or
 * unfused `alone` (transformers' names). */
static int cf__fused(cf__ctx_t *x, const float *ck, int64_t K, const char *fused, const int64_t *parts,
                     int nparts, int part, const char *alone, const float **view) {
  cf__w_t w = {.ck = ck, .R = parts[part], .K = K, .view = view};
  int tp = 1;
  if (cf__find(x, fused, -1, &tp)) {
    snprintf(w.name, sizeof w.name, "%s", fused);
    for (int p = 0; p < nparts; p++) w.rows += parts[p];
    for (int p = 0; p < part; p++) w.off += parts[p];
    if (w.off % tp || w.rows % tp)
      return cf_seterr(CF_ESHAPE, "borrowed weights: '%s': parts do not split over %d shards", fused, tp);
  } else {
    snprintf(w.name, sizeof w.name, "%s", alone);
    w.rows = w.R;
  }
  return cf__check(x, &w);
}

static int cf__whole(cf__ctx_t *x, const float *ck, int64_t R, int64_t K, int by_cols, const char *name,
                     const float **view) {
  cf__w_t w = {.ck = ck, .R = R, .K = K, .rows = R, .by_cols = by_cols, .view = view};
  snprintf(w.name, sizeof w.name, "%s", name);
  return cf__check(x, &w);
}

/* Expert e's matrix [R][K] of a MoE layer: in vLLM's fused `fused` [E][rpe][K] (rows `in` ..
 * `in` + R of expert e's rpe; by_cols: w2, shards hold columns), else transformers' `alone`. */
static int cf__expert(cf__ctx_t *x, const float *ck, int64_t R, int64_t K, const char *fused, int64_t E, int e,
                      int64_t rpe, int64_t in, int by_cols, const char *alone, const float **view) {
  int tp = 1;
  if (!cf__find(x, fused, -1, &tp)) return cf__whole(x, ck, R, K, by_cols, alone, view);
  cf__w_t w = {.ck = ck, .R = R, .K = K, .rows = E * rpe, .off = e * rpe + in, .by_cols = by_cols, .experts = E,
               .view = view};
  snprintf(w.name, sizeof w.name, "%s", fused);
  if (!by_cols && (w.off % tp || R % tp))
    return cf_seterr(CF_ESHAPE, "borrowed weights: '%s': expert %d's rows do not split over %d shards", fused, e, tp);
  return cf__check(x, &w);
}

/* A MoE layer's router [E][H] and experts: vLLM's FusedMoE `<mod>.experts.w13_weight` [E][2I][H]
 * (gate rows, then up: w1, w3) and `w2_weight` [E][H][I], or transformers' per-expert tensors;
 * <mod> "mlp" (qwen3_moe) or "block_sparse_moe" (mixtral), whichever router is offered. */
static int cf__moe(cf__ctx_t *x, const cf_model_config_t *c, int l, const cf_layer_weights_t *w,
                   cf_layer_weights_t *v) {
  char a[160], f[160];
  snprintf(a, sizeof a, "model.layers.%d.block_sparse_moe.gate.weight", l);
  const char *mod = cf__find(x, a, -1, NULL) ? "block_sparse_moe" : "mlp";
  snprintf(a, sizeof a, "model.layers.%d.%s.experts.0.w1.weight", l, mod);
  int w123 = cf__find(x, a, -1, NULL) != NULL; /* mixtral's unfused names */
  int64_t E = c->n_experts, H = c->hidden, I = c->moe_intermediate;
  snprintf(a, sizeof a, "model.layers.%d.%s.gate.weight", l, mod);
  int rc = cf__whole(x, w->router, E, H, 0, a, v ? &v->router : NULL);
  for (int e = 0; e < E && !rc; e++) {
    snprintf(f, sizeof f, "model.layers.%d.%s.experts.w13_weight", l, mod);
    snprintf(a, sizeof a, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e, w123 ? "w1" : "gate_proj");
    rc = cf__expert(x, w->e_gate[e], I, H, f, E, e, 2 * I, 0, 0, a, v ? &v->e_gate[e] : NULL);
    snprintf(a, sizeof a, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e, w123 ? "w3" : "up_proj");
    if (!rc) rc = cf__expert(x, w->e_up[e], I, H, f, E, e, 2 * I, I, 0, a, v ? &v->e_up[e] : NULL);
    snprintf(f, sizeof f, "model.layers.%d.%s.experts.w2_weight", l, mod);
    snprintf(a, sizeof a, "model.layers.%d.%s.experts.%d.%s.weight", l, mod, e, w123 ? "w2" : "down_proj");
    if (!rc) rc = cf__expert(x, w->e_down[e], H, I, f, E, e, H, 0, 1, a, v ? &v->e_down[e] : NULL);
  }
  return rc;
}

static int cf__run(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples, cf_borrow_report_t *rep,
                   cf_model_t *b, cf_borrow_fetch_fn fetch, void *fetch_ctx) {
  const cf_model_config_t *c = &m->cfg;
  cf__ctx_t x = {.t = t, .n = n, .samples = samples > 0 ? samples : 0, .rep = rep, .viewable = 1, .fetch = fetch,
                 .fetch_ctx = fetch_ctx};
  if (!(x.used = calloc((size_t)(n > 0 ? n : 1), 1))) return cf_seterr(CF_ENOMEM, "borrowed weights");
  int64_t H = c->hidden, hd = c->head_dim, nq = (int64_t)c->n_heads * hd, nkv = (int64_t)c->n_kv_heads * hd;
  int64_t I = c->intermediate, qkv[3] = {nq, nkv, nkv}, gu[2] = {I, I};
  char a[160], f[160];
  int rc = 0;
#define NM(buf, fmt) snprintf(buf, sizeof buf, "model.layers.%d." fmt, l)
  for (int l = 0; l < c->n_layers && !rc; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    cf_layer_weights_t *v = b ? &b->layers[l] : NULL;
    const char *qn[3] = {"q_proj", "k_proj", "v_proj"};
    const float *wck[3] = {w->wq, w->wk, w->wv}, *bck[3] = {w->bq, w->bk, w->bv};
    const float **wv[3] = {v ? &v->wq : NULL, v ? &v->wk : NULL, v ? &v->wv : NULL};
    const float **bv[3] = {v ? &v->bq : NULL, v ? &v->bk : NULL, v ? &v->bv : NULL};
    for (int p = 0; p < 3 && !rc; p++) {
      NM(f, "self_attn.qkv_proj.weight");
      snprintf(a, sizeof a, "model.layers.%d.self_attn.%s.weight", l, qn[p]);
      rc = cf__fused(&x, wck[p], H, f, qkv, 3, p, a, wv[p]);
      if (!rc && bck[p]) {
        NM(f, "self_attn.qkv_proj.bias");
        snprintf(a, sizeof a, "model.layers.%d.self_attn.%s.bias", l, qn[p]);
        rc = cf__fused(&x, bck[p], 1, f, qkv, 3, p, a, bv[p]);
      }
    }
    if (!rc) { NM(a, "self_attn.o_proj.weight"); rc = cf__whole(&x, w->wo, H, nq, 1, a, v ? &v->wo : NULL); }
    if (!rc && w->bo) { NM(a, "self_attn.o_proj.bias"); rc = cf__whole(&x, w->bo, H, 1, 0, a, v ? &v->bo : NULL); }
    if (!rc && w->q_norm) { NM(a, "self_attn.q_norm.weight"); rc = cf__whole(&x, w->q_norm, hd, 1, 0, a, v ? &v->q_norm : NULL); }
    if (!rc && w->k_norm) { NM(a, "self_attn.k_norm.weight"); rc = cf__whole(&x, w->k_norm, hd, 1, 0, a, v ? &v->k_norm : NULL); }
    if (!rc) { NM(a, "input_layernorm.weight"); rc = cf__whole(&x, w->attn_norm, H, 1, 0, a, v ? &v->attn_norm : NULL); }
    if (!rc) { NM(a, "post_attention_layernorm.weight"); rc = cf__whole(&x, w->mlp_norm, H, 1, 0, a, v ? &v->mlp_norm : NULL); }
    if (!rc && c->layer_moe[l]) { rc = cf__moe(&x, c, l, w, v); continue; }
    if (!rc) { NM(f, "mlp.gate_up_proj.weight"); NM(a, "mlp.gate_proj.weight"); rc = cf__fused(&x, w->w_gate, H, f, gu, 2, 0, a, v ? &v->w_gate : NULL); }
    if (!rc) { NM(f, "mlp.gate_up_proj.weight"); NM(a, "mlp.up_proj.weight"); rc = cf__fused(&x, w->w_up, H, f, gu, 2, 1, a, v ? &v->w_up : NULL); }
    if (!rc) { NM(a, "mlp.down_proj.weight"); rc = cf__whole(&x, w->w_down, H, I, 1, a, v ? &v->w_down : NULL); }
    if (!rc && (w->b_gate || w->b_up || w->b_down))
      rc = cf_seterr(CF_EUNSUPPORTED, "borrowed weights: MLP biases (layer %d) are not resolved yet", l);
  }
#undef NM
  if (!rc) rc = cf__whole(&x, m->embed, c->vocab, H, 0, "model.embed_tokens.weight", b ? &b->embed : NULL);
  if (!rc) rc = cf__whole(&x, m->final_norm, H, 1, 0, "model.norm.weight", b ? &b->final_norm : NULL);
  if (!rc && m->lm_head && m->lm_head != m->embed)
    rc = cf__whole(&x, m->lm_head, c->vocab, H, 0, "lm_head.weight", b ? &b->lm_head : NULL);
  if (!rc && b && !x.viewable)
    rc = cf_seterr(CF_EUNSUPPORTED, "borrowed weights: the CPU backend reads fp32 weights offered whole; these are "
                   "%s", "bf16/f16 or tensor-parallel shards (checked, not viewed: the daemon keeps its own copy)");
  for (int i = 0; i < n; i++) rep->tensors_used += x.used[i];
  free(x.used);
  return rc;
}

int cf_borrow_check(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples,
                    cf_borrow_report_t *rep) {
  cf_borrow_report_t dummy;
  if (!rep) rep = &dummy;
  memset(rep, 0, sizeof *rep);
  if (!m) return cf_seterr(CF_EINVAL, "borrowed weights: no model");
  return cf__run(m, t, n, samples, rep, NULL, NULL, NULL);
}

int cf_borrow_model(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples,
                    cf_model_t **out, cf_borrow_report_t *rep) {
  cf_borrow_report_t dummy;
  if (!rep) rep = &dummy;
  memset(rep, 0, sizeof *rep);
  *out = NULL;
  if (!m) return cf_seterr(CF_EINVAL, "borrowed weights: no model");
  cf_model_t *b = calloc(1, sizeof *b);
  if (!b || !(b->layers = calloc((size_t)m->cfg.n_layers, sizeof *b->layers))) {
    free(b);
    return cf_seterr(CF_ENOMEM, "borrowed weights: model");
  }
  b->cfg = m->cfg;
  memcpy(b->fingerprint, m->fingerprint, sizeof b->fingerprint);
  for (int l = 0; l < m->cfg.n_layers; l++) { /* a MoE layer's expert views: one array of 3 x E */
    if (!m->cfg.layer_moe[l] || m->cfg.n_experts <= 0) continue;
    const float **arr = calloc(3 * (size_t)m->cfg.n_experts, sizeof *arr);
    if (!arr) { cf_borrow_free(b); return cf_seterr(CF_ENOMEM, "borrowed weights: expert views"); }
    b->layers[l].e_gate = arr;
    b->layers[l].e_up = arr + m->cfg.n_experts;
    b->layers[l].e_down = arr + 2 * m->cfg.n_experts;
  }
  if (m->lm_head == m->embed) b->lm_head = NULL; /* tied: set below */
  int rc = cf__run(m, t, n, samples, rep, b, NULL, NULL);
  if (rc) { cf_borrow_free(b); return rc; }
  if (m->lm_head == m->embed) b->lm_head = b->embed;
  *out = b;
  return 0;
}

void cf_borrow_free(cf_model_t *b) {
  if (!b) return;
  for (int l = 0; b->layers && l < b->cfg.n_layers; l++) free((void *)b->layers[l].e_gate); /* the 3 x E array */
  free(b->layers);
  free(b);
}

/* The tensor `name` as the CUDA backend reads it: vLLM's fused name, bf16, whole (tp 1), [R][K]. */
static int cf__dev_tensor(const cf_borrow_tensor_t *t, int n, const char *name, int64_t R, int64_t K,
                          const void **out) {
  for (int i = 0; i < n; i++)
    if (t[i].name && !strcmp(t[i].name, name)) {
      if (t[i].tp_size > 1 || t[i].dtype != CF_DT_BF16 || t[i].ndim != 2 || t[i].shape[0] != R || t[i].shape[1] != K)
        return cf_seterr(CF_EUNSUPPORTED, "borrowed weights: '%s': the cuda backend reads vLLM's fused bf16 tensors "
                         "whole [%lld, %lld] (checked, not used: the daemon keeps its own copy)", name, (long long)R,
                         (long long)K);
      *out = t[i].data;
      return 0;
    }
  return cf_seterr(CF_EUNSUPPORTED, "borrowed weights: no '%s': the cuda backend reads vLLM's fused tensors "
                   "(qkv_proj, gate_up_proj), not unfused ones (checked, not used)", name);
}

int cf_borrow_device(const cf_model_t *m, const cf_borrow_tensor_t *t, int n, int samples, cf_borrow_fetch_fn fetch,
                     void *ctx, cf_borrow_dev_t *out, cf_borrow_report_t *rep) {
  cf_borrow_report_t dummy;
  if (!rep) rep = &dummy;
  memset(rep, 0, sizeof *rep);
  memset(out, 0, sizeof *out);
  if (!m || !fetch) return cf_seterr(CF_EINVAL, "borrowed weights: no model or no fetch");
  int rc = cf__run(m, t, n, samples, rep, NULL, fetch, ctx);
  if (rc) return rc;
  const cf_model_config_t *c = &m->cfg;
  if (c->n_experts > 0)
    return cf_seterr(CF_EUNSUPPORTED, "borrowed weights: the cuda backend does not read an engine's MoE experts yet "
                     "(checked, not used: the daemon keeps its own copy)");
  int64_t H = c->hidden, hd = c->head_dim, nq = (int64_t)c->n_heads * hd, nkv = (int64_t)c->n_kv_heads * hd;
  if (!(out->layers = calloc((size_t)c->n_layers, sizeof *out->layers))) return cf_seterr(CF_ENOMEM, "borrowed weights");
  char nm[160];
  for (int l = 0; l < c->n_layers && !rc; l++) {
    cf_borrow_dev_layer_t *L = &out->layers[l];
    snprintf(nm, sizeof nm, "model.layers.%d.self_attn.qkv_proj.weight", l);
    rc = cf__dev_tensor(t, n, nm, nq + 2 * nkv, H, &L->wqkv);
    snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l);
    if (!rc) rc = cf__dev_tensor(t, n, nm, H, nq, &L->wo);
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_up_proj.weight", l);
    if (!rc) rc = cf__dev_tensor(t, n, nm, 2 * (int64_t)c->intermediate, H, &L->wgu);
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
    if (!rc) rc = cf__dev_tensor(t, n, nm, H, c->intermediate, &L->wdown);
  }
  if (!rc) rc = cf__dev_tensor(t, n, "model.embed_tokens.weight", c->vocab, H, &out->embed);
  if (rc) cf_borrow_device_free(out);
  return rc;
}

void cf_borrow_device_free(cf_borrow_dev_t *d) {
  free(d->layers);
  memset(d, 0, sizeof *d);
}
