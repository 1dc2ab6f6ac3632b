/* cf_refit — online re-fit of the compute term of the planner's cost model.
 *
 * cf_calib measures step(p, n) = gamma + alpha n + beta n (p + n/2) once at start-up; on a
 * shared host the compute speed then drifts (±20% here, 2x under a competing process), and every
 * plan's compute/load split and prediction drift with it. Each executed restore reports what its
 * forward steps cost (lib/exec: compute_busy_ns over forward_calls steps whose token and
 * attention sums are step_tokens and step_attn): the calibrated model predicts those very steps
 * as gamma * calls + alpha * step_tokens + beta * step_attn, so busy / predicted is a direct
 * sample of how much slower (> 1) or faster the compute is now. The re-fit keeps one scale of the
 * compute term (gamma, alpha, beta together):
 *   - EWMA with weight `weight` toward each sample;
 *   - one sample moves it by at most a factor 2 of the target (the sample is clamped to
 *     [scale / 2, 2 scale] first), so a single outlier (a preempted step) swings it by at most
 *     `weight` x 100%;
 *   - the scale stays in [1/8, 8] of the calibration;
 *   - samples whose predicted compute is under 200 us (timer noise) or that recomputed failed
 *     loads are ignored.
 * It also keeps, as EWMA, executed / predicted of whole restores and of the compute term under
 * the model each restore was planned with (what GetStats and /metrics report: these drift from 1
 * when the model is wrong and come back when the re-fit catches up).
 * Load rates (per tier: the rate cf_cost_tier_Bps gives the planner) are re-fitted the same way
 * from what the executor measured: each restore's bytes_loaded[t] over load_busy_ns[t] (the time
 * some read of the tier was in progress, rate-limiter waits excluded) is a sample of the rate
 * the tier delivers now. EWMA with the same weight, one sample clamped to [rate / 2, 2 rate],
 * the rate kept in [base / 256, base] where base is the rate the daemon configured (cpu_read_gbps
 * / ssd_read_gbps, memcpy when unlimited): a re-fit only ever lowers a tier's rate below its
 * configured limit (a disk slower than configured, or slowed by a competing reader) and brings it
 * back up to the limit, never above. A tier with no rate of its own (the SSD tier without
 * ssd_read_gbps borrows the CPU tier's, memcpy's: no measurement of the disk) takes its first
 * sample as is. Samples of under 256 KiB or 200 us are ignored.
 * Thread-safe: samples come from the executor thread, the planner and the metrics read it.
 */
#ifndef CF_REFIT_H
#define CF_REFIT_H

#include <pthread.h>
#include <stdint.h>

#include "exec/cf_exec.h"
#include "sched/cf_cost.h"

#define CF_REFIT_TIERS 3

typedef struct {
  pthread_mutex_t mu;
  double weight;            /* EWMA weight of one sample (0, 1] */
  double base_gamma, base_alpha, base_beta; /* the start-up calibration */
  int have_base;
  double scale;             /* compute now / calibration */
  double compute_ratio;     /* EWMA of executed / predicted compute (the model it was planned with) */
  double restore_ratio;     /* EWMA of executed / predicted whole restore time */
  double last_compute_ratio, last_restore_ratio;
  uint64_t samples, restores; /* compute samples taken; restores seen */
  uint64_t clipped;         /* samples clamped as outliers */
  /* load rates, per tier (the executor's and the planner's tier indices: 0 cpu, 1 ssd, 2 remote) */
  double base_Bps[CF_REFIT_TIERS];    /* the configured rate: the cap */
  int base_set[CF_REFIT_TIERS];       /* the cap is the tier's own (else borrowed from the link) */
  double rate_Bps[CF_REFIT_TIERS];    /* re-fitted rate (base until a sample came) */
  double load_ratio[CF_REFIT_TIERS];  /* EWMA of executed / predicted time of the tier's bytes */
  double last_load_ratio[CF_REFIT_TIERS];
  uint64_t load_samples[CF_REFIT_TIERS];
} cf_refit_t;

/* Init with EWMA weight `weight` (clamped to [0.01, 1]); scale 1, ratios 1. */
void cf_refit_init(cf_refit_t *f, double weight);
void cf_refit_close(cf_refit_t *f);
/* The calibrated cost model (its gamma, alpha, beta) the scale applies to. */
void cf_refit_set_base(cf_refit_t *f, const cf_sched_cost_t *base);
/* One executed restore: `planned` the cost model its plan used, `st` its executor stats,
 * time_s / predicted_s its executed and predicted restore time (0 predicted: no prediction). */
void cf_refit_sample(cf_refit_t *f, const cf_sched_cost_t *planned, const cf_exec_stats_t *st,
                     double time_s, double predicted_s);
/* The cost model to plan with: *cost (the calibrated one, with the current link rates) with its
 * compute terms times the current scale and each tier's rate (tier_Bps[t]) the re-fitted one. */
void cf_refit_apply(cf_refit_t *f, cf_sched_cost_t *cost);

typedef struct {
  double scale, compute_ratio, restore_ratio, last_compute_ratio, last_restore_ratio;
  uint64_t samples, restores, clipped;
  double rate_Bps[CF_REFIT_TIERS], base_Bps[CF_REFIT_TIERS];
  double load_ratio[CF_REFIT_TIERS], last_load_ratio[CF_REFIT_TIERS];
  uint64_t load_samples[CF_REFIT_TIERS];
} cf_refit_stats_t;
void cf_refit_stats(cf_refit_t *f, cf_refit_stats_t *out);

#endif
