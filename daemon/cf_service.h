/* cf_service — what each RPC does once cf_rpc has unpacked and field-checked it; and the
 * seam the data path plugs into.
 *
 * The service owns the engine table (RegisterEngine / Unregister), the checks of Lookup, Save
 * and Restore that need daemon state, health (grpc.health.v1 Check and Watch) and the Admin
 * service. A valid Restore goes to the batcher (cf_batcher). Data-path work — store lookup,
 * save, executing restores, evicting — goes through cf_service_backend_t (cf_storage's and
 * cf_dataplane's hooks): the daemon builds them only when a model is configured, and without
 * them each RPC answers FAILED_PRECONDITION saying so.
 *
 * Handlers run on the libuv loop thread and never wait on the store: Save's copy runs on the
 * service's save worker and the call is answered when it is done.
 */
#ifndef CF_SERVICE_H
#define CF_SERVICE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_batcher.h"
#include "cf_config.h"
#include "ipc/cf_kvmap.h"
#include "cf_model_info.h"
#include "cf_planner.h"
#include "cf_rpc.h"
#include "cf_weights.h"

/* One layer's K or V buffer as the engine declared it (validated at registration). */
typedef struct {
  char *shm_path;           /* NULL for CUDA IPC */
  uint8_t ipc_handle[64];   /* CUDA IPC (when shm_path is NULL) */
  char gpu_uuid[64];
  uint64_t offset;
} cf_kvbuf_t;

typedef struct {
  cf_kvbuf_t k, v;
  uint64_t block_stride, token_stride, head_stride; /* K's (and V's unless vs is set), bytes */
  uint64_t dim_stride;      /* 0 = the element size */
  cf_kv_strides_t vs;       /* V's own strides (LayerLayout.v_strides); all zero = K's */
} cf_layer_layout_t;

/* A registered engine. Shared by reference: restores in flight hold one, so an Unregister
 * that races a restore never frees what the executor is using. */
typedef struct cf_engine_s {
  uint64_t id;
  char name[129];
  int refs;
  int gone;                 /* unregistered: restores still holding it are aborted */
  int pid;                  /* its process (RegisterEngineRequest.pid, unix socket), 0 = not watched */
  struct cf_pidwatch_s *watch; /* unregisters it when that process exits; NULL when not watched */
  int n_layers;
  uint32_t block_size, num_blocks;
  int head0, n_heads;       /* model KV heads [head0, head0 + n_heads) in its buffers (a TP shard: fewer) */
  uint64_t tp_group;        /* nonzero: the shards sharing it are one engine (their saves assemble) */
  int dtype;                /* Cacheflow__V1__DType */
  size_t dtype_size;
  cf_layer_layout_t *layers;
  struct cf_engine_map_s *map; /* cf_storage's mappings of its buffers (engine_added), NULL without */
  /* filled by engine_added (cf_dataplane): where the engine finds its readiness counters */
  char readiness_path[256];
  uint32_t readiness_slots;
} cf_engine_t;

/* Memory budgets (host_memory_bytes, gpu_memory_bytes; budget 0 = unbounded) and their use. */
typedef struct cf_service_memory_s {
  uint64_t host_budget, host_used, host_peak, host_refusals, mem_waits;
  uint64_t gpu_budget, gpu_used, gpu_peak;
  cf_weights_stats_t weights;   /* borrowed weights (OfferWeights) and the own copy's bytes */
} cf_service_memory_t;

/* The data path. Every hook may be NULL (no model configured). Hooks are called on the loop
 * thread, except `lookup` (also from the executor thread) and `save` (on the save worker):
 * those two must be thread-safe. Restores are handed on through restore_batch (cf_batcher_path_t);
 * their progress comes back on the loop (cf_restore_event / cf_restore_done). */
