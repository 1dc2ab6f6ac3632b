/* Reads: CPU-tier pins, synchronous chunk/layer reads, and the asynchronous io_uring cell reader.
 * Every SSD read verifies the cell checksum before the bytes are reported good. While a read is
 * in flight its SSD slot carries a read count, so eviction never reuses it underneath. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"

int cf_store_pin(cf_store_t *st, const cf_store_key_t *key, cf_store_pin_t *pin) {
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  if (e < 0 || !(st->ents[e].flags & CF__F_CPU)) {
    st->st.misses++;
    pthread_mutex_unlock(&st->mu);
    return CF_ENOTFOUND;
  }
  cf__ent_t *en = &st->ents[e];
  en->pins++;
  cf__cpu_touch(st, e);
  cf__ssd_touch(st, e);
  st->st.cpu_hits++;
  pin->base = st->cpu_base + (size_t)en->cpu_slot * st->slot_bytes;
  pin->cell_stride = st->cell_stride;
  pin->n_tokens = en->n_tokens;
  pin->cell_bytes = cf_store_cell_bytes_n(&st->g, en->n_tokens);
  pin->ent_ = e;
  pthread_mutex_unlock(&st->mu);
  return 0;
}

void cf_store_unpin(cf_store_t *st, cf_store_pin_t *pin) {
  if (!pin || pin->ent_ < 0) return;
  pthread_mutex_lock(&st->mu);
  st->ents[pin->ent_].pins--;
  pthread_mutex_unlock(&st->mu);
  pin->ent_ = -1;
  pin->base = NULL;
}

/* SSD read pins the calling thread took and has not dropped (a reader polled from another thread
 * skews both threads' counts: cf__cpu_evict_safe then waits less, or at most its bound, in vain) */
static _Thread_local long cf__ssd_read_pins_me;

void cf__ssd_read_pin(cf_store_t *st, int32_t s) {
  st->ssd_reads[s]++;
  st->ssd_read_pins++;
  cf__ssd_read_pins_me++;
}

long cf__ssd_read_pins_mine(void) { return cf__ssd_read_pins_me; }

/* Drop a read reference on SSD slot s; the last reader of a dropped slot frees it. */
void cf__slot_unref(cf_store_t *st, int32_t s) {
  pthread_mutex_lock(&st->mu);
  st->ssd_read_pins--;
  cf__ssd_read_pins_me--;
  if (--st->ssd_reads[s] == 0) {
    if (st->ssd_zombie[s]) {
      st->ssd_zombie[s] = 0;
      st->ssd_free[st->n_ssd_free++] = s;
    }
    cf__ssd_wake(st); /* the slot's chunk (or the slot) can be the SSD tier's again */
  }
  pthread_mutex_unlock(&st->mu);
}

static int cf__check_layers(cf_store_t *st, uint32_t layer0, uint32_t n_layers) {
  if (n_layers == 0 || layer0 >= st->g.n_layers || n_layers > st->g.n_layers - layer0)
    return cf_seterr(CF_EINVAL, "store read: layers [%u, %u) outside the model's %u", layer0,
                     layer0 + n_layers, st->g.n_layers);
  return 0;
}

