/* cf_executor — cacheflowd's executor thread: queued restores -> lookup -> plan -> pins -> lib/exec.
 *
 * The batcher (cf_batcher) collects restores on the loop thread; cf_dataplane turns each into a
 * job (its tokens, blocks, engine buffers, readiness slot) and submits it here. This thread
 * takes every queued job (up to batch_max) as one round, so that a restore arriving while a
 * round runs joins the next round's plan, and:
 *   1. looks each job's prefix up in the store (o.lookup) and plans the whole round once
 *      (cf_planner: one lib/sched plan per policy, the PlanSummary numbers); each job's plan
 *      (job.plan) is what the rest of the round and the engine's PlanSummary use (on_plan);
 *   2. pins the job's stored chunks (cf_cellsrc_store_prepare_each): CPU-tier chunks are read zero-copy
 *      from their pinned slots, SSD chunks through verified reads; a chunk that left the store
 *      since the lookup is recomputed (h = L), so a plan never points at missing data;
 *   3. executes the whole round in one lib/exec run (this thread computes, loader threads copy),
 *      reporting layers as they become ready (readiness counter + on_layer) and the final stats,
 *      which also feed the planner's online re-fit (cf_refit).
 * Planning here keeps the libuv loop free while a large batch is planned. An executor started
 * without a planner runs each job's plan as the submitter gave it (tests).
 * Callbacks run on this thread or (on_layer) on an executor thread with its lock held: they must
 * be quick. No gRPC, protobuf, libuv or daemon-config types here.
 */
#ifndef CF_EXECUTOR_H
#define CF_EXECUTOR_H

#include <stdatomic.h>
#include <stdint.h>

#include "cf_planner.h"
#include "cf_trace.h"
#include "exec/cf_exec.h"
#include "exec/cf_exec_gpu.h"
#include "model/cf_backend.h"
#include "store/cf_store.h"

typedef struct {
  cf_exec_stats_t stats;
  double time_s;            /* start of execution to last layer */
} cf_executor_result_t;

typedef struct cf_executor_job_s cf_executor_job_t;
struct cf_executor_job_s {
  /* set by the submitter; read-only here until on_done */
  const int32_t *tokens;
  int n_tokens;
  const int32_t *blocks;
  int n_blocks;
  int present_tokens;       /* the engine holds [0, present_tokens) already: only the rest is written */
  cf_kvmap_t *kv;           /* a shared-memory engine (the CPU executor), or */
  const cf_gpu_kv_t *gkv;   /* a CUDA IPC engine (the GPU executor: cf_executor_opts_t.gpu) */
  cf_ready_t *ready;        /* may be NULL */
  cf_gpu_ready_t *gready;   /* NULL or ready's GPU view (GPU jobs: gates in stream order) */
  int ready_slot;
  int policy;               /* cf_policy_t the round's planner plans it with */
  uint64_t req_id;
  atomic_int cancel;        /* set from any thread: the job ends with CF_ECANCELED */
  /* The job's plan: filled by the round's planning step (an executor with a planner; the
   * submitter frees it with cf_restore_plan_free after on_done), else given by the submitter
   * (h at least). plan.h is raised here to L for chunks the store no longer holds. */
  cf_restore_plan_t plan;
  /* Called once the round is planned, before the job executes (may be NULL). */
  void (*on_plan)(cf_executor_job_t *j);
  void (*on_layer)(cf_executor_job_t *j, int layers_ready);
  /* Always called exactly once; after it this module never touches the job again. */
  void (*on_done)(cf_executor_job_t *j, int err, const cf_executor_result_t *res);
  void *user;
  /* private */
  cf_executor_job_t *next_;
};

typedef struct {
  cf_backend_t *be;         /* borrowed */
  cf_store_t *store;        /* borrowed */
  int n_loaders;            /* loader threads (>= 1) */
  int batch_max;            /* jobs per round (>= 1) */
  double cpu_Bps, ssd_Bps, remote_Bps; /* read-rate limits, 0 = unlimited */
  cf_exec_gpu_t *gpu;       /* NULL, or the GPU data path for jobs with gkv (borrowed) */
  struct cf_mempool_s *host_pool; /* NULL (unbounded) or the CPU data path's memory budget (borrowed) */
  cf_planner_t *planner;    /* NULL (jobs come planned), or the planner of each round (borrowed) */
  /* The store lookup of a job's prefix (with a planner; NULL: nothing cached), by its chunk keys
   * (keys[0..n_keys), n_keys = ceil(n_tokens / C), the last partial when C does not divide
   * n_tokens: hashed once per restore by the executor, which pins by the same keys): leading tokens
   * stored into *cached_tokens, every chunk's CF_STORE_TIER_* into chunk_tiers
   * ([ceil(n_tokens / C)]; CF_STORE_TIER_NONE where no tier holds it: chunks past a hole count
   * too, and the round plans up to the last stored chunk, the holes computed). 0 or CF_E* (the
   * job is then planned as uncached). Thread-safe. */
  int (*lookup)(void *ctx, cf_executor_job_t *j, const cf_store_key_t *keys, size_t n_keys, int64_t *cached_tokens,
                uint8_t *chunk_tiers);
  void *lookup_ctx;
  cf_trace_t *trace;        /* NULL, or where executed restores leave their trace (borrowed) */
} cf_executor_opts_t;

typedef struct cf_executor_s cf_executor_t;

/* Start the thread. Returns 0 or CF_E* (a store that records no KV dtype: CF_EDTYPE; threads). */
int cf_executor_start(cf_executor_t **out, const cf_executor_opts_t *o);
/* Queue jobs (any thread). After cf_executor_quiesce, jobs end at once with CF_ESHUTDOWN. */
void cf_executor_submit(cf_executor_t *x, cf_executor_job_t **jobs, int n);
/* Cancel every queued and running job and wait until the thread is idle: when this returns,
 * every submitted job has had on_done. */
void cf_executor_quiesce(cf_executor_t *x);
/* Point the backend at model m (the same config: an engine's borrowed weights, or the daemon's
 * own copy back) on the executor thread, between rounds, so no restore computes on two models.
 * Returns once the executor applied it (after the round running now). Not from the executor
 * thread itself. */
void cf_executor_set_model(cf_executor_t *x, const cf_model_t *m);
/* Run fn(arg) on the executor thread between rounds (no restore computing) and return after it
 * ran: what set_model does, for swaps a backend makes itself (cf_backend_cuda_borrow). */
void cf_executor_between_rounds(cf_executor_t *x, void (*fn)(void *arg), void *arg);
/* quiesce, join the thread, free. NULL is a no-op. */
void cf_executor_stop(cf_executor_t *x);
/* Change the read-rate limits (SIGHUP). */
void cf_executor_set_rates(cf_executor_t *x, double cpu_Bps, double ssd_Bps, double remote_Bps);
/* Compute steps deferred for memory so far (cf_exec_stats_t.mem_waits summed; thread-safe). */
uint64_t cf_executor_mem_waits(cf_executor_t *x);

#endif
