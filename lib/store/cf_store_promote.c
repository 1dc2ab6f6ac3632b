/* Promotion on read (cfg.promote_on_read, set by the cost policy) of chunks read a layer at a
 * time. cf_store_read promotes a chunk read whole from SSD at once (the simulated evaluation,
 * bench_eval_evict, reads whole chunks), but the daemon's restores read SSD chunks one layer per
 * read (lib/exec/cf_cellsrc_store.c, through the async reader), so on the daemon no chunk was
 * ever promoted: the policy measured there was not the one the simulation measured. Here a chunk
 * whose last layer is read from SSD (a use, cf__ssd_touch) is queued, and the spill thread
 * copies it whole from SSD into the CPU tier afterwards, off the restore's path, as a promotion
 * does (cf__cpu_fill with packed bytes: it never writes back, nor takes the slot kept for saves).
 * One more SSD read of the chunk, by the spill thread. Without a spill thread (cfg.spill 0) the
 * queue is not used. A full queue (CF__PROMO_Q keys) drops the newest: a promotion is a hint. */
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void cf__promote_later(cf_store_t *st, int32_t e) {
  if (!st->cfg.promote_on_read || !st->cfg.spill || !st->n_cpu_slots || st->promo_n >= CF__PROMO_Q) return;
  st->promo_q[(st->promo_head + st->promo_n++) % CF__PROMO_Q] = st->ents[e].key;
  pthread_cond_broadcast(&st->cv); /* the spill thread */
}

/* Read chunk e's cells from its SSD slot s into buf, packed (cell_bytes apart), and check them
 * (mu not held; the caller holds a read reference on s). 0, or an error. */
static int cf__promote_read(cf_store_t *st, int32_t s, uint32_t ntok, const uint64_t *csum, uint8_t *buf) {
  const uint32_t L = st->g.n_layers;
  int fd;
  uint64_t off;
  cf__slot_pos(st, s, &fd, &off);
  cf__io_t op = {.fd = fd, .buf = buf, .len = (size_t)L * st->cell_stride, .off = off, .write = 0};
  int rc = cf__ring_run(st, NULL, &op, 1);
  if (rc) return rc;
  if ((size_t)op.res != op.len) return cf_seterr(CF_EIO, "store %s: short read promoting a chunk", st->dir);
  size_t cb = cf_store_cell_bytes_n(&st->g, ntok);
  for (uint32_t l = 0; l < L; l++) {
    memmove(buf + (size_t)l * cb, buf + (size_t)l * st->cell_stride, cb);
    if (XXH3_64bits(buf + (size_t)l * cb, cb) != csum[l])
      return cf_seterr(CF_ECORRUPT, "store %s: checksum mismatch promoting a chunk", st->dir);
  }
  return 0;
}

void cf__promote_queued(cf_store_t *st) {
  const uint32_t L = st->g.n_layers;
  cf_store_key_t key = st->promo_q[st->promo_head];
  st->promo_head = (st->promo_head + 1) % CF__PROMO_Q;
  st->promo_n--;
  int32_t e = cf__idx_find(st, &key);
  /* gone, or in the CPU tier already (saved again, or queued twice) */
  if (e < 0 || (st->ents[e].flags & (CF__F_CPU | CF__F_FILL)) || !(st->ents[e].flags & CF__F_SSD)) return;
  st->promo_busy = 1;
  int32_t s = st->ents[e].ssd_slot;
  uint32_t ntok = st->ents[e].n_tokens;
  uint64_t csum[L ? L : 1];
  memcpy(csum, &st->csum[(size_t)e * L], 8 * (size_t)L);
  cf__ssd_read_pin(st, s);
  pthread_mutex_unlock(&st->mu);
  uint8_t *buf = cf__aligned_alloc((size_t)L * st->cell_stride);
  int rc = buf ? cf__promote_read(st, s, ntok, csum, buf) : cf_seterr(CF_ENOMEM, "promotion buffer");
  cf__slot_unref(st, s);
  /* the reads that follow check the checksums again and drop a corrupt chunk: not done here */
  if (!rc) rc = cf__cpu_fill(st, &key, ntok, NULL, buf, 0, NULL, CF__POS_KEEP);
  free(buf);
  if (rc && rc != CF_EEXIST && rc != CF_EBUSY) CF_DEBUG("store %s: promotion: %s", st->dir, cf_errmsg());
  pthread_mutex_lock(&st->mu);
  if (!rc) st->st.promotions++;
  st->promo_busy = 0;
}
