/* Internal helpers shared by the planner's files (not part of the public API). */
#ifndef CF_SCHED_INT_H
#define CF_SCHED_INT_H

#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

/* Size the plan for `in` (per-request arrays and staircases, all h = 0, no ops) and copy the
 * device assignment `dev`. Returns 0 or CF_ENOMEM. */
int cf__plan_reset(cf_sched_plan_t *p, const cf_sched_input_t *in, const int *dev,
                   cf_policy_t policy);
/* Append one op; returns 0 or CF_ENOMEM. */
int cf__plan_op(cf_sched_plan_t *p, int r, cf_op_kind_t kind, int stream, int32_t c0,
                int32_t c1, int l0, int l1);
static inline uint16_t *cf__plan_h(cf_sched_plan_t *p, int r) { return p->h + p->h_off[r]; }
/* Room for `more` ops past n_ops (returns 0 or CF_ENOMEM); then cf__plan_put appends one
 * COMPUTE or LOAD op without a check: a plan of a million ops spends most of its time here. */
int cf__plan_reserve(cf_sched_plan_t *p, size_t more);
static inline void cf__plan_put(cf_sched_plan_t *p, int r, cf_op_kind_t kind, int stream,
                                int32_t c0, int32_t c1, int l0, int l1) {
  p->ops[p->n_ops++] = (cf_sched_op_t){.req = r, .kind = (uint8_t)kind, .stream = (int16_t)stream,
                                       .c0 = c0, .c1 = c1, .l0 = (int16_t)l0, .l1 = (int16_t)l1,
                                       .dst = -1};
}

/* Append COMPUTE ops (one per layer) and LOAD ops (one per layer when per_layer, else one
 * rectangle per run of layers with the same split) for request r whose layer l computes
 * chunks [0, k[l]) (k non-increasing); emit_compute also sets its staircase. Loads run
 * bottom layer first. Returns 0 or CF_ENOMEM. */
int cf__plan_emit_compute(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                          const int32_t *k);
/* Request r's compute when chunks [0, a) of every layer that computes them run on helper
 * devices (DESIGN.md §1 (b)): sets the staircase and emits r's own compute ops (chunks
 * [min(a, k_l), k_l) at layer l), after the load of its boundary hidden states when it is a
 * later pipeline stage. cf__plan_emit_help then emits the helpers' ops: helper i
 * of m computes chunks [a[i-1], a[i]) (a[-1] = 0, a[m-1] = a) at every layer that computes
 * them and sends each layer's cells to the later helpers (they attend to them) and to r's
 * device. Returns 0 or CF_ENOMEM. */
int cf__plan_emit_compute_split(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                                const int32_t *k, int32_t a);
int cf__plan_emit_help(cf_sched_plan_t *p, const cf_sched_input_t *in, int r, const int32_t *k,
                       const int32_t *a, const int *helper, int m);
/* Request r on a later pipeline stage (cf_cost_stage > 0): append the load of the boundary
 * hidden states of chunks [c0, c1) (layers [-1, 0)) on its link; nothing otherwise. The
 * emitters below call it; a policy emitting its own compute ops must too. 0 or CF_ENOMEM. */
int cf__plan_hidden(cf_sched_plan_t *p, const cf_sched_input_t *in, int r, int32_t c0,
                    int32_t c1);
/* Append a SEND of cells computed on `from` to device `to`; 0 or CF_ENOMEM. */
int cf__plan_send(cf_sched_plan_t *p, int r, int from, int to, int32_t c0, int32_t c1, int l0,
                  int l1);
int cf__plan_emit_loads(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                        const int32_t *k, int per_layer);

