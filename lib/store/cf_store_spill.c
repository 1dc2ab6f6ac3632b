/* Write-back (spill) of CPU-tier chunks to SSD: batches of slot writes, one journal append, then
 * publication; the background spiller thread. */
#include <stdlib.h>
#include <time.h>

#include "store/cf_store_int.h"
#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

typedef struct {
  const int32_t *ents, *slots;
  const int *ok;
  unsigned m;
  int done;
} cf__spill_pub_t;

/* Make spilled chunks visible on SSD (jmu held, takes mu): their records are in the journal. */
static void cf__spill_publish(cf_store_t *st, void *arg) {
  cf__spill_pub_t *a = arg;
  pthread_mutex_lock(&st->mu);
  for (unsigned i = 0; i < a->m; i++) {
    if (!a->ok[i]) continue;
    int32_t e = a->ents[i];
    cf__ent_t *en = &st->ents[e];
    en->ssd_slot = a->slots[i];
    en->flags = (uint8_t)((en->flags & ~CF__F_REFUSED) | CF__F_SSD);
    st->ssd_owner[a->slots[i]] = e;
    cf__list_push_head(st, &st->ssd_lru, e, 1);
    st->st.ssd_chunks++;
    st->st.spills++;
    cf__dirty_set(st, e, 0);
    en->flags &= (uint8_t)~CF__F_SPILL;
    en->pins--;
    st->spilling--;
  }
  a->done = 1;
  pthread_cond_broadcast(&st->cv);
  cf__ssd_wake(st); /* published chunks can be the SSD tier's victims */
  pthread_mutex_unlock(&st->mu);
}

typedef struct {
  int32_t e;
  int durable;
  cf_store_key_t *key;
  uint32_t *ntok;
  uint8_t **src;
} cf__spill_prep_t;

/* Before a spilled chunk gets an SSD slot (mu held, in the same hold as the slot's choice: one
 * lock per chunk). Under the cost policy with the SSD tier full, a chunk worth less than every
 * chunk there is the SSD's own victim (GreedyDual admits and evicts the lowest, here before the
 * write): it stays in the CPU tier, clean and marked CF__F_REFUSED, and is weighed again when
 * the CPU tier evicts it (cf__cpu_evict_safe): by then it may have been read. Each chunk of a
 * batch is weighed against the minimum left by the evictions of those before it (one victim
 * per admitted chunk), which is why the batch cannot be weighed in one hold. Never for durable
 * saves. An admitted chunk's key, size and bytes are taken here: it is pinned and marked
 * CF__F_SPILL, so they stay as they are until it is published or goes back to the dirty list. */
static int cf__spill_prep(cf_store_t *st, void *arg) {
  cf__spill_prep_t *a = arg;
  cf__ent_t *en = &st->ents[a->e];
  /* asked before the refusal marks it: a deferral is a chunk's first refusal (cf__cost_defer) */
  int defer = !a->durable && st->cost_on && cf__cost_defer(st, a->e);
  if (!a->durable && st->cost_on && cf__cost_refuse(st, a->e)) {
    if (defer) st->st.cost_deferred++;
    en->flags = (uint8_t)((en->flags & ~CF__F_SPILL) | CF__F_REFUSED);
    en->pins--;
    st->spilling--;
    st->st.ssd_refusals++;
    if (!en->uses) st->st.ssd_refusals_unread++;
    pthread_cond_broadcast(&st->cv);
    return 1;
  }
  *a->key = en->key;
  *a->ntok = en->n_tokens;
  *a->src = cf__cpu_slot_ptr(st, en->cpu_slot);
  return 0;
}

/* Write back n entries, each marked CF__F_SPILL with a pin on its CPU slot. Returns 0 or the
 * first error; entries that could not be written go back to the dirty list. The store mutex is
 * taken once per chunk before the write (cf__spill_prep with the slot's choice), not twice. */
