/* bench_sched — planning time of a batch of 64 requests x 128k tokens (Llama-3.1-8B on the
 * H100 fit, 10 Gbps and PCIe links), one core.
 *
 * The budget is absolute: 1 ms per batch for the plan the daemon executes, i.e. optimal with
 * default options (refine_budget_s = 0: the analytic plan, refined only as far as the 1 ms
 * budget's estimate allows, which at 1M cells is not at all). The ratios are against
 * baselines measured in the same run: planning the same batch with `recompute` (the cheapest
 * possible planner: it only writes the ops), one simulator run of the plan (the unit of work
 * refinement repeats), and the old default (refinement by 19 simulator runs, what the daemon
 * ran before: refine_evals = 19 with no time budget). A second batch has mixed tiers (half of
 * each prefix's 16-chunk runs on a 7 GB/s SSD). Exit 1 if the default's best time is over 1 ms.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "util/cf_err.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* median and min of `reps` timings of plan(policy) */
static int time_plan(cf_sched_input_t *in, cf_policy_t pol, int reps, double *med, double *mn,
                     cf_sched_plan_t *p) {
  double *t = malloc((size_t)reps * sizeof *t);
  if (!t) return CF_ENOMEM;
  for (int i = 0; i < reps; i++) {
    double t0 = now();
    int rc = cf_sched_plan(in, pol, p);
    t[i] = now() - t0;
    if (rc) {
      fprintf(stderr, "plan %s: %s: %s\n", cf_policy_name(pol), cf_strerror(rc), cf_errmsg());
      free(t);
      return rc;
    }
  }
  qsort(t, (size_t)reps, sizeof *t, cmp);
  *med = t[reps / 2];
  *mn = t[0];
  free(t);
  return 0;
}

