/* cf_cellsrc_store — lib/store's tiers as executor cell sources.
 *
 * Before a restore runs, cf_cellsrc_store_prepare() looks its chunk keys up and pins every
 * chunk held by the CPU tier (so eviction cannot take the bytes mid-copy: DESIGN §2). The
 * executor then reads:
 *   CPU source: zero-copy — acquire() points into the pinned slot and the cell is copied once,
 *               straight into the engine's blocks;
 *   SSD source: read_stream() = the executor's runs of SSD cells through the loader thread's
 *               own staging ring (store/cf_stage_ring: ssd_depth O_DIRECT io_uring reads in
 *               flight, delivered in order into the engine's blocks, checksums verified);
 *               read() = one io_uring read per cell through the loader thread's own
 *               cf_store_reader_t (O_DIRECT straight into the loader's 4 KiB-aligned buffer,
 *               checksum verified by the store; cf_store_read's pread when io_uring is refused). A chunk evicted or corrupt since the lookup returns
 *               CF_ENOTFOUND / CF_ECORRUPT and the executor recomputes it.
 *   remote source (when the store has a remote tier, cf_remote): read_stream() = the executor's
 *               runs of remote cells as pipelined GETs, up to remote_depth cells per round trip,
 *               each verified (checksum, key, layer, shape) and handed over straight from the
 *               reply (no staging copy); read() = one GET. A missing key, a dead node, a timeout or
 *               a bad value is an error for that cell and the executor recomputes it. A chunk
 *               whose every layer arrives verified is copied aside and promoted into the local
 *               tiers (cf_store_promote_*: bounded, saved by the store's thread, not the loader).
 * Each source has its own rate limiter so benchmarks can emulate a link per tier.
 */
#ifndef CF_CELLSRC_STORE_H
#define CF_CELLSRC_STORE_H

#include <pthread.h>

#include "exec/cf_cellsrc.h"
#include "store/cf_store.h"

/* Default SSD reads in flight per loader thread: memory per loader is this many cell strides. */
#define CF_CELLSRC_SSD_DEPTH 8

/* Stats tier indices (cf_exec_stats_t.cells_loaded[]). */
enum { CF_EXEC_TIER_CPU = 0, CF_EXEC_TIER_SSD = 1, CF_EXEC_TIER_REMOTE = 2 };

/* Default remote cells per pipelined round trip (per loader thread). */
#define CF_CELLSRC_REMOTE_DEPTH 16

typedef struct {
  cf_store_key_t key;
  cf_store_pin_t pin;
  int pinned;
  /* A remote chunk's promotion (cf_store_promote_begin): its cells are copied here as they arrive
   * verified; the loader that stages the last layer commits it. NULL: not promoted. A layer is
   * claimed in promo_mask before its copy (a cell read twice is staged once), counted after it;
   * commit needs every layer counted and no failed cell. Chunks over 256 layers: not promoted. */
  uint8_t *promo;
  _Atomic uint64_t promo_mask[4];
  _Atomic unsigned promo_cells; /* layers staged */
  _Atomic int promo_bad;        /* a cell failed: never promoted */
  _Atomic int promo_committed;  /* handed to the store (which frees the buffer) */
} cf_store_chunkref_t;

typedef struct {
  cf_cellsrc_t cpu, ssd, remote; /* remote: used only when the store has a remote tier; set
                                    remote.limit after init to rate-limit it */
  cf_store_t *st;
  size_t half_bytes;    /* bytes of K in one full cell: C * n_kv * hd * element size */
  pthread_key_t reader_key; /* each loader thread's io_uring reader (closed when it exits) */
  int have_key;
  pthread_key_t ring_key;   /* each loader thread's staging ring (read_stream) */
  int have_ring_key;
  int ssd_depth;            /* ring slots = SSD reads in flight per loader thread (2..64; < 2:
                               read_stream reads one cell at a time). Set before loads start. */
  int remote_depth;         /* remote cells per pipeline (1..256), default CF_CELLSRC_REMOTE_DEPTH */
} cf_cellsrc_store_t;

/* The rate at which a restore's remote cells arrive, for the planner (tier_Bps / link_Bps):
 * link_Bps the link (an emulated one's limit, or the NIC; 0: none), probe_Bps what the server
 * delivers in pipelines of `depth` cells of cell_bytes (cf_remote_probe: round trip included;
 * 0: unknown), loaders the executor's loader threads. A loader issues a pipeline's cells on the
 * link, then waits for the replies: with two or more, another loader's cells cross the link
 * meanwhile, so the rate is the slower of link and server; with one, each pipeline's round trip
 * and transfer from the server add to its time on the link. */
double cf_cellsrc_remote_plan_Bps(double link_Bps, double probe_Bps, size_t cell_bytes, int depth, int loaders);

/* The store's KV dtype as a cf_dtype_t (util/cf_dtype.h): 0, or CF_EDTYPE when the store does not
 * record one (an unnamed 2-byte store made by the library without a dtype). */
int cf_exec_store_dtype(const cf_store_geom_t *g, cf_dtype_t *out);
/* Set g->dtype and g->dtype_size for KV dtype `t` (F32, BF16 or F16). Returns 0 or CF_EDTYPE. */
int cf_exec_geom_dtype(cf_store_geom_t *g, cf_dtype_t t);

/* Sources over store `st`; their cells are in the store's dtype (CF_EDTYPE when it records
 * none). Limits may be NULL.
 * Close with cf_cellsrc_store_close once no thread reads any more. */
int cf_cellsrc_store_init(cf_cellsrc_store_t *s, cf_store_t *st, cf_ratelimit_t *cpu_limit,
                          cf_ratelimit_t *ssd_limit);
void cf_cellsrc_store_close(cf_cellsrc_store_t *s);

/* For the first n full chunks with keys[0..n): how many leading chunks are stored, the remote
 * tier included (cf_store_lookup_all: one round trip to it when the local tiers end early) (the
 * return value, <= n); for each of those, refs[i] is filled (CPU-tier chunks pinned),
 * srcs[i] is the source to read it from and tiers[i] (may be NULL) its CF_STORE_TIER_*.
 * Release with cf_cellsrc_store_unprepare (same refs, the returned count). */
size_t cf_cellsrc_store_prepare(cf_cellsrc_store_t *s, const cf_store_key_t *keys, size_t n,
                                cf_store_chunkref_t *refs, cf_cellsrc_t **srcs, uint8_t *tiers);
/* The same over every chunk (holes: cf_store_lookup_each): srcs[i] = NULL and refs[i] zeroed
 * for a chunk no tier holds, tiers[i] (may be NULL) CF_STORE_TIER_NONE. Returns how many chunks
 * are stored; release with cf_cellsrc_store_unprepare(refs, n) (all n). */
size_t cf_cellsrc_store_prepare_each(cf_cellsrc_store_t *s, const cf_store_key_t *keys, size_t n,
                                     cf_store_chunkref_t *refs, cf_cellsrc_t **srcs, uint8_t *tiers);
void cf_cellsrc_store_unprepare(cf_cellsrc_store_t *s, cf_store_chunkref_t *refs, size_t n);

#endif
