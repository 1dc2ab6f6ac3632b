/* lib/sched at realistic sizes, on the path the daemon runs (default options): every shipped
 * hardware profile, 8B and 70B (TP-4) models, prefixes of 4k-128k tokens, batches of 1-64,
 * one tier or two (each request's chunks split between the profile's default tier and
 * another). optimal must stay within 1.05x the lower bound for one request and 1.10x for a
 * batch, and no other policy's plan may beat it on makespan, nor on makespan and mean TTFT
 * at once. The draws come from a fixed-seed generator: these are ratios of simulated
 * makespans, deterministic, so the test asserts them (no timing here). */
#include <glob.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cf_test.h"
#include "sched/cf_bound.h"
#include "sched/cf_hw.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

static uint64_t rng = 88172645463325252ull;
static double uni(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}

typedef struct {
  double worst_single, worst_batch;
  int cases;
} sizes_stats_t;

/* One batch: plan with every policy, check optimal against the bound and the others. */
static void sizes_case(const char *what, cf_sched_input_t *in, sizes_stats_t *st) {
  cf_sched_plan_t p;
  cf_sched_plan_init(&p);
  cf_sim_result_t s;
  cf_sim_result_init(&s);
  double mk[CF_POLICY_COUNT], mean[CF_POLICY_COUNT];
  for (int pol = 0; pol < CF_POLICY_COUNT; pol++) {
    int rc = cf_sched_plan(in, (cf_policy_t)pol, &p);
    if (!rc) rc = cf_sim_run(in, &p, &s);
    CF_CHECK_MSG(rc == 0, "%s %s: %s", what, cf_policy_name(pol), cf_errmsg());
    mk[pol] = rc ? INFINITY : s.makespan_s;
    mean[pol] = rc ? INFINITY : s.mean_ttft_s;
  }
  double B = cf_bound(in), ratio = mk[CF_POLICY_OPTIMAL] / B, goal = in->n_reqs == 1 ? 1.05 : 1.10;
  CF_CHECK_MSG(ratio <= goal, "%s: optimal/bound %.4f > %.2f", what, ratio, goal);
  if (getenv("CF_SIZES_VERBOSE") && ratio > 1.015) printf("  %s: %.4f\n", what, ratio);
  double *worst = in->n_reqs == 1 ? &st->worst_single : &st->worst_batch;
  if (ratio > *worst) *worst = ratio;
  for (int pol = 0; pol < CF_POLICY_OPTIMAL; pol++) {
    CF_CHECK_MSG(mk[CF_POLICY_OPTIMAL] <= mk[pol] * (1 + 1e-9), "%s: optimal %.6g s slower than "
                 "%s %.6g s", what, mk[CF_POLICY_OPTIMAL], cf_policy_name(pol), mk[pol]);
    CF_CHECK_MSG(!(mk[pol] < mk[CF_POLICY_OPTIMAL] && mean[pol] < mean[CF_POLICY_OPTIMAL]),
                 "%s: %s beats optimal on makespan and mean TTFT", what, cf_policy_name(pol));
  }
  st->cases++;
  cf_sched_plan_free(&p);
  cf_sim_result_free(&s);
}

