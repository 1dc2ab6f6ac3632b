/* cf_planner — the batcher's planning step: a batch of restores (their cached prefixes, as the
 * store lookup found them) planned with lib/sched under the daemon's measured cost model
 * (cf_calib), simulated for the prediction, bounded with cf_bound. Each restore then carries its
 * PlanSummary numbers and a reference to the batch plan the executor runs.
 *
 * Chunks the store does not hold are recomputed by the restore (every layer): the planner plans
 * the cached prefix, and the uncached rest is costed as a prefill over it, both in the prediction
 * and in the bound (no plan can avoid it). A partial last chunk counts as uncached here even
 * when the store holds it: lib/exec always computes it (h = L), so the plan covers only the
 * cached prefix's full chunks.
 */
#ifndef CF_PLANNER_H
#define CF_PLANNER_H

#include <stdint.h>

#include "cf_refit.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

struct cf_restore_s;

/* The tiers the planner tells lib/sched apart (cf_sched_req_t.chunk_tier, cost.tier_Bps):
 * the CPU tier reads at link_Bps (cpu_read_gbps or memcpy), the SSD tier at tier_Bps[1]. */
enum { CF_PLAN_TIER_CPU = 0, CF_PLAN_TIER_SSD = 1 };

/* One planned group (the restores of a batch that share a policy). Refcounted by its restores. */
typedef struct cf_batch_plan_s {
  int refs;
  cf_sched_input_t in;
  cf_sched_req_t *reqs;
  uint8_t *tiers;         /* backs reqs[i].chunk_tier (CF_PLAN_TIER_*), NULL when none */
  cf_refit_t *refit;      /* NULL, or where the executor reports how the plan ran (borrowed) */
  cf_sched_plan_t plan;   /* plan.ops: what the executor runs; request i = the i-th restore */
  cf_sim_result_t sim;    /* the prediction */
} cf_batch_plan_t;

/* cf_sched_plan of `in` (whose requests are reqs[0..in->n_reqs)) with `policy`, such that no
 * plan loads a cell of a partial last chunk of its request's prefix: lib/exec always computes
 * such a chunk (h = L), so a request whose plan would load one gets its prefix_tokens rounded
 * down to full chunks (new_tokens grows by as much: the executor computes the rest) and the
 * batch is planned again. A plan that computes the partial chunk whole keeps it. Returns 0 or
 * cf_sched_plan's error. */
int cf_planner_plan_loadable(cf_sched_input_t *in, cf_sched_req_t *reqs, int policy, cf_sched_plan_t *plan);

/* Plan restores rs[0..n) together with `policy` (a cf_policy_t). Fills each restore's plan
 * summary and gives it a reference to the group's plan. t0_ns: the batch's time origin (uv_hrtime
 * of dispatch). Returns 0, or CF_EINVAL/CF_ENOMEM from the planner (restores untouched). */
int cf_planner_plan(const cf_sched_cost_t *cost, struct cf_restore_s **rs, int n, int policy, uint64_t t0_ns);
/* The same, and the executor feeds `refit` (may be NULL) each restore's executed timings. */
int cf_planner_plan_refit(const cf_sched_cost_t *cost, struct cf_restore_s **rs, int n, int policy,
                          uint64_t t0_ns, cf_refit_t *refit);

void cf_batch_plan_unref(cf_batch_plan_t *bp);

#endif
