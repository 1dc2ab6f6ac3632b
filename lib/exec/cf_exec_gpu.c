/* cf_exec_gpu — see cf_exec_gpu.h. UNVERIFIED on a GPU (see the header). */
#include "exec/cf_exec_gpu.h"

#include <stdlib.h>
#include <string.h>

#include "gpu/cf_gpu_rows.h"
#include "util/cf_err.h"
#include "util/cf_mempool.h"

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_exec_gpu_init(cf_exec_gpu_t *g, cf_backend_t *be, int device, cf_gpu_load_mode_t mode) {
  (void)be; (void)device; (void)mode;
  memset(g, 0, sizeof *g);
  return cf_seterr(CF_ENODEV, "gpu executor: CUDA not built into this binary");
}
void cf_exec_gpu_close(cf_exec_gpu_t *g) { memset(g, 0, sizeof *g); }
int cf_exec_gpu_set_budget(cf_exec_gpu_t *g, size_t bytes) {
  (void)g; (void)bytes;
  return cf_seterr(CF_ENODEV, "gpu executor: CUDA not built into this binary");
}

/* cf_exec_run validates every request before anything else: nothing past this runs. */
static int cf__gx_nocuda(void *dev, const cf_exec_req_t *r) {
  (void)dev; (void)r;
  return cf_seterr(CF_ENODEV, "gpu executor: CUDA not built into this binary");
}
const cf_exec_ops_t cf_exec_gpu_ops = {.name = "gpu", .validate = cf__gx_nocuda};

int cf_exec_gpu_save(cf_exec_gpu_t *g, cf_store_t *st, const cf_gpu_kv_t *kv, const int32_t *tokens,
                     int n, const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  (void)g; (void)st; (void)kv; (void)tokens; (void)n; (void)blocks; (void)n_blocks; (void)flags;
  memset(res, 0, sizeof *res);
  return cf_seterr(CF_ENODEV, "gpu save: CUDA not built into this binary");
}

#else

#include "kernels/cf_cuda_check.h"
#include "model/cf_backend_cuda.h"

typedef struct {
  cf_exec_gpu_t *g;
  cf_exec_req_t *r;
  int L, T, hidden;
  int64_t row;            /* elements per token row */
  uint16_t **sk, **sv;    /* [L] device bf16 [T][row] or NULL (budget: one block, sv = sk + rows x row) */
  int *srows;             /* budget: [L] rows each staging holds */
  uint16_t *spare;        /* budget: a staging block no layer holds now */
  int sprows;
  float *hid[2];          /* device fp32 [T][hidden] (budget: one block of hrows rows each) */
  int hrows;
  struct cf_mempool_s *dpool; /* the executor's device arena, or NULL (cudaMalloc) */
  int32_t *d_tokens;      /* device [T] */
  int32_t *d_table;       /* device block table [n_blocks] */
  cf_gpu_ready_t *gready; /* NULL: CPU counters only */
} cf__gx_rq_t;

typedef struct {
  cf_exec_gpu_t *g;
  int index;                   /* its slot in g->loaders (-1: not kept) */
  cf_gpu_loader_t ld;
  const cf__gx_rq_t *table_of; /* the request whose block table the loader holds (this run) */
  cudaEvent_t done;
} cf__gx_ld_t;

static void cf__gx_ld_destroy(cf__gx_ld_t *x) {
  if (!x) return;
  cf_gpu_loader_close(&x->ld);
  if (x->done) (void)cudaEventDestroy(x->done);
  free(x);
}

int cf_exec_gpu_init(cf_exec_gpu_t *g, cf_backend_t *be, int device, cf_gpu_load_mode_t mode) {
  memset(g, 0, sizeof *g);
  if (!be || !be->model || !be->name || strcmp(be->name, "cuda") != 0)
    return cf_seterr(CF_EINVAL, "gpu executor: needs the cuda backend (got %s)",
                     be && be->name ? be->name : "none");
  if (mode != CF_GPU_LOAD_STAGED && mode != CF_GPU_LOAD_ZEROCOPY && mode != CF_GPU_LOAD_ARENA)
    return cf_seterr(CF_EINVAL, "gpu executor: unknown load mode %d", (int)mode);
  g->be = be; g->device = device; g->mode = mode;
  pthread_mutex_init(&g->hmu, NULL);
  pthread_mutex_init(&g->smu, NULL);
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ENODEV, "gpu executor: device %d: %s", device, cudaGetErrorString(e));
  }
  int rc = 0;
  if ((e = cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&g->pub, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaStreamCreateWithFlags(&g->save, cudaStreamNonBlocking)) != cudaSuccess) {
    (void)cudaGetLastError();
    rc = cf_seterr(CF_ECUDA, "gpu executor: streams: %s", cudaGetErrorString(e));
    cf_exec_gpu_close(g);
  }
  return rc;
}

