// cf_attn — flash-style causal GQA attention of a query chunk over a KV prefix.
#include "kernels/cf_attn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

#define CF_ATTN_BC 64  // keys per tile

__device__ __forceinline__ void cf_ldsm_x4(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(cf_smem_addr(p)));
}
__device__ __forceinline__ void cf_ldsm_x4_t(uint32_t r[4], const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(cf_smem_addr(p)));
}

// D = A(16x16 bf16, row) * B(16x8 bf16, col) + D, fp32.
__device__ __forceinline__ void cf_mma16816(float d[4], const uint32_t a[4], uint32_t b0,
                                            uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---- per-m-tile steps shared by both tensor-core kernels (one warp, 16 query rows: this
// thread holds rows lane/4 (accumulator elements 0,1) and lane/4 + 8 (elements 2,3)).

// Async-copy K/V tile `tile` (keys [tile*BC, tile*BC + BC), zero rows past Tk) into buffer
// `buf` of Ks/Vs ([2][BC][HD+8] each), one commit group. All NT threads of the block take part.
template <int HD, int BC, int NT>
__device__ __forceinline__ void cf_attn_load_kv(bf16 *Ks, bf16 *Vs, const bf16 *kbase,
                                                const bf16 *vbase, int64_t kv_row_stride, int Tk,
                                                int tile, int buf) {
  constexpr int LDS = HD + 8, CHUNKS = BC * HD / 8;
  int kb = tile * BC;
  for (int c = threadIdx.x; c < CHUNKS; c += NT) {
    int row = c / (HD / 8), col = (c % (HD / 8)) * 8;
    int key = kb + row;
    int ok = key < Tk ? 16 : 0;
    int64_t off = (int64_t)(key < Tk ? key : 0) * kv_row_stride + col;
    cf_cp_async16(Ks + (buf * BC + row) * LDS + col, kbase + off, ok);
    cf_cp_async16(Vs + (buf * BC + row) * LDS + col, vbase + off, ok);
  }
  cf_cp_async_commit();
}

// Causal mask of the S accumulators of a key tile starting at kb: key > row position -> -inf.
template <int NT>
__device__ __forceinline__ void cf_attn_mask(float (&s)[NT][4], int kb, int lane, int p0, int p1) {
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    int key = kb + nt * 8 + (lane & 3) * 2;
    if (key > p0) s[nt][0] = -INFINITY;
    if (key + 1 > p0) s[nt][1] = -INFINITY;
    if (key > p1) s[nt][2] = -INFINITY;
    if (key + 1 > p1) s[nt][3] = -INFINITY;
  }
}

// Sliding-window mask: key < lo (the row's first visible key) -> -inf.
template <int NT>
__device__ __forceinline__ void cf_attn_mask_lo(float (&s)[NT][4], int kb, int lane, int lo0,
                                                int lo1) {
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    int key = kb + nt * 8 + (lane & 3) * 2;
    if (key < lo0) s[nt][0] = -INFINITY;
    if (key + 1 < lo0) s[nt][1] = -INFINITY;
    if (key < lo1) s[nt][2] = -INFINITY;
    if (key + 1 < lo1) s[nt][3] = -INFINITY;
  }
}

// First key tile (of BC keys) some row of a block whose first query row is q0 sees: 0, or the
// tile holding position t0 + q0 - window + 1 under a sliding window.
__device__ __forceinline__ int cf_attn_first_tile(const cf_attn_args_t &a, int q0, int BC) {
  int k = a.window > 0 ? a.t0 + q0 - a.window + 1 : 0;
  return k > 0 ? k / BC : 0;
}

// Online softmax over one key tile: s becomes P = 2^(s*sl2 - m) (m the running row max in the
// log2 domain, reduced over the lane quad), l the running row sums (per thread: its columns),
// and O is rescaled by 2^(m_old - m_new).
template <int NT, int ND>
__device__ __forceinline__ void cf_attn_softmax(float (&s)[NT][4], float (&o)[ND][4], float &m0,
                                                float &m1, float &l0, float &l1, float sl2) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
    mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
  // A row with every key so far masked keeps m = -inf; use 0 as its base so exp2 gives 0.
  float b0 = mn0 == -INFINITY ? 0.f : mn0, b1 = mn1 == -INFINITY ? 0.f : mn1;
  float al0 = cf_exp2(m0 - b0), al1 = cf_exp2(m1 - b1);
  m0 = mn0;
  m1 = mn1;
  float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    s[nt][0] = cf_exp2(fmaf(s[nt][0], sl2, -b0));
    s[nt][1] = cf_exp2(fmaf(s[nt][1], sl2, -b0));
    s[nt][2] = cf_exp2(fmaf(s[nt][2], sl2, -b1));
    s[nt][3] = cf_exp2(fmaf(s[nt][3], sl2, -b1));
    rs0 += s[nt][0] + s[nt][1];
    rs1 += s[nt][2] + s[nt][3];
  }
  l0 = l0 * al0 + rs0;
  l1 = l1 * al1 + rs1;
