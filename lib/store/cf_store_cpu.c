/* The CPU tier: slots in one region, LRU / S3-FIFO victim choice, eviction that writes a dirty
 * victim back first, filling a slot (save or promotion). */
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_clock.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void cf__cpu_touch(cf_store_t *st, int32_t e) {
  cf__ent_t *en = &st->ents[e];
  if (st->cost_on) return; /* a use is counted once, at its last layer: cf__ssd_touch */
  if (st->cfg.cpu_evict == CF_STORE_EVICT_LRU) {
    if (en->queue == CF__Q_LRU && st->q[CF__Q_LRU].head != e) cf__q_set(st, e, CF__Q_LRU);
  } else if (en->freq < 3) {
    en->freq++;
  }
}

uint8_t *cf__cpu_slot_ptr(const cf_store_t *st, int32_t slot) {
  return st->cpu_base + (size_t)slot * st->slot_bytes;
}

/* Give up the CPU copy of e (mu held; e unpinned, not spilling). */
void cf__cpu_drop(cf_store_t *st, int32_t e, int to_ghost) {
  cf__ent_t *en = &st->ents[e];
  if (!(en->flags & CF__F_SSD)) {
    if (st->dirty.n && en->in_dirty) st->st.cpu_evict_dirty++;
    /* a chunk the SSD tier refused leaves the store now: the SSD tier's victim */
    if (en->flags & CF__F_REFUSED) {
      st->st.ssd_evictions++;
      if (!en->uses) st->st.ssd_evict_unread++;
    }
  }
  cf__dirty_set(st, e, 0);
  cf__q_set(st, e, CF__Q_NONE);
  st->cpu_free[st->n_cpu_free++] = en->cpu_slot;
  en->cpu_slot = -1;
  en->flags &= (uint8_t)~(CF__F_CPU | CF__F_REFUSED);
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

int cf__evictable(const cf__ent_t *en) {
  return (en->flags & CF__F_CPU) && !en->pins && !(en->flags & CF__F_SPILL);
}

/* Choose the CPU-tier victim by the configured policy (mu held) without dropping it: the caller
 * drops it (cf__cpu_drop with *to_ghost) or writes it back first. The policy's queue moves
 * (S3-FIFO reinsertion) happen here. Returns the entry, or CF_EBUSY (every slot pinned). */
static int cf__cpu_ok(cf_store_t *st, int32_t e) { return cf__evictable(&st->ents[e]); }

static int32_t cf__cpu_pick(cf_store_t *st, int *to_ghost) {
  *to_ghost = 0;
  if (st->cost_on) {
    /* the lowest priority unpinned chunk (cf_store_cost.c); a dirty one is written back first */
    int32_t pick = cf__heap_pick(st, 0, cf__cpu_ok);
    if (pick < 0) return cf_seterr(CF_EBUSY, "store %s: every CPU slot is pinned", st->dir);
    return pick;
  }
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

/* A write-back that found no SSD slot (ENOSPC) may get one soon: every data file is there, and
 * slots are held by other threads' write-backs in flight (their chunks become victims, or their
 * slots free, when they end) or by SSD reads other threads hold (mu held). The caller's own batch
 * has ended by then; its own read pins (an async reader it has not polled) are not counted, so it
 * never waits on itself. */
static int cf__ssd_busy_elsewhere(cf_store_t *st, int rc) {
  if (rc != CF_ENOSPC || __atomic_load_n(&st->files_ready, __ATOMIC_ACQUIRE) < st->n_files) return 0;
  long mine = cf__ssd_read_pins_mine();
  return st->spilling > 0 || (uint64_t)st->ssd_read_pins > (uint64_t)(mine > 0 ? mine : 0);
}

#define CF__EVICT_WAITS 40   /* bound on an eviction's waits for SSD slots held elsewhere... */
#define CF__EVICT_WAIT_MS 50 /* ...each at most this long (woken early by cf__ssd_wake) */

/* Wait (mu held, released meanwhile) until SSD slot state changes or CF__EVICT_WAIT_MS pass. */
static void cf__evict_wait_ssd(cf_store_t *st) {
  struct timespec ts = cf_deadline_ms(CF__EVICT_WAIT_MS);
  st->ssd_waiters++;
  st->st.cpu_evict_waits++;
  pthread_cond_timedwait(&st->ssd_cv, &st->mu, &ts);
  st->ssd_waiters--;
}

/* COST: the CPU tier's victim v is a deferred chunk the SSD tier admits now (cf__cpu_evict_safe's
 * retry), which the evicting save would write back and wait on. Instead, when one of the next
 * CF__HANDOFF_WINDOW victims is a clean copy of an SSD chunk, that one's CPU copy goes (the chunk
 * stays stored, on SSD) and v is handed to the spill thread: back on the dirty list, it is
 * weighed and written back there, then is the clean victim of the next eviction (in both tiers
 * only until then). Returns 1 when it freed a slot that way (mu held). */
#define CF__HANDOFF_WINDOW 8
static _Thread_local int cf__handoff_left;

static int cf__handoff_ok(cf_store_t *st, int32_t e) {
  const cf__ent_t *en = &st->ents[e];
  if (cf__evictable(en) && (en->flags & CF__F_SSD)) return 1;
  return --cf__handoff_left <= 0; /* window spent: this one ends the search (not clean: no) */
}

static int cf__evict_handoff(cf_store_t *st, int32_t v) {
  if (!st->cfg.spill) return 0;
  cf__handoff_left = CF__HANDOFF_WINDOW;
  int32_t w = cf__heap_pick(st, 0, cf__handoff_ok);
  if (w < 0 || w == v || !cf__evictable(&st->ents[w]) || !(st->ents[w].flags & CF__F_SSD)) return 0;
  cf__dirty_set(st, v, 1);
  pthread_cond_broadcast(&st->cv); /* the spill thread */
  cf__cpu_drop(st, w, 0);
  st->st.cpu_evict_handoffs++;
  return 1;
}

/* Free one CPU slot (mu held; it may be released and retaken, so callers re-check their own
 * condition afterwards). A victim that is dirty (only in the CPU tier while there is an SSD tier)
 * is written back first, together with the oldest other dirty chunks, and dropped only once it
 * is on SSD: dropping it unwritten would lose a chunk that a later cf_store_flush() reports
 * durable. When that write-back finds no SSD slot only because other threads' write-backs or SSD
 * reads hold them (cf__ssd_busy_elsewhere), it waits for them and writes back again, at most
 * CF__EVICT_WAITS times (about 2 s). Only when the write-back fails otherwise (SSD full of chunks
 * this thread is reading, disk full, I/O error) or the bound is spent is the dirty victim dropped
 * anyway, so the CPU tier keeps making progress; it is counted in cpu_evict_dirty and in
 * lost_dirty, which the next cf_store_flush() returns as an error.
 * write_back 0 (promotion on read): a dirty victim is left alone and CF_EBUSY returned, so a
 * reader never waits on SSD writes nor costs a dirty chunk.
 * Returns 0 (a slot was freed, or may have been: re-check), CF_EBUSY (every slot pinned). */
int cf__cpu_evict_safe(cf_store_t *st, int write_back) {
  int ghost;
  int32_t v = cf__cpu_pick(st, &ghost);
  if (v < 0) {
    /* slots pinned by write-backs in flight come free when they finish */
    if (write_back && st->spilling) { pthread_cond_wait(&st->cv, &st->mu); return 0; }
    return v;
  }
  cf__ent_t *en = &st->ents[v];
  /* cost policy: a chunk whose write-back the full SSD tier refused while it was in the CPU tier
   * (the spiller writes chunks back right after their save, before anyone could read them) is
   * admitted or refused again now that it leaves, on what is known now: a chunk read since
   * competes with its use and its later time, as the same chunk written back only by this
   * eviction would (spill off). A promotion never writes: it drops such a chunk only where the
   * SSD tier refuses it again, else it does not promote (cf_store_cost.c, promotion on read). */
  int retry = write_back && (en->flags & CF__F_REFUSED) && !(en->flags & CF__F_SSD) &&
              !cf__cost_refuse(st, v);
  /* a promotion does not write back: a refused chunk the SSD tier would admit now stays */
  if (!write_back && (en->flags & CF__F_REFUSED) && !(en->flags & CF__F_SSD) && !cf__cost_refuse(st, v))
    return cf_seterr(CF_EBUSY, "store %s: the CPU tier's victim is not written back yet", st->dir);
  if (!st->n_ssd_slots || (en->flags & CF__F_SSD) || (!en->in_dirty && !retry)) {
    if (!(en->flags & CF__F_SSD)) cf__cost_evicted(st, v); /* it leaves the store */
    cf__cpu_drop(st, v, ghost);
    return 0;
  }
  if (!write_back)
    return cf_seterr(CF_EBUSY, "store %s: the CPU tier's victim is not written back yet", st->dir);
  if (retry && !en->in_dirty && cf__evict_handoff(st, v)) return 0;
  if (retry) st->st.cpu_evict_writebacks++;
  int32_t batch[CF__SPILL_BATCH];
  cf_store_key_t key = en->key;
  int rc;
  for (int waits = 0;; waits++) {
    cf__dirty_set(st, v, 0);
    en->flags |= CF__F_SPILL;
    en->pins++;
    st->spilling++;
    batch[0] = v;
    unsigned n = 1 + cf__take_dirty(st, batch + 1, CF__SPILL_BATCH - 1);
    pthread_mutex_unlock(&st->mu);
    rc = cf__spill_batch(st, batch, n, 0);
    pthread_mutex_lock(&st->mu);
    if (!rc) return 0; /* v is clean now: the next pick drops it (or a colder clean chunk) */
    /* write-back failed: v is back on the dirty list, unless another thread took it meanwhile */
    v = cf__idx_find(st, &key);
    if (v < 0 || !cf__evictable(&st->ents[v]) || (st->ents[v].flags & CF__F_SSD)) return 0;
    /* a refused chunk is no loss: no need to wait for it (nor for a v the batch refused) */
    if (retry || !st->ents[v].in_dirty) break;
    if (waits >= CF__EVICT_WAITS || !cf__ssd_busy_elsewhere(st, rc)) break;
    cf__evict_wait_ssd(st);
    /* written back, read, saved again or taken by another eviction meanwhile: pick again */
    v = cf__idx_find(st, &key);
    if (v < 0 || !cf__evictable(&st->ents[v]) || !st->ents[v].in_dirty ||
        (st->ents[v].flags & CF__F_SSD) || !(st->ents[v].flags & CF__F_CPU))
      return 0;
    en = &st->ents[v];
  }
  /* a refused chunk was never promised to SSD: losing it is no flush error. Nor is v when the
   * batch's write-back weighed and refused it (clean now, CF__F_REFUSED) and failed on a later
   * chunk: only a v put back on the dirty list lost its write-back */
  if (!retry && st->ents[v].in_dirty) {
    st->lost_dirty++;
    st->lost_dirty_rc = rc;
  }
  cf__cost_evicted(st, v);
  cf__cpu_drop(st, v, ghost && st->ents[v].queue == CF__Q_SMALL);
  return 0;
}

/* A save took a CPU slot (mu held): it was the one kept for saves if there was one; when it was
 * the last, the spill thread looks at the next victim (cf__evict_ahead, cost policy only). */
static void cf__fill_ahead(cf_store_t *st) {
  if (st->cpu_ahead > st->n_cpu_free) st->cpu_ahead = st->n_cpu_free;
  if (st->cost_on && st->learn_tier == 1 && st->cfg.spill && st->n_ssd_slots && !st->n_cpu_free) {
    st->ahead_due = 1;
    pthread_cond_broadcast(&st->cv);
  }
}

/* Copy a chunk into a CPU slot. The entry is created (or reused when it exists only on SSD or
 * as a ghost) and made visible only after the bytes and checksums are in place. With keep_pin
 * the caller gets the slot pinned and marked CF__F_SPILL (durable save writes it through).
 * Returns 0, CF_EEXIST (already in the CPU tier or being filled), CF_EBUSY, CF_ENOMEM. */
int cf__cpu_fill(cf_store_t *st, const cf_store_key_t *key, uint32_t n_tokens,
                 const void *const *cells, const void *packed, int keep_pin, int32_t *e_out,
                 uint32_t pos) {
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
  /* a promotion leaves the slot the spill thread freed ahead for saves (cf__evict_ahead) */
  while (st->n_cpu_free <= (packed ? st->cpu_ahead : 0)) {
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
  if (!packed) cf__fill_ahead(st);
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
  if (pos < CF__POS_KEEP) cf__cost_set_pos(st, e, pos);
  cf__q_set(st, e, st->cfg.cpu_evict != CF_STORE_EVICT_S3FIFO ? CF__Q_LRU
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

void *cf__cpu_region_alloc(cf_store_t *st, size_t bytes) {
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
