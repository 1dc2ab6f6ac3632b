/* cf_cellsrc_store — see cf_cellsrc_store.h. */
#include "exec/cf_cellsrc_store.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "store/cf_remote.h"
#include "store/cf_stage_ring.h"
#include "util/cf_err.h"

int cf_exec_store_dtype(const cf_store_geom_t *g, cf_dtype_t *out) {
  switch (g->dtype) {
    case CF_STORE_DT_F32: *out = CF_DT_F32; return 0;
    case CF_STORE_DT_BF16: *out = CF_DT_BF16; return 0;
    case CF_STORE_DT_F16: *out = CF_DT_F16; return 0;
    default:
      return cf_seterr(CF_EDTYPE, "store holds %s elements (dtype code %u); KV needs f32, bf16 or f16",
                       cf_store_dtype_name(g->dtype, g->dtype_size), g->dtype);
  }
}

int cf_exec_geom_dtype(cf_store_geom_t *g, cf_dtype_t t) {
  uint32_t code = t == CF_DT_F32 ? CF_STORE_DT_F32 : t == CF_DT_BF16 ? CF_STORE_DT_BF16
                : t == CF_DT_F16 ? CF_STORE_DT_F16 : CF_STORE_DT_UNSET;
  if (!code) return cf_seterr(CF_EDTYPE, "KV dtype %s: expected F32, BF16 or F16", cf_dtype_name(t));
  g->dtype = code;
  g->dtype_size = (uint32_t)cf_dtype_size(t);
  return 0;
}

static int cf__cpu_acquire(cf_cellsrc_t *src, void *ref, int layer, const void **k, const void **v,
                           void **hold) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_store_chunkref_t *r = ref;
  *hold = NULL;
  if (!r->pinned) return cf_seterr(CF_ENOTFOUND, "cpu tier: chunk not pinned");
  const cf_store_geom_t *g = cf_store_geom(s->st);
  if ((uint32_t)layer >= g->n_layers) return cf_seterr(CF_EINVAL, "cpu tier: layer %d of %u", layer, g->n_layers);
  const uint8_t *p = r->pin.base + (size_t)layer * r->pin.cell_stride;
  *k = p;
  *v = p + s->half_bytes;
  return 0;
}

static int cf__cpu_read(cf_cellsrc_t *src, void *ref, int layer, void *kv) {
  cf_cellsrc_store_t *s = src->ctx;
  const void *k = NULL, *v = NULL;
  void *hold;
  int rc = cf__cpu_acquire(src, ref, layer, &k, &v, &hold);
  if (rc) return rc;
  memcpy(kv, k, 2 * s->half_bytes);
  return 0;
}

static void cf__reader_free(void *rd) { cf_store_reader_close(rd); }

static int cf__ssd_read(cf_cellsrc_t *src, void *ref, int layer, void *kv) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_store_chunkref_t *r = ref;
  size_t bytes = 2 * s->half_bytes;
  cf_store_reader_t *rd = s->have_key ? pthread_getspecific(s->reader_key) : NULL;
  if (!rd && s->have_key && cf_store_reader_open(s->st, 4, &rd) == 0) pthread_setspecific(s->reader_key, rd);
  if (!rd) { /* no ring for this thread (io_uring refused, or no memory): the synchronous path */
    cf_errclear();
    return cf_store_read(s->st, &r->key, (uint32_t)layer, 1, kv, bytes, NULL);
  }
  cf_store_read_t req = {.key = r->key, .layer = (uint32_t)layer, .dst = kv, .dst_bytes = bytes};
  int rc = cf_store_read_submit(rd, &req);
  if (rc < 0) return rc;
  if (rc == 0) { /* in flight: this thread's ring holds only this read */
    cf_store_read_t *done = NULL;
    int n = cf_store_read_poll(rd, 1, &done, 1);
    if (n < 0) return n;
    if (n != 1 || done != &req) return cf_seterr(CF_EINTERNAL, "ssd tier: read of layer %d did not complete", layer);
  }
  if (req.status) cf_seterr(req.status, "ssd tier: layer %d of a chunk: %s", layer, cf_strerror(req.status));
  return req.status;
}

static void cf__ring_free(void *p) {
  cf_ring_close(p);
  free(p);
}

/* This thread's staging ring (opened on first use; closed when the thread exits), or NULL
 * when io_uring or memory is refused. */
