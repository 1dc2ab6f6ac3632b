/* cf_batcher — see cf_batcher.h. */
#include "cf_batcher.h"

#include <stdlib.h>

struct cf_batcher_s {
  const cf_config_t *cfg;
  cf_batcher_path_t path;
  void (*release)(void *arg, cf_restore_t *r);
  void *release_arg;
  cf_restore_t *waiting_head, *waiting_tail; /* collected for the next batch */
  int n_waiting;
  uv_timer_t window;                /* the batch window (batch_window_us) */
  int window_armed;
  cf_restore_t *running;            /* handed to the data path, not yet done (singly linked) */
  /* counters read by other threads */
  uint32_t in_flight;
  uint64_t restores_total, batches_total, batched_total;
};

static void cf__restore_free(cf_restore_t *r) {
  cf_batcher_t *b = r->batcher;
  protobuf_c_message_free_unpacked(&r->req->base, NULL);
  b->release(b->release_arg, r);
  free(r);
}

void cf_restore_event(cf_restore_t *r, const Cacheflow__V1__RestoreEvent *ev) { cf_rpc_send(r->call, &ev->base); }

void cf_restore_done(cf_restore_t *r, int status, const Cacheflow__V1__RestoreStats *stats, const char *detail) {
  cf_batcher_t *b = r->batcher;
  for (cf_restore_t **p = &b->running; *p; p = &(*p)->next)
    if (*p == r) { *p = r->next; break; }
  if (status == CF_RPC_OK && stats) {
    Cacheflow__V1__RestoreEvent ev = CACHEFLOW__V1__RESTORE_EVENT__INIT;
    ev.event_case = CACHEFLOW__V1__RESTORE_EVENT__EVENT_DONE;
    ev.done = (Cacheflow__V1__RestoreStats *)stats;
    cf_rpc_send(r->call, &ev.base);
  }
  cf_rpc_finish(r->call, status, "%s", detail ? detail : "");
  __atomic_fetch_sub(&b->in_flight, 1, __ATOMIC_RELAXED);
  cf__restore_free(r);
}

/* Hand the collected restores over, highest priority first (the data path looks them up,
 * plans and runs them off the loop), or refuse them when there is no data path. */
static void cf__dispatch(cf_batcher_t *b) {
  if (b->window_armed) { uv_timer_stop(&b->window); b->window_armed = 0; }
  int n = b->n_waiting;
  if (!n) return;
  cf_restore_t **batch = malloc(n * sizeof *batch);
  if (!batch) return; /* retried at the next arrival or timer */
  int i = 0;
  for (cf_restore_t *r = b->waiting_head; r; r = r->next) batch[i++] = r;
  b->waiting_head = b->waiting_tail = NULL;
  b->n_waiting = 0;
  for (int a = 1; a < n; a++) /* insertion sort: stable, batches are small */
    for (int k = a; k > 0 && batch[k]->req->priority > batch[k - 1]->req->priority; k--) {
      cf_restore_t *t = batch[k]; batch[k] = batch[k - 1]; batch[k - 1] = t;
    }
  __atomic_fetch_add(&b->batches_total, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&b->batched_total, (uint64_t)n, __ATOMIC_RELAXED);
  for (int k = 0; k < n; k++) {
    batch[k]->next = b->running;
    b->running = batch[k];
  }
  if (b->path.restore_batch) {
    b->path.restore_batch(b->path.ctx, batch, n);
  } else { /* the daemon builds its data path only with a model */
    for (int k = 0; k < n; k++)
      cf_restore_done(batch[k], CF_RPC_FAILED_PRECONDITION, NULL,
                      "Restore needs a model and its KV store: this cacheflowd runs without a model "
                      "(set `model` or start it with --model DIR)");
  }
  free(batch);
}

static void cf__on_window(uv_timer_t *t) {
  cf_batcher_t *b = t->data;
  b->window_armed = 0;
  cf__dispatch(b);
}

/* The client went away (cancelled, or its process died) before the restore ended: a restore
 * still waiting ends now; a running one is cancelled in the data path, which ends it. Without
 * this a cut restore ran to its end, still writing into blocks its engine may already have
 * given to another sequence, and held its readiness slot all the while. */
static void cf__restore_closed(cf_rpc_call_t *c, void *arg) {
  cf_restore_t *r = arg, *prev = NULL;
  cf_batcher_t *b = r->batcher;
  (void)c;
  for (cf_restore_t *w = b->waiting_head; w; prev = w, w = w->next) {
    if (w != r) continue;
    if (prev) prev->next = r->next; else b->waiting_head = r->next;
    if (b->waiting_tail == r) b->waiting_tail = prev;
    b->n_waiting--;
    cf_rpc_finish(r->call, CF_RPC_CANCELLED, "the client closed the restore before it ran");
    __atomic_fetch_sub(&b->in_flight, 1, __ATOMIC_RELAXED);
    cf__restore_free(r);
    return;
  }
  if (b->path.restore_cancel) b->path.restore_cancel(b->path.ctx, r);
}

