/* cf_bound — lower bounds on the restore makespan that no plan can beat (DESIGN.md §1).
 *
 * The relaxation drops every dependency and lets cells be split fractionally, but keeps what
 * any plan must pay: at each layer the computed cells of a request cost at least one step
 * (gamma) plus their per-token cost, the cheapest tokens being the front ones; loads cost
 * bytes / bandwidth (latency dropped). Gamma is paid per maximal run of computed tokens
 * (scattered holes pay one step each), a windowed layer restores everything or loads at least
 * W - 1 tokens, and per request two dependency chains hold (every chunk's top cell loaded or
 * computed with its column; a hole's column after its layer-0 prefix). cf_bound.c proves the
 * closed forms. For one request with uniform per-cell costs (beta = gamma = 0) it is
 * T* = Tc * Tio / (Tc + Tio).
 */
#ifndef CF_BOUND_H
#define CF_BOUND_H

#include "sched/cf_sched.h"

/* Lower bound on the restore time of one request of P tokens alone on one device and its
 * link (seconds; 0 for P = 0). */
double cf_bound_single(const cf_sched_cost_t *c, int64_t P);
/* The same for request q, its chunks at their tiers' rates (q->chunk_tier). */
double cf_bound_request(const cf_sched_cost_t *c, const cf_sched_req_t *q);

/* Lower bound on the batch's makespan (absolute time at which the last restore completes,
 * time 0 = the origin of arrival_s), valid for every plan and every device assignment:
 * the max over arrival thresholds a of a + the pooled bound of the requests arriving at or
 * after a, and over requests of arrival + cf_bound_single. Returns 0 for an empty batch. */
double cf_bound(const cf_sched_input_t *in);

#endif
