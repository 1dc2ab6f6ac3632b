/* cf_exec — see cf_exec.h for the contract. Structure of one run:
 *
 *   one mutex + condvar guard the per-request cell states; work happens outside the lock:
 *     loader threads: task list (layer-major) -> rate limit -> source -> claim -> ops.load -> present
 *     compute (caller): pick the lowest ready (layer, chunk) run -> ops.gather -> ops.forward
 *                       -> ops.write -> present
 *   every byte moves through ex->ops (cf_exec_ops.h); this file never touches KV data, so the
 *   CPU and GPU data paths share this scheduler.
 *   a cell is written to the engine exactly once: whoever moves it out of PENDING (a loader
 *   after a successful read, or the compute thread when it picks the cell's run) writes it.
 */
#include "exec/cf_exec.h"

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gpu/cf_gpu_kv.h"
#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_log.h"
#include "util/cf_mempool.h"

enum { CELL_PENDING = 0, CELL_LOADING, CELL_COMPUTING, CELL_PRESENT };
/* staged[]: is the cell's copy in the compute's contiguous staging buffer */
enum { STAGE_NO = 0, STAGE_YES = 1, STAGE_GATHERING = 2 };

typedef struct {
  cf_exec_req_t *r;
  int n_chunks, L, C, T;
  size_t row;                /* elements per token row: n_kv_heads * head_dim */
  size_t es;                 /* bytes per element of the engine buffer (= the cells' dtype) */
  const cf_exec_ops_t *ops;
  void *rs;                  /* the data path's request state */
  uint8_t *state, *staged;   /* [n_chunks * L] */
  int *H, *D;                /* per chunk: target computed height, computed so far */
  int P;                     /* chunks [0, P) present from the start (engine's own KV) */
  int K;                     /* r->present_tokens: rows below are never written */
  int shard;                 /* the engine holds some heads only: never gather from it */
  int *prefix;               /* per layer: leading chunks present */
  int *present;              /* per layer: chunks present */
  int *stage_upto;           /* per layer: loaded cells of chunks < this go to staging too */
  uint8_t *has_stage;        /* per layer: ops.req_stage succeeded (loaders may stage into it) */
  int has_hidden;
  int begun;                 /* ops.begin ran (ops.finish ends it) */
  int ready, done;
  int follow;                /* compute runs the plan's ops (r->cops) in order */
  int next_op;               /* the next of them */
  int free_from;             /* following: chunks >= this (the tail no op touches, h = L) are
                                computed work-conserving whenever the plan's next op waits */
  /* memory budget (cf_exec_set_pool on a data path with the budget ops): see cf_exec.h */
  struct cf__run_s *run;
  cf_mempool_t *pool;        /* NULL: unbounded */
  int budget;                /* lazy staging, released per layer (pool and budget ops) */
  int admitted;              /* holds its hidden states and a staging block */
  int mem_blocked;           /* a step did not fit: only steps needing no new memory are picked */
  int hrows;                 /* rows its hidden states hold (admitted) */
  int n_held;                /* layers with staging */
  int computing;             /* the compute thread works on its buffers outside the lock */
  int released;              /* req_release ran */
  int *stage_users;          /* per layer: loads writing into its staging now */
  int *srows;                /* per layer: rows its staging holds (when has_stage) */
  uint8_t *unstage_pending;  /* per layer: give the staging back once stage_users is 0 */
  int busy_n[CF_EXEC_MAX_TIERS];      /* per tier: this request's reads in progress */
  int64_t busy_t0[CF_EXEC_MAX_TIERS]; /* since when (busy_n > 0) */
} cf__rq_t;

typedef struct { int r, c, l; uint32_t rank; } cf__task_t;

/* Load order: by rank (the plan's link order, or the layer), then layer, request, chunk. */
static int cf__task_cmp(const void *a, const void *b) {
  const cf__task_t *x = a, *y = b;
  if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
  if (x->l != y->l) return x->l - y->l;
  if (x->r != y->r) return x->r - y->r;
  return x->c - y->c;
}

typedef struct cf__run_s {
  cf_exec_t *ex;
  cf_mempool_t *pool;        /* ex->pool: the run's bookkeeping comes from it too */
  uint8_t *mine;             /* [max chunks]: the compute step's own cells */
  uint8_t **lbuf;            /* budget: [n_loaders] cell buffers from the pool */
  size_t lbuf_bytes;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int loaders_active;        /* loader threads still running (lock held) */
  cf__rq_t *rq;
  int n;
  cf__task_t *tasks;
  int n_tasks;
  atomic_int next;
} cf__run_t;

/* Bookkeeping memory: from the pool when the run has one (nothing from malloc on the path). */
static void *cf__zalloc(cf_mempool_t *pool, size_t n, size_t sz) {
  return pool ? cf_mempool_calloc(pool, n, sz) : calloc(n, sz);
}
static void cf__zfree(cf_mempool_t *pool, void *p) {
  if (pool) cf_mempool_free(pool, p);
  else free(p);
}

static int64_t cf__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline size_t cf__ix(const cf__rq_t *q, int c, int l) { return (size_t)c * q->L + l; }
static inline int cf__t1(const cf__rq_t *q, int c) {
  int t = (c + 1) * q->C;
  return t < q->T ? t : q->T;
}
/* Bytes of one cell: the chunk's K and V rows in the store's dtype (what a load moves). */
static inline size_t cf__cell_bytes(const cf__rq_t *q) { return 2 * (size_t)q->C * q->row * q->es; }
/* The source's reference of chunk c (NULL when the request carries none). */
static inline void *cf__ref(const cf__rq_t *q, int c) { return q->r->ref ? q->r->ref[c] : NULL; }

int cf_exec_init_ops(cf_exec_t *ex, cf_backend_t *be, int n_loaders, const cf_exec_ops_t *ops,
                     void *dev) {
  if (!be || !be->model) return cf_seterr(CF_EINVAL, "exec: backend with a model required");
  if (n_loaders < 1 || n_loaders > 64)
    return cf_seterr(CF_EINVAL, "exec: n_loaders %d not in [1, 64]", n_loaders);
  if (!ops) return cf_seterr(CF_EINVAL, "exec: no data path (ops)");
  ex->be = be;
  ex->n_loaders = n_loaders;
  ex->ops = ops;
  ex->dev = dev;
  ex->pool = NULL;
  ex->budget = 0;
  return 0;
}

int cf_exec_set_pool(cf_exec_t *ex, cf_mempool_t *pool) {
  const cf_exec_ops_t *o = ex->ops;
  if (pool && !(o->req_stage_rows && o->req_hidden_rows && o->req_unstage && o->req_release))
    return cf_seterr(CF_EINVAL, "exec: the %s data path cannot run within a memory budget", o->name);
  ex->pool = pool;
  ex->budget = pool != NULL;
  return 0;
}

int cf_exec_set_budget_mode(cf_exec_t *ex) {
  int rc = cf_exec_set_pool(ex, NULL);
  const cf_exec_ops_t *o = ex->ops;
  if (!rc && !(o->req_stage_rows && o->req_hidden_rows && o->req_unstage && o->req_release))
    rc = cf_seterr(CF_EINVAL, "exec: the %s data path cannot run within a memory budget", o->name);
  if (!rc) ex->budget = 1;
  return rc;
}

