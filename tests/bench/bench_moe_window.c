/* bench_moe_window — CPU backend cost of the two new layer kinds, as ratios measured in one run.
 *
 * 1. MoE layer prefill (a Qwen3-MoE-like layer scaled to this CPU: hidden 1024, 16 heads of 64,
 *    4 KV heads, 64 experts of 384, top-8, norm_topk) at T = 2048 tokens, one layer:
 *    - tokens/s;
 *    - achieved FLOP/s on the active parameters (q/k/v/o, router, the 8 routed experts'
 *      gate/up/down per token, attention over the causal triangle) as a ratio to OpenBLAS sgemm
 *      on a 2048³ product with the same 2 threads (goal >= 0.5);
 *    - time as a ratio to the dense layer of the same active size (intermediate = 8 x 384 =
 *      3072), same attention.
 * 2. Sliding-window attention at T >> window (T = 8192, window 512, 8 query heads of 64 over 2
 *    KV heads): the CPU attention kernel alone (cf__attn_rows over 64-query blocks, one thread,
 *    as the backend calls it) with the window vs without (goal <= 2 * window / T + small), and
 *    the whole layer (hidden 512, MLP 64, so the projections are the rest) both ways.
 * Each side is measured alternately `reps` times (default 3) and takes its best run (a shared
 * machine: the best is the closest estimate of the uncontended speed).
 * Usage: bench_moe_window [reps]
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "model/cf_backend.h"
#include "model/cf_cpu_ops.h"
#include "model/cf_kv.h"
#include "model/cf_model_synth.h"
#include "util/cf_err.h"

#define NTHREADS 2

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double sgemm_time(int n) {
  openblas_set_num_threads(NTHREADS);
  float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n);
  float *c = malloc(sizeof(float) * n * n);
  for (long i = 0; i < (long)n * n; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
  double t = now();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  t = now() - t;
  free(a); free(b); free(c);
  return t;
}

typedef struct {
  cf_model_t *m;
  cf_backend_t *be;
  cf_kv_t kv;
  int32_t *tok;
  int T;
} layer_t;

static int layer_init(layer_t *L, const cf_model_config_t *c, int T) {
  cf_synth_opts_t o = {.seed = 3, .std = 0.02f, .norm_jitter = 0.1f};
  if (cf_model_synth(c, &o, &L->m) || cf_backend_cpu_create(L->m, NTHREADS, &L->be) ||
      cf_kv_init(&L->kv, c, T))
    return -1;
  L->T = T;
  L->tok = malloc(sizeof(int32_t) * T);
  for (int i = 0; i < T; i++) L->tok[i] = (int32_t)((i * 2654435761u) % (unsigned)c->vocab);
  return 0;
}

static double layer_time(layer_t *L) {
  double t = now();
  if (cf_kv_compute(L->be, L->tok, 0, &L->kv)) {
    fprintf(stderr, "forward: %s\n", cf_errmsg());
    exit(1);
  }
  return now() - t;
}

static void layer_free(layer_t *L) {
  cf_kv_free(&L->kv);
  cf_backend_free(L->be);
  cf_model_synth_free(L->m);
  free(L->tok);
}

static double attn_flops(const cf_model_config_t *c, double T, double W) {
  double keys = W > 0 && W < T ? W * T - W * (W - 1) / 2 : T * (T + 1) / 2;
  return 4.0 * c->head_dim * c->n_heads * keys;
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 3;
  if (reps < 1) reps = 1;
  cf_model_config_t moe;
  cf_synth_preset("tiny", &moe);
  moe.arch = CF_ARCH_QWEN3_MOE;
  moe.n_layers = 1; moe.hidden = 1024; moe.n_heads = 16; moe.n_kv_heads = 4; moe.head_dim = 64;
  moe.vocab = 1000; moe.qk_norm = 1;
  moe.n_experts = 64; moe.top_k = 8; moe.moe_intermediate = 384; moe.norm_topk = 1;
  moe.intermediate = 3072;
  moe.layer_moe[0] = 1;
  cf_model_config_t dense = moe;
  dense.n_experts = dense.top_k = dense.moe_intermediate = dense.norm_topk = 0;
  dense.layer_moe[0] = 0; /* intermediate 3072 = top_k x moe_intermediate: same active MLP */
  const int T = 2048;
  layer_t lm, ld;
  if (layer_init(&lm, &moe, T) || layer_init(&ld, &dense, T)) {
    fprintf(stderr, "setup: %s\n", cf_errmsg());
    return 1;
  }
  double tm = 1e30, td = 1e30, ts = 1e30;
  for (int r = 0; r <= reps; r++) { /* r == 0 warms up */
    double a = layer_time(&lm), b = layer_time(&ld), s = sgemm_time(2048);
    if (r) { tm = a < tm ? a : tm; td = b < td ? b : td; ts = s < ts ? s : ts; }
  }
  double D = moe.hidden, qd = (double)moe.n_heads * moe.head_dim;
  double kvd = (double)moe.n_kv_heads * moe.head_dim;
  double active = 2.0 * T * (D * (qd + 2 * kvd) + qd * D + D * moe.n_experts +
                             moe.top_k * 3.0 * D * moe.moe_intermediate) +
                  attn_flops(&moe, T, 0);
  double sg = 2.0 * 2048.0 * 2048.0 * 2048.0 / ts;
  printf("moe layer (hidden %d, %d experts of %d, top-%d) prefill T=%d, %d threads:\n",
         moe.hidden, moe.n_experts, moe.moe_intermediate, moe.top_k, T, NTHREADS);
  printf("  moe   %8.1f ms  %8.0f tokens/s  %6.2f GFLOP/s on active parameters\n", tm * 1e3,
         T / tm, active / tm / 1e9);
  printf("  dense %8.1f ms  %8.0f tokens/s  (intermediate %d: the same active size)\n", td * 1e3,
         T / td, dense.intermediate);
  printf("  sgemm 2048^3 %.2f GFLOP/s\n", sg / 1e9);
  printf("  ratio moe FLOP/s / sgemm = %.2f (goal >= 0.5); moe time / dense time = %.2f\n",
         active / tm / sg, tm / td);
  layer_free(&lm);
  layer_free(&ld);

  /* attention kernel alone */
  {
    const int TA = 8192, W = 512, hd = 64, rep = 4, G = 2, QB = 64;
    size_t akvd = (size_t)G * hd, aqd = (size_t)G * rep * hd;
    float *q = malloc(sizeof(float) * TA * aqd), *k = malloc(sizeof(float) * TA * akvd);
    float *v = malloc(sizeof(float) * TA * akvd), *o = malloc(sizeof(float) * QB * rep * hd);
    float *qp = malloc(sizeof(float) * QB * rep * hd);
    float *scr = malloc(sizeof(float) * cf__attn_scratch_floats(QB * rep));
    for (size_t i = 0; i < (size_t)TA * aqd; i++) q[i] = (float)((i * 7919) % 13) * 0.01f - 0.06f;
    for (size_t i = 0; i < (size_t)TA * akvd; i++) {
      k[i] = (float)((i * 104729) % 11) * 0.01f - 0.05f;
      v[i] = (float)((i * 31) % 17) * 0.01f;
    }
    openblas_set_num_threads(1);
    double ta[2] = {1e30, 1e30};
    for (int r = 0; r <= reps; r++)
      for (int w = 0; w < 2; w++) {
        double t = now();
        for (int g = 0; g < G; g++)
          for (int p0 = 0; p0 < TA; p0 += QB) {
            for (int i = 0; i < QB; i++) /* the backend packs a group's heads the same way */
              for (int j = 0; j < rep; j++)
                for (int d = 0; d < hd; d++)
                  qp[(i * rep + j) * hd + d] = q[(size_t)(p0 + i) * aqd + (g * rep + j) * hd + d];
            cf__attn_rows(qp, hd, k + g * hd, v + g * hd, akvd, hd, p0, QB, rep, w ? W : 0,
                          0.125f, o, hd, scr);
          }
        t = now() - t;
        if (r && t < ta[w]) ta[w] = t;
      }
    printf("attention kernel alone, T=%d, window %d, %d heads of %d over %d KV heads, 1 thread:\n",
           TA, W, G * rep, hd, G);
    printf("  window %8.1f ms, no window %8.1f ms: ratio %.3f (goal <= 2*window/T = %.3f + small)\n",
           ta[1] * 1e3, ta[0] * 1e3, ta[1] / ta[0], 2.0 * W / TA);
    free(q); free(k); free(v); free(o); free(qp); free(scr);
  }

  cf_model_config_t win;
  cf_synth_preset("tiny", &win);
  win.arch = CF_ARCH_MISTRAL;
  win.n_layers = 1; win.hidden = 512; win.n_heads = 8; win.n_kv_heads = 2; win.head_dim = 64;
  win.intermediate = 64; win.vocab = 1000;
  cf_model_config_t full = win;
  win.sliding_window = 512;
  win.layer_sliding[0] = 1;
  const int TW = 8192;
  layer_t lw, lf;
  if (layer_init(&lw, &win, TW) || layer_init(&lf, &full, TW)) {
    fprintf(stderr, "setup: %s\n", cf_errmsg());
    return 1;
  }
  double tw = 1e30, tf = 1e30;
  for (int r = 0; r <= reps; r++) {
    double a = layer_time(&lw), b = layer_time(&lf);
    if (r) { tw = a < tw ? a : tw; tf = b < tf ? b : tf; }
  }
  printf("whole layer with that attention (hidden %d, %d heads of %d) at T=%d, window %d:\n", win.hidden,
         win.n_heads, win.head_dim, TW, win.sliding_window);
  printf("  window %8.1f ms, no window %8.1f ms: ratio %.3f (goal <= 2*window/T = %.3f + small)\n",
         tw * 1e3, tf * 1e3, tw / tf, 2.0 * win.sliding_window / TW);
  layer_free(&lw);
  layer_free(&lf);
  return 0;
}
