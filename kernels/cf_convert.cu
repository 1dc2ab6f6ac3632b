// cf_convert — bf16 <-> fp32 conversion, fp32 bias add, bf16 embedding gather.
#include "kernels/cf_convert.h"

#include <math.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

__global__ void cf_bf16_from_f32_kernel(bf16 *dst, const float *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ void cf_f32_from_bf16_kernel(float *dst, const bf16 *src, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

__global__ void cf_add_bias_f32_kernel(float *x, const float *b, int64_t n, int cols) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    x[i] += b[i % cols];
}

__global__ void cf_embed_bf16_kernel(float *x, const bf16 *table, const int32_t *tokens,
                                     int hidden, int vocab) {
  int t = blockIdx.x;
  int id = tokens[t];
  float *row = x + (int64_t)t * hidden;
  if (id < 0 || id >= vocab) {
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) row[c] = nanf("");
    return;
  }
  const bf16 *src = table + (int64_t)id * hidden;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) row[c] = __bfloat162float(src[c]);
}

// launchers

extern "C" int cf_bf16_from_f32(cf_bf16_t *dst, const float *src, int64_t n, cudaStream_t s) {
  CF_REQUIRE(n >= 0 && (n == 0 || (dst && src)), "cf_bf16_from_f32: n=%lld dst=%p src=%p",
             (long long)n, (void *)dst, (const void *)src);
  if (n == 0) return 0;
  cf_bf16_from_f32_kernel<<<cf_grid_for(n, 256), 256, 0, s>>>((bf16 *)dst, src, n);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_f32_from_bf16(float *dst, const cf_bf16_t *src, int64_t n, cudaStream_t s) {
  CF_REQUIRE(n >= 0 && (n == 0 || (dst && src)), "cf_f32_from_bf16: n=%lld dst=%p src=%p",
             (long long)n, (void *)dst, (const void *)src);
  if (n == 0) return 0;
  cf_f32_from_bf16_kernel<<<cf_grid_for(n, 256), 256, 0, s>>>(dst, (const bf16 *)src, n);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_add_bias_f32(float *x, const float *b, int rows, int cols, cudaStream_t s) {
  CF_REQUIRE(rows >= 0 && cols > 0 && x && b, "cf_add_bias_f32: rows=%d cols=%d", rows, cols);
  int64_t n = (int64_t)rows * cols;
  if (n == 0) return 0;
  cf_add_bias_f32_kernel<<<cf_grid_for(n, 256), 256, 0, s>>>(x, b, n, cols);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_embed_bf16(float *x, const cf_bf16_t *table, const int32_t *tokens, int T,
                             int hidden, int vocab, cudaStream_t s) {
  CF_REQUIRE(T >= 0 && hidden > 0 && vocab > 0 && x && table && tokens,
             "cf_embed_bf16: T=%d hidden=%d vocab=%d", T, hidden, vocab);
  if (T == 0) return 0;
  cf_embed_bf16_kernel<<<T, 256, 0, s>>>(x, (const bf16 *)table, tokens, hidden, vocab);
  CF_LAUNCH_TRY();
  return 0;
}
