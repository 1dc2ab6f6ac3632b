/* cf_batch — cacheflowd's executor thread: planned restores -> pins -> lib/exec.
 *
 * The service batches restores (batch_window_us / batch_max), looks them up and plans each
 * policy group with lib/sched on the loop thread (cf_planner); cf_dataplane then submits each
 * planned restore here as a job carrying its staircase. This thread takes every queued job (up
 * to batch_max) as one round and:
 *   1. pins the job's stored chunks (cf_cellsrc_store_prepare): CPU-tier chunks are read zero-copy
 *      from their pinned slots, SSD chunks through verified reads; a chunk that left the store
 *      since the lookup is recomputed (h = L), so a plan never points at missing data;
 *   2. executes the whole round in one lib/exec run (this thread computes, loader threads copy),
 *      reporting layers as they become ready (readiness counter + on_layer) and the final stats.
 * Callbacks run on this thread or (on_layer) on an executor thread with its lock held: they must
 * be quick. No gRPC, protobuf, libuv or daemon-config types here.
 */
#ifndef CF_BATCH_H
#define CF_BATCH_H

#include <stdatomic.h>
#include <stdint.h>

#include "exec/cf_exec.h"
#include "model/cf_backend.h"
#include "store/cf_store.h"

typedef struct {
  cf_exec_stats_t stats;
  double time_s;            /* start of execution to last layer */
} cf_batch_result_t;

typedef struct cf_batch_job_s cf_batch_job_t;
struct cf_batch_job_s {
  /* set by the submitter; read-only here until on_done */
  const int32_t *tokens;
  int n_tokens;
  const int32_t *blocks;
  int n_blocks;
  cf_kvmap_t *kv;
  cf_ready_t *ready;        /* may be NULL */
  int ready_slot;
  int *h;                   /* [ceil(n_tokens / C)] the plan's staircase (chunks past the plan: L);
                               adjusted here to what the store still holds */
  const uint32_t *load_rank;/* NULL or [n_chunks * L]: the plan's link order of each cell */
  const cf_exec_cop_t *cops;/* NULL or [n_cops]: the plan's compute ops, stream order (cf_exec.h) */
  int n_cops;
  uint64_t req_id;
  atomic_int cancel;        /* set from any thread: the job ends with CF_ECANCELED */
  void (*on_layer)(cf_batch_job_t *j, int layers_ready);
  /* Always called exactly once; after it this module never touches the job again. */
  void (*on_done)(cf_batch_job_t *j, int err, const cf_batch_result_t *res);
  void *user;
  /* private */
  cf_batch_job_t *next_;
};

typedef struct {
  cf_backend_t *be;         /* borrowed */
  cf_store_t *store;        /* borrowed */
  int n_loaders;            /* loader threads (>= 1) */
  int batch_max;            /* jobs per round (>= 1) */
  double cpu_Bps, ssd_Bps;  /* read-rate limits, 0 = unlimited */
} cf_batch_opts_t;

typedef struct cf_batch_s cf_batch_t;

/* Start the thread. Returns 0 or CF_E* (store geometry not fp32, threads). */
int cf_batch_start(cf_batch_t **out, const cf_batch_opts_t *o);
/* Queue jobs (any thread). After cf_batch_quiesce, jobs end at once with CF_ESHUTDOWN. */
void cf_batch_submit(cf_batch_t *b, cf_batch_job_t **jobs, int n);
/* Cancel every queued and running job and wait until the thread is idle: when this returns,
 * every submitted job has had on_done. */
void cf_batch_quiesce(cf_batch_t *b);
/* quiesce, join the thread, free. NULL is a no-op. */
void cf_batch_stop(cf_batch_t *b);
/* Change the read-rate limits (SIGHUP). */
void cf_batch_set_rates(cf_batch_t *b, double cpu_Bps, double ssd_Bps);

#endif
