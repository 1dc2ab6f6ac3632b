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
// blocks with the most keys first. A short chunk over a long prefix (grid under one wave)
// splits the key range across CTAs (the split-KV partials and combine kernel of cf_attn.cu).
// Not here yet (next steps, see NOTES): TMA loads with mbarriers and a producer warpgroup,
// ping-pong scheduling between the two warpgroups (they run in step: a barrier per tile).
#include "kernels/cf_attn.h"

#include <cuda.h>          // CUtensorMap types only: the encoder comes from the runtime's
#include <cudaTypedefs.h>  // cudaGetDriverEntryPointByVersion, no libcuda link
#include <math.h>
#include <string.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"
#include "kernels/cf_wgmma_layout.h"

#define CF_WG_BM 128                       // query rows per CTA (2 warpgroups x 64)
#define CF_WG_BN 128                       // keys per tile
#define CF_WG_HD 128                       // head_dim
#define CF_WG_TILE CF_WG_TILE_BYTES        // bytes of one swizzled 128 x 128 bf16 tile
// Q, then K/V for two stages, then 4 mbarriers (TMA loads); +1024 to align the tiles to the
// swizzle atom (kernels/cf_wgmma_layout.h, checked on the CPU by test_wgmma_layout.c).
#define CF_WG_SMEM CF_WG_SMEM_BYTES
static_assert(CF_WG_HD == 128 && CF_WG_BN == 128 && CF_WG_BM == 128, "the layout header assumes 128");
static_assert(CF_WG_SMEM + 1024 <= CF_WG_SMEM_MAX_SM90, "dynamic + reserved shared memory fits an SM");

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
__device__ __forceinline__ void cf_wg_fence_p(uint32_t (&p)[CF_WG_BN / 16][4]) {
#pragma unroll
  for (int i = 0; i < CF_WG_BN / 16; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) asm volatile("" : "+r"(p[i][j])::"memory");
}
// The 64 fp32 accumulator registers of an m64n128 wgmma: operands %0..%63.
#define CF_WG_D64_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define CF_WG_D64(d) \
      "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
      "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
      "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
      "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
      "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
      "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
      "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// D(64x128, fp32) (+)= A(64x16, K-major in shared memory) x B(16x128, K-major in shared memory).
// scale_d 0 overwrites D (the first reduction step), 1 accumulates.
__device__ __forceinline__ void cf_wg_mma_ss(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CF_WG_D64_REGS
      ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : CF_WG_D64(d)
      : "l"(da), "l"(db), "r"(scale_d));
}

// D(64x128, fp32) += A(64x16 bf16 in registers, the m64nNk16 A fragment) x B(16x128, MN-major
// in shared memory: imm-trans-b = 1).
__device__ __forceinline__ void cf_wg_mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CF_WG_D64_REGS
      ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : CF_WG_D64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

