// cf_attn_wgmma — causal GQA attention of a query chunk over a KV prefix on Hopper's warpgroup
// MMA (wgmma.mma_async), head_dim 128. Same contract as the mma.sync kernels in cf_attn.cu
// (kernels/cf_attn.h); selected with CF_ATTN_IMPL=wgmma or the CF_ATTN_WGMMA variant.
//
// UNVERIFIED ON HARDWARE: written and compiled (sm_90a) without a GPU. The layouts it relies on
// (swizzle, descriptors, fragments: kernels/cf_wgmma_layout.h) are checked on the CPU by
// tests/unit/test_wgmma_layout.c; correctness of the kernel itself is checked only by
// tests/kernels/kt_attn.cu on an H100. It is not the default until that has passed.
//
// Shape: one CTA = 128 query rows of one head = two warpgroups of 64 rows (256 threads). Q
// (128 x 128) stays in shared memory; K and V tiles of 128 keys are double-buffered with
// cp.async (all 256 threads load; tile j+1 streams in while tile j is computed). Per tile and
// warpgroup: S = Q·Kᵀ by 8 wgmma m64n128k16 (A and B from shared memory through descriptors,
// both K-major), online softmax in fp32 on the accumulator fragment, P converted to bf16 in
// registers in place (the accumulator layout is the A-operand layout), O += P·V by 8 wgmma
// m64n128k16 with A from registers and V from shared memory as an MN-major ("transposed") B.
// Causal: a CTA loads only key tiles some of its rows can see, a warpgroup skips tiles none of
// its rows can see and masks only tiles that cross its diagonal; the grid runs the query
// blocks with the most keys first. Not here yet (next steps, see NOTES): TMA loads with
// mbarriers and a producer warpgroup, two-tile ping-pong between the warpgroups, split-KV.
#include "kernels/cf_attn.h"

#include <math.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"
#include "kernels/cf_wgmma_layout.h"

#define CF_WG_BM 128                       // query rows per CTA (2 warpgroups x 64)
#define CF_WG_BN 128                       // keys per tile
#define CF_WG_HD 128                       // head_dim
#define CF_WG_TILE (128 * CF_WG_HD * 2)   // bytes of one swizzled 128 x 128 bf16 tile
// Q, then K/V for two stages; +1024 to align the tiles to the swizzle atom.
#define CF_WG_SMEM (5 * CF_WG_TILE + 1024)

__device__ __forceinline__ void cf_wg_cp16(uint32_t saddr, const void *g, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(g),
               "r"(src_bytes));
}
__device__ __forceinline__ void cf_wg_cp_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cf_wg_cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// cp.async writes through the generic proxy; wgmma reads shared memory through the async proxy.
__device__ __forceinline__ void cf_wg_fence_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void cf_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void cf_wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cf_wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of wgmma's registers across the wait.
__device__ __forceinline__ void cf_wg_fence_regs(float (&d)[64]) {
#pragma unroll
  for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ float cf_wg_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ uint32_t cf_wg_pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&v;
}

// D(64x128, fp32) (+)= A(64x16, K-major in shared memory) x B(16x128, K-major in shared memory).
// scale_d 0 overwrites D (the first reduction step), 1 accumulates.
__device__ __forceinline__ void cf_wg_mma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

// D(64x128, fp32) += A(64x16 bf16 in registers, the m64nNk16 A fragment) x B(16x128, MN-major
// in shared memory: imm-trans-b = 1).
__device__ __forceinline__ void cf_wg_mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// Async-copy rows [r0, r0+128) of a 128-wide bf16 matrix (row stride rs elements) into a
// swizzled tile at shared address `tile`; rows >= nrows are zero-filled. All 256 threads.
__device__ __forceinline__ void cf_wg_load_tile(uint32_t tile, const bf16 *base, int64_t rs, int r0,
                                                int nrows) {
#pragma unroll
  for (int c = threadIdx.x; c < 128 * 16; c += 256) {
    int row = c >> 4, col = (c & 15) * 8, r = r0 + row;
    bool ok = r < nrows;
    cf_wg_cp16(tile + cf_wg_tile_off(128, row, col), base + (int64_t)(ok ? r : 0) * rs + col,
               ok ? 16 : 0);
  }
}

