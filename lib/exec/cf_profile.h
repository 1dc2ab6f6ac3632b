/* cf_profile — measure the cost model's compute numbers on the real backend at start-up.
 *
 * The scheduler plans with step(p, n) = gamma + alpha*n + beta*n*(p + n/2) per layer
 * (sched/cf_cost.h). One-layer forward calls are timed (median of `reps` after a warm-up) at six
 * points around the steps plans use — n = C/4, C/2, C, 2C from an empty prefix, and n = C over
 * prefixes of P/2 and P, P = 8C (less when the model's max positions do not allow it) — and
 * (gamma, alpha, beta) is their least-squares fit in relative error (each residual divided by
 * its measured time, so the small steps weigh as much as the big ones), solved as the 3x3 normal
 * equations. Each coefficient is clamped to a small positive floor (timer noise can make one
 * negative).
 * With a sliding window the attention term of each timed step is the integral of
 * min(context, window) (cf_cost_ctx_w; layer 0 is the one timed), and cost->window /
 * window_frac describe the model's windowed layers for the planner. MoE layers are timed as
 * they run: alpha then holds the routed experts' per-token cost.
 */
#ifndef CF_PROFILE_H
#define CF_PROFILE_H

#include "model/cf_backend.h"
#include "sched/cf_cost.h"

/* Fill cost->gamma_s/alpha_s/beta_s (and n_layers, chunk_tokens, kv_bytes_per_token for fp32
 * KV, n_devices 1) by timing backend `be` with chunks of C tokens. Link fields are left alone.
 * Returns 0, CF_ENOMEM, or the backend's error. */
int cf_profile_compute(cf_backend_t *be, int C, int reps, cf_sched_cost_t *cost);

/* Single-thread memcpy bandwidth over `bytes` (bytes/s, best of 3): the ceiling of a CPU
 * tier copy, the baseline benchmarks divide by, and the link rate when none is configured. */
double cf_profile_memcpy_Bps(size_t bytes);

#endif