static cf_ring_t *cf__thread_ring(cf_cellsrc_store_t *s) {
  if (!s->have_ring_key || s->ssd_depth < 2) return NULL;
  cf_ring_t *r = pthread_getspecific(s->ring_key);
  if (r) return r;
  r = malloc(sizeof *r);
  if (!r) return NULL;
  if (cf_ring_init(r, s->st, s->ssd_depth, NULL)) { free(r); cf_errclear(); return NULL; }
  if (pthread_setspecific(s->ring_key, r)) { cf__ring_free(r); return NULL; }
  return r;
}

typedef struct {
  const cf_cellsrc_stream_t *cb;
  size_t cell_bytes;
  int base;         /* index of the ring run's first cell in the stream */
} cf__stream_t;

static int cf__ring_issue(void *ud, size_t i, const cf_ring_cell_t *c, int wait) {
  (void)c;
  const cf__stream_t *x = ud;
  return x->cb->issue ? x->cb->issue(x->cb->ud, x->base + (int)i, wait) : 0;
}

static int cf__ring_deliver(void *ud, size_t i, const cf_ring_cell_t *c, int slot, const void *buf,
                            size_t bytes, uint32_t n_tokens) {
  (void)slot;
  const cf__stream_t *x = ud;
  if (bytes != x->cell_bytes) { /* a partial chunk: the executor only loads full ones */
    x->cb->done(x->cb->ud, x->base + (int)i, NULL, NULL,
                cf_seterr(CF_ESHAPE, "ssd tier: layer %u of a chunk holds %u tokens (%zu bytes), a full cell is %zu bytes",
                          c->layer, n_tokens, bytes, x->cell_bytes));
    return 0;
  }
  x->cb->done(x->cb->ud, x->base + (int)i, buf, (const uint8_t *)buf + bytes / 2, 0);
  return 0;
}

static void cf__ring_failed(void *ud, size_t i, const cf_ring_cell_t *c, int status) {
  const cf__stream_t *x = ud;
  cf_seterr(status, "ssd tier: layer %u of a chunk: %s", c->layer, cf_strerror(status));
  x->cb->done(x->cb->ud, x->base + (int)i, NULL, NULL, status);
}

/* Up to 64 cells per ring run: the cell list lives on the stack. */
#define CF__STREAM_BATCH 64

static int cf__ssd_read_stream(cf_cellsrc_t *src, int n, void *const *refs, const int *layers,
                               const cf_cellsrc_stream_t *cb) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_ring_t *r = cf__thread_ring(s);
  if (!r) { /* no ring here: one synchronous read per cell, into a bounce buffer */
    size_t bytes = 2 * s->half_bytes;
    uint8_t *buf = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    if (!buf) return cf_seterr(CF_ENOMEM, "ssd tier: cell buffer of %zu bytes", bytes);
    for (int i = 0; i < n; i++) {
      int rc = cb->issue ? cb->issue(cb->ud, i, 1) : 0;
      if (!rc) rc = cf__ssd_read(src, refs[i], layers[i], buf);
      cb->done(cb->ud, i, rc ? NULL : buf, rc ? NULL : buf + s->half_bytes, rc);
    }
    free(buf);
    return 0;
  }
  cf__stream_t x = {cb, 2 * s->half_bytes, 0};
  cf_ring_sink_t sink = {.deliver = cf__ring_deliver, .failed = cf__ring_failed, .ud = &x,
                         .issue = cf__ring_issue};
  cf_ring_cell_t cells[CF__STREAM_BATCH];
  for (int b = 0; b < n; b += CF__STREAM_BATCH) {
    int m = n - b < CF__STREAM_BATCH ? n - b : CF__STREAM_BATCH;
    for (int i = 0; i < m; i++)
      cells[i] = (cf_ring_cell_t){.key = ((cf_store_chunkref_t *)refs[b + i])->key,
                                  .layer = (uint32_t)layers[b + i], .tag = (uint64_t)(b + i)};
    x.base = b;
    size_t n_ok = 0;
    /* a synchronous sink: its deliver never fails, so only the ring's own errors stop it */
    int rc = cf_ring_run(r, cells, (size_t)m, &sink, NULL, &n_ok);
    if (rc) return rc;
  }
  return 0;
}

/* ---------------------------------------------------------------- remote tier */