#pragma unroll
  for (int i = 0; i < ND; i++) {
    o[i][0] *= al0;
    o[i][1] *= al0;
    o[i][2] *= al1;
    o[i][3] *= al1;
  }
}

// P of keys [16kk, 16kk+16) as the bf16 A operand: the m16n8 C layout of two adjacent n-tiles
// is the m16k16 A layout.
template <int NT>
__device__ __forceinline__ void cf_attn_pack_p(uint32_t pa[4], const float (&s)[NT][4], int kk) {
  pa[0] = cf_pack_bf16(s[2 * kk][0], s[2 * kk][1]);
  pa[1] = cf_pack_bf16(s[2 * kk][2], s[2 * kk][3]);
  pa[2] = cf_pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
  pa[3] = cf_pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
}

// Finish rows r0 and r0 + 8 of head h: full row sums over the quad, then either the split's
// unnormalised fp32 partial (with m and l) into a.ws, or the normalised bf16 output.
template <int HD>
__device__ __forceinline__ void cf_attn_store(const cf_attn_args_t &a, const float (&o)[HD / 8][4],
                                              float m0, float m1, float l0, float l1, int r0,
                                              int h, int lane) {
  const int r1 = r0 + 8;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  if (gridDim.z > 1) {
    int64_t rows = (int64_t)a.Tq * a.n_heads;
    float *wo = a.ws + (int64_t)blockIdx.z * rows * HD, *wml = a.ws + gridDim.z * rows * HD;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
      int r = hf ? r1 : r0;
      if (r >= a.Tq) continue;
      int64_t row = (int64_t)r * a.n_heads + h;
      float *op = wo + row * HD;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt++) {
        int c = dt * 8 + (lane & 3) * 2;
        *(float2 *)(op + c) = make_float2(o[dt][2 * hf], o[dt][2 * hf + 1]);
      }
      if ((lane & 3) == 0) {
        float *ml = wml + ((int64_t)blockIdx.z * rows + row) * 2;
        ml[0] = hf ? m1 : m0;
        ml[1] = hf ? l1 : l0;
      }
    }
    return;
  }
  float il0 = l0 > 0.f ? 1.f / l0 : 0.f, il1 = l1 > 0.f ? 1.f / l1 : 0.f;
  bf16 *op0 = (bf16 *)a.out + (int64_t)r0 * a.out_row_stride + h * HD;
  bf16 *op1 = (bf16 *)a.out + (int64_t)r1 * a.out_row_stride + h * HD;
#pragma unroll
  for (int dt = 0; dt < HD / 8; dt++) {
    int c = dt * 8 + (lane & 3) * 2;
    if (r0 < a.Tq) *(uint32_t *)(op0 + c) = cf_pack_bf16(o[dt][0] * il0, o[dt][1] * il0);
    if (r1 < a.Tq) *(uint32_t *)(op1 + c) = cf_pack_bf16(o[dt][2] * il1, o[dt][3] * il1);
  }
}

