/* cf_profile — see cf_profile.h. */
#include "exec/cf_profile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/cf_err.h"

static double cf__sec(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cf__cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median time of one-layer forward of tokens [p, p+n), layer 0. */
static int cf__time_step(cf_backend_t *be, int p, int n, int reps, const int32_t *tok, float *k, float *v,
                         double *out) {
  double t[16];
  if (reps > 15) reps = 15;
  float *kk[1] = {k}, *vv[1] = {v};
  cf_fwd_args_t a = {.l0 = 0, .l1 = 1, .t0 = p, .t1 = p + n, .tokens = tok, .k = kk, .v = vv};
  for (int i = 0; i <= reps; i++) { /* i == 0 warms caches and the backend's scratch */
    double s = cf__sec();
    int rc = cf_backend_forward(be, &a);
    if (rc) return rc;
    if (i) t[i - 1] = cf__sec() - s;
  }
  qsort(t, (size_t)reps, sizeof(double), cf__cmp);
  *out = t[reps / 2];
  return 0;
}

/* Solve the 3x3 system A x = b (Gaussian elimination, partial pivoting). 0 on success. */
static int cf__solve3(double A[3][3], double b[3], double x[3]) {
  for (int c = 0; c < 3; c++) {
    int p = c;
    for (int r = c + 1; r < 3; r++) if (fabs(A[r][c]) > fabs(A[p][c])) p = r;
    if (fabs(A[p][c]) < 1e-300) return -1;
    for (int k = 0; k < 3; k++) { double t = A[c][k]; A[c][k] = A[p][k]; A[p][k] = t; }
    double t = b[c]; b[c] = b[p]; b[p] = t;
    for (int r = c + 1; r < 3; r++) {
      double f = A[r][c] / A[c][c];
      for (int k = c; k < 3; k++) A[r][k] -= f * A[c][k];
      b[r] -= f * b[c];
    }
  }
  for (int c = 2; c >= 0; c--) {
    double s = b[c];
    for (int k = c + 1; k < 3; k++) s -= A[c][k] * x[k];
    x[c] = s / A[c][c];
  }
  return 0;
}

int cf_profile_compute(cf_backend_t *be, int C, int reps, cf_sched_cost_t *cost) {
  const cf_model_config_t *mc = &be->model->cfg;
  if (C <= 0) return cf_seterr(CF_EINVAL, "profile: chunk tokens %d", C);
  if (reps < 1) reps = 3;
  int P = 8 * C;
  if (mc->max_pos > 0 && P + 2 * C > mc->max_pos) P = mc->max_pos - 2 * C > C ? mc->max_pos - 2 * C : C;
  size_t row = (size_t)mc->n_kv_heads * mc->head_dim, rows = (size_t)P + 2 * C;
  float *k = calloc(rows * row, sizeof(float)), *v = calloc(rows * row, sizeof(float));
  int32_t *tok = malloc(sizeof(int32_t) * 2 * C);
  int rc = 0;
  if (!k || !v || !tok) { rc = cf_seterr(CF_ENOMEM, "profile: %zu rows of KV", rows); goto out; }
  for (int i = 0; i < 2 * C; i++) tok[i] = (int32_t)((i * 7919) % mc->vocab);
  /* Points around the step sizes plans use (a chunk, parts of one, two) and prefix depths;
   * least squares in relative error, so the small steps count as much as the big ones. */
  int C4 = C / 4 > 0 ? C / 4 : 1, C2 = C / 2 > 0 ? C / 2 : 1;
  const int pts[6][2] = {{0, C4}, {0, C2}, {0, C}, {0, 2 * C}, {P / 2, C}, {P, C}};
  double A[3][3] = {{0}}, b[3] = {0};
  for (int i = 0; i < 6; i++) {
    double t, p = pts[i][0], n = pts[i][1];
    if ((rc = cf__time_step(be, pts[i][0], pts[i][1], reps, tok, k, v, &t))) goto out;
    /* attention keys summed over the step's queries, through layer 0's window if it has one */
    double ctx = cf_cost_ctx_w(p, n, cf_model_layer_window(mc, 0));
    double f[3] = {1.0 / t, n / t, ctx / t}; /* row / t: relative residual */
    for (int r = 0; r < 3; r++) {
      for (int c = 0; c < 3; c++) A[r][c] += f[r] * f[c];
      b[r] += f[r] * 1.0;
    }
  }
  double x[3] = {0, 0, 0};
  if (cf__solve3(A, b, x)) { rc = cf_seterr(CF_EINTERNAL, "profile: singular fit"); goto out; }
  cost->n_layers = mc->n_layers;
  cost->chunk_tokens = C;
  cost->kv_bytes_per_token = 2.0 * row * sizeof(float);
  /* timer noise can push a coefficient below zero: clamp to small positive floors */
  cost->gamma_s = x[0] > 1e-7 ? x[0] : 1e-7;
  cost->alpha_s = x[1] > 1e-12 ? x[1] : 1e-12;
  cost->beta_s = x[2] > 1e-15 ? x[2] : 1e-15;
  cost->n_devices = 1;
  /* windowed layers: beta is per key attended, the planner charges min(position, window) */
  int nw = 0;
  for (int l = 0; l < mc->n_layers; l++) nw += cf_model_layer_window(mc, l) > 0;
  cost->window = nw ? mc->sliding_window : 0;
  cost->window_frac = nw ? (double)nw / mc->n_layers : 0;
  memset(cost->window_mask, 0, sizeof cost->window_mask); /* which: their cells can be skipped */
  for (int l = 0; l < mc->n_layers && l < 256; l++)
    if (cf_model_layer_window(mc, l) > 0) cost->window_mask[l / 64] |= (uint64_t)1 << (l % 64);
out:
  free(k); free(v); free(tok);
  return rc;
}

double cf_profile_memcpy_Bps(size_t bytes) {
  char *a = malloc(bytes), *b = malloc(bytes);
  if (!a || !b) { free(a); free(b); return 0; }
  memset(a, 1, bytes);
  memset(b, 2, bytes); /* fault both in: we time copies, not page faults */
  double best = 0;
  for (int i = 0; i < 3; i++) {
    double s = cf__sec();
    memcpy(b, a, bytes);
    __asm__ volatile("" : : "r"(b) : "memory"); /* the copy is observed: not elided */
    double t = cf__sec() - s;
    if (t > 0 && bytes / t > best) best = bytes / t;
  }
  free(a); free(b);
  return best;
}