static int cf__remote_read(cf_cellsrc_t *src, void *ref, int layer, void *kv) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_store_chunkref_t *r = ref;
  cf_remote_t *rt = cf_store_remote(s->st);
  if (!rt) return cf_seterr(CF_ENOTFOUND, "remote tier: none configured");
  uint32_t nt = 0;
  int rc = cf_remote_read(rt, &r->key, (uint32_t)layer, kv, 2 * s->half_bytes, &nt);
  if (!rc && nt != cf_store_geom(s->st)->chunk_tokens)
    rc = cf_seterr(CF_ESHAPE, "remote tier: layer %d of a chunk holds %u tokens, not a full chunk", layer, nt);
  return rc;
}

/* The pipeline after the one in flight: its cells are issued (rate limit, cancellation) one per
 * reply of the current pipeline, so an emulated link's waits overlap the server's transfer of the
 * replies (they queue in the socket meanwhile) instead of adding to it. */
typedef struct {
  int base, m, issued; /* stream cells [base, base + m); issued so far */
  int *st;             /* [m]: issue statuses */
} cf__rnext_t;

/* One pipeline of a remote run: which stream cells its GETs are, and where done() goes. */
typedef struct {
  const cf_cellsrc_stream_t *cb;
  const int *idx; /* pipeline slot -> stream cell */
  int base;
  size_t half, full;
  void *const *refs;
  cf_store_t *st;
  cf__rnext_t *next; /* NULL: nothing to issue ahead */
  int has_rt;
} cf__rstream_t;

/* Issue stream cell i (wait on the link); a status != 0 refuses it. */
static int cf__remote_issue(const cf_cellsrc_stream_t *cb, int i, int has_rt) {
  int st = cb->issue ? cb->issue(cb->ud, i, 1) : 0;
  return !has_rt && !st ? CF_ENOTFOUND : st;
}

/* Stage a remote cell for the chunk's promotion (before done(): the reply is freed after). The
 * loader that stages the last layer of a chunk with no failed cell hands it to the store. */
static void cf__remote_promote(const cf__rstream_t *x, cf_store_chunkref_t *r, const cf_remote_cell_t *c, int st) {
  if (!r->promo || r->promo_bad || r->promo_committed) return;
  uint32_t n_layers = cf_store_geom(x->st)->n_layers;
  if (st || c->layer >= n_layers || n_layers > 256) { r->promo_bad = 1; return; }
  uint64_t bit = 1ull << (c->layer % 64);
  if (atomic_fetch_or(&r->promo_mask[c->layer / 64], bit) & bit) return; /* staged already */
  memcpy(r->promo + (size_t)c->layer * x->full, c->data, x->full);
  if (atomic_fetch_add(&r->promo_cells, 1) + 1 == n_layers && !r->promo_bad) {
    /* every layer is in and claimed: no other loader writes this buffer any more */
    r->promo_committed = 1;
    cf_store_promote_commit(x->st, &r->key, r->promo);
  }
}

static void cf__remote_cell(void *ud, size_t q, const cf_remote_cell_t *c) {
  const cf__rstream_t *x = ud;
  int i = x->base + x->idx[q], st = c->status;
  if (!st && c->bytes != x->full) /* a partial chunk: the executor only loads full ones */
    st = cf_seterr(CF_ESHAPE, "remote tier: layer %u of a chunk holds %u tokens, not a full chunk", c->layer,
                   c->n_tokens);
  cf__remote_promote(x, x->refs[i], c, st);
  x->cb->done(x->cb->ud, i, st ? NULL : c->data, st ? NULL : c->data + x->half, st);
  cf__rnext_t *nx = x->next;
  if (nx && nx->issued < nx->m) {
    nx->st[nx->issued] = cf__remote_issue(x->cb, nx->base + nx->issued, x->has_rt);
    nx->issued++;
  }
}

/* Runs of cells as pipelines of up to remote_depth GETs: each cell is issued (rate limit,
 * cancellation) before its pipeline goes out — those of the next pipeline while the current
 * one's replies arrive — and handed to done() in order straight from its reply as it arrives
 * (cf_remote_get_each: one reply held at a time). */
