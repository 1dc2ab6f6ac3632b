/* Shrinking the SSD tier at open, when the configured cap holds fewer slots than the data files
 * (a config change, or `cacheflowctl store fill` sized for fewer prefixes).
 *
 * The journal is the truth, and a slot is written only when no record the next open would replay
 * maps a chunk to it. So the steps, each one safe to be killed after:
 *   1. victims: the chunks the SSD eviction policy gives up (cf__ssd_pick, as a full SSD tier
 *      would evict them), until the rest fit; their DEL records are appended and fdatasync'ed in
 *      batches. A kill leaves some dropped (journaled), the others where they were.
 *   2. moves: every kept chunk whose slot lies at or past the cap is read, checked against its
 *      checksums and written into a slot below the cap that no record maps (never used, or freed
 *      by a DEL that step 1 made durable); then the data files are fdatasync'ed. A kill leaves
 *      copies nobody maps: the journal still maps each chunk to its old slot, whose bytes are
 *      untouched.
 *   3. the journal is rewritten (cf__journal_compact: temp file, fdatasync, rename, directory
 *      fsync) with every kept chunk at its new slot, in eviction order. Before the rename the old
 *      journal and old slots hold; after it the new ones, whose bytes step 2 made durable.
 *   4. only then are the files cut to the cap (cf__data_offer_all). The old slots are past the
 *      cap, so no record of the new journal points there.
 * A chunk that fails its checksum while being moved is dropped (counted as corrupt), not copied.
 * An interrupted shrink is finished by the next open with the smaller cap: the files still hold
 * more than the cap, so the same steps run again from the journal's state. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__SHRINK_DEL_BATCH 64          /* DEL records per fdatasync'ed append */
#define CF__SHRINK_MOVE_BYTES (16u << 20) /* bytes per move batch (two in flight: read, write) */

void cf__test_kill_point(cf_store_t *st) {
  /* read every time: a forked child sets it after its parent opened stores */
  const char *v = getenv("CF_STORE_TEST_KILL_AT");
  if (!v || !*v) return;
  if (++st->kill_points == (unsigned)strtoul(v, NULL, 10)) raise(SIGKILL);
}

void cf__test_delay_point(const char *env) {
  /* test hook: sleep this many microseconds where a race window is (unset: no cost but getenv) */
  const char *v = getenv(env);
  if (v && *v) usleep((useconds_t)strtoul(v, NULL, 10));
}

/* Step 1: choose the victims by the policy, detach them, journal their DELs (synced). */
static int cf__shrink_drop(cf_store_t *st, uint64_t n_victims) {
  uint8_t *recs = malloc(st->jrec_bytes * CF__SHRINK_DEL_BATCH);
  if (!recs) return cf_seterr(CF_ENOMEM, "store %s: shrink", st->dir);
  int rc = 0;
  uint64_t done = 0;
  while (done < n_victims && !rc) {
    unsigned nb = 0;
    pthread_mutex_lock(&st->mu);
    while (nb < CF__SHRINK_DEL_BATCH && done + nb < n_victims) {
      int32_t e = cf__ssd_pick(st);
      if (e < 0) break;
      cf_store_key_t k = st->ents[e].key;
      int32_t s = st->ents[e].ssd_slot;
      cf__jrec_encode(st, recs + (size_t)nb * st->jrec_bytes, 2,
                      __atomic_add_fetch(&st->jseq, 1, __ATOMIC_RELAXED), &k, s, 0, NULL);
      /* the slot is not released: cf__data_offer_all offers every unowned slot afterwards */
      cf__ssd_detach(st, e);
      cf__ent_maybe_free(st, e);
      st->st.ssd_evictions++;
      nb++;
    }
    pthread_mutex_unlock(&st->mu);
    if (!nb) break;
    rc = cf__journal_append(st, recs, nb, 1);
    done += nb;
    cf__test_kill_point(st);
  }
  free(recs);
  return rc;
}

/* Step 2: move the kept chunks that lie at or past the cap into free slots below it. Batches go
 * through one ring run each: the writes of the batch before (read and checked) together with
 * the reads of the next one, so reading and writing overlap. */