// ---- TMA: mbarriers and 2D tensor loads (the CF_ATTN_WGMMA_TMA variant)
__device__ __forceinline__ void cf_mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void cf_mbar_fence_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// The calling thread's arrival, announcing `bytes` of transactions that must complete too.
__device__ __forceinline__ void cf_mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Wait for the completion of the barrier's phase with the given parity.
__device__ __forceinline__ void cf_mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t ok = 0;
  while (!ok)
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(ok)
        : "r"(bar), "r"(parity)
        : "memory");
}
// One box (64 columns = 128 bytes x 128 rows, 128B-swizzled by the tensor map) at column c0,
// row c1 of the tensor into shared memory at dst; completes on `bar`. Rows past the tensor's
// end are zero-filled.
__device__ __forceinline__ void cf_tma_load_2d(uint32_t dst, const CUtensorMap *map, int c0, int c1,
                                               uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(dst),
      "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// A 128 x 128 tile (two 64-column boxes, the two column blocks of cf_wg_tile_off) by one thread.
__device__ __forceinline__ void cf_tma_tile(uint32_t dst, const CUtensorMap *map, int col, int row,
                                            uint32_t bar) {
  cf_mbar_expect_tx(bar, CF_WG_TILE);
  cf_tma_load_2d(dst, map, col, row, bar);
  cf_tma_load_2d(dst + CF_WG_TILE / 2, map, col + CF_WG_TMA_BOX_COLS, row, bar);
}

// Async-copy rows [r0, r0+128) of a 128-wide bf16 matrix (row stride rs elements) into a
// swizzled tile at shared address `tile`; rows >= nrows are zero-filled. All 256 threads.
__device__ __forceinline__ void cf_wg_load_tile(uint32_t tile, const bf16 *base, int64_t rs, int r0,
                                                int nrows) {
#pragma unroll
  for (int c = threadIdx.x; c < 128 * 16; c += 256) {
    int row = c >> 4, col = (c & 15) * 8, r = r0 + row;
    bool ok = r < nrows;
    cf_cp_async16_s(tile + cf_wg_tile_off(128, row, col), base + (int64_t)(ok ? r : 0) * rs + col,
               ok ? 16 : 0);
  }
}

// Per-warpgroup online-softmax state of its 64 query rows (two rows per thread).
struct cf_wg_rows {
  float m0, m1, l0, l1;  // running max (log2 domain) and this thread's part of the row sums
  int pos0, pos1;        // absolute positions of this thread's rows
};

// S (this warpgroup's 64 x 128 scores of the key tile at kb) becomes P = 2^(S*sl2 - m_new) in
// place; keys > position are masked when `mask`, keys < position - wlo always; the row state is updated and the factors
// 2^(m_old - m_new) that O must be multiplied by are returned in al0/al1.
__device__ __forceinline__ void cf_wg_softmax(float (&s)[64], cf_wg_rows &r, int kb, bool mask,
                                              int wlo, int t, float sl2, float &al0, float &al1) {
  // Branch-free (selects against a limit past every key when no mask is needed): with a
  // branch here, while P·V is in flight, ptxas waits for that P·V at the join.
  // The column is cf_wg_acc_col(t, i) = (compile-time part of i) + 2 (t % 4): fold the thread's
  // part into the limits so that each compare is against an immediate (no per-element registers).
  const int ct = (int)cf_wg_acc_col(t, 0);
  const int lim0 = (mask ? r.pos0 - kb : CF_WG_BN) - ct, lim1 = (mask ? r.pos1 - kb : CF_WG_BN) - ct;
  // Sliding window: keys below position - wlo are masked too (wlo = window - 1; a huge wlo,
  // when no row of the tile needs it, puts the limit below every column).
  const int lo0 = r.pos0 - wlo - kb - ct, lo1 = r.pos1 - wlo - kb - ct;
#pragma unroll
  for (int i = 0; i < 64; i++) {
    const int ci = 8 * (i >> 2) + (i & 1);  // == cf_wg_acc_col(t, i) - ct
    s[i] = ci > ((i & 2) ? lim1 : lim0) || ci < ((i & 2) ? lo1 : lo0) ? -INFINITY : s[i];
  }
  // Rows are reduced over the 4 lanes that share them.
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
  float mn0 = fmaxf(r.m0, mx0 * sl2), mn1 = fmaxf(r.m1, mx1 * sl2);
  // A row with every key so far masked keeps m = -inf; base 0 makes its exp2 give 0.
  float b0 = mn0 == -INFINITY ? 0.f : mn0, b1 = mn1 == -INFINITY ? 0.f : mn1;
  al0 = cf_exp2(r.m0 - b0);
  al1 = cf_exp2(r.m1 - b1);
  r.m0 = mn0;
  r.m1 = mn1;
  float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
  for (int i = 0; i < 64; i += 4) {
    s[i] = cf_exp2(fmaf(s[i], sl2, -b0));
    s[i + 1] = cf_exp2(fmaf(s[i + 1], sl2, -b0));
    s[i + 2] = cf_exp2(fmaf(s[i + 2], sl2, -b1));
    s[i + 3] = cf_exp2(fmaf(s[i + 3], sl2, -b1));
    rs0 += s[i] + s[i + 1];
    rs1 += s[i + 2] + s[i + 3];
  }
  r.l0 = r.l0 * al0 + rs0;
  r.l1 = r.l1 * al1 + rs1;
}

__device__ __forceinline__ void cf_wg_rescale(float (&o)[64], float al0, float al1) {
#pragma unroll
  for (int i = 0; i < 64; i += 4) {
    o[i] *= al0; o[i + 1] *= al0;
    o[i + 2] *= al1; o[i + 3] *= al1;
  }
}

// P in bf16 as the A operand: register j of step ks packs S elements 8ks+2j, 8ks+2j+1.
__device__ __forceinline__ void cf_wg_pack_p(uint32_t (&p)[CF_WG_BN / 16][4], const float (&s)[64]) {
#pragma unroll
  for (int ks = 0; ks < CF_WG_BN / 16; ks++)
#pragma unroll
    for (int jj = 0; jj < 4; jj++)
      p[ks][jj] = cf_pack_bf16(s[cf_wg_p_src(ks, jj, 0)], s[cf_wg_p_src(ks, jj, 1)]);
}

// Issue (not wait for) S = Q·K_tileᵀ: 8 reduction steps over head_dim.
__device__ __forceinline__ void cf_wg_issue_s(float (&s)[64], uint32_t qwg, uint32_t kt) {
#pragma unroll
  for (int ks = 0; ks < CF_WG_HD / 16; ks++)
    cf_wg_mma_ss(s, cf_wg_desc_kmajor(qwg, 128, ks), cf_wg_desc_kmajor(kt, 128, ks), ks > 0);
  cf_wg_commit();
}
// Issue (not wait for) O += P·V_tile: 8 reduction steps over the tile's keys.
__device__ __forceinline__ void cf_wg_issue_pv(float (&o)[64], const uint32_t (&p)[CF_WG_BN / 16][4],
                                               uint32_t vt) {
#pragma unroll
  for (int ks = 0; ks < CF_WG_BN / 16; ks++) cf_wg_mma_rs(o, p[ks], cf_wg_desc_mnmajor(vt, 128, ks));
  cf_wg_commit();
}

// Shared memory: Q tile, then two K stages, then two V stages (each 128 x 128 bf16, swizzled).
#define CF_WG_KS(sq, j) ((sq) + (1 + cf_wg_stage(j)) * CF_WG_TILE)  // K tile j's stage
#define CF_WG_VS(sq, j) ((sq) + (3 + cf_wg_stage(j)) * CF_WG_TILE)  // V tile j's stage

// OVERLAP false: per tile S, wait, softmax, P·V, wait (the MMAs of one warpgroup never run
// during its softmax; the other warpgroup's may). OVERLAP true (FA3's intra-warpgroup
// overlap): S of tile j is issued together with P·V of tile j-1, and the softmax of tile j runs
// while that P·V is still on the tensor cores; loads are skewed (K one tile ahead of V) so two
// stages of each still stream the next tile during the current one.
//
// TMA false: K/V tiles by cp.async from all threads, one commit group per step. TMA true: by
// the tensor-memory accelerator, issued by thread 0 (tensor maps tmk/tmv, 128B swizzle: the
// same bytes as cf_wg_tile_off), one mbarrier per stage; Q always by cp.async.
template <bool OVERLAP, bool TMA>
__global__ void __launch_bounds__(256, 1)
    cf_attn_wgmma_kernel(const cf_attn_args_t a, const __grid_constant__ CUtensorMap tmk,
                         const __grid_constant__ CUtensorMap tmv) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // built for a target without wgmma: never launched (the launcher requires 9.0)
#else
  extern __shared__ __align__(16) unsigned char cf_wg_smem[];
  const uint32_t sraw = (uint32_t)__cvta_generic_to_shared(cf_wg_smem);
  const uint32_t sq = cf_wg_smem_tiles(sraw);  // swizzle atoms must be 1024-byte aligned
  // The warpgroup index through a shuffle, so that ptxas knows it is warp-uniform: branches on
  // it around wgmma are then not "divergent" (which would serialize the wgmma instructions).
  const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid >> 7, 0), t = tid & 127;
  const int h = blockIdx.x, qb = gridDim.y - 1 - blockIdx.y;  // longest query blocks first
  const int q0 = qb * CF_WG_BM, g = h / (a.n_heads / a.n_kv_heads);
  const int Tk = a.t0 + a.Tq, qend = min(q0 + CF_WG_BM, a.Tq);
  // Split-KV (gridDim.z > 1): this CTA takes tiles [jbeg, ntiles) of those some row of it sees
  // and leaves its unnormalised O, row max and row sum in a.ws for cf_attn_combine_kernel.
  // Under a sliding window the split covers only the tiles from the one holding the first
  // row's first visible key: earlier tiles are never loaded.
  int jbeg, ntiles, jfirst = 0;
  const int ntot = cf_wg_ntiles(a.t0, qend);
  if (a.window > 0 && a.t0 + q0 - a.window + 1 > 0) jfirst = min(ntot, (a.t0 + q0 - a.window + 1) / CF_WG_BN);
  cf_wg_split(ntot - jfirst, gridDim.z, blockIdx.z, &jbeg, &ntiles);
  jbeg += jfirst;
  ntiles += jfirst;
  const bf16 *kg = (const bf16 *)a.k + g * CF_WG_HD, *vg = (const bf16 *)a.v + g * CF_WG_HD;
  const int64_t rs = a.kv_row_stride;

  // This thread's two rows (accumulator elements with (i & 2) == 0, then the rest); the
  // warpgroup's first and last positions; the tiles it needs (later ones are all masked).
  const int row0 = 64 * wg + (int)cf_wg_acc_row(t, 0);
  const int wg_first = a.t0 + q0 + 64 * wg;
  const int nw = cf_wg_needed_end(ntiles, wg_first);
  cf_wg_rows r = {-INFINITY, -INFINITY, 0.f, 0.f, a.t0 + q0 + row0, a.t0 + q0 + row0 + 8};
  const float sl2 = a.scale * 1.4426950408889634f;
  // window - 1 when tile j starts before the first visible key of this warpgroup's last row
  // (wg_first + 63 - window + 1), else a value that masks nothing
  auto wlo = [&](int j) {
    return a.window > 0 && j * CF_WG_BN < wg_first + 64 - a.window ? a.window - 1 : (1 << 29);
  };
  const uint32_t qwg = sq + wg * 64 * 128;  // this warpgroup's 64 rows of each Q column block
  float o[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o[i] = 0.f;
  float al0, al1;

  // Loads of K tile j / V tile j into its stage; with TMA, waits for them (mbarriers K0, K1,
  // V0, V1 after the tiles; each completes once per tile loaded into its stage, and every
  // thread waits for every tile in load order, so one parity bit per barrier tracks it).
  const uint32_t bars = sq + CF_WG_BAR_OFF;
  uint32_t phase = 0;
  auto load_k = [&](int j) {
    if (!TMA) cf_wg_load_tile(CF_WG_KS(sq, j), kg, rs, j * CF_WG_BN, Tk);
    else if (tid == 0) cf_tma_tile(CF_WG_KS(sq, j), &tmk, g * CF_WG_HD, j * CF_WG_BN, bars + 8 * cf_wg_stage(j));
  };
  auto load_v = [&](int j) {
    if (!TMA) cf_wg_load_tile(CF_WG_VS(sq, j), vg, rs, j * CF_WG_BN, Tk);
    else if (tid == 0) cf_tma_tile(CF_WG_VS(sq, j), &tmv, g * CF_WG_HD, j * CF_WG_BN, bars + 8 * (2 + cf_wg_stage(j)));
  };
  auto wait_bar = [&](int b) {
    cf_mbar_wait(bars + 8 * b, (phase >> b) & 1u);
    phase ^= 1u << b;
  };
  if (TMA) {
    if (tid == 0) {
      for (int b = 0; b < 4; b++) cf_mbar_init(bars + 8 * b, 1);
      cf_mbar_fence_init();
    }
    __syncthreads();
  }

  if (jbeg < ntiles) {  // CTA-uniform; an empty split only writes "no keys" partials
  cf_wg_load_tile(sq, (const bf16 *)a.q + (int64_t)q0 * a.q_row_stride + h * CF_WG_HD,
                  a.q_row_stride, 0, a.Tq - q0);
  load_k(jbeg);
  if (!OVERLAP) load_v(jbeg);
  cf_cp_async_commit();

  if (!OVERLAP) {
    for (int j = jbeg; j < ntiles; j++) {
      if (j + 1 < ntiles) {
        load_k(j + 1);
        load_v(j + 1);
        cf_cp_async_commit();
        cf_cp_async_wait<1>();
      } else {
        cf_cp_async_wait<0>();
      }
      if (TMA) {
        cf_cp_async_wait<0>();  // Q
        wait_bar(cf_wg_stage(j));
        wait_bar(2 + cf_wg_stage(j));
      }
      cf_wg_fence_proxy();
      __syncthreads();
      if (j < nw) {  // warpgroup-uniform: tiles past all of its positions are skipped
        const int kb = j * CF_WG_BN;
        float s[64];
        uint32_t p[CF_WG_BN / 16][4];
        cf_wg_fence();
        cf_wg_issue_s(s, qwg, CF_WG_KS(sq, j));
        cf_wg_wait<0>();
        cf_wg_fence_regs(s);
        cf_wg_softmax(s, r, kb, cf_wg_needs_mask(j, wg_first), wlo(j), t, sl2, al0, al1);
        cf_wg_rescale(o, al0, al1);
        cf_wg_pack_p(p, s);
        cf_wg_fence();
        cf_wg_issue_pv(o, p, CF_WG_VS(sq, j));
        cf_wg_wait<0>();
        cf_wg_fence_regs(o);
      }
      __syncthreads();  // every warpgroup is done with this stage before it is refilled
    }
  } else {
    // Iteration j needs K_j (S of tile j) and V_{j-1} (P·V of tile j-1); it streams in K_{j+1}
    // and V_j, into the stages that held K_{j-1} and V_{j-2}, free since the barrier closing
    // iteration j-1. The epilogue adds P·V of the last tile. P alternates between two register
    // sets (the loop is unrolled by two): the new P is written while the P·V reading the old
    // one is in flight; with one set ptxas must wait for that P·V before the softmax.
    uint32_t pa[CF_WG_BN / 16][4], pb[CF_WG_BN / 16][4];
    // Streams K_{j+1} and V_j in, then waits for K_j and V_{j-1}.
    auto load_and_wait = [&](int j) {
      if (j + 1 < ntiles) load_k(j + 1);
      load_v(j);
      cf_cp_async_commit();
      cf_cp_async_wait<1>();  // everything but the group just issued: Q, K_0..K_j, V_0..V_{j-1}
      if (TMA) {
        cf_cp_async_wait<0>();  // Q
        wait_bar(cf_wg_stage(j));
        if (j > jbeg) wait_bar(2 + cf_wg_stage(j - 1));
      }
      cf_wg_fence_proxy();
      __syncthreads();
    };
    // The first tile: S and softmax only, P into pa. (Computed even when it is past all of
    // this warpgroup's positions, which only a split can make happen: all masked, P = 0.)
    load_and_wait(jbeg);
    {
      float s[64];
      cf_wg_fence();
      cf_wg_issue_s(s, qwg, CF_WG_KS(sq, jbeg));
      cf_wg_wait<0>();
      cf_wg_fence_regs(s);
      cf_wg_softmax(s, r, jbeg * CF_WG_BN, cf_wg_needs_mask(jbeg, wg_first), wlo(jbeg), t, sl2, al0,
                    al1);
      cf_wg_pack_p(pa, s);
    }
    __syncthreads();
    // Tiles j >= 1. Every path through a step ends with no wgmma in flight, and the S path
    // always has exactly S + P·V in flight: ptxas then keeps P·V running across the softmax
    // (paths with different numbers of groups in flight make it wait at their join).
    auto step = [&](int j, uint32_t (&pold)[CF_WG_BN / 16][4], uint32_t (&pnew)[CF_WG_BN / 16][4]) {
      load_and_wait(j);
      if (j < nw) {  // warpgroup-uniform; then j - 1 < nw too
        const int kb = j * CF_WG_BN;
        float s[64];
        cf_wg_fence();
        cf_wg_issue_s(s, qwg, CF_WG_KS(sq, j));
        cf_wg_issue_pv(o, pold, CF_WG_VS(sq, j - 1));
        cf_wg_wait<1>();  // S done; P·V may still run during the softmax
        cf_wg_fence_regs(s);
        cf_wg_softmax(s, r, kb, cf_wg_needs_mask(j, wg_first), wlo(j), t, sl2, al0, al1);
        cf_wg_pack_p(pnew, s);
        cf_wg_fence_p(pnew);  // the softmax and the new P stay before the wait
        cf_wg_wait<0>();      // P·V of tile j-1 done: O may change
        cf_wg_fence_regs(o);
        cf_wg_rescale(o, al0, al1);
      } else if (j - 1 < nw) {  // this warpgroup's last tile was j-1: its P·V only
        cf_wg_fence();
        cf_wg_issue_pv(o, pold, CF_WG_VS(sq, j - 1));
        cf_wg_wait<0>();
        cf_wg_fence_regs(o);
      }
      __syncthreads();  // K_j and V_{j-1} are refilled by the next step
    };
    for (int j = jbeg + 1; j < ntiles; j += 2) {
      step(j, pa, pb);  // tiles jbeg+1, jbeg+3, ...: P into pb
      if (j + 1 < ntiles) step(j + 1, pb, pa);
    }
    cf_cp_async_wait<0>();
    if (TMA) wait_bar(2 + cf_wg_stage(ntiles - 1));
    cf_wg_fence_proxy();
    __syncthreads();
    if (ntiles - 1 < nw) {
      cf_wg_fence();
      if (cf_wg_pset(ntiles - 1, jbeg)) cf_wg_issue_pv(o, pb, CF_WG_VS(sq, ntiles - 1));
      else cf_wg_issue_pv(o, pa, CF_WG_VS(sq, ntiles - 1));
      cf_wg_wait<0>();
      cf_wg_fence_regs(o);
    }
  }
  }  // jbeg < ntiles

  float l0 = r.l0, l1 = r.l1;
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const int r0 = q0 + row0, r1 = r0 + 8;
  if (gridDim.z > 1) {  // partials, the layout of cf_attn.cu's split kernels
    const int64_t rows = (int64_t)a.Tq * a.n_heads;
    float *wo = a.ws + (int64_t)blockIdx.z * rows * CF_WG_HD, *wml = a.ws + gridDim.z * rows * CF_WG_HD;
#pragma unroll
    for (int i = 0; i < 64; i += 2) {
      int rr = (i & 2) ? r1 : r0;
      if (rr < a.Tq)
        *(float2 *)(wo + ((int64_t)rr * a.n_heads + h) * CF_WG_HD + cf_wg_acc_col(t, i)) =
            make_float2(o[i], o[i + 1]);
    }
    if ((t & 3) == 0) {
      if (r0 < a.Tq) {
        float *ml = wml + ((int64_t)blockIdx.z * rows + (int64_t)r0 * a.n_heads + h) * 2;
        ml[0] = r.m0;
        ml[1] = l0;
      }
      if (r1 < a.Tq) {
        float *ml = wml + ((int64_t)blockIdx.z * rows + (int64_t)r1 * a.n_heads + h) * 2;
        ml[0] = r.m1;
        ml[1] = l1;
      }
    }
    return;
  }
  const float inv0 = 1.f / l0, inv1 = 1.f / l1;
  bf16 *ob = (bf16 *)a.out + h * CF_WG_HD;
#pragma unroll
  for (int i = 0; i < 64; i += 2) {
    int rr = (i & 2) ? r1 : r0;
    float inv = (i & 2) ? inv1 : inv0;
    if (rr < a.Tq)
      *(__nv_bfloat162 *)(ob + (int64_t)rr * a.out_row_stride + cf_wg_acc_col(t, i)) =
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

// cuTensorMapEncodeTiled from the driver through the runtime (no libcuda link); NULL with the
// error set when the driver lacks it.
static PFN_cuTensorMapEncodeTiled_v12000 cf__tma_encoder(void) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn;
  if (!fn) {
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    void *p = NULL;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess || !p) {
      cudaGetLastError();
      cf_seterr(CF_ECUDA, "cf_attn wgmma TMA: cuTensorMapEncodeTiled not found in the driver (query %d)",
                (int)q);
      return NULL;
    }
    fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
  }
  return fn;
}

