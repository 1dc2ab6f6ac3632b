/* cf_batch — cacheflowd's scheduler thread: batch -> store lookup -> plan -> execute.
 *
 * The service's batcher (cf_service.c) collects restores for batch_window_us / batch_max on
 * the loop thread and hands each batch to cf_dataplane, which submits it here as jobs. This
 * thread takes every queued job (up to batch_max), and for each policy present in them:
 *   1. looks the chunk keys up in the store and pins the CPU-tier chunks (cf_cellsrc_store),
 *   2. builds the scheduler input from the costs profiled at start-up (cf_profile) and the
 *      tier bandwidth (configured read rate, else measured memcpy rate), plans with that policy
 *      (lib/sched), and clamps the plan to what is stored (chunks not stored: h = L),
 *   3. reports the plan (predicted time from the simulator, lower bound), then executes the
 *      sub-batch on lib/exec (this thread computes, loader threads copy), reporting layers as
 *      they become ready and the final stats.
 * Callbacks run on this thread (on_layer: on an executor thread with its lock held); they must
 * be quick (cf_dataplane queues them to the loop). No gRPC, protobuf or libuv types here.
 */
#ifndef CF_BATCH_H
#define CF_BATCH_H

#include <stdatomic.h>
#include <stdint.h>

#include "exec/cf_exec.h"
#include "model/cf_backend.h"
#include "sched/cf_cost.h"
#include "store/cf_store.h"

typedef struct {
  int policy;            /* cf_policy_t of the plan */
  uint32_t chunks;
  uint64_t cells_load_cpu, cells_load_ssd, cells_compute;
  double predicted_s, bound_s;
} cf_batch_plan_info_t;

typedef struct {
  cf_exec_stats_t stats;
  double time_s;         /* start of execution to last layer */
  double predicted_s, bound_s;
} cf_batch_result_t;

typedef struct cf_batch_job_s cf_batch_job_t;
struct cf_batch_job_s {
  /* set by the submitter; owned by it, read-only here until on_done */
  const int32_t *tokens;
  int n_tokens;
  const int32_t *blocks;
  int n_blocks;
  cf_kvmap_t *kv;
  cf_ready_t *ready;     /* may be NULL */
  int ready_slot;
  int policy;            /* cf_policy_t */
  uint64_t req_id;
  atomic_int cancel;     /* set from any thread: the job ends with CF_ECANCELED */
  void (*on_plan)(cf_batch_job_t *j, const cf_batch_plan_info_t *p);
  void (*on_layer)(cf_batch_job_t *j, int layers_ready);
  /* Always called exactly once; after it this module never touches the job again. */
  void (*on_done)(cf_batch_job_t *j, int err, const cf_batch_result_t *res);
  void *user;
  /* private */
  cf_batch_job_t *next_;
};

typedef struct {
  cf_backend_t *be;       /* borrowed */
  cf_store_t *store;      /* borrowed */
  int n_loaders;          /* loader threads (>= 1) */
  int batch_max;          /* jobs per scheduling round (>= 1) */
  double cpu_Bps, ssd_Bps;/* read-rate limits, 0 = unlimited */
  int profile_reps;       /* forward calls per profiled point (0: 3) */
} cf_batch_opts_t;

typedef struct cf_batch_s cf_batch_t;

/* Profile the backend, start the thread. Returns 0 or CF_E* (profiling, threads). */
int cf_batch_start(cf_batch_t **out, const cf_batch_opts_t *o);
/* Queue jobs (any thread). After cf_batch_stop began, jobs end at once with CF_ESHUTDOWN. */
void cf_batch_submit(cf_batch_t *b, cf_batch_job_t **jobs, int n);
/* Cancel every queued and running job and wait until the thread is idle: when this returns,
 * every submitted job has had on_done. Later submissions end with CF_ESHUTDOWN. */
void cf_batch_quiesce(cf_batch_t *b);
/* quiesce, join the thread, free. NULL is a no-op. */
void cf_batch_stop(cf_batch_t *b);
/* The cost model in use (profiled compute, configured/measured link). */
const cf_sched_cost_t *cf_batch_cost(const cf_batch_t *b);
/* Change the read-rate limits (SIGHUP). */
void cf_batch_set_rates(cf_batch_t *b, double cpu_Bps, double ssd_Bps);

#endif