typedef struct {
  int32_t *ent, *from, *to;
  uint8_t *buf;
  unsigned n;
} cf__move_batch_t;

static int cf__shrink_move(cf_store_t *st, uint64_t *moved, uint64_t *corrupt) {
  const int32_t cap = st->cap_slots, n = st->n_ssd_slots;
  const uint32_t L = st->g.n_layers;
  unsigned per = (unsigned)(CF__SHRINK_MOVE_BYTES / st->slot_bytes);
  if (per < 1) per = 1;
  if (per > 64) per = 64;
  cf__move_batch_t b[2]; /* b[cur]: being read; b[!cur]: read, checked, being written */
  int32_t *idx = malloc(sizeof(int32_t) * 6 * per);
  cf__io_t *ops = malloc(sizeof(cf__io_t) * 2 * per);
  cf__ring_t ring;
  cf__ring_init(&ring, 2 * per);
  int rc = 0, cur = 0;
  for (int i = 0; i < 2; i++) {
    b[i].ent = idx ? idx + (size_t)(3 * i) * per : NULL;
    b[i].from = idx ? b[i].ent + per : NULL;
    b[i].to = idx ? b[i].from + per : NULL;
    b[i].buf = cf__aligned_alloc(st->slot_bytes * per);
    b[i].n = 0;
  }
  if (!idx || !ops || !b[0].buf || !b[1].buf) {
    rc = cf_seterr(CF_ENOMEM, "store %s: shrink buffers (2 x %u slots)", st->dir, per);
    goto out;
  }
  int32_t src = cap, dst = 0; /* cursors: next slot to empty, next free slot to fill */
  for (;;) {
    cf__move_batch_t *rd = &b[cur], *wr = &b[!cur];
    rd->n = 0;
    pthread_mutex_lock(&st->mu);
    for (; src < n && rd->n < per; src++) {
      int32_t e = st->ssd_owner[src];
      if (e < 0) continue;
      while (dst < cap && st->ssd_owner[dst] >= 0) dst++;
      if (dst >= cap) break; /* cannot happen: step 1 left at most cap chunks */
      rd->ent[rd->n] = e;
      rd->from[rd->n] = src;
      /* claimed now (the copy is unmapped until step 3) so the cursor passes it */
      st->ssd_owner[dst] = e;
      rd->to[rd->n++] = dst++;
    }
    pthread_mutex_unlock(&st->mu);
    if (!rd->n && !wr->n) break;
    unsigned nops = 0;
    for (unsigned i = 0; i < wr->n; i++) {
      if (wr->ent[i] < 0) continue; /* failed its check */
      int fd;
      uint64_t off;
      cf__slot_pos(st, wr->to[i], &fd, &off);
      ops[nops++] = (cf__io_t){.fd = fd, .buf = wr->buf + (size_t)i * st->slot_bytes,
                               .len = st->slot_bytes, .off = off, .write = 1};
    }
    const unsigned nw = nops;
    for (unsigned i = 0; i < rd->n; i++, nops++) {
      int fd;
      uint64_t off;
      cf__slot_pos(st, rd->from[i], &fd, &off);
      ops[nops] = (cf__io_t){.fd = fd, .buf = rd->buf + (size_t)i * st->slot_bytes,
                             .len = st->slot_bytes, .off = off, .write = 0};
    }
    /* the reads are judged per chunk below (a short or failed read loses that chunk, not the
     * open); a failed write fails the shrink (the journal still maps every chunk's old slot) */
    int rrc = cf__ring_run(st, &ring, ops, nops);
    for (unsigned i = 0; i < nw; i++)
      if ((size_t)ops[i].res != ops[i].len) {
        rc = rrc ? rrc : cf_seterr(CF_EIO, "store %s: shrink: a write of %zu bytes at %llu came "
                                   "short", st->dir, ops[i].len, (unsigned long long)ops[i].off);
        goto out;
      }
    /* the index follows the copies just written (each chunk keeps its place in the eviction
     * order); the journal maps the old slots until step 3 */
    pthread_mutex_lock(&st->mu);
    for (unsigned i = 0; i < wr->n; i++) {
      if (wr->ent[i] < 0) continue;
      st->ssd_owner[wr->from[i]] = -1;
      st->ents[wr->ent[i]].ssd_slot = wr->to[i];
    }
    *moved += nw;
    if (nw) cf__test_kill_point(st);
    /* check what was read; the good ones are written with the next run */
    for (unsigned i = 0; i < rd->n; i++) {
      const cf__io_t *op = &ops[nw + i];
      cf__ent_t *en = &st->ents[rd->ent[i]];
      const uint8_t *slot = rd->buf + (size_t)i * st->slot_bytes;
      int good = (size_t)op->res == op->len;
      size_t cb = cf_store_cell_bytes_n(&st->g, en->n_tokens);
      for (uint32_t l = 0; l < L && good; l++)
        good = XXH3_64bits(slot + (size_t)l * st->cell_stride, cb) ==
               st->csum[(size_t)rd->ent[i] * L + l];
      if (!good) {
        /* not copied: the rewritten journal leaves it out, and its old slot is cut off */
        CF_WARN("store %s: shrink: slot %d failed its checksum: chunk dropped", st->dir,
                rd->from[i]);
        st->st.corrupt_chunks++;
        st->st.corrupt_cells += L;
        st->ssd_owner[rd->to[i]] = -1;
        cf__ssd_detach(st, rd->ent[i]);
        cf__ent_maybe_free(st, rd->ent[i]);
        rd->ent[i] = -1;
        (*corrupt)++;
      }
    }
    pthread_mutex_unlock(&st->mu);
    wr->n = 0;
    cur = !cur;
  }
  pthread_mutex_lock(&st->mu);
  for (int32_t s = cap; s < n && !rc; s++)
    if (st->ssd_owner[s] >= 0)
      rc = cf_seterr(CF_EIO, "store %s: slot %d still holds a chunk after the moves", st->dir, s);
  pthread_mutex_unlock(&st->mu);
  if (rc) goto out;
  rc = cf__data_sync(st); /* the copies are durable before any record names them */
  cf__test_kill_point(st);
out:
  cf__ring_exit(&ring);
  free(idx); free(ops); free(b[0].buf); free(b[1].buf);
  return rc;
}