// Block: NW warps, each owns 16 query rows of one head (BR = 16*NW rows per block). Per key
// tile: S = Q Kᵀ (16 x 64 per warp) in registers, causal mask, online softmax, O += P V with P
// reused from the S accumulators as the A operand (the m16n8 C layout of two adjacent n-tiles
// is the m16k16 A layout). Grid: x = query blocks, latest (heaviest) first; y = heads.
template <int HD, int NW>
__global__ void __launch_bounds__(NW * 32) cf_attn_mma_kernel(cf_attn_args_t a) {
  constexpr int BR = 16 * NW, BC = CF_ATTN_BC, LDS = HD + 8;  // +8: conflict-free ldmatrix
  extern __shared__ __align__(16) unsigned char cf_attn_smem[];
  bf16 *Ks = (bf16 *)cf_attn_smem;  // [2][BC][LDS]
  bf16 *Vs = Ks + 2 * BC * LDS;     // [2][BC][LDS]

  const int qblk = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;
  const int g = h / (a.n_heads / a.n_kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int Tk = a.t0 + a.Tq;
  const int q0 = qblk * BR;
  const int r0 = q0 + warp * 16 + (lane >> 2), r1 = r0 + 8;  // this thread's two query rows

  // Q fragments for all head_dim k-steps, loaded once (rows past Tq are zeros).
  uint32_t qf[HD / 16][4];
  {
    const bf16 *qp0 = (const bf16 *)a.q + (int64_t)r0 * a.q_row_stride + h * HD;
    const bf16 *qp1 = (const bf16 *)a.q + (int64_t)r1 * a.q_row_stride + h * HD;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
      int c = kk * 16 + (lane & 3) * 2;
      qf[kk][0] = r0 < a.Tq ? *(const uint32_t *)(qp0 + c) : 0u;
      qf[kk][1] = r1 < a.Tq ? *(const uint32_t *)(qp1 + c) : 0u;
      qf[kk][2] = r0 < a.Tq ? *(const uint32_t *)(qp0 + c + 8) : 0u;
      qf[kk][3] = r1 < a.Tq ? *(const uint32_t *)(qp1 + c + 8) : 0u;
    }
  }
  // Absolute positions; padding rows are clamped to a real one (their output is dropped).
  const int p0 = a.t0 + min(r0, a.Tq - 1), p1 = a.t0 + min(r1, a.Tq - 1);
  const int kv_end = min(Tk, a.t0 + q0 + BR);  // keys any row of this block can see
  const int ntiles = (kv_end + BC - 1) / BC;
  const float sl2 = a.scale * 1.4426950408889634f;  // exp(x) = exp2(x * log2 e)

  float o[HD / 8][4];
#pragma unroll
  for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  const bf16 *kbase = (const bf16 *)a.k + g * HD, *vbase = (const bf16 *)a.v + g * HD;
  auto load_tile = [&](int tile, int buf) {
    cf_attn_load_kv<HD, BC, NW * 32>(Ks, Vs, kbase, vbase, a.kv_row_stride, Tk, tile, buf);
  };

  // Split-KV (gridDim.z > 1): this block takes an equal share of the key tiles; the partial
  // (unnormalised O, running max, sum) goes to the workspace for cf_attn_combine_kernel.
  // Under a sliding window the tiles before this block's first window are skipped.
  const int jfirst = min(ntiles, cf_attn_first_tile(a, q0, BC));
  const int per = (ntiles - jfirst + gridDim.z - 1) / gridDim.z;
  const int jbeg = min(ntiles, jfirst + (int)blockIdx.z * per), jend = min(ntiles, jbeg + per);
  if (jbeg < jend) load_tile(jbeg, jbeg & 1);
  for (int j = jbeg; j < jend; j++) {
    const int buf = j & 1;
    if (j + 1 < jend) {
      load_tile(j + 1, buf ^ 1);
      cf_cp_async_wait<1>();
    } else {
      cf_cp_async_wait<0>();
    }
    __syncthreads();
    const bf16 *Kt = Ks + buf * BC * LDS, *Vt = Vs + buf * BC * LDS;
    const int kb = j * BC;

    // S = Q Kᵀ
    float s[BC / 8][4];
#pragma unroll
    for (int i = 0; i < BC / 8; i++) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
#pragma unroll
      for (int np = 0; np < BC / 16; np++) {
        uint32_t b[4];
        int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
        int dim = kk * 16 + ((lane >> 3) & 1) * 8;
        cf_ldsm_x4(b, Kt + key * LDS + dim);
        cf_mma16816(s[2 * np], qf[kk], b[0], b[1]);
        cf_mma16816(s[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }
    // Causal mask, only where the tile reaches past the earliest row of this warp.
    if (kb + BC - 1 > a.t0 + q0 + warp * 16) cf_attn_mask(s, kb, lane, p0, p1);
    // Window: only where the tile starts before the latest row's first visible key.
    if (a.window > 0 && kb < a.t0 + q0 + warp * 16 + 16 - a.window)
      cf_attn_mask_lo(s, kb, lane, p0 - a.window + 1, p1 - a.window + 1);
    cf_attn_softmax(s, o, m0, m1, l0, l1, sl2);
    // O += P V
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
      uint32_t pa[4];
      cf_attn_pack_p(pa, s, kk);
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        uint32_t b[4];
        int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        int dim = dp * 16 + (lane >> 4) * 8;
        cf_ldsm_x4_t(b, Vt + key * LDS + dim);
        cf_mma16816(o[2 * dp], pa, b[0], b[1]);
        cf_mma16816(o[2 * dp + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // this buffer is refilled by the next iteration's prefetch
  }

  cf_attn_store<HD>(a, o, m0, m1, l0, l1, r0, h, lane);
}

// Two m-tiles per warp (32 query rows), Q staged in shared memory: each K/V fragment read from
// shared memory feeds twice the tensor-core work of cf_attn_mma_kernel, which is what bounds
// that kernel at long context. BR = 32*NW rows per block. Same math and fragment layouts.
template <int HD, int NW, int BC>
__global__ void __launch_bounds__(NW * 32) cf_attn_mma2_kernel(cf_attn_args_t a) {
  constexpr int MT = 2, BR = 16 * MT * NW, LDS = HD + 8;
  constexpr int QCHUNKS = BR * HD / 8;
  extern __shared__ __align__(16) unsigned char cf_attn_smem[];
  bf16 *Qs = (bf16 *)cf_attn_smem;  // [BR][LDS]
  bf16 *Ks = Qs + BR * LDS;         // [2][BC][LDS]
  bf16 *Vs = Ks + 2 * BC * LDS;     // [2][BC][LDS]

  const int qblk = gridDim.x - 1 - blockIdx.x, h = blockIdx.y;
  const int g = h / (a.n_heads / a.n_kv_heads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int Tk = a.t0 + a.Tq;
  const int q0 = qblk * BR, wrow = warp * 16 * MT;  // first row of this warp within the block
  const int kv_end = min(Tk, a.t0 + q0 + BR);
  const int ntiles = (kv_end + BC - 1) / BC;
  const float sl2 = a.scale * 1.4426950408889634f;

  int pos[MT][2];  // absolute positions of this thread's rows (padding rows clamped)
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
      pos[mt][hf] = a.t0 + min(q0 + wrow + mt * 16 + (lane >> 2) + hf * 8, a.Tq - 1);

  float o[MT][HD / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }

  // Q tile (rows past Tq zero-filled), committed with K/V tile 0.
  {
    const bf16 *qbase = (const bf16 *)a.q + h * HD;
    for (int c = threadIdx.x; c < QCHUNKS; c += NW * 32) {
      int row = c / (HD / 8), col = (c % (HD / 8)) * 8, r = q0 + row;
      cf_cp_async16(Qs + row * LDS + col,
                    qbase + (int64_t)(r < a.Tq ? r : 0) * a.q_row_stride + col, r < a.Tq ? 16 : 0);
    }
  }
  const bf16 *kbase = (const bf16 *)a.k + g * HD, *vbase = (const bf16 *)a.v + g * HD;
  auto load_tile = [&](int tile, int buf) {
    cf_attn_load_kv<HD, BC, NW * 32>(Ks, Vs, kbase, vbase, a.kv_row_stride, Tk, tile, buf);
  };

  const int jfirst = min(ntiles, cf_attn_first_tile(a, q0, BC));  // as cf_attn_mma_kernel
  const int per = (ntiles - jfirst + gridDim.z - 1) / gridDim.z;  // split-KV share
  const int jbeg = min(ntiles, jfirst + (int)blockIdx.z * per), jend = min(ntiles, jbeg + per);
  if (jbeg < jend) load_tile(jbeg, jbeg & 1);
  else cf_cp_async_commit();  // the Q tile's group
  cf_cp_async_wait<0>();      // Q resident before the first ldmatrix (also when no K/V tile)
  __syncthreads();
  for (int j = jbeg; j < jend; j++) {
    const int buf = j & 1;
    if (j + 1 < jend) {
      load_tile(j + 1, buf ^ 1);
      cf_cp_async_wait<1>();
    } else {
      cf_cp_async_wait<0>();
    }
    __syncthreads();
    const bf16 *Kt = Ks + buf * BC * LDS, *Vt = Vs + buf * BC * LDS;
    const int kb = j * BC;

    float s[MT][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int i = 0; i < BC / 8; i++) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HD / 16; kk++) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        int row = wrow + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        cf_ldsm_x4(qa[mt], Qs + row * LDS + kk * 16 + (lane >> 4) * 8);
      }
#pragma unroll
      for (int np = 0; np < BC / 16; np++) {
        uint32_t b[4];
        int key = np * 16 + (lane & 7) + (lane >> 4) * 8;
        int dim = kk * 16 + ((lane >> 3) & 1) * 8;
        cf_ldsm_x4(b, Kt + key * LDS + dim);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          cf_mma16816(s[mt][2 * np], qa[mt], b[0], b[1]);
          cf_mma16816(s[mt][2 * np + 1], qa[mt], b[2], b[3]);
        }
      }
    }
    if (kb + BC - 1 > a.t0 + q0 + wrow) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++) cf_attn_mask(s[mt], kb, lane, pos[mt][0], pos[mt][1]);
    }
    if (a.window > 0 && kb < a.t0 + q0 + wrow + 16 * MT - a.window) {
#pragma unroll
      for (int mt = 0; mt < MT; mt++)
        cf_attn_mask_lo(s[mt], kb, lane, pos[mt][0] - a.window + 1, pos[mt][1] - a.window + 1);
    }
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
      cf_attn_softmax(s[mt], o[mt], m[mt][0], m[mt][1], l[mt][0], l[mt][1], sl2);
#pragma unroll
    for (int kk = 0; kk < BC / 16; kk++) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) cf_attn_pack_p(pa[mt], s[mt], kk);
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        uint32_t b[4];
        int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        int dim = dp * 16 + (lane >> 4) * 8;
        cf_ldsm_x4_t(b, Vt + key * LDS + dim);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          cf_mma16816(o[mt][2 * dp], pa[mt], b[0], b[1]);
          cf_mma16816(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int mt = 0; mt < MT; mt++)
    cf_attn_store<HD>(a, o[mt], m[mt][0], m[mt][1], l[mt][0], l[mt][1],
                      q0 + wrow + mt * 16 + (lane >> 2), h, lane);
}

