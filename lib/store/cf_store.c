/* cf_store — open/close, the chunk index, the CPU tier (slots, LRU / S3-FIFO, pins), saving,
 * write-back (spill) to the SSD tier and SSD slot allocation/eviction. See cf_store.h.
 *
 * Locks: `mu` guards the index, queues, slot maps and statistics and is never held across I/O;
 * `jmu` serialises journal appends (lock order jmu → mu); `grow_mu` serialises data-file
 * preallocation; `spill_mu` serialises users of the writer ring. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void cf__data_offer_all(cf_store_t *st);
static void *cf__spiller_main(void *arg);

#define CF__SPILL_BATCH 16

size_t cf_store_cell_bytes_n(const cf_store_geom_t *g, uint32_t n_tokens) {
  return (size_t)2 * n_tokens * g->n_kv_heads * g->head_dim * g->dtype_size;
}
size_t cf_store_cell_bytes(const cf_store_geom_t *g) {
  return cf_store_cell_bytes_n(g, g->chunk_tokens);
}
const cf_store_geom_t *cf_store_geom(const cf_store_t *st) { return &st->g; }

void cf_store_config_default(cf_store_config_t *c) {
  memset(c, 0, sizeof *c);
  c->cpu_bytes = 1ull << 30;
  c->ssd_bytes = 4ull << 30;
  c->cpu_evict = CF_STORE_EVICT_LRU;
  c->spill = 1;
  c->file_bytes = 256ull << 20;
  c->journal_slack = 65536;
}

/* Rewrite the journal when dead records (evictions, re-adds) dominate it: bounded disk use. */
static void cf__maybe_compact(cf_store_t *st) {
  pthread_mutex_lock(&st->mu);
  int want = __atomic_load_n(&st->jrecords, __ATOMIC_RELAXED) > 2 * st->st.ssd_chunks + st->cfg.journal_slack;
  pthread_mutex_unlock(&st->mu);
  if (!want) return;
  int rc = cf__journal_compact(st);
  if (rc) CF_WARN("store %s: journal compaction: %s", st->dir, cf_errmsg());
}

/* ---------------------------------------------------------------- index */

static uint32_t cf__khash(const cf_store_key_t *k) {
  uint64_t h;
  memcpy(&h, k->b + 8, 8); /* the key is already a uniform hash */
  return (uint32_t)(h ^ (h >> 32));
}

int32_t cf__idx_find(cf_store_t *st, const cf_store_key_t *k) {
  uint32_t i = cf__khash(k) & st->tab_mask;
  for (;;) {
    int32_t e = st->tab[i];
    if (e < 0) return -1;
    if (memcmp(st->ents[e].key.b, k->b, 16) == 0) return e;
    i = (i + 1) & st->tab_mask;
  }
}

int32_t cf__idx_insert(cf_store_t *st, const cf_store_key_t *k) {
  if (st->ent_free < 0) return -1;
  int32_t e = st->ent_free;
  st->ent_free = st->ents[e].cnext;
  cf__ent_t *en = &st->ents[e];
  memset(en, 0, sizeof *en);
  en->key = *k;
  en->cpu_slot = en->ssd_slot = -1;
  en->cprev = en->cnext = en->sprev = en->snext = en->dprev = en->dnext = -1;
  uint32_t i = cf__khash(k) & st->tab_mask;
  while (st->tab[i] >= 0) i = (i + 1) & st->tab_mask;
  st->tab[i] = e;
  return e;
}

/* Remove entry e from the table (backward-shift deletion keeps probe chains intact). */
static void cf__idx_remove(cf_store_t *st, int32_t e) {
  uint32_t i = cf__khash(&st->ents[e].key) & st->tab_mask;
  while (st->tab[i] != e) i = (i + 1) & st->tab_mask;
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & st->tab_mask;
    int32_t f = st->tab[j];
    if (f < 0) break;
    uint32_t home = cf__khash(&st->ents[f].key) & st->tab_mask;
    /* can f move back to i? only when its home is not cyclically in (i, j] */
    if (((j - home) & st->tab_mask) >= ((j - i) & st->tab_mask)) {
      st->tab[i] = f;
      i = j;
    }
  }
  st->tab[i] = -1;
  st->ents[e].cnext = st->ent_free;
  st->ents[e].flags = 0;
  st->ent_free = e;
}

void cf__ent_maybe_free(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (en->flags || en->pins) return;
  cf__idx_remove(st, e);
}

/* which: 0 CPU queue links, 1 SSD LRU links, 2 dirty links */
static int32_t *cf__prev(cf_store_t *st, int32_t e, int which) {
  return which == 0 ? &st->ents[e].cprev : which == 1 ? &st->ents[e].sprev : &st->ents[e].dprev;
}
static int32_t *cf__next(cf_store_t *st, int32_t e, int which) {
  return which == 0 ? &st->ents[e].cnext : which == 1 ? &st->ents[e].snext : &st->ents[e].dnext;
}

void cf__list_push_head(cf_store_t *st, cf__list_t *l, int32_t e, int which) {
  *cf__prev(st, e, which) = -1;
  *cf__next(st, e, which) = l->head;
  if (l->head >= 0) *cf__prev(st, l->head, which) = e;
  l->head = e;
  if (l->tail < 0) l->tail = e;
  l->n++;
}

void cf__list_remove(cf_store_t *st, cf__list_t *l, int32_t e, int which) {
  int32_t p = *cf__prev(st, e, which), n = *cf__next(st, e, which);
  if (p >= 0) *cf__next(st, p, which) = n; else l->head = n;
  if (n >= 0) *cf__prev(st, n, which) = p; else l->tail = p;
  *cf__prev(st, e, which) = *cf__next(st, e, which) = -1;
  l->n--;
}

static void cf__q_set(cf_store_t *st, int32_t e, int q) {
  cf__ent_t *en = &st->ents[e];
  if (en->queue) cf__list_remove(st, &st->q[en->queue], e, 0);
  en->queue = (uint8_t)q;
  if (q) cf__list_push_head(st, &st->q[q], e, 0);
}

