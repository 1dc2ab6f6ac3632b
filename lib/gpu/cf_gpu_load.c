/* cf_gpu_load — see cf_gpu_load.h. */
#include "gpu/cf_gpu_load.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/cf_err.h"

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_gpu_loader_init(cf_gpu_loader_t *ld, cf_gpu_load_mode_t mode, size_t staging_bytes) {
  (void)mode; (void)staging_bytes;
  memset(ld, 0, sizeof *ld);
  return cf_seterr(CF_ENODEV, "gpu loader: CUDA not built into this binary");
}
void cf_gpu_loader_close(cf_gpu_loader_t *ld) { memset(ld, 0, sizeof *ld); }
int cf_gpu_loader_set_table(cf_gpu_loader_t *ld, const int32_t *t, int n) {
  (void)ld; (void)t; (void)n;
  return cf_seterr(CF_ENODEV, "gpu loader: CUDA not built into this binary");
}
int cf_gpu_load_cell(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, int layer, int tok0,
                     const void *cell, int n_tok) {
  (void)ld; (void)kv; (void)layer; (void)tok0; (void)cell; (void)n_tok;
  return cf_seterr(CF_ENODEV, "gpu loader: CUDA not built into this binary");
}
cudaStream_t cf_gpu_loader_stream(const cf_gpu_loader_t *ld) { (void)ld; return NULL; }
int cf_gpu_loader_flush(cf_gpu_loader_t *ld, cudaStream_t s) {
  (void)ld; (void)s;
  return cf_seterr(CF_ENODEV, "gpu loader: CUDA not built into this binary");
}
void cf_gpu_ring_sink(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, cf_ring_sink_t *out) {
  (void)ld; (void)kv;
  memset(out, 0, sizeof *out);
}
void *cf_gpu_pinned_alloc(size_t bytes, void *ud) { (void)bytes; (void)ud; return NULL; }
void cf_gpu_pinned_free(void *p, size_t bytes, void *ud) { (void)p; (void)bytes; (void)ud; }

#else

#include "gpu/cf_gpu_rows.h"
#include "kernels/cf_cuda_check.h"
#include "kernels/cf_paged.h"

#define CF__GPU_STAGING_DEFAULT (16u << 20)
#define CF__GPU_ARENA_DEFAULT (256u << 20)

/* Anonymous memory pinned with cudaHostRegister, not cudaHostAlloc: cudaHostAlloc's pages are a
 * mapping of the NVIDIA device file, and O_DIRECT / io_uring reads into them (the SSD tier reads
 * straight into these buffers) depend on the kernel accepting that VMA for get_user_pages
 * (io_uring buffer registration refuses file-backed VMAs on pre-6.x kernels: EOPNOTSUPP). An
 * anonymous mapping is what every kernel's direct I/O takes; registered Portable + Mapped it is
 * the same pinned, device-mapped memory for the copies and the zero-copy kernel. */
static size_t cf__pinned_len(size_t bytes) {
  size_t pg = (size_t)sysconf(_SC_PAGESIZE);
  return (bytes + pg - 1) / pg * pg;
}

/* One extra page in front holds the mapping's length, so that free needs no byte count (callers
 * that passed 0 to the cudaFreeHost-based version keep working). */