// Combine split-KV partials: one warp per (query row, head); out = Σ_s 2^(m_s-M) O_s / Σ_s
// 2^(m_s-M) l_s with M = max_s m_s (m in the log2 domain, as the kernels keep it).
__global__ void cf_attn_combine_kernel(cf_attn_args_t a, int nsplit) {
  int64_t rows = (int64_t)a.Tq * a.n_heads;
  int64_t wid = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31, hd = a.head_dim;
  if (wid >= rows) return;
  const float *ml = a.ws + nsplit * rows * hd;
  float M = -INFINITY;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, ml[(s * rows + wid) * 2]);
  float L = 0.f;
  for (int s = 0; s < nsplit; s++) {
    float ms = ml[(s * rows + wid) * 2];
    L += ms == -INFINITY ? 0.f : exp2f(ms - M) * ml[(s * rows + wid) * 2 + 1];
  }
  float inv = L > 0.f ? 1.f / L : 0.f;
  int i = (int)(wid / a.n_heads), h = (int)(wid % a.n_heads);
  bf16 *out = (bf16 *)a.out + (int64_t)i * a.out_row_stride + (int64_t)h * hd;
  for (int d = lane; d < hd; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < nsplit; s++) {
      float ms = ml[(s * rows + wid) * 2];
      if (ms != -INFINITY) acc += exp2f(ms - M) * a.ws[(s * rows + wid) * hd + d];
    }
    out[d] = __float2bfloat16_rn(acc * inv);
  }
}

