/* cf_save — see cf_save.h. */
#include "exec/cf_save.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "exec/cf_cellsrc_store.h"
#include "ipc/cf_shmguard.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

typedef struct {
  const cf_kvmap_t *kv;
  const int32_t *blocks;
} cf__kvmap_gather_t;

/* After reading layer l from the engine's buffers: CF_EINVAL when one of them took a SIGBUS
 * (the engine truncated its file: what was read is zeros, never to be stored; cf_shmguard.h). */
static int cf__guard_check(const cf_kvmap_t *kv, int l) {
  const char *path = NULL;
  if (!cf_shmguard_broken(kv->k[l], &path) && !cf_shmguard_broken(kv->v[l], &path)) return 0;
  return cf_seterr(CF_EINVAL, "engine KV buffer %s was truncated below its registered size while the daemon read "
                   "layer %d (SIGBUS absorbed): nothing saved from it; the engine must register its buffers again",
                   path, l);
}

static int cf__kvmap_gather(void *ctx, int l, int t0, int t1, void *k, void *v) {
  const cf__kvmap_gather_t *x = ctx;
  cf_kvmap_gather(x->kv, l, x->blocks, t0, t1, k, v);
  return cf__guard_check(x->kv, l);
}

static int cf__save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                          const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                          const uint8_t *refuse, cf_save_result_t *res);

int cf_save_blocks(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                   const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  cf__kvmap_gather_t x = {kv, blocks};
  return cf__save_cells(st, &kv->layout, cf__kvmap_gather, &x, tokens, n, blocks, n_blocks, flags, NULL, res);
}

int cf_save_blocks_refusing(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                            const int32_t *blocks, int n_blocks, unsigned flags, const uint8_t *refuse,
                            cf_save_result_t *res) {
  cf__kvmap_gather_t x = {kv, blocks};
  return cf__save_cells(st, &kv->layout, cf__kvmap_gather, &x, tokens, n, blocks, n_blocks, flags, refuse, res);
}

int cf_save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                  const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                  cf_save_result_t *res) {
  return cf__save_cells(st, lay, gather, ctx, tokens, n, blocks, n_blocks, flags, NULL, res);
}

static int cf__save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                          const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                          const uint8_t *refuse, cf_save_result_t *res) {
  memset(res, 0, sizeof *res);
  const cf_store_geom_t *g = cf_store_geom(st);
  cf_dtype_t sdt;
  int rc = cf_exec_store_dtype(g, &sdt);
  if (rc) return cf_err_prefix(rc, "save: ");
  if (sdt != lay->dtype)
    return cf_seterr(CF_EDTYPE, "save: the engine's KV dtype is %s, the store holds %s cells",
                     cf_dtype_name(lay->dtype), cf_dtype_name(sdt));
  if ((int)g->n_layers != lay->n_layers || (int)g->n_kv_heads != lay->n_kv_heads || (int)g->head_dim != lay->head_dim)
    return cf_seterr(CF_ESHAPE, "save: engine buffer %d layers x %d kv heads x %d, store %u x %u x %u",
                     lay->n_layers, lay->n_kv_heads, lay->head_dim, g->n_layers, g->n_kv_heads, g->head_dim);
  if (n <= 0) return cf_seterr(CF_EINVAL, "save: no tokens");
  int need = (n + lay->block_size - 1) / lay->block_size;
  if (n_blocks < need)
    return cf_seterr(CF_ERANGE, "save: %d tokens need %d blocks of %d, got %d", n, need, lay->block_size, n_blocks);
  if ((rc = cf_kvmap_check_blocks(lay, blocks, need))) return rc;
  uint32_t C = g->chunk_tokens;
  int refused_any = 0;
  size_t nchunks = ((size_t)n + C - 1) / C;
  size_t cb = cf_store_cell_bytes(g); /* a full cell; a partial one uses its first bytes */
  cf_store_key_t *keys = malloc(nchunks * sizeof *keys);
  uint8_t *buf = malloc((size_t)lay->n_layers * cb);
  const void **cells = malloc((size_t)lay->n_layers * sizeof(void *));
  if (!keys || !buf || !cells) {
    rc = cf_seterr(CF_ENOMEM, "save: %d layers x %zu-byte cells", lay->n_layers, cb);
    goto out;
  }
  cf_store_chain_keys_partial(g->fingerprint, tokens, (size_t)n, C, keys);
  /* Every chunk goes to cf_store_save, stored ones too: the store answers CF_EEXIST for those
   * (counted in its save_exists statistic, the Save metric operators see) and makes them durable
   * when asked. The gather of a stored chunk is the price: one chunk of memcpy. */
  for (size_t c = 0; c < nchunks; c++) {
    int t0 = (int)(c * C), t1 = (size_t)n - c * C < C ? n : t0 + (int)C;
    size_t half = cf_store_cell_bytes_n(g, (uint32_t)(t1 - t0)) / 2;
    if (refuse && refuse[c]) { /* its blocks hold never-written cells: the store keeps what it has */
      refused_any = 1; /* not written through: durability is not promised */
      if (cf_store_lookup(st, &keys[c], 1, NULL) == 1) {
        res->existing_chunks++;
        res->saved_tokens += (uint32_t)(t1 - t0);
      } else {
        res->refused_chunks++;
      }
      continue;
    }
    for (int l = 0; l < lay->n_layers && !rc; l++) {
      uint8_t *cell = buf + (size_t)l * cb; /* [2][t][n_kv][hd]: K rows, then V rows */
      rc = gather(ctx, l, t0, t1, cell, cell + half);
      cells[l] = cell;
    }
    if (rc) { cf_err_prefix(rc, "save: chunk %zu (tokens [%d, %d)) from the engine: ", c, t0, t1); break; }
    /* a durable save of a stored chunk returns 0 (it writes it through): ask first to count it */
    int had = cf_store_lookup(st, &keys[c], 1, NULL) == 1;
    /* the chunk's index: the cost eviction policy values a chunk by its position */
    rc = cf_store_save_at(st, &keys[c], (uint32_t)c, (uint32_t)(t1 - t0), cells, flags);
    if (rc == CF_EEXIST) { rc = 0; cf_errclear(); had = 1; }
    if (rc) { cf_err_prefix(rc, "save: chunk %zu (tokens [%d, %d)): ", c, t0, t1); break; }
    if (had) res->existing_chunks++;
    else res->new_chunks++;
    res->saved_tokens += (uint32_t)(t1 - t0);
  }
  /* a durable save of a stored key writes it through (cf_store_save); the flush on top reports a
   * write-back of an earlier chunk that failed (then nothing is promised durable) */
  if (!rc && (flags & CF_STORE_SAVE_DURABLE) && res->existing_chunks) rc = cf_store_flush(st);
  res->durable = !rc && (flags & CF_STORE_SAVE_DURABLE) && !refused_any;
out:
  free(keys); free(buf); free(cells);
  return rc;
}

