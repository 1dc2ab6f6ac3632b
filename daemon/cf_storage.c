/* cf_storage — Lookup / Save / Evict over lib/store, and the engines' shared-memory mappings. */
#include "cf_storage.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exec/cf_cellsrc_store.h"
#include "exec/cf_save.h"
#include "ipc/cf_shmguard.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

/* An engine's buffers mapped into the daemon: layer l's K starts at k[l], V at v[l] (the
 * declared offsets applied); `kv` is a lib/ipc view of them (one set of strides for every
 * layer), which Save and the executor both address the blocks through. Owned by the engine
 * (cf_engine_t.map). */
struct cf_engine_map_s {
  int n_maps;
  void **map_base;
  size_t *map_len;
  uint8_t **k, **v;
  cf_kvmap_t kv;
  int gpu;                  /* CUDA IPC engine: gkv holds its buffers, kv is unused */
  cf_gpu_kv_t gkv;
  /* Blocks a windowed restore left with cells it never wrote (cf_storage_restored): per engine
   * block, the first 8 bytes of the chunk key whose skipped cells it holds, 0 for none. Made on
   * the first such restore: num_blocks * 8 bytes, far below one block of the engine's own KV.
   * Under cf__skip_mu (the dataplane writes it on the loop, Save reads it on the save worker). */
  uint64_t *skip_key;
};

static pthread_mutex_t cf__skip_mu = PTHREAD_MUTEX_INITIALIZER;
typedef struct cf_engine_map_s cf_engine_map_t;

/* The pending whole cells of one TP group's shard saves (cf_save_shard). */
typedef struct cf__tpg_s {
  struct cf__tpg_s *next;
  uint64_t tp_group;
  cf_save_group_t *g;
} cf__tpg_t;

struct cf_storage_s {
  cf_store_t *st;
  cf_store_geom_t g;
  cf_dtype_t kv_dtype;
  cf_exec_gpu_t *gpu;       /* gpu_executor = on, else NULL */
  int has_ssd;              /* ssd_tier_bytes > 0: durable saves possible */
  size_t tp_pending_bytes;  /* per TP group: pending shard cells (a quarter of cpu_tier_bytes) */
  cf__tpg_t *groups;        /* under groups_mu (saves may run on several threads) */
  pthread_mutex_t groups_mu;
};

/* The proto's DType of a KV dtype (F32/BF16/F16 only). */
static int cf__proto_dtype(cf_dtype_t t) {
  return t == CF_DT_BF16 ? CACHEFLOW__V1__DTYPE__DTYPE_BF16 : t == CF_DT_F16 ? CACHEFLOW__V1__DTYPE__DTYPE_F16
                                                                             : CACHEFLOW__V1__DTYPE__DTYPE_F32;
}