int cf_exec_init(cf_exec_t *ex, cf_backend_t *be, int n_loaders) {
  return cf_exec_init_ops(ex, be, n_loaders, &cf_exec_cpu_ops, be);
}

/* The engine buffer's layout, whichever data path's buffer the request carries. */
static const cf_kv_layout_t *cf__layout(const cf_exec_req_t *r) {
  if (r->kv) return &r->kv->layout;
  return r->gkv ? &r->gkv->layout : NULL;
}

int cf_exec_validate(const cf_exec_t *ex, const cf_exec_req_t *r) {
  const cf_model_config_t *mc = &ex->be->model->cfg;
  int L = mc->n_layers;
  if (r->n_tokens <= 0) return cf_seterr(CF_EINVAL, "restore: n_tokens %d must be > 0", r->n_tokens);
  if (r->chunk_tokens <= 0) return cf_seterr(CF_EINVAL, "restore: chunk_tokens %d must be > 0", r->chunk_tokens);
  int rc = ex->ops->validate ? ex->ops->validate(ex->dev, r) : 0;
  if (rc) return rc;
  const cf_kv_layout_t *lay = cf__layout(r);
  if (!lay) return cf_seterr(CF_EINVAL, "restore: no engine kv buffer");
  cf_kv_shape_t shape = {.n_layers = mc->n_layers, .n_kv_heads = mc->n_kv_heads, .head_dim = mc->head_dim};
  if ((rc = cf_kv_layout_check(lay, &shape))) return rc;
  int need = (r->n_tokens + lay->block_size - 1) / lay->block_size;
  if (!r->blocks || r->n_blocks < need)
    return cf_seterr(CF_ERANGE, "restore: %d tokens need %d blocks of %d, block table has %d",
                     r->n_tokens, need, lay->block_size, r->n_blocks);
  if ((rc = cf_kvmap_check_blocks(lay, r->blocks, need))) return rc;
  if (!r->h) return cf_seterr(CF_EINVAL, "restore: no plan (h)");
  /* always required: a failed load falls back to computing its chunk from layer 0 */
  if (!r->tokens) return cf_seterr(CF_EINVAL, "restore: no token ids");
  int n = (r->n_tokens + r->chunk_tokens - 1) / r->chunk_tokens;
  if (r->present_tokens < 0 || r->present_tokens >= r->n_tokens)
    return cf_seterr(CF_EINVAL, "restore: present_tokens %d must be in [0, %d tokens)", r->present_tokens, r->n_tokens);
  for (int c = cf_exec_present_chunks(lay, r->present_tokens, r->chunk_tokens); c < n; c++) {
    if (r->h[c] < 0 || r->h[c] > L)
      return cf_seterr(CF_ERANGE, "restore: plan h[%d] = %d not in [0, %d]", c, r->h[c], L);
    if (r->h[c] < L) {
      if ((c + 1) * r->chunk_tokens > r->n_tokens)
        return cf_seterr(CF_EINVAL, "restore: partial last chunk %d (%d tokens) must be computed, plan h = %d",
                         c, r->n_tokens - c * r->chunk_tokens, r->h[c]);
      if (!r->src || !r->src[c])
        return cf_seterr(CF_EINVAL, "restore: chunk %d loads layers [%d, %d) but has no cell source", c, r->h[c], L);
      if (r->src[c]->tier_index < 0 || r->src[c]->tier_index >= CF_EXEC_MAX_TIERS)
        return cf_seterr(CF_ERANGE, "restore: chunk %d source tier index %d not in [0, %d)", c,
                         r->src[c]->tier_index, CF_EXEC_MAX_TIERS);
      /* loaded cells are copied bit for bit: the engine must hold the store's dtype */
      if (r->src[c]->dtype != lay->dtype)
        return cf_seterr(CF_EDTYPE, "restore: chunk %d: %s tier holds %s cells, the engine buffer is %s", c,
                         r->src[c]->tier, cf_dtype_name(r->src[c]->dtype), cf_dtype_name(lay->dtype));
    }
  }
  if (r->ready && (r->ready_slot < 0 || r->ready_slot >= r->ready->n_slots))
    return cf_seterr(CF_ERANGE, "restore: readiness slot %d not in [0, %d)", r->ready_slot, r->ready->n_slots);
  return 0;
}

/* ---------------------------------------------------------------- request state (lock held) */

static void cf__maybe_release(cf__rq_t *q);

static void cf__finish(cf__rq_t *q, int err) {
  if (q->done) return;
  q->done = 1;
  q->r->err = err;
  /* the detail is thread-local: keep it with the request for whoever reports it */
  if (err) snprintf(q->r->err_detail, sizeof q->r->err_detail, "%s", cf_errmsg());
  q->r->stats.t_done_ns = cf__now();
  q->r->stats.layers_ready = q->ready;
  cf__maybe_release(q);
  if (q->begun) {
    q->ops->finish(q->rs, err);
  } else if (q->r->ready && q->rs) {
    /* init failed after the data path made its request state (a staging or device allocation):
     * begin the slot for THIS request before failing it, through the data path, so the engine
     * waiting on its req_id sees the error and a GPU data path opens the stream gate (the
     * engine's stream would otherwise wait on gate 0 forever) */
    q->ops->begin(q->rs);
    q->begun = 1;
    q->ops->finish(q->rs, err);
  } else if (q->r->ready) { /* no request state: the slot from the CPU, gate opened too */
    cf_ready_begin(q->r->ready, q->r->ready_slot, q->r->req_id);
    cf_ready_finish(q->r->ready, q->r->ready_slot, err);
    atomic_store(&q->r->ready->slots[q->r->ready_slot].gate, CF_READY_GATE_OPEN);
  }
}

/* Budget: memory went back to the pool; requests waiting for it may try again. Lock held. */
static void cf__mem_freed(cf__run_t *run) {
  for (int i = 0; i < run->n; i++) run->rq[i].mem_blocked = 0;
  pthread_cond_broadcast(&run->cv);
}

/* Budget: a finished request gives its working memory back once nobody uses it (a loader
 * staging into it, the compute thread in a step). Lock held. */
static void cf__maybe_release(cf__rq_t *q) {
  if (!q->budget || !q->done || q->released || q->computing || !q->rs) return;
  for (int l = 0; l < q->L; l++)
    if (q->stage_users[l]) return;
  q->ops->req_release(q->rs);
  q->released = 1;
  q->admitted = 0;
  q->n_held = 0;
  memset(q->has_stage, 0, (size_t)q->L);
  cf__mem_freed(q->run);
}

/* Budget: layer l's staging back to the pool (its cells are in the engine; a later step that
 * needs them again gathers them from there). Lock held, no loader staging into it. */
static void cf__unstage(cf__rq_t *q, int l) {
  q->unstage_pending[l] = 0;
  if (q->released) return;
  q->ops->req_unstage(q->rs, l);
  q->has_stage[l] = 0;
  q->n_held--;
  for (int c = 0; c < q->n_chunks; c++) q->staged[cf__ix(q, c, l)] = STAGE_NO;
  cf__mem_freed(q->run);
}