/* ---------------------------------------------------------------- TP shard groups */

typedef struct cf__pend_s {
  struct cf__pend_s *next;
  int32_t *tokens;
  int n;
  uint8_t *rows;     /* [L][2][n][heads][hd] elements: K rows then V rows per layer */
  uint8_t *have;     /* [heads]: saved by some shard */
  size_t bytes;
  uint64_t seq;      /* creation order: the oldest goes first */
} cf__pend_t;

struct cf_save_group_s {
  pthread_mutex_t mu;
  int L, heads, hd;
  cf_dtype_t dt;
  size_t max_bytes, used;
  uint64_t seq;
  cf__pend_t *list;
};

int cf_save_group_create(cf_save_group_t **out, int n_layers, int heads, int head_dim, cf_dtype_t dt,
                         size_t max_bytes) {
  *out = NULL;
  if (n_layers <= 0 || heads <= 0 || head_dim <= 0 || !cf_kv_elem_size(dt) || !max_bytes)
    return cf_seterr(CF_EINVAL, "save group: %d layers x %d heads x %d, dtype %d, %zu bytes", n_layers, heads,
                     head_dim, (int)dt, max_bytes);
  cf_save_group_t *g = calloc(1, sizeof *g);
  if (!g) return cf_seterr(CF_ENOMEM, "save group");
  pthread_mutex_init(&g->mu, NULL);
  g->L = n_layers; g->heads = heads; g->hd = head_dim; g->dt = dt; g->max_bytes = max_bytes;
  *out = g;
  return 0;
}

static void cf__pend_free(cf__pend_t *p) {
  if (!p) return;
  free(p->tokens); free(p->rows); free(p->have); free(p);
}

void cf_save_group_free(cf_save_group_t *g) {
  if (!g) return;
  for (cf__pend_t *p = g->list, *nx; p; p = nx) { nx = p->next; cf__pend_free(p); }
  pthread_mutex_destroy(&g->mu);
  free(g);
}

size_t cf_save_group_pending(cf_save_group_t *g, int *n_prefixes) {
  pthread_mutex_lock(&g->mu);
  int n = 0;
  for (cf__pend_t *p = g->list; p; p = p->next) n++;
  size_t used = g->used;
  pthread_mutex_unlock(&g->mu);
  if (n_prefixes) *n_prefixes = n;
  return used;
}

/* Unlink p from g (lock held). */
static void cf__pend_unlink(cf_save_group_t *g, cf__pend_t *p) {
  for (cf__pend_t **pp = &g->list; *pp; pp = &(*pp)->next)
    if (*pp == p) { *pp = p->next; g->used -= p->bytes; return; }
}

typedef struct { const cf__pend_t *p; size_t row; size_t es; int L; } cf__pend_gather_t;

/* cf_save_gather_fn over a completed pending copy: rows [t0, t1) of layer l. */
static int cf__pend_gather(void *ctx, int l, int t0, int t1, void *k, void *v) {
  const cf__pend_gather_t *x = ctx;
  size_t rb = x->row * x->es, plane = (size_t)x->p->n * rb;
  const uint8_t *base = x->p->rows + (size_t)l * 2 * plane;
  memcpy(k, base + (size_t)t0 * rb, (size_t)(t1 - t0) * rb);
  memcpy(v, base + plane + (size_t)t0 * rb, (size_t)(t1 - t0) * rb);
  return 0;
}

