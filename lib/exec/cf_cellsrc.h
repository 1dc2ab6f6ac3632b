/* cf_cellsrc — where the executor's LOADED cells come from.
 *
 * A cell is the K and V of one chunk at one layer: K then V, each [C][n_kv_heads][head_dim]
 * elements of the source's dtype (f32, bf16 or f16: the store's KV dtype; post-RoPE), C =
 * chunk tokens. The executor copies these bytes unchanged into engine blocks of the same dtype. A source serves the cells of chunks it holds; the
 * executor passes back the opaque `ref` the planner got for that chunk (a pinned store entry,
 * a key, an index) together with the layer. lib/store's tiers plug in behind this interface;
 * tests and benchmarks use the in-memory source below.
 *
 * Two ways to serve a cell:
 *   acquire/release (optional, zero-copy): point at the cell's K and V rows where they lie
 *     (the CPU tier), valid until release; the executor copies straight into the engine blocks.
 *   read (required): copy the cell into a caller buffer, K then V (the SSD tier reads it
 *     with O_DIRECT straight into it: the executor's buffers are 4096-aligned).
 *   read_stream (optional): a run of cells in order with several reads in flight (queue depth
 *     beyond one read per loader thread); the executor prefers it for runs of cells it loads.
 * Both return 0, CF_ENOTFOUND (the chunk was evicted), CF_ECORRUPT (checksum mismatch) or
 * CF_EIO. On any error the executor recomputes the cell instead: a restore never hands out
 * wrong KV.
 */
#ifndef CF_CELLSRC_H
#define CF_CELLSRC_H

#include <stddef.h>
#include <stdint.h>

#include "exec/cf_ratelimit.h"
#include "model/cf_model.h"

typedef struct cf_cellsrc_s cf_cellsrc_t;

/* How a streamed read (cf_cellsrc_t.read_stream) talks back to the executor. */
typedef struct {
  /* Right before cell i's read is issued (in order): 0 to read it; CF_EAGAIN (only when
   * wait = 0: earlier cells are still outstanding) to be asked again after those were handed
   * over; another negative CF_E* code to skip it (it then reaches done() with that status).
   * The executor checks cancellation and takes the bytes from the tier's rate limiter here
   * (sleeping on it only when wait = 1). */
  int (*issue)(void *ud, int i, int wait);
  /* Cell i, in order, exactly once: status 0 and its K and V rows (valid during the call
   * only), or status CF_E* (k, v NULL). */
  void (*done)(void *ud, int i, const void *k, const void *v, int status);
  void *ud;
} cf_cellsrc_stream_t;

struct cf_cellsrc_s {
  const char *tier;       /* "cpu", "ssd", ...: stats are kept per tier index below */
  int tier_index;         /* 0 .. CF_EXEC_MAX_TIERS-1 */
  cf_ratelimit_t *limit;  /* NULL: unlimited */
  cf_dtype_t dtype;       /* element type of the cells (must equal the engine buffer's) */
  int (*read)(cf_cellsrc_t *s, void *ref, int layer, void *kv);
  int (*acquire)(cf_cellsrc_t *s, void *ref, int layer, const void **k, const void **v,
                 void **hold);
  void (*release)(cf_cellsrc_t *s, void *hold);
  /* Optional: cells (refs[i], layers[i]), i in [0, n), with several reads in flight (the SSD
   * tier: a ring of O_DIRECT io_uring reads), each handed to cb->done in order, exactly once.
   * Returns 0, or a CF_E* code when the stream itself failed: cells from the first one done()
   * did not get on were not handed over (the executor recomputes them). Memory: the source's
   * own bounded buffers (per calling thread). */
  int (*read_stream)(cf_cellsrc_t *s, int n, void *const *refs, const int *layers,
                     const cf_cellsrc_stream_t *cb);
  void *ctx;
};

/* In-memory source: cells[chunk][layer] = K rows then V rows (chunk_tokens rows each), with
 * an optional fault table fail[chunk * n_layers + layer] (0 = serve, else the CF_E* code to
 * return: tests inject evictions and checksum failures through it). `ref` is the chunk index
 * cast to a pointer (CF_CELLSRC_REF). Thread-safe: read-only after init. */
typedef struct {
  cf_cellsrc_t src;
  const uint8_t *cells;   /* [n_chunks][n_layers][2][chunk_tokens][row] elements of `dtype` */
  int n_chunks, n_layers, chunk_tokens;
  size_t row;             /* elements per token row: n_kv_heads * head_dim */
  size_t elem;            /* bytes per element */
  const int *fail;        /* NULL or [n_chunks * n_layers] */
} cf_cellsrc_mem_t;

#define CF_CELLSRC_REF(c) ((void *)(intptr_t)(c))

void cf_cellsrc_mem_init(cf_cellsrc_mem_t *m, const char *tier, int tier_index, cf_dtype_t dtype,
                         const void *cells, int n_chunks, int n_layers, int chunk_tokens,
                         size_t row, const int *fail, cf_ratelimit_t *limit);

#endif
