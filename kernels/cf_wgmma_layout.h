/* cf_wgmma_layout — the Hopper warpgroup-MMA (wgmma) layouts the attention kernel
 * (kernels/cf_attn_wgmma.cu) relies on, as plain functions usable on the host and the device,
 * so that tests/unit/test_wgmma_layout.c can check them on a machine without a GPU against an
 * independent model of the PTX ISA's canonical layouts ("Asynchronous Warpgroup Level Matrix
 * Shared Memory Layout", "Matrix Descriptor", register fragments of wgmma .m64nNk16).
 *
 * Shared-memory tiles are bf16 with the 128-byte swizzle: a tile of R rows x 128 head-dim
 * columns is stored as two column blocks of 64 (block b holds columns [64b, 64b+64)), each
 * block R rows of 128 bytes, the 16-byte chunk c of row r stored at chunk position c ^ (r % 8).
 * Every block starts 1024-byte aligned (the swizzle repeats every 8 rows = 1024 bytes, and the
 * hardware applies it to address bits, so the atoms must be aligned).
 *   - K-major use (Q and K as wgmma A/B operands of S = Q·Kᵀ): rows are M (queries) or N (keys),
 *     columns are the reduction dimension (head_dim).
 *   - MN-major use (V as the B operand of O = P·V, "transposed B"): rows are the reduction
 *     dimension (keys), columns are N (head_dim). Same bytes, other descriptor.
 * Everything here is a pure function of its arguments (no CUDA types): C11 and CUDA C++. */
#ifndef CF_WGMMA_LAYOUT_H
#define CF_WGMMA_LAYOUT_H

#include <stdint.h>

#if defined(__CUDACC__)
#define CF_WG_FN static __host__ __device__ __forceinline__
#else
#define CF_WG_FN static inline
#endif

/* Byte offset of bf16 element (row, col), col < 128, in a swizzled tile of `rows` rows
 * (rows a multiple of 8). */
CF_WG_FN uint32_t cf_wg_tile_off(uint32_t rows, uint32_t row, uint32_t col) {
  uint32_t blk = col >> 6, c = col & 63;
  return blk * rows * 128u + row * 128u + ((((c >> 3) ^ (row & 7u)) << 4) | ((c & 7u) << 1));
}

/* The 64-bit shared-memory matrix descriptor: start address, leading- and stride-dimension
 * byte offsets (all encoded >> 4, 14 bits each at bits 0, 16, 32), base offset 0 (bits 49-51:
 * atoms are 1024-aligned), swizzle mode at bits 62-63 (1 = 128-byte swizzle). */
#define CF_WG_SWIZZLE_128B 1u
CF_WG_FN uint64_t cf_wg_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return (uint64_t)((smem_addr & 0x3FFFFu) >> 4) | ((uint64_t)((lbo_bytes >> 4) & 0x3FFFu) << 16) |
         ((uint64_t)((sbo_bytes >> 4) & 0x3FFFu) << 32) | ((uint64_t)CF_WG_SWIZZLE_128B << 62);
}

/* Descriptor of the K-major operand for reduction step `ks` (16 head-dim columns, ks < 8) of a
 * tile at shared address `tile` with `rows` rows: the 64-column block holding the step, plus
 * 32 bytes per step inside the 128-byte swizzled row (the hardware swizzles the final address).
 * SBO: 8 rows = 1024 bytes; LBO unused with swizzling (1 by convention). */
CF_WG_FN uint64_t cf_wg_desc_kmajor(uint32_t tile, uint32_t rows, uint32_t ks) {
  return cf_wg_desc(tile + (ks >> 2) * rows * 128u + (ks & 3u) * 32u, 16u, 1024u);
}

/* Descriptor of the MN-major (transposed) B operand for reduction step `ks` (keys
 * [16ks, 16ks+16)) of a V tile of `rows` keys: start at key row 16ks (whole swizzle atoms),
 * LBO = distance between the two 64-column blocks of N, SBO = 8 keys = 1024 bytes. */
CF_WG_FN uint64_t cf_wg_desc_mnmajor(uint32_t tile, uint32_t rows, uint32_t ks) {
  return cf_wg_desc(tile + ks * 16u * 128u, rows * 128u, 1024u);
}

/* wgmma .m64nNk16 fp32 accumulator: element i (< N/2) of thread t (< 128) of the warpgroup
 * holds D(row, col). Per warp it is the mma.sync m16n8 C layout repeated over N/8 tiles. */
