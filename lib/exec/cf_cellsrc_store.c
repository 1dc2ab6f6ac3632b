/* cf_cellsrc_store — see cf_cellsrc_store.h. */
#include "exec/cf_cellsrc_store.h"

#include <string.h>

#include "util/cf_err.h"

static int cf__cpu_acquire(cf_cellsrc_t *src, void *ref, int layer, const float **k, const float **v,
                           void **hold) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_store_chunkref_t *r = ref;
  *hold = NULL;
  if (!r->pinned) return cf_seterr(CF_ENOTFOUND, "cpu tier: chunk not pinned");
  const cf_store_geom_t *g = cf_store_geom(s->st);
  if ((uint32_t)layer >= g->n_layers) return cf_seterr(CF_EINVAL, "cpu tier: layer %d of %u", layer, g->n_layers);
  *k = (const float *)(r->pin.base + (size_t)layer * r->pin.cell_stride);
  *v = *k + s->half_floats;
  return 0;
}

static int cf__cpu_read(cf_cellsrc_t *src, void *ref, int layer, float *kv) {
  cf_cellsrc_store_t *s = src->ctx;
  const float *k = NULL, *v = NULL;
  void *hold;
  int rc = cf__cpu_acquire(src, ref, layer, &k, &v, &hold);
  if (rc) return rc;
  memcpy(kv, k, 2 * s->half_floats * sizeof(float));
  return 0;
}

static int cf__ssd_read(cf_cellsrc_t *src, void *ref, int layer, float *kv) {
  cf_cellsrc_store_t *s = src->ctx;
  cf_store_chunkref_t *r = ref;
  return cf_store_read(s->st, &r->key, (uint32_t)layer, 1, kv, 2 * s->half_floats * sizeof(float), NULL);
}

int cf_cellsrc_store_init(cf_cellsrc_store_t *s, cf_store_t *st, cf_ratelimit_t *cpu_limit,
                          cf_ratelimit_t *ssd_limit) {
  memset(s, 0, sizeof *s);
  const cf_store_geom_t *g = cf_store_geom(st);
  if (g->dtype_size != 4)
    return cf_seterr(CF_EDTYPE, "store holds %u-byte elements; the CPU executor restores fp32", g->dtype_size);
  s->st = st;
  s->half_floats = (size_t)g->chunk_tokens * g->n_kv_heads * g->head_dim;
  s->cpu = (cf_cellsrc_t){.tier = "cpu", .tier_index = CF_EXEC_TIER_CPU, .limit = cpu_limit,
                          .read = cf__cpu_read, .acquire = cf__cpu_acquire, .ctx = s};
  s->ssd = (cf_cellsrc_t){.tier = "ssd", .tier_index = CF_EXEC_TIER_SSD, .limit = ssd_limit,
                          .read = cf__ssd_read, .ctx = s};
  return 0;
}

size_t cf_cellsrc_store_prepare(cf_cellsrc_store_t *s, const cf_store_key_t *keys, size_t n,
                                cf_store_chunkref_t *refs, cf_cellsrc_t **srcs, uint8_t *tiers) {
  size_t found = cf_store_lookup(s->st, keys, n, tiers);
  for (size_t i = 0; i < found; i++) {
    memset(&refs[i], 0, sizeof refs[i]);
    refs[i].key = keys[i];
    /* a chunk may leave the CPU tier between lookup and pin: then it is read from SSD (or,
     * gone from both, fails there and is recomputed) */
    refs[i].pinned = cf_store_pin(s->st, &keys[i], &refs[i].pin) == 0;
    if (refs[i].pinned && refs[i].pin.n_tokens != cf_store_geom(s->st)->chunk_tokens) {
      cf_store_unpin(s->st, &refs[i].pin);
      refs[i].pinned = 0;
    }
    srcs[i] = refs[i].pinned ? &s->cpu : &s->ssd;
    if (tiers) tiers[i] = refs[i].pinned ? CF_STORE_TIER_CPU : CF_STORE_TIER_SSD;
  }
  cf_errclear();
  return found;
}

void cf_cellsrc_store_unprepare(cf_cellsrc_store_t *s, cf_store_chunkref_t *refs, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (refs[i].pinned) { cf_store_unpin(s->st, &refs[i].pin); refs[i].pinned = 0; }
}
