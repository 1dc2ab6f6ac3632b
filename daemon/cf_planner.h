/* cf_planner — the restore path's one planning step. It runs on the executor thread
 * (cf_executor), once per round, never on the libuv loop: the round's restores (their cached
 * prefixes as the store lookup found them, moments before) are planned together, one
 * cf_sched_plan per policy present, under the daemon's measured cost model (cf_calib) with the
 * online re-fit applied (cf_refit), simulated for the prediction, bounded with cf_bound. The
 * result, one cf_restore_plan_t per restore, is what every later stage uses: the executor's
 * staircase, link order and compute order, the PlanSummary the engine is sent (its numbers are
 * computed here and nowhere else) and the prediction the re-fit compares the execution with.
 *
 * Chunks the store does not hold are recomputed by the restore (every layer): the planner plans
 * the prefix up to the last stored chunk, the absent chunks inside it as holes (lib/sched computes
 * them at every layer and loads the stored chunks after them), and the uncached rest is costed
 * as a prefill over it, both in the prediction
 * and in the bound (no plan can avoid it). A partial last chunk counts as uncached here even
 * when the store holds it: lib/exec always computes it (h = L), so the plan covers only the
 * cached prefix's full chunks. A group lib/sched cannot plan (out of memory) gets the fallback
 * plan: load what is cached, compute the rest (policy load, no prediction).
 *
 * lib/sched is called only through its public header (cf_sched_plan and cf_sched_input_t).
 */
#ifndef CF_PLANNER_H
#define CF_PLANNER_H

#include <pthread.h>
#include <stdint.h>

#include "cf_evict_refresh.h"
#include "cf_refit.h"
#include "exec/cf_exec.h"
#include "sched/cf_memfit.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

/* The refinement budget the daemon gives `optimal` (cf_sched_input_t.refine_evals): the one
 * place it is set. -1 is lib/sched's default budget. */
#define CF_PLANNER_REFINE_EVALS (-1)

/* The tiers the planner tells lib/sched apart (cf_sched_req_t.chunk_tier, cost.tier_Bps):
 * the CPU tier reads at link_Bps (cpu_read_gbps or memcpy), the SSD tier at tier_Bps[1], the
 * remote tier at tier_Bps[2] (remote_read_gbps, or measured at start-up). The numbers equal the
 * executor's stats tier indices (CF_EXEC_TIER_*), which the re-fit relies on. */
enum { CF_PLAN_TIER_CPU = 0, CF_PLAN_TIER_SSD = 1, CF_PLAN_TIER_REMOTE = 2 };

/* A restore as the planning step sees it: its length, its policy and what the lookup found. */
typedef struct {
  int64_t n_tokens;
  int policy;                 /* cf_policy_t */
  int64_t cached_tokens;      /* tokens up to the end of the last chunk the store holds */
  const uint8_t *chunk_tiers; /* NULL (all of them in the CPU tier) or [chunks of cached_tokens]:
                                 CF_STORE_TIER_CPU / _SSD / _REMOTE of each, or CF_STORE_TIER_NONE:
                                 a hole (not stored: computed at every layer, CF_SCHED_TIER_NONE) */
  /* Restore of [k, n) (RestoreRequest.present_tokens = k): chunks [0, present_chunks) are the
   * engine's own KV (cf_exec_present_chunks): neither loaded nor computed, h 0. The plan covers
   * the cached chunks after them; their compute steps attend over the present tokens too, so
   * the prediction adds that attention (beta x present tokens per computed token-layer). */
  int32_t present_chunks;
  int compute_partial;        /* the chunk at present_chunks holds k and must be computed (the
                                 GPU path loads whole cells only): h = L */
  int want_ops;               /* keep the plan's ops with their predicted times and the chunks'
                                 tiers in the plan (ops, tiers: the daemon's restore traces) */
} cf_plan_input_t;

/* One op of a restore's plan as the planner's simulator predicted it (want_ops): COMPUTE
 * (kind 0, chunks [c0, c1) at layer l0, l1 = l0 + 1) or LOAD (kind 1, [c0, c1) x [l0, l1) from
 * tier `tier`), in the restore's chunk numbers; times from the round's planning. */
typedef struct {
  double t0_s, t1_s;
  int32_t c0, c1;
  int16_t l0, l1;
  uint8_t kind, tier;
} cf_plan_op_t;

/* The plan of one restore. */
typedef struct {
  int policy;                 /* cf_policy_t the plan is (the fallback plan: CF_POLICY_LOAD) */
  int *h;                     /* [ceil(n_tokens / C)]: layers computed per chunk (chunks past the
                                 planned prefix: L); the executor lowers none, raises vanished ones */
  uint32_t *load_rank;        /* NULL (layer-major) or [n_chunks * L]: the plan's link order */
  cf_exec_cop_t *cops;        /* NULL (work-conserving) or [n_cops]: compute ops in stream order */
  uint8_t *skip;              /* NULL or [n_chunks * L], cell (c, l) at c * L + l: 1 where a windowed
                                 layer's cell is needed by no later token (cf_sched_window_skip):
                                 neither loaded nor computed, never written to the engine */
  int n_cops;
  int64_t planned_tokens;     /* the prefix lib/sched planned (a stored partial last chunk: not) */
  cf_sched_cost_t cost;       /* the cost model it was planned with (what the re-fit samples against) */
  int have_cost;              /* 0: the fallback plan (no cost model, or lib/sched failed) */
  /* the PlanSummary's numbers */
  uint32_t present_chunks;    /* chunks inside [0, present_tokens): no cells counted for them */
  uint32_t hole_chunks;       /* planned chunks no tier holds (computed at every layer) */
  uint32_t chunks;
  uint64_t cells_load_cpu, cells_load_ssd, cells_load_remote, cells_compute;
  uint64_t cells_skip;        /* cells of skip[] (not among the loads above) */
  double predicted_us, bound_us; /* 0 without a cost model */
  /* want_ops only (else NULL / 0): the plan's ops in plan order, and each chunk's tier
   * (CF_PLAN_TIER_*; 254: the engine's own (present_tokens); 255: not stored, computed whole)
   * [chunks] */
  cf_plan_op_t *ops;
  int n_ops;
  uint8_t *tiers;
} cf_restore_plan_t;