int cf_store_read(cf_store_t *st, const cf_store_key_t *key, uint32_t layer0, uint32_t n_layers,
                  void *dst, size_t dst_bytes, int *tier_out) {
  int rc = cf__check_layers(st, layer0, n_layers);
  if (rc) return rc;
  const uint32_t L = st->g.n_layers;
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, key);
  uint8_t f = e >= 0 ? st->ents[e].flags : 0;
  if (f & CF__F_CPU) {
    cf__ent_t *en = &st->ents[e];
    size_t cb = cf_store_cell_bytes_n(&st->g, en->n_tokens);
    if (dst_bytes < cb * n_layers) {
      pthread_mutex_unlock(&st->mu);
      return cf_seterr(CF_EINVAL, "store read: destination holds %zu bytes, %u cells need %zu",
                       dst_bytes, n_layers, cb * n_layers);
    }
    en->pins++;
    cf__cpu_touch(st, e);
    /* a use of the chunk: counted once, at its last layer. A restore loads layers [h, L) of a
     * chunk and computes [0, h) (cf_sched.h), so the last layer is read whenever any is; at the
     * first layer (as before) no chunk the plan partly computed counted as used on the daemon,
     * which reads a layer at a time, while the simulated evaluation (one layer a chunk) counted
     * every loaded chunk */
    if (layer0 + n_layers == L) cf__ssd_touch(st, e);
    st->st.cpu_hits++;
    const uint8_t *src = st->cpu_base + (size_t)en->cpu_slot * st->slot_bytes;
    pthread_mutex_unlock(&st->mu);
    for (uint32_t l = 0; l < n_layers; l++)
      memcpy((uint8_t *)dst + (size_t)l * cb, src + (size_t)(layer0 + l) * st->cell_stride, cb);
    pthread_mutex_lock(&st->mu);
    st->ents[e].pins--;
    pthread_mutex_unlock(&st->mu);
    if (tier_out) *tier_out = CF_STORE_TIER_CPU;
    return 0;
  }
  if (!(f & CF__F_SSD)) {
    pthread_mutex_unlock(&st->mu);
    rc = cf__remote_read(st, key, layer0, n_layers, dst, dst_bytes);
    pthread_mutex_lock(&st->mu);
    if (rc) st->st.misses++;
    else st->st.remote_hits++;
    pthread_mutex_unlock(&st->mu);
    if (!rc && tier_out) *tier_out = CF_STORE_TIER_REMOTE;
    return rc;
  }
  cf__ent_t *en = &st->ents[e];
  int32_t s = en->ssd_slot;
  uint32_t ntok = en->n_tokens;
  uint64_t csum[L];
  memcpy(csum, &st->csum[(size_t)e * L], 8 * (size_t)L);
  cf__ssd_read_pin(st, s);
  if (layer0 + n_layers == L) cf__ssd_touch(st, e); /* at its last layer: above */
  if (layer0 + n_layers == L && layer0 > 0) cf__promote_later(st, e); /* whole reads promote below */
  pthread_mutex_unlock(&st->mu);

  size_t cb = cf_store_cell_bytes_n(&st->g, ntok);
  if (dst_bytes < cb * n_layers) {
    cf__slot_unref(st, s);
    return cf_seterr(CF_EINVAL, "store read: destination holds %zu bytes, %u cells need %zu",
                     dst_bytes, n_layers, cb * n_layers);
  }
  int fd;
  uint64_t off;
  cf__slot_pos(st, s, &fd, &off);
  off += (uint64_t)layer0 * st->cell_stride;
  size_t span = (size_t)n_layers * st->cell_stride;
  /* straight into dst when the cells are contiguous and aligned, else through a bounce buffer */
  int direct_ok = cb == st->cell_stride && ((uintptr_t)dst % CF__ALIGN) == 0;
  uint8_t *buf = direct_ok ? dst : cf__aligned_alloc(span);
  if (!buf) { cf__slot_unref(st, s); return cf_seterr(CF_ENOMEM, "store read bounce buffer"); }
  cf__io_t op = {.fd = fd, .buf = buf, .len = span, .off = off, .write = 0};
  rc = cf__ring_run(st, NULL, &op, 1);
  uint32_t bad = 0, first_bad = 0;
  if (!rc) {
    for (uint32_t l = 0; l < n_layers; l++) {
      uint8_t *cell = buf + (size_t)l * st->cell_stride;
      if (!direct_ok) memcpy((uint8_t *)dst + (size_t)l * cb, cell, cb);
      if (XXH3_64bits((uint8_t *)dst + (size_t)l * cb, cb) != csum[layer0 + l]) {
        if (!bad) first_bad = layer0 + l;
        bad++;
      }
    }
  }
  if (!direct_ok) free(buf);
  cf__slot_unref(st, s);
  if (rc == CF_EIO && op.res >= 0) {
    /* short read: the data file lost the bytes (truncated). Same as corruption for the caller. */
    bad = n_layers;
    first_bad = layer0;
  } else if (rc) {
    return rc;
  }
  if (bad) {
    cf__ssd_drop_corrupt(st, key, s, bad);
    return cf_seterr(CF_ECORRUPT, "store %s: slot %d layer %u: checksum mismatch (%u of %u cells); "
                     "chunk dropped", st->dir, s, first_bad, bad, n_layers);
  }
  pthread_mutex_lock(&st->mu);
  st->st.ssd_hits++;
  pthread_mutex_unlock(&st->mu);
  if (tier_out) *tier_out = CF_STORE_TIER_SSD;
  if (st->cfg.promote_on_read && st->n_cpu_slots && layer0 == 0 && n_layers == L) {
    if (cf__cpu_fill(st, key, ntok, NULL, dst, 0, NULL, CF__POS_KEEP) == 0) {
      pthread_mutex_lock(&st->mu);
      st->st.promotions++;
      pthread_mutex_unlock(&st->mu);
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- async reader */

struct cf_store_reader_s {
  cf_store_t *st;
  cf__ring_t ring;
  unsigned inflight;
};

int cf_store_reader_open(cf_store_t *st, unsigned depth, cf_store_reader_t **out) {
  cf_store_reader_t *rd = calloc(1, sizeof *rd);
  if (!rd) return cf_seterr(CF_ENOMEM, "store reader");
  rd->st = st;
  cf__ring_init(&rd->ring, depth ? depth : 32);
  *out = rd;
  return 0;
}

void cf_store_reader_close(cf_store_reader_t *rd) {
  if (!rd) return;
  cf_store_read_t *done[64];
  while (rd->inflight) cf_store_read_poll(rd, 1, done, 64);
  cf__ring_exit(&rd->ring);
  free(rd);
}

unsigned cf_store_reader_inflight(const cf_store_reader_t *rd) { return rd->inflight; }

/* Finish an SSD read whose transfer returned `res` bytes (or -errno). */
static void cf__read_finish(cf_store_reader_t *rd, cf_store_read_t *req, int res) {
  cf_store_t *st = rd->st;
  size_t cb = cf_store_cell_bytes_n(&st->g, req->n_tokens_);
  size_t want = req->bounce_ ? st->cell_stride : cb;
  if (res >= 0 && (size_t)res == want) {
    if (req->bounce_) memcpy(req->dst, req->bounce_, cb);
    if (XXH3_64bits(req->dst, cb) == req->csum_) {
      req->status = 0;
      req->tier = CF_STORE_TIER_SSD;
      pthread_mutex_lock(&st->mu);
      st->st.ssd_hits++;
      pthread_mutex_unlock(&st->mu);
    } else {
      req->status = CF_ECORRUPT;
    }
  } else if (res >= 0) {
    req->status = CF_ECORRUPT; /* short: the data file is truncated */
  } else {
    req->status = CF_EIO;
    __atomic_add_fetch(&st->n_io_errors, 1, __ATOMIC_RELAXED);
  }
  free(req->bounce_);
  req->bounce_ = NULL;
  cf__slot_unref(st, req->ssd_slot_);
  if (req->status == CF_ECORRUPT) cf__ssd_drop_corrupt(st, &req->key, req->ssd_slot_, 1);
}

int cf_store_read_submit(cf_store_reader_t *rd, cf_store_read_t *req) {
  cf_store_t *st = rd->st;
  req->bounce_ = NULL;
  req->tier = CF_STORE_TIER_NONE;
  if (req->layer >= st->g.n_layers) {
    req->status = cf__check_layers(st, req->layer, 1);
    return 1;
  }
  pthread_mutex_lock(&st->mu);
  int32_t e = cf__idx_find(st, &req->key);
  uint8_t f = e >= 0 ? st->ents[e].flags : 0;
  if (f & CF__F_CPU) {
    cf__ent_t *en = &st->ents[e];
    size_t cb = cf_store_cell_bytes_n(&st->g, en->n_tokens);
    if (req->dst_bytes < cb) {
      pthread_mutex_unlock(&st->mu);
      req->status = CF_EINVAL;
      return 1;
    }
    req->n_tokens = en->n_tokens;
    en->pins++;
    cf__cpu_touch(st, e);
    if (req->layer + 1 == st->g.n_layers) cf__ssd_touch(st, e); /* at its last layer (cf_store_read) */
    st->st.cpu_hits++;
    const uint8_t *src = st->cpu_base + (size_t)en->cpu_slot * st->slot_bytes +
                         (size_t)req->layer * st->cell_stride;
    pthread_mutex_unlock(&st->mu);
    memcpy(req->dst, src, cb);
    pthread_mutex_lock(&st->mu);
    st->ents[e].pins--;
    pthread_mutex_unlock(&st->mu);
    req->status = 0;
    req->tier = CF_STORE_TIER_CPU;
    return 1;
  }
  if (!(f & CF__F_SSD)) {
    st->st.misses++;
    pthread_mutex_unlock(&st->mu);
    req->status = CF_ENOTFOUND;
    return 1;
  }
  if (rd->ring.ok && rd->inflight >= rd->ring.depth) {
    pthread_mutex_unlock(&st->mu);
    return CF_EAGAIN;
  }
  cf__ent_t *en = &st->ents[e];
  int32_t s = en->ssd_slot;
  if (req->layer + 1 == st->g.n_layers) {
    cf__ssd_touch(st, e);    /* at its last layer (cf_store_read) */
    cf__promote_later(st, e); /* read a layer at a time: promoted afterwards */
  }
  req->ssd_slot_ = s;
  req->n_tokens_ = en->n_tokens;
  req->n_tokens = en->n_tokens;
  req->csum_ = st->csum[(size_t)e * st->g.n_layers + req->layer];
  cf__ssd_read_pin(st, s);
  pthread_mutex_unlock(&st->mu);

  size_t cb = cf_store_cell_bytes_n(&st->g, req->n_tokens_);
  if (req->dst_bytes < cb) {
    cf__slot_unref(st, s);
    req->status = CF_EINVAL;
    return 1;
  }
  int fd;
  uint64_t off;
  cf__slot_pos(st, s, &fd, &off);
  off += (uint64_t)req->layer * st->cell_stride;
  void *buf = req->dst;
  size_t len = cb;
  if (st->direct && (cb % CF__ALIGN || (uintptr_t)req->dst % CF__ALIGN)) {
    req->bounce_ = cf__aligned_alloc(st->cell_stride);
    if (!req->bounce_) { cf__slot_unref(st, s); req->status = CF_ENOMEM; return 1; }
    buf = req->bounce_;
    len = st->cell_stride;
  }
  if (!rd->ring.ok) {
    ssize_t k = pread(fd, buf, len, (off_t)off);
    cf__read_finish(rd, req, k < 0 ? -errno : (int)k);
    return 1;
  }
  struct io_uring_sqe *sqe = io_uring_get_sqe(&rd->ring.ring);
  if (!sqe) { /* cannot happen below depth; keep the slot reference balanced anyway */
    free(req->bounce_);
    req->bounce_ = NULL;
    cf__slot_unref(st, s);
    return CF_EAGAIN;
  }
  io_uring_prep_read(sqe, fd, buf, (unsigned)len, off);
  io_uring_sqe_set_data(sqe, req);
  int rc = io_uring_submit(&rd->ring.ring);
  if (rc < 0) {
    cf__read_finish(rd, req, rc);
    return 1;
  }
  rd->inflight++;
  return 0;
}

int cf_store_read_poll(cf_store_reader_t *rd, unsigned min, cf_store_read_t **done, unsigned max) {
  unsigned n = 0;
  if (min > rd->inflight) min = rd->inflight;
  while (n < max && rd->inflight) {
    struct io_uring_cqe *cqe;
    int rc = n < min ? io_uring_wait_cqe(&rd->ring.ring, &cqe) : io_uring_peek_cqe(&rd->ring.ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    cf_store_read_t *req = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&rd->ring.ring, cqe);
    rd->inflight--;
    cf__read_finish(rd, req, res);
    done[n++] = req;
  }
  return (int)n;
}