__global__ void __launch_bounds__(256, 1) cf_attn_wgmma_kernel(const cf_attn_args_t a) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built for a target without wgmma: never launched (the launcher requires 9.0)
#else
  extern __shared__ __align__(1024) unsigned char cf_wg_smem[];
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(cf_wg_smem);
  const uint32_t sq = (sraw + 1023u) & ~1023u;
  const int tid = threadIdx.x, wg = tid >> 7, t = tid & 127;
  const int h = blockIdx.x, qb = gridDim.y - 1 - blockIdx.y;  // longest query blocks first
  const int q0 = qb * CF_WG_BM, g = h / (a.n_heads / a.n_kv_heads);
  const int Tk = a.t0 + a.Tq, qend = min(q0 + CF_WG_BM, a.Tq);
  const int ntiles = (a.t0 + qend + CF_WG_BN - 1) / CF_WG_BN;  // tiles some row of ours sees
  const bf16 *kb_ = (const bf16 *)a.k + g * CF_WG_HD, *vb_ = (const bf16 *)a.v + g * CF_WG_HD;

  cf_wg_load_tile(sq, (const bf16 *)a.q + (int64_t)q0 * a.q_row_stride + h * CF_WG_HD,
                  a.q_row_stride, 0, a.Tq - q0);
  cf_wg_load_tile(sq + CF_WG_TILE, kb_, a.kv_row_stride, 0, Tk);
  cf_wg_load_tile(sq + 2 * CF_WG_TILE, vb_, a.kv_row_stride, 0, Tk);
  cf_wg_cp_commit();

  // This thread's two rows (accumulator elements with (i & 2) == 0, then the rest) and their
  // absolute positions; the warpgroup's first and last positions.
  const int row0 = 64 * wg + (int)cf_wg_acc_row(t, 0), row1 = row0 + 8;
  const int pos0 = a.t0 + q0 + row0, pos1 = pos0 + 8;
  const int wg_first = a.t0 + q0 + 64 * wg, wg_last = wg_first + 63;
  const float sl2 = a.scale * 1.4426950408889634f;
  float o[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o[i] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  const uint32_t qwg = sq + wg * 64 * 128;  // this warpgroup's 64 rows of each Q column block

  for (int j = 0; j < ntiles; j++) {
    if (j + 1 < ntiles) {
      uint32_t kn = sq + (1 + 2 * ((j + 1) & 1)) * CF_WG_TILE;
      cf_wg_load_tile(kn, kb_, a.kv_row_stride, (j + 1) * CF_WG_BN, Tk);
      cf_wg_load_tile(kn + CF_WG_TILE, vb_, a.kv_row_stride, (j + 1) * CF_WG_BN, Tk);
      cf_wg_cp_commit();
      cf_wg_cp_wait<1>();
    } else {
      cf_wg_cp_wait<0>();
    }
    cf_wg_fence_proxy();
    __syncthreads();
    const int kb = j * CF_WG_BN;
    // A tile past every position of this warpgroup contributes nothing: skip its MMAs (the
    // barriers below are still reached by all threads).
    if (kb <= wg_last) {
      const uint32_t kt = sq + (1 + 2 * (j & 1)) * CF_WG_TILE, vt = kt + CF_WG_TILE;
      float s[64];
      cf_wg_fence();
#pragma unroll
      for (int ks = 0; ks < CF_WG_HD / 16; ks++)
        cf_wg_mma_ss(s, cf_wg_desc_kmajor(qwg, 128, ks), cf_wg_desc_kmajor(kt, 128, ks), ks > 0);
      cf_wg_commit();
      cf_wg_wait<0>();
      cf_wg_fence_regs(s);
      if (kb + CF_WG_BN - 1 > wg_first) {  // the tile crosses the diagonal: mask key > position
#pragma unroll
        for (int i = 0; i < 64; i++) {
          int key = kb + (int)cf_wg_acc_col(t, i);
          if (key > ((i & 2) ? pos1 : pos0)) s[i] = -INFINITY;
        }
      }
      // Online softmax (log2 domain), rows reduced over the 4 lanes that share them.
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int i = 0; i < 64; i += 4) {
        mx0 = fmaxf(mx0, fmaxf(s[i], s[i + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[i + 2], s[i + 3]));
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
      // A row with every key so far masked keeps m = -inf; base 0 makes its exp2 give 0.
      float b0 = mn0 == -INFINITY ? 0.f : mn0, b1 = mn1 == -INFINITY ? 0.f : mn1;
      float al0 = cf_wg_exp2(m0 - b0), al1 = cf_wg_exp2(m1 - b1);
      m0 = mn0;
      m1 = mn1;
      float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
      for (int i = 0; i < 64; i += 4) {
        s[i] = cf_wg_exp2(fmaf(s[i], sl2, -b0));
        s[i + 1] = cf_wg_exp2(fmaf(s[i + 1], sl2, -b0));
        s[i + 2] = cf_wg_exp2(fmaf(s[i + 2], sl2, -b1));
        s[i + 3] = cf_wg_exp2(fmaf(s[i + 3], sl2, -b1));
        rs0 += s[i] + s[i + 1];
        rs1 += s[i + 2] + s[i + 3];
      }
      l0 = l0 * al0 + rs0;
      l1 = l1 * al1 + rs1;
#pragma unroll
      for (int i = 0; i < 64; i += 4) {
        o[i] *= al0; o[i + 1] *= al0;
        o[i + 2] *= al1; o[i + 3] *= al1;
      }
      // P in bf16 as the A operand: register j of step ks packs S elements 8ks+2j, 8ks+2j+1.
      uint32_t p[CF_WG_BN / 16][4];
#pragma unroll
      for (int ks = 0; ks < CF_WG_BN / 16; ks++)
#pragma unroll
        for (int jj = 0; jj < 4; jj++)
          p[ks][jj] = cf_wg_pack(s[cf_wg_p_src(ks, jj, 0)], s[cf_wg_p_src(ks, jj, 1)]);
      cf_wg_fence();
#pragma unroll
      for (int ks = 0; ks < CF_WG_BN / 16; ks++)
        cf_wg_mma_rs(o, p[ks], cf_wg_desc_mnmajor(vt, 128, ks));
      cf_wg_commit();
      cf_wg_wait<0>();
      cf_wg_fence_regs(o);
    }
    __syncthreads();  // every warpgroup is done with this stage before it is refilled
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
  bf16 *ob = (bf16 *)a.out + h * CF_WG_HD;
  const int r0 = q0 + row0, r1 = q0 + row1;
#pragma unroll
  for (int i = 0; i < 64; i += 2) {
    int r = (i & 2) ? r1 : r0;
    float inv = (i & 2) ? inv1 : inv0;
    if (r < a.Tq)
      *(__nv_bfloat162 *)(ob + (int64_t)r * a.out_row_stride + cf_wg_acc_col(t, i)) =
          __floats2bfloat162_rn(o[i] * inv, o[i + 1] * inv);
  }
#endif
}

// launcher

extern "C" int cf_attn_wgmma_supported(void) {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return major == 9 && minor == 0;
}

// Called by cf_attn_prefix_variant after the common argument and alignment checks.
extern "C" int cf__attn_wgmma(const cf_attn_args_t *a, cudaStream_t s) {
  CF_REQUIRE(a->head_dim == CF_WG_HD, "cf_attn wgmma: head_dim %d (only %d)", a->head_dim, CF_WG_HD);
  CF_REQUIRE(cf_attn_wgmma_supported(), "cf_attn wgmma: needs a compute capability 9.0 GPU (sm_90a)");
  CF_REQUIRE(cf_div_up(a->Tq, CF_WG_BM) <= 65535, "cf_attn wgmma: Tq %d too large", a->Tq);
  // Raising the dynamic shared-memory limit is per function and idempotent; it allocates nothing.
  CF_CUDA_TRY(cudaFuncSetAttribute(cf_attn_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   CF_WG_SMEM));
  dim3 grid(a->n_heads, cf_div_up(a->Tq, CF_WG_BM));
  cf_attn_wgmma_kernel<<<grid, 256, CF_WG_SMEM, s>>>(*a);
  CF_LAUNCH_TRY();
  return 0;
}