/* Publish the layers whose every cell is present; the request is done once all are. */
static void cf__advance_ready(cf__rq_t *q) {
  int before = q->ready;
  while (q->ready < q->L && q->present[q->ready] == q->n_chunks) {
    if (q->r->layer_ready_ns) q->r->layer_ready_ns[q->ready] = cf__now();
    q->ready++;
  }
  if (q->ready != before) {
    q->r->stats.layers_ready = q->ready;
    q->ops->publish(q->rs, q->ready);
    if (q->r->on_layer) q->r->on_layer(q->r, q->ready, q->r->on_layer_arg);
    if (q->ready == q->L) cf__finish(q, 0);
  }
}

/* Cell (c, l) reached the engine: advance the prefix and readiness counters. */
static void cf__present(cf__rq_t *q, int c, int l) {
  q->state[cf__ix(q, c, l)] = CELL_PRESENT;
  q->present[l]++;
  while (q->prefix[l] < q->n_chunks && q->state[cf__ix(q, q->prefix[l], l)] == CELL_PRESENT) q->prefix[l]++;
  cf__advance_ready(q);
}

static int cf__cancelled(const cf__rq_t *q) {
  return q->r->cancel && atomic_load(q->r->cancel) != 0;
}

/* ---------------------------------------------------------------- loaders */

typedef struct {
  cf__run_t *run;
  int index;
} cf__loader_arg_t;

/* Under the lock: should the loader still load task t? 0 yes; 1 no (computed, loaded, request
 * over), after finishing a cancelled request. */
static int cf__load_skip(cf__run_t *run, const cf__task_t *t) {
  cf__rq_t *q = &run->rq[t->r];
  size_t ix = cf__ix(q, t->c, t->l);
  int skip = q->done || q->state[ix] != CELL_PENDING || q->H[t->c] > t->l;
  if (!skip && cf__cancelled(q)) {
    cf__finish(q, cf_seterr(CF_ECANCELED, "restore %llu cancelled", (unsigned long long)q->r->req_id));
    pthread_cond_broadcast(&run->cv);
    skip = 1;
  }
  return skip;
}

/* Tier-busy accounting (stats.load_busy_ns): a read of the request's tier is in progress from
 * the moment its bytes were granted by the rate limiter until the cell was handed over. The
 * union of those intervals over the request's cells is the time its tier spent moving them.
 * Lock held. */
static void cf__busy_begin(cf__rq_t *q, int tier) {
  if (q->busy_n[tier]++ == 0) q->busy_t0[tier] = cf__now();
}
static void cf__busy_end(cf__rq_t *q, int tier) {
  if (q->busy_n[tier] > 0 && --q->busy_n[tier] == 0)
    q->r->stats.load_busy_ns[tier] += cf__now() - q->busy_t0[tier];
}

/* Record one executed step of q (cf_exec_trace_t): any thread, no lock. */
static void cf__trace(cf__rq_t *q, int kind, int lane, int tier, int c0, int c1, int l, int64_t t0, int64_t t1) {
  cf_exec_trace_t *tr = q->r->trace;
  if (!tr) return;
  int i = atomic_fetch_add(&tr->n, 1);
  if (i < tr->cap)
    tr->ev[i] = (cf_exec_tev_t){.t0_ns = t0, .t1_ns = t1, .c0 = c0, .c1 = c1, .l = (int16_t)l,
                                .kind = (uint8_t)kind, .lane = (uint8_t)lane, .tier = (uint8_t)tier};
}

/* Task t's cell was read (rc 0: its K and V rows at pk, pv) or failed (rc CF_E*): move it into
 * the engine if nobody did meanwhile (exactly once: the claim), else fall back to recomputing.
 * Called without the lock; `busy`: cf__busy_begin ran for it. */
static void cf__load_result(cf__run_t *run, void *ls, const cf__task_t *t, int rc, const void *pk,
                            const void *pv, int busy, int lane, int64_t t0) {
  cf__rq_t *q = &run->rq[t->r];
  cf_cellsrc_t *src = q->r->src[t->c];
  size_t ix = cf__ix(q, t->c, t->l);
  size_t cell_bytes = cf__cell_bytes(q);
  pthread_mutex_lock(&run->mu);
  int claim = 0, stage = 0;
  if (!rc && !q->done && q->state[ix] == CELL_PENDING && q->H[t->c] <= t->l) {
    claim = 1;
    q->state[ix] = CELL_LOADING;
    stage = q->has_stage[t->l] && t->c < q->stage_upto[t->l];
    if (stage && q->budget) q->stage_users[t->l]++;
  }
  pthread_mutex_unlock(&run->mu);

  if (claim) rc = q->ops->load(ls, q->rs, t->l, t->c * q->C, t->c * q->C + q->C, pk, pv, stage);
  if (claim && !rc) cf__trace(q, 1, lane, src->tier_index, t->c, t->c + 1, t->l, t0, cf__now());

  pthread_mutex_lock(&run->mu);
  if (stage && q->budget && --q->stage_users[t->l] == 0) {
    if (q->unstage_pending[t->l]) cf__unstage(q, t->l);
    cf__maybe_release(q);
  }
  if (busy) cf__busy_end(q, src->tier_index);
  if (rc) {
    /* fall back to recomputing: chunk c must now be computed up to layer l */
    q->r->stats.load_failures++;
    CF_DEBUG("exec: load (chunk %d, layer %d) from %s failed (%s: %s): recomputing", t->c, t->l,
             src->tier, cf_err_name(rc), cf_errmsg());
    if (claim) q->state[ix] = CELL_PENDING;
    if (!q->done && q->state[ix] == CELL_PENDING && q->H[t->c] <= t->l) {
      q->H[t->c] = t->l + 1;
      q->follow = 0; /* the plan's ops no longer cover the computed cells */
    }
  } else if (claim) {
    q->staged[ix] = stage ? STAGE_YES : STAGE_NO;
    q->r->stats.cells_loaded[src->tier_index]++;
    q->r->stats.bytes_loaded[src->tier_index] += cell_bytes;
    cf__present(q, t->c, t->l);
  }
  if (rc || claim) pthread_cond_broadcast(&run->cv);
  pthread_mutex_unlock(&run->mu);
}

/* A loader's run of consecutive tasks (link order) from one streaming source. */
typedef struct {
  cf__run_t *run;
  void *ls;
  const cf__task_t *t;  /* [n] */
  uint8_t *st;          /* [n]: 0 not yet handed over, 1 issued (busy counted), 2 skipped, 3 done */
  int outstanding;      /* cells issued and not handed over yet: the reads in flight */
  int lane;             /* the loader's index (trace) */
  int64_t *t0;          /* [n]: when each cell's bytes were granted (trace) */
} cf__lstream_t;

enum { LS_WAIT = 0, LS_ISSUED, LS_SKIPPED, LS_DONE };

