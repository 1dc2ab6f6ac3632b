/* In-memory cell source: see cf_cellsrc.h. */
#include <string.h>

#include "exec/cf_cellsrc.h"
#include "util/cf_err.h"

static int cf__mem_locate(cf_cellsrc_mem_t *m, void *ref, int layer, const float **k, const float **v) {
  intptr_t c = (intptr_t)ref;
  if (c < 0 || c >= m->n_chunks || layer < 0 || layer >= m->n_layers)
    return cf_seterr(CF_ENOTFOUND, "%s tier: no cell (chunk %ld, layer %d)", m->src.tier, (long)c, layer);
  if (m->fail && m->fail[c * m->n_layers + layer])
    return cf_seterr(m->fail[c * m->n_layers + layer], "%s tier: injected fault at (chunk %ld, layer %d)",
                     m->src.tier, (long)c, layer);
  size_t cell = 2 * (size_t)m->chunk_tokens * m->row;
  *k = m->cells + ((size_t)c * m->n_layers + layer) * cell;
  *v = *k + (size_t)m->chunk_tokens * m->row;
  return 0;
}

static int cf__mem_read(cf_cellsrc_t *s, void *ref, int layer, float *kv) {
  cf_cellsrc_mem_t *m = s->ctx;
  const float *pk, *pv;
  int rc = cf__mem_locate(m, ref, layer, &pk, &pv);
  if (rc) return rc;
  memcpy(kv, pk, (size_t)m->chunk_tokens * m->row * sizeof(float));
  memcpy(kv + (size_t)m->chunk_tokens * m->row, pv, (size_t)m->chunk_tokens * m->row * sizeof(float));
  return 0;
}

static int cf__mem_acquire(cf_cellsrc_t *s, void *ref, int layer, const float **k, const float **v,
                           void **hold) {
  *hold = NULL;
  return cf__mem_locate(s->ctx, ref, layer, k, v);
}

static void cf__mem_release(cf_cellsrc_t *s, void *hold) { (void)s; (void)hold; }

void cf_cellsrc_mem_init(cf_cellsrc_mem_t *m, const char *tier, int tier_index,
                         const float *cells, int n_chunks, int n_layers, int chunk_tokens,
                         size_t row, const int *fail, cf_ratelimit_t *limit) {
  memset(m, 0, sizeof *m);
  m->src.tier = tier;
  m->src.tier_index = tier_index;
  m->src.limit = limit;
  m->src.read = cf__mem_read;
  m->src.acquire = cf__mem_acquire;
  m->src.release = cf__mem_release;
  m->src.ctx = m;
  m->cells = cells;
  m->n_chunks = n_chunks;
  m->n_layers = n_layers;
  m->chunk_tokens = chunk_tokens;
  m->row = row;
  m->fail = fail;
}
