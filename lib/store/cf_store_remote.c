/* cf_store_remote — the store's hooks to its remote tier (cf_remote): open/close with the store,
 * write-back of every chunk a save adds, lookups past the local tiers, and the synchronous read's
 * last resort. Kept in its own file so the tiers' code stays free of network concerns.
 *
 * Write-back policy: each chunk new to this node (cf_store_save returned 0) is copied into the
 * remote tier's bounded queue right away, whichever local tier it went to (write-through, async:
 * the saving thread only copies). A chunk the remote already holds (saved by another node, or
 * restored from the remote tier and saved back by the engine) is skipped by the writer after one
 * EXISTS. A full queue drops the chunk from the remote write-back only (counted); a full Redis
 * (maxmemory, noeviction) refuses it (counted as put_oom) and no marker is written.
 *
 * Promotion policy: a chunk a restore read whole from the remote tier, every cell verified, is
 * saved into this node's tiers by one promoter thread (cf_store_promote_*), not the restoring
 * thread. The bytes staged by restores plus those queued here are capped (remote_promote_bytes):
 * past the cap a chunk is simply not promoted. Promoted saves skip the write-back (the remote
 * tier holds them). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/cf_remote.h"
#include "store/cf_store_int.h"
#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

/* ---------------------------------------------------------------- promotion */

typedef struct cf__promo_item_s {
  struct cf__promo_item_s *next;
  cf_store_key_t key;
  uint8_t *buf;
} cf__promo_item_t;

struct cf__promoter_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;       /* work queued, stop, or a save done (flush) */
  pthread_t th;
  int stop, running;
  cf__promo_item_t *head, *tail;
  uint64_t cap, bytes;     /* staged + queued chunk bytes, and their cap */
  uint64_t chunk_bytes;
  uint64_t committed, finished;
};


static void *cf__promoter_main(void *arg) {
  cf_store_t *st = arg;
  struct cf__promoter_s *p = st->promo;
  size_t cell = cf_store_cell_bytes(&st->g);
  const void **cells = malloc(st->g.n_layers * sizeof *cells);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && !p->head) pthread_cond_wait(&p->cv, &p->mu);
    if (p->stop) break;
    cf__promo_item_t *it = p->head;
    p->head = it->next;
    if (!p->head) p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    int rc = CF_ENOMEM;
    if (cells) {
      for (uint32_t l = 0; l < st->g.n_layers; l++) cells[l] = it->buf + (size_t)l * cell;
      rc = cf_store_save(st, &it->key, st->g.chunk_tokens, cells, CF_STORE_SAVE_NO_REMOTE);
    }
    if (rc == 0) cf_remote_count_promotion(st->remote, CF_REMOTE_PROMOTED);
    else if (rc != CF_EEXIST) { /* EEXIST: the engine's own save got there first */
      cf_remote_count_promotion(st->remote, CF_REMOTE_PROMOTE_FAILED);
      CF_DEBUG("store %s: promoting a remote chunk: %s", st->dir, cf_errmsg());
    }
    cf_errclear();
    free(it->buf);
    free(it);
    pthread_mutex_lock(&p->mu);
    p->bytes -= p->chunk_bytes;
    p->finished++;
    pthread_cond_broadcast(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  free(cells);
  return NULL;
}

static void cf__promoter_start(cf_store_t *st) {
  if (st->cfg.remote_promote_bytes < 0 || (!st->n_cpu_slots && !st->n_ssd_slots)) return;
  struct cf__promoter_s *p = calloc(1, sizeof *p);
  if (!p) return;
  pthread_mutex_init(&p->mu, NULL);
  cf_cond_init_mono(&p->cv); /* timed waits: see util/cf_clock.h */
  p->chunk_bytes = (uint64_t)cf_store_cell_bytes(&st->g) * st->g.n_layers;
  p->cap = st->cfg.remote_promote_bytes ? (uint64_t)st->cfg.remote_promote_bytes : 256ull << 20;
  st->promo = p;
  if (pthread_create(&p->th, NULL, cf__promoter_main, st) != 0) {
    CF_WARN("store %s: no promoter thread: remote hits stay remote", st->dir);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
    st->promo = NULL;
    return;
  }
  p->running = 1;
}

/* Before the remote tier closes: queued chunks are dropped (only a copy of the remote's). Staged
 * buffers still held by a restore must have been committed or aborted (restores end before the
 * store closes). */