static int cf__stream_issue(void *ud, int i, int wait) {
  cf__lstream_t *x = ud;
  const cf__task_t *t = &x->t[i];
  cf__rq_t *q = &x->run->rq[t->r];
  pthread_mutex_lock(&x->run->mu);
  int skip = cf__load_skip(x->run, t);
  pthread_mutex_unlock(&x->run->mu);
  if (skip) { x->st[i] = LS_SKIPPED; return CF_ECANCELED; }
  cf_cellsrc_t *src = q->r->src[t->c];
  size_t bytes = cf__cell_bytes(q);
  /* with reads outstanding, don't sleep on the link: their cells are handed over first */
  if (!wait && !cf_ratelimit_try_acquire(src->limit, bytes)) return CF_EAGAIN;
  if (wait) cf_ratelimit_acquire(src->limit, bytes);
  pthread_mutex_lock(&x->run->mu);
  cf__busy_begin(q, src->tier_index);
  if (++x->outstanding > q->r->stats.load_depth_peak) q->r->stats.load_depth_peak = x->outstanding;
  pthread_mutex_unlock(&x->run->mu);
  x->st[i] = LS_ISSUED;
  x->t0[i] = cf__now();
  return 0;
}

static void cf__stream_done(void *ud, int i, const void *k, const void *v, int status) {
  cf__lstream_t *x = ud;
  int was = x->st[i];
  x->st[i] = was == LS_SKIPPED ? LS_SKIPPED : LS_DONE;
  if (was == LS_SKIPPED) return;
  if (was == LS_ISSUED) x->outstanding--;
  cf__load_result(x->run, x->ls, &x->t[i], status, k, v, was == LS_ISSUED, x->lane, x->t0[i]);
}

/* Cells one loader streams at a time from a read_stream source: with the source's reads in
 * flight per loader (the SSD ring's depth), this bounds how far ahead of the link order one
 * loader runs while another works on the cells before. */
#define CF__STREAM_CELLS 16

static void *cf__loader(void *arg) {
  cf__run_t *run = ((cf__loader_arg_t *)arg)->run;
  const cf_exec_ops_t *ops = run->ex->ops;
  void *dev = run->ex->dev;
  size_t cap = 0;   /* bytes of kb */
  uint8_t *kb = NULL;
  int own_kb = 1;   /* kb from host_alloc (else the run's pool buffer) */
  if (run->lbuf) {
    kb = run->lbuf[((cf__loader_arg_t *)arg)->index];
    cap = run->lbuf_bytes;
    own_kb = 0;
  }
  void *ls = NULL;
  int lrc = ops->loader_init(dev, ((cf__loader_arg_t *)arg)->index, &ls);
  cf__task_t win[CF__STREAM_CELLS];
  void *refs[CF__STREAM_CELLS];
  int layers[CF__STREAM_CELLS];
  uint8_t wst[CF__STREAM_CELLS];
  int64_t wt0[CF__STREAM_CELLS];
  int lane = ((cf__loader_arg_t *)arg)->index;
  for (;;) {
    int i = atomic_fetch_add(&run->next, 1);
    if (i >= run->n_tasks) break;
    cf__task_t t = run->tasks[i];
    cf__rq_t *q = &run->rq[t.r];
    cf_cellsrc_t *src = q->r->src[t.c];
    if (!lrc && src->read_stream && ops->load_any_host) {
      /* take the following tasks of the same source too (in link order), and stream them */
      int n = 1;
      win[0] = t;
      while (n < CF__STREAM_CELLS) {
        int j = atomic_load(&run->next);
        if (j >= run->n_tasks) break;
        const cf__task_t *u = &run->tasks[j];
        if (run->rq[u->r].r->src[u->c] != src) break;
        if (!atomic_compare_exchange_weak(&run->next, &j, j + 1)) continue;
        win[n++] = *u;
      }
      for (int k = 0; k < n; k++) {
        const cf__rq_t *qk = &run->rq[win[k].r];
        refs[k] = cf__ref(qk, win[k].c);
        layers[k] = win[k].l;
        wst[k] = LS_WAIT;
      }
      cf__lstream_t x = {run, ls, win, wst, 0, lane, wt0};
      cf_cellsrc_stream_t cb = {cf__stream_issue, cf__stream_done, &x};
      int rc = src->read_stream(src, n, refs, layers, &cb);
      /* cells the stream did not hand over (it failed): recomputed */
      for (int k = 0; k < n; k++)
        if (wst[k] == LS_WAIT || wst[k] == LS_ISSUED)
          cf__load_result(run, ls, &win[k], rc ? rc : cf_seterr(CF_EINTERNAL, "exec: %s stream dropped a cell", src->tier),
                          NULL, NULL, wst[k] == LS_ISSUED, lane, 0);
      continue;
    }
    pthread_mutex_lock(&run->mu);
    int skip = cf__load_skip(run, &t);
    pthread_mutex_unlock(&run->mu);
    if (skip) continue;

    size_t cell_bytes = cf__cell_bytes(q);
    const void *pk = NULL, *pv = NULL;
    void *hold = NULL;
    int rc = lrc; /* a loader whose data path failed to start fails its cells: recomputed */
    int busy = 0;
    int64_t t0 = 0;
    if (!rc) {
      cf_ratelimit_acquire(src->limit, cell_bytes);
      t0 = cf__now();
      pthread_mutex_lock(&run->mu);
      cf__busy_begin(q, src->tier_index);
      pthread_mutex_unlock(&run->mu);
      busy = 1;
      if (src->acquire) {
        rc = src->acquire(src, cf__ref(q, t.c), t.l, &pk, &pv, &hold);
      } else {
        if (cap < cell_bytes) { /* 4096-aligned: O_DIRECT tiers read straight into it */
          if (kb && own_kb) ops->host_free(dev, kb, cap);
          own_kb = 1;
          kb = ops->host_alloc(dev, cell_bytes);
          cap = kb ? cell_bytes : 0;
        }
        rc = cap ? src->read(src, cf__ref(q, t.c), t.l, kb)
                 : cf_seterr(CF_ENOMEM, "exec: cell buffer of %zu bytes", cell_bytes);
        pk = kb; pv = kb + cell_bytes / 2;
      }
    }
    int acquired = src->acquire && !rc; /* released once the cell's bytes are moved */
    cf__load_result(run, ls, &t, rc, pk, pv, busy, lane, t0);
    if (src->release && acquired) src->release(src, hold);
  }
  if (kb && own_kb) ops->host_free(dev, kb, cap);
  if (!lrc) ops->loader_free(ls);
  pthread_mutex_lock(&run->mu);
  run->loaders_active--; /* the compute may be waiting for nothing now (cf__mem_stall) */
  pthread_cond_broadcast(&run->cv);
  pthread_mutex_unlock(&run->mu);
  return NULL;
}

/* ---------------------------------------------------------------- compute */

typedef struct { int r, c0, c1, l, plan; } cf__pick_t;

/* The next op of the plans being followed: the lowest rank among the requests' next ops.
 * Returns 1 and the op in *p when its inputs are present, 0 when it must wait (or there is
 * none). The compute stream runs its ops strictly in order, as the planner's simulator does:
 * running a later op first would change the step sizes and timing it predicted. Lock held. */
