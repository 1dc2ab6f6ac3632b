/* cf_exec_plan — what the executor takes from a lib/sched plan for one of its requests: the
 * link order of its loads (load_rank) and its compute ops in the compute stream's order (cops).
 * Shared by the daemon (cf_planner) and bench_restore so both execute a plan the same way. */
#ifndef CF_EXEC_PLAN_H
#define CF_EXEC_PLAN_H

#include <stdint.h>

#include "exec/cf_exec.h"
#include "sched/cf_sched.h"

/* Ranks of request `req`'s cells in the plan's link order: out[c * L + l] = index in plan->ops
 * of the LOAD op covering (c, l), UINT32_MAX for cells no op loads. Chunks >= n_chunks and
 * layers >= L are ignored. Returns a malloc'ed [n_chunks * L] array (caller frees) or NULL
 * (out of memory: the executor then loads layer-major). */
uint32_t *cf_exec_plan_load_rank(const cf_sched_plan_t *plan, int req, int n_chunks, int L);

/* Request `req`'s COMPUTE ops in plan order, rank = index in plan->ops (ranks of one plan's
 * requests interleave as its compute stream does). Chunks of the restore past the plan's (the
 * uncached tail, computed whole) have no ops: the executor computes them whenever the plan's
 * next op must wait (see cf_exec_req_t.cops). Returns a malloc'ed array (caller frees) and its
 * length in *n; NULL with *n = 0 when the plan computes nothing for the request or memory is
 * short (the executor then computes work-conserving). */
cf_exec_cop_t *cf_exec_plan_cops(const cf_sched_plan_t *plan, int req, int *n);

#endif
