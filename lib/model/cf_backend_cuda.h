/* cf_backend_cuda — the CUDA backend of the model primitive (see cf_backend.h).
 *
 * cf_backend_cuda_create() (declared in cf_backend.h) uploads every weight once as bf16
 * (norm weights, biases and RoPE frequencies stay fp32: they are tiny) and creates one stream
 * and one cuBLAS handle. Its forward() takes the CPU backend's host fp32 arguments: it copies
 * the prefix KV and inputs in, computes on the GPU (bf16 storage, fp32 accumulation, fp32
 * residual stream) and copies the new KV rows and hidden states out.
 *
 * The executor, which keeps KV on the GPU, calls cf_backend_cuda_forward_dev() instead:
 * the same primitive on device buffers, with no host copies, on a stream it chooses.
 *
 * A backend runs one forward at a time (its workspace is shared); callers serialise.
 */
#ifndef CF_BACKEND_CUDA_H
#define CF_BACKEND_CUDA_H

#include <stdint.h>

#include "model/cf_backend.h"

#if defined(CF_HAVE_CUDA) && CF_HAVE_CUDA
#include <cuda_runtime_api.h>

typedef struct {
  int l0, l1;                 /* layer range, 0 <= l0 < l1 <= n_layers */
  int t0, t1;                 /* token range (absolute positions), 0 <= t0 < t1 */
  const int32_t *tokens;      /* device [t1-t0] token ids, already validated; when l0 == 0 */
  const float *hidden_in;     /* device fp32 [t1-t0][hidden]; when l0 > 0 */
  /* k[i], v[i] (i = l - l0): device bf16 buffers of layer l, row j (token j) at
   * k[i] + j*kv_row_stride holding [n_kv_heads][head_dim] post-RoPE; rows [0, t0) are read,
   * rows [t0, t1) written. The arrays themselves are host memory. */
  uint16_t *const *k;
  uint16_t *const *v;
  int64_t kv_row_stride;      /* elements, >= n_kv_heads*head_dim, a multiple of 8 for speed */
  float *hidden_out;          /* device fp32 [t1-t0][hidden] (input of layer l1) or NULL */
} cf_cuda_fwd_args_t;

/* Run the primitive on device buffers, enqueued on `stream` (NULL: the backend's own). Returns
 * once everything is enqueued (nothing is synchronised); errors: CF_EINVAL (argument named),
 * CF_ENOMEM (workspace), CF_ECUDA (file:line and CUDA's message). `be` must come from
 * cf_backend_cuda_create(). */
int cf_backend_cuda_forward_dev(cf_backend_t *be, const cf_cuda_fwd_args_t *a, cudaStream_t stream);

/* Tokens processed per internal step (bounds the workspace: ~ (6*hidden + 3*inter) * 2 bytes
 * per token). Larger chunks are computed in order, which gives the same result. The
 * environment variable CF_CUDA_MAX_STEP, read at create, can lower it (tests). */
#define CF_CUDA_MAX_STEP 8192

/* Which path the last mixture-of-experts pass of `be` took for its expert GEMMs: bit 0 set
 * when the [gate; up] GEMMs ran as one cuBLAS grouped GEMM (cublasGemmGroupedBatchedEx), bit 1
 * the same for the down GEMMs (bf16 in, fp32 out); a clear bit means per-expert cublasGemmEx
 * calls (cuBLAS < 12.5, grouped refused for those types, or CF_CUDA_MOE_GROUPED=0 in the
 * environment at create). -1: no MoE pass yet (or not a MoE model). For tests and benchmarks. */
int cf_backend_cuda_moe_grouped(const cf_backend_t *be);
#endif

#endif
