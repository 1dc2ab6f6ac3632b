/* cf_memfit — plans that fit a memory budget (issue 18).
 *
 * What compute costs in memory is the executor's rule (lib/exec, cf_exec_set_pool): a request
 * that computes any cell holds, while it computes, hidden states and one layer's K/V staging for
 * the tokens up to the end of its last computed chunk (its "extent" E):
 *     footprint(r) = E_r x bytes_per_token                        (0 when r computes nothing)
 * Loading a cell costs none (it goes straight into the engine's blocks). The executor admits
 * requests in priority order while their footprints fit the budget; the others wait for memory
 * an admitted one gives back when it ends. More layers at once only when there is room, so the
 * footprint is what the plan must leave room for.
 *
 * cf_memfit_plan plans the batch with the policy, then makes it fit:
 *   1. a request whose footprint alone exceeds the budget computes less: its last computed
 *      chunks are loaded instead (h = 0) until it fits — never a chunk that cannot be loaded
 *      (a hole, tier CF_MEMFIT_TIER_NONE): if that is what does not fit, CF_ENOMEM naming it;
 *   2. two candidates for the batch: "wait" (as planned: the executor serialises what does not
 *      fit at once) and "shift" (the largest footprints shrink chunk by chunk until the whole
 *      batch fits at once); each is simulated with waiting modelled as a later arrival of the
 *      requests that wait (the executor's admission order; pessimistic: their loads could start
 *      earlier), and the one with the smaller makespan is returned.
 * So no restore fails for lack of memory when each request's uncacheable part fits, and the
 * executor never holds more than the budget. Requests with cross-device help or on a later
 * pipeline stage are not shrunk (they only wait).
 */
#ifndef CF_MEMFIT_H
#define CF_MEMFIT_H

#include "sched/cf_sched.h"

/* A chunk stored in no tier (branch holes: CF_SCHED_TIER_NONE): it must be computed. */
#define CF_MEMFIT_TIER_NONE 0xFF

typedef struct {
  double budget_bytes;    /* what the executor may hold for compute; <= 0: unbounded */
  double bytes_per_token; /* working memory per token of a request's extent: hidden states
                             (2 x hidden x 4, fp32) + one layer's K/V staging (2 x kv row x
                             its element size) */
} cf_memfit_t;

typedef struct {
  int shrunk_reqs;        /* requests whose compute was cut */
  int64_t cells_shifted;  /* planned compute cells now loaded */
  int waiting_reqs;       /* requests the executor admits only after others end */
  int strategy;           /* 0: as planned (unbounded or it fit), 1: wait, 2: shift */
  double peak_bytes;      /* the most admitted at once under the admission rule */
  double makespan_s;      /* simulated, waiting modelled as above */
} cf_memfit_report_t;

/* Footprint of request r in plan p (see above). */
double cf_memfit_footprint(const cf_memfit_t *m, const cf_sched_input_t *in,
                           const cf_sched_plan_t *p, int r);

/* Plan `in` with `policy` into `out` within m's budget (above). rep may be NULL. Returns 0,
 * CF_EINVAL (bad input), CF_ENOMEM (a request's must-compute part alone exceeds the budget:
 * the detail names it and the bytes). */
int cf_memfit_plan(const cf_sched_input_t *in, cf_policy_t policy, const cf_memfit_t *m,
                   cf_sched_plan_t *out, cf_memfit_report_t *rep);

#endif
