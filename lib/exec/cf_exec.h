/* cf_exec — runs restore plans with real overlap of compute and loads.
 *
 * One scheduler (this file's contract) over a data path chosen at init (cf_exec_ops.h):
 * cf_exec_init() = the CPU data path described below; cf_exec_init_ops() with cf_exec_gpu_ops
 * (cf_exec_gpu.h) = the same scheduler driving the GPU (device staging, cf_gpu_load,
 * cf_backend_cuda_forward_dev, paged kernels, cf_gpu_ready gates).
 *
 * A restore request covers the first n_tokens of a prefix in chunks of C tokens; the plan is
 * a staircase h[c] (chunk c's layers [0, h[c]) are COMPUTED, the rest LOADED from the chunk's
 * cell source). cf_exec_run() executes a batch of such requests:
 *   - the calling thread is the compute worker: it runs the backend's forward primitive on
 *     runs of consecutive chunks at one layer as soon as the run's dependencies are present
 *     (every earlier chunk's cell at that layer, loaded or computed; the chunk's own hidden
 *     state comes from its previous layer): the plan's compute ops in the plan's order when
 *     the request carries them (cops), else lowest ready layer first;
 *   - n_loaders loader threads stream the loaded cells (layer-major, the order the compute and
 *     the engine need them) through the tier's rate limiter straight into the engine's paged
 *     blocks, and into the compute's contiguous staging copy where a later computed chunk
 *     will attend over them; a source with read_stream (the SSD tier) gets runs of up to 16
 *     consecutive tasks per loader and keeps several reads in flight for them (its ring), so
 *     the disk sees n_loaders x depth reads, not n_loaders;
 *   - when every chunk of layer l is present (and all layers below), the request's readiness
 *     counter in shared memory becomes l+1 and on_layer() fires.
 *
 * Load failures (CF_ENOTFOUND: evicted mid-way; CF_ECORRUPT: checksum; CF_EIO) fall back to
 * recomputation: a failed cell (c, l) raises h[c] to l+1. Computing (c, l) needs hidden(c, l),
 * so chunk c is computed from where it stopped (its hidden state at layer h[c] is kept) up to
 * l; cells of c it passes that were already loaded keep their loaded bytes. Cells of later
 * chunks at layer l need (c, l) present, so they wait for it: the dependency is respected and
 * nothing wrong reaches the engine.
 *
 * KV dtype: cells are bytes in the store's dtype (f32, bf16 or f16) and the engine's blocks
 * must have the same dtype (cf_exec_validate). Loaded cells go into the blocks bit for bit; the
 * compute works in fp32, so its staging gets loaded cells widened (exact), and computed cells
 * are rounded (round-to-nearest-even, as the CUDA kernels convert) when written to the blocks.
 *
 * Memory per request (unbounded, no pool): hidden states 2 x T x hidden fp32 and, for each layer
 * some chunk computes at, a contiguous fp32 staging copy of K and V (T rows), both freed at the
 * end. Within a memory budget (cf_exec_set_pool) see there: bounded by the layers in flight.
 */
#ifndef CF_EXEC_H
#define CF_EXEC_H

#include <stdatomic.h>
#include <stdint.h>

#include "exec/cf_cellsrc.h"
#include "exec/cf_exec_ops.h"
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "model/cf_backend.h"

/* The GPU data path's engine buffer and readiness view (gpu/cf_gpu_kv.h, gpu/cf_gpu_ready.h):
 * only pointers here, so users of the CPU data path do not pull lib/gpu and CUDA's types in. */
typedef struct cf_gpu_kv_s cf_gpu_kv_t;
typedef struct cf_gpu_ready_s cf_gpu_ready_t;

#define CF_EXEC_MAX_TIERS 4

/* One COMPUTE op of a plan: chunks [c0, c1) at layer l in one forward step. `rank` is its place
 * in the compute stream's order (compares across a batch; see cf_exec_plan_cops). */
typedef struct {
  uint64_t rank;
  int32_t l, c0, c1;
} cf_exec_cop_t;

typedef struct {
  uint64_t cells_loaded[CF_EXEC_MAX_TIERS]; /* per tier index */
  uint64_t bytes_loaded[CF_EXEC_MAX_TIERS];
  int64_t load_busy_ns[CF_EXEC_MAX_TIERS];  /* per tier: time some read of this request's cells
                                               was in progress (from the rate limiter's grant to
                                               the cell handed over; the union over its cells, so
                                               limiter waits while nothing moved do not count):
                                               bytes_loaded / this = the tier's delivered rate,
                                               what the planner's tier rate models */
  uint64_t cells_computed;                  /* cells written to the engine by compute */
  uint64_t cells_planned_compute;           /* sum of the plan's h[c] */
  uint64_t load_failures;                   /* loads that failed and were recomputed */
  int load_depth_peak;                      /* most reads one loader had in flight (issued, not
                                               handed over) for this request: > 1 only through a
                                               streaming source (read_stream) */
  uint64_t forward_calls;
  int64_t t_start_ns, t_done_ns;            /* CLOCK_MONOTONIC */
  int64_t compute_busy_ns;                  /* time the compute worker spent in forward */
  double step_tokens, step_attn;            /* over those forward steps (n tokens from position
                                               p each): sum of n and of n * (p + n/2), what the
                                               cost model's alpha and beta terms charge (cacheflowd
                                               compares compute_busy_ns with its prediction) */
  int layers_ready;
  uint64_t mem_waits;                       /* memory budget: compute steps deferred because the
                                               pool had no room for their buffers (the request
                                               then leaves its plan's compute order) */
} cf_exec_stats_t;

