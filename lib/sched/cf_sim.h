/* cf_sim — executes a plan on the modelled node and says what it costs.
 *
 * Each device's compute stream and each link run their ops in plan order; an op starts at
 * max(stream free, request arrival, dependencies present) and lasts its cost (cf_cost.h).
 * Dependencies (DESIGN.md §1): COMPUTE (r, l, [c0, c1)) waits for (c, l-1) computed for its
 * chunks and for every (c' < c0, l) present, loaded or computed. Loads wait for nothing (the
 * engine's destination blocks exist before the restore starts).
 *
 * Cross-device compute (peer link, cf_cost.h): a COMPUTE op of request r on a device h other
 * than r's own device d is help. Hidden states never move between devices, and loads land only
 * on d, so h needs (c, l-1) computed on h itself and every (c' < c0, l) present on h: computed
 * by h, or sent to h by the helper that computed it. Cells move only through SEND ops on the
 * sender's peer stream: SEND (r, [c0,c1) x [l0,l1)) to dst waits for those cells computed on
 * the sender and makes them present on dst when it ends (each cell reaches each device at most
 * once, and every helper-computed cell must reach d). d's own compute may use them as prefix
 * cells (c' < c0, l), never as hidden input. Streams: compute d, link k, peer d; each runs
 * its ops in plan order, and the streams are advanced together until every op ran (a stream
 * whose next op waits on a cell no stream can produce any more is a deadlock).
 *
 * Pipeline stages (cf_cost.h): COMPUTE at layer 0 of a request on a stage > 0 device waits for
 * the boundary hidden states of its chunks, loaded by LOAD ops with layers [-1, 0) (each chunk
 * it computes at layer 0 exactly once, no other), and runs on the request's own device.
 *
 * The run is also the validity check: every cell exactly once, computed iff l < h_c, h_c in
 * [0, L], ops on the right stream, compute ops one layer high, every cell computed off its
 * request's device sent exactly once, no op waiting on a cell that only a later op of its own
 * stream (or of a stream stuck behind it) produces (a deadlock). Any violation is CF_EINVAL
 * naming the op or cell.
 */
#ifndef CF_SIM_H
#define CF_SIM_H

#include "sched/cf_sched.h"

typedef struct {
  double makespan_s;   /* absolute time the last restore completes (time 0 = arrival origin) */
  double mean_ttft_s, p50_ttft_s, p95_ttft_s, p99_ttft_s;
  double mean_restore_s;
  double compute_util; /* busy time / (n_devices * makespan) */
  double link_util;    /* busy time / (n_links * makespan) */
  int n_reqs;
  double *finish_s;    /* [n_reqs] absolute completion of request r's restore */
  double *restore_s;   /* [n_reqs] finish - arrival */
  double *ttft_s;      /* [n_reqs] restore + prefill of the new tokens over the whole prefix */
  int64_t cells_computed, cells_loaded;
  int64_t cells_helped;  /* cells computed on another device than their request's */
  double peer_util;      /* peer (NVLink) busy time / (n_devices * makespan) */
  /* private scratch, reused between runs */
  double *cell_fin_, *cell_pmax_;
  int32_t *kp_;
  size_t cap_cells_, cap_kp_, cap_reqs_;
  double *cell_hfin_;    /* only for plans with help: time computed, on its device */
  int16_t *cell_dev_;    /* device that computed the cell, -1 none yet / loaded */
  size_t cap_help_;
  double *cell_pres_;    /* plans whose helpers send to each other: cells of those requests */
  size_t *poff_;         /* x devices; per request its offset there, -1: none */
  size_t cap_poff_;
  double *hid_;          /* pipeline stages: boundary hidden state of each chunk, loaded at */
  size_t cap_hid_;
  size_t cap_pres_;
  size_t *sidx_;         /* ops of each compute / peer stream, in plan order */
  size_t cap_sidx_;
  /* Per-op times (pictures, cf_svgplot): set record_ops before cf_sim_run and op_start_s /
   * op_end_s [plan->n_ops] get each op's simulated start and end (absolute, time 0 = arrival
   * origin). Off by default; recording changes no result. */
  int record_ops;
  double *op_start_s, *op_end_s;
  size_t cap_opt_;
} cf_sim_result_t;

void cf_sim_result_init(cf_sim_result_t *res);
void cf_sim_result_free(cf_sim_result_t *res);
/* Release the per-cell scratch (20 bytes per cell) but keep the results. */
void cf_sim_result_trim(cf_sim_result_t *res);

/* Simulate `plan` for input `in` (the same input it was planned for) into `res` (initialised
 * with cf_sim_result_init; buffers reused). Returns 0, CF_EINVAL if the plan is invalid (detail
 * names the op or cell), or CF_ENOMEM. Memory: 20 bytes per cell of the batch, 30 when the
 * plan has cross-device compute, + 8 x n_devices per cell of a request whose helpers send to
 * each other. */
int cf_sim_run(const cf_sched_input_t *in, const cf_sched_plan_t *plan, cf_sim_result_t *res);

/* Pipeline-parallel engines (cf_cost.h pp_stages): when the caller made every restore request
 * `stages` consecutive requests in `in` (request i's stage s at index i * stages + s, same
 * arrival and tokens, each pinned to its stage's device), fold the simulated results `res`
 * (from cf_sim_run on `in`) into per-request ones: finish = the last stage's, TTFT = restore +
 * the prefill of the new tokens through every stage. Makespan, utilisation and cell counts
 * stay. Returns 0, CF_EINVAL (counts do not match) or CF_ENOMEM. */
int cf_sim_fold_stages(const cf_sched_input_t *in, int stages, cf_sim_result_t *res);

#endif
