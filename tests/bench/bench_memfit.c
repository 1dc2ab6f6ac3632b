/* bench_memfit — what a memory budget costs in restore makespan (issue 18), simulated on the
 * H100 fit (Llama-3.1-8B, ../shared/calib/h100.json; PCIe link, one device).
 *
 * Working memory of compute: fp32 hidden states (2 x 4096 x 4 bytes) + one layer's bf16 K/V
 * staging (2 x 1024 x 2 bytes) = 36 KiB per token of a request's computed extent (cf_memfit.h).
 * For each workload and policy: the makespan of the plan that fits each budget
 * (cf_memfit_plan: cut compute to loads, or wait for memory, whichever simulates faster) as a
 * ratio to the same policy's unbounded plan, from the same run. Deterministic (analytic plans,
 * no refinement), so the numbers are the model's, not this machine's.
 */
#include <stdio.h>
#include <stdlib.h>

#include "sched/cf_memfit.h"
#include "util/cf_err.h"

#define BPT (2.0 * 4096 * 4 + 2.0 * 1024 * 2)

int main(void) {
  struct { int n; int64_t tokens; } wl[] = {{8, 32768}, {16, 8192}, {4, 131072}, {1, 131072}};
  cf_policy_t pols[] = {CF_POLICY_OPTIMAL, CF_POLICY_CAKE, CF_POLICY_LAYERWISE, CF_POLICY_RECOMPUTE};
  double gib = 1024.0 * 1024 * 1024, budgets[] = {16, 8, 4, 2, 1, 0.5, 0.25};
  int nb = (int)(sizeof budgets / sizeof budgets[0]);
  cf_sched_plan_t p;
  cf_sched_plan_init(&p);
  printf("makespan within a budget / unbounded (same policy, same run); h100 fit, 36 KiB per computed token\n");
  printf("%-12s %-10s %10s", "batch", "policy", "unbounded");
  for (int b = 0; b < nb; b++) printf(" %7.2fG", budgets[b]);
  printf("\n");
  for (size_t w = 0; w < sizeof wl / sizeof wl[0]; w++) {
    cf_sched_req_t *q = calloc((size_t)wl[w].n, sizeof *q);
    for (int i = 0; i < wl[w].n; i++)
      q[i] = (cf_sched_req_t){.arrival_s = 0, .prefix_tokens = wl[w].tokens, .new_tokens = 64, .device = -1};
    cf_sched_input_t in = {.reqs = q, .n_reqs = wl[w].n, .refine_budget_s = -1};
    cf_cost_h100_llama8b(&in.cost);
    for (size_t k = 0; k < sizeof pols / sizeof pols[0]; k++) {
      cf_memfit_t m = {.budget_bytes = 0, .bytes_per_token = BPT};
      cf_memfit_report_t base, rep;
      if (cf_memfit_plan(&in, pols[k], &m, &p, &base)) { fprintf(stderr, "%s\n", cf_errmsg()); return 1; }
      char name[32];
      snprintf(name, sizeof name, "%d x %lldk", wl[w].n, (long long)(wl[w].tokens / 1024));
      printf("%-12s %-10s %9.3fs", name, cf_policy_name(pols[k]), base.makespan_s);
      for (int b = 0; b < nb; b++) {
        m.budget_bytes = budgets[b] * gib;
        int rc = cf_memfit_plan(&in, pols[k], &m, &p, &rep);
        if (rc) printf(" %8s", "ENOMEM");
        else printf(" %7.3fx%c", rep.makespan_s / base.makespan_s,
                    rep.cells_shifted ? 's' : rep.waiting_reqs ? 'w' : ' ');
      }
      printf("\n");
    }
    free(q);
  }
  printf("(suffix: s = compute shifted to loads (some may wait too), w = requests wait for memory, none = fits as planned)\n");
  cf_sched_plan_free(&p);
  return 0;
}
