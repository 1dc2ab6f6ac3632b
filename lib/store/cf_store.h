/* cf_store — the tiered KV store: chunk-addressed CPU and SSD tiers that survive crashes and
 * never serve wrong bytes.
 *
 * Vocabulary (see shared/DESIGN.md §1, §3):
 *   chunk  C consecutive tokens of a prefix, named by a 128-bit chained key (cf_store_chain_keys).
 *   cell   the K and V of one chunk for one layer, laid out [2][t][n_kv_heads][head_dim] in the
 *          model dtype, where t = the chunk's token count (C, or fewer for a partial last chunk).
 *   slot   the fixed space one chunk occupies in a tier: n_layers cells, each starting on a
 *          4096-byte boundary (cell_stride = round_up(cell_bytes(C), 4096)), so a single cell can be
 *          read with O_DIRECT and a CPU slot can be written to SSD without a bounce copy.
 *
 * Tiers
 *   CPU  one region (mmap, huge pages when available, or a region the caller supplies — e.g.
 *        cudaHostAlloc'd pinned memory) carved into fixed slots; byte cap; LRU or S3-FIFO eviction.
 *        Readers pin a chunk (refcount) so eviction never frees bytes being copied.
 *   SSD  data files data.NNN preallocated (fallocate) in slot units under the store directory,
 *        opened O_DIRECT (buffered + fdatasync on filesystems that refuse O_DIRECT), written and
 *        read with io_uring. Every cell carries an xxh3-64 checksum kept in the index journal and
 *        verified on every read. The journal is append-only with fixed-size records, each with its
 *        own xxh3-64 CRC; it is replayed at open (a torn tail is ignored and counted, never trusted).
 *        A background thread writes back (spills) cold chunks from the CPU tier.
 *
 * DURABLE-SAVE CONTRACT
 *   When cf_store_save() with CF_STORE_SAVE_DURABLE returns 0, or cf_store_flush() returns 0 for
 *   chunks saved before it was called, the chunk survives kill -9 of the process (and, as far as
 *   the device honours fdatasync, power loss): its data was written and fdatasync'ed before its
 *   journal record, and the journal was fdatasync'ed after it. Before that a chunk may be lost,
 *   but it is never served corrupt: a chunk becomes visible on SSD only after its journal record
 *   commits, and every read verifies each cell's checksum (a mismatch drops the chunk, is counted
 *   in the statistics and returns CF_ECORRUPT; the caller recomputes).
 *   A durable chunk goes only by a journaled drop: cf_store_remove(), an SSD-cap eviction (the
 *   SSD tier is a cache too; its DEL record is appended before the slot is reused — also when an
 *   open with a smaller cap shrinks the tier, see cf_store_open; under the cost policy also a
 *   chunk the full SSD tier refuses on arrival because it is worth less than every chunk it holds:
 *   it is then only in the CPU tier, not durable, and is weighed again when the CPU tier evicts
 *   it: admitted then, or gone) or a failed checksum. The CPU tier never drops a chunk that is not on SSD yet to make room: it writes it
 *   back first. Only when that write-back fails (SSD full, I/O error) is the chunk dropped
 *   unwritten, and the next cf_store_flush() then returns that error instead of 0.
 *
 * Concurrency: any number of threads may look up, pin and read while other threads save; one
 * background thread spills and evicts. The index lock is never held across I/O. A cf_store_reader_t
 * (one io_uring) belongs to one thread at a time.
 *
 * The store does not depend on the model module: the caller describes the KV geometry.
 */
#ifndef CF_STORE_H
#define CF_STORE_H

#include <stddef.h>
#include <stdint.h>

/* 128-bit chunk key, XXH3-128 canonical (big-endian) bytes. */
typedef struct {
  uint8_t b[16];
} cf_store_key_t;