static int cf__pick_plan(cf__run_t *run, cf__pick_t *p) {
  int best = -1;
  uint64_t best_rank = UINT64_MAX;
  for (int i = 0; i < run->n; i++) {
    cf__rq_t *q = &run->rq[i];
    if (q->done || !q->follow || q->next_op >= q->r->n_cops) continue;
    uint64_t rk = q->r->cops[q->next_op].rank;
    if (best < 0 || rk < best_rank) { best = i; best_rank = rk; }
  }
  if (best < 0) return 0;
  cf__rq_t *q = &run->rq[best];
  const cf_exec_cop_t *op = &q->r->cops[q->next_op];
  if (q->prefix[op->l] < op->c0) return 0; /* an earlier chunk's cell at l is not there yet */
  for (int c = op->c0; c < op->c1; c++)
    if (q->D[c] != op->l || q->state[cf__ix(q, c, op->l)] != CELL_PENDING) return 0;
  *p = (cf__pick_t){best, op->c0, op->c1 - 1, op->l, 1};
  return 1;
}

static int cf__stage_rows(const cf__rq_t *q, int l);
/* Budget: would a step of q at layer l run on memory q already holds? */
static int cf__step_fits(const cf__rq_t *q, int l) {
  return q->admitted && q->hrows >= cf__stage_rows(q, 0) && q->has_stage[l] && q->srows[l] >= cf__stage_rows(q, l) &&
         !q->unstage_pending[l];
}

/* The next run the compute worker can start outside the plans: in request priority order, the
 * request's lowest (layer, chunk) whose dependencies are present, extended over following chunks
 * at the same layer; for a request that follows its plan only among its free tail chunks.
 * Returns 0 when nothing is ready now. Lock held. */
static int cf__pick(cf__run_t *run, cf__pick_t *p) {
  for (int i = 0; i < run->n; i++) {
    cf__rq_t *q = &run->rq[i];
    if (q->done || (q->follow && q->free_from >= q->n_chunks)) continue;
    /* short of memory: only steps on memory it holds (until memory is given back) */
    if (q->mem_blocked && !q->admitted) continue;
    int best_c = -1, best_l = q->L;
    for (int c = q->follow ? q->free_from : 0; c < q->n_chunks; c++) {
      int l = q->D[c];
      if (l >= q->H[c] || l >= best_l) continue;
      if (q->prefix[l] < c || q->state[cf__ix(q, c, l)] == CELL_LOADING) continue;
      if (q->mem_blocked && !cf__step_fits(q, l)) continue;
      best_c = c; best_l = l;
    }
    if (best_c < 0) continue;
    int c1 = best_c;
    while (c1 + 1 < q->n_chunks && q->D[c1 + 1] == best_l && q->H[c1 + 1] > best_l &&
           q->state[cf__ix(q, c1 + 1, best_l)] != CELL_LOADING)
      c1++;
    *p = (cf__pick_t){i, best_c, c1, best_l, 0};
    return 1;
  }
  return 0;
}

static int cf__all_done(cf__run_t *run) {
  for (int i = 0; i < run->n; i++) if (!run->rq[i].done) return 0;
  return 1;
}

/* Run one picked (chunks [c0, c1], layer l) step. Called without the lock. */
static int cf__compute(cf__run_t *run, const cf__pick_t *p, const uint8_t *mine) {
  cf__rq_t *q = &run->rq[p->r];
  int l = p->l, t0 = p->c0 * q->C, t1 = cf__t1(q, p->c1);
  int64_t s = cf__now();
  int rc = q->ops->forward(q->rs, l, t0, t1);
  int64_t fin = cf__now();
  q->r->stats.compute_busy_ns += fin - s;
  q->r->stats.forward_calls++;
  if (!rc) cf__trace(q, 0, 0, 0, p->c0, p->c1 + 1, l, s, fin); /* p->c1 is inclusive */
  q->r->stats.step_tokens += t1 - t0;
  q->r->stats.step_attn += (t1 - t0) * (t0 + 0.5 * (t1 - t0));
  if (rc) return cf_err_prefix(rc, "exec: forward (layer %d, tokens [%d, %d)): ", l, t0, t1);
  /* computed rows go to the engine in runs of consecutive chunks this step owns (already
   * loaded ones keep the stored bytes) */
  for (int c = p->c0; c <= p->c1; c++) {
    if (!mine[c - p->c0]) continue;
    int e = c;
    while (e < p->c1 && mine[e + 1 - p->c0]) e++;
    int w0 = c * q->C > q->K ? c * q->C : q->K, w1 = cf__t1(q, e); /* never below present_tokens */
    if (w0 < w1 && (rc = q->ops->write(q->rs, l, w0, w1)))
      return cf_err_prefix(rc, "exec: write (layer %d, tokens [%d, %d)): ", l, w0, w1);
    c = e;
  }
  return 0;
}

/* Layer l's staging (ops.req_stage) unless it has one; see cf__ensure_buffers. */
static int cf__ensure_stage(cf__rq_t *q, int l) {
  int rc = q->has_stage[l] ? 0 : q->ops->req_stage(q->rs, l);
  if (!rc) q->has_stage[l] = 1;
  return rc;
}
/* Buffers a step needs (staging of layer l, hidden states); the plan's are made at init, a
 * load failure that raised a chunk needs more. Lock held; only the compute thread (or init)
 * calls it, loaders read has_stage under the lock. */
/* Budget: rows layer l's staging must hold: up to the end of the last chunk computed at l (the
 * staging holds that chunk and everything it attends over). E_0 is the largest. */
static int cf__stage_rows(const cf__rq_t *q, int l) {
  if (q->shard) return q->T;
  for (int c = q->n_chunks - 1; c >= q->P; c--)
    if (q->H[c] > l) return cf__t1(q, c);
  return 0;
}

/* Budget: the step's buffers from the pool. CF_EAGAIN: not now (nothing changed). Admission (the
 * first step) takes the hidden states and a staging block of E_0 rows together, or neither. */
static int cf__ensure_budget(cf__rq_t *q, int l) {
  int e0 = cf__stage_rows(q, 0), el = cf__stage_rows(q, l), rc;
  if (q->unstage_pending[l]) return CF_EAGAIN; /* a loader still writes into the old block */
  if (!q->admitted) {
    if ((rc = q->ops->req_hidden_rows(q->rs, e0))) return rc;
    if ((rc = q->ops->req_stage_rows(q->rs, l, e0))) {
      q->ops->req_release(q->rs);
      return rc;
    }
    q->admitted = 1;
    q->hrows = e0;
    q->has_stage[l] = 1;
    q->srows[l] = e0;
    q->n_held++;
    return 0;
  }
  if ((rc = q->ops->req_hidden_rows(q->rs, e0))) return rc; /* grows after a raised chunk */
  q->hrows = e0;
  if (q->has_stage[l] && q->srows[l] >= el) return 0;
  if (q->has_stage[l] && q->stage_users[l]) return CF_EAGAIN; /* growing it races the loaders */
  if ((rc = q->ops->req_stage_rows(q->rs, l, el))) return rc;
  if (!q->has_stage[l]) {
    q->has_stage[l] = 1;
    q->n_held++;
  }
  q->srows[l] = el;
  return 0;
}

static int cf__ensure_buffers(cf__rq_t *q, int l) {
  if (q->budget) return cf__ensure_budget(q, l);
  int rc;
  if ((rc = cf__ensure_stage(q, l))) return rc;
  if (!q->has_hidden) {
    if ((rc = q->ops->req_hidden(q->rs))) return rc;
    q->has_hidden = 1;
  }
  return 0;
}

