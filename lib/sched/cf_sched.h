/* cf_sched — the restore planner: for a batch of restore requests decide, per
 * (request, chunk, layer) cell, whether it is COMPUTED (prefill) or LOADED (copied from a tier),
 * on which device, and in which order each device's compute stream and each link runs.
 *
 * Pure C, no model and no store: it sees only the cost numbers in cf_sched_cost_t (cf_cost.h).
 * The simulator (cf_sim.h) executes a plan on the modelled node, the bound (cf_bound.h) says how
 * far any plan is from the dependency-free optimum. DESIGN.md §1 is the model.
 *
 * Plan = per request a staircase h_c (chunk c's layers [0, h_c) are computed, [h_c, L) loaded),
 * the device that computes the request, and an ordered list of operations:
 *   COMPUTE (r, l, [c0, c1))        one prefill step of chunks c0..c1-1 at layer l, on the
 *                                   compute stream of device plan->device[r];
 *   LOAD    (r, [c0, c1) x [l0, l1)) a rectangle of cells copied over link
 *                                   cf_cost_link_of(cost, plan->device[r]).
 *   SEND    (r, [c0, c1) x [l0, l1)) cells computed by a helper device (COMPUTE ops of r whose
 *                                   stream is not plan->device[r]) sent over the helper's
 *                                   peer (NVLink) link to device `dst`: r's device, or another
 *                                   helper that attends to them; only when the cost model has
 *                                   a peer link (cf_cost_has_peer). A helper needs the prefix
 *                                   of the cells it computes, computed by itself or sent to it,
 *                                   and hidden states never move: cf_sim.h has the rules.
 * ops[] lists every operation once; the ops of one stream (compute stream d, or link k) appear
 * in ops[] in the order that stream runs them (ops of different streams interleave freely).
 * A stream runs its ops in order; an op starts when its stream is free, its request has
 * arrived and its dependencies are present:
 *   COMPUTE (r, l, [c0,c1)) needs (c, l-1) computed for c in [c0, c1), and every (c' < c0, l)
 *   present (loaded or computed). LOADs need nothing.
 *
 * Typical use (the daemon's scheduler thread; the simulator does the same):
 *   cf_sched_plan_t plan; cf_sched_plan_init(&plan);
 *   for each batch: cf_sched_plan(&input, CF_POLICY_OPTIMAL, &plan); ... execute plan.ops ...
 *   cf_sched_plan_free(&plan);
 * The plan keeps its buffers between calls, so steady-state planning allocates only small
 * per-request scratch. The library keeps no global state: plan different batches on
 * different threads freely (one cf_sched_plan_t per thread).
 */
#ifndef CF_SCHED_H
#define CF_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "sched/cf_cost.h"

typedef enum {
  CF_POLICY_RECOMPUTE = 0, /* h_c = L for every chunk */
  CF_POLICY_LOAD,          /* h_c = 0, layer-wise pipelined loads */
  CF_POLICY_CAKE,          /* per request: compute from the front, load from the back, meet */
  CF_POLICY_LAYERWISE,     /* per request: compute the bottom l layers of all chunks, load the top */
  CF_POLICY_CACHEFLOW,     /* batch-aware two-pointer, token- or layer-wise per request */
  CF_POLICY_OPTIMAL,       /* ours: joint staircases over the batch, refined within a time
                              budget (see below) */
  CF_POLICY_COUNT
} cf_policy_t;

/* Static name ("cake"); "unknown" out of range. */
const char *cf_policy_name(cf_policy_t p);
/* Policy by name; returns CF_EINVAL with a detail listing the valid names. */
int cf_policy_parse(const char *name, cf_policy_t *out);

/* One restore request. */
typedef struct {
  double arrival_s;      /* when the request reaches the scheduler (>= 0) */
  int64_t prefix_tokens; /* cached prefix to restore (>= 0) */
  int64_t new_tokens;    /* tokens to prefill after the restore (for TTFT only) */
  int device;            /* compute device (engine instance) holding it; -1: planner chooses */
  const uint8_t *chunk_tier; /* NULL (every chunk in tier 0) or [chunks]: the tier each chunk
                                loads from (< CF_COST_MAX_TIERS; its rate: cf_cost_tier_Bps),
                                or CF_SCHED_TIER_NONE: a hole (see below).
                                Borrowed: must outlive the planning and simulating calls. */
} cf_sched_req_t;

