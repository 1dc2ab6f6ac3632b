/* cf_trace — the last N executed restores, each with its plan and its executed steps, for
 * pictures (`cacheflowctl trace --svg`, Admin.Trace): "why was this restore slow" answered by
 * looking at what the planner predicted next to what ran.
 *
 * Bounded memory: a ring of `keep` records (config trace_restores); each keeps at most
 * `max_ops` executed steps (lib/exec's cf_exec_tev_t: forward calls and loaded cells, 24 bytes)
 * and at most `max_ops` plan ops (cf_plan_op_t, 24 bytes) — the rest counted as dropped — plus
 * 5 bytes per chunk: at most keep x (max_ops x 48 + chunks x 5) bytes. The oldest record
 * leaves when a new one arrives.
 *
 * The executor thread records (cf_trace_begin before the run, cf_trace_end after it); the loop
 * thread reads (cf_trace_get). A mutex guards the ring; readers copy out.
 */
#ifndef CF_TRACE_H
#define CF_TRACE_H

#include <stdint.h>

#include "cf_planner.h"
#include "exec/cf_exec.h"

/* One traced restore. Executed times are ns from the run's start (the batch's cf_exec_run). */
typedef struct {
  uint64_t id;                /* the restore (PlanSummary.restore_id) */
  int err;                    /* 0 or the restore's CF_E* */
  int policy, n_layers, chunk_tokens, n_chunks, n_tokens, n_loaders;
  int *h;                     /* [n_chunks] the staircase executed (vanished chunks raised to L) */
  uint8_t *tiers;             /* NULL or [n_chunks] (cf_restore_plan_t.tiers) */
  cf_plan_op_t *plan_ops;     /* [n_plan_ops] predicted (times in s from the round's planning) */
  int n_plan_ops, plan_ops_dropped;
  cf_exec_tev_t *ev;          /* [n_ev] executed steps, t0_ns / t1_ns from t_start */
  int n_ev, ev_dropped;
  double predicted_us, bound_us, time_us;
  uint64_t cells_loaded[3], cells_computed, forward_calls, load_failures;
} cf_trace_rec_t;

typedef struct cf_trace_s cf_trace_t;

/* A ring of `keep` records (>= 1) of at most max_ops steps each. 0 or CF_ENOMEM. */
int cf_trace_init(cf_trace_t **out, int keep, int max_ops);
void cf_trace_free(cf_trace_t *t); /* NULL ok */

/* The step buffer for one request about to run (set cf_exec_req_t.trace to it), or NULL
 * (no memory: that restore is not traced). */
cf_exec_trace_t *cf_trace_begin(cf_trace_t *t);
/* After the run: record request r (its plan `pl`, n_loaders loader threads) and free tr. */
void cf_trace_end(cf_trace_t *t, cf_exec_trace_t *tr, const cf_exec_req_t *r, const cf_restore_plan_t *pl,
                  int n_layers, int n_loaders);

/* A copy of restore `id`'s record (0: the latest) into *out (free with cf_trace_rec_free).
 * 0 or CF_ENOTFOUND (not kept: never traced, or pushed out by newer ones) / CF_ENOMEM. */
int cf_trace_get(cf_trace_t *t, uint64_t id, cf_trace_rec_t *out);
/* The ids kept, oldest first, into ids[0..cap); returns how many are kept. */
int cf_trace_ids(cf_trace_t *t, uint64_t *ids, int cap);
void cf_trace_rec_free(cf_trace_rec_t *r);

/* Admin.Trace (cf_trace_rpc.c, on the loop thread): answer call c with restore restore_id's
 * trace (0: the latest) from t (NULL: FAILED_PRECONDITION, no traces kept). */
struct cf_rpc_call_s;
void cf_trace_rpc(struct cf_rpc_call_s *c, cf_trace_t *t, uint64_t restore_id);

#endif