void *cf_gpu_pinned_alloc(size_t bytes, void *ud) {
  (void)ud;
  if (!bytes) return NULL;
  size_t pg = (size_t)sysconf(_SC_PAGESIZE), len = cf__pinned_len(bytes);
  uint8_t *m = mmap(NULL, pg + len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return NULL;
  (void)madvise(m, pg + len, MADV_DONTFORK); /* a forked child must not turn pinned pages copy-on-write */
  *(size_t *)m = pg + len;
  /* page-aligned (the store wants 4096), mapped (the zero-copy kernel reads it) */
  if (cudaHostRegister(m + pg, len, cudaHostRegisterPortable | cudaHostRegisterMapped) != cudaSuccess) {
    (void)cudaGetLastError();
    munmap(m, pg + len);
    return NULL;
  }
  return m + pg;
}

void cf_gpu_pinned_free(void *p, size_t bytes, void *ud) {
  (void)bytes; (void)ud;
  if (!p) return;
  uint8_t *m = (uint8_t *)p - (size_t)sysconf(_SC_PAGESIZE);
  (void)cudaHostUnregister(p);
  (void)cudaGetLastError();
  munmap(m, *(size_t *)m);
}

int cf_gpu_loader_init(cf_gpu_loader_t *ld, cf_gpu_load_mode_t mode, size_t staging_bytes) {
  memset(ld, 0, sizeof *ld);
  if (mode != CF_GPU_LOAD_STAGED && mode != CF_GPU_LOAD_ZEROCOPY && mode != CF_GPU_LOAD_ARENA)
    return cf_seterr(CF_EINVAL, "gpu loader: unknown mode %d", (int)mode);
  ld->mode = mode;
  ld->zc_ctas = 32;
  cudaError_t e = cudaGetDevice(&ld->device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cf_seterr(CF_ENODEV, "gpu loader: no CUDA device: %s", cudaGetErrorString(e));
  }
  cf_paged_stager_t *st = calloc(1, sizeof *st);
  if (!st) return cf_seterr(CF_ENOMEM, "gpu loader");
  ld->stager = st;
  int rc = 0, lo = 0, hi = 0;
#define CF__TRY(call) do { if (!rc && (e = (call)) != cudaSuccess) { (void)cudaGetLastError(); \
    rc = cf_seterr(CF_ECUDA, "gpu loader: %s: %s", #call, cudaGetErrorString(e)); } } while (0)
  CF__TRY(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  CF__TRY(cudaStreamCreateWithFlags(&ld->copy, cudaStreamNonBlocking));
  /* highest priority: the short scatter kernels get SMs as soon as compute blocks retire */
  CF__TRY(cudaStreamCreateWithPriority(&ld->scatter, cudaStreamNonBlocking, hi));
  for (int i = 0; i < CF_RING_MAX_SLOTS; i++)
    CF__TRY(cudaEventCreateWithFlags(&ld->slot_ev[i], cudaEventDisableTiming));
  if (mode == CF_GPU_LOAD_STAGED) {
    st->copy = ld->copy;
    st->scatter = ld->scatter;
    for (int i = 0; i < CF_PAGED_STAGE_SLOTS; i++) {
      CF__TRY(cudaEventCreateWithFlags(&st->copied[i], cudaEventDisableTiming));
      CF__TRY(cudaEventCreateWithFlags(&st->freed[i], cudaEventDisableTiming));
    }
    size_t b = staging_bytes ? staging_bytes : CF__GPU_STAGING_DEFAULT;
    CF__TRY(cudaMalloc((void **)&st->staging, b));
    st->staging_elems = (int64_t)(b / 2);
  }
  if (mode == CF_GPU_LOAD_ARENA) {
    size_t b = staging_bytes ? staging_bytes : CF__GPU_ARENA_DEFAULT;
    CF__TRY(cudaMalloc((void **)&ld->arena, b));
    ld->arena_bytes = b;
    CF__TRY(cudaEventCreateWithFlags(&ld->arena_copied, cudaEventDisableTiming));
    CF__TRY(cudaEventCreateWithFlags(&ld->arena_free, cudaEventDisableTiming));
    ld->arena_rows = 0; /* set per row size at the first load */
    ld->flush_stream = ld->scatter;
  }
#undef CF__TRY
  if (rc) cf_gpu_loader_close(ld);
  return rc;
}

void cf_gpu_loader_close(cf_gpu_loader_t *ld) {
  cf_paged_stager_t *st = ld->stager;
  if (ld->copy) (void)cudaStreamSynchronize(ld->copy);
  if (ld->scatter) (void)cudaStreamSynchronize(ld->scatter);
  if (st) {
    for (int i = 0; i < CF_PAGED_STAGE_SLOTS; i++) {
      if (st->copied[i]) (void)cudaEventDestroy(st->copied[i]);
      if (st->freed[i]) (void)cudaEventDestroy(st->freed[i]);
    }
    if (st->staging) (void)cudaFree(st->staging);
    free(st);
  }
  for (int i = 0; i < CF_RING_MAX_SLOTS; i++)
    if (ld->slot_ev[i]) (void)cudaEventDestroy(ld->slot_ev[i]);
  /* the last flush may have run on a caller's stream (maybe destroyed by now): its event */
  if (ld->arena_free) (void)cudaEventSynchronize(ld->arena_free);
  if (ld->arena) (void)cudaFree(ld->arena);
  if (ld->arena_copied) (void)cudaEventDestroy(ld->arena_copied);
  if (ld->arena_free) (void)cudaEventDestroy(ld->arena_free);
  if (ld->d_table) (void)cudaFree(ld->d_table);
  if (ld->copy) (void)cudaStreamDestroy(ld->copy);
  if (ld->scatter) (void)cudaStreamDestroy(ld->scatter);
  (void)cudaGetLastError();
  memset(ld, 0, sizeof *ld);
}

cudaStream_t cf_gpu_loader_stream(const cf_gpu_loader_t *ld) {
  return ld->mode == CF_GPU_LOAD_ARENA ? ld->flush_stream : ld->scatter;
}

int cf_gpu_loader_set_table(cf_gpu_loader_t *ld, const int32_t *table, int n) {
  if (!ld->scatter || n < 0 || (n && !table))
    return cf_seterr(CF_EINVAL, "gpu loader: set_table needs an initialised loader and %d entries", n);
  if (ld->mode == CF_GPU_LOAD_ARENA && ld->n_runs) {
    int rc = cf_gpu_loader_flush(ld, NULL); /* pending runs use the old table */
    if (rc) return rc;
  }
  CF_CUDA_TRY(cudaStreamSynchronize(ld->copy));
  CF_CUDA_TRY(cudaStreamSynchronize(ld->scatter));
  if (ld->arena_free) CF_CUDA_TRY(cudaEventSynchronize(ld->arena_free));
  if (n > ld->table_cap) {
    if (ld->d_table) CF_CUDA_TRY(cudaFree(ld->d_table));
    ld->d_table = NULL;
    ld->table_cap = 0;
    CF_CUDA_TRY(cudaMalloc((void **)&ld->d_table, (size_t)n * sizeof(int32_t)));
    ld->table_cap = n;
  }
  /* not cudaMemcpy: from pageable memory it may return before the DMA lands, and the loader's
   * streams are non-blocking (no order with the legacy stream): complete it on `scatter` */
  if (n) {
    CF_CUDA_TRY(cudaMemcpyAsync(ld->d_table, table, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, ld->scatter));
    CF_CUDA_TRY(cudaStreamSynchronize(ld->scatter));
  }
  ld->n_table = n;
  return 0;
}

/* Layer `l` of `kv` as the paged kernel's single-base layout (cf_gpu_rows.h). */
static int cf__layer_paged(const cf_gpu_kv_t *kv, int l, cf_paged_layout_t *pl, cf_bf16_t **cache,
                           int *swap) {
  return cf_gpu_kv_layer_paged(kv, l, pl, (void **)cache, swap);
}

int cf_gpu_loader_flush(cf_gpu_loader_t *ld, cudaStream_t s) {
  if (ld->mode != CF_GPU_LOAD_ARENA) return 0;
  if (!ld->kv && ld->n_runs)
    return cf_seterr(CF_EINVAL, "gpu loader: flush without the kv view of the pending loads");
  if (!s) s = ld->scatter;
  ld->flush_stream = s;
  if (!ld->n_runs) return 0;
  CF_CUDA_TRY(cudaEventRecord(ld->arena_copied, ld->copy));
  CF_CUDA_TRY(cudaStreamWaitEvent(s, ld->arena_copied, 0));
  for (int i = 0; i < ld->n_runs; i++) {
    cf_paged_args_t a;
    memset(&a, 0, sizeof a);
    int swap = 0, rc = cf__layer_paged(ld->kv, ld->runs[i].layer, &a.layout, &a.cache, &swap);
    if (rc) return rc;
    const cf_bf16_t *k = ld->arena + ld->runs[i].off * ld->row;
    const cf_bf16_t *v = k + ld->arena_rows * ld->row;
    a.block_table = ld->d_table;
    a.n_table = ld->n_table;
    a.tok0 = ld->runs[i].tok0;
    a.T = ld->runs[i].T;
    a.k = (cf_bf16_t *)(swap ? v : k);
    a.v = (cf_bf16_t *)(swap ? k : v);
    a.row_stride = ld->row;
    if ((rc = cf_paged_scatter(&a, s))) return rc;
  }
  CF_CUDA_TRY(cudaEventRecord(ld->arena_free, s));
  /* later copies into the arena wait until these scatters have read it */
  CF_CUDA_TRY(cudaStreamWaitEvent(ld->copy, ld->arena_free, 0));
  ld->n_runs = 0;
  ld->arena_used = 0;
  return 0;
}

/* ARENA mode: copy the cell's K and V rows into the arena halves (copy engine) and extend or
 * start a pending scatter run. */
static int cf__arena_load(cf_gpu_loader_t *ld, int layer, int tok0, int n_tok, int64_t row,
                          const void *cell) {
  if (ld->row != row) {
    if (ld->n_runs) {
      int rc = cf_gpu_loader_flush(ld, NULL);
      if (rc) return rc;
    }
    ld->row = row;
    ld->arena_rows = 0;
  }
  if (!ld->arena_rows) ld->arena_rows = (int64_t)(ld->arena_bytes / (size_t)(2 * row * 2));
  if (n_tok > ld->arena_rows)
    return cf_seterr(CF_EINVAL, "gpu load: a cell of %d tokens does not fit the %lld-row arena", n_tok,
                     (long long)ld->arena_rows);
  if (ld->arena_used + n_tok > ld->arena_rows || ld->n_runs == CF_GPU_LOAD_MAX_RUNS) {
    int rc = cf_gpu_loader_flush(ld, NULL);
    if (rc) return rc;
  }
  const uint8_t *src = cell;
  size_t plane = (size_t)n_tok * (size_t)row * 2;
  cf_bf16_t *dk = ld->arena + ld->arena_used * row, *dv = dk + ld->arena_rows * row;
  CF_CUDA_TRY(cudaMemcpyAsync(dk, src, plane, cudaMemcpyHostToDevice, ld->copy));
  CF_CUDA_TRY(cudaMemcpyAsync(dv, src + plane, plane, cudaMemcpyHostToDevice, ld->copy));
  int n = ld->n_runs;
  if (n && ld->runs[n - 1].layer == layer && ld->runs[n - 1].tok0 + ld->runs[n - 1].T == tok0 &&
      ld->runs[n - 1].off + ld->runs[n - 1].T == ld->arena_used) {
    ld->runs[n - 1].T += n_tok;
  } else {
    ld->runs[n].layer = layer;
    ld->runs[n].tok0 = tok0;
    ld->runs[n].T = n_tok;
    ld->runs[n].off = ld->arena_used;
    ld->n_runs++;
  }
  ld->arena_used += n_tok;
  return 0;
}

int cf_gpu_load_cell(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, int layer, int tok0,
                     const void *cell, int n_tok) {
  if (!ld->scatter || !kv || !cell || n_tok <= 0 || tok0 < 0)
    return cf_seterr(CF_EINVAL, "gpu load: loader, kv, cell and n_tok > 0 required (n_tok %d, tok0 %d)",
                     n_tok, tok0);
  cf_paged_args_t a;
  memset(&a, 0, sizeof a);
  int swap = 0, rc = cf__layer_paged(kv, layer, &a.layout, &a.cache, &swap);
  if (rc) return rc;
  int64_t row = (int64_t)a.layout.n_kv_heads * a.layout.head_dim;
  const cf_bf16_t *k = cell, *v = k + (int64_t)n_tok * row;
  if (ld->mode == CF_GPU_LOAD_ZEROCOPY) {
    void *d = NULL;
    cudaError_t e = cudaHostGetDevicePointer(&d, (void *)cell, 0);
    if (e != cudaSuccess) {
      /* an interior pointer of a mapped allocation (a CPU-tier slot): ask for its attributes */
      (void)cudaGetLastError();
      struct cudaPointerAttributes pa;
      if (cudaPointerGetAttributes(&pa, cell) == cudaSuccess && pa.type == cudaMemoryTypeHost &&
          pa.devicePointer) {
        d = pa.devicePointer;
      } else {
        (void)cudaGetLastError();
        return cf_seterr(CF_EINVAL, "gpu load: zero-copy needs mapped pinned memory; cell %p: %s",
                         cell, cudaGetErrorString(e));
      }
    }
    k = d;
    v = k + (int64_t)n_tok * row;
  }
  a.block_table = ld->d_table;
  a.n_table = ld->n_table;
  a.tok0 = tok0;
  a.T = n_tok;
  a.k = (cf_bf16_t *)(swap ? v : k);
  a.v = (cf_bf16_t *)(swap ? k : v);
  a.row_stride = row;
  if (ld->mode == CF_GPU_LOAD_ARENA) {
    if (ld->kv != kv && ld->n_runs && (rc = cf_gpu_loader_flush(ld, NULL))) return rc;
    ld->kv = kv; /* the pending runs' destination, for the flush */
    rc = cf__arena_load(ld, layer, tok0, n_tok, row, cell);
  } else if (ld->mode == CF_GPU_LOAD_ZEROCOPY) {
    a.ctas = ld->zc_ctas;
    rc = cf_paged_scatter(&a, ld->scatter);
  } else {
    /* the slot counter carries across cells: consecutive cells pipeline */
    rc = cf_paged_load_staged_next(&a, (const cf_paged_stager_t *)ld->stager, &ld->stage_next);
  }
  if (rc) return rc;
  ld->cells++;
  ld->bytes += (uint64_t)(2 * n_tok * row * 2);
  return 0;
}

/* ring sink: ud is the loader (its kv field names the destination) */
static int cf__sink_deliver(void *ud, size_t i, const cf_ring_cell_t *c, int slot, const void *buf,
                            size_t bytes, uint32_t n_tokens) {
  cf_gpu_loader_t *ld = ud;
  const cf_kv_layout_t *L = &ld->kv->layout;
  size_t want = 2 * (size_t)n_tokens * L->n_kv_heads * L->head_dim * 2;
  if (bytes != want)
    return cf_seterr(CF_ESHAPE, "gpu load: cell %zu (layer %u) is %zu bytes; %u tokens of %d kv heads x %d "
                     "need %zu (2-byte KV)", i, c->layer, bytes, n_tokens, L->n_kv_heads, L->head_dim, want);
  int rc = cf_gpu_load_cell(ld, ld->kv, (int)c->layer, c->tok0, buf, (int)n_tokens);
  /* the staging slot is read by the H2D copies (STAGED, ARENA: the copy stream) or, for
   * ZEROCOPY, by the scatter kernel. Recorded on failure too: a load that failed part-way
   * may have enqueued copies out of this slot, and the ring reuses it after slot_done only. */
  cudaStream_t rd = ld->mode == CF_GPU_LOAD_ZEROCOPY ? ld->scatter : ld->copy;
  if (rc) {
    (void)cudaEventRecord(ld->slot_ev[slot], rd);
    (void)cudaGetLastError();
    return rc;
  }
  CF_CUDA_TRY(cudaEventRecord(ld->slot_ev[slot], rd));
  return 0;
}

static int cf__sink_slot_done(void *ud, int slot, int wait) {
  cf_gpu_loader_t *ld = ud;
  cudaError_t e = wait ? cudaEventSynchronize(ld->slot_ev[slot]) : cudaEventQuery(ld->slot_ev[slot]);
  if (e == cudaSuccess) return 1;
  if (e == cudaErrorNotReady) { (void)cudaGetLastError(); return 0; }
  (void)cudaGetLastError();
  return cf_seterr(CF_ECUDA, "gpu load: staging slot %d: %s", slot, cudaGetErrorString(e));
}

void cf_gpu_ring_sink(cf_gpu_loader_t *ld, const cf_gpu_kv_t *kv, cf_ring_sink_t *out) {
  memset(out, 0, sizeof *out);
  ld->kv = kv;
  out->deliver = cf__sink_deliver;
  out->slot_done = cf__sink_slot_done;
  out->ud = ld;
}

#endif
