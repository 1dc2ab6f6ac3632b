/* cf_remote — the remote tier (tier 3): chunks kept in a Redis / Valkey server or a Redis Cluster
 * shared by several nodes, so that a prefix saved on one node restores on any other.
 *
 * Keys (readable, so operators can SCAN them):
 *   cell   <ns>:<fingerprint hex>:<chunk tokens>:<dtype>:{<chunk key hex>}:<layer>
 *   marker <ns>:<fingerprint hex>:<chunk tokens>:<dtype>:{<chunk key hex>}:m
 * The fingerprint, chunk size and dtype in every key keep two models (or two chunk sizes, or
 * dtypes) apart: they never share a key. The chunk key inside {} is the cluster hash tag: a
 * chunk's cells and marker live on one node, so one chunk is one pipeline to one node.
 *
 * Values: a 48-byte header (magic, version, dtype, layer, tokens, the chunk key, xxh3-64 over
 * header and payload) and the cell's bytes ([2][n_tokens][n_kv][hd], the store's layout). A read
 * checks all of it: a value of another key, layer, shape or with a flipped bit is CF_ECORRUPT
 * (counted; the chunk's marker is deleted so lookups stop offering it), a missing key is
 * CF_ENOTFOUND, a dead node or timeout CF_EIO; the caller recomputes. Never wrong KV.
 *
 * A chunk is visible (cf_remote_lookup) once its marker exists; the marker is written only after
 * every cell of the chunk was stored (a second pipeline), so a save cut by a dead node or a full
 * Redis (maxmemory + noeviction answers OOM) leaves no marker. Under an evicting maxmemory policy
 * Redis may drop cells of a visible chunk: those reads miss and the cells are recomputed.
 *
 * Writes: cf_remote_put_async copies a chunk into a bounded queue (queue_bytes) that one writer
 * thread drains, several chunks per pipeline; when the queue is full the chunk is not written to
 * the remote tier (counted: put_dropped) and the caller is never blocked. The writer first asks
 * EXISTS for each queued chunk's marker and skips those already there (put_skipped). Reads and lookups use a
 * pool of connections (one per concurrent caller), never the caller's event loop.
 */
#ifndef CF_REMOTE_H
#define CF_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "store/cf_redis.h"
#include "store/cf_store.h"

typedef struct {
  const char *url;         /* remote_url (cf_redis_url_parse) */
  const char *password;    /* remote_password ("" / NULL: no AUTH) */
  const char *ns;          /* key namespace (default "cf") */
  int timeout_ms;          /* per connect and per reply (default 1000) */
  uint64_t queue_bytes;    /* write-back queue cap (default 256 MiB) */
  int ttl_s;               /* EX on every key (0: none; Redis's maxmemory policy decides) */
  int pool;                /* connections for readers (default 8) */
  int writer;              /* run the write-back thread (default 1) */
} cf_remote_config_t;

void cf_remote_config_default(cf_remote_config_t *c);

typedef struct cf_remote_s cf_remote_t;

/* Open the remote tier for chunks of geometry g (dtype set). Does not need the server up: the
 * daemon starts and serves while Redis is down; reads and writes fail (misses) until it is back.
 * Returns 0, CF_EINVAL (bad URL, named), CF_ENOMEM. */
int cf_remote_open(const cf_remote_config_t *cfg, const cf_store_geom_t *g, cf_remote_t **out);
/* Stop the writer (chunks still queued are dropped: call cf_remote_flush first to keep them) and
 * close every connection. NULL is a no-op. */
void cf_remote_close(cf_remote_t *r);

/* The key of cell `layer` of chunk `key` (layer < 0: the marker) into buf; returns its length. */
size_t cf_remote_key(const cf_remote_t *r, const cf_store_key_t *key, int layer, char *buf, size_t n);

/* How many leading chunks of keys[0..n) the remote tier holds (markers present; one pipeline).
 * A node that does not answer makes its chunks absent. */
size_t cf_remote_lookup(cf_remote_t *r, const cf_store_key_t *keys, size_t n);
/* Every key of keys[0..n), not only a leading run (one pipeline): hit[i] = 1 when the remote
 * tier holds chunk i, else 0. Returns how many it holds. */
size_t cf_remote_lookup_each(cf_remote_t *r, const cf_store_key_t *keys, size_t n, uint8_t *hit);

/* Queue chunk `key` (n_tokens tokens, cells[l] as cf_store_save takes them; copied) for the
 * writer. Returns 0, or CF_ENOSPC when the queue is full (dropped, counted), CF_ESHUTDOWN. */
int cf_remote_put_async(cf_remote_t *r, const cf_store_key_t *key, uint32_t n_tokens,
                        const void *const *cells);
/* Write one chunk now (cells then marker). Returns 0, CF_EIO (a node did not answer), CF_ENOSPC
 * (Redis refused: maxmemory), CF_EPROTO (another error reply). */
