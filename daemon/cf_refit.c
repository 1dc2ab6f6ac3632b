/* cf_refit — see cf_refit.h. */
#include "cf_refit.h"

#include <math.h>
#include <string.h>

/* Bounds of the scale relative to the calibration, and of one sample relative to the scale. */
#define CF__SCALE_MIN 0.125
#define CF__SCALE_MAX 8.0
#define CF__SAMPLE_SPAN 2.0
/* Predicted compute below this is mostly timer and wake-up noise. */
#define CF__MIN_PREDICTED_S 200e-6
/* Load samples: at least this many bytes and this long; the rate no lower than base / this. */
#define CF__MIN_LOAD_BYTES (256.0 * 1024)
#define CF__MIN_LOAD_S 200e-6
#define CF__RATE_FLOOR 256.0

void cf_refit_init(cf_refit_t *f, double weight) {
  memset(f, 0, sizeof *f);
  pthread_mutex_init(&f->mu, NULL);
  f->weight = !(weight >= 0.01) ? 0.01 : weight > 1 ? 1 : weight;
  f->scale = 1;
  f->compute_ratio = f->restore_ratio = f->last_compute_ratio = f->last_restore_ratio = 1;
  for (int t = 0; t < CF_REFIT_TIERS; t++) f->load_ratio[t] = f->last_load_ratio[t] = 1;
}

void cf_refit_close(cf_refit_t *f) { pthread_mutex_destroy(&f->mu); }

void cf_refit_set_base(cf_refit_t *f, const cf_sched_cost_t *base) {
  pthread_mutex_lock(&f->mu);
  f->base_gamma = base->gamma_s;
  f->base_alpha = base->alpha_s;
  f->base_beta = base->beta_s;
  f->have_base = 1;
  /* a reload may change a limit: the re-fitted rate stays, within the new cap */
  for (int t = 0; t < CF_REFIT_TIERS; t++) {
    f->base_Bps[t] = cf_cost_tier_Bps(base, t);
    f->base_set[t] = t == 0 || base->tier_Bps[t] > 0; /* the CPU tier's is memcpy's or the limit */
    if (!f->load_samples[t] || f->rate_Bps[t] > f->base_Bps[t]) f->rate_Bps[t] = f->base_Bps[t];
    if (f->rate_Bps[t] < f->base_Bps[t] / CF__RATE_FLOOR) f->rate_Bps[t] = f->base_Bps[t] / CF__RATE_FLOOR;
  }
  pthread_mutex_unlock(&f->mu);
}

static double cf__clamp(double v, double lo, double hi) { return v < lo ? lo : v > hi ? hi : v; }

/* EWMA step of *avg toward a sample clamped to [avg / span, avg * span]; returns 1 if clamped. */
static int cf__ewma(double *avg, double sample, double w, uint64_t n) {
  if (n == 0) { *avg = sample; return 0; } /* the first sample sets it */
  double s = cf__clamp(sample, *avg / CF__SAMPLE_SPAN, *avg * CF__SAMPLE_SPAN);
  *avg += w * (s - *avg);
  return s != sample;
}

void cf_refit_sample(cf_refit_t *f, const cf_sched_cost_t *planned, const cf_exec_stats_t *st,
                     double time_s, double predicted_s) {
  pthread_mutex_lock(&f->mu);
  if (predicted_s > 0 && time_s > 0 && isfinite(time_s / predicted_s)) {
    f->last_restore_ratio = time_s / predicted_s;
    cf__ewma(&f->restore_ratio, f->last_restore_ratio, f->weight, f->restores);
    f->restores++;
  }
  double busy = st->compute_busy_ns * 1e-9, n = (double)st->forward_calls;
  double base = f->base_gamma * n + f->base_alpha * st->step_tokens + f->base_beta * st->step_attn;
  double plan = planned->gamma_s * n + planned->alpha_s * st->step_tokens + planned->beta_s * st->step_attn;
  if (f->have_base && !st->load_failures && n > 0 && busy > 0 && base >= CF__MIN_PREDICTED_S &&
      plan >= CF__MIN_PREDICTED_S) {
    f->last_compute_ratio = busy / plan;
    cf__ewma(&f->compute_ratio, f->last_compute_ratio, f->weight, f->samples);
    /* the scale moves toward busy / (the calibration's prediction); never from 1 to the first
     * sample at once: it starts at the calibration, which is itself a measurement */
    double target = cf__clamp(busy / base, f->scale / CF__SAMPLE_SPAN, f->scale * CF__SAMPLE_SPAN);
    f->clipped += target != busy / base;
    f->scale = cf__clamp(f->scale + f->weight * (target - f->scale), CF__SCALE_MIN, CF__SCALE_MAX);
    f->samples++;
  }
  for (int t = 0; t < CF_REFIT_TIERS && f->have_base; t++) {
    double bytes = (double)st->bytes_loaded[t], secs = st->load_busy_ns[t] * 1e-9;
    double planned_Bps = cf_cost_tier_Bps(planned, t);
    if (bytes < CF__MIN_LOAD_BYTES || secs < CF__MIN_LOAD_S || !(planned_Bps > 0) || !(f->base_Bps[t] > 0)) continue;
    double got = bytes / secs; /* what the tier delivered */
    f->last_load_ratio[t] = planned_Bps / got;
    cf__ewma(&f->load_ratio[t], f->last_load_ratio[t], f->weight, f->load_samples[t]);
    double r = f->rate_Bps[t];
    if (!f->load_samples[t] && !f->base_set[t]) {
      r = got; /* the tier's rate was borrowed (no limit configured): no prior to weigh against */
    } else {
      double target = cf__clamp(got, r / CF__SAMPLE_SPAN, r * CF__SAMPLE_SPAN);
      f->clipped += target != got;
      r += f->weight * (target - r);
    }
    f->rate_Bps[t] = cf__clamp(r, f->base_Bps[t] / CF__RATE_FLOOR, f->base_Bps[t]);
    f->load_samples[t]++;
  }
  pthread_mutex_unlock(&f->mu);
}

void cf_refit_apply(cf_refit_t *f, cf_sched_cost_t *cost) {
  pthread_mutex_lock(&f->mu);
  double s = f->scale, rate[CF_REFIT_TIERS];
  int have = f->have_base;
  for (int t = 0; t < CF_REFIT_TIERS; t++) rate[t] = f->load_samples[t] ? f->rate_Bps[t] : 0;
  pthread_mutex_unlock(&f->mu);
  /* never above what this cost allows for the tier (the configured limit) */
  for (int t = 0; t < CF_REFIT_TIERS && have; t++)
    if (rate[t] > 0 && rate[t] < cf_cost_tier_Bps(cost, t)) cost->tier_Bps[t] = rate[t];
  cost->gamma_s *= s;
  cost->alpha_s *= s;
  cost->beta_s *= s;
}

void cf_refit_stats(cf_refit_t *f, cf_refit_stats_t *o) {
  pthread_mutex_lock(&f->mu);
  *o = (cf_refit_stats_t){f->scale, f->compute_ratio, f->restore_ratio, f->last_compute_ratio,
                          f->last_restore_ratio, f->samples, f->restores, f->clipped};
  for (int t = 0; t < CF_REFIT_TIERS; t++) {
    o->rate_Bps[t] = f->rate_Bps[t];
    o->base_Bps[t] = f->base_Bps[t];
    o->load_ratio[t] = f->load_ratio[t];
    o->last_load_ratio[t] = f->last_load_ratio[t];
    o->load_samples[t] = f->load_samples[t];
  }
  pthread_mutex_unlock(&f->mu);
}