static void cf__promoter_stop(cf_store_t *st) {
  struct cf__promoter_s *p = st->promo;
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  if (p->running) pthread_join(p->th, NULL);
  for (cf__promo_item_t *it = p->head, *nx; it; it = nx) {
    nx = it->next;
    free(it->buf);
    free(it);
  }
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  free(p);
  st->promo = NULL;
}

void *cf_store_promote_begin(cf_store_t *st) {
  struct cf__promoter_s *p = st ? st->promo : NULL;
  if (!p) return NULL;
  pthread_mutex_lock(&p->mu);
  int room = !p->stop && p->bytes + p->chunk_bytes <= p->cap;
  if (room) p->bytes += p->chunk_bytes;
  pthread_mutex_unlock(&p->mu);
  void *buf = room ? malloc(p->chunk_bytes) : NULL;
  if (room && !buf) cf_store_promote_abort(st, NULL);
  if (!buf) cf_remote_count_promotion(st->remote, CF_REMOTE_PROMOTE_SKIPPED);
  return buf;
}

void cf_store_promote_abort(cf_store_t *st, void *buf) {
  struct cf__promoter_s *p = st ? st->promo : NULL;
  if (!p) { free(buf); return; }
  free(buf);
  pthread_mutex_lock(&p->mu);
  p->bytes -= p->chunk_bytes;
  pthread_mutex_unlock(&p->mu);
}

void cf_store_promote_commit(cf_store_t *st, const cf_store_key_t *key, void *buf) {
  struct cf__promoter_s *p = st ? st->promo : NULL;
  cf__promo_item_t *it = p && buf ? malloc(sizeof *it) : NULL;
  if (!it) { cf_store_promote_abort(st, buf); return; }
  it->next = NULL;
  it->key = *key;
  it->buf = buf;
  pthread_mutex_lock(&p->mu);
  if (p->tail) p->tail->next = it;
  else p->head = it;
  p->tail = it;
  p->committed++;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

int cf_store_promote_flush(cf_store_t *st, int timeout_ms) {
  struct cf__promoter_s *p = st ? st->promo : NULL;
  if (!p) return 0;
  struct timespec dl = cf_deadline_ms(timeout_ms >= 0 ? timeout_ms : 0);
  int rc = 0;
  pthread_mutex_lock(&p->mu);
  uint64_t want = p->committed;
  while (p->finished < want && !p->stop) {
    if (timeout_ms < 0) pthread_cond_wait(&p->cv, &p->mu);
    else if (pthread_cond_timedwait(&p->cv, &p->mu, &dl)) {
      rc = p->finished < want ? cf_seterr(CF_ETIMEDOUT, "store %s: promotions still queued", st->dir) : 0;
      break;
    }
  }
  pthread_mutex_unlock(&p->mu);
  return rc;
}

/* ---------------------------------------------------------------- open / close */

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
  cf__promoter_start(st);
  return 0;
}

void cf__remote_close(cf_store_t *st) {
  cf__promoter_stop(st); /* first: it saves into the tiers */
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
   * front of a prefix), not dear ones (counted: remote_skipped_cheap). The table is read under
   * mu: cf_store_set_cost replaces it while saves run (the daemon's re-fit). */
  int cheap = 0;
  if (st->cost_on) {
    pthread_mutex_lock(&st->mu);
    cheap = !cf__cost_dear(st, pos, n_tokens);
    pthread_mutex_unlock(&st->mu);
  }
  if (cheap) {
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

size_t cf_store_lookup_each(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out) {
  size_t k = cf__lookup_each_local(st, keys, n, tiers_out);
  if (k == n || !st->remote) return k;
  /* the local misses, in one pipeline to the remote tier */
  cf_store_key_t *mk = malloc((n - k) * sizeof *mk);
  size_t *at = malloc((n - k) * sizeof *at);
  uint8_t *hit = malloc(n - k);
  if (!mk || !at || !hit) { /* no room to ask: the local answer stands (misses are recomputed) */
    free(mk), free(at), free(hit);
    return k;
  }
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (tiers_out[i] == CF_STORE_TIER_NONE) { mk[m] = keys[i]; at[m++] = i; }
  cf_remote_lookup_each(st->remote, mk, m, hit);
  for (size_t j = 0; j < m; j++)
    if (hit[j]) { tiers_out[at[j]] = CF_STORE_TIER_REMOTE; k++; }
  free(mk), free(at), free(hit);
  return k;
}