int cf_storage_open(cf_storage_t **out, const cf_config_t *cfg, const cf_model_info_t *model,
                        cf_dtype_t kv_dtype, cf_exec_gpu_t *gpu) {
  *out = NULL;
  cf_storage_t *s = calloc(1, sizeof *s);
  if (!s) return cf_seterr(CF_ENOMEM, "storage");
  memcpy(s->g.fingerprint, model->fingerprint, 16);
  memcpy(s->g.weights, model->weights, 16);
  int rc = cf_exec_geom_dtype(&s->g, kv_dtype);
  if (rc) { free(s); return cf_err_prefix(rc, "kv_dtype: "); }
  s->kv_dtype = kv_dtype;
  s->g.chunk_tokens = (uint32_t)cfg->chunk_tokens;
  s->g.n_layers = (uint32_t)model->n_layers;
  s->g.n_kv_heads = (uint32_t)model->n_kv_heads;
  s->g.head_dim = (uint32_t)model->head_dim;
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = (uint64_t)cfg->cpu_tier_bytes;
  sc.ssd_bytes = (uint64_t)cfg->ssd_tier_bytes;
  sc.cpu_evict = cfg->eviction == CF_EVICT_S3FIFO ? CF_STORE_EVICT_S3FIFO
                 : cfg->eviction == CF_EVICT_COST  ? CF_STORE_EVICT_COST
                                                   : CF_STORE_EVICT_LRU;
  /* cost: every chunk worth the same until the cost model is measured (cf_main's
   * cf__apply_link hands the store its table via cf_evict_cost_table) */
  sc.remote_url = cfg->remote_url; /* "" = no remote tier; it opens while the server is down */
  sc.remote_password = cfg->remote_password;
  sc.remote_timeout_ms = (int)cfg->remote_timeout_ms;
  sc.remote_queue_bytes = (uint64_t)cfg->remote_queue_bytes;
  sc.remote_ttl_s = (int)cfg->remote_ttl_s;
  sc.remote_promote_bytes = cfg->remote_promote_bytes ? cfg->remote_promote_bytes : -1; /* 0: off */
  s->gpu = gpu;
  if (gpu) { /* the GPU's copy engines read CPU-tier cells straight from pinned memory */
    sc.cpu_alloc = cf_gpu_pinned_alloc;
    sc.cpu_free = cf_gpu_pinned_free;
  }
  s->has_ssd = cfg->ssd_tier_bytes > 0;
  pthread_mutex_init(&s->groups_mu, NULL);
  s->tp_pending_bytes = (size_t)(cfg->cpu_tier_bytes / 4 > (64 << 20) ? cfg->cpu_tier_bytes / 4 : (64 << 20));
  rc = cf_store_open(cfg->store_dir, &s->g, &sc, &s->st);
  if (rc) { free(s); return cf_err_prefix(rc, "store_dir %s (kv_dtype %s): ", cfg->store_dir, cf_dtype_name(kv_dtype)); }
  *out = s;
  return 0;
}

cf_store_t *cf_storage_store(cf_storage_t *s) { return s->st; }

void cf_storage_close(cf_storage_t *s) {
  if (!s) return;
  int rc = cf_store_flush(s->st);
  if (rc) CF_WARN("store: flush at shutdown: %s: %s (chunks only in the CPU tier are lost)", cf_strerror(rc), cf_errmsg());
  cf_store_close(s->st);
  for (cf__tpg_t *t = s->groups, *nx; t; t = nx) { nx = t->next; cf_save_group_free(t->g); free(t); }
  pthread_mutex_destroy(&s->groups_mu);
  free(s);
}

/* ---------------------------------------------------------------- engine mappings */
static void cf__unmap(cf_engine_map_t *m) {
  if (!m) return;
  for (int i = 0; i < m->n_maps; i++)
    if (m->map_base[i]) { cf_shmguard_remove(m->map_base[i]); munmap(m->map_base[i], m->map_len[i]); }
  cf_kvmap_close(&m->kv); /* a view: unmaps nothing */
  cf_gpu_kv_close(&m->gkv);
  free(m->map_base);
  free(m->map_len);
  free(m->k);
  free(m->v);
  pthread_mutex_lock(&cf__skip_mu);
  free(m->skip_key);
  pthread_mutex_unlock(&cf__skip_mu);
  free(m);
}

int cf_storage_engine_broken(const cf_engine_t *e, const char **path) {
  const cf_engine_map_t *m = e->map;
  for (int i = 0; m && i < m->n_maps; i++)
    if (m->map_base[i] && cf_shmguard_broken(m->map_base[i], path)) return 1;
  return 0;
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
  if (cf_shmguard_add(p, (size_t)st.st_size, path)) CF_WARN("%s: %s", path, cf_errmsg()); /* SIGBUS: see cf_shmguard.h */
  paths[m->n_maps] = path;
  m->map_base[m->n_maps] = p;
  m->map_len[m->n_maps] = (size_t)st.st_size;
  m->n_maps++;
  return p;
}

/* The engine buffer's layout (layer 0's strides) into *lay; every layer must share them, as
 * Save and the `who` executor address all layers with one set. 0, or CF_EUNSUPPORTED naming
 * the first layer that differs. */
