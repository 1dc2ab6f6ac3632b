/* cf_planner — plan a batch group with lib/sched, predict with its simulator, bound with cf_bound. */
#include "cf_planner.h"

#include <stdlib.h>
#include <string.h>

#include "cf_service.h"
#include "sched/cf_bound.h"
#include "store/cf_store.h"
#include "util/cf_err.h"

void cf_batch_plan_unref(cf_batch_plan_t *bp) {
  if (!bp || --bp->refs) return;
  cf_sched_plan_free(&bp->plan);
  cf_sim_result_free(&bp->sim);
  free(bp->reqs);
  free(bp->tiers);
  free(bp);
}

int cf_planner_plan(const cf_sched_cost_t *cost, cf_restore_t **rs, int n, int policy, uint64_t t0_ns) {
  return cf_planner_plan_refit(cost, rs, n, policy, t0_ns, NULL);
}

/* Tokens of a cached prefix of `cached` tokens that a plan may load: its full chunks. The store
 * also keeps a partial last chunk (Lookup counts it, so the engine skips its prefill), but
 * lib/exec never loads one (cf_exec_validate: a partial last chunk has h = L): it is computed,
 * every layer. A plan that loads some of its cells would be executed differently: the executor
 * recomputes the chunk outside the plan (work-conserving, not in the plan's order) and the
 * prediction lacks those compute steps (restores ending in a partial chunk ran 2-5x their
 * prediction). So such a prefix is planned as its full chunks, the partial chunk costed as the
 * uncached rest; a plan that computes the partial chunk whole anyway (recompute) keeps it. */
static int64_t cf__loadable_tokens(const cf_sched_cost_t *cost, int64_t cached) {
  return cached - cached % cost->chunk_tokens;
}

int cf_planner_plan_loadable(cf_sched_input_t *in, cf_sched_req_t *reqs, int policy, cf_sched_plan_t *plan) {
  const int L = in->cost.n_layers;
  int rc = cf_sched_plan(in, (cf_policy_t)policy, plan);
  /* each pass rounds at least one prefix down: at most n_reqs more plans */
  for (int again = 1; !rc && again;) {
    again = 0;
    for (int i = 0; i < in->n_reqs; i++) {
      int32_t nc = plan->n_chunks[i];
      if (!(reqs[i].prefix_tokens % in->cost.chunk_tokens) || nc <= 0 || plan->h[plan->h_off[i] + nc - 1] >= L) continue;
      int64_t full = cf__loadable_tokens(&in->cost, reqs[i].prefix_tokens);
      reqs[i].new_tokens += reqs[i].prefix_tokens - full;
      reqs[i].prefix_tokens = full;
      again = 1;
    }
    if (again) rc = cf_sched_plan(in, (cf_policy_t)policy, plan);
  }
  return rc;
}

int cf_planner_plan_refit(const cf_sched_cost_t *cost, cf_restore_t **rs, int n, int policy, uint64_t t0_ns,
                          cf_refit_t *refit) {
  (void)t0_ns; /* every restore of a batch has arrived when it is planned: arrival 0 for all */
  cf_batch_plan_t *bp = calloc(1, sizeof *bp);
  if (!bp || !(bp->reqs = calloc((size_t)n, sizeof *bp->reqs))) { free(bp); return cf_seterr(CF_ENOMEM, "plan of %d restores", n); }
  bp->refit = refit;
  cf_sched_plan_init(&bp->plan);
  cf_sim_result_init(&bp->sim);
  size_t nt = 0; /* chunk tiers of every cached prefix: each chunk loads at its tier's rate */
  for (int i = 0; i < n; i++)
    if (rs[i]->chunk_tiers) nt += (size_t)cf_cost_chunks(cost, rs[i]->cached_tokens);
  if (nt && !(bp->tiers = malloc(nt))) { free(bp->reqs); free(bp); return cf_seterr(CF_ENOMEM, "plan of %d restores", n); }
  nt = 0;
  for (int i = 0; i < n; i++) {
    bp->reqs[i].arrival_s = 0;
    int64_t P = rs[i]->cached_tokens;
    bp->reqs[i].prefix_tokens = P;
    bp->reqs[i].new_tokens = (int64_t)rs[i]->req->n_token_ids - P;
    bp->reqs[i].device = -1;
    if (!rs[i]->chunk_tiers) continue;
    uint8_t *t = bp->tiers + nt;
    for (int32_t c = 0, m = cf_cost_chunks(cost, P); c < m; c++)
      t[c] = rs[i]->chunk_tiers[c] == CF_STORE_TIER_SSD ? CF_PLAN_TIER_SSD : CF_PLAN_TIER_CPU;
    bp->reqs[i].chunk_tier = t;
    nt += (size_t)cf_cost_chunks(cost, P);
  }
  bp->in.cost = *cost;
  bp->in.reqs = bp->reqs;
  bp->in.n_reqs = n;
  bp->in.refine_evals = -1;
  const int L = cost->n_layers;
  int rc = cf_planner_plan_loadable(&bp->in, bp->reqs, policy, &bp->plan);
  if (!rc) rc = cf_sim_run(&bp->in, &bp->plan, &bp->sim);
  if (rc) { bp->refs = 1; cf_batch_plan_unref(bp); return rc; }
  for (int i = 0; i < n; i++) {
    cf_restore_t *r = rs[i];
    cf_restore_summary_t *sm = &r->summary;
    /* the executor computes chunks past the planned prefix (h = L), after the plan's (rest_s) */
    int64_t ntok = (int64_t)r->req->n_token_ids, P = bp->reqs[i].prefix_tokens, rest = ntok - P;
    int32_t cached_chunks = bp->plan.n_chunks[i], all_chunks = cf_cost_chunks(cost, ntok);
    memset(sm, 0, sizeof *sm);
    sm->chunks = (uint32_t)all_chunks;
    for (int32_t c = 0; c < cached_chunks; c++) {
      int h = bp->plan.h[bp->plan.h_off[i] + c];
      sm->cells_compute += (uint64_t)h;
      if (r->chunk_tiers && r->chunk_tiers[c] == CF_STORE_TIER_SSD) sm->cells_load_ssd += (uint64_t)(L - h);
      else sm->cells_load_cpu += (uint64_t)(L - h);
    }
    sm->cells_compute += (uint64_t)(all_chunks - cached_chunks) * (uint64_t)L;
    double rest_s = rest > 0 ? cf_cost_prefill(cost, P, rest) : 0;
    sm->predicted_us = (bp->sim.restore_s[i] + rest_s) * 1e6;
    sm->bound_us = (cf_bound_request(cost, &bp->reqs[i]) + rest_s) * 1e6;
    r->plan = bp;
    r->plan_req = i;
    bp->refs++;
  }
  return 0;
}
