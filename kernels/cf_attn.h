/* cf_attn — causal attention of a chunk of queries over a KV prefix, with GQA.
 *
 * Queries are tokens at absolute positions [t0, t0+Tq); keys/values are rows [0, t0+Tq) of
 * the layer's KV buffer (the prefix plus the chunk itself, already written). Query i attends
 * keys j <= t0 + i (and j > t0 + i - window with a sliding window). Flash-style: Q·Kᵀ and P·V on the tensor cores (mma.sync m16n8k16 bf16,
 * fp32 accumulate), K/V tiles streamed through shared memory with cp.async double buffering,
 * online softmax in fp32; no Tq x Tk matrix exists in memory. */
#ifndef CF_ATTN_H
#define CF_ATTN_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int Tq, t0;                 /* queries, absolute position of the first */
  int n_heads, n_kv_heads, head_dim;  /* n_heads % n_kv_heads == 0 */
  float scale;                /* softmax scale, usually 1/sqrt(head_dim) */
  const cf_bf16_t *q;  int64_t q_row_stride;   /* q + i*q_row_stride + h*head_dim */
  const cf_bf16_t *k, *v; int64_t kv_row_stride;  /* k + j*kv_row_stride + g*head_dim, j < t0+Tq */
  cf_bf16_t *out;      int64_t out_row_stride; /* same shape as q */
  /* Optional fp32 workspace (NULL: none). With one, a short chunk over a long prefix - too few
   * query blocks to fill the GPU - splits the key range across blocks (split-KV) and combines
   * the partials; it needs Tq * n_heads * (head_dim + 2) floats per split. */
  float *ws; int64_t ws_floats;
  /* Sliding window (0: none): query i sees only keys j with t0 + i - window < j <= t0 + i.
   * Key tiles before a query block's first window are never loaded; the others are masked per
   * row. The KV rows outside the window must still be valid memory only where loaded. */
  int window;
} cf_attn_args_t;

#define CF_ATTN_MAX_SPLITS 8
/* Workspace floats for any call with up to `rows` = Tq * n_heads query rows at full splitting. */
#define CF_ATTN_WS_FLOATS(rows, head_dim) ((int64_t)(rows) * ((head_dim) + 2) * CF_ATTN_MAX_SPLITS)

/* Tensor-core path for head_dim 16, 32, 64, 128 (rows 16-byte aligned); any other even
 * head_dim <= 256 runs a slower scalar kernel. Returns 0, CF_EINVAL or CF_ECUDA. head_dim
 * 64/128 take the 32-rows-per-warp kernel, 16/32 the 16-rows one; both split the key range
 * (with a->ws) when there are too few query blocks to fill the GPU. */
int cf_attn_prefix(const cf_attn_args_t *a, cudaStream_t s);

/* Kernel variants, for tests and tuning (cf_attn_prefix picks one per call):
 *   CF_ATTN_SCALAR  any even head_dim <= 256, no alignment needs, slow
 *   CF_ATTN_MMA16   tensor cores, 16 query rows per warp, 64 per block: head_dim 16/32/64/128
 *   CF_ATTN_MMA16_SPLIT  the same, splitting the key range when the grid is small and a->ws is set
 *   CF_ATTN_MMA32   tensor cores, 32 rows per warp (Q in shared memory), 128 per block: 64/128
 *   CF_ATTN_MMA32_BC32  the same with 32-key tiles (fewer registers): head_dim 128
 *   CF_ATTN_MMA32_SPLIT  MMA32, splitting the key range when the grid is small and a->ws is set
 *   CF_ATTN_WGMMA   Hopper warpgroup MMA (kernels/cf_attn_wgmma.cu, built for sm_90a), 128 query
 *                   rows per block, the softmax of key tile j overlapping the P·V MMAs of tile
 *                   j-1, splitting the key range (with a->ws) when the grid is under one wave:
 *                   head_dim 128 on a compute capability 9.0 GPU only.
 *   CF_ATTN_WGMMA_SIMPLE  the same kernel without that overlap (S, softmax, P·V in turn): the
 *                   simpler schedule, to tell a layout bug from a pipelining bug.
 *   CF_ATTN_WGMMA_TMA  CF_ATTN_WGMMA with K/V tiles loaded by TMA (tensor maps encoded through
 *                   cudaGetDriverEntryPointByVersion) completing on mbarriers, instead of
 *                   cp.async from every thread.
 *                   All three are UNVERIFIED until tests/kernels/kt_attn has passed on an H100.
 * cf_attn_prefix_variant() returns CF_EINVAL for a variant that lacks the head_dim (or GPU). */
enum { CF_ATTN_AUTO = 0, CF_ATTN_SCALAR = 1, CF_ATTN_MMA16 = 2, CF_ATTN_MMA32 = 3, CF_ATTN_MMA32_BC32 = 4,
       CF_ATTN_MMA16_SPLIT = 5, CF_ATTN_MMA32_SPLIT = 6, CF_ATTN_WGMMA = 7,
       CF_ATTN_WGMMA_SIMPLE = 8, CF_ATTN_WGMMA_TMA = 9 };
int cf_attn_prefix_variant(const cf_attn_args_t *a, int variant, cudaStream_t s);
/* Make cf_attn_prefix always use `variant` (CF_ATTN_AUTO: choose again). Process-wide; for
 * benchmarks comparing variants inside the whole layer. */
void cf_attn_force_variant(int variant);

/* Which kernel family cf_attn_prefix uses for head_dim 128 (process-wide), from the
 * environment variable CF_ATTN_IMPL, read at the first call, or set here:
 *   "mma"    the mma.sync kernels (verified on the H100; the default)
 *   "wgmma"  the wgmma kernel where it applies (head_dim 128, aligned, compute capability 9.0),
 *            the mma.sync kernels otherwise
 *   "auto"   currently the same as "mma": it becomes "wgmma where faster" once the wgmma kernel
 *            has passed kt_attn on an H100 and measured faster there.
 * cf_attn_set_impl returns 0, or CF_EINVAL (naming the value) for any other string; NULL or ""
 * means "mma". With an invalid CF_ATTN_IMPL, cf_attn_prefix fails with that error. */
enum { CF_ATTN_IMPL_MMA = 0, CF_ATTN_IMPL_WGMMA = 1, CF_ATTN_IMPL_AUTO = 2 };
int cf_attn_set_impl(const char *name);
/* The implementation in effect (CF_ATTN_IMPL_*), reading CF_ATTN_IMPL first if not yet done;
 * negative (CF_EINVAL) if the environment holds an invalid value. */
int cf_attn_impl(void);
/* 1 if the wgmma kernel can run on the current device (compute capability 9.0), else 0. */
int cf_attn_wgmma_supported(void);
/* Test probe of the wgmma layouts alone (one warpgroup, one launch on stream s): S = A·Bᵀ and
 * O = P·V for row-major bf16 A, P (64 x 128) and B, V (128 x 128), fp32 S, O (64 x 128) out,
 * through the same swizzle, descriptors and register fragments as the attention kernel.
 * Returns 0, CF_EINVAL (NULL pointer, no compute capability 9.0 GPU) or CF_ECUDA. */
int cf_wgmma_probe(const cf_bf16_t *A, const cf_bf16_t *B, const cf_bf16_t *P,
                   const cf_bf16_t *V, float *S, float *O, cudaStream_t s);

/* The scalar kernel alone (any head_dim <= 256): a second implementation for tests. */
int cf_attn_prefix_scalar(const cf_attn_args_t *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