int cf__spill_batch(cf_store_t *st, const int32_t *ents, unsigned n, int durable) {
  cf__io_t ops[CF__SPILL_BATCH];
  int32_t slots[CF__SPILL_BATCH], admitted[CF__SPILL_BATCH];
  cf_store_key_t keys[CF__SPILL_BATCH];
  uint32_t ntok[CF__SPILL_BATCH];
  const uint32_t L = st->g.n_layers;
  int rc = 0;
  unsigned m = 0, na = 0;
  for (unsigned i = 0; i < n; i++) slots[i] = -1;
  for (unsigned i = 0; i < n; i++) {
    unsigned j = na;
    uint8_t *src = NULL;
    cf__spill_prep_t pa = {ents[i], durable, &keys[j], &ntok[j], &src};
    int32_t s = cf__ssd_alloc_prep(st, cf__spill_prep, &pa);
    if (s == CF__SSD_DECLINED) continue;
    if (s < 0) {
      /* the rest go back to the dirty list below, unweighed */
      rc = s;
      for (; i < n; i++) admitted[na++] = ents[i];
      break;
    }
    na++;
    admitted[j] = ents[i];
    slots[j] = s;
    int fd;
    uint64_t off;
    cf__slot_pos(st, s, &fd, &off);
    ops[j] = (cf__io_t){.fd = fd, .buf = src, .len = st->slot_bytes, .off = off, .write = 1};
    m = j + 1;
  }
  ents = admitted;
  n = na;
  if (m) {
    pthread_mutex_lock(&st->spill_mu);
    int wrc = cf__ring_run(st, &st->wring, ops, m);
    pthread_mutex_unlock(&st->spill_mu);
    if (wrc && !rc) rc = wrc;
  }
  /* records only for chunks whose bytes made it, in one append */
  uint8_t *recs = malloc(st->jrec_bytes * (m ? m : 1));
  unsigned nrec = 0;
  int ok[CF__SPILL_BATCH] = {0};
  if (!recs && !rc) rc = cf_seterr(CF_ENOMEM, "spill records");
  if (recs) {
    if (durable && m) {
      /* data before its journal record: buffered I/O needs the page cache written back, and
       * O_DIRECT still needs the device's write cache flushed */
      int src = cf__data_sync(st);
      if (src && !rc) rc = src;
    }
    pthread_mutex_lock(&st->mu);
    for (unsigned i = 0; i < m; i++) {
      if ((size_t)ops[i].res != ops[i].len) continue;
      if (durable && rc) continue;
      cf__jrec_encode(st, recs + (size_t)nrec * st->jrec_bytes, 1,
                      __atomic_add_fetch(&st->jseq, 1, __ATOMIC_RELAXED), &keys[i], slots[i],
                      ntok[i], &st->csum[(size_t)ents[i] * L]);
      ok[i] = 1;
      nrec++;
    }
    pthread_mutex_unlock(&st->mu);
    if (nrec) {
      cf__spill_pub_t pa = {ents, slots, ok, m, 0};
      int jrc = cf__journal_append_pub(st, recs, nrec, durable, cf__spill_publish, &pa);
      if (jrc) {
        if (!rc) rc = jrc;
        for (unsigned i = 0; i < m; i++) ok[i] = 0;
      }
    }
    free(recs);
  }
  pthread_mutex_lock(&st->mu);
  for (unsigned i = 0; i < n; i++) {
    if (i < m && ok[i]) continue; /* published */
    int32_t e = ents[i];
    cf__ent_t *en = &st->ents[e];
    if (slots[i] >= 0) cf__ssd_release(st, slots[i]);
    cf__dirty_set(st, e, 1);
    en->flags &= (uint8_t)~CF__F_SPILL;
    en->pins--;
    st->spilling--;
  }
  st->last_spill_err = rc;
  pthread_cond_broadcast(&st->cv);
  cf__ssd_wake(st); /* slots released, chunks published */
  pthread_mutex_unlock(&st->mu);
  return rc;
}

/* Take up to max dirty entries (oldest first), mark them spilling (mu held). */
unsigned cf__take_dirty(cf_store_t *st, int32_t *out, unsigned max) {
  unsigned n = 0;
  while (n < max && st->dirty.n) {
    int32_t e = st->dirty.tail;
    cf__dirty_set(st, e, 0);
    st->ents[e].flags |= CF__F_SPILL;
    st->ents[e].pins++;
    st->spilling++;
    out[n++] = e;
  }
  return n;
}