CF_TEST(sched_sizes_shipped_profiles_default_path) {
  glob_t g;
  CF_CHECK_EQ(glob("conf/hw/*.json", 0, NULL, &g), 0);
  CF_CHECK_GE(g.gl_pathc, 5);
  const char *models[2] = {"llama-3.1-8b", "llama-3.1-70b-tp4"};
  const int batch[5] = {1, 2, 8, 32, 64};
  static cf_sched_req_t reqs[64];
  static uint8_t tiers[64][512];
  sizes_stats_t st = {0, 0, 0};
  for (size_t i = 0; i < g.gl_pathc; i++) {
    cf_hw_t hw;
    CF_CHECK_OK(cf_hw_load(g.gl_pathv[i], &hw));
    for (int m = 0; m < 2; m++) {
      cf_model_shape_t ms;
      CF_CHECK_OK(cf_model_shape_load(models[m], &ms));
      for (int two = 0; two < 2; two++) {
        int t0 = hw.default_tier, t1 = -1;
        for (int t = 0; t < 3 && two; t++)
          if (t != t0 && hw.tier_Bps[t] > 0 && t1 < 0) t1 = t;
        if (two && t1 < 0) continue; /* one tier only in this profile */
        for (int b = 0; b < 5; b++) {
          cf_sched_input_t in = {0};
          CF_CHECK_OK(cf_hw_cost(&hw, &ms, 0, t0, 0, 256, &in.cost));
          if (two) {
            cf_sched_cost_t alt;
            CF_CHECK_OK(cf_hw_cost(&hw, &ms, 0, t1, 0, 256, &alt));
            in.cost.tier_Bps[t0] = in.cost.link_Bps;
            in.cost.tier_Bps[t1] = alt.link_Bps;
          }
          int n = batch[b];
          int burst = uni() < 0.5;
          for (int r = 0; r < n; r++) {
            int64_t P = 4096 + (int64_t)(uni() * (131072 - 4096));
            reqs[r] = (cf_sched_req_t){0, P, 128, -1, NULL};
            if (!burst) reqs[r].arrival_s = uni() * 0.002 * n;
            if (two) { /* runs of 16 chunks, each in one of the tiers */
              int32_t nc = cf_cost_chunks(&in.cost, P);
              for (int32_t c = 0; c < nc; c += 16) {
                uint8_t t = (uint8_t)(uni() < 0.5 ? t0 : t1);
                for (int32_t k = c; k < c + 16 && k < nc; k++) tiers[r][k] = t;
              }
              reqs[r].chunk_tier = tiers[r];
            }
          }
          in.reqs = reqs;
          in.n_reqs = n;
          char what[256];
          snprintf(what, sizeof what, "%s %s %s%s%s, %d requests%s", hw.name, models[m],
                   cf_tier_names[t0], two ? "+" : "", two ? cf_tier_names[t1] : "", n,
                   burst ? "" : " (staggered)");
          sizes_case(what, &in, &st);
        }
      }
    }
  }
  printf("  %d cases: optimal/bound worst %.4f single (goal 1.05), %.4f batches (goal 1.10)\n",
         st.cases, st.worst_single, st.worst_batch);
  globfree(&g);
}

/* The tie case of issue 13: 8 identical 2048-token requests on h100-link10g. */
CF_TEST(sched_sizes_identical_requests_balanced) {
  cf_hw_t hw;
  CF_CHECK_OK(cf_hw_load("conf/hw/h100-link10g.json", &hw));
  cf_model_shape_t ms;
  CF_CHECK_OK(cf_model_shape_load("llama-3.1-8b", &ms));
  sizes_stats_t st = {0, 0, 0};
  for (int n = 8; n <= 32; n *= 2)
    for (int64_t P = 512; P <= 2048; P *= 2)
      for (int analytic = 0; analytic < 2; analytic++) {
        cf_sched_input_t in = {0};
        CF_CHECK_OK(cf_hw_cost(&hw, &ms, 0, hw.default_tier, 0, 256, &in.cost));
        cf_sched_req_t reqs[32];
        for (int r = 0; r < n; r++) reqs[r] = (cf_sched_req_t){0, P, 64, -1, NULL};
        in.reqs = reqs;
        in.n_reqs = n;
        in.refine_budget_s = analytic ? -1 : 0;
        cf_sched_plan_t p;
        cf_sched_plan_init(&p);
        cf_sim_result_t s;
        cf_sim_result_init(&s);
        CF_CHECK_OK(cf_sched_plan(&in, CF_POLICY_OPTIMAL, &p));
        CF_CHECK_OK(cf_sim_run(&in, &p, &s));
        double ratio = s.makespan_s / cf_bound(&in);
        CF_CHECK_MSG(ratio <= 1.10, "%d x %lld tokens%s: optimal/bound %.4f", n, (long long)P,
                     analytic ? " (analytic)" : "", ratio);
        if (ratio > st.worst_batch) st.worst_batch = ratio;
        cf_sched_plan_free(&p);
        cf_sim_result_free(&s);
      }
  printf("  identical requests (8-32 x 512-2048 tokens, 10 Gbps): optimal/bound worst %.4f\n",
         st.worst_batch);
}