int cf_remote_put(cf_remote_t *r, const cf_store_key_t *key, uint32_t n_tokens,
                  const void *const *cells);
/* Wait until every chunk queued before the call was written or dropped (timeout_ms < 0: no limit).
 * Returns 0 or CF_ETIMEDOUT. */
int cf_remote_flush(cf_remote_t *r, int timeout_ms);

/* One cell to read. */
typedef struct {
  cf_store_key_t key; /* in */
  uint32_t layer;     /* in */
  int status;         /* out: 0, CF_ENOTFOUND, CF_ECORRUPT, CF_EIO */
  uint32_t n_tokens;  /* out (status 0) */
  const uint8_t *data;/* out (status 0): the cell's bytes, valid until cf_remote_get_release */
  size_t bytes;       /* out (status 0) */
} cf_remote_cell_t;

/* Fetch cells[0..n) in one pipeline and verify each (see the header comment). The bytes stay in
 * the replies (no copy) until cf_remote_get_release(h). Returns 0 with *h set (per-cell statuses
 * in cells[]), or CF_ENOMEM. */
typedef struct cf_remote_batch_s cf_remote_batch_t;
int cf_remote_get(cf_remote_t *r, cf_remote_cell_t *cells, size_t n, cf_remote_batch_t **h);
void cf_remote_get_release(cf_remote_t *r, cf_remote_batch_t *h);
/* The same pipeline, streamed: fn(ud, i, &cells[i]) for every i in order, exactly once, as soon as
 * cell i and those before it are in (c->data valid during the call only); each reply is freed
 * right after, so a pipeline of big cells holds one at a time, not all of them (what the
 * executor's remote source uses). Returns 0 (statuses in cells[]) or CF_ENOMEM (no call made). */
typedef void (*cf_remote_cell_fn)(void *ud, size_t i, const cf_remote_cell_t *c);
int cf_remote_get_each(cf_remote_t *r, cf_remote_cell_t *cells, size_t n, cf_remote_cell_fn fn, void *ud);
/* Convenience: fetch one cell into dst (dst_bytes capacity). Returns its status. */
int cf_remote_read(cf_remote_t *r, const cf_store_key_t *key, uint32_t layer, void *dst,
                   size_t dst_bytes, uint32_t *n_tokens);

/* Drop a chunk (marker then cells). Returns 0, CF_EIO. */
int cf_remote_remove(cf_remote_t *r, const cf_store_key_t *key);

/* Operator scan (cacheflowctl store verify --remote): every marker of this geometry's prefix on
 * every master, each chunk's cells fetched and verified. Counts chunks ok / damaged (a cell
 * missing or corrupt) and cells checked. Returns 0 after a full pass, or CF_EIO. */
typedef struct {
  uint64_t chunks_ok, chunks_damaged, cells_checked, cells_missing, cells_corrupt;
  char first_damage[256];
} cf_remote_verify_t;
int cf_remote_verify(cf_remote_t *r, cf_remote_verify_t *out);

typedef struct {
  uint64_t lookups, lookup_hits;         /* chunks asked / found */
  uint64_t cells_read, bytes_read, cells_missing, cells_corrupt, read_errors;
  uint64_t chunks_written, bytes_written, put_dropped, put_oom, put_errors;
  uint64_t put_skipped;                  /* queued chunks the remote already held (not rewritten) */
  uint64_t promoted, promote_skipped, promote_failed; /* remote hits saved into the local tiers by the
                                            store (cf_store_promote_*); skipped: budget full; failed:
                                            the local save refused */
  uint64_t queue_bytes, queue_chunks;    /* now */
  uint64_t read_ns, read_batches;        /* time in GET pipelines (latency: read_ns / read_batches) */
  uint64_t write_ns, write_batches;
  int connected;                         /* 1 when the last command reached the server (every node) */
  cf_redis_stats_t redis;                /* summed over the pool */
} cf_remote_stats_t;
void cf_remote_get_stats(cf_remote_t *r, cf_remote_stats_t *out);
/* The store's promoter reports each outcome here, so the tier's counters carry them. */
enum { CF_REMOTE_PROMOTED, CF_REMOTE_PROMOTE_SKIPPED, CF_REMOTE_PROMOTE_FAILED };
void cf_remote_count_promotion(cf_remote_t *r, int result);

/* Measure the read rate of cells: write one full cell under a probe key, read it back in
 * pipelines of `depth` GETs (`rounds` of them), delete it. *Bps = bytes / time of the reads.
 * Returns 0, or CF_EIO (the server is down: no rate). For the planner's starting remote rate. */
int cf_remote_probe(cf_remote_t *r, int depth, int rounds, double *Bps);

/* Current URL, for logs ("redis+cluster://..."). */
const char *cf_remote_url(const cf_remote_t *r);

#endif