/* Holes. A chunk whose tier is CF_SCHED_TIER_NONE is not stored (evicted, never saved) while
 * later chunks of the prefix are: store keys chain over token ids only, so a later chunk is
 * found without its predecessors. A hole is a tier with no load option: every plan computes
 * it at every layer (h_c = L), every policy plans the rest as it would, the bound charges its
 * compute, and the simulator refuses a plan that loads one of its cells. Its load time, where
 * a sum over chunks meets one (cf_sched_load_s), is 0: nothing crosses the link for it. */
#define CF_SCHED_TIER_NONE 0xFF

/* Tier of chunk c of request q (CF_SCHED_TIER_NONE for a hole). */
static inline int cf_sched_chunk_tier(const cf_sched_req_t *q, int32_t c) {
  return q->chunk_tier ? q->chunk_tier[c] : 0;
}
/* Is chunk c of request q a hole (stored nowhere: computed at every layer)? */
static inline int cf_sched_chunk_hole(const cf_sched_req_t *q, int32_t c) {
  return q->chunk_tier && q->chunk_tier[c] == CF_SCHED_TIER_NONE;
}
/* Holes among the chunks of request q (0 when it names no tiers). */
int32_t cf_sched_req_holes(const cf_sched_cost_t *c, const cf_sched_req_t *q);
/* Link seconds of one LOAD op of request q: chunks [c0, c1) at `layers` layers, each chunk at
 * its tier's rate, plus the link latency once (0 when empty). */
double cf_sched_load_s(const cf_sched_cost_t *c, const cf_sched_req_t *q, int32_t c0, int32_t c1,
                       int layers);

typedef struct {
  cf_sched_cost_t cost;
  const cf_sched_req_t *reqs;
  int n_reqs;
  /* optimal only (both 0 = the default, the path the daemon runs): how much simulator
   * refinement may follow the analytic plan. refine_budget_s is planning time in seconds,
   * converted to simulator runs from the batch's cell count at a fixed cost per simulated cell
   * (so the plan is deterministic: no clock is read); 0 = CF_SCHED_REFINE_BUDGET_S, < 0 = none
   * (the analytic plan alone; then, as every plan that is not refined, checked against the other
 * policies' plans: cf__check_others). refine_evals > 0 caps the simulator runs as well (tests,
   * benches); <= 0: no cap beyond the budget. */
  int refine_evals;
  double refine_budget_s;
} cf_sched_input_t;

/* Default refinement budget: 0.1% of the analytic plan's estimated makespan (the batch's
 * restore time), at least 2 ms and at most 10 ms of planning. What it buys: 8 x 2k-token
 * batches ~400 simulator runs, 12 x 8k tokens about 8, 12 x 32k tokens about 10; 64 x 128k tokens (1M cells,
 * ~10 ms a run) none: the analytic plan alone, 0.1-0.6 ms (bench_sched). */
#define CF_SCHED_REFINE_BUDGET_S 2e-3
#define CF_SCHED_REFINE_SHARE 1e-3
#define CF_SCHED_REFINE_MAX_S 10e-3
/* The cost per simulated cell the budget is converted with (measured: 5-9 ns on an idle
 * core, up to ~25 ns on a busy one; the estimate is kept on the safe side). */
#define CF_SCHED_SIM_S_PER_CELL 20e-9
/* The cost per node of the exact search that tiny batches get (cf_exact.c; measured ~0.2 us
 * on a busy core for 8-16 cells). */
#define CF_SCHED_NODE_S 0.25e-6

typedef enum { CF_OP_COMPUTE = 0, CF_OP_LOAD = 1, CF_OP_SEND = 2 } cf_op_kind_t;

typedef struct {
  int32_t req;
  uint8_t kind;   /* cf_op_kind_t */
  uint8_t pad_;
  int16_t stream; /* COMPUTE: device; LOAD: link; SEND: sending device (its peer stream) */
  int32_t c0, c1; /* chunks [c0, c1) */
  int16_t l0, l1; /* layers [l0, l1); COMPUTE has l1 == l0 + 1 */
  int16_t dst;    /* SEND: receiving device (the request's own, or another helper) */
  int16_t pad2_;
} cf_sched_op_t;