static int cf__engine_layout(const cf_storage_t *s, const cf_engine_t *e, const char *who, cf_kv_layout_t *lay) {
  int L = e->n_layers;
  const cf_layer_layout_t *a = &e->layers[0];
  *lay = (cf_kv_layout_t){.n_layers = L, .num_blocks = (int)e->num_blocks, .block_size = (int)e->block_size,
                          .n_kv_heads = e->n_heads, .head_dim = (int)s->g.head_dim, .dtype = s->kv_dtype,
                          .block_stride = a->block_stride, .token_stride = a->token_stride,
                          .head_stride = a->head_stride, .dim_stride = a->dim_stride, .vs = a->vs,
                          .head0 = e->head0, .model_heads = (int)s->g.n_kv_heads};
  for (int l = 1; l < L; l++) {
    const cf_layer_layout_t *b = &e->layers[l];
    if (b->block_stride != a->block_stride || b->token_stride != a->token_stride || b->head_stride != a->head_stride ||
        b->dim_stride != a->dim_stride || memcmp(&b->vs, &a->vs, sizeof a->vs))
      return cf_seterr(CF_EUNSUPPORTED, "layer %d strides differ from layer 0's; the %s executor needs one layout", l, who);
  }
  return 0;
}

/* A CUDA IPC engine: open its buffers on the GPU executor's device (UUIDs must match). */
static int cf__engine_added_gpu(cf_storage_t *s, cf_engine_t *e) {
  if (!s->gpu) return cf_seterr(CF_EUNSUPPORTED, "CUDA IPC buffers need the GPU executor (gpu_executor = on)");
  int L = e->n_layers, rc = 0;
  uint8_t uuid[CF_GPU_UUID_BYTES], other[CF_GPU_UUID_BYTES];
  if ((rc = cf_gpu_uuid_parse(e->layers[0].k.gpu_uuid, uuid))) return cf_err_prefix(rc, "layer 0 K: ");
  /* compared as bytes: one engine may spell its UUID in upper and lower case */
  for (int l = 0; l < L; l++)
    for (int kv = 0; kv < 2; kv++) {
      const char *u = kv ? e->layers[l].v.gpu_uuid : e->layers[l].k.gpu_uuid;
      if ((rc = cf_gpu_uuid_parse(u, other))) return cf_err_prefix(rc, "layer %d %s: ", l, kv ? "V" : "K");
      if (memcmp(uuid, other, sizeof uuid))
        return cf_seterr(CF_EINVAL, "layer %d: %s buffer on GPU %s, layer 0's K on %s: one engine, one GPU", l,
                         kv ? "V" : "K", u, e->layers[0].k.gpu_uuid);
    }
  cf_kv_layout_t lay;
  if ((rc = cf__engine_layout(s, e, "GPU", &lay))) return rc;
  cf_engine_map_t *m = calloc(1, sizeof *m);
  cf_gpu_ipc_handle_t *kh = calloc((size_t)L, sizeof *kh), *vh = calloc((size_t)L, sizeof *vh);
  uint64_t *ko = calloc((size_t)L, sizeof *ko), *vo = calloc((size_t)L, sizeof *vo);
  if (!m || !kh || !vh || !ko || !vo) rc = cf_seterr(CF_ENOMEM, "engine IPC handles");
  for (int l = 0; l < L && !rc; l++) {
    memcpy(kh[l].b, e->layers[l].k.ipc_handle, CF_GPU_IPC_HANDLE_BYTES);
    memcpy(vh[l].b, e->layers[l].v.ipc_handle, CF_GPU_IPC_HANDLE_BYTES);
    ko[l] = e->layers[l].k.offset;
    vo[l] = e->layers[l].v.offset;
  }
  if (!rc) rc = cf_gpu_kv_open(&m->gkv, s->gpu->device, uuid, &lay, kh, ko, vh, vo);
  free(kh); free(vh); free(ko); free(vo);
  if (rc) { free(m); return rc; }
  m->gpu = 1;
  e->map = m;
  return 0;
}

static int cf__engine_added(void *ctx, cf_engine_t *e) {
  cf_storage_t *s = ctx;
  /* the service checks this first (FAILED_PRECONDITION); kept so no other caller maps a
   * buffer the executor would write in the wrong element type */
  if (e->dtype != cf__proto_dtype(s->kv_dtype))
    return cf_seterr(CF_EDTYPE, "engine KV dtype %s, the store holds %s cells (kv_dtype): register %s buffers",
                     e->dtype == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? "BF16" : e->dtype == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? "F16" : "F32",
                     cf_dtype_name(s->kv_dtype), cf_dtype_name(s->kv_dtype));
  if (!e->layers[0].k.shm_path) return cf__engine_added_gpu(s, e); /* the service refuses mixed kinds */
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
  cf_kv_layout_t lay;
  if (!rc) rc = cf__engine_layout(s, e, "CPU", &lay);
  if (!rc) rc = cf_kvmap_view(&m->kv, &lay, m->k, m->v);
  if (rc) { cf__unmap(m); return rc; }
  e->map = m;
  return 0;
}