/* What the KV of one chunk looks like. A store directory records it and refuses another. */
typedef struct {
  uint8_t fingerprint[16]; /* model fingerprint (cf_model_t.fingerprint) */
  uint32_t dtype_size;     /* bytes per element: 4 fp32, 2 bf16/fp16 */
  uint32_t chunk_tokens;   /* C */
  uint32_t n_layers;
  uint32_t n_kv_heads;
  uint32_t head_dim;
  uint32_t dtype;          /* element type, CF_STORE_DT_* (recorded in the header, so a bf16
                            * store is never read as f16). 0 (unset): taken from dtype_size —
                            * 4 is F32; 2 stays an unnamed 2-byte type (library users that do
                            * not care; the daemon always sets it). */
  uint8_t weights[16];     /* digest of the model's weight bytes (the daemon's
                            * cf_model_info_weights_digest), all zero: none. A store records the
                            * first one it is opened with (DIR/weights) and refuses another:
                            * the fingerprint does not cover the weights' values, so KV saved
                            * under other weights of the same shapes would be served as this
                            * model's. The remote tier's keys carry it too. */
} cf_store_geom_t;

/* KV element types a store records: the store does not depend on lib/model, so it has its own
 * codes (the same numbers as the proto's DType). */
enum { CF_STORE_DT_UNSET = 0, CF_STORE_DT_F32 = 1, CF_STORE_DT_BF16 = 2, CF_STORE_DT_F16 = 3 };
/* "f32", "bf16", "f16", "unrecorded 2-byte" (unset with dtype_size 2), "?" otherwise. */
const char *cf_store_dtype_name(uint32_t dtype, uint32_t dtype_size);

/* Bytes of one full cell: 2 * C * n_kv_heads * head_dim * dtype_size. */
size_t cf_store_cell_bytes(const cf_store_geom_t *g);
/* Bytes of a cell of a chunk holding `n_tokens` tokens (a partial last chunk). */
size_t cf_store_cell_bytes_n(const cf_store_geom_t *g, uint32_t n_tokens);

typedef enum { CF_STORE_EVICT_LRU = 0, CF_STORE_EVICT_S3FIFO = 1, CF_STORE_EVICT_COST = 2 } cf_store_evict_t;

/* EVICTION BY RESTORATION TIME SAVED (CF_STORE_EVICT_COST). A chunk's value in a tier is what its
 * presence there saves a restore: recomputing it (every layer, at its position in the prefix)
 * minus loading it from that tier. The store does not know the cost model (lib/sched is a
 * sibling), so the daemon hands it this table, filled from the model it plans with. Chunk index
 * c (position c * C tokens) falls in bucket min(c / bucket_chunks, CF_STORE_COST_BUCKETS - 1);
 * a partial chunk of n tokens is worth n / C of its bucket's full chunk. Every slot has the same
 * size, so "per byte" and "per chunk" order alike. bucket_chunks 0: no table, every chunk worth
 * 1 (the policy is then GreedyDual frequency x recency alone). */
#define CF_STORE_COST_BUCKETS 64
typedef struct {
  uint32_t bucket_chunks;
  float saved_s[2][CF_STORE_COST_BUCKETS]; /* [0] CPU tier, [1] SSD tier: seconds, > 0 */
} cf_store_cost_t;

/* REMOTE: the remote tier (cf_remote: Redis / Redis Cluster shared by several nodes), when the
 * store was opened with remote_url. */
typedef enum { CF_STORE_TIER_NONE = 0, CF_STORE_TIER_CPU = 1, CF_STORE_TIER_SSD = 2,
               CF_STORE_TIER_REMOTE = 3 } cf_store_tier_t;

/* Allocator hook for the CPU region (e.g. cudaHostAlloc). Must return 4096-aligned memory. */
typedef void *(*cf_store_alloc_fn)(size_t bytes, void *ud);
typedef void (*cf_store_free_fn)(void *p, size_t bytes, void *ud);

