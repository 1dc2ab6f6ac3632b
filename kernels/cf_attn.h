/* cf_attn — causal attention of a chunk of queries over a KV prefix, with GQA.
 *
 * Queries are tokens at absolute positions [t0, t0+Tq); keys/values are rows [0, t0+Tq) of
 * the layer's KV buffer (the prefix plus the chunk itself, already written). Query i attends
 * keys j <= t0 + i. Flash-style: Q·Kᵀ and P·V on the tensor cores (mma.sync m16n8k16 bf16,
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
} cf_attn_args_t;

/* Tensor-core path for head_dim 16, 32, 64, 128 (rows 16-byte aligned); any other even
 * head_dim <= 256 runs a slower scalar kernel. Returns 0, CF_EINVAL or CF_ECUDA. */
int cf_attn_prefix(const cf_attn_args_t *a, cudaStream_t s);

/* The tensor-core kernel with an explicit number of warps per block (4 or 8: 64 or 128 query
 * rows per block) for head_dim 128; for tests and tuning. Other cases: CF_EINVAL. */
int cf_attn_prefix_nw(const cf_attn_args_t *a, int nw, cudaStream_t s);

/* The scalar kernel alone (any head_dim <= 256): a second implementation for tests. */
int cf_attn_prefix_scalar(const cf_attn_args_t *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
