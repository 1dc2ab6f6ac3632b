/* lib/model CPU backend: against an independent double-precision reference written here
 * (plain loops, full causal softmax), chunked and staircase computations against the whole,
 * argument checks, and golden KV made by transformers (fixtures). */
#include "cf_test.h"
#include "model/cf_backend.h"
#include "model/cf_kv.h"
#include "model/cf_model_synth.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- helpers */

/* KV buffers for T tokens, every cell NaN until written (so a missed cell fails the compare). */
static void kv_alloc(cf_kv_t *kv, const cf_model_config_t *c, int T) {
  CF_CHECK_OK(cf_kv_init(kv, c, T));
  for (int l = 0; l < kv->n_layers; l++)
    for (size_t i = 0; i < kv->row * T; i++) kv->k[l][i] = kv->v[l][i] = NAN;
}

static double kv_rel_err(const cf_kv_t *a, const cf_kv_t *ref) {
  double e = INFINITY;
  CF_CHECK_OK(cf_kv_max_rel_err(a, ref, &e, NULL, NULL));
  return e;
}

static int forward(cf_backend_t *be, int l0, int l1, int t0, int t1, const int32_t *tok,
                   const float *hin, float *hout, cf_kv_t *kv) {
  cf_fwd_args_t a = {.l0 = l0, .l1 = l1, .t0 = t0, .t1 = t1, .tokens = tok, .hidden_in = hin,
                     .k = kv->k + l0, .v = kv->v + l0, .hidden_out = hout};
  return cf_backend_forward(be, &a);
}

/* ---------------------------------------------------------------- reference (double) */

static void ref_rmsnorm(const double *x, const float *w, double eps, double *y, int n) {
  double ss = 0;
  for (int i = 0; i < n; i++) ss += x[i] * x[i];
  double inv = 1.0 / sqrt(ss / n + eps);
  for (int i = 0; i < n; i++) y[i] = x[i] * inv * w[i];
}

static void ref_linear(const double *x, const float *W, const float *b, int in, int out,
                       double *y) {
  for (int o = 0; o < out; o++) {
    double s = b ? b[o] : 0;
    for (int i = 0; i < in; i++) s += x[i] * W[(size_t)o * in + i];
    y[o] = s;
  }
}

static double ref_inv_freq(const cf_model_config_t *c, int i) {
  double f = 1.0 / pow(c->rope_theta, (2.0 * i) / c->head_dim);
  if (c->rope_kind != CF_ROPE_LLAMA3) return f;
  double lw = c->rope_orig_max_pos / c->rope_low_freq_factor;
  double hw = c->rope_orig_max_pos / c->rope_high_freq_factor;
  double wl = 2 * M_PI / f;
  if (wl < hw) return f;
  if (wl > lw) return f / c->rope_factor;
  double s = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
             (c->rope_high_freq_factor - c->rope_low_freq_factor);
  return (1 - s) * f / c->rope_factor + s * f;
}

static void ref_rope(double *x, int hd, int pos, const cf_model_config_t *c) {
  int half = hd / 2;
  for (int i = 0; i < half; i++) {
    double a = pos * ref_inv_freq(c, i), x1 = x[i], x2 = x[i + half];
    x[i] = x1 * cos(a) - x2 * sin(a);
    x[i + half] = x2 * cos(a) + x1 * sin(a);
  }
}

/* Mixture of experts for one token, in double: softmax over all experts, the top_k by
 * probability, renormalised when norm_topk, x += sum p_e * down_e(silu(gate_e h) * up_e h). */
