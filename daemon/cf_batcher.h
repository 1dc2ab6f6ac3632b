/* cf_batcher — the Restore batcher and the life of each restore on the loop thread.
 *
 * cf_service hands every validated Restore here (cf_batcher_add). The batcher collects them for
 * `batch_window_us` or until `batch_max` are waiting, orders the batch by priority (highest
 * first, stable) and hands it to the data path (cf_dataplane's restore_batch: lookup, planning
 * and execution happen on the executor thread). Each restore then streams its events
 * (cf_restore_event: PlanSummary, LayersReady) and ends exactly once (cf_restore_done), which
 * drops it from the in-flight set. Unregister cancels an engine's restores
 * (cf_batcher_cancel_engine); shutdown ends all of them (cf_batcher_abort_all).
 * Without a data path (no model configured) restores end FAILED_PRECONDITION.
 *
 * Everything runs on the libuv loop thread; the counters are atomics (read by any thread).
 */
#ifndef CF_BATCHER_H
#define CF_BATCHER_H

#include <stdint.h>
#include <uv.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_config.h"
#include "cf_rpc.h"

struct cf_engine_s;
struct cf_dataplane_job_s;
typedef struct cf_batcher_s cf_batcher_t;

/* One validated Restore, owned by the batcher until cf_restore_done. */
typedef struct cf_restore_s {
  cf_rpc_call_t *call;
  struct cf_engine_s *engine; /* one reference held (released through the batcher's `release`) */
  Cacheflow__V1__RestoreRequest *req;
  int policy;                 /* cf_policy_t, the request's or the configured default */
  uint64_t arrival_ns;
  struct cf_dataplane_job_s *job; /* the data path's state of this restore (cf_dataplane), NULL before */
  struct cf_restore_s *next;
  cf_batcher_t *batcher;
} cf_restore_t;

/* The data path the batcher hands batches to. Each hook may be NULL (no model configured). */
typedef struct {
  void *ctx;
  /* Take a batch: each restore must end with cf_restore_done (later, on the loop thread). */
  void (*restore_batch)(void *ctx, cf_restore_t **batch, int n);
  /* Cancel a restore whose engine went away or at shutdown; it still ends with cf_restore_done. */
  void (*restore_cancel)(void *ctx, cf_restore_t *r);
} cf_batcher_path_t;

/* `cfg` is read live. `release(arg, r)` drops r's engine reference when r is freed. */
int cf_batcher_init(cf_batcher_t **out, uv_loop_t *loop, const cf_config_t *cfg, const cf_batcher_path_t *path,
                    void (*release)(void *arg, cf_restore_t *r), void *release_arg);
/* Queue a restore (its call, engine reference, req, policy set); dispatches when the batch is
 * full or the window is 0, else arms the window's timer. */
void cf_batcher_add(cf_batcher_t *b, cf_restore_t *r);
/* Unregister: waiting restores of engine e end ABORTED now; running ones are cancelled in the
 * data path, which then ends them. */
void cf_batcher_cancel_engine(cf_batcher_t *b, const struct cf_engine_s *e, uint64_t engine_id);
/* End every restore: waiting ones UNAVAILABLE (`why`), running ones cancelled (the data path
 * must end them synchronously at shutdown), else UNAVAILABLE. */
void cf_batcher_abort_all(cf_batcher_t *b, const char *why);
/* Abort all, then free (the timer closes on the loop). */
void cf_batcher_close(cf_batcher_t *b);

/* Stream one event of a restore / end it (status CF_RPC_*; `stats` NULL unless OK). */
void cf_restore_event(cf_restore_t *r, const Cacheflow__V1__RestoreEvent *ev);
void cf_restore_done(cf_restore_t *r, int status, const Cacheflow__V1__RestoreStats *stats, const char *detail);

typedef struct {
  uint32_t in_flight;         /* accepted and not yet ended (waiting or running) */
  uint64_t restores_total, restores_batched_total, batches_total;
} cf_batcher_stats_t;
/* Safe from any thread (atomics). */
void cf_batcher_stats(const cf_batcher_t *b, cf_batcher_stats_t *out);

#endif
