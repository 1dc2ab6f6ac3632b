// cf_swiglu — out = silu(gate) * up, bf16 in and out, fp32 math.
#include "kernels/cf_swiglu.h"

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

__device__ __forceinline__ float cf_silu(float g) { return g / (1.f + __expf(-g)); }

// Vector path: 8 bf16 (16 bytes) per thread per step; needs I % 8 == 0 and 16-byte alignment.
__global__ void cf_swiglu_v8_kernel(bf16 *out, const bf16 *gu, const float *bg, const float *bu,
                                    int T, int I) {
  int64_t per_row = I / 8, n = (int64_t)T * per_row;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / per_row;
    int j = (int)(i - t * per_row) * 8;
    uint4 gv = *(const uint4 *)(gu + t * 2 * I + j);
    uint4 uv = *(const uint4 *)(gu + t * 2 * I + I + j);
    const bf16 *g8 = (const bf16 *)&gv, *u8 = (const bf16 *)&uv;
    uint4 ov;
    bf16 *o8 = (bf16 *)&ov;
#pragma unroll
    for (int e = 0; e < 8; e++) {
      float g = __bfloat162float(g8[e]) + (bg ? bg[j + e] : 0.f);
      float u = __bfloat162float(u8[e]) + (bu ? bu[j + e] : 0.f);
      o8[e] = __float2bfloat16_rn(cf_silu(g) * u);
    }
    *(uint4 *)(out + t * I + j) = ov;
  }
}

__global__ void cf_swiglu_kernel(bf16 *out, const bf16 *gu, const float *bg, const float *bu,
                                 int T, int I) {
  int64_t n = (int64_t)T * I;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / I;
    int j = (int)(i - t * I);
    float g = __bfloat162float(gu[t * 2 * I + j]) + (bg ? bg[j] : 0.f);
    float u = __bfloat162float(gu[t * 2 * I + I + j]) + (bu ? bu[j] : 0.f);
    out[i] = __float2bfloat16_rn(cf_silu(g) * u);
  }
}

// launchers

extern "C" int cf_swiglu(cf_bf16_t *out, const cf_bf16_t *gu, const float *b_gate,
                         const float *b_up, int T, int I, cudaStream_t s) {
  CF_REQUIRE(T >= 0 && I > 0 && out && gu, "cf_swiglu: T=%d I=%d", T, I);
  if (T == 0) return 0;
  bool vec = I % 8 == 0 && ((uintptr_t)out % 16) == 0 && ((uintptr_t)gu % 16) == 0;
  if (vec)
    cf_swiglu_v8_kernel<<<cf_grid_for((int64_t)T * I / 8, 256), 256, 0, s>>>(
        (bf16 *)out, (const bf16 *)gu, b_gate, b_up, T, I);
  else
    cf_swiglu_kernel<<<cf_grid_for((int64_t)T * I, 256), 256, 0, s>>>(
        (bf16 *)out, (const bf16 *)gu, b_gate, b_up, T, I);
  CF_LAUNCH_TRY();
  return 0;
}