// Tensor map of a K or V buffer: rows [0, t0+Tq) of n_kv_heads*head_dim bf16 at row_stride
// elements, boxes of 64 columns x 128 rows, 128-byte swizzle, rows past the end read as zeros.
static int cf__tma_kv_map(CUtensorMap *m, const void *base, const cf_attn_args_t *a) {
  PFN_cuTensorMapEncodeTiled_v12000 enc = cf__tma_encoder();
  if (!enc) return CF_ECUDA;
  cuuint64_t dims[2] = {(cuuint64_t)a->n_kv_heads * a->head_dim, (cuuint64_t)(a->t0 + a->Tq)};
  cuuint64_t strides[1] = {(cuuint64_t)a->kv_row_stride * 2};
  cuuint32_t box[2] = {CF_WG_TMA_BOX_COLS, CF_WG_TMA_BOX_ROWS}, estr[2] = {1, 1};
  CUresult r = enc(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dims, strides, box, estr,
                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                   CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return cf_seterr(CF_ECUDA, "cf_attn wgmma TMA: cuTensorMapEncodeTiled failed (%d) for %lld x %lld, "
                     "row stride %lld elements", (int)r, (long long)dims[0], (long long)dims[1],
                     (long long)a->kv_row_stride);
  return 0;
}

template <bool OVERLAP, bool TMA>
static int cf__attn_wgmma_launch(const cf_attn_args_t *a, cudaStream_t s, int nsplit) {
  CUtensorMap tmk, tmv;
  memset(&tmk, 0, sizeof tmk);
  memset(&tmv, 0, sizeof tmv);
  if (TMA) {
    int rc = cf__tma_kv_map(&tmk, a->k, a);
    if (!rc) rc = cf__tma_kv_map(&tmv, a->v, a);
    if (rc) return rc;
  }
  // Raising the dynamic shared-memory limit is per function and idempotent; it allocates nothing.
  CF_CUDA_TRY(cudaFuncSetAttribute(cf_attn_wgmma_kernel<OVERLAP, TMA>,
                                   cudaFuncAttributeMaxDynamicSharedMemorySize, CF_WG_SMEM));
  dim3 grid(a->n_heads, cf_div_up(a->Tq, CF_WG_BM), nsplit);
  cf_attn_wgmma_kernel<OVERLAP, TMA><<<grid, 256, CF_WG_SMEM, s>>>(*a, tmk, tmv);
  CF_LAUNCH_TRY();
  return 0;
}

// Called by cf_attn_prefix_variant after the common argument and alignment checks; with
// nsplit > 1 (a->ws large enough, checked by the caller) it leaves partials for the caller's
// combine kernel.
extern "C" int cf__attn_wgmma(const cf_attn_args_t *a, cudaStream_t s, int overlap, int tma,
                              int nsplit) {
  CF_REQUIRE(a->head_dim == CF_WG_HD, "cf_attn wgmma: head_dim %d (only %d)", a->head_dim, CF_WG_HD);
  CF_REQUIRE(cf_attn_wgmma_supported(), "cf_attn wgmma: needs a compute capability 9.0 GPU (sm_90a)");
  CF_REQUIRE(cf_div_up(a->Tq, CF_WG_BM) <= 65535, "cf_attn wgmma: Tq %d too large", a->Tq);
  CF_REQUIRE(nsplit >= 1 && nsplit <= CF_ATTN_MAX_SPLITS, "cf_attn wgmma: nsplit %d", nsplit);
  if (tma) return cf__attn_wgmma_launch<true, true>(a, s, nsplit);
  return overlap ? cf__attn_wgmma_launch<true, false>(a, s, nsplit)
                 : cf__attn_wgmma_launch<false, false>(a, s, nsplit);
}

// ---- layout probe: one warpgroup, one tile, no softmax ----
//
// S = A·Bᵀ (A 64 x 128, B 128 x 128, both row-major bf16, through the swizzled tiles and K-major
// descriptors) and O = P·V (P 64 x 128 bf16 loaded straight into the A-operand registers with
// cf_wg_a_row/col, V 128 x 128 row-major through the MN-major descriptor), fp32 results
// row-major. It checks on the GPU exactly the layouts the attention kernel relies on, without
// its pipeline, so a kt_attn failure can be told apart into "layouts" and "schedule".
__global__ void __launch_bounds__(128, 1) cf_wgmma_probe_kernel(const bf16 *A, const bf16 *B,
                                                               const bf16 *P, const bf16 *V,
                                                               float *S, float *O) {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  extern __shared__ __align__(16) unsigned char cf_wg_smem[];
  const uint32_t sa = cf_wg_smem_tiles((uint32_t)__cvta_generic_to_shared(cf_wg_smem));
  const uint32_t sb = sa + CF_WG_TILE, sv = sb + CF_WG_TILE;
  const int t = threadIdx.x;
  // 128 threads load the three tiles (A's rows past 64 are zero-filled).
  for (int c = t; c < 128 * 16; c += 128) {
    int row = c >> 4, col = (c & 15) * 8;
    uint32_t off = cf_wg_tile_off(128, row, col);
    cf_cp_async16_s(sa + off, A + (row < 64 ? row : 0) * 128 + col, row < 64 ? 16 : 0);
    cf_cp_async16_s(sb + off, B + row * 128 + col, 16);
    cf_cp_async16_s(sv + off, V + row * 128 + col, 16);
  }
  cf_cp_async_commit();
  cf_cp_async_wait<0>();
  cf_wg_fence_proxy();
  __syncthreads();
  float s[64], o[64];
#pragma unroll
  for (int i = 0; i < 64; i++) o[i] = 0.f;
  uint32_t p[CF_WG_BN / 16][4];
#pragma unroll
  for (int ks = 0; ks < CF_WG_BN / 16; ks++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const bf16 *pr = P + cf_wg_a_row(t, j) * 128 + 16 * ks + cf_wg_a_col(t, j, 0);
      p[ks][j] = *(const uint32_t *)pr;  // (col, col + 1): low, high half
    }
  cf_wg_fence();
  cf_wg_issue_s(s, sa, sb);
  cf_wg_issue_pv(o, p, sv);
  cf_wg_wait<0>();
  cf_wg_fence_regs(s);
  cf_wg_fence_regs(o);
#pragma unroll
  for (int i = 0; i < 64; i++) {
    S[cf_wg_acc_row(t, i) * 128 + cf_wg_acc_col(t, i)] = s[i];
    O[cf_wg_acc_row(t, i) * 128 + cf_wg_acc_col(t, i)] = o[i];
  }
#endif
}

extern "C" int cf_wgmma_probe(const cf_bf16_t *A, const cf_bf16_t *B, const cf_bf16_t *P,
                              const cf_bf16_t *V, float *S, float *O, cudaStream_t s) {
  CF_REQUIRE(A && B && P && V && S && O, "cf_wgmma_probe: all pointers are required");
  CF_REQUIRE(cf_attn_wgmma_supported(), "cf_wgmma_probe: needs a compute capability 9.0 GPU (sm_90a)");
  const int smem = 3 * CF_WG_TILE + 1024;
  CF_CUDA_TRY(cudaFuncSetAttribute(cf_wgmma_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   smem));
  cf_wgmma_probe_kernel<<<1, 128, smem, s>>>((const bf16 *)A, (const bf16 *)B, (const bf16 *)P,
                                             (const bf16 *)V, S, O);
  CF_LAUNCH_TRY();
  return 0;
}
