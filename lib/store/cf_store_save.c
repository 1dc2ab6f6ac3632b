/* Saving (through the CPU tier or straight to SSD), flush and remove. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

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
                           const void *const *cells, unsigned flags, uint32_t pos) {
  const uint32_t L = st->g.n_layers;
  size_t cb = cf_store_cell_bytes_n(&st->g, n_tokens);
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  if (e >= 0 && (st->ents[e].flags & (CF__F_SSD | CF__F_SSDSAVE))) {
    st->st.save_exists++;
    cf__cost_set_pos(st, e, pos);
    pthread_mutex_unlock(&st->mu);
    return CF_EEXIST;
  }
  if (e < 0) e = cf__idx_insert(st, key);
  if (e < 0) { pthread_mutex_unlock(&st->mu); return cf_seterr(CF_ENOMEM, "store %s: index full", st->dir); }
  cf__cost_set_pos(st, e, pos); /* not in a heap yet: the publication adds it with its index */
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
  return cf_store_save_at(st, key, CF__POS_KEEP, n_tokens, cells, flags);
}

int cf_store_save_at(cf_store_t *st, const cf_store_key_t *key, uint32_t pos, uint32_t n_tokens,
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
    int rc = cf__save_direct(st, key, n_tokens, cells, flags, pos);
    if (rc == 0 && !(flags & CF_STORE_SAVE_NO_REMOTE)) cf__remote_saved(st, key, pos, n_tokens, cells);
    return rc;
  }
  int32_t e;
  int rc = cf__cpu_fill(st, key, n_tokens, cells, NULL, durable && st->n_ssd_slots, &e, pos);
  if (rc == CF_EEXIST || (rc == 0 && durable && st->n_ssd_slots)) {
    if (rc == CF_EEXIST) {
      pthread_mutex_lock(&st->mu);
      st->st.save_exists++;
      e = cf__idx_find(st, key);
      /* a stored chunk learns its index (lost at a restart: not journaled) */
      if (e >= 0) cf__cost_set_pos(st, e, pos);
      if (!durable || e < 0 || !st->n_ssd_slots) { pthread_mutex_unlock(&st->mu); return CF_EEXIST; }
      /* durable save of a key we hold: make sure it reaches SSD, then sync */
      while (e >= 0 && (st->ents[e].flags & (CF__F_SPILL | CF__F_FILL | CF__F_SSDSAVE))) {
        pthread_cond_wait(&st->cv, &st->mu);
        e = cf__idx_find(st, key);
      }
      if (e < 0 || !(st->ents[e].flags & (CF__F_CPU | CF__F_SSD))) {
        pthread_mutex_unlock(&st->mu);
        return cf_store_save_at(st, key, pos, n_tokens, cells, flags); /* evicted meanwhile: save again */
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
    int fresh = rc == 0;
    rc = cf__spill_batch(st, &e, 1, 1);
    if (fresh && !(flags & CF_STORE_SAVE_NO_REMOTE)) cf__remote_saved(st, key, pos, n_tokens, cells);
    if (rc) return cf_err_prefix(rc, "durable save (the chunk stays in the CPU tier): ");
    return 0;
  }
  if (rc == 0) {
    pthread_mutex_lock(&st->mu);
    st->st.saves++;
    pthread_mutex_unlock(&st->mu);
    if (!(flags & CF_STORE_SAVE_NO_REMOTE)) cf__remote_saved(st, key, pos, n_tokens, cells);
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
  if (en->flags & CF__F_CPU) {
    en->flags &= (uint8_t)~CF__F_REFUSED; /* a removal, not the SSD tier's eviction */
    cf__cpu_drop(st, e, 0);
    st->st.cpu_evictions--;
  }
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