typedef struct {
  uint64_t cpu_bytes;         /* CPU tier byte cap (0: no CPU tier) */
  uint64_t ssd_bytes;         /* SSD tier byte cap (0: no SSD tier; the directory still holds the header) */
  cf_store_evict_t cpu_evict; /* eviction policy of the CPU tier, and of the SSD tier: LRU gives
                               * up the chunk least recently saved or read; S3-FIFO the oldest
                               * save, sending one read since back to the head (at most 3 times);
                               * COST the lowest priority ln(f x saved) + t / tau, the value
                               * decayed by the traffic since the chunk was last used (see
                               * cf_store_set_cost, cf_store_cost.c): a heap per tier, O(log n) */
  cf_store_cost_t cost;       /* COST: the value table (zeroed: every chunk worth 1) */
  int spill;                  /* run the background write-back thread (default on via cf_store_config_default) */
  double spill_watermark;     /* spill only when CPU occupancy >= this fraction (0: always write back) */
  int promote_on_read;        /* whole-chunk SSD reads also insert the chunk in the CPU tier */
  int readonly;               /* open for inspection (verify): no writes, no CPU tier, no thread */
  int buffered_io;            /* 1: page-cache I/O + fdatasync instead of O_DIRECT (also chosen
                               * automatically when the filesystem refuses O_DIRECT with EINVAL) */
  uint64_t file_bytes;        /* max bytes per data file (default 256 MiB, rounded to slots) */
  uint64_t journal_slack;     /* rewrite the journal (at open and while running) when it holds
                               * more than 2 x live records + this many (default 65536) */
  /* COST, evaluation only (bench_eval_evict's clairvoyant reference row): when set, a chunk's
   * priority in tier (0 CPU, 1 SSD) is rank(rank_ud, key, chunk index, tier) instead (lower
   * leaves first), asked when the chunk arrives in a tier, is used (read, pinned) or
   * re-indexed; the daemon never sets it. */
  double (*rank)(void *rank_ud, const cf_store_key_t *key, uint32_t chunk_index, int tier);
  void *rank_ud;
  cf_store_alloc_fn cpu_alloc;/* NULL: mmap (MAP_HUGETLB tried first) */
  cf_store_free_fn cpu_free;
  void *cpu_alloc_ud;
  /* Remote tier (cf_remote.h), when remote_url is set: every chunk a save adds to this node is
   * queued for write-back there (remote_queue_bytes bounds the queue; full: not written, counted),
   * cf_store_lookup_all looks past the local tiers into it, cf_store_read falls back to it. The
   * store opens while the remote server is down (reads miss until it is back). Strings are copied. */
  const char *remote_url, *remote_password, *remote_ns;
  int remote_timeout_ms;       /* 0: 1000 */
  uint64_t remote_queue_bytes; /* 0: 256 MiB */
  int remote_ttl_s;            /* 0: keys without expiry */
  /* Promotion of remote hits (cf_store_promote_begin): bytes of chunks staged or queued for it at
   * once; 0: 256 MiB, < 0: no promotion (benchmarks that read the remote tier every time). */
  int64_t remote_promote_bytes;
} cf_store_config_t;

/* Defaults: 1 GiB CPU, 4 GiB SSD, LRU, spill on, watermark 0, no promotion. */
void cf_store_config_default(cf_store_config_t *cfg);