static int cf__remote_read_stream(cf_cellsrc_t *src, int n, void *const *refs, const int *layers,
                                  const cf_cellsrc_stream_t *cb) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_remote_t *rt = cf_store_remote(s->st);
  int depth = s->remote_depth < 1 ? 1 : s->remote_depth > 256 ? 256 : s->remote_depth;
  cf_remote_cell_t cells[256];
  int idx[256], sta[256], stb[256], *st = sta, *st_next = stb, pre = 0;
  for (int b = 0; b < n; b += depth) {
    int m = n - b < depth ? n - b : depth, nq = 0;
    /* cells refused at issue (cancelled, or no remote tier) reach done() in their place, in order:
     * those before the pipeline's first cell now, the others right after the pipeline */
    for (int i = pre; i < m; i++) st[i] = cf__remote_issue(cb, b + i, rt != NULL);
    pre = 0;
    for (int i = 0; i < m; i++) {
      if (st[i]) continue;
      idx[nq] = i;
      cells[nq++] = (cf_remote_cell_t){.key = ((cf_store_chunkref_t *)refs[b + i])->key, .layer = (uint32_t)layers[b + i]};
    }
    if (nq < m) { /* some refused: keep done() in order by going one cell at a time */
      for (int i = 0, q = 0; i < m; i++) {
        if (q < nq && idx[q] == i) {
          int one = i;
          cf__rstream_t y = {cb, &one, b, s->half_bytes, 2 * s->half_bytes, refs, s->st, NULL, rt != NULL};
          int rc = cf_remote_get_each(rt, &cells[q], 1, cf__remote_cell, &y);
          if (rc) return rc;
          q++;
        } else
          cb->done(cb->ud, b + i, NULL, NULL, st[i]);
      }
      continue;
    }
    int nb = b + m, nm = n - nb < depth ? n - nb : depth;
    cf__rnext_t nx = {nb, nm, 0, st_next};
    cf__rstream_t x = {cb, idx, b, s->half_bytes, 2 * s->half_bytes, refs, s->st, nm > 0 ? &nx : NULL, rt != NULL};
    int rc = cf_remote_get_each(rt, cells, (size_t)nq, cf__remote_cell, &x);
    if (rc) return rc; /* cells from b on were not handed over: the executor recomputes them */
    /* the next pipeline's cells issued meanwhile keep their statuses */
    pre = nx.issued;
    int *t = st; st = st_next; st_next = t;
  }
  return 0;
}

double cf_cellsrc_remote_plan_Bps(double link_Bps, double probe_Bps, size_t cell_bytes, int depth, int loaders) {
  double r = probe_Bps > 0 && (!(link_Bps > 0) || probe_Bps < link_Bps) ? probe_Bps : link_Bps;
  if (loaders >= 2 || !(r > 0) || r == probe_Bps || !(probe_Bps > 0) || depth < 1 || !cell_bytes) return r;
  double w = (double)cell_bytes * depth; /* one pipeline: on the link, then from the server */
  return w / (w / link_Bps + w / probe_Bps);
}

int cf_cellsrc_store_init(cf_cellsrc_store_t *s, cf_store_t *st, cf_ratelimit_t *cpu_limit,
                          cf_ratelimit_t *ssd_limit) {
  memset(s, 0, sizeof *s);
  const cf_store_geom_t *g = cf_store_geom(st);
  cf_dtype_t dt;
  int rc = cf_exec_store_dtype(g, &dt);
  if (rc) return rc;
  s->st = st;
  s->half_bytes = (size_t)g->chunk_tokens * g->n_kv_heads * g->head_dim * g->dtype_size;
  s->cpu = (cf_cellsrc_t){.tier = "cpu", .tier_index = CF_EXEC_TIER_CPU, .limit = cpu_limit, .dtype = dt,
                          .read = cf__cpu_read, .acquire = cf__cpu_acquire, .ctx = s};
  s->ssd = (cf_cellsrc_t){.tier = "ssd", .tier_index = CF_EXEC_TIER_SSD, .limit = ssd_limit, .dtype = dt,
                          .read = cf__ssd_read, .ctx = s};
  s->have_key = pthread_key_create(&s->reader_key, cf__reader_free) == 0;
  s->have_ring_key = pthread_key_create(&s->ring_key, cf__ring_free) == 0;
  s->ssd_depth = CF_CELLSRC_SSD_DEPTH;
  s->ssd.read_stream = cf__ssd_read_stream;
  s->remote = (cf_cellsrc_t){.tier = "remote", .tier_index = CF_EXEC_TIER_REMOTE, .dtype = dt,
                             .read = cf__remote_read, .read_stream = cf__remote_read_stream, .ctx = s};
  s->remote_depth = CF_CELLSRC_REMOTE_DEPTH;
  return 0;
}