static void cf__dirty_set(cf_store_t *st, int32_t e, int on) {
  cf__ent_t *en = &st->ents[e];
  if (on == en->in_dirty) return;
  if (on) cf__list_push_head(st, &st->dirty, e, 2);
  else cf__list_remove(st, &st->dirty, e, 2);
  en->in_dirty = (uint8_t)on;
}

void cf__cpu_touch(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (st->cfg.cpu_evict == CF_STORE_EVICT_LRU) {
    if (en->queue == CF__Q_LRU && st->q[CF__Q_LRU].head != e) cf__q_set(st, e, CF__Q_LRU);
  } else if (en->freq < 3) {
    en->freq++;
  }
}

void cf__ssd_detach(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (!(en->flags & CF__F_SSD)) return;
  cf__list_remove(st, &st->ssd_lru, e, 1);
  st->ssd_owner[en->ssd_slot] = -1;
  en->ssd_slot = -1;
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

/* ---------------------------------------------------------------- CPU tier */

static uint8_t *cf__cpu_slot_ptr(const cf_store_t *st, int32_t slot) {
  return st->cpu_base + (size_t)slot * st->slot_bytes;
}

/* Give up the CPU copy of e (mu held; e unpinned, not spilling). */
static void cf__cpu_drop(cf_store_t *st, int32_t e, int to_ghost) {
  cf__ent_t *en = &st->ents[e];
  if (!(en->flags & CF__F_SSD)) {
    if (st->dirty.n && en->in_dirty) st->st.cpu_evict_dirty++;
  }
  cf__dirty_set(st, e, 0);
  cf__q_set(st, e, CF__Q_NONE);
  st->cpu_free[st->n_cpu_free++] = en->cpu_slot;
  en->cpu_slot = -1;
  en->flags &= (uint8_t)~CF__F_CPU;
  en->freq = 0;
  st->st.cpu_chunks--;
  st->st.cpu_evictions++;
  if (to_ghost) {
    en->flags |= CF__F_GHOST;
    cf__q_set(st, e, CF__Q_GHOST);
    /* the ghost queue remembers as many keys as the CPU tier holds chunks */
    while (st->q[CF__Q_GHOST].n > (uint32_t)st->n_cpu_slots) {
      int32_t g = st->q[CF__Q_GHOST].tail;
      cf__q_set(st, g, CF__Q_NONE);
      st->ents[g].flags &= (uint8_t)~CF__F_GHOST;
      cf__ent_maybe_free(st, g);
    }
  } else {
    cf__ent_maybe_free(st, e);
  }
}

static int cf__evictable(const cf__ent_t *en) {
  return (en->flags & CF__F_CPU) && !en->pins && !(en->flags & CF__F_SPILL);
}

/* Choose the CPU-tier victim by the configured policy (mu held) without dropping it: the caller
 * drops it (cf__cpu_drop with *to_ghost) or writes it back first. The policy's queue moves
 * (S3-FIFO reinsertion) happen here. Returns the entry, or CF_EBUSY (every slot pinned). */
static int32_t cf__cpu_pick(cf_store_t *st, int *to_ghost) {
  *to_ghost = 0;
  if (st->cfg.cpu_evict == CF_STORE_EVICT_LRU) {
    /* coldest unpinned chunk; prefer one already on SSD within a short window (free to drop) */
    int32_t pick = -1, clean = -1;
    int seen = 0;
    for (int32_t e = st->q[CF__Q_LRU].tail; e >= 0 && seen < 64; e = st->ents[e].cprev, seen++) {
      if (!cf__evictable(&st->ents[e])) continue;
      if (pick < 0) pick = e;
      if (st->ents[e].flags & CF__F_SSD) { clean = e; break; }
    }
    if (pick < 0)
      for (int32_t e = st->q[CF__Q_LRU].tail; e >= 0; e = st->ents[e].cprev)
        if (cf__evictable(&st->ents[e])) { pick = e; break; }
    if (clean >= 0) pick = clean;
    if (pick < 0) return cf_seterr(CF_EBUSY, "store %s: every CPU slot is pinned", st->dir);
    return pick;
  }
  /* S3-FIFO (Yang et al., SOSP'23): a small FIFO filters one-hit wonders, a main FIFO with
   * reinsertion holds the rest, a ghost FIFO of keys sends re-saved keys straight to main. */
  /* each chunk is passed over at most once in small and 4 times in main (freq <= 3) */
  uint32_t budget = 6 * (uint32_t)st->n_cpu_slots + 16, busy_main = 0, busy_small = 0;
  while (budget--) {
    cf__list_t *S = &st->q[CF__Q_SMALL], *M = &st->q[CF__Q_MAIN];
    /* a queue pinned for a full turn hands the choice to the other one */
    int small_stuck = busy_small > S->n, main_stuck = busy_main > M->n;
    if (small_stuck && main_stuck) break;
    int from_small = S->n && !small_stuck &&
                     (S->n >= st->small_target || !M->n || main_stuck);
    if (from_small) {
      int32_t t = S->tail;
      cf__ent_t *en = &st->ents[t];
      if (!cf__evictable(en)) { busy_small++; cf__q_set(st, t, CF__Q_SMALL); continue; }
      if (en->freq > 1) { en->freq = 0; cf__q_set(st, t, CF__Q_MAIN); continue; }
      *to_ghost = 1;
      return t;
    }
    if (!M->n || main_stuck) break;
    int32_t t = M->tail;
    cf__ent_t *en = &st->ents[t];
    if (!cf__evictable(en)) { busy_main++; cf__q_set(st, t, CF__Q_MAIN); continue; }
    if (en->freq > 0) { en->freq--; cf__q_set(st, t, CF__Q_MAIN); continue; }
    return t;
  }
  return cf_seterr(CF_EBUSY, "store %s: every CPU slot is pinned", st->dir);
}

static unsigned cf__take_dirty(cf_store_t *st, int32_t *out, unsigned max);
static int cf__spill_batch(cf_store_t *st, const int32_t *ents, unsigned n, int durable);

/* Free one CPU slot (mu held; it may be released and retaken, so callers re-check their own
 * condition afterwards). A victim that is dirty (only in the CPU tier while there is an SSD tier)
 * is written back first, together with the oldest other dirty chunks, and dropped only once it
 * is on SSD: dropping it unwritten would lose a chunk that a later cf_store_flush() reports
 * durable. Only when that write-back fails (SSD full, I/O error) is the dirty victim dropped
 * anyway, so the CPU tier keeps making progress; it is counted in cpu_evict_dirty and in
 * lost_dirty, which the next cf_store_flush() returns as an error.
 * write_back 0 (promotion on read): a dirty victim is left alone and CF_EBUSY returned, so a
 * reader never waits on SSD writes nor costs a dirty chunk.
 * Returns 0 (a slot was freed, or may have been: re-check), CF_EBUSY (every slot pinned). */
static int cf__cpu_evict_safe(cf_store_t *st, int write_back) {
  int ghost;
  int32_t v = cf__cpu_pick(st, &ghost);
  if (v < 0) {
    /* slots pinned by write-backs in flight come free when they finish */
    if (write_back && st->spilling) { pthread_cond_wait(&st->cv, &st->mu); return 0; }
    return v;
  }
  cf__ent_t *en = &st->ents[v];
  if (!st->n_ssd_slots || (en->flags & CF__F_SSD) || !en->in_dirty) {
    cf__cpu_drop(st, v, ghost);
    return 0;
  }
  if (!write_back)
    return cf_seterr(CF_EBUSY, "store %s: the CPU tier's victim is not written back yet", st->dir);
  int32_t batch[CF__SPILL_BATCH];
  cf_store_key_t key = en->key;
  cf__dirty_set(st, v, 0);
  en->flags |= CF__F_SPILL;
  en->pins++;
  st->spilling++;
  batch[0] = v;
  unsigned n = 1 + cf__take_dirty(st, batch + 1, CF__SPILL_BATCH - 1);
  pthread_mutex_unlock(&st->mu);
  int rc = cf__spill_batch(st, batch, n, 0);
  pthread_mutex_lock(&st->mu);
  if (!rc) return 0; /* v is clean now: the next pick drops it (or a colder clean chunk) */
  /* write-back failed: v is back on the dirty list, unless another thread took it meanwhile */
  v = cf__idx_find(st, &key);
  if (v < 0 || !cf__evictable(&st->ents[v]) || (st->ents[v].flags & CF__F_SSD)) return 0;
  st->lost_dirty++;
  st->lost_dirty_rc = rc;
  cf__cpu_drop(st, v, ghost && st->ents[v].queue == CF__Q_SMALL);
  return 0;
}

/* Copy a chunk into a CPU slot. The entry is created (or reused when it exists only on SSD or
 * as a ghost) and made visible only after the bytes and checksums are in place. With keep_pin
 * the caller gets the slot pinned and marked CF__F_SPILL (durable save writes it through).
 * Returns 0, CF_EEXIST (already in the CPU tier or being filled), CF_EBUSY, CF_ENOMEM. */
int cf__cpu_fill(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                 const void *const *cells, const void *packed, int keep_pin, int32_t *e_out) {
  const uint32_t L = st->g.n_layers;
  size_t cb = cf_store_cell_bytes_n(&st->g, n_tokens);
  /* packed != NULL is a promotion of a chunk read from SSD; a save must not shadow SSD bytes */
  const uint8_t busy = CF__F_CPU | CF__F_FILL | CF__F_SSDSAVE | (packed ? 0 : CF__F_SSD);
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  if (e >= 0 && (st->ents[e].flags & busy)) {
    pthread_mutex_unlock(&st->mu);
    return CF_EEXIST;
  }
  while (!st->n_cpu_free) {
    /* a save writes a dirty victim back; a promotion (packed) leaves dirty chunks alone */
    int rc = cf__cpu_evict_safe(st, packed == NULL);
    if (rc) { pthread_mutex_unlock(&st->mu); return rc; }
    /* mu may have been released: the eviction may have freed a ghost entry, and another thread
     * may have stored the key meanwhile */
    e = cf__idx_find(st, key);
    if (e >= 0 && (st->ents[e].flags & busy)) {
      pthread_mutex_unlock(&st->mu);
      return CF_EEXIST;
    }
  }
  int ghost = 0;
  if (e < 0) {
    e = cf__idx_insert(st, key);
    if (e < 0) {
      pthread_mutex_unlock(&st->mu);
      return cf_seterr(CF_ENOMEM, "store %s: index full", st->dir);
    }
  } else if (st->ents[e].flags & CF__F_GHOST) {
    ghost = 1;
    st->ents[e].flags &= (uint8_t)~CF__F_GHOST;
    cf__q_set(st, e, CF__Q_NONE);
  }
  cf__ent_t *en = &st->ents[e];
  int32_t slot = st->cpu_free[--st->n_cpu_free];
  en->cpu_slot = slot;
  en->flags |= CF__F_FILL;
  en->pins++;
  int had_ssd = (en->flags & CF__F_SSD) != 0;
  pthread_mutex_unlock(&st->mu);

  uint8_t *dst = cf__cpu_slot_ptr(st, slot);
  uint64_t csum[L ? L : 1];
  for (uint32_t l = 0; l < L; l++) {
    const void *src = cells ? cells[l] : (const uint8_t *)packed + (size_t)l * cb;
    memcpy(dst + (size_t)l * st->cell_stride, src, cb);
    csum[l] = XXH3_64bits(src, cb);
  }

  pthread_mutex_lock(&st->mu);
  en = &st->ents[e];
  /* an SSD copy's checksums are authoritative (the CPU copy came from it when promoting) */
  if (!had_ssd) memcpy(&st->csum[(size_t)e * L], csum, 8 * (size_t)L);
  en->n_tokens = n_tokens;
  en->flags = (uint8_t)((en->flags & ~CF__F_FILL) | CF__F_CPU);
  cf__q_set(st, e, st->cfg.cpu_evict == CF_STORE_EVICT_LRU ? CF__Q_LRU
                   : ghost ? CF__Q_MAIN : CF__Q_SMALL);
  st->st.cpu_chunks++;
  if (keep_pin && !(en->flags & CF__F_SSD)) {
    en->flags |= CF__F_SPILL;
    st->spilling++;
  } else {
    en->pins--;
    if (!(en->flags & CF__F_SSD) && st->n_ssd_slots) cf__dirty_set(st, e, 1);
  }
  if (e_out) *e_out = e;
  if (st->dirty.n) pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
  return 0;
}

/* ---------------------------------------------------------------- SSD slots */

/* Get a free SSD slot: a free one, else preallocate the next data file, else evict the coldest
 * SSD chunk nobody is reading (journaling its DEL first). Returns the slot or a CF error. */
static int32_t cf__ssd_alloc(cf_store_t *st) {
  int grow_rc = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    pthread_mutex_lock(&st->mu);
    if (st->n_ssd_free) {
      int32_t s = st->ssd_free[--st->n_ssd_free];
      pthread_mutex_unlock(&st->mu);
      return s;
    }
    int can_grow = __atomic_load_n(&st->files_ready, __ATOMIC_ACQUIRE) < st->n_files;
    pthread_mutex_unlock(&st->mu);
    if (!can_grow || attempt) break;
    grow_rc = cf__data_grow(st);
  }
  pthread_mutex_lock(&st->mu);
  int32_t victim = -1;
  for (int32_t e = st->ssd_lru.tail; e >= 0; e = st->ents[e].sprev)
    if (!st->ssd_reads[st->ents[e].ssd_slot]) { victim = e; break; }
  if (victim < 0) {
    pthread_mutex_unlock(&st->mu);
    if (grow_rc) return grow_rc;
    return cf_seterr(CF_ENOSPC, "store %s: SSD tier full (%d slots) and every chunk is being read",
                     st->dir, st->n_ssd_slots);
  }
  cf_store_key_t k = st->ents[victim].key;
  int32_t s = st->ents[victim].ssd_slot;
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
    en->flags |= CF__F_SSD;
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
  pthread_mutex_unlock(&st->mu);
}

