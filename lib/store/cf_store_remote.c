/* cf_store_remote — the store's hooks to its remote tier (cf_remote): open/close with the store,
 * write-back of every chunk a save adds, lookups past the local tiers, and the synchronous read's
 * last resort. Kept in its own file so the tiers' code stays free of network concerns.
 *
 * Write-back policy: each chunk new to this node (cf_store_save returned 0) is copied into the
 * remote tier's bounded queue right away, whichever local tier it went to (write-through, async:
 * the saving thread only copies). A chunk the remote already holds (saved by another node, or
 * restored from the remote tier and saved back by the engine) is skipped by the writer after one
 * EXISTS. A full queue drops the chunk from the remote write-back only (counted); a full Redis
 * (maxmemory, noeviction) refuses it (counted as put_oom) and no marker is written. */
#include <stdlib.h>
#include <string.h>

#include "store/cf_remote.h"
#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

int cf__remote_open(cf_store_t *st) {
  if (!st->cfg.remote_url || !st->cfg.remote_url[0]) return 0;
  cf_remote_config_t c;
  cf_remote_config_default(&c);
  c.url = st->cfg.remote_url;
  c.password = st->cfg.remote_password;
  if (st->cfg.remote_ns && st->cfg.remote_ns[0]) c.ns = st->cfg.remote_ns;
  if (st->cfg.remote_timeout_ms > 0) c.timeout_ms = st->cfg.remote_timeout_ms;
  if (st->cfg.remote_queue_bytes) c.queue_bytes = st->cfg.remote_queue_bytes;
  c.ttl_s = st->cfg.remote_ttl_s;
  /* the config's strings belong to the caller: cf_remote copies what it keeps */
  st->cfg.remote_url = st->cfg.remote_password = st->cfg.remote_ns = NULL;
  int rc = cf_remote_open(&c, &st->g, &st->remote);
  if (rc) return cf_err_prefix(rc, "store %s: ", st->dir);
  CF_INFO("store %s: remote tier %s", st->dir, cf_remote_url(st->remote));
  return 0;
}

void cf__remote_close(cf_store_t *st) {
  /* give the write-back a moment to drain (a daemon's drain, a tool's exit): with the server up
   * the queue empties in milliseconds; with it down the writer fails fast (backoff), so this is
   * bounded either way, and what is left is only lost to the remote tier, not to this node */
  if (st->remote && cf_remote_flush(st->remote, 2000)) {
    CF_WARN("store %s: remote write-back still queued at close: %s", st->dir, cf_errmsg());
    cf_errclear();
  }
  cf_remote_close(st->remote);
  st->remote = NULL;
}

struct cf_remote_s *cf_store_remote(cf_store_t *st) { return st->remote; }

void cf__remote_saved(cf_store_t *st, const cf_store_key_t *key, uint32_t pos, uint32_t n_tokens,
                      const void *const *cells) {
  if (!st->remote) return;
  /* cost policy: a write-back queue more than half full takes only chunks worth at least the
   * table's average, so when it overflows the chunks it drops are cheap to recompute (the
   * front of a prefix), not dear ones (counted: remote_skipped_cheap) */
  if (st->cost_on && !cf__cost_dear(st, pos, n_tokens)) {
    uint64_t cap = st->cfg.remote_queue_bytes ? st->cfg.remote_queue_bytes : (256ull << 20);
    cf_remote_stats_t rs;
    cf_remote_get_stats(st->remote, &rs);
    if (2 * rs.queue_bytes > cap) {
      pthread_mutex_lock(&st->mu);
      st->st.remote_skipped_cheap++;
      pthread_mutex_unlock(&st->mu);
      return;
    }
  }
  if (cf_remote_put_async(st->remote, key, n_tokens, cells)) cf_errclear(); /* counted there */
}

int cf__remote_read(cf_store_t *st, const cf_store_key_t *key, uint32_t layer0, uint32_t n_layers, void *dst,
                    size_t dst_bytes) {
  if (!st->remote) return CF_ENOTFOUND;
  /* layer by layer into dst: each cell's size follows from its tokens, known once read */
  size_t off = 0;
  for (uint32_t l = 0; l < n_layers; l++) {
    cf_remote_cell_t c = {.key = *key, .layer = layer0 + l};
    cf_remote_batch_t *b;
    int rc = cf_remote_get(st->remote, &c, 1, &b);
    if (rc) return rc;
    rc = c.status;
    if (!rc && c.bytes > dst_bytes - off)
      rc = cf_seterr(CF_EINVAL, "store read: destination holds %zu bytes, too small for %u remote cells",
                     dst_bytes, n_layers);
    if (!rc) memcpy((uint8_t *)dst + off, c.data, c.bytes);
    off += c.bytes;
    cf_remote_get_release(st->remote, b);
    if (rc) return rc;
  }
  return 0;
}

size_t cf_store_lookup_all(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out) {
  size_t i = cf_store_lookup(st, keys, n, tiers_out);
  if (i == n || !st->remote) return i;
  size_t more = cf_remote_lookup(st->remote, keys + i, n - i);
  if (tiers_out) memset(tiers_out + i, CF_STORE_TIER_REMOTE, more);
  return i + more;
}
