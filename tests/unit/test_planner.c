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
  return cf_planner_plan_group(cost, &in, 1, policy, NULL, bp, r);
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

/* A restore of [k, n) (present_tokens = k, whole-head engine): the chunks inside [0, k) are not
 * planned (h 0, no cells counted, no load rank, no compute op), the plan covers the cached
 * chunks after them, and its compute steps are costed over the present context too: a recompute
 * of the rest is predicted as exactly that compute from position k_chunks x C (what the
 * executor runs), more than the same steps without the context would cost. The chunk holding k
 * on the GPU path (compute_partial) is computed whole. */
CF_TEST(planner_present_chunks_are_skipped_and_costed_as_context) {
  cf_sched_cost_t cost;
  cost_of(&cost);
  uint8_t tiers[64];
  for (int c = 0; c < 64; c++) tiers[c] = CF_STORE_TIER_CPU;
  const int pc = 5, all = 16;
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    cf_plan_input_t in = {.n_tokens = all * C, .policy = p, .cached_tokens = 12 * C, .chunk_tiers = tiers,
                          .present_chunks = pc};
    cf_restore_plan_t r;
    cf_plan_group_t g;
    CF_CHECK_EQ(cf_planner_plan_group(&cost, &in, 1, p, NULL, &g, &r), 0);
    CF_CHECK_EQ(g.reqs[0].prefix_tokens, (12 - pc) * C); /* lib/sched sees the chunks after the present ones */
    CF_CHECK_EQ(r.present_chunks, (uint32_t)pc);
    CF_CHECK_EQ(r.chunks, (uint32_t)all);
    for (int c = 0; c < pc; c++) CF_CHECK_EQ(r.h[c], 0);
    for (int c = 12; c < all; c++) CF_CHECK_EQ(r.h[c], L); /* uncached: computed */
    CF_CHECK_EQ(r.cells_load_cpu + r.cells_load_ssd + r.cells_compute, (uint64_t)(all - pc) * L);
    for (int k = 0; k < r.n_cops; k++) CF_CHECK(r.cops[k].c0 >= pc && r.cops[k].c1 <= 12);
    if (r.load_rank)
      for (int c = 0; c < pc; c++)
        for (int l = 0; l < L; l++) CF_CHECK_EQ(r.load_rank[c * L + l], UINT32_MAX);
    if (p == CF_POLICY_RECOMPUTE) {
      /* every planned step attends over the present tokens: the prediction is at least the
       * prefill of the rest from position pc x C, and more than without that context */
      double from_k = cf_cost_prefill(&cost, (int64_t)pc * C, (int64_t)(all - pc) * C);
      double no_ctx = cf_cost_prefill(&cost, 0, (int64_t)(all - pc) * C);
      CF_CHECK_MSG(r.predicted_us >= 0.999 * from_k * 1e6 && r.predicted_us > no_ctx * 1e6 * 1.01,
                   "predicted %.1f us, prefill from k %.1f us, without context %.1f us", r.predicted_us,
                   from_k * 1e6, no_ctx * 1e6);
    }
    plan_free(&r, &g);
  }
  /* the GPU path: the chunk holding k (pc) is computed whole, even by a load plan */
  cf_plan_input_t in = {.n_tokens = all * C, .policy = CF_POLICY_LOAD, .cached_tokens = 12 * C,
                        .chunk_tiers = tiers, .present_chunks = pc, .compute_partial = 1};
  cf_restore_plan_t r;
  cf_plan_group_t g;
  CF_CHECK_EQ(cf_planner_plan_group(&cost, &in, 1, CF_POLICY_LOAD, NULL, &g, &r), 0);
  CF_CHECK_EQ(r.h[pc], L);
  CF_CHECK_EQ(r.h[pc + 1], 0);
  CF_CHECK_EQ(r.cells_load_cpu, (uint64_t)(12 - pc - 1) * L);
  plan_free(&r, &g);
}

