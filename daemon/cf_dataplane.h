/* cf_dataplane — the loop-thread side of restoring: between the batcher and the executor thread.
 *
 * cf_storage provides the engine mappings, Lookup, Save and Evict; this module wraps its hooks
 * and adds what executing restores needs:
 *   - per engine, where the executor writes its KV (cf_storage's views) and a readiness-counter
 *     file (/dev/shm/cacheflowd-<pid>-ready-<engine id>, returned by RegisterEngine);
 *   - restore_batch: each restore of a batch becomes an executor job (its tokens, blocks, engine
 *     buffers, a readiness slot reset now), submitted to cf_executor, which looks it up, plans
 *     the round (cf_planner) and runs it off the loop;
 *   - restore_cancel: Unregister or a departed client cancels the job; it ends ABORTED / CANCELLED.
 * What the executor reports — the plan (sent as the restore's PlanSummary), layers ready, the
 * end — comes back through one FIFO event queue and a uv_async, so every cf_restore_event /
 * cf_restore_done call happens on the loop thread, in order.
 *
 * Lifetimes: an engine's mapping lives until the service drops its last reference, which happens
 * only after every restore holding the engine ended — and a restore ends only after its executor
 * run returned. So Unregister during a Restore never pulls memory from under the executor.
 */
#ifndef CF_DATAPLANE_H
#define CF_DATAPLANE_H

#include <uv.h>

#include "cf_config.h"
#include "cf_planner.h"
#include "cf_service.h"
#include "exec/cf_exec_gpu.h"
#include "model/cf_backend.h"
#include "store/cf_store.h"

typedef struct cf_dataplane_s cf_dataplane_t;

/* Start the executor thread on backend `be` and `store`, planning with `planner` (all borrowed;
 * they must outlive cf_dataplane_close) and wrap the hooks in *hooks (cf_storage's):
 * engine_added/removed are chained, restore_batch/restore_cancel are ours. `cfg` is read live
 * (reload). `gpu`: NULL (gpu_executor = off), or the GPU executor: restores of CUDA IPC engines
 * run on it (lib/exec's scheduler with cf_exec_gpu_ops) and their readiness files get
 * GPU-written gates (cf_gpu_ready); borrowed, it must outlive cf_dataplane_close.
 * Returns 0 or CF_E*. */
int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                      cf_store_t *store, cf_planner_t *planner, cf_service_backend_t *hooks, cf_exec_gpu_t *gpu,
                      cf_model_t *own);
/* `own` (may be NULL): the daemon's model, whose weights OfferWeights may replace with an
 * engine's (cf_weights; its hooks go into *hooks too); borrowed, it must outlive the close. */
/* SIGHUP: apply reloadable settings (read-rate limits). NULL ok. */
void cf_dataplane_reload(cf_dataplane_t *dp);
/* Shutdown step 1 (loop thread, before cf_service_abort_all): cancel every restore, wait for the
 * executor thread, deliver every queued event, so the service has no running restore left. */
void cf_dataplane_quiesce(cf_dataplane_t *dp);
/* Shutdown step 2 (after cf_service_close): stop the thread, free. NULL ok. */
void cf_dataplane_close(cf_dataplane_t *dp);

#endif