typedef struct {
  uint64_t cpu_bytes_cap, cpu_bytes_used, cpu_chunks, cpu_dirty;
  /* CPU-tier chunks whose write-back is in flight: off the dirty list (not in cpu_dirty), not
   * yet published on SSD, refused, or back on the list. cpu_dirty and cpu_spilling both 0 is
   * the quiet state in which the spiller's outcomes are all in the other counters. */
  uint64_t cpu_spilling;
  uint64_t ssd_bytes_cap, ssd_bytes_used, ssd_chunks, ssd_file_bytes;
  uint64_t saves, save_exists;          /* saves accepted; saves of a key already present */
  uint64_t cpu_hits, ssd_hits, misses;  /* cell/chunk reads by the tier that served them */
  uint64_t remote_hits;                 /* cf_store_read calls the remote tier served */
  uint64_t remote_skipped_cheap;        /* cost policy: cheap chunks not queued for the remote tier
                                         * while its write-back queue was more than half full */
  uint64_t cpu_evictions, cpu_evict_dirty; /* dirty: evicted before it reached SSD (lost) */
  /* waits of a CPU-tier eviction whose dirty victim's write-back found no SSD slot while other
   * threads' write-backs or SSD reads held them (it waits for those, then writes back again) */
  uint64_t cpu_evict_waits;
  uint64_t ssd_evictions, spills, promotions;
  /* cost policy: write-backs the full SSD tier refused (a refused chunk counts in ssd_evictions
   * once, when it leaves the CPU tier without being admitted on a second try), those of
   * chunks not read since they came in, and uses (restores) of refused chunks afterwards while
   * still in the CPU tier (a refusal that came too early: they proved useful) */
  uint64_t ssd_refusals, ssd_refusals_unread, ssd_refused_read;
  uint64_t ssd_evict_unread; /* cost policy: SSD victims not read since they came in */
  /* cost policy: chunks saved again while a ghost of their eviction was still remembered, by
   * whether they had been read before they left; and the read class's head start the store has
   * learnt from them (ln of the read / unread frequency factors' ratio; starts at ln 4) */
  uint64_t cost_ghost_unread, cost_ghost_read;
  double cost_read_bonus;
  /* cost policy, the CPU tier in front of an SSD tier: its read class's head start (units of
   * tau; 0: LRU order) as chosen by the best of its shadow caches, and how often the choice
   * changed (lib/store/cf_store_cost_cpu.c) */
  double cost_cpu_head_start;
  uint64_t cost_cpu_switches;
  int cost_cpu_rate_order; /* eviction = cost: 1 while the CPU tier ranks by reuse rate (cf_store_cost_rate.c) */
  /* cost policy, the value tier's frequency (lib/store/cf_store_cost.c, cf__freq_*): the learnt
   * weight w of chunks its sketch counted twice or more (within [0, 3]; 0 without a sketch), and
   * the write-backs the full SSD tier deferred to the CPU tier's eviction (cf__cost_defer: a
   * subset of ssd_refusals, weighed again when the CPU tier gives the chunk up) */
  double cost_freq_w;
  uint64_t cost_deferred;
  /* cost policy: 1 while first write-backs into the full SSD tier are deferred, and how often
   * that changed (cf_store_cost.c, cf__defer_learn: only while the SSD tier refuses many) */
  int cost_defer_on;
  uint64_t cost_defer_switches;
  /* cost policy, those deferred chunks' write-backs once the SSD tier admits them: done by the
   * spill thread ahead of a save's eviction, the CPU copy given up once on SSD (a slot kept
   * for the next save); handed to the spill thread by a save's eviction that took a clean
   * victim (a CPU copy of an SSD chunk) instead; and done by the evicting thread itself (a
   * save waits on them) */
  uint64_t cpu_evict_ahead, cpu_evict_handoffs, cpu_evict_writebacks;
  uint64_t corrupt_cells, corrupt_chunks;  /* checksum mismatches found on read; chunks dropped */
  uint64_t journal_records, journal_torn, journal_damaged, journal_dropped, journal_compactions;
  uint64_t enospc, io_errors;
  int ssd_direct;                       /* 1 when the data files are O_DIRECT */
  int cpu_hugepages;                    /* 1 when the CPU region got MAP_HUGETLB pages */
} cf_store_stats_t;

typedef struct cf_store_s cf_store_t;

/* Open (creating when absent) the store in directory `dir`.
 * `geom` NULL is allowed only with cfg->readonly (take the geometry from the header).
 * `cfg` NULL: cf_store_config_default().
 * Errors: CF_EACCES / CF_ENOENT (directory unusable, named), CF_EMISMATCH (the header records
 * another fingerprint, dtype, chunk size or shape: the message names what differs), CF_EFORMAT
 * (header truncated or not a store), CF_ENOMEM (CPU region), CF_EIO.
 * An SSD cap smaller than the data files hold shrinks the tier here: the chunks the eviction
 * policy gives up are dropped (journaled), the kept ones that lie past the cap are moved below
 * it, the journal is rewritten, and only then are the files cut. A kill at any point leaves every
 * chunk either intact or dropped by a journaled record; the next open finishes the shrink.
 * A larger cap grows the files as chunks arrive.
 * On success *out is owned by the caller: cf_store_close(). */