/* A round's planning step (cf_planner_plan, what the executor thread runs once per round):
 * restores of each policy are planned together, exactly as that policy's group alone
 * (cf_planner_plan_group); without a cost model every restore gets the fallback plan (load the
 * cached full chunks, compute the rest) with its PlanSummary numbers. */
CF_TEST(planner_plans_a_round_per_policy_and_falls_back_without_a_cost_model) {
  cf_sched_cost_t cost;
  cost_of(&cost);
  uint8_t tiers[4][64];
  for (int i = 0; i < 4; i++)
    for (int c = 0; c < 64; c++) tiers[i][c] = c % 2 ? CF_STORE_TIER_SSD : CF_STORE_TIER_CPU;
  cf_plan_input_t ins[4] = {{.n_tokens = 1024, .policy = CF_POLICY_OPTIMAL, .cached_tokens = 1024, .chunk_tiers = tiers[0]},
                            {.n_tokens = 700, .policy = CF_POLICY_CAKE, .cached_tokens = 640, .chunk_tiers = tiers[1]},
                            {.n_tokens = 2048, .policy = CF_POLICY_OPTIMAL, .cached_tokens = 1500, .chunk_tiers = tiers[2]},
                            {.n_tokens = 512, .policy = CF_POLICY_CAKE, .cached_tokens = 0, .chunk_tiers = NULL}};
  cf_restore_plan_t out[4];
  cf_planner_t pl;
  cf_planner_init(&pl, 0.2);

  /* no cost model yet: the fallback plan, policy load, no prediction */
  CF_CHECK_OK(cf_planner_plan(&pl, ins, out, 4, C, L));
  for (int i = 0; i < 4; i++) {
    int n_chunks = (int)((ins[i].n_tokens + C - 1) / C);
    uint64_t load = 0, compute = 0;
    for (int c = 0; c < n_chunks; c++) {
      int cached = (int64_t)(c + 1) * C <= ins[i].cached_tokens;
      CF_CHECK_EQ(out[i].h[c], cached ? 0 : L);
      if (cached) load += L;
      else compute += L;
    }
    CF_CHECK_EQ(out[i].policy, CF_POLICY_LOAD);
    CF_CHECK_EQ(out[i].have_cost, 0);
    CF_CHECK_EQ(out[i].chunks, (uint32_t)n_chunks);
    CF_CHECK_EQ(out[i].cells_load_cpu + out[i].cells_load_ssd, load);
    CF_CHECK_EQ(out[i].cells_compute, compute);
    CF_CHECK(out[i].predicted_us == 0 && out[i].bound_us == 0);
    cf_restore_plan_free(&out[i]);
  }

  /* with the cost model: per policy, the group's own plan */
  cf_planner_set_cost(&pl, &cost, 0);
  CF_CHECK_OK(cf_planner_plan(&pl, ins, out, 4, C, L));
  int idx[2][2] = {{0, 2}, {1, 3}};
  for (int p = 0; p < 2; p++) {
    cf_plan_input_t gin[2] = {ins[idx[p][0]], ins[idx[p][1]]};
    cf_restore_plan_t gout[2];
    cf_plan_group_t g;
    CF_CHECK_OK(cf_planner_plan_group(&cost, gin, 2, gin[0].policy, NULL, &g, gout));
    for (int k = 0; k < 2; k++) {
      const cf_restore_plan_t *a = &out[idx[p][k]], *b = &gout[k];
      int n_chunks = (int)((gin[k].n_tokens + C - 1) / C);
      CF_CHECK_EQ(a->policy, gin[k].policy);
      CF_CHECK_EQ(a->have_cost, 1);
      CF_CHECK_EQ(a->chunks, b->chunks);
      CF_CHECK_EQ(a->cells_load_cpu, b->cells_load_cpu);
      CF_CHECK_EQ(a->cells_load_ssd, b->cells_load_ssd);
      CF_CHECK_EQ(a->cells_compute, b->cells_compute);
      CF_CHECK_EQ(a->cells_load_cpu + a->cells_load_ssd + a->cells_compute, (uint64_t)n_chunks * L);
      CF_CHECK(fabs(a->predicted_us - b->predicted_us) < 1e-6 && a->predicted_us > 0);
      CF_CHECK(a->bound_us > 0 && a->bound_us <= a->predicted_us * 1.000001);
      for (int c = 0; c < n_chunks; c++) CF_CHECK_EQ(a->h[c], b->h[c]);
      cf_restore_plan_free(&gout[k]);
    }
    cf_plan_group_free(&g);
  }
  for (int i = 0; i < 4; i++) cf_restore_plan_free(&out[i]);
  cf_planner_close(&pl);
}