/* Holes (cf_sched.h): make the plan `p` of any policy compute every hole chunk at every layer.
 * Its LOAD ops lose their hole chunks (split around them, dropped when empty); each hole cell
 * the plan loaded gets a COMPUTE op on its request's own device, one per layer and run of such
 * cells, placed in that device's stream just before the first of the request's own compute ops
 * that attends to it (the op granularity of the policy's other ops is kept: cake still computes
 * chunk by chunk), the rest after the request's last own compute op (or where its first op
 * was, when it computes nothing), in layer order; on a later pipeline stage the hole chunks
 * first computed at layer 0 get their boundary hidden-state loads. Every dependency of a moved
 * or added op is produced earlier on its stream or by a load, so a valid plan stays valid. The
 * staircase becomes h = L for holes. O(ops + holes x own compute ops) per request with holes;
 * nothing is done (nor allocated) for a batch without holes. 0 or CF_ENOMEM. */
int cf__plan_holes(const cf_sched_input_t *in, cf_sched_plan_t *p);
/* Staircases h (plan layout, offsets h_off) with every hole at h = L. */
void cf__holes_clamp(const cf_sched_input_t *in, const size_t *h_off, uint16_t *h);
/* Does some request of the batch have a hole? */
int cf__any_holes(const cf_sched_input_t *in);

/* Device of every request: the request's own, or (device -1) the device with the least
 * estimated work so far, in arrival order. dev has n_reqs entries. */
void cf__assign_devices(const cf_sched_input_t *in, int *dev);
/* Request indices sorted by (arrival, index). */
void cf__arrival_order(const cf_sched_input_t *in, int *order);

/* Request r (in arrival order) computes all its chunks at its bottom ell[r] layers, one step
 * per layer, and loads the rest layer by layer (then holes, cf__plan_holes): the static
 * policies' driver (cf_policy_basic.c) and the windowed candidate's. 0 or CF_ENOMEM. */
int cf__layer_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                   cf_policy_t pol, const int *ell);

/* Per-policy planners: `dev` is the device assignment. */
int cf__policy_recompute(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);
int cf__policy_load(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);
int cf__policy_layerwise(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);
int cf__policy_cake(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);
int cf__policy_cacheflow(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);
int cf__policy_optimal(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out);

/* optimal's plan for requests whose chunks lie in tiers of different rates (cf_tiers.c):
 * per device, chunks computed to the most layers that fit in decreasing (link time saved) /
 * (compute time), the rest loaded layer by layer. *est: its stream-time estimate. Only for
 * one link per device or one device, no pipeline stages, no help. *busy (when not NULL): its
 * busiest stream's busy time (every op's exact cost summed per stream; windowed cells not yet
 * clipped), a lower bound on its makespan past the first arrival. *ops_layer (when not NULL):
 * its op count with every load one layer (cf_tiers.c merges some over layers; the other
 * policies' plans that refinement simulates do not): what a simulator run costs. 0 or
 * CF_ENOMEM. */
int cf__tier_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out, double *est,
                  double *busy, double *ops_layer);

/* Refinement (cf_refine.c). A simulated plan's score against the other policies' best plans
 * (ref: their smallest makespan, mean and p99 TTFT): a plan slower than the best other
 * policy's is out (viol = 1); then the smaller makespan wins, then the smaller mean TTFT. So
 * the plan kept is never beaten by another policy's plan on makespan and mean TTFT at once. */
typedef struct {
  double viol, mk, mean;
} cf__score_t;
typedef struct {
  double mk, mean, p99;
} cf__ref_t;
cf__score_t cf__score_of(const cf_sim_result_t *r, const cf__ref_t *ref);
int cf__score_better(cf__score_t a, cf__score_t b);
void cf__swap_plans(cf_sched_plan_t *a, cf_sched_plan_t *b);

/* General-staircase local search from `best` (a valid plan scoring *score; kept or replaced
 * by a better one): any staircase per request (non-monotone, whole requests computed or
 * loaded), loads as one rectangle per run of equal height or one op per layer and run,
 * requests in any order. Spends at most budget - *evals simulator runs (counted in *evals).
 * Only plans without cross-device help. Returns 0, CF_ENOMEM or CF_EINVAL (a bug). */
