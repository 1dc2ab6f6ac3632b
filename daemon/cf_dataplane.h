/* cf_dataplane — the restore executor behind cf_service's hooks.
 *
 * cf_storage provides the engine mappings, Lookup, Save and Evict; cf_planner (called by the
 * service's batcher) plans each restore. This module adds what executing a plan needs:
 *   - per engine, a view of its mapped buffers for lib/exec and a readiness-counter file
 *     (/dev/shm/cacheflowd-<pid>-ready-<engine id>, returned by RegisterEngine);
 *   - restore_slot: the counter slot of a restore, reset before its PlanSummary goes out;
 *   - restore_batch: copies each planned restore's tokens, blocks and staircase into a job for
 *     the executor thread (cf_batch); a restore the planner could not plan gets a plan of its own
 *     (load what is cached, compute the rest) and its PlanSummary from here;
 *   - restore_cancel: Unregister or a departed client cancels the job; it ends ABORTED / CANCELLED.
 * Progress comes back from the executor threads through one FIFO event queue and a uv_async, so
 * every cf_service_restore_event/done call happens on the loop thread, in order.
 *
 * Lifetimes: an engine's mapping lives until the service drops its last reference, which happens
 * only after every restore holding the engine ended — and a restore ends only after its executor
 * run returned. So Unregister during a Restore never pulls memory from under the executor.
 */
#ifndef CF_DATAPLANE_H
#define CF_DATAPLANE_H

#include <uv.h>

#include "cf_config.h"
#include "cf_service.h"
#include "exec/cf_exec_gpu.h"
#include "model/cf_backend.h"
#include "store/cf_store.h"

typedef struct cf_dataplane_s cf_dataplane_t;

/* Start the executor thread on backend `be` and `store` (both borrowed; they must outlive
 * cf_dataplane_close) and wrap the hooks in *hooks (cf_storage's): engine_added/removed are
 * chained, restore_batch/restore_cancel/restore_slot are ours. `cfg` is read live (reload).
 * Returns 0 or CF_E*. */
int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                      cf_store_t *store, cf_service_backend_t *hooks);
/* The same with the GPU executor (gpu_executor = on; NULL = off, as above): restores of CUDA IPC
 * engines run on it (lib/exec's scheduler with cf_exec_gpu_ops) and their readiness files get
 * GPU-written gates (cf_gpu_ready). `gpu` is borrowed and must outlive cf_dataplane_close. */
int cf_dataplane_open_gpu(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg, cf_backend_t *be,
                          cf_store_t *store, cf_service_backend_t *hooks, cf_exec_gpu_t *gpu);
/* SIGHUP: apply reloadable settings (read-rate limits). NULL ok. */
void cf_dataplane_reload(cf_dataplane_t *dp);
/* Shutdown step 1 (loop thread, before cf_service_abort_all): cancel every restore, wait for the
 * executor thread, deliver every queued event, so the service has no running restore left. */
void cf_dataplane_quiesce(cf_dataplane_t *dp);
/* Shutdown step 2 (after cf_service_close): stop the thread, free. NULL ok. */
void cf_dataplane_close(cf_dataplane_t *dp);

#endif