/* The last token a restore's plan computes (its extent, cf_memfit.h): what lib/exec holds
 * working memory for while it computes. */
static int64_t plan_extent(const cf_restore_plan_t *p) {
  for (int32_t c = (int32_t)p->chunks - 1; c >= 0; c--)
    if (p->h[c] > 0) return (int64_t)(c + 1) * C;
  return 0;
}

/* A memory budget (host_memory_bytes / gpu_memory_bytes, cf_planner_set_memory): every policy's
 * round of fully cached restores is planned within it (cf_memfit: compute shifted to loads or
 * restores waiting), so no restore's computed extent exceeds the budget; unbounded, the same
 * round computes past it (recompute computes everything); a budget of 0 plans as before. */
CF_TEST(planner_plans_fit_the_memory_budget) {
  cf_sched_cost_t cost;
  cost_of(&cost);
  const double bpt = 5120, budget = 6.0 * C * bpt; /* room for 6 chunks' working memory */
  uint8_t tiers[3][64];
  memset(tiers, CF_STORE_TIER_CPU, sizeof tiers);
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    cf_plan_input_t ins[3];
    for (int i = 0; i < 3; i++)
      ins[i] = (cf_plan_input_t){.n_tokens = 1024, .policy = p, .cached_tokens = 1024, .chunk_tiers = tiers[i]};
    cf_restore_plan_t un[3], fit[3];
    cf_planner_t pl;
    cf_planner_init(&pl, 0.2);
    cf_planner_set_cost(&pl, &cost, 0);
    CF_CHECK_OK(cf_planner_plan(&pl, ins, un, 3, C, L));
    cf_planner_set_memory(&pl, budget, bpt);
    CF_CHECK_OK(cf_planner_plan(&pl, ins, fit, 3, C, L));
    int64_t un_max = 0;
    for (int i = 0; i < 3; i++) {
      CF_CHECK_EQ(fit[i].have_cost, 1); /* lib/sched's plan, not the fallback */
      CF_CHECK_EQ(fit[i].policy, p);
      CF_CHECK_EQ(fit[i].cells_compute + fit[i].cells_load_cpu, (uint64_t)(1024 / C) * L);
      CF_CHECK_MSG(plan_extent(&fit[i]) * bpt <= budget, "%s: restore %d computes up to token %lld (%.0f bytes > %.0f)",
                   cf_policy_name((cf_policy_t)p), i, (long long)plan_extent(&fit[i]), plan_extent(&fit[i]) * bpt, budget);
      if (plan_extent(&un[i]) > un_max) un_max = plan_extent(&un[i]);
    }
    if (p == CF_POLICY_RECOMPUTE) {
      CF_CHECK_EQ(un_max, 1024); /* unbounded: recompute computes every chunk */
      CF_CHECK(fit[0].cells_load_cpu > 0);
    }
    cf_planner_set_memory(&pl, 0, bpt); /* off again: the unbounded plans */
    cf_restore_plan_t again[3];
    CF_CHECK_OK(cf_planner_plan(&pl, ins, again, 3, C, L));
    for (int i = 0; i < 3; i++) {
      CF_CHECK_EQ(again[i].cells_compute, un[i].cells_compute);
      cf_restore_plan_free(&un[i]); cf_restore_plan_free(&fit[i]); cf_restore_plan_free(&again[i]);
    }
    cf_planner_close(&pl);
  }
}