typedef struct {
  void *ctx;
  /* The KV dtype the store holds, as the proto's DType (0: none, nothing checked). RegisterEngine
   * of buffers in another dtype gets FAILED_PRECONDITION naming both, before engine_added. */
  int kv_dtype;
  /* The store has an SSD tier: Save(durable) can be honoured (else FAILED_PRECONDITION). */
  int has_ssd;
  /* Map the engine's buffers; 0 or CF_E* (the registration is refused with its detail). */
  int (*engine_added)(void *ctx, cf_engine_t *e);
  void (*engine_removed)(void *ctx, cf_engine_t *e);
  /* Longest stored prefix in tokens, split by tier: tier_tokens[CACHEFLOW__V1__TIER__TIER_CPU]
   * [..._SSD] and [..._REMOTE] (index 0 unused; REMOTE blocks on the network up to
   * remote_timeout_ms when the local tiers miss chunks); chunk_tiers (may be NULL; ceil(n / chunk)
   * entries) gets the tier of EVERY chunk, past the leading run too (CF_STORE_TIER_NONE = 0 where
   * none holds it: a hole). The tier numbers are the proto's Tier. 0 or CF_E*. */
  int (*lookup)(void *ctx, cf_engine_t *e, const uint32_t *tokens, size_t n, uint32_t tier_tokens[4],
                uint8_t *chunk_tiers);
  /* Copy the blocks into the CPU tier (on the save worker: it may wait for SSD writes). 0 or
   * CF_E*; *saved_tokens, *durable and *pending_tokens (a TP shard's tokens waiting for its group's
   * other heads) filled; req->durable: through to SSD. The engine stays referenced meanwhile. */
  int (*save)(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved_tokens, int *durable,
              uint32_t *pending_tokens);
  /* Look up, plan and run a batch; each restore must end with cf_restore_done. */
  void (*restore_batch)(void *ctx, cf_restore_t **batch, int n);
  /* Cancel a restore whose engine went away or whose client left; it still ends with done. */
  void (*restore_cancel)(void *ctx, cf_restore_t *r);
  int (*evict)(void *ctx, int tier, uint64_t bytes, uint64_t *bytes_evicted, uint64_t *chunks_evicted);
  void (*usage)(void *ctx, uint64_t *cpu_bytes, uint64_t *ssd_bytes);
  /* Admin.Flush: every chunk saved so far through to SSD, fsynced. 0 or CF_E*; *ssd_chunks after. */
  int (*flush)(void *ctx, uint64_t *ssd_chunks);
  /* The remote tier (NULL: none), read by Stats for its health and counters (lock-only calls). */
  struct cf_remote_s *remote;
  /* The memory budgets and their use (NULL: none reported). Any thread. */
  void (*memory)(void *ctx, struct cf_service_memory_s *out);
  /* Executed restores' traces (NULL: trace_restores = 0), read by Admin.Trace (lock-only calls). */
  struct cf_trace_s *trace;
  /* Borrowed weights (NULL: OfferWeights gets FAILED_PRECONDITION). Both run on the service's
   * weights worker thread, one at a time (cf_weights_borrow / cf_weights_give_back). */
  int (*weights_borrow)(void *ctx, const Cacheflow__V1__OfferWeightsRequest *r, cf_weights_report_t *rep);
  int (*weights_give_back)(void *ctx);
} cf_service_backend_t;

typedef struct cf_service_s cf_service_t;

/* `cfg` stays owned by the caller and is read live (SIGHUP reload takes effect at once).
 * `model` may be NULL (no model configured: RegisterEngine fails with FAILED_PRECONDITION).
 * `backend` may be NULL (every hook missing). `planner` (borrowed): whose re-fit GetStats
 * reports. Returns 0 or CF_ENOMEM. */
int cf_service_init(cf_service_t **out, uv_loop_t *loop, const cf_config_t *cfg,
                    const cf_model_info_t *model, const cf_service_backend_t *backend, cf_planner_t *planner);
/* The method table to give cf_rpc_start (user = the service). */
const cf_rpc_method_t *cf_service_methods(int *n);
void cf_service_set_rpc(cf_service_t *s, cf_rpc_server_t *rpc);
/* Drain: health turns NOT_SERVING (Watch streams are told). */
void cf_service_drain(cf_service_t *s);
/* Restores accepted and not yet ended (batched or executing). */
int cf_service_restores_in_flight(const cf_service_t *s);
/* End every open call of the service: Saves being copied finish (waited for) and are answered,
 * restores get UNAVAILABLE (drain timeout), Watch streams end OK. Call before cf_rpc_shutdown. */
void cf_service_abort_all(cf_service_t *s, const char *why);
void cf_service_close(cf_service_t *s);

typedef struct {
  uint32_t engines, restores_in_flight;
  uint64_t engines_died;    /* unregistered because their process exited (no Unregister) */
  uint64_t restores_total, restores_batched_total, batches_total;
  uint64_t cpu_bytes, ssd_bytes;
  int draining;
  cf_service_memory_t mem;
} cf_service_stats_t;
/* Safe from any thread (atomics). */
void cf_service_stats(const cf_service_t *s, cf_service_stats_t *out);

/* The counters that GetStats and /metrics both report, from one table (so their names agree).
 * Prometheus spells a sample family{label} (HELP and TYPE once per family, on its first
 * sample); GetStats spells it flat: the family without a trailing "_total", then "_" and the
 * label's value (cacheflow_load_refit_samples_total{tier="ssd"} -> cacheflow_load_refit_samples_ssd);
 * an unlabelled sample keeps the family's name. */
typedef struct {
  const char *family, *type, *help; /* type: "counter" or "gauge" */
  const char *label_key, *label_value; /* NULL, NULL: unlabelled */
  double value;
} cf_service_metric_t;
#define CF_SERVICE_METRICS_MAX 64
/* Fill out[0..n) with their values now and return n. Safe from any thread. */
int cf_service_metrics(cf_service_t *s, cf_service_metric_t *out);
/* The GetStats name of m into buf. */
const char *cf_service_metric_flat_name(const cf_service_metric_t *m, char *buf, size_t cap);

#endif
