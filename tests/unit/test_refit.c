/* cacheflowd's online re-fit of the compute cost (daemon/cf_refit.c): the scale follows a
 * sustained slow-down, one outlier moves it by at most the EWMA weight, it stays bounded,
 * samples too small to time are ignored, and the planner's cost is scaled by it. */
#include <math.h>

#include "cf_test.h"
#include "cf_refit.c"

/* Executor stats of a restore whose steps the calibration `c` predicts at `pred_s` seconds and
 * that took `factor` times that. */
static cf_exec_stats_t stats_for(const cf_sched_cost_t *c, double factor, double *pred_s) {
  cf_exec_stats_t st = {0};
  st.forward_calls = 8;
  st.step_tokens = 8 * 512;
  st.step_attn = 8 * 512 * 256.0;
  *pred_s = c->gamma_s * 8 + c->alpha_s * st.step_tokens + c->beta_s * st.step_attn;
  st.compute_busy_ns = (int64_t)(*pred_s * factor * 1e9);
  return st;
}

CF_TEST(refit_follows_a_slowdown_and_bounds_outliers) {
  cf_sched_cost_t base;
  cf_cost_h100_llama8b(&base);
  base.alpha_s = 1e-6; /* 8 steps of 512 tokens: ~4 ms predicted */
  cf_refit_t f;
  cf_refit_init(&f, 0.3);
  cf_refit_set_base(&f, &base);
  double pred;
  cf_exec_stats_t st = stats_for(&base, 1.0, &pred);
  cf_refit_stats_t s;
  /* on time: the scale stays 1 */
  for (int i = 0; i < 5; i++) cf_refit_sample(&f, &base, &st, pred, pred);
  cf_refit_stats(&f, &s);
  CF_CHECK(fabs(s.scale - 1) < 1e-6 && fabs(s.compute_ratio - 1) < 1e-6 && s.samples == 5); /* ns rounding */
  /* one 100x outlier: clamped to 2x the scale, moves it by the weight only */
  st = stats_for(&base, 100.0, &pred);
  cf_refit_sample(&f, &base, &st, 100 * pred, pred);
  cf_refit_stats(&f, &s);
  CF_CHECK_MSG(fabs(s.scale - 1.3) < 1e-6, "scale %.6f after one outlier (expected 1 + 0.3 x (2 - 1))", s.scale);
  CF_CHECK(s.clipped == 1);
  /* a sustained 2x slow-down, planned with the re-fitted cost each time: the prediction error
   * of the compute term shrinks below 5% within 8 restores */
  double err0 = 0, err = 0;
  for (int i = 0; i < 8; i++) {
    cf_sched_cost_t planned = base;
    cf_refit_apply(&f, &planned);
    double p0;
    cf_exec_stats_t x = stats_for(&base, 2.0, &p0);
    double predicted = p0 * (planned.alpha_s / base.alpha_s);
    err = fabs(2.0 * p0 / predicted - 1);
    if (i == 0) err0 = err;
    cf_refit_sample(&f, &planned, &x, 2.0 * p0, predicted);
  }
  cf_refit_stats(&f, &s);
  CF_CHECK_MSG(err < 0.05 && err < err0, "error %.3f -> %.3f", err0, err);
  CF_CHECK(fabs(s.scale - 2) < 0.1);
  CF_CHECK(fabs(s.last_compute_ratio - 1) < 0.06); /* against the model it was planned with */
  /* apply scales the compute terms only */
  cf_sched_cost_t c = base;
  cf_refit_apply(&f, &c);
  CF_CHECK(fabs(c.gamma_s / base.gamma_s - s.scale) < 1e-12 && fabs(c.beta_s / base.beta_s - s.scale) < 1e-12);
  CF_CHECK(c.link_Bps == base.link_Bps && c.link_latency_s == base.link_latency_s);
  /* bounded: 100 samples 100x slower stop at 8x the calibration */
  st = stats_for(&base, 100.0, &pred);
  for (int i = 0; i < 100; i++) cf_refit_sample(&f, &base, &st, 100 * pred, pred);
  cf_refit_stats(&f, &s);
  CF_CHECK(s.scale <= 8.0 && s.scale > 7.9);
  /* ignored: a sample too short to time (predicted < 200 us), one that recomputed failed loads */
  uint64_t n = s.samples;
  cf_exec_stats_t tiny = {.forward_calls = 1, .step_tokens = 1, .step_attn = 0, .compute_busy_ns = 1000};
  cf_refit_sample(&f, &base, &tiny, 1e-6, 1e-6);
  st.load_failures = 1;
  cf_refit_sample(&f, &base, &st, pred, pred);
  cf_refit_stats(&f, &s);
  CF_CHECK_EQ(s.samples, n);
  cf_refit_close(&f);
}
