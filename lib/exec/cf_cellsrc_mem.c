/* In-memory cell source: see cf_cellsrc.h. */
#include <string.h>

#include "exec/cf_cellsrc.h"
#include "util/cf_err.h"

static int cf__mem_locate(cf_cellsrc_mem_t *m, void *ref, int layer, const void **k, const void **v) {
  intptr_t c = (intptr_t)ref;
  if (c < 0 || c >= m->n_chunks || layer < 0 || layer >= m->n_layers)
    return cf_seterr(CF_ENOTFOUND, "%s tier: no cell (chunk %ld, layer %d)", m->src.tier, (long)c, layer);
  if (m->fail && m->fail[c * m->n_layers + layer])
    return cf_seterr(m->fail[c * m->n_layers + layer], "%s tier: injected fault at (chunk %ld, layer %d)",
                     m->src.tier, (long)c, layer);
  size_t half = (size_t)m->chunk_tokens * m->row * m->elem;
  const uint8_t *p = m->cells + ((size_t)c * m->n_layers + layer) * 2 * half;
  *k = p;
  *v = p + half;
  return 0;
}

static int cf__mem_read(cf_cellsrc_t *s, void *ref, int layer, void *kv) {
  cf_cellsrc_mem_t *m = s->ctx;
  const void *pk, *pv;
  int rc = cf__mem_locate(m, ref, layer, &pk, &pv);
  if (rc) return rc;
  memcpy(kv, pk, 2 * (size_t)m->chunk_tokens * m->row * m->elem); /* K then V: adjacent */
  return 0;
}

static int cf__mem_acquire(cf_cellsrc_t *s, void *ref, int layer, const void **k, const void **v,
                           void **hold) {
  *hold = NULL;
  return cf__mem_locate(s->ctx, ref, layer, k, v);
}

static void cf__mem_release(cf_cellsrc_t *s, void *hold) { (void)s; (void)hold; }

void cf_cellsrc_mem_init(cf_cellsrc_mem_t *m, const char *tier, int tier_index, cf_dtype_t dtype,
                         const void *cells, int n_chunks, int n_layers, int chunk_tokens,
                         size_t row, const int *fail, cf_ratelimit_t *limit) {
  *m = (cf_cellsrc_mem_t){.src = {.tier = tier, .tier_index = tier_index, .limit = limit, .dtype = dtype,
                                   .read = cf__mem_read, .acquire = cf__mem_acquire,
                                   .release = cf__mem_release, .ctx = m},
                          .cells = cells, .n_chunks = n_chunks, .n_layers = n_layers,
                          .chunk_tokens = chunk_tokens, .row = row, .elem = cf_dtype_size(dtype), .fail = fail};
}