/* Budget: can q's step wait for memory? Not when no other request holds any (admitted, not done)
 * and q holds no staging of its own whose layer will finish and give it back: then the request
 * alone needs more than the budget. Lock held. */
static int cf__mem_hopeless(cf__run_t *run, const cf__rq_t *q) {
  for (int i = 0; i < run->n; i++) {
    const cf__rq_t *o = &run->rq[i];
    if (o != q && !o->done && o->admitted) return 0;
  }
  return !q->admitted || q->n_held == 0;
}

/* Budget: the compute waits, no loader runs any more, and requests wait for memory that only
 * other waiting requests hold (each needs more after a load failure raised a chunk). Resolve it:
 * the lowest-priority request that holds memory gives all of it back and starts computing again
 * later (its chunks from layer 0: their hidden states are gone; cells already in the engine are
 * not written again, layers are gathered back from the engine). With one holder left the
 * request alone exceeds the budget: fail the waiting ones with CF_ENOMEM. Returns 1 when it
 * changed something. Lock held. */
static int cf__mem_stall(cf__run_t *run) {
  int blocked = 0, holders = 0, victim = -1;
  for (int i = 0; i < run->n; i++) {
    cf__rq_t *q = &run->rq[i];
    if (q->done) continue;
    blocked += q->mem_blocked;
    if (q->admitted) { holders++; victim = i; }
  }
  if (!blocked) return 0;
  if (holders <= 1) {
    for (int i = 0; i < run->n; i++) {
      cf__rq_t *q = &run->rq[i];
      if (!q->done && q->mem_blocked)
        cf__finish(q, cf_seterr(CF_ENOMEM, "restore %llu: after load failures its compute needs more working memory "
                                "(hidden states and staging for %d tokens) than the memory budget holds",
                                (unsigned long long)q->r->req_id, cf__stage_rows(q, 0)));
    }
    return 1;
  }
  cf__rq_t *q = &run->rq[victim];
  q->ops->req_release(q->rs);
  q->admitted = 0; q->n_held = 0; q->hrows = 0;
  memset(q->has_stage, 0, (size_t)q->L);
  memset(q->srows, 0, (size_t)q->L * sizeof *q->srows);
  memset(q->staged, STAGE_NO, (size_t)q->n_chunks * q->L);
  for (int c = q->P; c < q->n_chunks; c++)
    if (q->D[c] > 0 && q->D[c] < q->H[c]) q->D[c] = 0;
  q->follow = 0;
  q->r->stats.mem_waits++;
  cf__mem_freed(run);
  return 1;
}

static void cf__compute_loop(cf__run_t *run) {
  uint8_t *mine = run->mine;
  pthread_mutex_lock(&run->mu);
  for (;;) {
    for (int i = 0; i < run->n; i++) {
      cf__rq_t *q = &run->rq[i];
      if (!q->done && cf__cancelled(q))
        cf__finish(q, cf_seterr(CF_ECANCELED, "restore %llu cancelled", (unsigned long long)q->r->req_id));
    }
    if (cf__all_done(run)) break;
    cf__pick_t p;
    if (!cf__pick_plan(run, &p) && !cf__pick(run, &p)) {
      if (!run->loaders_active && cf__mem_stall(run)) continue;
      /* waiting on loads; the timeout only bounds how late a cancel is noticed */
      struct timespec ts = cf_deadline_ms(20);
      pthread_cond_timedwait(&run->cv, &run->mu, &ts);
      continue;
    }
    cf__rq_t *q = &run->rq[p.r];
    int rc = cf__ensure_buffers(q, p.l);
    if (rc == CF_EAGAIN) { /* budget: not now; the plan's order is left for what fits */
      q->r->stats.mem_waits++;
      if (cf__mem_hopeless(run, q)) {
        size_t need = 2 * (size_t)cf__stage_rows(q, 0) * (run->ex->be->model->cfg.hidden + q->row) * sizeof(float);
        cf_mempool_stats_t ms = {0};
        if (q->pool) cf_mempool_stats(q->pool, &ms);
        if (q->pool)
          cf__finish(q, cf_seterr(CF_ENOMEM, "restore %llu: its compute needs about %zu bytes of working memory "
                                  "(hidden states and one layer's staging for %d tokens), the memory budget "
                                  "has %zu of %zu bytes free with nothing else running",
                                  (unsigned long long)q->r->req_id, need, cf__stage_rows(q, 0),
                                  ms.largest_free, ms.budget));
        else
          cf__finish(q, cf_seterr(CF_ENOMEM, "restore %llu: its compute needs more working memory (hidden states "
                                  "and one layer's staging for %d tokens) than the %s data path's memory budget "
                                  "holds with nothing else running", (unsigned long long)q->r->req_id,
                                  cf__stage_rows(q, 0), q->ops->name));
        continue;
      }
      q->follow = 0;
      q->mem_blocked = 1;
      continue;
    }
    if (rc) { cf__finish(q, rc); continue; }
    q->computing = 1;
    for (int c = p.c0; c <= p.c1; c++) {
      uint8_t *st = &q->state[cf__ix(q, c, p.l)];
      mine[c - p.c0] = *st == CELL_PENDING;
      if (*st == CELL_PENDING) *st = CELL_COMPUTING;
    }
    /* Prefix cells that were loaded without a staging copy: gather them from the engine
     * blocks (they are present, so nobody writes them any more). */
    int g1 = 0; /* gather chunks [0, g1) marked STAGE_GATHERING */
    for (int c = 0; c < p.c0; c++) {
      size_t ix = cf__ix(q, c, p.l);
      if (q->staged[ix] == STAGE_NO) { q->staged[ix] = STAGE_GATHERING; g1 = c + 1; }
    }
    pthread_mutex_unlock(&run->mu);
    /* in runs of consecutive chunks: one op each */
    for (int c = 0; c < g1 && !rc; c++) {
      if (q->staged[cf__ix(q, c, p.l)] != STAGE_GATHERING) continue;
      int e = c;
      while (e + 1 < g1 && q->staged[cf__ix(q, e + 1, p.l)] == STAGE_GATHERING) e++;
      if (q->shard) /* its blocks lack the other heads: cf__rq_init stages every loaded cell */
        rc = cf_seterr(CF_EINTERNAL, "exec: shard engine: chunk %d at layer %d not staged", c, p.l);
      else if ((rc = q->ops->gather(q->rs, p.l, c * q->C, cf__t1(q, e))))
        rc = cf_err_prefix(rc, "exec: gather (layer %d, tokens [%d, %d)): ", p.l, c * q->C, cf__t1(q, e));
      c = e;
    }
    if (!rc) rc = cf__compute(run, &p, mine);
    pthread_mutex_lock(&run->mu);
    q->computing = 0;
    for (int c = 0; c < g1; c++)
      if (q->staged[cf__ix(q, c, p.l)] == STAGE_GATHERING) q->staged[cf__ix(q, c, p.l)] = STAGE_YES;
    if (rc) {
      CF_WARN("exec: restore %llu: %s: %s", (unsigned long long)q->r->req_id, cf_strerror(rc), cf_errmsg());
      cf__finish(q, rc);
      cf__maybe_release(q);
      continue;
    }
    if (p.plan) q->next_op++;
    for (int c = p.c0; c <= p.c1; c++) {
      q->D[c] = p.l + 1;
      q->staged[cf__ix(q, c, p.l)] = STAGE_YES;
      if (mine[c - p.c0] && !q->done) {
        q->r->stats.cells_computed++;
        cf__present(q, c, p.l);
      }
    }
    cf__maybe_release(q); /* it may have ended (by this step, or cancelled meanwhile) */
    if (q->budget && !q->released && !q->shard && q->has_stage[p.l]) {
      /* the last computed chunk of layer p.l done: its staging goes back to the pool */
      int more = 0;
      for (int c = q->P; c < q->n_chunks && !more; c++) more = q->H[c] > p.l && q->D[c] <= p.l;
      if (!more) {
        if (q->stage_users[p.l]) { q->unstage_pending[p.l] = 1; q->has_stage[p.l] = 0; } /* n_held: at cf__unstage */
        else cf__unstage(q, p.l);
      }
    }
  }
  pthread_mutex_unlock(&run->mu);
}