static void cf__engine_removed(void *ctx, cf_engine_t *e) {
  (void)ctx;
  cf__unmap(e->map);
  e->map = NULL;
}

void cf_storage_engine_kv(const cf_engine_t *e, cf_kvmap_t **kv, const cf_gpu_kv_t **gkv) {
  const cf_engine_map_t *m = e->map;
  *kv = m && !m->gpu ? &e->map->kv : NULL;
  *gkv = m && m->gpu ? &m->gkv : NULL;
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

int cf_storage_lookup_keys(cf_store_t *st, const cf_store_key_t *keys, size_t nk, size_t n, size_t C, uint32_t per[4],
                           uint8_t *chunk_tiers) {
  uint8_t *tiers = malloc(nk ? nk : 1);
  if (!tiers) return cf_seterr(CF_ENOMEM, "lookup of %zu tokens", n);
  /* every chunk (keys chain over token ids only: a chunk is found without its predecessors),
   * the local tiers, then the remote one for the local misses (one round trip) */
  cf_store_lookup_each(st, keys, nk, tiers);
  per[0] = per[1] = per[2] = per[3] = 0;
  /* the store's tier numbers (NONE 0, CPU 1, SSD 2, REMOTE 3) are the proto's; per[] counts the
   * leading run only (Lookup's cached_tokens), chunk_tiers gets every chunk's */
  for (size_t i = 0, lead = 1; i < nk; i++) {
    size_t first = i * C, nt = n - first < C ? n - first : C;
    lead &= tiers[i] != CF_STORE_TIER_NONE;
    if (lead && tiers[i] <= CF_STORE_TIER_REMOTE) per[tiers[i]] += (uint32_t)nt;
    if (chunk_tiers) chunk_tiers[i] = tiers[i];
  }
  free(tiers);
  return 0;
}

static int cf__lookup(void *ctx, cf_engine_t *e, const uint32_t *tokens, size_t n, uint32_t per[4], uint8_t *chunk_tiers) {
  cf_storage_t *s = ctx;
  (void)e;
  size_t nk = 0;
  cf_store_key_t *keys = cf__keys(s, tokens, n, &nk);
  if (!keys) return cf_seterr(CF_ENOMEM, "lookup of %zu tokens", n);
  int rc = cf_storage_lookup_keys(s->st, keys, nk, n, s->g.chunk_tokens, per, chunk_tiers);
  free(keys);
  return rc;
}

static uint64_t cf__key8(const cf_store_key_t *k) {
  uint64_t v;
  memcpy(&v, k->b, sizeof v);
  return v ? v : 1; /* 0 marks "no skipped cells" */
}

void cf_storage_restored(cf_engine_t *e, const uint8_t fingerprint[16], int C, int L, const int32_t *tokens, int n,
                         const int32_t *blocks, int n_blocks, int present_tokens, const uint8_t *skip, int ok) {
  cf_engine_map_t *m = e->map;
  int bs = (int)e->block_size, nb = (n + bs - 1) / bs;
  if (!m || n <= 0 || C <= 0 || bs <= 0) return;
  if (nb > n_blocks) nb = n_blocks;
  int nc = (n + C - 1) / C, any = 0;
  for (int i = 0; skip && i < nc * L && !any; i++) any = skip[i] != 0;
  pthread_mutex_lock(&cf__skip_mu);
  if (!m->skip_key && !any) { pthread_mutex_unlock(&cf__skip_mu); return; } /* nothing marked, nothing to mark */
  if (!m->skip_key && !(m->skip_key = calloc(e->num_blocks ? e->num_blocks : 1, sizeof *m->skip_key)))
    CF_WARN("engine %llu: no memory for its skipped-cell marks", (unsigned long long)e->id);
  cf_store_key_t *keys = any ? malloc((size_t)nc * sizeof *keys) : NULL;
  int32_t *t = any ? malloc((size_t)n * sizeof *t) : NULL;
  if (any && keys && t) {
    for (int i = 0; i < n; i++) t[i] = tokens[i];
    cf_store_chain_keys_partial(fingerprint, t, (size_t)n, (uint32_t)C, keys);
  }
  for (int b = 0; m->skip_key && b < nb; b++) {
    if ((b + 1) * bs <= present_tokens) continue; /* the engine's own tokens: not written */
    if (blocks[b] < 0 || (uint32_t)blocks[b] >= e->num_blocks) continue;
    /* the lowest chunk with skipped cells in this block: its key implies the whole prefix up
     * to it, so Save stops there (cf__save) */
    uint64_t mark = 0;
    int c0 = b * bs / C, c1 = ((b + 1) * bs - 1) / C;
    for (int c = c0; c <= c1 && c < nc && !mark; c++)
      for (int l = 0; any && l < L && !mark; l++)
        if (skip[(size_t)c * L + l]) mark = keys && t ? cf__key8(&keys[c]) : UINT64_MAX; /* no memory for keys: refuse every save through it */
    /* a failed restore may have left any block half-written: it never clears a mark */
    if (mark || ok) m->skip_key[blocks[b]] = mark;
  }
  pthread_mutex_unlock(&cf__skip_mu);
  free(keys);
  free(t);
}

/* The pending-cell group of a TP engine's shards (made on its first shard save). */
static cf_save_group_t *cf__tp_group(cf_storage_t *s, uint64_t id) {
  pthread_mutex_lock(&s->groups_mu);
  cf__tpg_t *t = s->groups;
  while (t && t->tp_group != id) t = t->next;
  if (!t && (t = calloc(1, sizeof *t))) {
    if (cf_save_group_create(&t->g, (int)s->g.n_layers, (int)s->g.n_kv_heads, (int)s->g.head_dim, s->kv_dtype,
                             s->tp_pending_bytes)) {
      free(t);
      t = NULL;
    } else {
      t->tp_group = id;
      t->next = s->groups;
      s->groups = t;
    }
  }
  pthread_mutex_unlock(&s->groups_mu);
  return t ? t->g : NULL; /* groups live until cf_storage_close */
}

/* The chunks of a Save its blocks do not hold: the blocks carry that same chunk's key from a
 * windowed restore that skipped cells there (cf_storage_restored); a block the engine reused for
 * other tokens holds another key and saves. Returns NULL when none (or no memory for the keys
 * while nothing is marked), else a [ceil(n / C)] mask the caller frees (*n_refused set). */
static uint8_t *cf__skip_refuse(cf_storage_t *s, cf_engine_t *e, const uint32_t *tokens, size_t n, const int32_t *blk,
                                size_t n_blk, size_t *n_refused) {
  cf_engine_map_t *m = e->map;
  size_t C = s->g.chunk_tokens, bs = e->block_size, nk = 0;
  *n_refused = 0;
  pthread_mutex_lock(&cf__skip_mu);
  int marked = m && m->skip_key;
  pthread_mutex_unlock(&cf__skip_mu);
  if (!marked || !n || !bs) return NULL;
  cf_store_key_t *keys = cf__keys(s, tokens, n, &nk);
  nk = (n + C - 1) / C;
  uint8_t *refuse = calloc(nk, 1);
  pthread_mutex_lock(&cf__skip_mu);
  for (size_t c = 0; c < nk; c++) {
    size_t t1 = (c + 1) * C < n ? (c + 1) * C : n;
    int hit = 0;
    for (size_t b = c * C / bs; b <= (t1 - 1) / bs && b < n_blk && !hit; b++) {
      uint64_t v = m->skip_key[blk[b]];
      /* no memory for the keys: any marked block is refused (never a wrong store) */
      hit = v && (v == UINT64_MAX || !keys);
      /* a block holds the first skipped chunk's key (blocks wider than a chunk hold several):
       * any chunk of this Save in it from that one on is refused */
      for (size_t c2 = b * bs / C; v && keys && c2 <= c && !hit; c2++) hit = v == cf__key8(&keys[c2]);
    }
    if (hit) { if (refuse) refuse[c] = 1; (*n_refused)++; }
  }
  pthread_mutex_unlock(&cf__skip_mu);
  free(keys);
  if (*n_refused && !refuse) *n_refused = (size_t)-1; /* no mask: the caller saves nothing */
  if (!*n_refused) { free(refuse); refuse = NULL; }
  return refuse;
}

static int cf__save(void *ctx, cf_engine_t *e, const Cacheflow__V1__SaveRequest *req, uint32_t *saved, int *durable,
                    uint32_t *pending) {
  cf_storage_t *s = ctx;
  cf_engine_map_t *m = e->map;
  /* block ids were validated < num_blocks (< 2^31), so the uint32 table reads as int32 */
  const int32_t *blk = (const int32_t *)req->block_ids;
  size_t n = req->n_token_ids, n_refused = 0, C = s->g.chunk_tokens;
  /* wrong KV is never stored: a later restore would hand it to an engine */
  uint8_t *refuse = cf__skip_refuse(s, e, req->token_ids, n, blk, req->n_block_ids, &n_refused);
  *saved = 0;
  *durable = 0;
  *pending = 0;
  if (n_refused && (!refuse || m->gpu || e->n_heads < (int)s->g.n_kv_heads)) {
    /* the GPU and TP-shard paths take no mask: they stop before the first refused chunk */
    size_t c = 0;
    while (refuse && !refuse[c]) c++;
    CF_INFO("engine %llu: save of %zu tokens stops at token %zu: the blocks of chunk %zu hold cells a windowed "
            "restore skipped (never written)", (unsigned long long)e->id, n, c * C, c);
    n = c * C;
    free(refuse);
    refuse = NULL;
    if (!n) return 0;
  }
  int32_t *tok = malloc((n ? n : 1) * sizeof *tok);
  if (!tok) { free(refuse); return cf_seterr(CF_ENOMEM, "save of %zu tokens", n); }
  for (size_t i = 0; i < n; i++) tok[i] = (int32_t)req->token_ids[i]; /* ids < vocab: validated */
  unsigned flags = req->durable ? CF_STORE_SAVE_DURABLE : 0; /* the service checked has_ssd */
  cf_save_result_t res = {0};
  int rc;
  if (m->gpu) {
    rc = cf_exec_gpu_save(s->gpu, s->st, &m->gkv, tok, (int)n, blk, (int)req->n_block_ids, flags, &res);
  } else if (e->n_heads < (int)s->g.n_kv_heads) { /* a TP shard: whole cells once its group saved every head */
    cf_save_group_t *g = cf__tp_group(s, e->tp_group);
    rc = g ? cf_save_shard(g, s->st, &m->kv, tok, (int)n, blk, (int)req->n_block_ids, flags, &res)
           : cf_seterr(CF_ENOMEM, "save: TP group %llu", (unsigned long long)e->tp_group);
  } else {
    rc = cf_save_blocks_refusing(s->st, &m->kv, tok, (int)n, blk, (int)req->n_block_ids, flags, refuse, &res);
    if (res.refused_chunks || n_refused)
      CF_INFO("engine %llu: save of %zu tokens: %zu chunk(s) hold cells a windowed restore skipped (never written): "
              "%u not stored (holes), the rest already stored", (unsigned long long)e->id, n, n_refused,
              res.refused_chunks);
  }
  free(refuse);
  free(tok);
  *saved = res.saved_tokens;
  *durable = res.durable;
  *pending = res.pending_tokens;
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

static int cf__flush(void *ctx, uint64_t *ssd_chunks) {
  cf_storage_t *s = ctx;
  int rc = cf_store_flush(s->st);
  cf_store_stats_t st;
  cf_store_get_stats(s->st, &st);
  *ssd_chunks = st.ssd_chunks;
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
  be->kv_dtype = cf__proto_dtype(s->kv_dtype);
  be->has_ssd = s->has_ssd;
  be->engine_added = cf__engine_added;
  be->engine_removed = cf__engine_removed;
  be->lookup = cf__lookup;
  be->save = cf__save;
  be->evict = cf__evict;
  be->flush = cf__flush;
  be->usage = cf__usage;
  be->remote = cf_store_remote(s->st);
}