/* Write back n entries (each marked CF__F_SPILL with a pin on its CPU slot, or given as raw
 * aligned buffers in bufs[] when there is no CPU slot). Returns 0 or the first error; entries
 * that could not be written go back to the dirty list. ents[i] < 0 entries are skipped. */
static int cf__spill_batch(cf_store_t *st, const int32_t *ents, unsigned n, int durable) {
  cf__io_t ops[CF__SPILL_BATCH];
  int32_t slots[CF__SPILL_BATCH];
  cf_store_key_t keys[CF__SPILL_BATCH];
  uint32_t ntok[CF__SPILL_BATCH];
  const uint32_t L = st->g.n_layers;
  int rc = 0;
  unsigned m = 0;
  for (unsigned i = 0; i < n; i++) slots[i] = -1;
  for (unsigned i = 0; i < n; i++) {
    int32_t s = cf__ssd_alloc(st);
    if (s < 0) { rc = s; break; }
    slots[i] = s;
    pthread_mutex_lock(&st->mu);
    keys[i] = st->ents[ents[i]].key;
    ntok[i] = st->ents[ents[i]].n_tokens;
    uint8_t *src = cf__cpu_slot_ptr(st, st->ents[ents[i]].cpu_slot);
    pthread_mutex_unlock(&st->mu);
    int fd;
    uint64_t off;
    cf__slot_pos(st, s, &fd, &off);
    ops[i] = (cf__io_t){.fd = fd, .buf = src, .len = st->slot_bytes, .off = off, .write = 1};
    m = i + 1;
  }
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
  pthread_mutex_unlock(&st->mu);
  return rc;
}