int cf_exec_gpu_set_budget(cf_exec_gpu_t *g, size_t bytes) {
  if (!g->be) return cf_seterr(CF_ENODEV, "gpu executor: not initialised");
  if (g->dpool || g->sbuf || !bytes) /* sbuf: a Save before it took cudaMalloc memory */
    return cf_seterr(CF_EINVAL, "gpu executor: budget already set, set after a Save, or 0 bytes");
  CF_CUDA_TRY(cudaSetDevice(g->device));
  if (cudaMalloc(&g->arena, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    g->arena = NULL;
    return cf_seterr(CF_ENOMEM, "gpu executor: device %d has not %zu bytes free for the restore arena", g->device, bytes);
  }
  int rc = cf_mempool_create_at("gpu", g->arena, bytes, &g->dpool);
  if (rc) { (void)cudaFree(g->arena); g->arena = NULL; return rc; }
  g->arena_bytes = bytes;
  return 0;
}

void cf_exec_gpu_close(cf_exec_gpu_t *g) {
  for (int i = 0; i < CF_EXEC_GPU_MAX_LOADERS; i++) cf__gx_ld_destroy(g->loaders[i]);
  for (int i = 0; i < g->n_hbuf; i++) cf_gpu_pinned_free(g->hbuf[i], g->hcap[i], NULL);
  if (g->be) { pthread_mutex_destroy(&g->hmu); pthread_mutex_destroy(&g->smu); }
  if (g->sbuf && g->dpool) cf_mempool_free(g->dpool, g->sbuf);
  else if (g->sbuf) (void)cudaFree(g->sbuf);
  if (g->dpool) cf_mempool_destroy(g->dpool);
  if (g->arena) (void)cudaFree(g->arena);
  if (g->compute) { (void)cudaStreamSynchronize(g->compute); (void)cudaStreamDestroy(g->compute); }
  if (g->pub) { (void)cudaStreamSynchronize(g->pub); (void)cudaStreamDestroy(g->pub); }
  if (g->save) { (void)cudaStreamSynchronize(g->save); (void)cudaStreamDestroy(g->save); }
  (void)cudaGetLastError();
  memset(g, 0, sizeof *g);
}

/* Wait for everything enqueued on `s` so far: the ops are synchronous. */
static int cf__gx_sync(cudaStream_t s) {
  CF_CUDA_TRY(cudaStreamSynchronize(s));
  return 0;
}

/* Pageable host -> device, complete on return. Why not cudaMemcpy: from pageable memory it
 * returns once the bytes are in the driver's staging buffer, before the DMA lands, and our
 * streams are non-blocking (no implicit order with the legacy stream), so a kernel on another
 * stream could read the old bytes (CUDA runtime API, "API synchronization behavior"). */
static int cf__gx_h2d(void *dst, const void *src, size_t bytes, cudaStream_t s) {
  CF_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  return cf__gx_sync(s);
}

static int cf__gx_validate(void *dev, const cf_exec_req_t *r) {
  cf_exec_gpu_t *g = dev;
  if (!g || !g->be || !g->compute)
    return cf_seterr(CF_ENODEV, "restore: the GPU executor is not initialised (cf_exec_gpu_init failed or was not called)");
  if (r->kv || !r->gkv)
    return cf_seterr(CF_EINVAL, "restore: the GPU executor needs the engine's device buffers (gkv), not a shared-memory map");
  if (r->gkv->device != g->device)
    return cf_seterr(CF_EMISMATCH, "restore: engine buffers on device %d, the executor runs on device %d",
                     r->gkv->device, g->device);
  if (r->gkv->layout.dtype != CF_DT_BF16)
    return cf_seterr(CF_EDTYPE, "restore: the GPU executor computes bf16 KV, the engine buffer is %s",
                     cf_dtype_name(r->gkv->layout.dtype));
  /* cf_gpu_load_cell writes a whole cell: a loaded chunk may not hold rows below present_tokens
   * (the daemon computes the chunk holding it on this path) */
  for (int c = cf_exec_present_chunks(&r->gkv->layout, r->present_tokens, r->chunk_tokens);
       r->present_tokens > 0 && c * r->chunk_tokens < r->present_tokens; c++)
    if (r->h[c] < g->be->model->cfg.n_layers)
      return cf_seterr(CF_EUNSUPPORTED, "restore: chunk %d holds present_tokens %d and loads layers from %d: the GPU "
                       "path loads whole cells; compute it (h = L)", c, r->present_tokens, r->h[c]);
  const cf_model_config_t *mc = &g->be->model->cfg;
  for (int t = 0; r->tokens && t < r->n_tokens; t++)
    if (r->tokens[t] < 0 || r->tokens[t] >= mc->vocab)
      return cf_seterr(CF_ERANGE, "restore: token %d at position %d not in [0, %d)", r->tokens[t], t, mc->vocab);
  return 0;
}

/* Device memory of a request: from the arena when the executor has one, else cudaMalloc. */
static int cf__gx_dalloc(cf__gx_rq_t *q, void **p, size_t bytes) {
  if (q->dpool) {
    *p = cf_mempool_alloc(q->dpool, bytes);
    return *p ? 0 : CF_EAGAIN;
  }
  CF_CUDA_TRY(cudaMalloc(p, bytes));
  return 0;
}
static void cf__gx_dfree(cf__gx_rq_t *q, void *p) {
  if (!p) return;
  if (q->dpool) cf_mempool_free(q->dpool, p);
  else (void)cudaFree(p);
}

/* Every working buffer back (to the arena, or cudaFree): blocks made by the budget ops are one
 * allocation (srows / hrows set: sv and hid[1] point inside), the others two. */
static void cf__gx_req_release(void *p) {
  cf__gx_rq_t *q = p;
  if (!q) return;
  (void)cudaStreamSynchronize(q->g->compute); /* nothing in flight uses them */
  for (int l = 0; q->sk && q->sv && q->srows && l < q->L; l++) {
    if (q->srows[l]) cf__gx_dfree(q, q->sk[l]);
    else { (void)cudaFree(q->sk[l]); (void)cudaFree(q->sv[l]); }
    q->sk[l] = q->sv[l] = NULL;
    q->srows[l] = 0;
  }
  cf__gx_dfree(q, q->spare);
  if (q->hrows) cf__gx_dfree(q, q->hid[0]);
  else { (void)cudaFree(q->hid[0]); (void)cudaFree(q->hid[1]); }
  q->spare = NULL; q->hid[0] = q->hid[1] = NULL;
  q->sprows = q->hrows = 0;
  (void)cudaGetLastError();
}

static void cf__gx_req_free(void *p) {
  cf__gx_rq_t *q = p;
  if (!q) return;
  cf__gx_req_release(q);
  free(q->sk); free(q->sv); free(q->srows);
  cf__gx_dfree(q, q->d_tokens); cf__gx_dfree(q, q->d_table);
  (void)cudaGetLastError();
  free(q);
}

static int cf__gx_req_init(void *dev, cf_exec_req_t *r, void **rs) {
  cf_exec_gpu_t *g = dev;
  const cf_model_config_t *mc = &g->be->model->cfg;
  cf__gx_rq_t *q = calloc(1, sizeof *q);
  *rs = q;
  if (!q) return cf_seterr(CF_ENOMEM, "gpu executor: request state");
  q->g = g; q->r = r; q->L = mc->n_layers; q->T = r->n_tokens; q->hidden = mc->hidden;
  q->row = (int64_t)mc->n_kv_heads * mc->head_dim;
  q->gready = r->ready && r->gready && r->gready->r == r->ready ? r->gready : NULL;
  q->dpool = g->dpool;
  q->sk = calloc((size_t)q->L, sizeof *q->sk); q->sv = calloc((size_t)q->L, sizeof *q->sv);
  q->srows = calloc((size_t)q->L, sizeof *q->srows);
  if (!q->sk || !q->sv || !q->srows) return cf_seterr(CF_ENOMEM, "gpu executor: staging table for %d layers", q->L);
  /* the calling thread (the scheduler's compute thread) works on the executor's device */
  CF_CUDA_TRY(cudaSetDevice(g->device));
  int arc = cf__gx_dalloc(q, (void **)&q->d_tokens, (size_t)q->T * sizeof(int32_t));
  if (!arc) arc = cf__gx_dalloc(q, (void **)&q->d_table, (size_t)r->n_blocks * sizeof(int32_t));
  if (arc == CF_EAGAIN) /* token ids and block table: small, but the arena must hold them */
    return cf_seterr(CF_ENOMEM, "gpu executor: the device memory budget has no room for restore %llu's token ids "
                     "and block table", (unsigned long long)r->req_id);
  if (arc) return arc;
  int rc = cf__gx_h2d(q->d_tokens, r->tokens, (size_t)q->T * sizeof(int32_t), g->compute);
  return rc ? rc : cf__gx_h2d(q->d_table, r->blocks, (size_t)r->n_blocks * sizeof(int32_t), g->compute);
}

static int cf__gx_req_stage(void *p, int l) {
  cf__gx_rq_t *q = p;
  if (q->sk[l]) return 0;
  size_t b = (size_t)q->T * (size_t)q->row * 2;
  CF_CUDA_TRY(cudaMalloc((void **)&q->sk[l], b));
  CF_CUDA_TRY(cudaMalloc((void **)&q->sv[l], b));
  return 0;
}

static int cf__gx_req_hidden(void *p) {
  cf__gx_rq_t *q = p;
  if (q->hid[0] || q->L < 2) return 0;
  size_t b = (size_t)q->T * (size_t)q->hidden * sizeof(float);
  CF_CUDA_TRY(cudaMalloc((void **)&q->hid[0], b));
  CF_CUDA_TRY(cudaMalloc((void **)&q->hid[1], b));
  return 0;
}

/* Budget: layer l's staging holds rows [0, rows) (the spare when large enough, else an arena
 * block; a smaller staging it had is copied over on the compute stream and given back). */
static int cf__gx_req_stage_rows(void *p, int l, int rows) {
  cf__gx_rq_t *q = p;
  if (q->sk[l] && q->srows[l] >= rows) return 0;
  uint16_t *b;
  int brows;
  if (q->spare && q->sprows >= rows) {
    b = q->spare; brows = q->sprows;
    q->spare = NULL; q->sprows = 0;
  } else {
    int rc = cf__gx_dalloc(q, (void **)&b, 2 * (size_t)rows * (size_t)q->row * 2);
    if (rc) return rc;
    brows = rows;
  }
  if (q->sk[l]) {
    size_t n = (size_t)q->srows[l] * (size_t)q->row * 2;
    CF_CUDA_TRY(cudaMemcpyAsync(b, q->sk[l], n, cudaMemcpyDeviceToDevice, q->g->compute));
    CF_CUDA_TRY(cudaMemcpyAsync(b + (size_t)brows * q->row, q->sv[l], n, cudaMemcpyDeviceToDevice, q->g->compute));
    int rc = cf__gx_sync(q->g->compute);
    if (rc) return rc;
    cf__gx_dfree(q, q->sk[l]);
  }
  q->sk[l] = b;
  q->sv[l] = b + (size_t)brows * q->row;
  q->srows[l] = brows;
  return 0;
}

static void cf__gx_req_unstage(void *p, int l) {
  cf__gx_rq_t *q = p;
  uint16_t *b = q->sk[l];
  if (!b) return;
  (void)cudaStreamSynchronize(q->g->compute); /* the last step over it has run */
  if (!q->spare || q->sprows < q->srows[l]) {
    cf__gx_dfree(q, q->spare);
    q->spare = b; q->sprows = q->srows[l];
  } else {
    cf__gx_dfree(q, b);
  }
  q->sk[l] = q->sv[l] = NULL;
  q->srows[l] = 0;
}

static int cf__gx_req_hidden_rows(void *p, int rows) {
  cf__gx_rq_t *q = p;
  if (q->L < 2 || (q->hid[0] && q->hrows >= rows)) return 0;
  float *b;
  int rc = cf__gx_dalloc(q, (void **)&b, 2 * (size_t)rows * (size_t)q->hidden * sizeof(float));
  if (rc) return rc;
  if (q->hid[0]) {
    size_t n = (size_t)q->hrows * (size_t)q->hidden * sizeof(float);
    CF_CUDA_TRY(cudaMemcpyAsync(b, q->hid[0], n, cudaMemcpyDeviceToDevice, q->g->compute));
    CF_CUDA_TRY(cudaMemcpyAsync(b + (size_t)rows * q->hidden, q->hid[1], n, cudaMemcpyDeviceToDevice, q->g->compute));
    if ((rc = cf__gx_sync(q->g->compute))) return rc;
    cf__gx_dfree(q, q->hid[0]);
  }
  q->hid[0] = b;
  q->hid[1] = b + (size_t)rows * q->hidden;
  q->hrows = rows;
  return 0;
}

/* A loader index's state: the one an earlier run made (kept in g->loaders), else made now and
 * kept, so a restore allocates no streams, events or device staging. */
static int cf__gx_loader_init(void *dev, int index, void **ls) {
  cf_exec_gpu_t *g = dev;
  *ls = NULL;
  /* the current device is per thread: loader threads are new threads */
  cudaError_t e = cudaSetDevice(g->device);
  if (e != cudaSuccess) return cf_seterr(CF_ECUDA, "gpu executor: loader device %d: %s", g->device, cudaGetErrorString(e));
  int keep = index >= 0 && index < CF_EXEC_GPU_MAX_LOADERS;
  if (keep && g->loaders[index]) {
    cf__gx_ld_t *x = g->loaders[index];
    x->table_of = NULL; /* a new run: its requests' tables are not loaded yet (addresses may repeat) */
    *ls = x;
    return 0;
  }
  cf__gx_ld_t *x = calloc(1, sizeof *x);
  if (!x) return cf_seterr(CF_ENOMEM, "gpu executor: loader");
  x->g = g;
  x->index = keep ? index : -1;
  int rc = cf_gpu_loader_init(&x->ld, g->mode, g->loader_staging);
  if (!rc && (e = cudaEventCreateWithFlags(&x->done, cudaEventDisableTiming)) != cudaSuccess)
    rc = cf_seterr(CF_ECUDA, "gpu executor: loader event: %s", cudaGetErrorString(e));
  if (rc) {
    (void)cudaGetLastError();
    cf__gx_ld_destroy(x);
    return rc;
  }
  if (keep) g->loaders[index] = x;
  *ls = x;
  return 0;
}

/* The run ended: a kept loader stays for the next one (its copies complete first). */
static void cf__gx_loader_free(void *ls) {
  cf__gx_ld_t *x = ls;
  if (!x) return;
  if (x->index < 0) { cf__gx_ld_destroy(x); return; }
  if (x->ld.copy) (void)cudaStreamSynchronize(x->ld.copy);
  if (x->ld.scatter) (void)cudaStreamSynchronize(x->ld.scatter);
  (void)cudaGetLastError();
}

/* The loaders' pinned cell buffers: one an earlier run gave back when large enough, else a new
 * one (page-aligned: O_DIRECT reads go straight in); given back to the executor, not unpinned. */
static void *cf__gx_host_alloc(void *dev, size_t bytes) {
  cf_exec_gpu_t *g = dev;
  void *p = NULL;
  pthread_mutex_lock(&g->hmu);
  for (int i = 0; i < g->n_hbuf && !p; i++)
    if (g->hcap[i] >= bytes) {
      p = g->hbuf[i];
      g->hbuf[i] = g->hbuf[--g->n_hbuf];
      g->hcap[i] = g->hcap[g->n_hbuf];
    }
  pthread_mutex_unlock(&g->hmu);
  return p ? p : cf_gpu_pinned_alloc(bytes, NULL);
}
static void cf__gx_host_free(void *dev, void *p, size_t bytes) {
  cf_exec_gpu_t *g = dev;
  if (!p) return;
  pthread_mutex_lock(&g->hmu);
  int kept = g->n_hbuf < CF_EXEC_GPU_MAX_LOADERS;
  if (kept) { g->hbuf[g->n_hbuf] = p; g->hcap[g->n_hbuf++] = bytes; }
  pthread_mutex_unlock(&g->hmu);
  if (!kept) cf_gpu_pinned_free(p, bytes, NULL);
}

/* A load failed after it may have enqueued copies/scatters into the engine's blocks: wait for
 * them (the scheduler recomputes the cell next and writes the same blocks on the compute
 * stream; a late H2D would overwrite the computed rows) and drop ARENA runs not yet flushed (a
 * later flush would scatter the failed cell's arena rows over them). Keeps the first error. */
static int cf__gx_load_abort(cf__gx_ld_t *x, int rc) {
  cf_gpu_loader_t *ld = &x->ld;
  if (ld->copy) (void)cudaStreamSynchronize(ld->copy);
  if (ld->scatter) (void)cudaStreamSynchronize(ld->scatter);
  if (ld->arena_free) (void)cudaEventSynchronize(ld->arena_free);
  ld->n_runs = 0;
  ld->arena_used = 0;
  (void)cudaGetLastError();
  return rc;
}

static int cf__gx_load(void *ls, void *p, int l, int t0, int t1, const void *k, const void *v, int stage) {
  cf__gx_ld_t *x = ls;
  cf__gx_rq_t *q = p;
  int n = t1 - t0, rc;
  /* cf_gpu_load_cell moves a store cell: V rows right after the K rows */
  if ((const uint8_t *)v != (const uint8_t *)k + (size_t)n * (size_t)q->row * 2)
    return cf_seterr(CF_EINVAL, "gpu executor: cell (layer %d, tokens [%d, %d)) is not K rows then V rows", l, t0, t1);
  if (x->table_of != q) {
    if ((rc = cf_gpu_loader_set_table(&x->ld, q->r->blocks, q->r->n_blocks))) return rc;
    x->table_of = q;
  }
  if ((rc = cf_gpu_load_cell(&x->ld, q->r->gkv, l, t0, k, n))) return cf__gx_load_abort(x, rc);
  /* ARENA: this cell's scatter now */
  if ((rc = cf_gpu_loader_flush(&x->ld, NULL))) return cf__gx_load_abort(x, rc);
  cudaStream_t s = cf_gpu_loader_stream(&x->ld);
  /* the compute attends over this cell: copy its rows from the blocks (HBM, not the link) */
  if (stage && (rc = cf_gpu_rows_gather(q->r->gkv, l, q->d_table, q->r->n_blocks, t0, t1,
                                        q->sk[l] + (int64_t)t0 * q->row,
                                        q->sv[l] + (int64_t)t0 * q->row, q->row, s)))
    return cf__gx_load_abort(x, rc);
  cudaError_t e = cudaEventRecord(x->done, s);
  if (e == cudaSuccess) e = cudaEventSynchronize(x->done); /* present only once the copies are done */
  if (e != cudaSuccess)
    return cf__gx_load_abort(x, cf_seterr(CF_ECUDA, "gpu executor: load (layer %d, tokens [%d, %d)): %s",
                                          l, t0, t1, cudaGetErrorString(e)));
  return 0;
}

static int cf__gx_gather(void *p, int l, int t0, int t1) {
  cf__gx_rq_t *q = p;
  int rc = cf_gpu_rows_gather(q->r->gkv, l, q->d_table, q->r->n_blocks, t0, t1,
                              q->sk[l] + (int64_t)t0 * q->row, q->sv[l] + (int64_t)t0 * q->row,
                              q->row, q->g->compute);
  return rc ? rc : cf__gx_sync(q->g->compute);
}

static int cf__gx_forward(void *p, int l, int t0, int t1) {
  cf__gx_rq_t *q = p;
  uint16_t *k[1] = {q->sk[l]}, *v[1] = {q->sv[l]};
  cf_cuda_fwd_args_t a = {
      .l0 = l, .l1 = l + 1, .t0 = t0, .t1 = t1,
      .tokens = q->d_tokens + t0,
      .hidden_in = l > 0 ? q->hid[l % 2] + (size_t)t0 * q->hidden : NULL,
      .k = k, .v = v, .kv_row_stride = q->row,
      .hidden_out = l + 1 < q->L ? q->hid[(l + 1) % 2] + (size_t)t0 * q->hidden : NULL,
  };
  int rc = cf_backend_cuda_forward_dev(q->g->be, &a, q->g->compute);
  return rc ? rc : cf__gx_sync(q->g->compute);
}

static int cf__gx_write(void *p, int l, int t0, int t1) {
  cf__gx_rq_t *q = p;
  int rc = cf_gpu_rows_scatter(q->r->gkv, l, q->d_table, q->r->n_blocks, t0, t1,
                               q->sk[l] + (int64_t)t0 * q->row, q->sv[l] + (int64_t)t0 * q->row,
                               q->row, q->g->compute);
  return rc ? rc : cf__gx_sync(q->g->compute);
}

static void cf__gx_begin(void *p) {
  cf__gx_rq_t *q = p;
  if (!q->r->ready) return;
  /* the previous restore's stream work on this slot must be complete before the reset */
  if (q->gready) (void)cudaStreamSynchronize(q->g->pub);
  cf_ready_begin(q->r->ready, q->r->ready_slot, q->r->req_id);
}

static void cf__gx_publish(void *p, int n) {
  cf__gx_rq_t *q = p;
  if (!q->r->ready) return;
  if (!q->gready) { cf_ready_publish(q->r->ready, q->r->ready_slot, (uint64_t)n); return; }
  /* every op before this call has completed (they are synchronous): the gate follows the
   * layer's last copy and compute. */
  if (cf_gpu_ready_publish(q->gready, q->r->ready_slot, (uint64_t)n, q->g->pub) == 0) return;
  /* The stream publish failed: the layers ARE in the engine, so publish from the CPU — the
   * counter AND the gate (else an engine stream waiting for layer n hangs for good). Earlier
   * gate writes still queued on `pub` land first (synchronize), so none lowers it afterwards. */
  (void)cudaStreamSynchronize(q->g->pub);
  (void)cudaGetLastError();
  _Atomic uint64_t *gate = &q->r->ready->slots[q->r->ready_slot].gate;
  uint64_t cur = atomic_load(gate);
  while (cur < (uint64_t)n && !atomic_compare_exchange_weak(gate, &cur, (uint64_t)n)) {}
  cf_ready_publish(q->r->ready, q->r->ready_slot, (uint64_t)n);
}

static void cf__gx_finish(void *p, int err) {
  cf__gx_rq_t *q = p;
  if (!q->r->ready) return;
  if (!q->gready) { cf_ready_finish(q->r->ready, q->r->ready_slot, err); return; }
  if (err) cf_gpu_ready_fail(q->gready, q->r->ready_slot, err, &q->g->pub);
  else if (cf_gpu_ready_finish(q->gready, q->r->ready_slot, q->g->pub)) {
    /* as in publish: queued callbacks first, then DONE from the CPU (the gate is at L already) */
    (void)cudaStreamSynchronize(q->g->pub);
    (void)cudaGetLastError();
    cf_ready_finish(q->r->ready, q->r->ready_slot, 0);
  }
}

const cf_exec_ops_t cf_exec_gpu_ops = {
    .name = "gpu",
    .validate = cf__gx_validate,
    .req_init = cf__gx_req_init,
    .req_free = cf__gx_req_free,
    .req_stage = cf__gx_req_stage,
    .req_hidden = cf__gx_req_hidden,
    .req_stage_rows = cf__gx_req_stage_rows,
    .req_hidden_rows = cf__gx_req_hidden_rows,
    .req_unstage = cf__gx_req_unstage,
    .req_release = cf__gx_req_release,
    .loader_init = cf__gx_loader_init,
    .loader_free = cf__gx_loader_free,
    .host_alloc = cf__gx_host_alloc,
    .host_free = cf__gx_host_free,
    .load = cf__gx_load,
    .gather = cf__gx_gather,
    .forward = cf__gx_forward,
    .write = cf__gx_write,
    .begin = cf__gx_begin,
    .publish = cf__gx_publish,
    .finish = cf__gx_finish,
};

/* ---------------------------------------------------------------- save (D2H) */

typedef struct {
  cf_exec_gpu_t *g;
  const cf_gpu_kv_t *kv;
  const int32_t *blocks;  /* the Save's block table (host) */
  int n_blocks;
  int32_t *d_table;       /* device: the entries of one cell's blocks, from b0 */
  int cap_table, b0, nb;  /* its capacity; the entries it holds now: blocks [b0, b0 + nb) */
  uint16_t *dk, *dv;      /* device rows of one cell */
} cf__gx_save_t;

/* One cell: paged blocks -> contiguous device rows (kernel) -> host (D2H), synchronous, on the
 * save stream (a Save on the loop thread never queues behind a restore's compute). Only the
 * cell's blocks are on the device (uploaded when the cell changes), so the gather runs on
 * tokens shifted by b0 whole blocks: the same block offsets, table entry p - b0 for block p. */
static int cf__gx_save_gather(void *ctx, int l, int t0, int t1, void *k, void *v) {
  cf__gx_save_t *x = ctx;
  int bs = x->kv->layout.block_size, b0 = t0 / bs, nb = (t1 - 1) / bs - b0 + 1;
  if (nb > x->cap_table || b0 + nb > x->n_blocks)
    return cf_seterr(CF_EINVAL, "gpu save: tokens [%d, %d) need blocks [%d, %d) of a %d-entry table (%d held)",
                     t0, t1, b0, b0 + nb, x->n_blocks, x->cap_table);
  if (b0 != x->b0 || nb != x->nb) {
    int rc = cf__gx_h2d(x->d_table, x->blocks + b0, (size_t)nb * 4, x->g->save);
    if (rc) return rc;
    x->b0 = b0; x->nb = nb;
  }
  int64_t row = (int64_t)x->kv->layout.n_kv_heads * x->kv->layout.head_dim;
  size_t bytes = (size_t)(t1 - t0) * (size_t)row * 2;
  int rc = cf_gpu_rows_gather(x->kv, l, x->d_table, nb, t0 - b0 * bs, t1 - b0 * bs, x->dk, x->dv, row, x->g->save);
  if (rc) return rc;
  CF_CUDA_TRY(cudaMemcpyAsync(k, x->dk, bytes, cudaMemcpyDeviceToHost, x->g->save));
  CF_CUDA_TRY(cudaMemcpyAsync(v, x->dv, bytes, cudaMemcpyDeviceToHost, x->g->save));
  return cf__gx_sync(x->g->save);
}

/* g->sbuf of at least `bytes` (kept; see cf_exec_gpu_t): from the arena, waiting while restores
 * hold it, else cudaMalloc. Only the first Save (or one needing more) gets here. smu held. */
static int cf__gx_save_buf(cf_exec_gpu_t *g, size_t bytes) {
  if (g->sbuf_bytes >= bytes) return 0;
  if (g->sbuf) {
    if (g->dpool) cf_mempool_free(g->dpool, g->sbuf);
    else (void)cudaFree(g->sbuf);
  }
  g->sbuf = NULL; g->sbuf_bytes = 0;
  if (g->dpool) {
    if (!(g->sbuf = cf_mempool_alloc_wait(g->dpool, bytes)))
      return cf_seterr(CF_ENOMEM, "gpu save: needs %zu bytes of device buffers (one cell of K and V rows and its "
                       "block-table entries), more than the whole restore arena (%zu bytes)", bytes, g->arena_bytes);
  } else {
    cudaError_t e = cudaMalloc(&g->sbuf, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      g->sbuf = NULL;
      return cf_seterr(CF_ECUDA, "gpu save: %zu bytes of device buffers: %s", bytes, cudaGetErrorString(e));
    }
  }
  g->sbuf_bytes = bytes;
  return 0;
}

int cf_exec_gpu_save(cf_exec_gpu_t *g, cf_store_t *st, const cf_gpu_kv_t *kv, const int32_t *tokens,
                     int n, const int32_t *blocks, int n_blocks, unsigned flags, cf_save_result_t *res) {
  memset(res, 0, sizeof *res);
  if (!g->save || !kv || !blocks || n_blocks <= 0 || kv->layout.block_size <= 0)
    return cf_seterr(CF_EINVAL, "gpu save: executor, engine buffers and a block table required");
  int C = (int)cf_store_geom(st)->chunk_tokens, bs = kv->layout.block_size;
  size_t cell = (size_t)C * (size_t)kv->layout.n_kv_heads * (size_t)kv->layout.head_dim * 2;
  size_t cella = (cell + 255) / 256 * 256; /* dv and the table stay 256-byte aligned */
  cf__gx_save_t x = {.g = g, .kv = kv, .blocks = blocks, .n_blocks = n_blocks, .b0 = -1,
                     .cap_table = (C + bs - 1) / bs + 1}; /* a cell not block-aligned spans one more */
  pthread_mutex_lock(&g->smu);
  cudaError_t e = cudaSetDevice(g->device);
  int rc = e != cudaSuccess ? cf_seterr(CF_ECUDA, "gpu save: device %d: %s", g->device, cudaGetErrorString(e))
                            : cf__gx_save_buf(g, 2 * cella + (size_t)x.cap_table * 4);
  if (!rc) {
    x.dk = g->sbuf;
    x.dv = (uint16_t *)((uint8_t *)g->sbuf + cella);
    x.d_table = (int32_t *)((uint8_t *)g->sbuf + 2 * cella);
    rc = cf_save_cells(st, &kv->layout, cf__gx_save_gather, &x, tokens, n, blocks, n_blocks, flags, res);
  }
  pthread_mutex_unlock(&g->smu);
  (void)cudaGetLastError();
  return rc;
}

#endif
