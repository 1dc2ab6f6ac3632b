/* cf_sim — executes a plan on the modelled node and says what it costs.
 *
 * Each device's compute stream and each link run their ops in plan order; an op starts at
 * max(stream free, request arrival, dependencies present) and lasts its cost (cf_cost.h).
 * Dependencies (DESIGN.md §1): COMPUTE (r, l, [c0, c1)) waits for (c, l-1) computed for its
 * chunks and for every (c' < c0, l) present, loaded or computed. Loads wait for nothing (the
 * engine's destination blocks exist before the restore starts).
 *
 * The run is also the validity check: every cell exactly once, computed iff l < h_c, h_c in
 * [0, L], ops on the right stream, compute ops one layer high, no op waiting on a cell that
 * its own stream only produces later (a deadlock). Any violation is CF_EINVAL naming the op
 * or cell.
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
  /* private scratch, reused between runs */
  double *cell_fin_, *cell_pmax_;
  int32_t *kp_;
  size_t cap_cells_, cap_kp_, cap_reqs_;
} cf_sim_result_t;

void cf_sim_result_init(cf_sim_result_t *res);
void cf_sim_result_free(cf_sim_result_t *res);
/* Release the per-cell scratch (20 bytes per cell) but keep the results. */
void cf_sim_result_trim(cf_sim_result_t *res);

/* Simulate `plan` for input `in` (the same input it was planned for) into `res` (initialised
 * with cf_sim_result_init; buffers reused). Returns 0, CF_EINVAL if the plan is invalid (detail
 * names the op or cell), or CF_ENOMEM. Memory: 20 bytes per cell of the batch. */
int cf_sim_run(const cf_sched_input_t *in, const cf_sched_plan_t *plan, cf_sim_result_t *res);

#endif
