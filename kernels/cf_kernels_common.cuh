// cf_kernels_common — small device helpers shared by the kernel families (CUDA C++ only).
#ifndef CF_KERNELS_COMMON_CUH
#define CF_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float cf_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float cf_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result. `red` holds 32 floats.
__device__ __forceinline__ float cf_block_sum(float v, float *red) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = cf_warp_sum(v);
  __syncthreads();  // `red` may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return cf_warp_sum(v);
}

static inline unsigned cf_div_up(int64_t a, int64_t b) { return (unsigned)((a + b - 1) / b); }

// Grid size for a grid-stride loop over n items: enough blocks to fill the GPU, no more.
static inline unsigned cf_grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  if (g > 132 * 16) g = 132 * 16;
  return g < 1 ? 1u : (unsigned)g;
}

// ---- tensor-core kernel helpers (cf_attn.cu, cf_attn_wgmma.cu)

__device__ __forceinline__ uint32_t cf_smem_addr(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

// 16-byte async copy global -> shared (shared-window address); src_bytes 0 fills the 16 bytes
// with zeros.
__device__ __forceinline__ void cf_cp_async16_s(uint32_t saddr, const void *gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cf_cp_async16(void *smem, const void *gmem, int src_bytes) {
  cf_cp_async16_s(cf_smem_addr(smem), gmem, src_bytes);
}
__device__ __forceinline__ void cf_cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cf_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// 2^x on the SFU without exp2f's denormal handling (inputs are <= 0; -inf gives +0).
__device__ __forceinline__ float cf_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t cf_pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&v;
}

#endif
