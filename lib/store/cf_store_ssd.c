/* SSD slots: detaching a chunk from its slot, releasing slots (zombies while read), dropping a
 * corrupt chunk, and allocating a slot (free list, next data file, else evict the coldest). */
#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void cf__ssd_detach(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (!(en->flags & CF__F_SSD)) return;
  cf__list_remove(st, &st->ssd_lru, e, 1);
  st->ssd_owner[en->ssd_slot] = -1;
  en->ssd_slot = -1;
  en->sfreq = 0;
  en->flags &= (uint8_t)~CF__F_SSD;
  st->st.ssd_chunks--;
}

void cf__ssd_release(cf_store_t *st, int32_t slot) {
  if (st->replaying) return; /* cf__data_offer_all hands out unowned slots after the replay */
  if (st->ssd_reads[slot]) { st->ssd_zombie[slot] = 1; return; }
  st->ssd_free[st->n_ssd_free++] = slot;
}

void cf__ssd_drop_corrupt(cf_store_t *st, const cf_store_key_t *k, int32_t slot, uint32_t cells) {
  pthread_mutex_lock(&st->mu);
  st->st.corrupt_cells += cells;
  int32_t e = cf__idx_find(st, k);
  int dropped = 0;
  if (e >= 0 && (st->ents[e].flags & CF__F_SSD) && st->ents[e].ssd_slot == slot) {
    cf__ssd_detach(st, e);
    cf__ent_maybe_free(st, e);
    st->st.corrupt_chunks++;
    dropped = 1;
  }
  pthread_mutex_unlock(&st->mu);
  if (!dropped) return;
  CF_WARN("store %s: slot %d failed its checksum: chunk dropped", st->dir, slot);
  /* journal the drop before the slot can be reused, so replay never maps k to foreign bytes */
  if (st->cfg.readonly) return;
  if (cf__journal_add(st, 2, k, slot, 0, NULL, 0) != 0) {
    /* without its DEL on record the slot must not carry other bytes: keep it out of use */
    CF_WARN("store %s: slot %d retired: %s", st->dir, slot, cf_errmsg());
    return;
  }
  pthread_mutex_lock(&st->mu);
  cf__ssd_release(st, slot);
  pthread_mutex_unlock(&st->mu);
}

/* Get a free SSD slot: a free one, else preallocate the next data file, else evict the coldest
 * SSD chunk nobody is reading (journaling its DEL first). Returns the slot or a CF error. With
 * prep, prep(st, arg) runs first, under the same hold of mu as the choice of a free slot or a
 * victim (one hold per slot unless a data file is still to be preallocated): nonzero declines
 * the slot, CF__SSD_DECLINED is returned and nothing is evicted. */
int32_t cf__ssd_alloc_prep(cf_store_t *st, cf__ssd_prep_fn prep, void *arg) {
  int grow_rc = 0;
  int can_grow = 0;
  pthread_mutex_lock(&st->mu);
  if (prep && prep(st, arg)) {
    pthread_mutex_unlock(&st->mu);
    return CF__SSD_DECLINED;
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    if (st->n_ssd_free) {
      int32_t s = st->ssd_free[--st->n_ssd_free];
      pthread_mutex_unlock(&st->mu);
      return s;
    }
    can_grow = __atomic_load_n(&st->files_ready, __ATOMIC_ACQUIRE) < st->n_files;
    if (!can_grow || attempt) break;
    pthread_mutex_unlock(&st->mu);
    grow_rc = cf__data_grow(st);
    pthread_mutex_lock(&st->mu);
  }
  int32_t victim = cf__ssd_pick(st);
  if (victim < 0) {
    pthread_mutex_unlock(&st->mu);
    if (grow_rc) return grow_rc;
    return cf_seterr(CF_ENOSPC, "store %s: SSD tier full (%d slots) and every chunk is being read",
                     st->dir, st->n_ssd_slots);
  }
  cf_store_key_t k = st->ents[victim].key;
  int32_t s = st->ents[victim].ssd_slot;
  if (st->cost_on) {
    if (!st->ents[victim].uses) st->st.ssd_evict_unread++;
    if (!(st->ents[victim].flags & CF__F_CPU)) cf__cost_evicted(st, victim); /* leaves the store */
  }
  cf__ssd_detach(st, victim);
  cf__ent_maybe_free(st, victim);
  st->st.ssd_evictions++;
  pthread_mutex_unlock(&st->mu);
  int rc = cf__journal_add(st, 2, &k, s, 0, NULL, 0);
  if (rc) {
    /* without its DEL on record the slot must not carry other bytes: keep it out of use */
    CF_WARN("store %s: slot %d retired: %s", st->dir, s, cf_errmsg());
    return rc;
  }
  return s;
}

void cf__ssd_wake(cf_store_t *st) {
  if (st->ssd_waiters) pthread_cond_broadcast(&st->ssd_cv);
}

int32_t cf__ssd_alloc(cf_store_t *st) { return cf__ssd_alloc_prep(st, NULL, NULL); }

static int cf__ssd_ok(cf_store_t *st, int32_t e) { return !st->ssd_reads[st->ents[e].ssd_slot]; }

int32_t cf__ssd_pick(cf_store_t *st) {
  if (st->cost_on) return cf__heap_pick(st, 1, cf__ssd_ok);
  const int s3 = st->cfg.cpu_evict == CF_STORE_EVICT_S3FIFO;
  /* each chunk goes back to the head at most 3 times (sfreq <= 3) */
  uint64_t budget = 4 * (uint64_t)st->ssd_lru.n + 1;
  for (int32_t e = st->ssd_lru.tail; e >= 0 && budget; budget--) {
    cf__ent_t *en = &st->ents[e];
    int32_t prev = en->sprev;
    if (st->ssd_reads[en->ssd_slot]) { e = prev; continue; }
    if (s3 && en->sfreq) {
      en->sfreq--;
      cf__list_remove(st, &st->ssd_lru, e, 1);
      cf__list_push_head(st, &st->ssd_lru, e, 1);
      st->ssd_order_dirty = 1;
      e = prev >= 0 ? prev : st->ssd_lru.tail;
      continue;
    }
    return e;
  }
  return -1;
}

void cf__ssd_touch(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (st->cost_on) {
    /* one use of the chunk, whichever tier serves it: both priorities rise (cf_store_cost.c) */
    cf__cost_use(st, e);
    return;
  }
  if (!(en->flags & CF__F_SSD)) return;
  if (st->cfg.cpu_evict == CF_STORE_EVICT_S3FIFO) {
    if (en->sfreq < 3) en->sfreq++;
  } else if (st->ssd_lru.head != e) {
    cf__list_remove(st, &st->ssd_lru, e, 1);
    cf__list_push_head(st, &st->ssd_lru, e, 1);
  }
  st->ssd_order_dirty = 1;
}