/* One executed step, for pictures of a restore (cacheflowd's trace ring, `cacheflowctl trace`):
 * a forward call (kind 0: chunks [c0, c1) at layer l, on the compute worker, lane 0) or a
 * loaded cell (kind 1: chunk c0 = c1 - 1 at layer l, on loader thread `lane`, from the grant of
 * its bytes by the tier's rate limiter to the cell handed over to the engine). Times are the
 * host's around the data path's calls: on the GPU data path a call may return before the device
 * finished (stream order), so there they say when work was issued (not run on a GPU here). */
typedef struct {
  int64_t t0_ns, t1_ns;     /* CLOCK_MONOTONIC */
  int32_t c0, c1;
  int16_t l;
  uint8_t kind, lane, tier; /* tier: the cell source's tier index (loads) */
} cf_exec_tev_t;

/* Where a request's steps are recorded: the caller's array of cap events; n counts every step
 * (loader threads and the compute worker add concurrently), those past cap are dropped. */
typedef struct {
  cf_exec_tev_t *ev;
  int cap;
  atomic_int n;
} cf_exec_trace_t;

typedef struct cf_exec_req_s {
  /* what to restore */
  int n_tokens;                 /* prefix length T */
  const int32_t *tokens;        /* [T] (needed for chunks that compute layer 0) */
  int chunk_tokens;             /* C */
  const int *h;                 /* [ceil(T/C)] staircase; a partial last chunk must be L */
  cf_cellsrc_t *const *src;     /* [n_chunks] source per chunk; NULL where h[c] == L */
  const uint32_t *load_rank;    /* NULL or [n_chunks * L]: cell (c, l)'s place in the plan's link
                                   order; loads are issued by increasing rank (ties layer-major).
                                   NULL: layer-major. Ranks compare across the batch's requests. */
  const cf_exec_cop_t *cops;    /* NULL or [n_cops]: the plan's COMPUTE ops of this request in
                                   stream order. When they cover exactly the cells l < h[c], the
                                   compute worker runs them as the plan does: op by op, the
                                   batch's lowest rank next, waiting for its inputs (the order
                                   and step sizes the planner's simulator predicted); while it
                                   waits, chunks after the last one the ops touch (an uncached
                                   tail, h = L) are computed work-conserving. Otherwise
                                   (no ops, ops that do not match h, or a load failure that raised
                                   a chunk) the request is computed work-conserving: lowest ready
                                   layer first, runs of chunks as long as possible. */
  int n_cops;
  void *const *ref;             /* [n_chunks] opaque per-chunk handles passed to the source */
  /* where to */
  cf_kvmap_t *kv;               /* the engine's paged buffer (f32, bf16 or f16: the sources' dtype);
                                   the CPU data path's */
  const cf_gpu_kv_t *gkv;       /* the GPU data path's engine buffer instead (kv NULL) */
  const int32_t *blocks;        /* block table: token t -> blocks[t / block_size] */
  int present_tokens;           /* k: the engine already holds tokens [0, k) in `blocks` (its own
                                   prefix cache; 0 = nothing). No row below k is ever written.
                                   Whole-head engines: chunks inside [0, k) are present from the
                                   start (cf_exec_present_chunks; h and src ignored for them) and
                                   gathered from the blocks as context; the chunk holding k is
                                   loaded or computed whole into the staging, only rows >= k
                                   reach the engine. Shards (their blocks lack the other heads,
                                   so they cannot serve as context): every chunk is restored as
                                   planned into the staging (all layers, loads staged), only
                                   rows >= k written. */
  int n_blocks;                 /* entries in blocks: >= ceil(T / block_size) */
  cf_ready_t *ready;            /* NULL or the readiness file; slot below */
  cf_gpu_ready_t *gready;       /* GPU path: NULL or `ready`'s GPU view (cf_gpu_ready_init): layer
                                   gates then go through the GPU in stream order */
  int ready_slot;
  uint64_t req_id;
  /* progress: called with the executor's lock held, from any worker: must not block */
  void (*on_layer)(struct cf_exec_req_s *r, int layers_ready, void *arg);
  void *on_layer_arg;
  int64_t *layer_ready_ns;      /* NULL or [L]: when each layer became ready */
  atomic_int *cancel;           /* NULL or set nonzero to abandon this request */
  struct cf_mempool_s *pool_;   /* private: set by cf_exec_run (the executor's pool or NULL) */
  cf_exec_trace_t *trace;       /* NULL or where its forward calls and loaded cells are recorded */
  /* results */
  int err;                      /* 0 or the request's CF_E* code (CF_ECANCELED, backend error) */
  char err_detail[256];         /* its detail (cf_errmsg of the thread that failed it), "" if none */
  cf_exec_stats_t stats;
} cf_exec_req_t;

