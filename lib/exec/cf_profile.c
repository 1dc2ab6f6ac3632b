/* cf_profile — see cf_profile.h. */
#include "exec/cf_profile.h"

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

int cf_profile_compute(cf_backend_t *be, int C, int reps, cf_sched_cost_t *cost) {
  const cf_model_config_t *mc = &be->model->cfg;
  if (C <= 0) return cf_seterr(CF_EINVAL, "profile: chunk tokens %d", C);
  if (reps < 1) reps = 3;
  int P = 8 * C;
  if (mc->max_pos > 0 && P + C > mc->max_pos) P = mc->max_pos - C > C ? mc->max_pos - C : C;
  size_t row = (size_t)mc->n_kv_heads * mc->head_dim, rows = (size_t)P + 2 * C;
  float *k = calloc(rows * row, sizeof(float)), *v = calloc(rows * row, sizeof(float));
  int32_t *tok = malloc(sizeof(int32_t) * 2 * C);
  int rc = 0;
  if (!k || !v || !tok) { rc = cf_seterr(CF_ENOMEM, "profile: %zu rows of KV", rows); goto out; }
  for (int i = 0; i < 2 * C; i++) tok[i] = (int32_t)((i * 7919) % mc->vocab);
  double ta, tb, tc;
  if ((rc = cf__time_step(be, 0, C, reps, tok, k, v, &ta)) || (rc = cf__time_step(be, 0, 2 * C, reps, tok, k, v, &tb)) ||
      (rc = cf__time_step(be, P, C, reps, tok, k, v, &tc)))
    goto out;
  double Cd = C, beta = (tc - ta) / (Cd * P);
  if (beta < 1e-15) beta = 1e-15;
  double alpha = (tb - ta - 1.5 * beta * Cd * Cd) / Cd;
  if (alpha < 1e-12) alpha = 1e-12;
  double gamma = ta - alpha * Cd - 0.5 * beta * Cd * Cd;
  if (gamma < 1e-7) gamma = 1e-7;
  cost->n_layers = mc->n_layers;
  cost->chunk_tokens = C;
  cost->kv_bytes_per_token = 2.0 * row * sizeof(float);
  cost->gamma_s = gamma;
  cost->alpha_s = alpha;
  cost->beta_s = beta;
  cost->n_devices = 1;
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