/* ---------------------------------------------------------------- setup */

static void cf__rq_free(cf__rq_t *q) {
  cf__zfree(q->pool, q->H); /* the block every array of the request's state is carved from */
  if (q->ops) q->ops->req_free(q->rs);
}

/* Can the compute worker run r->cops strictly in order? They must compute exactly the cells
 * l < h[c], each once, every chunk's layers in increasing order, and an op at layer l may only
 * come after the ops computing the earlier chunks' cells at l (loaded cells arrive on their
 * own). Chunks after the last one the ops touch (the uncached tail, no plan covers it) must be
 * computed whole; they are free (free_from). Anything else (a chunk raised to h = L because it
 * left the store, a plan of another shape) and the request is computed work-conserving. */
static int cf__cops_match(cf__rq_t *q) {
  const cf_exec_req_t *r = q->r;
  if (!r->cops || r->n_cops <= 0) return 0;
  int *next = cf__zalloc(q->pool, (size_t)q->n_chunks, sizeof(int)); /* next layer each chunk computes */
  if (!next) return 0;
  int ok = 1;
  long cells = 0, want = 0;
  /* the free tail: chunks after the last one an op touches; they must be computed whole */
  q->free_from = 0;
  for (int k = 0; k < r->n_cops; k++)
    if (r->cops[k].c1 > q->free_from && r->cops[k].c1 <= q->n_chunks) q->free_from = r->cops[k].c1;
  for (int c = q->free_from; c < q->n_chunks; c++)
    if (q->H[c] != q->L) ok = 0;
  for (int c = 0; c < q->free_from; c++) want += q->H[c]; /* 0 for present chunks */
  for (int k = 0; k < r->n_cops && ok; k++) {
    const cf_exec_cop_t *op = &r->cops[k];
    if (k && op->rank <= r->cops[k - 1].rank) ok = 0;
    if (op->l < 0 || op->l >= q->L || op->c0 < 0 || op->c1 <= op->c0 || op->c1 > q->n_chunks) { ok = 0; break; }
    for (int c = 0; c < op->c0 && ok; c++) /* earlier computed cells at l: computed already */
      if (q->H[c] > op->l && next[c] <= op->l) ok = 0;
    for (int c = op->c0; c < op->c1 && ok; c++) {
      if (next[c] != op->l || op->l >= q->H[c]) ok = 0;
      next[c]++;
      cells++;
    }
  }
  cf__zfree(q->pool, next);
  return ok && cells == want;
}

static int cf__rq_init(cf__rq_t *q, cf_exec_req_t *r, const cf_exec_t *ex, cf__run_t *run) {
  const cf_model_config_t *mc = &ex->be->model->cfg;
  memset(q, 0, sizeof *q);
  q->r = r;
  q->ops = ex->ops;
  q->run = run;
  q->pool = ex->pool;
  q->budget = ex->budget;
  r->pool_ = ex->pool;
  q->L = mc->n_layers; q->C = r->chunk_tokens; q->T = r->n_tokens;
  q->n_chunks = (q->T + q->C - 1) / q->C;
  q->row = (size_t)mc->n_kv_heads * mc->head_dim;
  q->es = cf_kv_elem_size(cf__layout(r)->dtype);
  size_t cells = (size_t)q->n_chunks * q->L;
  /* one block (one pool allocation): ints first, then the byte arrays */
  size_t ints = 2 * (size_t)q->n_chunks + 5 * (size_t)q->L, bytes = ints * sizeof(int) + 2 * cells + 2 * (size_t)q->L;
  int *ib = cf__zalloc(q->pool, bytes, 1);
  if (!ib)
    return cf_seterr(CF_ENOMEM, "exec: state for %d chunks x %d layers%s", q->n_chunks, q->L,
                     q->pool ? " (the memory budget cannot hold the batch's bookkeeping)" : "");
  q->H = ib; q->D = ib + q->n_chunks; ib += 2 * (size_t)q->n_chunks;
  q->prefix = ib; q->present = ib + q->L; q->stage_upto = ib + 2 * q->L; q->stage_users = ib + 3 * q->L;
  q->srows = ib + 4 * q->L;
  uint8_t *bb = (uint8_t *)(ib + 5 * (size_t)q->L);
  q->state = bb; q->staged = bb + cells; bb += 2 * cells;
  q->has_stage = bb; q->unstage_pending = bb + q->L;
  int rc = ex->ops->req_init(ex->dev, r, &q->rs);
  if (rc) return rc;
  memset(&r->stats, 0, sizeof r->stats);
  r->err = 0;
  r->err_detail[0] = 0;
  const cf_kv_layout_t *lay = cf__layout(r);
  q->K = r->present_tokens;
  q->P = cf_exec_present_chunks(lay, q->K, q->C);
  q->shard = cf_kv_row_heads(lay) != lay->n_kv_heads;
  for (int c = 0; c < q->n_chunks; c++) {
    if (c < q->P) { /* the engine's own KV: present at every layer, gathered when attended over */
      q->H[c] = 0;
      q->D[c] = q->L;
      for (int l = 0; l < q->L; l++) q->state[cf__ix(q, c, l)] = CELL_PRESENT;
      continue;
    }
    q->H[c] = r->h[c];
    r->stats.cells_planned_compute += (uint64_t)r->h[c];
    /* loaded cells of chunk c' < c at layers below h[c] are attended over by chunk c */
    for (int l = 0; l < r->h[c]; l++) q->stage_upto[l] = c;
  }
  for (int l = 0; l < q->L; l++) {
    q->prefix[l] = q->present[l] = q->P;
    /* a windowed layer's cells no later token needs: present, without a load or a write */
    for (int c = q->P; r->skip && c < q->n_chunks; c++)
      if (l >= q->H[c] && r->skip[cf__ix(q, c, l)]) {
        q->state[cf__ix(q, c, l)] = CELL_PRESENT;
        q->present[l]++;
        r->stats.cells_skipped++;
      }
    while (q->prefix[l] < q->n_chunks && q->state[cf__ix(q, q->prefix[l], l)] == CELL_PRESENT) q->prefix[l]++;
    int computes = 0;
    for (int c = q->P; c < q->n_chunks && !computes; c++) computes = q->H[c] > l;
    /* a shard's blocks cannot be gathered (other heads missing): every layer is staged and
     * every loaded cell goes there, so a load failure that raises a chunk finds its context */
    if (q->shard) q->stage_upto[l] = q->n_chunks;
    else if (!computes) continue;
    if (q->budget && !q->shard) continue; /* made when the compute first needs it */
    if (q->budget) { /* a shard stages every layer from the start (nothing can be gathered) */
      rc = q->ops->req_stage_rows(q->rs, l, q->T);
      if (rc == CF_EAGAIN)
        return cf_seterr(CF_ENOMEM, "restore %llu: a tensor-parallel shard stages all %d layers x %d tokens "
                         "at once; the memory budget has no room for layer %d", (unsigned long long)r->req_id,
                         q->L, q->T, l);
      if (rc) return rc;
      q->has_stage[l] = 1; q->srows[l] = q->T; q->n_held++;
      q->admitted = 1;
      continue;
    }
    if ((rc = cf__ensure_stage(q, l))) return rc;
  }
  if (q->budget && q->shard && q->admitted && (rc = q->ops->req_hidden_rows(q->rs, q->T)))
    return rc == CF_EAGAIN ? cf_seterr(CF_ENOMEM, "restore %llu: no room for the shard's hidden states",
                                       (unsigned long long)r->req_id) : rc;
  q->follow = cf__cops_match(q);
  r->stats.t_start_ns = cf__now();
  q->ops->begin(q->rs);
  q->begun = 1;
  /* layers present from the start (every cell skipped: a window no later token reaches back
   * from) are ready now: no load or compute would ever publish them, and a request with no
   * cell to move at all would wait forever */
  cf__advance_ready(q);
  return 0;
}