static int cf__spill_wanted(cf_store_t *st) {
  if (!st->dirty.n || !st->n_ssd_slots) return 0;
  double occ = st->n_cpu_slots ? 1.0 - (double)st->n_cpu_free / st->n_cpu_slots : 1.0;
  return occ >= st->cfg.spill_watermark;
}

/* COST, the full SSD tier deferring write-backs (cf__cost_defer): a deferred chunk that the SSD
 * tier admits when the CPU tier gives it up is written back by the thread evicting it, and that
 * is a save (cf__cpu_fill): on the daemon (eval_evict_daemon.py, SSD tier full) cost's Save RPC
 * took 2.0-2.2x LRU's mean. So once a save has taken the CPU tier's last free slot, this thread
 * weighs the next victim as that eviction would (cf__cpu_evict_safe's retry), writes it back
 * when admitted and, once it is on SSD and still the victim, gives its CPU copy up: the next
 * save finds the slot free. The chunk is never held in both tiers past its write (a write-back
 * ahead that left the CPU copy in place until the eviction cost 6% on the daemon's long trace:
 * commits fc3b76b..5102cfb, reverted); one slot at most is kept free for saves (cpu_ahead: a
 * promotion does not take it, as a promotion never writes back). A victim read during the
 * write stays, clean, for the eviction that picks it again. */
static int cf__ahead_ok(cf_store_t *st, int32_t e) { return cf__evictable(&st->ents[e]); }

static int32_t cf__ahead_victim(cf_store_t *st) {
  if (!st->cost_on || st->learn_tier != 1 || !st->n_ssd_slots || st->n_cpu_free > 0) return -1;
  int32_t v = cf__heap_pick(st, 0, cf__ahead_ok);
  if (v < 0) return -1;
  const cf__ent_t *en = &st->ents[v];
  if (!(en->flags & CF__F_REFUSED) || (en->flags & CF__F_SSD) || en->in_dirty || cf__cost_refuse(st, v))
    return -1;
  return v;
}

int cf__evict_ahead(cf_store_t *st) {
  st->ahead_due = 0;
  int32_t v = cf__ahead_victim(st);
  if (v < 0) return 0;
  cf_store_key_t key = st->ents[v].key;
  st->ents[v].flags |= CF__F_SPILL;
  st->ents[v].pins++;
  st->spilling++;
  pthread_mutex_unlock(&st->mu);
  int rc = cf__spill_batch(st, &v, 1, 0);
  if (rc) CF_DEBUG("store %s: write-back ahead of a save's eviction: %s", st->dir, cf_errmsg());
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, &key);
  if (e < 0 || !(st->ents[e].flags & CF__F_SSD) || !cf__evictable(&st->ents[e]) || st->n_cpu_free > 0 ||
      cf__heap_pick(st, 0, cf__ahead_ok) != e)
    return 1;
  cf__cpu_drop(st, e, 0);
  st->cpu_ahead = 1;
  st->st.cpu_evict_ahead++;
  pthread_cond_broadcast(&st->cv);
  return 1;
}

void *cf__spiller_main(void *arg) {
  cf_store_t *st = arg;
  pthread_mutex_lock(&st->mu);
  while (!st->stop) {
    if (st->promo_n && !cf__spill_wanted(st)) {
      cf__promote_queued(st);
      continue;
    }
    if (st->ahead_due && !st->last_spill_err && !cf__spill_wanted(st)) {
      cf__evict_ahead(st);
      continue;
    }
    if (!cf__spill_wanted(st) || st->last_spill_err) {
      /* after an error (disk full) retry at a slow pace instead of spinning */
      struct timespec ts = cf_deadline_ms(st->last_spill_err ? 200 : 50);
      int was_err = st->last_spill_err;
      pthread_cond_timedwait(&st->cv, &st->mu, &ts);
      if (was_err) st->last_spill_err = 0;
      continue;
    }
    int32_t batch[CF__SPILL_BATCH];
    unsigned n = cf__take_dirty(st, batch, CF__SPILL_BATCH);
    pthread_mutex_unlock(&st->mu);
    int rc = cf__spill_batch(st, batch, n, 0);
    if (rc) CF_DEBUG("store %s: spill: %s", st->dir, cf_errmsg());
    cf__maybe_compact(st);
    pthread_mutex_lock(&st->mu);
  }
  pthread_mutex_unlock(&st->mu);
  return NULL;
}