int cf_store_open(const char *dir, const cf_store_geom_t *geom, const cf_store_config_t *cfg,
                  cf_store_t **out);
/* Stop the spiller, wait for in-flight I/O, release everything. Dirty CPU-only chunks are lost
 * unless cf_store_flush() was called. When reads changed the SSD eviction order, the journal is
 * rewritten in that order first, so the next open evicts (or shrinks) as this process would
 * have; after a crash the order is the journal's (saves, and the last rewrite). NULL is a no-op. */
void cf_store_close(cf_store_t *st);

const cf_store_geom_t *cf_store_geom(const cf_store_t *st);
void cf_store_get_stats(cf_store_t *st, cf_store_stats_t *out);

/* ---------------------------------------------------------------- keys */

/* key_i = XXH3-128(fingerprint ‖ key_{i-1} ‖ token ids of chunk i as little-endian int32), key_{-1}
 * = 16 zero bytes. Writes n / C keys (full chunks only) and returns that count. */
size_t cf_store_chain_keys(const uint8_t fingerprint[16], const int32_t *tokens, size_t n,
                           uint32_t C, cf_store_key_t *keys_out);
/* Like cf_store_chain_keys, plus, when n % C != 0, one more key for the partial last chunk:
 * XXH3-128(fingerprint ‖ parent ‖ tokens ‖ "partial" ‖ count), distinct from any full chunk's.
 * Returns ceil(n / C). keys_out must hold that many. */
/* Chunk keys hashed by this process so far (every thread): tests count them per restore. */
uint64_t cf_store_keys_hashed(void);
size_t cf_store_chain_keys_partial(const uint8_t fingerprint[16], const int32_t *tokens, size_t n,
                                   uint32_t C, cf_store_key_t *keys_out);

/* How many leading keys of keys[0..n) are present in some tier; tiers_out[i] (may be NULL) gets
 * the fastest tier holding chunk i for i < the returned count. */
size_t cf_store_lookup(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out);

/* Like cf_store_lookup, and past the local tiers the remote tier (one pipelined round trip):
 * tiers_out[i] = CF_STORE_TIER_REMOTE for the chunks only it holds. Without a remote tier it is
 * cf_store_lookup. Blocks on the network (remote_timeout_ms at worst): call it from worker
 * threads, not an event loop. */
size_t cf_store_lookup_all(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out);

/* Every chunk, not only the leading run: keys chain over token ids alone (key_i names tokens
 * [0, (i+1) C) whatever is stored), so a chunk is found without its predecessors. tiers_out[i]
 * (required) gets the fastest tier holding chunk i — local tiers first, then the remote tier for
 * the local misses (one pipelined round trip) — or CF_STORE_TIER_NONE. Returns how many chunks
 * are stored. Blocks on the network like cf_store_lookup_all. */
size_t cf_store_lookup_each(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out);

/* Promotion of remote hits into the local tiers. A restore that reads a whole chunk from the remote
 * tier stages its cells (as they arrive, verified) in a buffer from cf_store_promote_begin, and
 * hands it over with cf_store_promote_commit once every layer arrived verified; a background
 * thread then saves it here (CPU tier, spilled to SSD as any save; not written back to the remote
 * tier, which holds it), so the next restore on this node reads it locally. The staged and queued
 * bytes are bounded (remote_promote_bytes): past it begin returns NULL (counted in cf_remote_stats_t) and the restore
 * goes on unchanged; nothing here ever waits. A chunk with a failed cell is never committed:
 * cf_store_promote_abort frees its buffer.
 * begin: a buffer of n_layers full cells (cell l at l * cf_store_cell_bytes(geom)), or NULL (no remote
 * tier, promotion off, budget full). commit: takes the buffer (full chunk: chunk_tokens tokens). */
