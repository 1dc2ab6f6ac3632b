/* cf_paged — KV rows between a contiguous [token][n_kv_heads][head_dim] bf16 buffer and an
 * inference engine's paged KV cache, addressed through a block table.
 *
 * The default layout is vLLM's per-layer `[2, num_blocks, block_size, n_kv_heads, head_dim]`
 * (K plane then V plane); any other one with head_dim contiguous is described by strides.
 *
 * The contiguous side may be a device pointer or a mapped pinned host pointer
 * (cudaHostAlloc(..., cudaHostAllocMapped) + cudaHostGetDevicePointer): then the scatter is the
 * zero-copy load path, the kernel reading host memory over PCIe straight into the scattered
 * blocks (measured on the H100: ~5x faster than one cudaMemcpyAsync per 32 KiB block). */
#ifndef CF_PAGED_H
#define CF_PAGED_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int num_blocks, block_size, n_kv_heads, head_dim;
  int64_t kv_stride;     /* elements from the K plane to the V plane */
  int64_t block_stride;  /* elements between consecutive blocks */
  int64_t token_stride;  /* elements between consecutive slots of one block */
  int64_t head_stride;   /* elements between heads of one slot (head_dim is contiguous) */
} cf_paged_layout_t;

/* Fill `l` with vLLM's default layout. */
void cf_paged_layout_vllm(cf_paged_layout_t *l, int num_blocks, int block_size, int n_kv_heads,
                          int head_dim);

/* Elements a cache of layout `l` spans (highest offset + 1). */
int64_t cf_paged_layout_span(const cf_paged_layout_t *l);

typedef struct {
  cf_paged_layout_t layout;
  cf_bf16_t *cache;            /* the layer's paged cache (device) */
  const int32_t *block_table;  /* device: block_table[p] = cache block of logical block p */
  int n_table;                 /* entries in block_table */
  int tok0, T;                 /* logical tokens [tok0, tok0+T) */
  cf_bf16_t *k, *v;            /* contiguous side: row t (token tok0+t) at k + t*row_stride */
  int64_t row_stride;          /* elements between rows (>= n_kv_heads*head_dim) */
  int ctas;                    /* thread blocks to launch; 0: enough to fill the GPU. A zero-copy
                                * load beside compute wants few (32-64): PCIe latency, not SMs,
                                * bounds it, and every CTA it holds is one the compute lacks. */
} cf_paged_args_t;

/* Contiguous k/v -> paged cache (k/v may be mapped host memory: the zero-copy load path).
 * Table entries outside [0, num_blocks) are skipped: those tokens are not written.
 * Returns 0, CF_EINVAL (shape, table too short for tok0+T) or CF_ECUDA. */
int cf_paged_scatter(const cf_paged_args_t *a, cudaStream_t s);
/* Paged cache -> contiguous k/v (the reverse; invalid table entries leave rows untouched). */
int cf_paged_gather(const cf_paged_args_t *a, cudaStream_t s);

/* The copy-engine load path, for loads that run beside compute. Host rows (pinned) go to a
 * device staging ring by cudaMemcpyAsync on the DMA engine (no SM time) on stream `copy`, and
 * from each slot into the paged blocks by the scatter kernel (short: HBM speed) on stream
 * `scatter`, events ordering slot reuse both ways, so the DMA never waits for a kernel that is
 * queued behind compute. Create `scatter` with the highest stream priority so its short kernels
 * get SMs as soon as compute blocks retire (measured: the zero-copy kernel instead holds SMs
 * that cuBLAS needs for the whole load). Everything the stager holds is the caller's. */
#define CF_PAGED_STAGE_SLOTS 4
typedef struct {
  cudaStream_t copy, scatter;
  cudaEvent_t copied[CF_PAGED_STAGE_SLOTS], freed[CF_PAGED_STAGE_SLOTS];  /* cudaEventDisableTiming */
  cf_bf16_t *staging;      /* device, 16-byte aligned */
  int64_t staging_elems;   /* split into CF_PAGED_STAGE_SLOTS slots of a K and a V part */
} cf_paged_stager_t;

/* a->k / a->v: pinned host rows. Enqueues the load; it is complete when `scatter` has drained
 * (record an event there). When a->v == a->k + T*row_stride (a store cell: V rows right after
 * the K rows) and the cell fits one slot, it moves in one DMA instead of two. Returns 0, CF_EINVAL (a slot cannot hold one row per plane) or
 * CF_ECUDA. */
int cf_paged_load_staged(const cf_paged_args_t *a, const cf_paged_stager_t *st);
/* The same, continuing the slot rotation at *next_slot (advanced past the slots used): callers
 * that load one cell per call (lib/gpu) then pipeline, instead of every call starting at slot 0
 * behind the previous call's scatter out of it. */
int cf_paged_load_staged_next(const cf_paged_args_t *a, const cf_paged_stager_t *st,
                              uint64_t *next_slot);

/* The DMA-only load path: one cudaMemcpyBatchAsync (CUDA >= 12.8) of every contiguous run
 * (one per block and plane in vLLM's layout) straight from pinned host rows a->k / a->v into
 * the paged blocks, hinted cudaMemcpyFlagPreferOverlapWithCompute: no SM time at all. The
 * block table is read on the host; `dst`, `src`, `size` are host scratch arrays of `cap`
 * entries (longer lists go in several batches). `s` must be a created stream, not the legacy
 * default one (cudaMemcpyBatchAsync refuses it). Returns 0, CF_EINVAL or CF_ECUDA. */
typedef struct {
  void **dst;
  const void **src;
  size_t *size;
  size_t cap;
} cf_paged_batch_t;
int cf_paged_load_batched(const cf_paged_args_t *a, const int32_t *block_table_host,
                          const cf_paged_batch_t *scratch, cudaStream_t s);

/* The baseline the kernel is measured against: the same scatter as one cudaMemcpyAsync per
 * contiguous run (one per block and plane in vLLM's layout), with the block table on the host.
 * k/v: host pinned or device. */
int cf_paged_scatter_memcpy(const cf_paged_args_t *a, const int32_t *block_table_host,
                            cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