typedef struct {
  cf_policy_t policy;
  int n_reqs, n_layers, n_devices, n_links;
  int *device;       /* [n_reqs] device computing request r */
  int32_t *n_chunks; /* [n_reqs] */
  size_t *h_off;     /* [n_reqs + 1]: request r's staircase is h[h_off[r] .. h_off[r+1]) */
  uint16_t *h;       /* h[h_off[r] + c]: layers [0, h) of chunk c are computed */
  cf_sched_op_t *ops;
  size_t n_ops;
  double est_makespan_s; /* the planner's own prediction (simulated when refined), 0 if none */
  int sim_evals;         /* simulator runs the planner spent (optimal) */
  /* private: capacities */
  size_t cap_ops_, cap_reqs_, cap_h_;
} cf_sched_plan_t;

void cf_sched_plan_init(cf_sched_plan_t *plan);
void cf_sched_plan_free(cf_sched_plan_t *plan);

/* Check the input: costs positive and finite, requests well formed (device in range or -1).
 * Returns 0 or CF_EINVAL naming the field and request. */
int cf_sched_input_check(const cf_sched_input_t *in);

/* Sliding windows: the cells a windowed layer need not restore. The engine's next token (at
 * position P, the prefix's end) attends at a windowed layer only to keys (P - W, P), and a
 * chunk computed at that layer only to the W - 1 keys before each of its tokens; so a chunk
 * that is not computed at layer l (l >= h[c]) and ends before both is needed by nothing: it is
 * neither loaded nor computed, and the engine's block for it is never written (vLLM's hybrid
 * KV manager keeps the same: SlidingWindowManager frees, and on a prefix-cache hit asks for,
 * only the blocks from (tokens - W + 1) on; the earlier ones are null blocks). Sets skip[c]
 * (c < nc, the chunks of a P-token prefix with staircase h) and returns how many are skipped;
 * all 0 when layer l has no window (cf_cost_layer_windowed). */
int32_t cf_sched_window_skip(const cf_sched_cost_t *c, int64_t P, const uint16_t *h, int32_t nc,
                             int l, uint8_t *skip);

/* optimal, the plan the daemon runs (cf_policy_optimal.c has the details):
 *  - analytic plan: per request the convex hull of (compute, load) over "compute the front k
 *    chunks at a layer", a price bisection across the batch until each device's compute meets
 *    its link (ties: whole edges one request at a time, so identical requests balance); with
 *    mixed tiers a price bisection over the chunks' link-saved / compute ratio instead (partial
 *    heights of any chunk); peer-link help. Exact for the dependency-free relaxation up to
 *    whole layers, gamma, latency and pipeline ends; not a DP.
 *  - refinement within refine_budget_s (default: 0.1% of the estimated makespan, 2-10 ms,
 *    converted to simulator runs, deterministic): whenever the other policies' plans fit in it
 *    they are simulated and the result has the smallest makespan of all (mean TTFT breaks
 *    ties), so no other policy beats it on makespan, nor on makespan and mean TTFT at once;
 *    what is left searches general staircases, groupings and orders; batches of at most 16
 *    cells on one device (toy shapes only) are then searched exactly (branch and bound over
 *    every plan, cf_exact.c) within 3/4 of the budget in search nodes, at least 250k nodes
 *    (~50 ms at most; ~10 us typically).
 * Measured: within 1.04x of the bound for 4k-128k tokens and batches of 1-64 on the shipped
 * profiles (test_sched_sizes); every tiny instance within 1.02x of the exact optimum
 * (test_sched_oracle; the exact search stops at its node cap, so this is measured, not
 * proven); 64 x 128k tokens planned in 0.12-0.6 ms.
 *
 * Plan the batch `in` with `policy` into `out` (initialised with cf_sched_plan_init; its
 * previous contents are replaced, its buffers reused). Requests with device -1 are spread
 * over the devices by the same deterministic rule for every policy (least estimated load,
 * arrival order). Every policy's LOADs leave out the cells cf_sched_window_skip skips (they
 * are split where needed). Returns 0, CF_EINVAL (bad input, detail names it) or CF_ENOMEM.
 * The plan borrows nothing from `in`. */
int cf_sched_plan(const cf_sched_input_t *in, cf_policy_t policy, cf_sched_plan_t *out);

#endif