static void ref_moe(const cf_model_config_t *c, const cf_layer_weights_t *w, const double *h,
                    double *x) {
  int E = c->n_experts, D = c->hidden, MI = c->moe_intermediate;
  double *p = malloc(sizeof(double) * E), *g = malloc(sizeof(double) * MI);
  double *u = malloc(sizeof(double) * MI), *y = malloc(sizeof(double) * D);
  int *used = calloc(E, sizeof(int));
  double mx = -INFINITY, sum = 0, tot = 0;
  ref_linear(h, w->router, NULL, D, E, p);
  for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
  for (int e = 0; e < E; e++) sum += (p[e] = exp(p[e] - mx));
  for (int e = 0; e < E; e++) p[e] /= sum;
  for (int k = 0; k < c->top_k; k++) {
    int best = -1;
    for (int e = 0; e < E; e++)
      if (!used[e] && (best < 0 || p[e] > p[best])) best = e;
    used[best] = 1;
    tot += p[best];
  }
  for (int e = 0; e < E; e++) {
    if (!used[e]) continue;
    double pe = c->norm_topk ? p[e] / tot : p[e];
    ref_linear(h, w->e_gate[e], NULL, D, MI, g);
    ref_linear(h, w->e_up[e], NULL, D, MI, u);
    for (int i = 0; i < MI; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
    ref_linear(g, w->e_down[e], NULL, MI, D, y);
    for (int i = 0; i < D; i++) x[i] += pe * y[i];
  }
  free(p); free(g); free(u); free(y); free(used);
}

/* KV of all layers for tokens[0..T) into kv (float), computed in double. */
static void ref_forward(const cf_model_t *m, const int32_t *tok, int T, cf_kv_t *kv) {
  const cf_model_config_t *c = &m->cfg;
  int D = c->hidden, hd = c->head_dim, H = c->n_heads, G = c->n_kv_heads, I = c->intermediate;
  int qd = H * hd, kvd = G * hd;
  double *x = malloc(sizeof(double) * T * D), *h = malloc(sizeof(double) * D);
  double *q = malloc(sizeof(double) * T * qd), *k = malloc(sizeof(double) * T * kvd);
  double *v = malloc(sizeof(double) * T * kvd), *att = malloc(sizeof(double) * qd);
  double *p = malloc(sizeof(double) * T), *tmp = malloc(sizeof(double) * (D > I ? D : I));
  double *g = malloc(sizeof(double) * I), *u = malloc(sizeof(double) * I);
  for (int t = 0; t < T; t++)
    for (int i = 0; i < D; i++) x[(size_t)t * D + i] = m->embed[(size_t)tok[t] * D + i];
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    for (int t = 0; t < T; t++) {
      ref_rmsnorm(x + (size_t)t * D, w->attn_norm, c->rms_eps, h, D);
      ref_linear(h, w->wq, w->bq, D, qd, q + (size_t)t * qd);
      ref_linear(h, w->wk, w->bk, D, kvd, k + (size_t)t * kvd);
      ref_linear(h, w->wv, w->bv, D, kvd, v + (size_t)t * kvd);
      for (int hh = 0; hh < H; hh++) {
        double *qh = q + (size_t)t * qd + hh * hd;
        if (c->qk_norm) { ref_rmsnorm(qh, w->q_norm, c->rms_eps, tmp, hd); memcpy(qh, tmp, sizeof(double) * hd); }
        ref_rope(qh, hd, t, c);
      }
      for (int gg = 0; gg < G; gg++) {
        double *kh = k + (size_t)t * kvd + gg * hd;
        if (c->qk_norm) { ref_rmsnorm(kh, w->k_norm, c->rms_eps, tmp, hd); memcpy(kh, tmp, sizeof(double) * hd); }
        ref_rope(kh, hd, t, c);
      }
    }
    for (size_t i = 0; i < (size_t)T * kvd; i++) { kv->k[l][i] = (float)k[i]; kv->v[l][i] = (float)v[i]; }
    for (int t = 0; t < T; t++) {
      int W = cf_model_layer_window(c, l), j0 = W > 0 && t - W + 1 > 0 ? t - W + 1 : 0;
      for (int hh = 0; hh < H; hh++) {
        int gg = hh / (H / G);
        double mx = -INFINITY, sum = 0;
        for (int j = j0; j <= t; j++) {
          double s = 0;
          for (int d = 0; d < hd; d++) s += q[(size_t)t * qd + hh * hd + d] * k[(size_t)j * kvd + gg * hd + d];
          p[j] = s / sqrt((double)hd);
          if (p[j] > mx) mx = p[j];
        }
        for (int j = j0; j <= t; j++) { p[j] = exp(p[j] - mx); sum += p[j]; }
        for (int d = 0; d < hd; d++) {
          double s = 0;
          for (int j = j0; j <= t; j++) s += p[j] * v[(size_t)j * kvd + gg * hd + d];
          att[hh * hd + d] = s / sum;
        }
      }
      double *xt = x + (size_t)t * D;
      ref_linear(att, w->wo, w->bo, qd, D, tmp);
      for (int i = 0; i < D; i++) xt[i] += tmp[i];
      ref_rmsnorm(xt, w->mlp_norm, c->rms_eps, h, D);
      if (c->layer_moe[l]) {
        ref_moe(c, w, h, xt);
        continue;
      }
      ref_linear(h, w->w_gate, w->b_gate, D, I, g);
      ref_linear(h, w->w_up, w->b_up, D, I, u);
      for (int i = 0; i < I; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
      ref_linear(g, w->w_down, w->b_down, I, D, tmp);
      for (int i = 0; i < D; i++) xt[i] += tmp[i];
    }
  }
  free(x); free(h); free(q); free(k); free(v); free(att); free(p); free(tmp); free(g); free(u);
}

/* ---------------------------------------------------------------- synthetic models */

/* Every feature at once: biases everywhere, q/k norm, llama3 RoPE scaling whose three bands
 * (kept, scaled, smoothed) all occur for head_dim 16, GQA 4:2, head_dim*heads != hidden. */
static cf_model_t *full_feature_model(void) {
  cf_model_config_t c;
  CF_CHECK_OK(cf_synth_preset("tiny", &c));
  c.hidden = 48; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16; c.intermediate = 80;
  c.n_layers = 3; c.vocab = 97;
  c.qkv_bias = c.o_bias = c.mlp_bias = c.qk_norm = 1;
  c.rope_kind = CF_ROPE_LLAMA3; c.rope_theta = 500000.0; c.rope_factor = 8;
  c.rope_low_freq_factor = 1; c.rope_high_freq_factor = 4; c.rope_orig_max_pos = 64;
  c.rms_eps = 1e-6;
  cf_synth_opts_t o = {.seed = 7, .std = 0.15f, .norm_jitter = 0.3f};
  cf_model_t *m = NULL;
  CF_CHECK_OK(cf_model_synth(&c, &o, &m));
  return m;
}

static int32_t *rand_tokens(int T, int vocab) {
  int32_t *t = malloc(sizeof(int32_t) * T);
  for (int i = 0; i < T; i++) t[i] = (int32_t)(cf_test_rand() % vocab);
  return t;
}

/* ---------------------------------------------------------------- tests */

/* The backend with `threads` threads against ref_forward for T random tokens; takes m. */
static void check_vs_reference(cf_model_t *m, int threads, int T) {
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, threads, &be));
  int32_t *tok = rand_tokens(T, m->cfg.vocab);
  cf_kv_t ref, got;
  kv_alloc(&ref, &m->cfg, T);
  kv_alloc(&got, &m->cfg, T);
  ref_forward(m, tok, T, &ref);
  CF_CHECK_OK(forward(be, 0, m->cfg.n_layers, 0, T, tok, NULL, NULL, &got));
  double e = kv_rel_err(&got, &ref);
  CF_CHECK_MSG(e <= 2e-5, "cpu (%d threads) vs double reference: max rel err %.3g", threads, e);
  cf_kv_free(&ref); cf_kv_free(&got); free(tok);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

