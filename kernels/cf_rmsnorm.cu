// cf_rmsnorm — fused residual add + RMSNorm, fp32 in, bf16 out.
#include "kernels/cf_rmsnorm.h"

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

// One block per row. Each thread touches the same columns in both passes, so the write-back
// of x in pass 1 is visible to the same thread in pass 2 without a barrier.
template <bool ADD>
__global__ void cf_rmsnorm_kernel(bf16 *y, float *x, const bf16 *add, const float *w, int dim,
                                  float eps) {
  __shared__ float red[32];
  int64_t off = (int64_t)blockIdx.x * dim;
  float *xr = x + off;
  float ss = 0.f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    float v = xr[c];
    if (ADD) {
      v += __bfloat162float(add[off + c]);
      xr[c] = v;
    }
    ss += v * v;
  }
  ss = cf_block_sum(ss, red);
  float inv = rsqrtf(ss / (float)dim + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x)
    y[off + c] = __float2bfloat16_rn(xr[c] * inv * w[c]);
}

// launchers

extern "C" int cf_rmsnorm(cf_bf16_t *y, float *x, const cf_bf16_t *add, const float *w, int rows,
                          int dim, float eps, cudaStream_t s) {
  CF_REQUIRE(rows >= 0 && dim > 0 && y && x && w && eps >= 0.f,
             "cf_rmsnorm: rows=%d dim=%d eps=%g (need dim > 0, y/x/w set)", rows, dim, eps);
  if (rows == 0) return 0;
  int threads = dim >= 1024 ? 512 : dim >= 256 ? 256 : 128;
  if (add)
    cf_rmsnorm_kernel<true><<<rows, threads, 0, s>>>((bf16 *)y, x, (const bf16 *)add, w, dim, eps);
  else
    cf_rmsnorm_kernel<false><<<rows, threads, 0, s>>>((bf16 *)y, x, nullptr, w, dim, eps);
  CF_LAUNCH_TRY();
  return 0;
}