void cf_cellsrc_store_close(cf_cellsrc_store_t *s) {
  /* the loader threads have exited: their readers were closed by the key's destructor */
  if (s->have_key) pthread_key_delete(s->reader_key);
  if (s->have_ring_key) pthread_key_delete(s->ring_key);
  s->have_key = s->have_ring_key = 0;
}

/* Chunk i, stored in tier t (CF_STORE_TIER_*): its ref (CPU-tier chunks pinned) and source. */
static void cf__prepare_one(cf_cellsrc_store_t *s, const cf_store_key_t *key, int t, cf_store_chunkref_t *ref,
                            cf_cellsrc_t **src, uint8_t *tier_out) {
  memset(ref, 0, sizeof *ref);
  ref->key = *key;
  if (t == CF_STORE_TIER_REMOTE) { /* only the remote tier holds it: nothing to pin */
    *src = &s->remote;
    ref->promo = cf_store_promote_begin(s->st); /* NULL: promotion off or its budget full */
    return;
  }
  /* a chunk may leave the CPU tier between lookup and pin: then it is read from SSD (or,
   * gone from both, fails there and is recomputed) */
  ref->pinned = cf_store_pin(s->st, key, &ref->pin) == 0;
  if (ref->pinned && ref->pin.n_tokens != cf_store_geom(s->st)->chunk_tokens) {
    cf_store_unpin(s->st, &ref->pin);
    ref->pinned = 0;
  }
  *src = ref->pinned ? &s->cpu : &s->ssd;
  if (tier_out) *tier_out = ref->pinned ? CF_STORE_TIER_CPU : CF_STORE_TIER_SSD;
}

size_t cf_cellsrc_store_prepare(cf_cellsrc_store_t *s, const cf_store_key_t *keys, size_t n,
                                cf_store_chunkref_t *refs, cf_cellsrc_t **srcs, uint8_t *tiers) {
  uint8_t tl[256], *tt = tiers ? tiers : n <= 256 ? tl : malloc(n);
  size_t found = tt ? cf_store_lookup_all(s->st, keys, n, tt) : cf_store_lookup(s->st, keys, n, NULL);
  for (size_t i = 0; i < found; i++)
    cf__prepare_one(s, &keys[i], tt ? tt[i] : CF_STORE_TIER_CPU, &refs[i], &srcs[i], tiers ? &tiers[i] : NULL);
  if (tt && tt != tiers && tt != tl) free(tt);
  cf_errclear();
  return found;
}

size_t cf_cellsrc_store_prepare_each(cf_cellsrc_store_t *s, const cf_store_key_t *keys, size_t n,
                                     cf_store_chunkref_t *refs, cf_cellsrc_t **srcs, uint8_t *tiers) {
  uint8_t tl[256], *tt = tiers ? tiers : n <= 256 ? tl : malloc(n ? n : 1);
  if (!tt) { /* no room for the tiers: every chunk recomputed, nothing pinned */
    memset(refs, 0, n * sizeof *refs);
    memset(srcs, 0, n * sizeof *srcs);
    return 0;
  }
  size_t found = cf_store_lookup_each(s->st, keys, n, tt);
  for (size_t i = 0; i < n; i++) {
    if (tt[i] == CF_STORE_TIER_NONE) {
      memset(&refs[i], 0, sizeof refs[i]);
      srcs[i] = NULL;
      continue;
    }
    cf__prepare_one(s, &keys[i], tt[i], &refs[i], &srcs[i], tiers ? &tiers[i] : NULL);
  }
  if (tt != tiers && tt != tl) free(tt);
  cf_errclear();
  return found;
}

void cf_cellsrc_store_unprepare(cf_cellsrc_store_t *s, cf_store_chunkref_t *refs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (refs[i].pinned) { cf_store_unpin(s->st, &refs[i].pin); refs[i].pinned = 0; }
    /* a remote chunk not read whole (layers computed, a cell failed, cancelled): not promoted */
    if (refs[i].promo && !refs[i].promo_committed) cf_store_promote_abort(s->st, refs[i].promo);
    refs[i].promo = NULL;
  }
}