CF_WG_FN uint32_t cf_wg_acc_row(uint32_t t, uint32_t i) {
  return 16u * (t >> 5) + ((t & 31u) >> 2) + 8u * ((i & 3u) >> 1);
}
CF_WG_FN uint32_t cf_wg_acc_col(uint32_t t, uint32_t i) {
  return 8u * (i >> 2) + 2u * (t & 3u) + (i & 1u);
}

/* wgmma .m64nNk16 A operand from registers (bf16): register j (< 4), half h (0 low, 1 high) of
 * thread t holds A(row, col), col < 16. */
CF_WG_FN uint32_t cf_wg_a_row(uint32_t t, uint32_t j) {
  return 16u * (t >> 5) + ((t & 31u) >> 2) + 8u * (j & 1u);
}
CF_WG_FN uint32_t cf_wg_a_col(uint32_t t, uint32_t j, uint32_t h) {
  return 8u * (j >> 1) + 2u * (t & 3u) + h;
}

/* P as the A operand of P·V: register j of reduction step ks packs accumulator elements
 * (8ks + 2j, 8ks + 2j + 1) of S (low, high). With the two layouts above this is the same
 * (row, key) with no data movement between threads. */
CF_WG_FN uint32_t cf_wg_p_src(uint32_t ks, uint32_t j, uint32_t h) { return 8u * ks + 2u * j + h; }

/* ---- the attention kernel's shared memory and TMA boxes (checked by test_wgmma_layout.c) */

#define CF_WG_TILE_BYTES (128u * 128u * 2u) /* one swizzled 128 x 128 bf16 tile */
/* Q, two K stages, two V stages (tile order Q K0 K1 V0 V1), then the 4 mbarriers (K0 K1 V0 V1,
 * 8 bytes each) of the TMA variant; +1024 so the tiles can start at the next 1024-byte boundary
 * (the 128-byte swizzle repeats every 1024 bytes and is applied to address bits). */
#define CF_WG_BAR_OFF (5u * CF_WG_TILE_BYTES)
#define CF_WG_SMEM_BYTES (CF_WG_BAR_OFF + 64u + 1024u)
/* Opt-in dynamic shared memory per block on compute capability 9.0 (227 KiB). */
#define CF_WG_SMEM_MAX_SM90 (227u * 1024u)
/* TMA: a tile is two boxes of 64 columns (128 bytes: the 128-byte swizzle span, the most a
 * SWIZZLE_128B box row may hold) x 128 rows; the second lands one column block further. */
#define CF_WG_TMA_BOX_COLS 64u
#define CF_WG_TMA_BOX_ROWS 128u

/* Shared address of the first tile for a dynamic shared-memory base `raw` (the kernel's
 * alignment of the tiles to the swizzle atom). */
CF_WG_FN uint32_t cf_wg_smem_tiles(uint32_t raw) { return (raw + 1023u) & ~1023u; }

/* ---- the attention kernel's schedule (128-key tiles, 128-row CTAs of two 64-row warpgroups) */

/* Key tiles some row of a CTA sees when its last query is at position t0 + qend - 1. */
CF_WG_FN int cf_wg_ntiles(int t0, int qend) { return (t0 + qend + 127) / 128; }

/* The tiles [*jbeg, *jend) split z of nsplit takes of [0, ntiles) (empty when jbeg == jend). */
CF_WG_FN void cf_wg_split(int ntiles, int nsplit, int z, int *jbeg, int *jend) {
  int per = (ntiles + nsplit - 1) / nsplit, b = z * per;
  *jbeg = b < ntiles ? b : ntiles;
  *jend = *jbeg + per < ntiles ? *jbeg + per : ntiles;
}

/* End (exclusive, capped at jend) of the tiles a warpgroup whose first row is at position
 * wg_first needs: later tiles hold only keys after all of its 64 rows. */
CF_WG_FN int cf_wg_needed_end(int jend, int wg_first) {
  int n = (wg_first + 63) / 128 + 1;
  return n < jend ? n : jend;
}

/* Whether key tile j needs the causal mask for a warpgroup whose first row is at position
 * wg_first (its last key is past that row). Tiles that do not need it hold only keys every
 * row of the warpgroup sees, all < t0 + Tq. */
CF_WG_FN int cf_wg_needs_mask(int j, int wg_first) { return j * 128 + 127 > wg_first; }

/* Shared-memory stage (0/1) of K tile j and of V tile j. */
CF_WG_FN int cf_wg_stage(int j) { return j & 1; }

/* The overlapped schedule keeps P of tile j in register set (j - jbeg) % 2 (0: pa, 1: pb). */
CF_WG_FN int cf_wg_pset(int j, int jbeg) { return (j - jbeg) & 1; }

#endif