void *cf_store_promote_begin(cf_store_t *st);
void cf_store_promote_commit(cf_store_t *st, const cf_store_key_t *key, void *buf);
void cf_store_promote_abort(cf_store_t *st, void *buf);
/* Wait until every committed promotion was saved or failed (timeout_ms < 0: no limit). 0 or
 * CF_ETIMEDOUT. For tests and tools. */
int cf_store_promote_flush(cf_store_t *st, int timeout_ms);

/* The remote tier (NULL when the store has none): reads, stats, verify. Owned by the store. */
struct cf_remote_s;
struct cf_remote_s *cf_store_remote(cf_store_t *st);

/* ---------------------------------------------------------------- save */

enum { CF_STORE_SAVE_DURABLE = 1,
       CF_STORE_SAVE_NO_REMOTE = 2 /* not queued for the remote write-back (it came from there) */ };

/* Save one chunk of `n_tokens` tokens (1..C). cells[l] points at layer l's cell,
 * cf_store_cell_bytes_n(geom, n_tokens) bytes, [2][n_tokens][n_kv][hd]. The bytes are copied.
 * Without CF_STORE_SAVE_DURABLE the chunk goes to the CPU tier (or straight to SSD when there is
 * no CPU tier) and is written back later (by the spill thread, or by this call when the CPU tier
 * is full of chunks not yet on SSD: a save may then wait for SSD writes); with it, 0 means the
 * chunk is durable (see the contract).
 * Returns 0, or CF_EEXIST when the key is already stored (nothing done; but a durable save of a
 * stored key makes that chunk durable — writing it through when it is only in the CPU tier — and
 * returns 0), CF_EBUSY when every CPU slot is pinned, CF_ENOSPC (SSD full: the chunk stays in the
 * CPU tier when it has one), CF_EIO, CF_EINVAL (also: durable save without an SSD tier). */
int cf_store_save(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                  const void *const *cells, unsigned flags);

/* Write back every chunk that is only in the CPU tier and fdatasync data and journal: every chunk
 * saved before the call (and not removed or SSD-evicted since) is then durable. Returns 0,
 * CF_ENOSPC or CF_EIO (named) — also when chunks saved since the previous flush were dropped
 * from the CPU tier because their write-back failed (reported once, by this flush): after an
 * error nothing saved before the call is promised durable. */
int cf_store_flush(cf_store_t *st);

/* Drop a chunk from every tier (journaled). Returns 0, CF_ENOTFOUND, or CF_EBUSY while the chunk
 * is pinned or being written (it never waits); CF_ENOSPC/CF_EIO when its DEL record cannot be
 * written: the chunk is gone now, may come back after a restart, and its SSD slot is retired
 * until then so the bytes it names stay intact. */
int cf_store_remove(cf_store_t *st, const cf_store_key_t *key);

/* Move chunks out of the CPU tier until at most `keep_bytes` are used there. With an SSD tier,
 * dirty chunks are written back first (cf_store_flush); when that fails (CF_ENOSPC, CF_EIO) only
 * chunks already on SSD are given up and the error is returned. For tests and memory pressure. */
int cf_store_evict_cpu(cf_store_t *st, uint64_t keep_bytes);

/* Like cf_store_save, naming the chunk's index in its prefix (keys are chained from the first
 * chunk, so a key always lies at the same index): the cost policy values a chunk by it. Also on
 * CF_EEXIST the stored chunk learns its index (an index is not journaled: after a restart a
 * chunk counts as index 0, the cheapest, until it is saved or offered again). */
int cf_store_save_at(cf_store_t *st, const cf_store_key_t *key, uint32_t chunk_index,
                     uint32_t n_tokens, const void *const *cells, unsigned flags);

/* Replace the cost policy's value table (any time; the daemon calls it once its cost model is
 * measured or re-fitted): every chunk's priority is recomputed with it (O(n)), each chunk
 * keeping its age (the time of its arrival or last use). No effect under the other policies. */
void cf_store_set_cost(cf_store_t *st, const cf_store_cost_t *cost);

/* ---------------------------------------------------------------- read */

/* A pin on a chunk in the CPU tier: cell l is at base + l * cell_stride, cell_bytes long.
 * The bytes stay valid (never evicted nor reused) until cf_store_unpin(). */