void cf_batcher_add(cf_batcher_t *b, cf_restore_t *r) {
  r->batcher = b;
  r->next = NULL;
  cf_rpc_on_close(r->call, cf__restore_closed, r);
  __atomic_fetch_add(&b->in_flight, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&b->restores_total, 1, __ATOMIC_RELAXED);
  if (b->waiting_tail) b->waiting_tail->next = r;
  else b->waiting_head = r;
  b->waiting_tail = r;
  b->n_waiting++;
  if (b->n_waiting >= b->cfg->batch_max || b->cfg->batch_window_us == 0) cf__dispatch(b);
  else if (!b->window_armed) {
    uint64_t ms = (uint64_t)(b->cfg->batch_window_us + 999) / 1000; /* libuv timers tick in ms */
    uv_timer_start(&b->window, cf__on_window, ms, 0);
    b->window_armed = 1;
  }
}

void cf_batcher_cancel_engine(cf_batcher_t *b, const struct cf_engine_s *e, uint64_t engine_id) {
  cf_restore_t *keep = NULL, *tail = NULL, *next;
  int n = 0;
  for (cf_restore_t *r = b->waiting_head; r; r = next) {
    next = r->next;
    r->next = NULL;
    if (r->engine == e) {
      cf_rpc_finish(r->call, CF_RPC_ABORTED, "engine %llu was unregistered while this restore waited", (unsigned long long)engine_id);
      __atomic_fetch_sub(&b->in_flight, 1, __ATOMIC_RELAXED);
      cf__restore_free(r);
    } else {
      if (tail) tail->next = r; else keep = r;
      tail = r;
      n++;
    }
  }
  b->waiting_head = keep;
  b->waiting_tail = tail;
  b->n_waiting = n;
  for (cf_restore_t *r = b->running; r; r = r->next)
    if (r->engine == e && b->path.restore_cancel) b->path.restore_cancel(b->path.ctx, r);
}

void cf_batcher_abort_all(cf_batcher_t *b, const char *why) {
  if (b->window_armed) { uv_timer_stop(&b->window); b->window_armed = 0; }
  while (b->waiting_head) {
    cf_restore_t *r = b->waiting_head;
    b->waiting_head = r->next;
    cf_rpc_finish(r->call, CF_RPC_UNAVAILABLE, "%s", why);
    __atomic_fetch_sub(&b->in_flight, 1, __ATOMIC_RELAXED);
    cf__restore_free(r);
  }
  b->waiting_tail = NULL;
  b->n_waiting = 0;
  while (b->running) { /* the data path must end them synchronously when cancelled at shutdown */
    cf_restore_t *r = b->running;
    if (b->path.restore_cancel) b->path.restore_cancel(b->path.ctx, r);
    if (b->running == r) cf_restore_done(r, CF_RPC_UNAVAILABLE, NULL, why);
  }
}

int cf_batcher_init(cf_batcher_t **out, uv_loop_t *loop, const cf_config_t *cfg, const cf_batcher_path_t *path,
                    void (*release)(void *arg, cf_restore_t *r), void *release_arg) {
  cf_batcher_t *b = calloc(1, sizeof *b);
  if (!b) return -1;
  b->cfg = cfg;
  if (path) b->path = *path;
  b->release = release;
  b->release_arg = release_arg;
  uv_timer_init(loop, &b->window);
  b->window.data = b;
  *out = b;
  return 0;
}

static void cf__window_closed(uv_handle_t *h) { free(h->data); }

void cf_batcher_close(cf_batcher_t *b) {
  if (!b) return;
  cf_batcher_abort_all(b, "cacheflowd is shutting down");
  uv_close((uv_handle_t *)&b->window, cf__window_closed);
}

void cf_batcher_stats(const cf_batcher_t *b, cf_batcher_stats_t *o) {
  o->in_flight = __atomic_load_n(&b->in_flight, __ATOMIC_RELAXED);
  o->restores_total = __atomic_load_n(&b->restores_total, __ATOMIC_RELAXED);
  o->batches_total = __atomic_load_n(&b->batches_total, __ATOMIC_RELAXED);
  o->restores_batched_total = __atomic_load_n(&b->batched_total, __ATOMIC_RELAXED);
}