CF_TEST(cpu_matches_double_reference_every_feature) {
  /* 300 tokens cross the 256-key attention block and the 64-query blocks */
  check_vs_reference(full_feature_model(), 2, 300);
}

/* Plain llama with multi-head (4 KV heads of 4), multi-query (1 of 4) and 8:2 GQA attention:
 * the kernel stacks the query heads of a KV group, so every group width is checked. */
CF_TEST(cpu_plain_llama_mha_mqa_match_reference) {
  int kv_heads[] = {4, 1, 2};
  for (int i = 0; i < 3; i++) {
    cf_model_config_t c;
    CF_CHECK_OK(cf_synth_preset("tiny", &c));
    c.n_kv_heads = kv_heads[i];
    if (i == 2) { c.n_heads = 8; c.head_dim = 8; }
    cf_synth_opts_t o = {.seed = 3 + i, .std = 0.1f};
    cf_model_t *m;
    CF_CHECK_OK(cf_model_synth(&c, &o, &m));
    check_vs_reference(m, i == 0 ? 1 : 2, i == 2 ? 300 : 70);
  }
}

/* A qwen3_moe-like model: 6 experts, top-3 without renormalisation, layer 1 dense among MoE
 * layers, q/k norm, windows of 40 keys on layers 0 and 2 (full attention on 1). */
static cf_model_t *moe_window_model(int norm_topk, int window) {
  cf_model_config_t c;
  CF_CHECK_OK(cf_synth_preset("tiny", &c));
  c.arch = CF_ARCH_QWEN3_MOE;
  c.hidden = 48; c.n_heads = 4; c.n_kv_heads = 2; c.head_dim = 16; c.intermediate = 80;
  c.n_layers = 3; c.vocab = 97; c.qk_norm = 1; c.rms_eps = 1e-6;
  c.n_experts = 6; c.top_k = 3; c.moe_intermediate = 24; c.norm_topk = norm_topk;
  c.layer_moe[0] = c.layer_moe[2] = 1;
  c.sliding_window = window;
  c.layer_sliding[0] = c.layer_sliding[2] = window > 0;
  cf_synth_opts_t o = {.seed = 11, .std = 0.2f, .norm_jitter = 0.3f};
  cf_model_t *m = NULL;
  CF_CHECK_OK(cf_model_synth(&c, &o, &m));
  return m;
}

CF_TEST(cpu_moe_and_window_match_double_reference) {
  for (int v = 0; v < 3; v++) { /* renormalised, not, and windowless */
    cf_model_t *m = moe_window_model(v != 1, v == 2 ? 0 : 40);
    check_vs_reference(m, 2, 300); /* 300 > 256: windows cross a key block; frees m */
  }
}

