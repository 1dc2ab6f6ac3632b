/* cacheflowd's planning step (daemon/cf_planner.c) for a cached prefix that ends in a partial
 * chunk: the store holds that chunk (Lookup counts it) but lib/exec always computes it
 * (cf_exec_validate: h = L), so the plan must not load it and the prediction must include its
 * L compute steps. Planned as a load it was executed as compute outside the plan, and restores
 * ending in a partial chunk ran 2-5x their prediction (tests/integration/load_refit.sh). */
#include <math.h>

#include "cf_planner.h" /* linked from libcfdaemon */
#include "cf_test.h"
#include "store/cf_store.h"

#define C 64
#define L 8

static void cost_of(cf_sched_cost_t *c) {
  cf_cost_h100_llama8b(c);
  c->n_layers = L;
  c->chunk_tokens = C;
  c->kv_bytes_per_token = 1024;
  c->tier_Bps[CF_PLAN_TIER_SSD] = 1e9;
}

/* Plan one restore of n tokens of which the store holds `cached` (every chunk on SSD): its plan
 * in *r (the PlanSummary's numbers), the lib/sched group it came from in *bp. */
static int plan_one(const cf_sched_cost_t *cost, int policy, uint32_t n, uint32_t cached,
                    uint8_t *tiers, cf_restore_plan_t *r, cf_plan_group_t *bp) {
  for (uint32_t c = 0; c < (cached + C - 1) / C; c++) tiers[c] = CF_STORE_TIER_SSD;
  cf_plan_input_t in = {.n_tokens = n, .policy = policy, .cached_tokens = cached, .chunk_tiers = tiers};
  memset(r, 0, sizeof *r);
  return cf_planner_plan_group(cost, &in, 1, policy, bp, r);
}

static void plan_free(cf_restore_plan_t *r, cf_plan_group_t *bp) {
  cf_restore_plan_free(r);
  cf_plan_group_free(bp);
}

CF_TEST(planner_computes_a_stored_partial_last_chunk) {
  cf_sched_cost_t cost;
  cost_of(&cost);
  uint8_t tiers[64];
  cf_restore_plan_t r;
  cf_plan_group_t g;
  /* 1056 = 16 full chunks + 32 tokens, all stored */
  CF_CHECK_EQ(plan_one(&cost, CF_POLICY_LOAD, 1056, 1056, tiers, &r, &g), 0);
  const cf_plan_group_t *bp = &g;
  CF_CHECK_EQ(bp->plan.n_chunks[0], 16);             /* the partial chunk is not planned */
  CF_CHECK_EQ(bp->reqs[0].prefix_tokens, 1024);
  CF_CHECK_EQ(r.chunks, 17u);
  CF_CHECK_EQ(r.cells_load_ssd, 16u * L);
  CF_CHECK_EQ(r.cells_compute, (uint64_t)L); /* its L cells: computed */
  /* the prediction: the plan's loads, then the partial chunk's L steps over the 1024 tokens */
  double tail = cf_cost_prefill(&cost, 1024, 32);
  CF_CHECK_MSG(fabs(r.predicted_us - (bp->sim.restore_s[0] + tail) * 1e6) < 1e-6,
               "predicted %.3f us, plan %.3f us + tail %.3f us", r.predicted_us,
               bp->sim.restore_s[0] * 1e6, tail * 1e6);
  CF_CHECK(r.predicted_us >= tail * 1e6 && r.bound_us >= tail * 1e6);
  CF_CHECK(r.bound_us <= r.predicted_us * 1.000001);
  plan_free(&r, &g);

  /* every policy: no plan loads the partial chunk (a plan that computes it whole, recompute's,
   * keeps it); all 17 x L cells are accounted for */
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    CF_CHECK_EQ(plan_one(&cost, p, 1056, 1056, tiers, &r, &g), 0);
    const cf_sched_plan_t *pl = &g.plan;
    CF_CHECK_MSG(pl->n_chunks[0] == 16 || (pl->n_chunks[0] == 17 && pl->h[pl->h_off[0] + 16] == L),
                 "%s: %d chunks planned, the last with h = %d", cf_policy_name(p), pl->n_chunks[0],
                 pl->h[pl->h_off[0] + pl->n_chunks[0] - 1]);
    if (p == CF_POLICY_RECOMPUTE) CF_CHECK_EQ(pl->n_chunks[0], 17); /* exact as planned */
    CF_CHECK_EQ(r.cells_load_ssd + r.cells_load_cpu + r.cells_compute, 17u * L);
    CF_CHECK(r.cells_compute >= (uint64_t)L);
    plan_free(&r, &g);
  }

  /* a prefix ending on a chunk boundary is planned whole, nothing after it */
  CF_CHECK_EQ(plan_one(&cost, CF_POLICY_LOAD, 1088, 1088, tiers, &r, &g), 0);
  CF_CHECK_EQ(g.plan.n_chunks[0], 17);
  CF_CHECK_EQ(r.cells_load_ssd, 17u * L);
  CF_CHECK_EQ(r.cells_compute, 0u);
  CF_CHECK(fabs(r.predicted_us - g.sim.restore_s[0] * 1e6) < 1e-6);
  plan_free(&r, &g);

  /* a cached count ending mid-chunk before the request's end (100 of 200 tokens; Lookup only
   * counts a partial chunk at the very end, but the planner relies on no such thing): chunk 0
   * is loaded, the other 136 tokens are costed as computed */
  CF_CHECK_EQ(plan_one(&cost, CF_POLICY_LOAD, 200, 100, tiers, &r, &g), 0);
  CF_CHECK_EQ(g.plan.n_chunks[0], 1);
  CF_CHECK_EQ(r.cells_load_ssd, (uint64_t)L);
  CF_CHECK_EQ(r.cells_compute, 3u * L);
  CF_CHECK(fabs(r.predicted_us - (g.sim.restore_s[0] + cf_cost_prefill(&cost, 64, 136)) * 1e6) < 1e-6);
  plan_free(&r, &g);
}