int cf_save_shard(cf_save_group_t *g, cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                  const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  memset(res, 0, sizeof *res);
  const cf_kv_layout_t *lay = &kv->layout;
  if (lay->n_layers != g->L || cf_kv_row_heads(lay) != g->heads || lay->head_dim != g->hd || lay->dtype != g->dt)
    return cf_seterr(CF_ESHAPE, "save: shard of %d layers x %d-head rows x %d (%s), the group is %d x %d x %d (%s)",
                     lay->n_layers, cf_kv_row_heads(lay), lay->head_dim, cf_dtype_name(lay->dtype), g->L,
                     g->heads, g->hd, cf_dtype_name(g->dt));
  if (n <= 0) return cf_seterr(CF_EINVAL, "save: no tokens");
  int need = (n + lay->block_size - 1) / lay->block_size;
  if (n_blocks < need)
    return cf_seterr(CF_ERANGE, "save: %d tokens need %d blocks of %d, got %d", n, need, lay->block_size, n_blocks);
  int rc = cf_kvmap_check_blocks(lay, blocks, need);
  if (rc) return rc;
  size_t es = cf_kv_elem_size(g->dt), row = (size_t)g->heads * g->hd;
  size_t bytes = (size_t)g->L * 2 * (size_t)n * row * es;
  if (bytes > g->max_bytes)
    return cf_seterr(CF_ERANGE, "save: a shard save of %d tokens needs %zu bytes of pending cells, over the %zu-byte cap",
                     n, bytes, g->max_bytes);
  pthread_mutex_lock(&g->mu);
  cf__pend_t *p = g->list;
  while (p && !(p->n == n && !memcmp(p->tokens, tokens, (size_t)n * sizeof *tokens))) p = p->next;
  if (!p) {
    while (g->list && g->used + bytes > g->max_bytes) { /* drop the oldest */
      cf__pend_t *old = g->list;
      for (cf__pend_t *q = g->list; q; q = q->next) if (q->seq < old->seq) old = q;
      CF_WARN("save: TP group: dropping a pending prefix of %d tokens (other shards never saved it; cap %zu bytes)",
              old->n, g->max_bytes);
      cf__pend_unlink(g, old);
      cf__pend_free(old);
    }
    p = calloc(1, sizeof *p);
    if (p) {
      p->tokens = malloc((size_t)n * sizeof *tokens);
      p->rows = malloc(bytes);
      p->have = calloc((size_t)g->heads, 1);
    }
    if (!p || !p->tokens || !p->rows || !p->have) {
      cf__pend_free(p);
      pthread_mutex_unlock(&g->mu);
      return cf_seterr(CF_ENOMEM, "save: pending cells of %d tokens (%zu bytes)", n, bytes);
    }
    memcpy(p->tokens, tokens, (size_t)n * sizeof *tokens);
    p->n = n;
    p->bytes = bytes;
    p->seq = ++g->seq;
    p->next = g->list;
    g->list = p;
    g->used += bytes;
  }
  /* this shard's heads into the whole rows (cf_kvmap_gather touches only them) */
  size_t plane = (size_t)n * row * es;
  for (int l = 0; l < g->L; l++) {
    cf_kvmap_gather(kv, l, blocks, 0, n, p->rows + (size_t)l * 2 * plane, p->rows + (size_t)l * 2 * plane + plane);
    if ((rc = cf__guard_check(kv, l))) { /* this shard's heads stay missing: the group never completes with them */
      pthread_mutex_unlock(&g->mu);
      return rc;
    }
  }
  for (int h = 0; h < lay->n_kv_heads; h++) p->have[lay->head0 + h] = 1;
  int complete = 1;
  for (int h = 0; h < g->heads; h++) complete &= p->have[h];
  if (!complete) {
    res->pending_tokens = (uint32_t)n;
    pthread_mutex_unlock(&g->mu);
    return 0;
  }
  cf__pend_unlink(g, p);
  pthread_mutex_unlock(&g->mu);
  /* the whole rows, stored as any whole-head engine's save would store them */
  cf_kv_layout_t whole;
  rc = cf_kv_layout_init(&whole, g->L, need, lay->block_size, g->heads, g->hd, g->dt);
  int32_t *ident = rc ? NULL : malloc((size_t)need * sizeof *ident);
  if (!rc && !ident) rc = cf_seterr(CF_ENOMEM, "save: block table");
  for (int i = 0; !rc && i < need; i++) ident[i] = i; /* the copy is logical rows: any table */
  cf__pend_gather_t x = {p, row, es, g->L};
  if (!rc) rc = cf_save_cells(st, &whole, cf__pend_gather, &x, tokens, n, ident, need, flags, res);
  free(ident);
  cf__pend_free(p);
  return rc;
}
