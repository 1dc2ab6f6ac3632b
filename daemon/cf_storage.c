/* cf_storage — Lookup / Save / Evict over lib/store, and the engines' shared-memory mappings. */
#include "cf_storage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/cf_err.h"
#include "util/cf_log.h"

struct cf_storage_s {
  cf_store_t *st;
  cf_store_geom_t g;
};

int cf_storage_open(cf_storage_t **out, const cf_config_t *cfg, const cf_model_info_t *model) {
  *out = NULL;
  cf_storage_t *s = calloc(1, sizeof *s);
  if (!s) return cf_seterr(CF_ENOMEM, "storage");
  memcpy(s->g.fingerprint, model->fingerprint, 16);
  s->g.dtype_size = 4; /* fp32 KV: what the CPU backend computes */
  s->g.chunk_tokens = (uint32_t)cfg->chunk_tokens;
  s->g.n_layers = (uint32_t)model->n_layers;
  s->g.n_kv_heads = (uint32_t)model->n_kv_heads;
  s->g.head_dim = (uint32_t)model->head_dim;
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = (uint64_t)cfg->cpu_tier_bytes;
  sc.ssd_bytes = (uint64_t)cfg->ssd_tier_bytes;
  sc.cpu_evict = cfg->eviction == CF_EVICT_S3FIFO ? CF_STORE_EVICT_S3FIFO : CF_STORE_EVICT_LRU;
  int rc = cf_store_open(cfg->store_dir, &s->g, &sc, &s->st);
  if (rc) { free(s); return cf_err_prefix(rc, "store_dir %s: ", cfg->store_dir); }
  *out = s;
  return 0;
}

cf_store_t *cf_storage_store(cf_storage_t *s) { return s->st; }

void cf_storage_close(cf_storage_t *s) {
  if (!s) return;
  int rc = cf_store_flush(s->st);
  if (rc) CF_WARN("store: flush at shutdown: %s: %s (chunks only in the CPU tier are lost)", cf_strerror(rc), cf_errmsg());
  cf_store_close(s->st);
  free(s);
}

/* ---------------------------------------------------------------- engine mappings */
static void cf__unmap(cf_engine_map_t *m) {
  if (!m) return;
  for (int i = 0; i < m->n_maps; i++)
    if (m->map_base[i]) munmap(m->map_base[i], m->map_len[i]);
  cf_kvmap_close(&m->kv); /* a view: unmaps nothing */
  free(m->map_base);
  free(m->map_len);
  free(m->k);
  free(m->v);
  free(m);
}