int cf__ssd_shrink(cf_store_t *st) {
  const int32_t cap = st->cap_slots;
  if (st->n_ssd_slots <= cap) return 0;
  pthread_mutex_lock(&st->mu);
  uint64_t live = st->st.ssd_chunks, high = 0;
  for (int32_t s = cap; s < st->n_ssd_slots; s++) high += st->ssd_owner[s] >= 0;
  pthread_mutex_unlock(&st->mu);
  uint64_t victims = live > (uint64_t)cap ? live - (uint64_t)cap : 0, moved = 0, corrupt = 0;
  int rc = 0;
  if (victims || high) {
    if ((rc = cf__shrink_drop(st, victims))) goto fail;
    if ((rc = cf__shrink_move(st, &moved, &corrupt))) goto fail;
  }
  /* from here on the store is the size of the cap */
  const int32_t old_slots = st->n_ssd_slots;
  st->n_ssd_slots = cap;
  if (victims || high) {
    if ((rc = cf__journal_compact(st))) goto fail;
    cf__test_kill_point(st);
  }
  int nf = (cap + st->slots_per_file - 1) / st->slots_per_file;
  for (int i = nf; i < st->files_ready; i++) {
    if (st->dfd[i] >= 0) close(st->dfd[i]);
    st->dfd[i] = -1;
  }
  if (st->files_ready > nf) st->files_ready = nf;
  st->n_files = nf;
  if (victims || high)
    CF_INFO("store %s: SSD cap of %d slots, the data files held %d: %llu chunk(s) dropped by the "
            "eviction policy (journaled), %llu moved below the cap, %llu found corrupt", st->dir,
            cap, old_slots, (unsigned long long)victims, (unsigned long long)moved,
            (unsigned long long)corrupt);
  return 0;
fail:
  return cf_err_prefix(rc, "shrinking the SSD tier to its cap: ");
}