// Scalar fallback: one warp per (query, head); lanes split head_dim; keys one at a time with
// an online softmax. Slow, but any even head_dim <= 256 and no alignment needs.
#define CF_ATTN_SCALAR_MAXD 8
__global__ void cf_attn_scalar_kernel(cf_attn_args_t a) {
  int64_t wid = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (wid >= (int64_t)a.Tq * a.n_heads) return;
  int i = (int)(wid / a.n_heads), h = (int)(wid % a.n_heads);
  int g = h / (a.n_heads / a.n_kv_heads), hd = a.head_dim;
  const bf16 *q = (const bf16 *)a.q + (int64_t)i * a.q_row_stride + h * hd;
  float qv[CF_ATTN_SCALAR_MAXD], acc[CF_ATTN_SCALAR_MAXD];
#pragma unroll
  for (int r = 0; r < CF_ATTN_SCALAR_MAXD; r++) {
    int d = lane + 32 * r;
    qv[r] = d < hd ? __bfloat162float(q[d]) : 0.f;
    acc[r] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  int last = a.t0 + i, first = a.window > 0 && last - a.window + 1 > 0 ? last - a.window + 1 : 0;
  for (int j = first; j <= last; j++) {
    const bf16 *k = (const bf16 *)a.k + (int64_t)j * a.kv_row_stride + g * hd;
    float dot = 0.f;
#pragma unroll
    for (int r = 0; r < CF_ATTN_SCALAR_MAXD; r++) {
      int d = lane + 32 * r;
      if (d < hd) dot += qv[r] * __bfloat162float(k[d]);
    }
    float sc = cf_warp_sum(dot) * a.scale;
    float mn = fmaxf(m, sc), al = expf(m - mn), p = expf(sc - mn);
    l = l * al + p;
    m = mn;
    const bf16 *v = (const bf16 *)a.v + (int64_t)j * a.kv_row_stride + g * hd;
#pragma unroll
    for (int r = 0; r < CF_ATTN_SCALAR_MAXD; r++) {
      int d = lane + 32 * r;
      if (d < hd) acc[r] = acc[r] * al + p * __bfloat162float(v[d]);
    }
  }
  bf16 *o = (bf16 *)a.out + (int64_t)i * a.out_row_stride + h * hd;
#pragma unroll
  for (int r = 0; r < CF_ATTN_SCALAR_MAXD; r++) {
    int d = lane + 32 * r;
    if (d < hd) o[d] = __float2bfloat16_rn(acc[r] / l);
  }
}

// launchers

extern "C" int cf__attn_wgmma(const cf_attn_args_t *a, cudaStream_t s, int overlap, int tma,
                              int nsplit);  // cf_attn_wgmma.cu

static int cf__attn_check(const cf_attn_args_t *a) {
  CF_REQUIRE(a && a->q && a->k && a->v && a->out, "cf_attn_prefix: q, k, v, out are required");
  CF_REQUIRE(a->Tq >= 0 && a->t0 >= 0 && a->n_heads > 0 && a->n_kv_heads > 0 &&
                 a->n_heads % a->n_kv_heads == 0,
             "cf_attn_prefix: Tq=%d t0=%d n_heads=%d n_kv_heads=%d (n_heads must be a multiple)",
             a->Tq, a->t0, a->n_heads, a->n_kv_heads);
  CF_REQUIRE(a->window >= 0, "cf_attn_prefix: window %d is negative", a->window);
  CF_REQUIRE(a->head_dim > 0 && a->head_dim % 2 == 0 && a->head_dim <= 32 * CF_ATTN_SCALAR_MAXD,
             "cf_attn_prefix: head_dim %d must be even and <= %d", a->head_dim,
             32 * CF_ATTN_SCALAR_MAXD);
  CF_REQUIRE(a->q_row_stride >= (int64_t)a->n_heads * a->head_dim &&
                 a->out_row_stride >= (int64_t)a->n_heads * a->head_dim &&
                 a->kv_row_stride >= (int64_t)a->n_kv_heads * a->head_dim,
             "cf_attn_prefix: row strides q=%lld kv=%lld out=%lld too small",
             (long long)a->q_row_stride, (long long)a->kv_row_stride,
             (long long)a->out_row_stride);
  return 0;
}

static int cf__attn_sms(void) {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess)
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaGetLastError();
  return sms;
}