/* Chunk by chunk through the primitive, each call given the KV prefix of the earlier chunks. */
static void chunked_equals_whole(cf_model_t *m) {
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  int T = 1100; /* spans several 512-token layer blocks; not a multiple of any chunk below */
  int32_t *tok = rand_tokens(T, m->cfg.vocab);
  cf_kv_t whole;
  kv_alloc(&whole, &m->cfg, T);
  CF_CHECK_OK(forward(be, 0, m->cfg.n_layers, 0, T, tok, NULL, NULL, &whole));
  int chunks[] = {1, 7, 64, 256, 600};
  for (size_t ci = 0; ci < sizeof chunks / sizeof *chunks; ci++) {
    int C = chunks[ci], TT = C == 1 ? 150 : T; /* chunk 1: 150 tokens keep it quick */
    cf_kv_t kv;
    kv_alloc(&kv, &m->cfg, T);
    for (int t0 = 0; t0 < TT; t0 += C) {
      int t1 = t0 + C < TT ? t0 + C : TT;
      CF_CHECK_OK(forward(be, 0, m->cfg.n_layers, t0, t1, tok + t0, NULL, NULL, &kv));
    }
    double e = 0;
    for (int l = 0; l < kv.n_layers; l++) {
      double ek = cf_rel_err(kv.k[l], whole.k[l], kv.row * TT);
      double ev = cf_rel_err(kv.v[l], whole.v[l], kv.row * TT);
      e = ek > e ? ek : e;
      e = ev > e ? ev : e;
    }
    CF_CHECK_MSG(e <= 1e-5, "chunk %d: max rel err %.3g vs whole", C, e);
    cf_kv_free(&kv);
  }
  cf_kv_free(&whole); free(tok);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

CF_TEST(cpu_chunked_equals_whole) { chunked_equals_whole(full_feature_model()); }

/* MoE layers (expert groups change with the chunk) and a 100-key window at T = 1100. */
CF_TEST(cpu_chunked_equals_whole_moe_window) { chunked_equals_whole(moe_window_model(1, 100)); }

/* Layers split across calls: hidden_out of [0, a) is the hidden_in of [a, L). */
CF_TEST(cpu_layer_split_equals_whole) {
  cf_model_t *m = full_feature_model();
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  int T = 200, L = m->cfg.n_layers, D = m->cfg.hidden;
  int32_t *tok = rand_tokens(T, m->cfg.vocab);
  cf_kv_t whole, kv;
  kv_alloc(&whole, &m->cfg, T);
  kv_alloc(&kv, &m->cfg, T);
  float *h1 = malloc(sizeof(float) * T * D), *h2 = malloc(sizeof(float) * T * D);
  float *hw = malloc(sizeof(float) * T * D);
  CF_CHECK_OK(forward(be, 0, L, 0, T, tok, NULL, hw, &whole));
  CF_CHECK_OK(forward(be, 0, 1, 0, T, tok, NULL, h1, &kv));
  CF_CHECK_OK(forward(be, 1, 2, 0, T, NULL, h1, h2, &kv));
  CF_CHECK_OK(forward(be, 2, L, 0, T, NULL, h2, h2, &kv)); /* in place: hidden_in == hidden_out */
  CF_CHECK_MSG(kv_rel_err(&kv, &whole) <= 1e-6, "layer split: %.3g", kv_rel_err(&kv, &whole));
  CF_CHECK_MSG(cf_rel_err(h2, hw, (size_t)T * D) <= 1e-6, "hidden_out: %.3g",
               cf_rel_err(h2, hw, (size_t)T * D));
  free(h1); free(h2); free(hw);
  cf_kv_free(&whole); cf_kv_free(&kv); free(tok);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

/* Random staircases: chunk c computes its bottom h_c layers through the primitive; its top
 * layers are "loaded" from the whole computation. Computed cells start as NaN, so a cell the
 * staircase failed to write, or a prefix it read before it existed, shows up as an error. */
CF_TEST(cpu_every_staircase_equals_whole) {
  cf_model_t *m = full_feature_model();
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  int L = m->cfg.n_layers, C = 37, T = 37 * 6 + 11, nc = (T + C - 1) / C;
  int32_t *tok = rand_tokens(T, m->cfg.vocab);
  cf_kv_t whole;
  kv_alloc(&whole, &m->cfg, T);
  CF_CHECK_OK(forward(be, 0, L, 0, T, tok, NULL, NULL, &whole));
  size_t row = whole.row;
  for (int trial = 0; trial < 6; trial++) {
    int hgt[16];
    for (int c = 0; c < nc; c++) hgt[c] = (int)(cf_test_rand() % (L + 1));
    if (trial == 0) for (int c = 0; c < nc; c++) hgt[c] = c % 2 ? 0 : L; /* holes */
    if (trial == 1) for (int c = 0; c < nc; c++) hgt[c] = L - c * L / nc; /* descending */
    cf_kv_t kv;
    kv_alloc(&kv, &m->cfg, T);
    for (int c = 0; c < nc; c++) { /* load the top of each chunk */
      int t0 = c * C, t1 = t0 + C < T ? t0 + C : T;
      for (int l = hgt[c]; l < L; l++) {
        memcpy(kv.k[l] + t0 * row, whole.k[l] + t0 * row, sizeof(float) * row * (t1 - t0));
        memcpy(kv.v[l] + t0 * row, whole.v[l] + t0 * row, sizeof(float) * row * (t1 - t0));
      }
    }
    for (int c = 0; c < nc; c++) {
      int t0 = c * C, t1 = t0 + C < T ? t0 + C : T;
      if (hgt[c]) CF_CHECK_OK(forward(be, 0, hgt[c], t0, t1, tok + t0, NULL, NULL, &kv));
    }
    double e = kv_rel_err(&kv, &whole);
    CF_CHECK_MSG(e <= 1e-5, "staircase trial %d: max rel err %.3g", trial, e);
    cf_kv_free(&kv);
  }
  cf_kv_free(&whole); free(tok);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

CF_TEST(cpu_forward_rejects_bad_arguments) {
  cf_model_config_t c;
  CF_CHECK_OK(cf_synth_preset("tiny", &c));
  cf_synth_opts_t o = {.seed = 1, .std = 0.02f};
  cf_model_t *m;
  CF_CHECK_OK(cf_model_synth(&c, &o, &m));
  cf_backend_t *be;
  /* auto picks cuda exactly when the CUDA backend can start, else falls back to cpu */
  cf_backend_t *gpu = NULL;
  int cuda_rc = cf_backend_cuda_create(m, 0, &gpu);
  CF_CHECK_MSG(cuda_rc == 0 || cuda_rc == CF_ENODEV, "cuda create: %s", cf_err_name(cuda_rc));
  cf_backend_free(gpu);
  cf_backend_t *au;
  CF_CHECK_OK(cf_backend_create("auto", m, &au));
  CF_CHECK_STR(au->name, cuda_rc == 0 ? "cuda" : "cpu");
  cf_backend_free(au);
  CF_CHECK_OK(cf_backend_create("cpu", m, &be));
  CF_CHECK_STR(be->name, "cpu");
  cf_kv_t kv;
  kv_alloc(&kv, &c, 8);
  int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  float hid[8 * 64] = {0};
  CF_CHECK_ERR(forward(be, 0, 3, 0, 8, tok, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer range l0=0 l1=3");
  CF_CHECK_ERR(forward(be, 1, 1, 0, 8, NULL, hid, NULL, &kv), CF_EINVAL);
  CF_CHECK_ERR(forward(be, 0, 2, 5, 5, tok, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "token range t0=5 t1=5");
  CF_CHECK_ERR(forward(be, 0, 2, -1, 5, tok, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_ERR(forward(be, 0, 2, 0, 8, NULL, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "tokens is NULL");
  CF_CHECK_ERR(forward(be, 1, 2, 0, 8, NULL, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "hidden_in is NULL");
  tok[5] = 256;
  CF_CHECK_ERR(forward(be, 0, 2, 10, 18, tok, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "tokens[5] (position 15) = 256 outside [0, 256)");
  tok[5] = -1;
  CF_CHECK_ERR(forward(be, 0, 2, 0, 8, tok, NULL, NULL, &kv), CF_EINVAL);
  tok[5] = 6;
  float *saved = kv.v[1];
  kv.v[1] = NULL;
  CF_CHECK_ERR(forward(be, 0, 2, 0, 8, tok, NULL, NULL, &kv), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "v[1] (layer 1) is NULL");
  kv.v[1] = saved;
  cf_fwd_args_t a = {.l0 = 0, .l1 = 2, .t0 = 0, .t1 = 8, .tokens = tok};
  CF_CHECK_ERR(cf_backend_forward(be, &a), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "k is NULL");
  CF_CHECK_ERR(cf_backend_forward(be, NULL), CF_EINVAL);
  CF_CHECK_OK(forward(be, 0, 2, 0, 8, tok, NULL, NULL, &kv));
  cf_backend_t *b2;
  CF_CHECK_ERR(cf_backend_create("tpu", m, &b2), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "backend 'tpu'");
  CF_CHECK(b2 == NULL);
  CF_CHECK_ERR(cf_backend_cpu_create(m, -1, &b2), CF_EINVAL);
  cf_kv_free(&kv);
  cf_backend_free(be);
  cf_model_synth_free(m);
}

CF_TEST(synth_is_deterministic_and_lists_hf_names) {
  cf_model_config_t c;
  CF_CHECK_OK(cf_synth_preset("tiny", &c));
  cf_synth_opts_t o = {.seed = 42, .std = 0.02f};
  cf_model_t *a, *b;
  CF_CHECK_OK(cf_model_synth(&c, &o, &a));
  CF_CHECK_OK(cf_model_synth(&c, &o, &b));
  CF_CHECK(!memcmp(a->layers[1].w_down, b->layers[1].w_down, sizeof(float) * c.hidden * c.intermediate));
  CF_CHECK_EQ(a->layers[0].attn_norm[3] == 1.0f, 1);
  int n = cf_model_hf_tensors(a, NULL, 0);
  CF_CHECK_EQ(n, 1 + 2 * 9 + 2);
  cf_hf_tensor_t t[32];
  CF_CHECK_EQ(cf_model_hf_tensors(a, t, 32), n);
  CF_CHECK_STR(t[0].name, "model.embed_tokens.weight");
  CF_CHECK_STR(t[2].name, "model.layers.0.self_attn.q_proj.weight");
  CF_CHECK_EQ(t[2].shape[0], 64);
  CF_CHECK_STR(t[n - 1].name, "lm_head.weight");
  double s = 0, s2 = 0;
  size_t cnt = (size_t)c.vocab * c.hidden;
  for (size_t i = 0; i < cnt; i++) { s += a->embed[i]; s2 += (double)a->embed[i] * a->embed[i]; }
  CF_CHECK_NEAR(sqrt(s2 / cnt), 0.02, 0.001);
  CF_CHECK_NEAR(s / cnt, 0.0, 0.001);
  cf_model_config_t bad = c;
  bad.n_kv_heads = 3;
  cf_model_t *x;
  CF_CHECK_ERR(cf_model_synth(&bad, &o, &x), CF_EINVAL);
  CF_CHECK_ERR(cf_synth_preset("huge", &bad), CF_EINVAL);
  cf_model_synth_free(a);
  cf_model_synth_free(b);
}

/* ---------------------------------------------------------------- golden (transformers) */

/* Tolerance of the golden checks: max |err| <= 1e-4 * max |ref| per tensor. */
#define GOLDEN_TOL 1e-4

/* The checkpoint in dir against its kv.safetensors (tokens + transformers' KV): whole, with each
 * chunk size in chunks[], and one staircase. Returns how many comparisons ran. */
static int golden_dir(const char *dir, const int *chunks, int nchunks) {
  char path[1024];
  snprintf(path, sizeof path, "%s/kv.safetensors", dir);
  cf_kv_t ref;
  int32_t *tok = NULL;
  int rc = cf_kv_load(path, &ref, &tok);
  CF_CHECK_MSG(rc == 0, "%s: %s", path, cf_errmsg());
  if (rc) return 0;
  CF_CHECK_MSG(tok != NULL, "%s: no tokens tensor", path);
  cf_model_t *m = NULL;
  rc = cf_model_load(dir, &m);
  CF_CHECK_MSG(rc == 0, "%s: %s: %s", dir, cf_strerror(rc), cf_errmsg());
  cf_backend_t *be = NULL;
  if (!rc) CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  int n = 0;
  for (int ci = -1; be && tok && ci <= nchunks; ci++) {
    int chunk = ci < 0 ? 0 : ci < nchunks ? chunks[ci] : 16;
    cf_kv_t kv;
    CF_CHECK_OK(cf_kv_init(&kv, &m->cfg, ref.T));
    if (ci == nchunks) { /* staircase with chunk 16: heights cycling through 0..L */
      int nc = (ref.T + 15) / 16, *h = malloc(sizeof(int) * nc);
      for (int c = 0; c < nc; c++) h[c] = (c * 5 + 1) % (m->cfg.n_layers + 1);
      CF_CHECK_OK(cf_kv_compute_staircase(be, tok, 16, h, nc, &kv));
      free(h);
    } else {
      CF_CHECK_OK(cf_kv_compute(be, tok, chunk, &kv));
    }
    double e = INFINITY;
    int wl = -1;
    char wk = '?';
    CF_CHECK_OK(cf_kv_max_rel_err(&kv, &ref, &e, &wl, &wk));
    CF_CHECK_MSG(e <= GOLDEN_TOL, "%s %s %d: max rel err %.3g at layers.%d.%c (tolerance %g)",
                 dir, ci == nchunks ? "staircase chunk" : "chunk", ci == nchunks ? 16 : chunk,
                 e, wl, wk, GOLDEN_TOL);
    printf("  golden %s %s %d: max rel err %.3g\n", dir,
           ci == nchunks ? "staircase chunk" : "chunk", ci == nchunks ? 16 : chunk, e);
    cf_kv_free(&kv);
    n++;
  }
  cf_backend_free(be);
  cf_model_free(m);
  cf_kv_free(&ref);
  free(tok);
  return n;
}

CF_TEST(golden_public_llama_gqa_whole_and_chunked) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/public-llama-gqa", cf_test_fixtures());
  char ref[600];
  snprintf(ref, sizeof ref, "%s/kv.safetensors", dir);
  if (access(ref, R_OK) != 0) CF_SKIP("fixture public-llama-gqa not present");
  int chunks[] = {1, 7, 64};
  CF_CHECK_EQ(golden_dir(dir, chunks, 3), 5);
}

/* Every transformers-made checkpoint under tests/fixtures/ (families, BF16, llama3 RoPE,
 * sharded, 4.x keys): whatever directories exist, each with its kv.safetensors. */
CF_TEST(golden_every_fixture_checkpoint) {
  const char *root = "tests/fixtures";
  DIR *d = opendir(root);
  if (!d) CF_SKIP("tests/fixtures not present (run from the repository root)");
  int dirs = 0;
  struct dirent *e;
  char names[64][512];
  while ((e = readdir(d)) && dirs < 64) {
    if (e->d_name[0] == '.') continue;
    char p[600];
    snprintf(p, sizeof p, "%s/%.255s/kv.safetensors", root, e->d_name);
    if (access(p, R_OK) != 0) continue;
    snprintf(names[dirs++], sizeof names[0], "%s/%.255s", root, e->d_name);
  }
  closedir(d);
  if (!dirs) CF_SKIP("no checkpoints with kv.safetensors under tests/fixtures");
  int chunks[] = {7, 64};
  for (int i = 0; i < dirs; i++) CF_CHECK_EQ(golden_dir(names[i], chunks, 2), 4);
}

/* qwen3_moe (8 experts, top-2, norm_topk_prob, q/k norm) and mistral with a 32-key window at
 * T = 150, both made by transformers 5.19: whole, chunks 1/7/64 and a staircase. */
static void golden_public(const char *name) {
  char dir[512], ref[600];
  snprintf(dir, sizeof dir, "%s/%s", cf_test_fixtures(), name);
  snprintf(ref, sizeof ref, "%s/kv.safetensors", dir);
  if (access(ref, R_OK) != 0) {
    printf("  fixture %s not present: skipped\n", name);
    return;
  }
  int chunks[] = {1, 7, 64};
  CF_CHECK_EQ(golden_dir(dir, chunks, 3), 5);
}

/* Held-out qwen3_moe with use_sliding_window (tests/fixtures/qwen3moe-window: window 20 at
 * T = 150, dense layers 0 and 2 among MoE ones, BF16): whole, chunks 1/7/64 and a staircase.
 * Then the reading transformers 5 does not do -- windows only on layers >= max_window_layers
 * (2), as 4.x flash attention did -- must miss the golden KV, so the fixture tells them apart. */
CF_TEST(golden_qwen3moe_window_whole_and_chunked) {
  const char *dir = "tests/fixtures/qwen3moe-window";
  if (access("tests/fixtures/qwen3moe-window/kv.safetensors", R_OK) != 0)
    CF_SKIP("tests/fixtures not present (run from the repository root)");
  int chunks[] = {1, 7, 64};
  CF_CHECK_EQ(golden_dir(dir, chunks, 3), 5);
  cf_kv_t ref, kv;
  int32_t *tok = NULL;
  CF_CHECK_OK(cf_kv_load("tests/fixtures/qwen3moe-window/kv.safetensors", &ref, &tok));
  cf_model_t *m = NULL;
  CF_CHECK_OK(cf_model_load(dir, &m));
  if (!m || !tok) return;
  m->cfg.layer_sliding[0] = m->cfg.layer_sliding[1] = 0;
  cf_backend_t *be = NULL;
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  CF_CHECK_OK(cf_kv_init(&kv, &m->cfg, ref.T));
  CF_CHECK_OK(cf_kv_compute(be, tok, 0, &kv));
  double e = 0;
  int wl = -1;
  char wk = '?';
  CF_CHECK_OK(cf_kv_max_rel_err(&kv, &ref, &e, &wl, &wk));
  CF_CHECK_MSG(e > 100 * GOLDEN_TOL, "windows on layers >= 2 only: max rel err %.3g", e);
  printf("  windows on layers >= 2 only (4.x flash reading): max rel err %.3g at layers.%d.%c\n",
         e, wl, wk);
  cf_kv_free(&kv);
  cf_backend_free(be);
  cf_model_free(m);
  cf_kv_free(&ref);
  free(tok);
}

CF_TEST(golden_public_qwen3_moe_whole_and_chunked) { golden_public("public-qwen3-moe"); }
CF_TEST(golden_public_mistral_window_whole_and_chunked) { golden_public("public-mistral-window"); }

/* ---------------------------------------------------------------- MoE checkpoint layouts */

#include "model/cf_safetensors.h"

/* config.json for a synthetic qwen3_moe or mixtral model. */
static void write_moe_config(const char *dir, const cf_model_config_t *c, const char *dtype) {
  char path[600], dense[256] = "", *p = dense;
  for (int l = 0; l < c->n_layers; l++)
    if (!c->layer_moe[l]) p += sprintf(p, "%s%d", p == dense ? "" : ",", l);
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  CF_CHECK(f != NULL);
  if (!f) return;
  int mx = c->arch == CF_ARCH_MIXTRAL;
  fprintf(f, "{\"architectures\":[\"%s\"],\"model_type\":\"%s\",\"hidden_size\":%d,"
          "\"intermediate_size\":%d,\"num_attention_heads\":%d,\"num_key_value_heads\":%d,"
          "\"head_dim\":%d,\"num_hidden_layers\":%d,\"vocab_size\":%d,\"rms_norm_eps\":%.17g,"
          "\"rope_theta\":%.17g,\"tie_word_embeddings\":false,\"dtype\":\"%s\","
          "\"num_experts_per_tok\":%d,",
          mx ? "MixtralForCausalLM" : "Qwen3MoeForCausalLM", mx ? "mixtral" : "qwen3_moe",
          c->hidden, mx ? c->moe_intermediate : c->intermediate, c->n_heads, c->n_kv_heads,
          c->head_dim, c->n_layers, c->vocab, c->rms_eps, c->rope_theta, dtype, c->top_k);
  if (mx)
    fprintf(f, "\"num_local_experts\":%d,\"sliding_window\":%d}", c->n_experts, c->sliding_window);
  else
    fprintf(f, "\"num_experts\":%d,\"moe_intermediate_size\":%d,\"norm_topk_prob\":%s,"
            "\"decoder_sparse_step\":1,\"mlp_only_layers\":[%s],\"sliding_window\":null}",
            c->n_experts, c->moe_intermediate, c->norm_topk ? "true" : "false", dense);
  fclose(f);
}

/* Writes synthetic model m as a checkpoint in dir: experts per expert (the names
 * cf_model_hf_tensors gives: qwen3_moe's, or mixtral's 4.x w1/w2/w3), or stacked as
 * transformers 5 holds them (<module>.experts.gate_up_proj [E][2I][H], .down_proj [E][H][I]),
 * in F32 or BF16. */
static void write_moe_checkpoint(const cf_model_t *m, const char *dir, int stacked, cf_dtype_t dt) {
  const cf_model_config_t *c = &m->cfg;
  mkdir(dir, 0755);
  write_moe_config(dir, c, dt == CF_DT_BF16 ? "bfloat16" : "float32");
  int n = cf_model_hf_tensors(m, NULL, 0);
  cf_hf_tensor_t *t = calloc(n, sizeof *t);
  cf_model_hf_tensors(m, t, n);
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  void **own = calloc(n + 3 * c->n_layers, sizeof *own);
  int no = 0;
  int64_t E = c->n_experts, D = c->hidden, MI = c->moe_intermediate;
  for (int i = 0; i < n; i++) {
    if (stacked && (strstr(t[i].name, ".experts.") || strstr(t[i].name, "block_sparse_moe")))
      continue; /* stacked is the 5.x layout: mixtral's router moves to mlp.gate as well */
    size_t numel = (size_t)t[i].shape[0] * (t[i].ndim == 2 ? (size_t)t[i].shape[1] : 1);
    const void *data = t[i].data;
    if (dt == CF_DT_BF16) {
      own[no] = malloc(numel * 2);
      cf_f32_to_bf16(t[i].data, own[no], numel);
      data = own[no++];
    }
    CF_CHECK_OK(cf_st_writer_add(&w, t[i].name, dt, t[i].ndim, t[i].shape, data));
  }
  char names[2 * 1024][96];
  int nn = 0;
  for (int l = 0; stacked && l < c->n_layers; l++) {
    const cf_layer_weights_t *lw = &m->layers[l];
    if (!lw->router) continue;
    const char *mod = "mlp";
    float *gu = malloc(sizeof(float) * E * 2 * MI * D), *dn = malloc(sizeof(float) * E * D * MI);
    for (int64_t e = 0; e < E; e++) {
      memcpy(gu + e * 2 * MI * D, lw->e_gate[e], sizeof(float) * MI * D);
      memcpy(gu + e * 2 * MI * D + MI * D, lw->e_up[e], sizeof(float) * MI * D);
      memcpy(dn + e * D * MI, lw->e_down[e], sizeof(float) * D * MI);
    }
    void *bgu = gu, *bdn = dn;
    if (dt == CF_DT_BF16) {
      bgu = malloc(E * 2 * MI * D * 2);
      bdn = malloc(E * D * MI * 2);
      cf_f32_to_bf16(gu, bgu, E * 2 * MI * D);
      cf_f32_to_bf16(dn, bdn, E * D * MI);
      free(gu);
      free(dn);
    }
    own[no++] = bgu;
    own[no++] = bdn;
    snprintf(names[nn], sizeof names[nn], "model.layers.%d.%s.experts.gate_up_proj", l, mod);
    CF_CHECK_OK(cf_st_writer_add(&w, names[nn++], dt, 3, (int64_t[]){E, 2 * MI, D}, bgu));
    snprintf(names[nn], sizeof names[nn], "model.layers.%d.%s.experts.down_proj", l, mod);
    CF_CHECK_OK(cf_st_writer_add(&w, names[nn++], dt, 3, (int64_t[]){E, D, MI}, bdn));
    if (c->arch == CF_ARCH_MIXTRAL) { /* 5.x names the router mlp.gate too */
      snprintf(names[nn], sizeof names[nn], "model.layers.%d.mlp.gate.weight", l);
      const void *r = lw->router;
      if (dt == CF_DT_BF16) {
        own[no] = malloc(E * D * 2);
        cf_f32_to_bf16(lw->router, own[no], E * D);
        r = own[no++];
      }
      CF_CHECK_OK(cf_st_writer_add(&w, names[nn++], dt, 2, (int64_t[]){E, D}, r));
    }
  }
  char path[600];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  CF_CHECK_OK(cf_st_writer_write(&w, path));
  cf_st_writer_close(&w);
  for (int i = 0; i < no; i++) free(own[i]);
  free(own);
  free(t);
}

/* KV of tokens through the CPU backend (2 threads). */
static void kv_of(const cf_model_t *m, const int32_t *tok, int T, cf_kv_t *kv) {
  cf_backend_t *be;
  kv_alloc(kv, &m->cfg, T);
  CF_CHECK_OK(cf_backend_cpu_create(m, 2, &be));
  CF_CHECK_OK(cf_kv_compute(be, tok, 0, kv));
  cf_backend_free(be);
}

static int kv_identical(const cf_kv_t *a, const cf_kv_t *b) {
  for (int l = 0; l < a->n_layers; l++)
    if (memcmp(a->k[l], b->k[l], a->row * a->T * 4) || memcmp(a->v[l], b->v[l], a->row * a->T * 4))
      return 0;
  return 1;
}

/* Every expert layout loads to the same weights: the KV through the loaded checkpoint equals,
 * bit for bit, the KV of the in-memory model it was written from (F32), and the per-expert and
 * stacked BF16 checkpoints give identical KV. The router key moves from block_sparse_moe (4.x
 * mixtral) to mlp (5.x). */
CF_TEST(moe_checkpoint_layouts_load_identically) {
  for (int mx = 0; mx < 2; mx++) {
    cf_model_t *m = moe_window_model(1, 0);
    if (mx) { /* mixtral: every layer MoE, experts of intermediate_size, a window */
      cf_model_config_t c = m->cfg;
      cf_model_synth_free(m);
      c.arch = CF_ARCH_MIXTRAL;
      c.qk_norm = 0;
      c.layer_moe[1] = 1;
      c.intermediate = c.moe_intermediate;
      c.top_k = 2;
      c.sliding_window = 20;
      for (int l = 0; l < c.n_layers; l++) c.layer_sliding[l] = 1;
      cf_synth_opts_t o = {.seed = 5, .std = 0.2f, .norm_jitter = 0.3f};
      CF_CHECK_OK(cf_model_synth(&c, &o, &m));
    }
    int T = 70;
    int32_t *tok = rand_tokens(T, m->cfg.vocab);
    cf_kv_t want;
    kv_of(m, tok, T, &want);
    cf_kv_t bf[2];
    for (int lay = 0; lay < 4; lay++) {
      int stacked = lay & 1;
      cf_dtype_t dt = lay < 2 ? CF_DT_F32 : CF_DT_BF16;
      char dir[600];
      snprintf(dir, sizeof dir, "%s/moe-%s-%d", cf_test_tmpdir(), mx ? "mixtral" : "qwen3moe", lay);
      write_moe_checkpoint(m, dir, stacked, dt);
      cf_model_t *ld = NULL;
      int rc = cf_model_load(dir, &ld);
      CF_CHECK_MSG(rc == 0, "%s: %s", dir, cf_errmsg());
      if (rc) continue;
      CF_CHECK_EQ(ld->cfg.n_experts, m->cfg.n_experts);
      CF_CHECK_EQ(ld->cfg.sliding_window, m->cfg.sliding_window);
      CF_CHECK(memcmp(ld->cfg.layer_moe, m->cfg.layer_moe, sizeof m->cfg.layer_moe) == 0);
      cf_kv_t got;
      kv_of(ld, tok, T, &got);
      if (dt == CF_DT_F32) {
        CF_CHECK_MSG(kv_identical(&got, &want), "%s: KV differs from the in-memory model", dir);
        cf_kv_free(&got);
      } else {
        bf[stacked] = got;
      }
      cf_model_free(ld);
    }
    CF_CHECK_MSG(kv_identical(&bf[0], &bf[1]), "%s BF16: stacked and per-expert KV differ",
                 mx ? "mixtral" : "qwen3_moe");
    /* the BF16 files really hold rounded weights (a flipped routing choice makes the gap big) */
    double e = kv_rel_err(&bf[0], &want);
    CF_CHECK_MSG(e > 0 && isfinite(e), "BF16 checkpoint vs F32 model: rel err %.3g", e);
    cf_kv_free(&bf[0]);
    cf_kv_free(&bf[1]);
    cf_kv_free(&want);
    free(tok);
    cf_model_synth_free(m);
  }
}