typedef struct {
  cf_backend_t *be;          /* borrowed */
  int n_loaders;             /* loader threads per run (>= 1) */
  const cf_exec_ops_t *ops;  /* the data path */
  void *dev;                 /* its state (CPU: be; GPU: a cf_exec_gpu_t), borrowed */
  struct cf_mempool_s *pool; /* NULL (unbounded, today's path) or the budget: cf_exec_set_pool */
  int budget;                /* the budget mode (cf_exec_set_pool, cf_exec_set_budget_mode) */
} cf_exec_t;

/* Chunks of C tokens inside [0, present_tokens) an engine of layout `lay` serves as context
 * (neither loaded nor computed): all of them for a whole-head engine, none for a TP shard. */
static inline int cf_exec_present_chunks(const cf_kv_layout_t *lay, int present_tokens, int C) {
  if (present_tokens <= 0 || C <= 0 || cf_kv_row_heads(lay) != lay->n_kv_heads) return 0;
  return present_tokens / C;
}

/* Init an executor on backend `be` (borrowed) with n_loaders loader threads (1..64), on the
 * CPU data path. */
int cf_exec_init(cf_exec_t *ex, cf_backend_t *be, int n_loaders);
/* The same on data path `ops` with state `dev` (borrowed; outlives the executor). */
int cf_exec_init_ops(cf_exec_t *ex, cf_backend_t *be, int n_loaders, const cf_exec_ops_t *ops,
                     void *dev);

/* Run within a memory budget (pool borrowed, outlives the executor; NULL: unbounded again).
 * Every byte a run holds — the loaders' cell buffers, each request's bookkeeping, hidden states
 * and K/V staging — then comes from the pool; nothing is allocated with malloc on the restore
 * path. Only on a data path with the budget ops (cf_exec_ops.h: the CPU one); returns CF_EINVAL
 * on another. What it changes (the bound):
 *   - staging of layer l is made when the compute first needs it, holds rows [0, E_l) only
 *     (E_l: the end of the last chunk computed at l), and goes back to the pool as soon as the
 *     last computed chunk of layer l is done (loaded cells that arrive before it exists are
 *     gathered from the engine's blocks, bit for bit); hidden states hold rows [0, E_0) and go
 *     back when the request ends;
 *   - a request starts computing (is admitted) when its hidden states and one staging block of
 *     E_0 rows fit; it keeps that block (as a spare between layers) until it ends, so an admitted
 *     request always progresses; more layers at once only when the pool has room;
 *   - when a step's buffers do not fit, the request leaves its plan's compute order (work-
 *     conserving from then on, the layers it holds first) and the compute waits for memory a
 *     finishing layer or request gives back; never an error, unless nothing else holds memory
 *     and the request alone exceeds the budget (CF_ENOMEM naming the bytes);
 *   - load failures raise chunks and so can grow a request's working set while others hold the
 *     rest: when the loaders are done and every request waits on memory another waiting one
 *     holds, the lowest-priority holder gives all of it back and computes again later (its
 *     chunks from layer 0; cells already in the engine are not written twice).
 * So a run's working memory is at most the pool: per admitted request 2 x E_0 x hidden fp32 plus
 * 2 x E_l x row fp32 per layer in flight, plus n_loaders cell buffers and O(cells) bookkeeping. */
int cf_exec_set_pool(cf_exec_t *ex, struct cf_mempool_s *pool);
/* The budget mode without a host pool: the data path's own pool bounds its working memory (the
 * GPU path's device arena, cf_exec_gpu_set_budget); bookkeeping and loader buffers from the C
 * library as without a budget. Same errors as cf_exec_set_pool. */
int cf_exec_set_budget_mode(cf_exec_t *ex);

/* Validate every request of the batch against the model and its engine buffer: token count,
 * chunk size, staircase values, sources where cells are loaded, block table size and range.
 * Returns 0 or CF_EINVAL / CF_ERANGE / CF_ESHAPE with a detail naming request and field. */
int cf_exec_validate(const cf_exec_t *ex, const cf_exec_req_t *r);

/* Execute the batch `reqs[0..n)`; array order is the compute priority. Blocks until every
 * request is complete or failed. Returns 0 when all succeeded, else the first request's error
 * (each request's own outcome is in reqs[i].err, its readiness slot status and stats).
 * Validation errors are returned before anything runs. CF_ENOMEM if buffers can't be had. */
int cf_exec_run(cf_exec_t *ex, cf_exec_req_t *reqs, int n);

#endif