// Splits of the key range for a grid of `blocks` blocks: enough for ~per_sm blocks per SM,
// each split keeping >= 8 key tiles of 64, at most CF_ATTN_MAX_SPLITS, within the workspace.
static int cf__attn_nsplit(const cf_attn_args_t *a, int64_t blocks, int per_sm = 3) {
  // keys a block reads: the whole prefix, or about a window plus the block's own rows
  int64_t klen = a->t0 + a->Tq;
  if (a->window > 0 && klen > (int64_t)a->window + 128) klen = (int64_t)a->window + 128;
  int64_t pre = a->window > 0 && a->t0 > a->window ? a->window : a->t0;  // prefix keys read
  if (!a->ws || pre < 8 * CF_ATTN_BC) return 1;
  int64_t want = (per_sm * cf__attn_sms() + blocks - 1) / blocks;
  int64_t by_len = klen / (8 * CF_ATTN_BC);
  int64_t by_ws = a->ws_floats / ((int64_t)a->Tq * a->n_heads * (a->head_dim + 2));
  int64_t n = want < by_len ? want : by_len;
  if (n > by_ws) n = by_ws;
  if (n > CF_ATTN_MAX_SPLITS) n = CF_ATTN_MAX_SPLITS;
  return n < 2 ? 1 : (int)n;
}

