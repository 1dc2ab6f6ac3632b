/* cf_batch — cacheflowd's executor thread: planned restores -> pins -> lib/exec.
 *
 * The service batches restores (batch_window_us / batch_max), looks them up and plans each
 * policy group with lib/sched on the loop thread (cf_planner); cf_dataplane then submits each
 * planned restore here as a job carrying its staircase. This thread takes every queued job (up
 * to batch_max) as one round and:
 *   1. restores of one policy that the service planned in different batches (they arrived in
 *      different windows, e.g. while the previous round ran) but that run in this round together
 *      are planned again as one batch (lib/sched, same policy and cost): the executor shares one
 *      compute worker and one link between them, so their plans must assume it;
 *   2. pins the job's stored chunks (cf_cellsrc_store_prepare): CPU-tier chunks are read zero-copy
 *      from their pinned slots, SSD chunks through verified reads; a chunk that left the store
 *      since the lookup is recomputed (h = L), so a plan never points at missing data;
 *   3. executes the whole round in one lib/exec run (this thread computes, loader threads copy),
 *      reporting layers as they become ready (readiness counter + on_layer) and the final stats.
 * Callbacks run on this thread or (on_layer) on an executor thread with its lock held: they must
 * be quick. No gRPC, protobuf, libuv or daemon-config types here.
 */
#ifndef CF_BATCH_H
#define CF_BATCH_H

#include <stdatomic.h>
#include <stdint.h>

#include "cf_refit.h"
#include "exec/cf_exec.h"
#include "exec/cf_exec_gpu.h"
#include "sched/cf_cost.h"
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
  cf_kvmap_t *kv;           /* a shared-memory engine (the CPU executor), or */
  const cf_gpu_kv_t *gkv;   /* a CUDA IPC engine (the GPU executor: cf_batch_opts_t.gpu) */
  cf_ready_t *ready;        /* may be NULL */
  cf_gpu_ready_t *gready;   /* NULL or ready's GPU view (GPU jobs: gates in stream order) */
  int ready_slot;
  int *h;                   /* [ceil(n_tokens / C)] the plan's staircase (chunks past the plan: L);
                               adjusted here to what the store still holds */
  uint32_t *load_rank;      /* NULL or [n_chunks * L]: the plan's link order of each cell */
  cf_exec_cop_t *cops;      /* NULL or [n_cops]: the plan's compute ops, stream order (cf_exec.h) */
  int n_cops;
  /* How it was planned, so that a round joining restores planned apart is planned again as one
   * batch (see cf_batch_start): h, load_rank and cops are then replaced (malloc'ed: the
   * submitter frees them with free() after on_done, as it does its own) and predicted_s set. */
  const void *plan_group;   /* NULL (not planned: executed as given) or the plan it came from */
  int policy;               /* cf_policy_t */
  int64_t cached_tokens;    /* the planned prefix (chunks past it are computed: h = L) */
  cf_sched_cost_t cost;     /* the cost model it was planned with */
  const uint8_t *chunk_tier; /* NULL or the planned chunks' tiers (cf_sched_req_t.chunk_tier;
                                owned by plan_group, which outlives the job) */
  cf_refit_t *refit;        /* NULL, or fed this job's executed timings when it succeeds */
  double predicted_s;       /* the plan's predicted restore time (updated by a re-plan) */
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
  cf_exec_gpu_t *gpu;       /* NULL, or the GPU data path for jobs with gkv (borrowed) */
} cf_batch_opts_t;

typedef struct cf_batch_s cf_batch_t;

/* Start the thread. Returns 0 or CF_E* (a store that records no KV dtype: CF_EDTYPE; threads). */
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
