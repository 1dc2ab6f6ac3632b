/* cf_dataplane — the data path behind cf_service's hooks: the model on its backend, the KV
 * store, the scheduler thread (cf_batch) and the engines' shared-memory buffers and readiness
 * counters (lib/ipc).
 *
 * Hooks run on the loop thread. Restore progress comes back from the scheduler and executor
 * threads through one FIFO event queue and a uv_async, so every cf_service_restore_event/done
 * call happens on the loop thread, in the order the events were produced.
 *
 * Lifetimes: an engine's mapping lives until the service drops its last reference
 * (engine_removed), which happens only after every restore holding the engine ended — and a
 * restore ends only after its executor run returned. So Unregister during a Restore cancels the
 * restore (it ends ABORTED, naming the unregistration) and never pulls memory from under it.
 */
#ifndef CF_DATAPLANE_H
#define CF_DATAPLANE_H

#include <uv.h>

#include "cf_config.h"
#include "cf_service.h"

typedef struct cf_dataplane_s cf_dataplane_t;

/* Load the model named by cfg->model onto its backend, open the store in cfg->store_dir, profile
 * the backend and start the scheduler thread. `cfg` is read live (reload). Returns 0 or CF_E*
 * with a detail (model, store, profiling). */
int cf_dataplane_open(cf_dataplane_t **out, uv_loop_t *loop, const cf_config_t *cfg);
/* The hooks to pass to cf_service_init. */
const cf_service_backend_t *cf_dataplane_backend(cf_dataplane_t *dp);
/* SIGHUP: apply reloadable settings (read-rate limits). */
void cf_dataplane_reload(cf_dataplane_t *dp);
/* Shutdown step 1 (loop thread, before cf_service_abort_all): cancel every restore, wait for the
 * scheduler thread to finish, and deliver every queued event, so the service has no running
 * restore left. */
void cf_dataplane_quiesce(cf_dataplane_t *dp);
/* Shutdown step 2 (after cf_service_close): stop the thread, close store and model. NULL ok. */
void cf_dataplane_close(cf_dataplane_t *dp);

#endif