template <int HD, int NW>
static int cf__attn_mma(const cf_attn_args_t *a, cudaStream_t s, int nsplit) {
  constexpr int LDS = HD + 8;
  size_t smem = 2 * 2 * CF_ATTN_BC * LDS * sizeof(bf16);
  // Raising the dynamic shared-memory limit is per function and idempotent; it allocates nothing.
  CF_CUDA_TRY(cudaFuncSetAttribute(cf_attn_mma_kernel<HD, NW>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid(cf_div_up(a->Tq, 16 * NW), a->n_heads, nsplit);
  cf_attn_mma_kernel<HD, NW><<<grid, NW * 32, smem, s>>>(*a);
  CF_LAUNCH_TRY();
  if (nsplit > 1) {
    int64_t warps = (int64_t)a->Tq * a->n_heads;
    cf_attn_combine_kernel<<<cf_div_up(warps, 8), 256, 0, s>>>(*a, nsplit);
    CF_LAUNCH_TRY();
  }
  return 0;
}

template <int HD, int NW, int BC>
static int cf__attn_mma2(const cf_attn_args_t *a, cudaStream_t s, int nsplit) {
  constexpr int LDS = HD + 8, BR = 32 * NW;
  size_t smem = (BR + 2 * 2 * BC) * LDS * sizeof(bf16);
  CF_CUDA_TRY(cudaFuncSetAttribute(cf_attn_mma2_kernel<HD, NW, BC>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  dim3 grid(cf_div_up(a->Tq, BR), a->n_heads, nsplit);
  cf_attn_mma2_kernel<HD, NW, BC><<<grid, NW * 32, smem, s>>>(*a);
  CF_LAUNCH_TRY();
  if (nsplit > 1) {
    int64_t warps = (int64_t)a->Tq * a->n_heads;
    cf_attn_combine_kernel<<<cf_div_up(warps, 8), 256, 0, s>>>(*a, nsplit);
    CF_LAUNCH_TRY();
  }
  return 0;
}

extern "C" int cf_attn_prefix_scalar(const cf_attn_args_t *a, cudaStream_t s) {
  int rc = cf__attn_check(a);
  if (rc || a->Tq == 0) return rc;
  int64_t warps = (int64_t)a->Tq * a->n_heads;
  cf_attn_scalar_kernel<<<cf_div_up(warps, 8), 256, 0, s>>>(*a);
  CF_LAUNCH_TRY();
  return 0;
}

static int cf__attn_forced;  // 0: choose per call; else a CF_ATTN_* variant (tuning, benchmarks)

extern "C" void cf_attn_force_variant(int variant) { cf__attn_forced = variant; }

static bool cf__attn_aligned(const cf_attn_args_t *a) {
  return a->q_row_stride % 8 == 0 && a->kv_row_stride % 8 == 0 && a->out_row_stride % 8 == 0 &&
         (uintptr_t)a->q % 16 == 0 && (uintptr_t)a->k % 16 == 0 && (uintptr_t)a->v % 16 == 0 &&
         (uintptr_t)a->out % 16 == 0;
}

extern "C" int cf_attn_prefix_variant(const cf_attn_args_t *a, int variant, cudaStream_t s) {
  int rc = cf__attn_check(a);
  if (rc || a->Tq == 0) return rc;
  if (variant == CF_ATTN_SCALAR) return cf_attn_prefix_scalar(a, s);
  int hd = a->head_dim;
  CF_REQUIRE(cf__attn_aligned(a), "cf_attn_prefix_variant: tensor-core variants need 16-byte "
             "aligned pointers and row strides that are multiples of 8");
  if (variant == CF_ATTN_MMA16 || variant == CF_ATTN_MMA16_SPLIT) {
    int ns = variant == CF_ATTN_MMA16 ? 1
                                      : cf__attn_nsplit(a, (int64_t)cf_div_up(a->Tq, 64) * a->n_heads);
    switch (hd) {
      case 16: return cf__attn_mma<16, 4>(a, s, ns);
      case 32: return cf__attn_mma<32, 4>(a, s, ns);
      case 64: return cf__attn_mma<64, 4>(a, s, ns);
      case 128: return cf__attn_mma<128, 4>(a, s, ns);
      default: break;
    }
  } else if (variant == CF_ATTN_MMA32 || variant == CF_ATTN_MMA32_SPLIT) {
    int ns = variant == CF_ATTN_MMA32 ? 1
                                      : cf__attn_nsplit(a, (int64_t)cf_div_up(a->Tq, 128) * a->n_heads);
    if (hd == 64) return cf__attn_mma2<64, 4, 64>(a, s, ns);
    if (hd == 128) return cf__attn_mma2<128, 4, 64>(a, s, ns);
  } else if (variant == CF_ATTN_MMA32_BC32) {
    if (hd == 128) return cf__attn_mma2<128, 4, 32>(a, s, 1);
  } else if (variant == CF_ATTN_WGMMA || variant == CF_ATTN_WGMMA_SIMPLE ||
             variant == CF_ATTN_WGMMA_TMA) {
    // One 256-thread block per SM: split the key range when the grid is under one wave.
    int ns = cf__attn_nsplit(a, (int64_t)cf_div_up(a->Tq, 128) * a->n_heads, 1);
    rc = cf__attn_wgmma(a, s, variant != CF_ATTN_WGMMA_SIMPLE, variant == CF_ATTN_WGMMA_TMA, ns);
    if (rc || ns == 1) return rc;
    int64_t warps = (int64_t)a->Tq * a->n_heads;
    cf_attn_combine_kernel<<<cf_div_up(warps, 8), 256, 0, s>>>(*a, ns);
    CF_LAUNCH_TRY();
    return 0;
  }
  return cf_seterr(CF_EINVAL, "cf_attn_prefix_variant: variant %d has no head_dim %d", variant, hd);
}

// CF_ATTN_IMPL: -1 not read yet; else CF_ATTN_IMPL_* or CF_EINVAL (an invalid value, kept so
// every call reports it). Set once per process; a race between first calls sets the same value.
static int cf__attn_impl = -1;
static char cf__attn_impl_bad[64];

extern "C" int cf_attn_set_impl(const char *name) {
  if (!name || !*name || !strcmp(name, "mma")) cf__attn_impl = CF_ATTN_IMPL_MMA;
  else if (!strcmp(name, "wgmma")) cf__attn_impl = CF_ATTN_IMPL_WGMMA;
  else if (!strcmp(name, "auto")) cf__attn_impl = CF_ATTN_IMPL_AUTO;
  else {
    snprintf(cf__attn_impl_bad, sizeof cf__attn_impl_bad, "%s", name);
    cf__attn_impl = CF_EINVAL;
    return cf_seterr(CF_EINVAL, "CF_ATTN_IMPL=%s: expected mma, wgmma or auto", name);
  }
  return 0;
}

extern "C" int cf_attn_impl(void) {
  if (cf__attn_impl == -1) cf_attn_set_impl(getenv("CF_ATTN_IMPL"));
  if (cf__attn_impl == CF_EINVAL)
    return cf_seterr(CF_EINVAL, "CF_ATTN_IMPL=%s: expected mma, wgmma or auto", cf__attn_impl_bad);
  return cf__attn_impl;
}

extern "C" int cf_attn_prefix(const cf_attn_args_t *a, cudaStream_t s) {
  int rc = cf__attn_check(a);
  if (rc || a->Tq == 0) return rc;
  if (cf__attn_forced) return cf_attn_prefix_variant(a, cf__attn_forced, s);
  int impl = cf_attn_impl();
  if (impl < 0) return impl;
  if (cf__attn_aligned(a)) {
    int hd = a->head_dim;
    // "auto" stays on the verified mma.sync kernels until the wgmma kernel has passed on an H100.
    if (impl == CF_ATTN_IMPL_WGMMA && hd == 128 && cf_attn_wgmma_supported())
      return cf_attn_prefix_variant(a, CF_ATTN_WGMMA, s);
    // 32 rows per warp halves shared-memory traffic per MMA (measured: 1.3x over 16 rows at
    // 2048 x 32k); too few query blocks are made up for by splitting the key range.
    if (hd == 64 || hd == 128) return cf_attn_prefix_variant(a, CF_ATTN_MMA32_SPLIT, s);
    if (hd == 16 || hd == 32 || hd == 64 || hd == 128)
      return cf_attn_prefix_variant(a, CF_ATTN_MMA16_SPLIT, s);  // splits only if it helps
  }
  return cf_attn_prefix_scalar(a, s);
}
