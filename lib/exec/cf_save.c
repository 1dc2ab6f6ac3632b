/* cf_save — see cf_save.h. */
#include "exec/cf_save.h"

#include <stdlib.h>
#include <string.h>

#include "exec/cf_cellsrc_store.h"
#include "util/cf_err.h"

typedef struct {
  const cf_kvmap_t *kv;
  const int32_t *blocks;
} cf__kvmap_gather_t;

static int cf__kvmap_gather(void *ctx, int l, int t0, int t1, void *k, void *v) {
  const cf__kvmap_gather_t *x = ctx;
  cf_kvmap_gather(x->kv, l, x->blocks, t0, t1, k, v);
  return 0;
}

int cf_save_blocks(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                   const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  cf__kvmap_gather_t x = {kv, blocks};
  return cf_save_cells(st, &kv->layout, cf__kvmap_gather, &x, tokens, n, blocks, n_blocks, flags, res);
}

int cf_save_cells(cf_store_t *st, const cf_kv_layout_t *lay, cf_save_gather_fn gather, void *ctx,
                  const int32_t *tokens, int n, const int32_t *blocks, int n_blocks, unsigned flags,
                  cf_save_result_t *res) {
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
    for (int l = 0; l < lay->n_layers && !rc; l++) {
      uint8_t *cell = buf + (size_t)l * cb; /* [2][t][n_kv][hd]: K rows, then V rows */
      rc = gather(ctx, l, t0, t1, cell, cell + half);
      cells[l] = cell;
    }
    if (rc) { cf_err_prefix(rc, "save: chunk %zu (tokens [%d, %d)) from the engine: ", c, t0, t1); break; }
    /* a durable save of a stored chunk returns 0 (it writes it through): ask first to count it */
    int had = cf_store_lookup(st, &keys[c], 1, NULL) == 1;
    rc = cf_store_save(st, &keys[c], (uint32_t)(t1 - t0), cells, flags);
    if (rc == CF_EEXIST) { rc = 0; cf_errclear(); had = 1; }
    if (rc) { cf_err_prefix(rc, "save: chunk %zu (tokens [%d, %d)): ", c, t0, t1); break; }
    if (had) res->existing_chunks++;
    else res->new_chunks++;
    res->saved_tokens += (uint32_t)(t1 - t0);
  }
  /* a durable save of a stored key writes it through (cf_store_save); the flush on top reports a
   * write-back of an earlier chunk that failed (then nothing is promised durable) */
  if (!rc && (flags & CF_STORE_SAVE_DURABLE) && res->existing_chunks) rc = cf_store_flush(st);
  res->durable = !rc && (flags & CF_STORE_SAVE_DURABLE);
out:
  free(keys); free(buf); free(cells);
  return rc;
}