typedef struct {
  const uint8_t *base;
  size_t cell_stride, cell_bytes;
  uint32_t n_tokens;
  int32_t ent_; /* private */
} cf_store_pin_t;

/* Pin chunk `key` in the CPU tier. Returns 0, or CF_ENOTFOUND when it is not in the CPU tier. */
int cf_store_pin(cf_store_t *st, const cf_store_key_t *key, cf_store_pin_t *pin);
void cf_store_unpin(cf_store_t *st, cf_store_pin_t *pin);

/* Synchronous read of layers [layer0, layer0 + n_layers) of chunk `key` into dst (cells packed
 * back to back, cf_store_cell_bytes_n each). From the CPU tier when there, else from SSD with the
 * checksums verified, else from the remote tier (values verified; CF_EIO when it is down). *tier_out (may be NULL) gets the tier that served.
 * Returns 0, CF_ENOTFOUND, CF_ECORRUPT (chunk dropped, counted), CF_EIO, CF_EINVAL. */
int cf_store_read(cf_store_t *st, const cf_store_key_t *key, uint32_t layer0, uint32_t n_layers,
                  void *dst, size_t dst_bytes, int *tier_out);

/* Asynchronous cell reads: a reader owns one io_uring of `depth` entries; use it from one thread
 * at a time. Submit requests, then poll for completions. CPU-tier cells are copied at submit time
 * and complete immediately. For SSD cells dst should be 4096-aligned and the cell a multiple of
 * 4096 bytes to be read straight into dst; otherwise the reader goes through a bounce buffer. */
typedef struct cf_store_reader_s cf_store_reader_t;

typedef struct {
  cf_store_key_t key; /* in */
  uint32_t layer;     /* in */
  void *dst;          /* in: destination of cf_store_cell_bytes_n(n_tokens) bytes */
  size_t dst_bytes;   /* in: capacity of dst */
  uint64_t tag;       /* in: caller's cookie */
  int status;         /* out: 0, CF_ENOTFOUND, CF_ECORRUPT, CF_EIO, CF_EINVAL */
  int tier;           /* out: tier that served */
  uint32_t n_tokens;  /* out: tokens of the cell's chunk when status is 0 (its bytes are
                       * cf_store_cell_bytes_n(geom, n_tokens)) */
  /* private */
  int32_t ssd_slot_;
  uint32_t n_tokens_;
  uint64_t csum_;
  void *bounce_;
} cf_store_read_t;

int cf_store_reader_open(cf_store_t *st, unsigned depth, cf_store_reader_t **out);
void cf_store_reader_close(cf_store_reader_t *rd);
/* Queue `req` (which must stay alive until it completes). Returns 1 when it completed at once
 * (CPU tier, or an error: see req->status), 0 when an SSD read is in flight, CF_EAGAIN when the
 * ring is full (poll first). */
int cf_store_read_submit(cf_store_reader_t *rd, cf_store_read_t *req);
/* Wait for at least `min` completions (0: don't wait); store up to `max` completed requests in
 * done[] and return how many. */
int cf_store_read_poll(cf_store_reader_t *rd, unsigned min, cf_store_read_t **done, unsigned max);
/* In-flight SSD reads of this reader. */
unsigned cf_store_reader_inflight(const cf_store_reader_t *rd);

/* ---------------------------------------------------------------- verify (operator) */

typedef struct {
  uint64_t chunks_ok, chunks_damaged, torn_tail, journal_damaged, cells_checked;
  char first_damage[256]; /* description of the first damaged chunk or record ("" when none) */
  cf_store_geom_t geom;   /* what the header records (dtype included) */
} cf_store_verify_t;

/* fsck: open `dir` read-only (geometry from its header), replay the journal, read every cell of
 * every chunk and check its checksum. Returns 0 after a complete pass (look at the counts), or the
 * error that prevented it (CF_ENOENT, CF_EFORMAT, CF_EIO). */
int cf_store_verify_dir(const char *dir, cf_store_verify_t *out);

#endif