int main(void) {
  enum { N = 64 };
  cf_sched_req_t reqs[N];
  int fail = 0;
  /* 10 Gbps and PCIe (48 GB/s) on one engine; 8 engines sharing one 10 Gbps link; 8 engines
   * joined by NVLink (the help search runs) with their own PCIe links or one 10 Gbps link */
  const double gbps[5] = {10, 0, 10, 0, 10};
  const char *what[5] = {"1 engine, 10 Gbps link", "1 engine, 48 GB/s PCIe", "8 engines sharing 10 Gbps",
                         "8 engines, own PCIe, NVLink", "8 engines sharing 10 Gbps, NVLink"};
  static uint8_t tiers[N][512];
  double base_fm = 0; /* 1 engine on PCIe, no holes: the baseline of the hole batches */
  /* 6..8: PCIe with holes (issue 15.1): every 8th chunk, the first 64 chunks, every 2nd;
   * 9: 8 x 32k tokens with every 2nd chunk a hole (a batch refinement's budget is near) */
  const char *hole_what[4] = {"every 8th chunk a hole", "the first 64 chunks holes", "every 2nd chunk a hole",
                              "every 2nd chunk a hole"};
  for (int g = 0; g < 10; g++) {
    cf_sched_input_t in = {0};
    cf_cost_h100_llama8b(&in.cost);
    int gi = g < 5 ? g : 1; /* 5: PCIe with half of each prefix on an SSD; 6..8 holes */
    if (gbps[gi] > 0) in.cost.link_Bps = gbps[gi] * 1e9 / 8;
    if (gi >= 2) in.cost.n_devices = 8;
    if (gi == 2 || gi == 4) in.cost.shared_link = 1;
    if (gi >= 3) { /* NVLink 4: 450 GB/s per direction (datasheet) */
      in.cost.peer_Bps = 450e9;
      in.cost.peer_latency_s = 10e-6;
    }
    for (int i = 0; i < N; i++) reqs[i] = (cf_sched_req_t){0, 131072, 256, -1, NULL};
    /* vary lengths a little so the batch is not one repeated request */
    for (int i = 0; i < N; i++) reqs[i].prefix_tokens -= (i * 997) % 4096;
    if (g == 5) {
      in.cost.tier_Bps[1] = 7e9;
      for (int i = 0; i < N; i++) {
        for (int c = 0; c < 512; c++) tiers[i][c] = (uint8_t)(((c / 16) * 7 + i) % 2);
        reqs[i].chunk_tier = tiers[i];
      }
    }
    if (g >= 6) {
      for (int i = 0; i < N; i++) {
        for (int c = 0; c < 512; c++)
          tiers[i][c] = (g == 6 ? c % 8 == 7 : g == 7 ? c < 64 : c % 2 == 1) ? CF_SCHED_TIER_NONE : 0;
        if (g == 9) reqs[i].prefix_tokens -= 131072 - 32768;
        reqs[i].chunk_tier = tiers[i];
      }
    }
    in.reqs = reqs;
    in.n_reqs = g == 9 ? 8 : N;
    cf_sched_plan_t p;
    cf_sched_plan_init(&p);
    cf_sim_result_t s;
    cf_sim_result_init(&s);
    double fm, fmin_, rm, rmin, om, omin;
    if (time_plan(&in, CF_POLICY_OPTIMAL, 10, &fm, &fmin_, &p)) return 1; /* warm-up */
    if (time_plan(&in, CF_POLICY_OPTIMAL, g >= 6 ? 30 : 200, &fm, &fmin_, &p)) return 1;
    size_t ops = p.n_ops;
    int evals = p.sim_evals;
    double t0 = now();
    if (cf_sim_run(&in, &p, &s)) { fprintf(stderr, "sim: %s\n", cf_errmsg()); return 1; }
    double tsim = now() - t0;
    double B = cf_bound(&in), def_ratio = s.makespan_s / B;
    if (time_plan(&in, CF_POLICY_RECOMPUTE, g >= 6 ? 20 : 200, &rm, &rmin, &p)) return 1;
    if (g == 1) base_fm = fm;
    if (g >= 6) { /* holes: against the same batch without holes, no old default */
      printf("%s tokens, 1 engine, PCIe, %s: optimal as the daemon runs it %.3f ms median "
             "(%.3f min; %.1fx the 64 x 128k batch without holes), %d simulator runs, %zu ops, "
             "makespan/bound %.4f\n",
             g == 9 ? "8 x 32k" : "64 x 128k", hole_what[g - 6], fm * 1e3, fmin_ * 1e3, fm / base_fm,
             evals, ops, def_ratio);
      printf("    vs recompute planning (%.3f ms): %.1fx; vs one simulator run (%.2f ms): %.3fx\n",
             rm * 1e3, fm / rm, tsim * 1e3, fm / tsim);
      if (g == 9) /* refined or not, within the refinement's cap (CF_SCHED_REFINE_MAX_S) */
        printf("    refinement cap %.0f ms: %s\n", CF_SCHED_REFINE_MAX_S * 1e3,
               fmin_ <= CF_SCHED_REFINE_MAX_S ? "within" : "OVER");
      else printf("    budget 5 ms: %s\n", fmin_ <= 5e-3 ? "within" : "OVER");
      cf_sched_plan_free(&p);
      cf_sim_result_free(&s);
      continue;
    }
    in.refine_evals = 19; /* the old default: 19 simulator runs, whatever they cost */
    in.refine_budget_s = 3600;
    if (time_plan(&in, CF_POLICY_OPTIMAL, 3, &om, &omin, &p)) return 1;
    if (cf_sim_run(&in, &p, &s)) { fprintf(stderr, "sim: %s\n", cf_errmsg()); return 1; }
    double old_ratio = s.makespan_s / B;
    printf("64 x 128k tokens, %s%s: optimal as the daemon runs it %.3f ms median (%.3f min), "
           "%d simulator runs, %zu ops, makespan/bound %.4f\n",
           what[gi], g == 5 ? ", half on a 7 GB/s SSD" : "", fm * 1e3, fmin_ * 1e3, evals, ops,
           def_ratio);
    printf("    vs recompute planning (%.3f ms): %.1fx; vs one simulator run (%.2f ms): %.3fx\n",
           rm * 1e3, fm / rm, tsim * 1e3, fm / tsim);
    printf("    old default (19 simulator runs): %.1f ms median (%.0fx the new), makespan/bound %.4f\n",
           om * 1e3, om / fm, old_ratio);
    printf("    budget 1 ms: %s\n", fmin_ <= 1e-3 ? "within" : "OVER");
    if (fmin_ > 1e-3) fail = 1;
    cf_sched_plan_free(&p);
    cf_sim_result_free(&s);
  }
  return fail;
}