/* Free h, load_rank, cops, ops and tiers (NULL ok), zero the rest. */
void cf_restore_plan_free(cf_restore_plan_t *p);

/* One policy group planned by lib/sched, kept for inspection (tests): request i = input i. */
typedef struct {
  cf_sched_input_t in;
  cf_sched_req_t *reqs;       /* as planned: a partial last chunk's tokens moved to new_tokens */
  uint8_t *tiers;             /* backs reqs[i].chunk_tier (CF_PLAN_TIER_*), NULL when none */
  cf_sched_plan_t plan;
  cf_sim_result_t sim;        /* the prediction */
  cf_memfit_report_t fit;     /* within a memory budget: how the plan was made to fit (strategy 0: as planned) */
} cf_plan_group_t;

/* Plan ins[0..n) together with `policy` under `cost` into out[0..n) (h, load_rank, cops
 * malloc'ed; free with cf_restore_plan_free) and keep the group in *g (free with
 * cf_plan_group_free, also on failure). Returns 0, or CF_EINVAL/CF_ENOMEM (out untouched). */
/* mf: NULL or a memory budget (cf_memfit): the group's plan is cf_memfit_plan's, which fits it
 * (compute shifted to loads, or restores waiting for memory, whichever simulates faster); a
 * restore whose must-compute part alone exceeds the budget is planned unbounded (the executor
 * then refuses it with RESOURCE_EXHAUSTED naming the bytes). */
int cf_planner_plan_group(const cf_sched_cost_t *cost, const cf_plan_input_t *ins, int n, int policy,
                          const cf_memfit_t *mf, cf_plan_group_t *g, cf_restore_plan_t *out);
void cf_plan_group_free(cf_plan_group_t *g);

/* The fallback plan of one restore: load its cached full chunks, compute the rest. 0 or CF_ENOMEM. */
int cf_planner_plan_fallback(const cf_plan_input_t *in, int C, int L, cf_restore_plan_t *out);

/* The planner the executor plans with: the calibrated cost model (set on the loop thread at
 * start-up and on reload) and its online re-fit (fed by the executor). Thread-safe. */
typedef struct {
  pthread_mutex_t mu;
  cf_sched_cost_t cost;
  int have_cost;
  int refit_on;               /* plan with the re-fitted model (config cost_refit) */
  cf_refit_t refit;
  cf_memfit_t mem;            /* mem.budget_bytes > 0: plans fit the restore working memory's budget */
  cf_evict_refresh_t *evict;  /* NULL, or the store's cost eviction table, offered every round's model (borrowed) */
  /* Tests only: environment CF_TEST_PLAN_HOLD_MS (read at init) makes every planning step take
   * at least that long, so a test can show the loop answering while a batch is being planned
   * however fast the planner is. 0 (unset) in production. */
  int test_hold_ms;
} cf_planner_t;

void cf_planner_init(cf_planner_t *pl, double refit_weight);
void cf_planner_close(cf_planner_t *pl);
/* The calibrated cost model (copied) and whether to apply the re-fit when planning. */
void cf_planner_set_cost(cf_planner_t *pl, const cf_sched_cost_t *cost, int refit_on);
/* The memory budget the executor's restores compute in (host_memory_bytes' arena or the GPU
 * path's, less what the executor holds outside requests) and the working memory a request holds
 * per token of its computed extent; budget <= 0: plans are not bounded. Thread-safe. */
void cf_planner_set_memory(cf_planner_t *pl, double budget_bytes, double bytes_per_token);
/* Where executed restores report how their plans ran, and GetStats / /metrics read it. */
cf_refit_t *cf_planner_refit(cf_planner_t *pl);
/* The model a round would be planned with now: the calibrated one, re-fitted when cost_refit is
 * on. 0, or CF_EAGAIN before cf_planner_set_cost. */
int cf_planner_cost_now(cf_planner_t *pl, cf_sched_cost_t *out);
/* Offer every round's model (re-fitted) to `r` (NULL: none), so that the store's cost eviction
 * values chunks with what the planner plans with (cf_evict_refresh.h). Set before restores run. */
void cf_planner_set_evict(cf_planner_t *pl, cf_evict_refresh_t *r);

/* Plan a round: ins[0..n) into out[0..n), one lib/sched plan per policy present, chunks of C
 * tokens, L layers. Every restore gets a plan (the fallback where lib/sched fails or there is
 * no cost model). Returns 0, or CF_ENOMEM when even a fallback plan could not be allocated
 * (those out[i] have h NULL). */
int cf_planner_plan(cf_planner_t *pl, const cf_plan_input_t *ins, cf_restore_plan_t *out, int n, int C, int L);

#endif
