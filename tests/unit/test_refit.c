/* cacheflowd's online re-fit of the compute cost (daemon/cf_refit.c): the scale follows a
 * sustained slow-down, one outlier moves it by at most the EWMA weight, it stays bounded,
 * samples too small to time are ignored, and the planner's cost is scaled by it. */
#include <math.h>

#include "cf_test.h"
#include "cf_refit.h" /* linked from libcfdaemon */

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

/* Executor stats of a restore that moved `bytes` of tier t in `secs` of tier-busy time. */
static cf_exec_stats_t load_stats(int t, double bytes, double secs) {
  cf_exec_stats_t st = {0};
  st.bytes_loaded[t] = (uint64_t)bytes;
  st.load_busy_ns[t] = (int64_t)(secs * 1e9);
  return st;
}

/* The SSD tier's rate follows a disk slower than configured, planned with the re-fitted cost
 * each time: the load term's executed / predicted goes from 4 to within 10% of 1 in 16 restores; the rate never goes
 * above the configured limit (a faster disk than configured, or a rate-limited one, brings it
 * back to the limit), never below limit / 256; too-small samples are ignored; the CPU tier is
 * untouched by SSD samples. An SSD tier with no limit of its own (its planned rate is the CPU
 * tier's) takes its first sample as is. */
CF_TEST(refit_follows_a_slower_ssd_tier_within_its_limit) {
  cf_sched_cost_t base;
  cf_cost_h100_llama8b(&base);
  base.link_Bps = 10e9;
  base.tier_Bps[1] = 2e9; /* ssd_read_gbps = 16 */
  cf_refit_t f;
  cf_refit_init(&f, 0.3);
  cf_refit_set_base(&f, &base);
  cf_refit_stats_t s;
  cf_refit_stats(&f, &s);
  CF_CHECK(s.rate_Bps[1] == 2e9 && s.base_Bps[1] == 2e9 && s.rate_Bps[0] == 10e9);
  double first = 0, last = 0;
  for (int i = 0; i < 16; i++) {
    cf_sched_cost_t planned = base;
    cf_refit_apply(&f, &planned);
    double bytes = 64e6;
    double predicted = bytes / cf_cost_tier_Bps(&planned, 1), took = bytes / 0.5e9;
    if (i == 0) first = took / predicted;
    last = took / predicted;
    cf_exec_stats_t st = load_stats(1, bytes, took);
    cf_refit_sample(&f, &planned, &st, took, predicted);
  }
  cf_refit_stats(&f, &s);
  CF_CHECK_MSG(first > 3.9 && fabs(last - 1) < 0.1, "executed / predicted %.3f -> %.3f", first, last);
  CF_CHECK_MSG(fabs(s.rate_Bps[1] / 0.5e9 - 1) < 0.1, "ssd rate %.3g", s.rate_Bps[1]);
  CF_CHECK(fabs(s.last_load_ratio[1] - 1) < 0.1 && s.load_samples[1] == 16);
  CF_CHECK(s.rate_Bps[0] == 10e9 && s.load_samples[0] == 0);
  cf_sched_cost_t c = base;
  cf_refit_apply(&f, &c);
  CF_CHECK(c.tier_Bps[1] == s.rate_Bps[1] && c.tier_Bps[0] == 0 && c.link_Bps == base.link_Bps);
  /* the disk recovers and is faster than configured: back to the limit, never above */
  for (int i = 0; i < 30; i++) {
    cf_exec_stats_t st = load_stats(1, 64e6, 64e6 / 8e9);
    cf_refit_sample(&f, &base, &st, 0, 0);
  }
  cf_refit_stats(&f, &s);
  CF_CHECK(s.rate_Bps[1] == 2e9);
  c = base;
  cf_refit_apply(&f, &c);
  CF_CHECK(c.tier_Bps[1] == 2e9);
  /* floor: a stalled disk takes the rate to limit / 64 at the lowest */
  for (int i = 0; i < 200; i++) {
    cf_exec_stats_t st = load_stats(1, 1e6, 10.0);
    cf_refit_sample(&f, &base, &st, 0, 0);
  }
  cf_refit_stats(&f, &s);
  CF_CHECK(fabs(s.rate_Bps[1] - 2e9 / 256) < 1);
  /* ignored: under 256 KiB, or under 200 us of tier time */
  uint64_t n = s.load_samples[1];
  cf_exec_stats_t small = load_stats(1, 100e3, 1.0), quick = load_stats(1, 64e6, 100e-6);
  cf_refit_sample(&f, &base, &small, 0, 0);
  cf_refit_sample(&f, &base, &quick, 0, 0);
  cf_refit_stats(&f, &s);
  CF_CHECK_EQ(s.load_samples[1], n);
  /* a reload raising the limit keeps the fitted rate, lowering it below the fit caps it */
  base.tier_Bps[1] = 1e6;
  cf_refit_set_base(&f, &base);
  cf_refit_stats(&f, &s);
  CF_CHECK(s.rate_Bps[1] <= 1e6 && s.base_Bps[1] == 1e6);
  cf_refit_close(&f);
  /* no ssd_read_gbps: planned at the CPU tier's 10 GB/s, the first sample (0.4 GB/s) sets it */
  base.tier_Bps[1] = 0;
  cf_refit_init(&f, 0.3);
  cf_refit_set_base(&f, &base);
  cf_exec_stats_t st = load_stats(1, 64e6, 64e6 / 0.4e9);
  cf_refit_sample(&f, &base, &st, 0, 0);
  cf_refit_stats(&f, &s);
  CF_CHECK_MSG(fabs(s.rate_Bps[1] / 0.4e9 - 1) < 1e-6 && fabs(s.last_load_ratio[1] - 25) < 1e-6,
               "rate %.4g, ratio %.4g", s.rate_Bps[1], s.last_load_ratio[1]);
  cf_refit_close(&f);
}