/* Take up to max dirty entries (oldest first), mark them spilling (mu held). */
static unsigned cf__take_dirty(cf_store_t *st, int32_t *out, unsigned max) {
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

static void *cf__spiller_main(void *arg) {
  cf_store_t *st = arg;
  pthread_mutex_lock(&st->mu);
  while (!st->stop) {
    if (!cf__spill_wanted(st) || st->last_spill_err) {
      /* after an error (disk full) retry at a slow pace instead of spinning */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += st->last_spill_err ? 200000000 : 50000000;
      if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
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

/* ---------------------------------------------------------------- save / flush / evict */

typedef struct {
  int32_t e, s;
  uint32_t n_tokens;
  const uint64_t *csum;
  int done;
} cf__direct_pub_t;

static void cf__direct_publish(cf_store_t *st, void *arg) {
  cf__direct_pub_t *a = arg;
  pthread_mutex_lock(&st->mu);
  cf__ent_t *en = &st->ents[a->e];
  en->flags &= (uint8_t)~CF__F_SSDSAVE;
  memcpy(&st->csum[(size_t)a->e * st->g.n_layers], a->csum, 8 * (size_t)st->g.n_layers);
  en->n_tokens = a->n_tokens;
  en->ssd_slot = a->s;
  en->flags |= CF__F_SSD;
  st->ssd_owner[a->s] = a->e;
  cf__list_push_head(st, &st->ssd_lru, a->e, 1);
  st->st.ssd_chunks++;
  st->st.saves++;
  a->done = 1;
  pthread_mutex_unlock(&st->mu);
}

/* Save straight to SSD (no CPU tier): bounce through an aligned buffer. */
static int cf__save_direct(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                           const void *const *cells, unsigned flags) {
  const uint32_t L = st->g.n_layers;
  size_t cb = cf_store_cell_bytes_n(&st->g, n_tokens);
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  if (e >= 0 && (st->ents[e].flags & (CF__F_SSD | CF__F_SSDSAVE))) {
    st->st.save_exists++;
    pthread_mutex_unlock(&st->mu);
    return CF_EEXIST;
  }
  if (e < 0) e = cf__idx_insert(st, key);
  if (e < 0) { pthread_mutex_unlock(&st->mu); return cf_seterr(CF_ENOMEM, "store %s: index full", st->dir); }
  st->ents[e].flags |= CF__F_SSDSAVE;
  pthread_mutex_unlock(&st->mu);

  int rc = 0;
  int32_t s = -1;
  int durable = flags & CF_STORE_SAVE_DURABLE;
  uint64_t *csum = malloc(8 * (size_t)L);
  uint8_t *buf = cf__aligned_alloc(st->slot_bytes);
  cf__direct_pub_t pa = {e, -1, n_tokens, csum, 0};
  if (!csum || !buf) { rc = cf_seterr(CF_ENOMEM, "store save buffer"); goto out; }
  memset(buf, 0, st->slot_bytes);
  for (uint32_t l = 0; l < L; l++) {
    memcpy(buf + (size_t)l * st->cell_stride, cells[l], cb);
    csum[l] = XXH3_64bits(cells[l], cb);
  }
  s = cf__ssd_alloc(st);
  if (s < 0) { rc = s; s = -1; goto out; }
  cf__io_t op;
  int fd;
  uint64_t off;
  cf__slot_pos(st, s, &fd, &off);
  op = (cf__io_t){.fd = fd, .buf = buf, .len = st->slot_bytes, .off = off, .write = 1};
  pthread_mutex_lock(&st->spill_mu);
  rc = cf__ring_run(st, &st->wring, &op, 1);
  pthread_mutex_unlock(&st->spill_mu);
  if (!rc && durable) rc = cf__data_sync(st);
  pa.s = s;
  if (!rc) {
    uint8_t rec[4096];
    uint8_t *r = st->jrec_bytes <= sizeof rec ? rec : malloc(st->jrec_bytes);
    if (!r) { rc = cf_seterr(CF_ENOMEM, "journal record"); goto out; }
    cf__jrec_encode(st, r, 1, __atomic_add_fetch(&st->jseq, 1, __ATOMIC_RELAXED), key, s,
                    n_tokens, csum);
    rc = cf__journal_append_pub(st, r, 1, durable, cf__direct_publish, &pa);
    if (r != rec) free(r);
  }
out:
  pthread_mutex_lock(&st->mu);
  if (!pa.done) {
    st->ents[e].flags &= (uint8_t)~CF__F_SSDSAVE;
    if (s >= 0) cf__ssd_release(st, s);
    cf__ent_maybe_free(st, e);
  }
  pthread_mutex_unlock(&st->mu);
  free(csum);
  free(buf);
  if (!rc) cf__maybe_compact(st);
  return rc;
}

int cf_store_save(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                  const void *const *cells, unsigned flags) {
  if (!st || !key || !cells || n_tokens == 0 || n_tokens > st->g.chunk_tokens)
    return cf_seterr(CF_EINVAL, "store save: n_tokens %u outside 1..%u (or NULL argument)",
                     n_tokens, st ? st->g.chunk_tokens : 0);
  if (st->cfg.readonly) return cf_seterr(CF_EINVAL, "store %s: opened read-only", st->dir);
  for (uint32_t l = 0; l < st->g.n_layers; l++)
    if (!cells[l]) return cf_seterr(CF_EINVAL, "store save: cell of layer %u is NULL", l);
  int durable = (flags & CF_STORE_SAVE_DURABLE) != 0;
  if (durable && !st->n_ssd_slots)
    return cf_seterr(CF_EINVAL, "store %s: a durable save needs an SSD tier (ssd_bytes is 0)",
                     st->dir);
  if (!st->n_cpu_slots) {
    if (!st->n_ssd_slots) return cf_seterr(CF_ENOSPC, "store %s: no tier has any capacity", st->dir);
    return cf__save_direct(st, key, n_tokens, cells, flags);
  }
  int32_t e;
  int rc = cf__cpu_fill(st, key, n_tokens, cells, NULL, durable && st->n_ssd_slots, &e);
  if (rc == CF_EEXIST || (rc == 0 && durable && st->n_ssd_slots)) {
    if (rc == CF_EEXIST) {
      pthread_mutex_lock(&st->mu);
      st->st.save_exists++;
      e = cf__idx_find(st, key);
      if (!durable || e < 0 || !st->n_ssd_slots) { pthread_mutex_unlock(&st->mu); return CF_EEXIST; }
      /* durable save of a key we hold: make sure it reaches SSD, then sync */
      while (e >= 0 && (st->ents[e].flags & (CF__F_SPILL | CF__F_FILL | CF__F_SSDSAVE))) {
        pthread_cond_wait(&st->cv, &st->mu);
        e = cf__idx_find(st, key);
      }
      if (e < 0 || !(st->ents[e].flags & (CF__F_CPU | CF__F_SSD))) {
        pthread_mutex_unlock(&st->mu);
        return cf_store_save(st, key, n_tokens, cells, flags); /* evicted meanwhile: save again */
      }
      if (st->ents[e].flags & CF__F_SSD) {
        pthread_mutex_unlock(&st->mu);
        rc = cf__data_sync(st);
        if (!rc) rc = cf__journal_append(st, NULL, 0, 1);
        return rc;
      }
      cf__dirty_set(st, e, 0);
      st->ents[e].flags |= CF__F_SPILL;
      st->ents[e].pins++;
      st->spilling++;
      pthread_mutex_unlock(&st->mu);
    } else {
      pthread_mutex_lock(&st->mu);
      st->st.saves++;
      pthread_mutex_unlock(&st->mu);
    }
    rc = cf__spill_batch(st, &e, 1, 1);
    if (rc) return cf_err_prefix(rc, "durable save (the chunk stays in the CPU tier): ");
    return 0;
  }
  if (rc == 0) {
    pthread_mutex_lock(&st->mu);
    st->st.saves++;
    pthread_mutex_unlock(&st->mu);
  }
  return rc;
}

int cf_store_flush(cf_store_t *st) {
  if (st->cfg.readonly) return 0;
  int rc = 0;
  if (st->n_ssd_slots) {
    for (;;) {
      int32_t batch[CF__SPILL_BATCH];
      pthread_mutex_lock(&st->mu);
      unsigned n = cf__take_dirty(st, batch, CF__SPILL_BATCH);
      if (!n) {
        while (st->spilling) pthread_cond_wait(&st->cv, &st->mu); /* the spiller's batch */
        n = cf__take_dirty(st, batch, CF__SPILL_BATCH);
        if (!n) { pthread_mutex_unlock(&st->mu); break; }
      }
      pthread_mutex_unlock(&st->mu);
      rc = cf__spill_batch(st, batch, n, 0);
      if (rc) return rc;
    }
  }
  rc = cf__data_sync(st);
  if (!rc) rc = cf__journal_append(st, NULL, 0, 1);
  if (!rc) cf__maybe_compact(st);
  /* chunks the CPU tier had to drop unwritten (their write-back failed) were saved before this
   * call: 0 would claim them durable. Reported once; later flushes cover later saves. */
  pthread_mutex_lock(&st->mu);
  uint64_t lost = st->lost_dirty;
  int lrc = st->lost_dirty_rc;
  st->lost_dirty = 0;
  pthread_mutex_unlock(&st->mu);
  if (lost && !rc)
    rc = cf_seterr(lrc ? lrc : CF_EIO,
                   "store %s: %llu chunk(s) saved since the last flush were evicted from the CPU "
                   "tier before they reached SSD (their write-back failed): not durable",
                   st->dir, (unsigned long long)lost);
  return rc;
}

int cf_store_remove(cf_store_t *st, const cf_store_key_t *key) {
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  if (e < 0 || !(st->ents[e].flags & (CF__F_CPU | CF__F_SSD))) {
    pthread_mutex_unlock(&st->mu);
    return CF_ENOTFOUND;
  }
  cf__ent_t *en = &st->ents[e];
  if (en->flags & (CF__F_SPILL | CF__F_FILL | CF__F_SSDSAVE) || en->pins) {
    pthread_mutex_unlock(&st->mu);
    return cf_seterr(CF_EBUSY, "store %s: chunk is pinned or being written", st->dir);
  }
  int32_t s = en->ssd_slot;
  if (en->flags & CF__F_CPU) { cf__cpu_drop(st, e, 0); st->st.cpu_evictions--; }
  e = cf__idx_find(st, key);
  if (e >= 0 && s >= 0) {
    cf__ssd_detach(st, e);
    cf__ent_maybe_free(st, e);
  }
  pthread_mutex_unlock(&st->mu);
  if (s >= 0) {
    int rc = cf__journal_add(st, 2, key, s, 0, NULL, 0);
    pthread_mutex_lock(&st->mu);
    if (!rc) cf__ssd_release(st, s);
    pthread_mutex_unlock(&st->mu);
    return rc;
  }
  return 0;
}

int cf_store_evict_cpu(cf_store_t *st, uint64_t keep_bytes) {
  int frc = st->n_ssd_slots ? cf_store_flush(st) : 0;
  pthread_mutex_lock(&st->mu);
  int rc = 0;
  if (frc) {
    /* write-back failed (disk full?): still give up the clean chunks, keep the dirty ones */
    for (int q = CF__Q_LRU; q <= CF__Q_MAIN; q++) {
      for (int32_t e = st->q[q].tail; e >= 0;) {
        int32_t prev = st->ents[e].cprev;
        if ((uint64_t)(st->n_cpu_slots - st->n_cpu_free) * st->slot_bytes <= keep_bytes) break;
        if (cf__evictable(&st->ents[e]) && (st->ents[e].flags & CF__F_SSD)) cf__cpu_drop(st, e, 0);
        e = prev;
      }
    }
    pthread_mutex_unlock(&st->mu);
    return frc;
  }
  /* chunks saved by other threads since the flush are written back before they go */
  while ((uint64_t)(st->n_cpu_slots - st->n_cpu_free) * st->slot_bytes > keep_bytes) {
    rc = cf__cpu_evict_safe(st, 1);
    if (rc) break;
  }
  pthread_mutex_unlock(&st->mu);
  return rc;
}

/* ---------------------------------------------------------------- open / close */

static void *cf__cpu_region_alloc(cf_store_t *st, size_t bytes) {
  if (st->cfg.cpu_alloc) {
    st->cpu_hooked = 1;
    return st->cfg.cpu_alloc(bytes, st->cfg.cpu_alloc_ud);
  }
  size_t huge = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
  void *p = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p != MAP_FAILED) { st->cpu_huge = 1; st->cpu_region = huge; return p; }
  p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  madvise(p, bytes, MADV_HUGEPAGE); /* transparent huge pages when the kernel allows */
  st->cpu_region = bytes;
  return p;
}

void cf_store_close(cf_store_t *st) {
  if (!st) return;
  if (st->spiller_on) {
    pthread_mutex_lock(&st->mu);
    st->stop = 1;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    pthread_join(st->spiller, NULL);
  }
  cf__ring_exit(&st->wring);
  if (st->jfd >= 0) close(st->jfd);
  cf__data_close(st);
  if (st->cpu_base) {
    if (st->cpu_hooked) { if (st->cfg.cpu_free) st->cfg.cpu_free(st->cpu_base, st->cpu_region, st->cfg.cpu_alloc_ud); }
    else munmap(st->cpu_base, st->cpu_region);
  }
  free(st->tab); free(st->ents); free(st->csum); free(st->cpu_free); free(st->dfd);
  free(st->ssd_owner); free(st->ssd_reads); free(st->ssd_zombie); free(st->ssd_free);
  pthread_mutex_destroy(&st->mu); pthread_mutex_destroy(&st->jmu);
  pthread_mutex_destroy(&st->grow_mu); pthread_mutex_destroy(&st->spill_mu);
  pthread_cond_destroy(&st->cv);
  free(st);
}

static int cf__dir_prepare(const char *dir, int readonly) {
  struct stat sb;
  if (stat(dir, &sb) == 0) {
    if (!S_ISDIR(sb.st_mode)) return cf_seterr(CF_EINVAL, "store %s: not a directory", dir);
    if (!readonly && access(dir, W_OK | X_OK) != 0)
      return cf_seterr(CF_EACCES, "store %s: directory not writable: %s", dir, strerror(errno));
    return 0;
  }
  if (readonly) return cf_seterr(CF_ENOENT, "store %s: %s", dir, strerror(errno));
  if (mkdir(dir, 0755) != 0) {
    int e = errno;
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES
                     : e == ENOENT || e == ENOTDIR ? CF_ENOENT : CF_EIO,
                     "store %s: cannot create directory: %s", dir, strerror(e));
  }
  return 0;
}

int cf_store_open(const char *dir, const cf_store_geom_t *geom, const cf_store_config_t *cfg,
                  cf_store_t **out) {
  *out = NULL;
  cf_store_config_t defc;
  if (!cfg) { cf_store_config_default(&defc); cfg = &defc; }
  if (!dir || strlen(dir) >= 1000) return cf_seterr(CF_EINVAL, "store: directory path missing or too long");
  if (!geom && !cfg->readonly) return cf_seterr(CF_EINVAL, "store %s: geometry required", dir);
  if (geom && (!geom->dtype_size || !geom->chunk_tokens || !geom->n_layers || !geom->n_kv_heads ||
               !geom->head_dim))
    return cf_seterr(CF_EINVAL, "store %s: geometry has a zero dimension", dir);
  cf_store_geom_t gn; /* the geometry with its dtype resolved (see cf_store_geom_t.dtype) */
  if (geom) {
    gn = *geom;
    if (gn.dtype == CF_STORE_DT_UNSET && gn.dtype_size == 4) gn.dtype = CF_STORE_DT_F32;
    uint32_t want = gn.dtype == CF_STORE_DT_F32 ? 4 : gn.dtype == CF_STORE_DT_UNSET ? gn.dtype_size : 2;
    if (gn.dtype > CF_STORE_DT_F16 || gn.dtype_size != want)
      return cf_seterr(CF_EINVAL, "store %s: geometry dtype code %u with dtype_size %u", dir, gn.dtype, gn.dtype_size);
    geom = &gn;
  }
  int rc = cf__dir_prepare(dir, cfg->readonly);
  if (rc) return rc;

  cf_store_t *st = calloc(1, sizeof *st);
  if (!st) return cf_seterr(CF_ENOMEM, "store");
  snprintf(st->dir, sizeof st->dir, "%s", dir);
  st->cfg = *cfg;
  st->jfd = -1;
  pthread_mutex_init(&st->mu, NULL);
  pthread_mutex_init(&st->jmu, NULL);
  pthread_mutex_init(&st->grow_mu, NULL);
  pthread_mutex_init(&st->spill_mu, NULL);
  pthread_cond_init(&st->cv, NULL);

  /* geometry: the header decides when it exists */
  int32_t spf = 0;
  char hp[1100];
  snprintf(hp, sizeof hp, "%s/header", dir);
  int have_hdr = access(hp, F_OK) == 0;
  if (have_hdr) {
    rc = geom ? cf__hdr_check(dir, geom, &spf) : cf__hdr_read(dir, &st->g, &spf);
    if (rc) goto fail;
    if (geom) st->g = *geom;
  } else {
    char jp[1100];
    snprintf(jp, sizeof jp, "%s/journal", dir);
    if (cfg->readonly || access(jp, F_OK) == 0) {
      rc = cf_seterr(cfg->readonly ? CF_ENOENT : CF_EFORMAT,
                     "store %s: header missing (not a store, or damaged)", dir);
      goto fail;
    }
    st->g = *geom;
  }
  st->cell_bytes = cf_store_cell_bytes(&st->g);
  st->cell_stride = (st->cell_bytes + CF__ALIGN - 1) & ~(size_t)(CF__ALIGN - 1);
  st->slot_bytes = st->cell_stride * st->g.n_layers;
  st->jrec_bytes = 48 + 8 * (size_t)st->g.n_layers;
  if (!have_hdr) {
    uint64_t fb = cfg->file_bytes ? cfg->file_bytes : (256ull << 20);
    spf = (int32_t)(fb / st->slot_bytes);
    if (spf < 1) spf = 1;
  }
  st->slots_per_file = spf;
  if (cfg->readonly) {
    st->cfg.cpu_bytes = 0;
    /* inspect every slot the files may hold */
    st->cfg.ssd_bytes = 0;
    struct stat sb;
    for (int i = 0;; i++) {
      char p[1100];
      snprintf(p, sizeof p, "%s/data.%03d", dir, i);
      if (stat(p, &sb) != 0) break;
      /* slots are numbered file by file; a record past a file's end is reported damaged */
      st->cfg.ssd_bytes = (uint64_t)(i + 1) * spf * st->slot_bytes;
    }
  }
  /* slot counts are int32 and the index is sized from them: refuse absurd caps up front */
  if (st->cfg.cpu_bytes / st->slot_bytes > (1u << 28) || st->cfg.ssd_bytes / st->slot_bytes > (1u << 28)) {
    rc = cf_seterr(CF_ERANGE, "store %s: caps of %llu (CPU) / %llu (SSD) bytes hold more than 2^28 "
                   "chunks of %zu bytes", dir, (unsigned long long)st->cfg.cpu_bytes,
                   (unsigned long long)st->cfg.ssd_bytes, st->slot_bytes);
    goto fail;
  }
  st->n_cpu_slots = (int32_t)(st->cfg.cpu_bytes / st->slot_bytes);
  st->n_ssd_slots = (int32_t)(st->cfg.ssd_bytes / st->slot_bytes);
  st->n_files = (st->n_ssd_slots + spf - 1) / spf;
  st->n_ents_max = st->n_cpu_slots * 2 + st->n_ssd_slots + 64;
  uint32_t cap = 1;
  while (cap < (uint32_t)st->n_ents_max * 2) cap <<= 1;
  st->tab_mask = cap - 1;
  st->tab = malloc(sizeof(int32_t) * cap);
  st->ents = malloc(sizeof(cf__ent_t) * (size_t)st->n_ents_max);
  st->csum = malloc(8 * (size_t)st->g.n_layers * (size_t)st->n_ents_max);
  st->cpu_free = malloc(sizeof(int32_t) * ((size_t)st->n_cpu_slots + 1));
  st->dfd = malloc(sizeof(int) * ((size_t)st->n_files + 1));
  st->ssd_owner = malloc(sizeof(int32_t) * ((size_t)st->n_ssd_slots + 1));
  st->ssd_reads = calloc((size_t)st->n_ssd_slots + 1, sizeof(uint16_t));
  st->ssd_zombie = calloc((size_t)st->n_ssd_slots + 1, 1);
  st->ssd_free = malloc(sizeof(int32_t) * ((size_t)st->n_ssd_slots + 1));
  if (!st->tab || !st->ents || !st->csum || !st->cpu_free || !st->dfd || !st->ssd_owner ||
      !st->ssd_reads || !st->ssd_zombie || !st->ssd_free) {
    rc = cf_seterr(CF_ENOMEM, "store %s: index for %d entries", dir, st->n_ents_max);
    goto fail;
  }
  memset(st->tab, 0xff, sizeof(int32_t) * cap);
  for (int32_t i = 0; i < st->n_ents_max; i++) st->ents[i].cnext = i + 1 < st->n_ents_max ? i + 1 : -1;
  st->ent_free = 0;
  for (int i = 0; i < st->n_files; i++) st->dfd[i] = -1;
  for (int32_t i = 0; i < st->n_ssd_slots; i++) st->ssd_owner[i] = -1;
  for (int q = 0; q < CF__Q__N; q++) st->q[q] = (cf__list_t){-1, -1, 0};
  st->dirty = st->ssd_lru = (cf__list_t){-1, -1, 0};
  st->small_target = (uint32_t)(st->n_cpu_slots / 10 > 0 ? st->n_cpu_slots / 10 : 1);

  if (st->n_cpu_slots) {
    st->cpu_base = cf__cpu_region_alloc(st, (size_t)st->n_cpu_slots * st->slot_bytes);
    if (!st->cpu_base) {
      rc = cf_seterr(CF_ENOMEM, "store %s: CPU tier region of %zu bytes", dir,
                     (size_t)st->n_cpu_slots * st->slot_bytes);
      goto fail;
    }
    if (st->cpu_hooked) st->cpu_region = (size_t)st->n_cpu_slots * st->slot_bytes;
    for (int32_t i = 0; i < st->n_cpu_slots; i++) st->cpu_free[i] = st->n_cpu_slots - 1 - i;
    st->n_cpu_free = st->n_cpu_slots;
  }
  if (!have_hdr && (rc = cf__hdr_write(st))) goto fail;
  if ((rc = cf__data_open_existing(st))) goto fail;
  st->replaying = 1;
  rc = cf__journal_replay(st, cfg->readonly);
  st->replaying = 0;
  if (rc) goto fail;
  if (!cfg->readonly) {
    cf__fsync_dir(dir); /* the journal may have just been created */
    cf__data_offer_all(st);
    if (st->jrecords > 2 * (uint64_t)st->st.ssd_chunks + st->cfg.journal_slack &&
        (rc = cf__journal_compact(st)))
      goto fail;
    cf__ring_init(&st->wring, CF__SPILL_BATCH);
    if (st->cfg.spill && st->n_cpu_slots && st->n_ssd_slots) {
      if (pthread_create(&st->spiller, NULL, cf__spiller_main, st) != 0) {
        rc = cf_seterr(CF_ENOMEM, "store %s: cannot start the spill thread", dir);
        goto fail;
      }
      st->spiller_on = 1;
    }
  }
  *out = st;
  return 0;
fail:
  cf_store_close(st);
  return rc;
}

void cf_store_get_stats(cf_store_t *st, cf_store_stats_t *o) {
  pthread_mutex_lock(&st->mu);
  *o = st->st;
  o->cpu_bytes_cap = st->cfg.cpu_bytes;
  o->cpu_bytes_used = (uint64_t)(st->n_cpu_slots - st->n_cpu_free) * st->slot_bytes;
  o->cpu_dirty = st->dirty.n;
  o->ssd_bytes_cap = st->cfg.ssd_bytes;
  o->ssd_bytes_used = o->ssd_chunks * st->slot_bytes;
  o->journal_records = __atomic_load_n(&st->jrecords, __ATOMIC_RELAXED);
  o->enospc = __atomic_load_n(&st->n_enospc, __ATOMIC_RELAXED);
  o->io_errors = __atomic_load_n(&st->n_io_errors, __ATOMIC_RELAXED);
  o->journal_compactions = __atomic_load_n(&st->n_compactions, __ATOMIC_RELAXED);
  o->ssd_direct = st->direct;
  o->cpu_hugepages = st->cpu_huge;
  pthread_mutex_unlock(&st->mu);
}

size_t cf_store_lookup(cf_store_t *st, const cf_store_key_t *keys, size_t n, uint8_t *tiers_out) {
  size_t i = 0;
  pthread_mutex_lock(&st->mu);
  for (; i < n; i++) {
    int32_t e = cf__idx_find(st, &keys[i]);
    if (e < 0) break;
    uint8_t f = st->ents[e].flags;
    int t = (f & CF__F_CPU) ? CF_STORE_TIER_CPU : (f & CF__F_SSD) ? CF_STORE_TIER_SSD : 0;
    if (!t) break;
    if (tiers_out) tiers_out[i] = (uint8_t)t;
  }
  pthread_mutex_unlock(&st->mu);
  return i;
}