int cf__refine_general(const cf_sched_input_t *in, const int *dev, const cf__ref_t *ref,
                       cf_sched_plan_t *best, cf__score_t *score, int *evals, int budget);

/* Sliding windows (cf_window.c): take the cells cf_sched_window_skip skips out of p's LOADs
 * (a LOAD touching one is replaced, in its place in the stream order, by rectangles of the kept
 * cells); nothing to do without windowed layers. cf__sim_clipped: that, then cf_sim_run (every
 * plan the policies simulate internally is costed as it will run). 0, CF_ENOMEM, CF_EINVAL. */
int cf__plan_window_clip(const cf_sched_input_t *in, cf_sched_plan_t *p);
/* The windowed candidate (cf_window.c): with some layer windowed, a windowed layer either
 * restores every token of a prefix or loads at least its final window (cf_bound.c), and a
 * plan that computes some chunks there still loads that window, so a layer is best computed
 * whole or not at all: request r computes every chunk at its bottom ell[r] layers and loads
 * the rest (clipped to the final window at windowed layers). ell is chosen greedily over the
 * batch, the request saving the most link time per compute second first, while the busiest
 * stream is a link. *est: its streams' busy time from the first arrival (a lower bound on its
 * makespan; exact without arrivals, and without holes: no op waits on another stream). Sets
 * *est = INFINITY and plans nothing when no layer is windowed. 0 or CF_ENOMEM. */
int cf__window_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out, double *est);
int cf__sim_clipped(const cf_sched_input_t *in, cf_sched_plan_t *p, cf_sim_result_t *res);

/* The run-time check for plans that are not refined (no simulator run fits the budget): two
 * other policies' plans have closed-form makespans, load's (links only) and recompute's
 * (compute streams only), exact as cf_sim gives them; when one is below a lower bound on
 * `out`'s makespan (its busiest stream), it replaces `out`. So no plan optimal returns is
 * beaten by those two, refined or not; the other policies' plans: refinement, or unrefined
 * cf__check_others (below) as far as its runs reach.
 * O(ops), or O(requests) when busy >= 0 is `out`'s busiest stream's busy time, known to its
 * maker (cf__tier_plan's), and no layer is windowed (clipping would change it): plans with
 * scattered holes have ~260k ops at 64 x 128k tokens, and that pass cost a third of planning.
 * 0 or CF_ENOMEM. */
int cf__check_closed_forms(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                           double busy);

/* The check after cf__check_closed_forms for plans that are not refined: every other policy's
 * plan (recompute, load, cake, layerwise, cacheflow) is built (cheap next to simulating) with a
 * lower bound on its makespan (its streams back to back); `out` is simulated (one run), then
 * the others whose bound is below its makespan in lower-bound order, within `runs`
 * simulator runs (< 0: no cap; 0 or 1: nothing done), and the fastest (mean TTFT breaks ties)
 * replaces `out`. So with runs >= 6 no other policy's plan beats what optimal returns on
 * makespan, refined or not. Counts its runs in out->sim_evals. 0, CF_ENOMEM or CF_EINVAL. */
int cf__check_others(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out, int runs);

/* Exact plans for tiny batches (cf_exact.c): one device (so one link), at most
 * CF__EXACT_CELLS cells, 4 requests, 8 chunks each, 8 layers. cf__exact_applies says whether
 * the batch qualifies; cf__exact_plan searches every plan cf_sim accepts for one with a
 * smaller makespan than *score (within max_nodes search nodes; *nodes: how many it used) and,
 * when it finds one that scores better, replaces *best and *score. 0, CF_ENOMEM or CF_EINVAL. */
enum { CF__EXACT_CELLS = 16 };
int cf__exact_applies(const cf_sched_input_t *in);
int cf__exact_plan(const cf_sched_input_t *in, const int *dev, const cf__ref_t *ref,
                   cf_sched_plan_t *best, cf__score_t *score, long max_nodes, long *nodes);

#endif