/* Map `path` once per engine (K and V of every layer usually share one file). */
static uint8_t *cf__map_path(cf_engine_map_t *m, const char **paths, const char *path, int *rc) {
  for (int i = 0; i < m->n_maps; i++)
    if (!strcmp(paths[i], path)) return m->map_base[i];
  int fd = open(path, O_RDWR | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    *rc = cf_seterr(CF_EACCES, "%s: cannot open for read/write: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  void *p = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) { *rc = cf_seterr(CF_EIO, "%s: mmap: %s", path, strerror(e)); return NULL; }
  paths[m->n_maps] = path;
  m->map_base[m->n_maps] = p;
  m->map_len[m->n_maps] = (size_t)st.st_size;
  m->n_maps++;
  return p;
}

static int cf__engine_added(void *ctx, cf_engine_t *e) {
  cf_storage_t *s = ctx;
  if (e->dtype != CACHEFLOW__V1__DTYPE__DTYPE_F32)
    return cf_seterr(CF_EDTYPE, "engine KV dtype %s: this daemon stores F32 KV (CPU backend); register F32 buffers",
                     e->dtype == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "BF16" : "F16");
  int L = e->n_layers, rc = 0;
  cf_engine_map_t *m = calloc(1, sizeof *m);
  const char **paths = calloc(2 * L, sizeof *paths);
  if (m) {
    m->map_base = calloc(2 * L, sizeof *m->map_base);
    m->map_len = calloc(2 * L, sizeof *m->map_len);
    m->k = calloc(L, sizeof *m->k);
    m->v = calloc(L, sizeof *m->v);
  }
  if (!m || !paths || !m->map_base || !m->map_len || !m->k || !m->v) { cf__unmap(m); free(paths); return cf_seterr(CF_ENOMEM, "engine mappings"); }
  for (int l = 0; l < L && !rc; l++) {
    uint8_t *kb = cf__map_path(m, paths, e->layers[l].k.shm_path, &rc);
    uint8_t *vb = kb ? cf__map_path(m, paths, e->layers[l].v.shm_path, &rc) : NULL;
    if (kb && vb) {
      m->k[l] = kb + e->layers[l].k.offset;
      m->v[l] = vb + e->layers[l].v.offset;
    }
  }
  free(paths);
  /* Save (here) and lib/exec address every layer with one set of strides. */
  cf_kv_layout_t lay = {.n_layers = L, .num_blocks = (int)e->num_blocks, .block_size = (int)e->block_size,
                        .n_kv_heads = (int)s->g.n_kv_heads, .head_dim = (int)s->g.head_dim, .dtype = CF_DT_F32,
                        .block_stride = e->layers[0].block_stride, .token_stride = e->layers[0].token_stride,
                        .head_stride = e->layers[0].head_stride};
  for (int l = 1; l < L && !rc; l++)
    if (e->layers[l].block_stride != lay.block_stride || e->layers[l].token_stride != lay.token_stride ||
        e->layers[l].head_stride != lay.head_stride)
      rc = cf_seterr(CF_EUNSUPPORTED, "layer %d strides differ from layer 0's; the CPU executor needs one layout", l);
  if (!rc) rc = cf_kvmap_view(&m->kv, &lay, m->k, m->v);
  if (rc) { cf__unmap(m); return rc; }
  e->exec_priv = m;
  return 0;
}

static void cf__engine_removed(void *ctx, cf_engine_t *e) {
  (void)ctx;
  cf__unmap(e->exec_priv);
  e->exec_priv = NULL;
}

/* ---------------------------------------------------------------- lookup / save */
/* Chunk keys of tokens[0..n) (the last one partial when n % C != 0). Caller frees. */
static cf_store_key_t *cf__keys(const cf_storage_t *s, const uint32_t *tokens, size_t n, size_t *nk) {
  int32_t *t = malloc(n * sizeof *t);
  size_t C = s->g.chunk_tokens;
  cf_store_key_t *k = malloc(((n + C - 1) / C) * sizeof *k);
  if (!t || !k) { free(t); free(k); return NULL; }
  for (size_t i = 0; i < n; i++) t[i] = (int32_t)tokens[i]; /* ids < vocab: validated */
  *nk = cf_store_chain_keys_partial(s->g.fingerprint, t, n, (uint32_t)C, k);
  free(t);
  return k;
}

static int cf__lookup(void *ctx, cf_engine_t *e, const uint32_t *tokens, size_t n, uint32_t per[3], uint8_t *chunk_tiers) {
  cf_storage_t *s = ctx;
  (void)e;
  size_t nk, C = s->g.chunk_tokens;
  cf_store_key_t *keys = cf__keys(s, tokens, n, &nk);
  uint8_t *tiers = malloc(nk ? nk : 1);
  if (!keys || !tiers) { free(keys); free(tiers); return cf_seterr(CF_ENOMEM, "lookup of %zu tokens", n); }
  size_t hit = cf_store_lookup(s->st, keys, nk, tiers);
  per[0] = per[1] = per[2] = 0;
  /* the store's tier numbers (CPU 1, SSD 2) are the proto's */
  for (size_t i = 0; i < hit; i++) {
    size_t first = i * C, nt = n - first < C ? n - first : C;
    if (tiers[i] == CF_STORE_TIER_CPU || tiers[i] == CF_STORE_TIER_SSD) per[tiers[i]] += (uint32_t)nt;
    if (chunk_tiers) chunk_tiers[i] = tiers[i];
  }
  free(keys);
  free(tiers);
  return 0;
}

static int cf__save(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved, int *durable) {
  cf_storage_t *s = ctx;
  cf_engine_map_t *m = e->exec_priv;
  const uint32_t L = s->g.n_layers, kvh = s->g.n_kv_heads, hd = s->g.head_dim, C = s->g.chunk_tokens;
  const size_t n = req->n_token_ids, row = (size_t)kvh * hd * 4;
  /* block ids were validated < num_blocks (< 2^31), so the uint32 table reads as int32 */
  const int32_t *blocks = (const int32_t *)req->block_ids;
  size_t nk;
  *saved = 0;
  *durable = 0;
  cf_store_key_t *keys = cf__keys(s, req->token_ids, n, &nk);
  size_t cb = cf_store_cell_bytes(&s->g);
  uint8_t *buf = malloc(cb * L);
  const void **cells = malloc(L * sizeof *cells);
  int rc = 0;
  if (!keys || !buf || !cells) { rc = cf_seterr(CF_ENOMEM, "save: one chunk of %zu bytes", cb * L); goto out; }
  for (size_t ci = 0; ci < nk; ci++) {
    size_t first = ci * C;
    uint32_t nt = (uint32_t)(n - first < C ? n - first : C);
    for (uint32_t l = 0; l < L; l++) {
      /* cell l: [2][nt][kvh][hd] — the chunk's K rows, then its V rows */
      uint8_t *cell = buf + (size_t)l * cb;
      cf_kvmap_gather(&m->kv, (int)l, blocks, (int)first, (int)(first + nt), (float *)cell,
                      (float *)(cell + nt * row));
      cells[l] = cell;
    }
    int r = cf_store_save(s->st, &keys[ci], nt, cells, 0);
    if (r && r != CF_EEXIST) { rc = cf_err_prefix(r, "chunk %zu of %zu: ", ci, nk); goto out; }
    *saved += nt;
  }
out:
  free(keys);
  free(buf);
  free(cells);
  return rc;
}

static int cf__evict(void *ctx, int tier, uint64_t bytes, uint64_t *bytes_evicted, uint64_t *chunks_evicted) {
  cf_storage_t *s = ctx;
  if (tier == CACHEFLOW__V1__TIER__TIER_SSD)
    return cf_seterr(CF_EUNSUPPORTED, "the SSD tier evicts by itself under ssd_tier_bytes; evict tier cpu (or all)");
  cf_store_stats_t a, b;
  cf_store_get_stats(s->st, &a);
  uint64_t keep = bytes == 0 || bytes >= a.cpu_bytes_used ? 0 : a.cpu_bytes_used - bytes;
  int rc = cf_store_evict_cpu(s->st, keep);
  cf_store_get_stats(s->st, &b);
  *bytes_evicted = a.cpu_bytes_used - b.cpu_bytes_used;
  *chunks_evicted = a.cpu_chunks - b.cpu_chunks;
  return rc;
}

static void cf__usage(void *ctx, uint64_t *cpu, uint64_t *ssd) {
  cf_storage_t *s = ctx;
  cf_store_stats_t st;
  cf_store_get_stats(s->st, &st);
  *cpu = st.cpu_bytes_used;
  *ssd = st.ssd_bytes_used;
}

void cf_storage_backend(cf_storage_t *s, cf_service_backend_t *be) {
  be->ctx = s;
  be->engine_added = cf__engine_added;
  be->engine_removed = cf__engine_removed;
  be->lookup = cf__lookup;
  be->save = cf__save;
  be->evict = cf__evict;
  be->usage = cf__usage;
}