int cf_exec_run(cf_exec_t *ex, cf_exec_req_t *reqs, int n) {
  if (n <= 0) return 0;
  const cf_model_config_t *mc = &ex->be->model->cfg;
  for (int i = 0; i < n; i++) {
    int rc = cf_exec_validate(ex, &reqs[i]);
    if (rc) return cf_err_prefix(rc, "request %d: ", i);
  }
  cf__run_t run = {.ex = ex, .n = n, .pool = ex->pool};
  cf_mempool_t *pool = ex->pool;
  int rc = 0;
  pthread_t th[64];
  cf__loader_arg_t la[64];
  int nth = 0;
  run.rq = cf__zalloc(pool, (size_t)n, sizeof(cf__rq_t));
  if (!run.rq) return cf_seterr(CF_ENOMEM, "exec: %d requests%s", n, pool ? " (memory budget)" : "");
  pthread_mutex_init(&run.mu, NULL);
  cf_cond_init_mono(&run.cv); /* timed waits: see util/cf_clock.h */
  size_t ntask = 0;
  int max_chunks = 1;
  size_t max_cell = 0;
  for (int i = 0; i < n && !rc; i++) {
    rc = cf__rq_init(&run.rq[i], &reqs[i], ex, &run);
    for (int c = run.rq[i].P; c < run.rq[i].n_chunks && !rc; c++) ntask += (size_t)(mc->n_layers - reqs[i].h[c]);
    if (!rc) ntask -= (size_t)reqs[i].stats.cells_skipped;
    if (run.rq[i].n_chunks > max_chunks) max_chunks = run.rq[i].n_chunks;
    if (!rc && cf__cell_bytes(&run.rq[i]) > max_cell) max_cell = cf__cell_bytes(&run.rq[i]);
  }
  if (!rc && ntask && !(run.tasks = cf__zalloc(pool, ntask, sizeof(cf__task_t))))
    rc = cf_seterr(CF_ENOMEM, "exec: %zu load tasks", ntask);
  if (!rc && !(run.mine = cf__zalloc(pool, (size_t)max_chunks, 1)))
    rc = cf_seterr(CF_ENOMEM, "exec: compute step of %d chunks", max_chunks);
  if (!rc && pool && ntask && ex->ops->load_any_host) { /* the loaders' cell buffers, before any request is admitted (a data path that wants its own host buffers, the GPU's pinned ones, keeps host_alloc) */
    int nl = ex->n_loaders;
    run.lbuf = cf__zalloc(pool, (size_t)nl, sizeof(uint8_t *));
    run.lbuf_bytes = max_cell;
    for (int i = 0; run.lbuf && i < nl && !rc; i++)
      if (!(run.lbuf[i] = cf_mempool_alloc(pool, max_cell))) rc = CF_ENOMEM;
    if (!run.lbuf || rc)
      rc = cf_seterr(CF_ENOMEM, "exec: the memory budget cannot hold the loaders' cell buffers (%d x %zu bytes)",
                     nl, max_cell);
  }
  if (rc) goto out;
  /* The plan's link order when the request has one (load_rank); otherwise layer-major with the
   * requests interleaved: the order the compute (chunk c at layer l attends over chunks < c at l)
   * and the engine (layer l before l+1) need the cells. */
  for (int l = 0; l < mc->n_layers; l++)
    for (int i = 0; i < n; i++)
      for (int c = run.rq[i].P; c < run.rq[i].n_chunks; c++)
        if (reqs[i].h[c] <= l && !(reqs[i].skip && reqs[i].skip[(size_t)c * mc->n_layers + l])) {
          uint32_t rank = reqs[i].load_rank ? reqs[i].load_rank[(size_t)c * mc->n_layers + l] : (uint32_t)l;
          run.tasks[run.n_tasks++] = (cf__task_t){i, c, l, rank};
        }
  if (run.n_tasks > 1) qsort(run.tasks, (size_t)run.n_tasks, sizeof(cf__task_t), cf__task_cmp);
  atomic_init(&run.next, 0);
  int want = ex->n_loaders < run.n_tasks ? ex->n_loaders : run.n_tasks;
  run.loaders_active = want; /* each loader counts itself out when it ends */
  for (; nth < want; nth++) {
    la[nth] = (cf__loader_arg_t){&run, nth};
    if (pthread_create(&th[nth], NULL, cf__loader, &la[nth])) break;
  }
  if (nth < want) {
    pthread_mutex_lock(&run.mu);
    run.loaders_active -= want - nth;
    pthread_mutex_unlock(&run.mu);
  }
  if (want && !nth) {
    rc = cf_seterr(CF_ENOMEM, "exec: cannot start loader threads");
    for (int i = 0; i < n; i++) cf__finish(&run.rq[i], rc);
  }
  cf__compute_loop(&run);
  for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < n; i++) if (!rc && reqs[i].err) rc = reqs[i].err;
out:
  for (int i = 0; i < n; i++) {
    /* requests after one whose init failed were never initialised: fail their slots too */
    if (rc && !run.rq[i].r) run.rq[i].r = &reqs[i];
    if (rc && !run.rq[i].done) cf__finish(&run.rq[i], rc);
    cf__rq_free(&run.rq[i]);
  }
  if (run.lbuf) {
    for (int i = 0; i < ex->n_loaders; i++) cf_mempool_free(pool, run.lbuf[i]);
    cf__zfree(pool, run.lbuf);
  }
  cf__zfree(pool, run.rq);
  cf__zfree(pool, run.tasks);
  cf__zfree(pool, run.mine);
  pthread_mutex_destroy(&run.mu);
  pthread_cond_destroy(&run.cv);
  return rc;
}
