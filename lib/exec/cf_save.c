/* cf_save — see cf_save.h. */
#include "exec/cf_save.h"

#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

int cf_save_blocks(cf_store_t *st, const cf_kvmap_t *kv, const int32_t *tokens, int n,
                   const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  memset(res, 0, sizeof *res);
  const cf_store_geom_t *g = cf_store_geom(st);
  const cf_kv_layout_t *lay = &kv->layout;
  if (g->dtype_size != 4 || lay->dtype != CF_DT_F32)
    return cf_seterr(CF_EDTYPE, "save: fp32 store and buffers required (store %u-byte, engine dtype %d)",
                     g->dtype_size, (int)lay->dtype);
  if ((int)g->n_layers != lay->n_layers || (int)g->n_kv_heads != lay->n_kv_heads || (int)g->head_dim != lay->head_dim)
    return cf_seterr(CF_ESHAPE, "save: engine buffer %d layers x %d kv heads x %d, store %u x %u x %u",
                     lay->n_layers, lay->n_kv_heads, lay->head_dim, g->n_layers, g->n_kv_heads, g->head_dim);
  if (n <= 0) return cf_seterr(CF_EINVAL, "save: no tokens");
  int need = (n + lay->block_size - 1) / lay->block_size;
  if (n_blocks < need)
    return cf_seterr(CF_ERANGE, "save: %d tokens need %d blocks of %d, got %d", n, need, lay->block_size, n_blocks);
  int rc = cf_kvmap_check_blocks(lay, blocks, need);
  if (rc) return rc;
  uint32_t C = g->chunk_tokens;
  size_t nchunks = (size_t)n / C;
  if (!nchunks) return 0;
  cf_store_key_t *keys = malloc(nchunks * sizeof *keys);
  size_t half = (size_t)C * lay->n_kv_heads * lay->head_dim, cell = 2 * half;
  float *buf = malloc((size_t)lay->n_layers * cell * sizeof(float));
  const void **cells = malloc((size_t)lay->n_layers * sizeof(void *));
  if (!keys || !buf || !cells) {
    rc = cf_seterr(CF_ENOMEM, "save: %d layers x %zu-float cells", lay->n_layers, cell);
    goto out;
  }
  cf_store_chain_keys(g->fingerprint, tokens, nchunks * C, C, keys);
  /* Chunks already stored need no copy: find how many leading ones are there. */
  size_t have = cf_store_lookup(st, keys, nchunks, NULL);
  res->existing_chunks = (uint32_t)have;
  for (int l = 0; l < lay->n_layers; l++) cells[l] = buf + (size_t)l * cell;
  for (size_t c = have; c < nchunks; c++) {
    int t0 = (int)(c * C);
    for (int l = 0; l < lay->n_layers; l++)
      cf_kvmap_gather(kv, l, blocks, t0, t0 + (int)C, buf + (size_t)l * cell, buf + (size_t)l * cell + half);
    rc = cf_store_save(st, &keys[c], C, cells, flags);
    if (rc == CF_EEXIST) { res->existing_chunks++; rc = 0; cf_errclear(); continue; }
    if (rc) { cf_err_prefix(rc, "save: chunk %zu (tokens [%d, %d)): ", c, t0, t0 + (int)C); break; }
    res->new_chunks++;
  }
  /* chunks that were already stored may sit in the CPU tier only: a flush makes them durable */
  if (!rc && (flags & CF_STORE_SAVE_DURABLE) && res->existing_chunks) rc = cf_store_flush(st);
  res->durable = !rc && (flags & CF_STORE_SAVE_DURABLE);
  res->saved_tokens = (uint32_t)((res->new_chunks + res->existing_chunks) * C);
out:
  free(keys); free(buf); free(cells);
  return rc;
}
