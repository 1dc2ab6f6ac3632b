/* kernels/cf_wgmma_layout.h: the shared-memory swizzle, matrix descriptors and register
 * fragment mappings of the wgmma attention kernel, checked on the CPU against an independent
 * model of what the PTX ISA documents the hardware does with a descriptor (the canonical
 * layouts in CuTe notation, 128-byte swizzle = Swizzle<3,4,3> on byte addresses); and the
 * kernel's tile schedule (splits, per-warpgroup tiles, masks, stages, P register sets) run as a
 * scalar model against a direct softmax. The kernel itself only runs on an H100; this catches
 * layout and schedule mistakes without one. */
#include "cf_test.h"
#include "kernels/cf_wgmma_layout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the model: decode a descriptor the way the PTX ISA describes it ---- */
typedef struct {
  uint32_t start, lbo, sbo, base_off, swizzle;
} desc_t;

static desc_t decode(uint64_t d) {
  desc_t r;
  r.start = (uint32_t)(d & 0x3FFF) << 4;
  r.lbo = (uint32_t)((d >> 16) & 0x3FFF) << 4;
  r.sbo = (uint32_t)((d >> 32) & 0x3FFF) << 4;
  r.base_off = (uint32_t)((d >> 49) & 7);
  r.swizzle = (uint32_t)(d >> 62);
  return r;
}

/* 128-byte swizzle on a byte address: bits [4,7) ^= bits [7,10). */
static uint32_t sw128(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

/* K-major, 128B swizzle, bf16 (T = 8 elements per 16 bytes):
 * ((8,m),(T,2k)) : ((8T,SBO),(1,T)) in elements, i.e. row r at 128 bytes inside an 8-row
 * group, groups SBO bytes apart; k contiguous inside the 128-byte row. */
static uint32_t model_kmajor(uint64_t d, uint32_t mn, uint32_t k) {
  desc_t x = decode(d);
  uint32_t off = (mn % 8) * 128 + (mn / 8) * x.sbo + (k % 8) * 2 + (k / 8) * 16;
  return sw128(x.start + off);
}

/* MN-major, 128B swizzle, bf16: ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO)) in elements, i.e. 64
 * MN-contiguous elements per 128-byte row, 64-element blocks LBO bytes apart; k rows 128
 * bytes apart inside an 8-row group, groups SBO bytes apart. */
static uint32_t model_mnmajor(uint64_t d, uint32_t mn, uint32_t k) {
  desc_t x = decode(d);
  uint32_t off = (mn % 64) * 2 + (mn / 64) * x.lbo + (k % 8) * 128 + (k / 8) * x.sbo;
  return sw128(x.start + off);
}

CF_TEST(wgmma_desc_fields_at_documented_bits) {
  /* PTX ISA example (MN-major, no swizzle, bf16): LBO 128*sizeof(bf16) encodes as 16, SBO
   * 64*sizeof(bf16) as 8. Ours always sets the 128-byte swizzle mode (1 at bits 62-63). */
  uint64_t d = cf_wg_desc(0x1F400, 256, 128);
  CF_CHECK_EQ(d & 0x3FFF, (uint64_t)(0x1F400 >> 4));
  CF_CHECK_EQ((d >> 16) & 0x3FFF, (uint64_t)16);
  CF_CHECK_EQ((d >> 32) & 0x3FFF, (uint64_t)8);
  CF_CHECK_EQ((d >> 49) & 7, (uint64_t)0);
  CF_CHECK_EQ(d >> 62, (uint64_t)1);
  /* Reserved bits stay zero. */
  CF_CHECK_EQ(d & ((3ull << 14) | (3ull << 30) | (0x7ull << 46) | (0x3FFull << 52)), (uint64_t)0);
  /* The largest shared address of an H100 CTA (227 KiB) still fits the 14-bit field. */
  CF_CHECK_EQ(decode(cf_wg_desc(227 * 1024 - 16, 0, 0)).start, (uint32_t)(227 * 1024 - 16));
}

CF_TEST(wgmma_tile_swizzle_is_a_bijection_with_contiguous_16B_chunks) {
  const uint32_t rows = 128, bytes = rows * 256;
  unsigned char *seen = calloc(bytes, 1);
  for (uint32_t r = 0; r < rows; r++)
    for (uint32_t c = 0; c < 128; c++) {
      uint32_t o = cf_wg_tile_off(rows, r, c);
      CF_CHECK_LT(o, bytes);
      CF_CHECK_EQ(o % 2, (uint32_t)0);
      CF_CHECK_EQ(seen[o], 0);
      seen[o] = 1;
      /* cp.async writes 8 consecutive columns (c % 8 == 0) as one 16-byte chunk. */
      CF_CHECK_EQ(o - cf_wg_tile_off(rows, r, c & ~7u), (c & 7u) * 2);
      CF_CHECK_EQ(cf_wg_tile_off(rows, r, c & ~7u) % 16, (uint32_t)0);
    }
  free(seen);
  /* Each 64-column block is rows x 128 bytes, a whole number of 1024-byte atoms. */
  CF_CHECK_EQ(cf_wg_tile_off(rows, 0, 64), rows * 128);
  /* Swizzle: chunk c of row r sits at chunk c ^ (r % 8). */
  CF_CHECK_EQ(cf_wg_tile_off(rows, 3, 8), 3u * 128 + ((1u ^ 3u) << 4));
}

/* S = Q·Kᵀ: both operands K-major. For every reduction step and every (row, k) of the
 * 64 x 16 A slice of each warpgroup and the 128 x 16 B slice, the model's address from the
 * kernel's descriptor is where the kernel's loader put that element. */
CF_TEST(wgmma_kmajor_descriptors_address_what_the_loader_wrote) {
  const uint32_t q = 0x400, kt = 0x400 + 128 * 256, rows = 128; /* 1024-aligned tiles */
  for (uint32_t ks = 0; ks < 8; ks++) {
    for (uint32_t wg = 0; wg < 2; wg++) {
      uint64_t da = cf_wg_desc_kmajor(q + wg * 64 * 128, rows, ks);
      for (uint32_t m = 0; m < 64; m++)
        for (uint32_t k = 0; k < 16; k++)
          CF_CHECK_MSG(model_kmajor(da, m, k) == q + cf_wg_tile_off(rows, 64 * wg + m, 16 * ks + k),
                       "Q: ks %u wg %u row %u k %u", ks, wg, m, k);
    }
    uint64_t db = cf_wg_desc_kmajor(kt, rows, ks);
    for (uint32_t n = 0; n < 128; n++)
      for (uint32_t k = 0; k < 16; k++)
        CF_CHECK_MSG(model_kmajor(db, n, k) == kt + cf_wg_tile_off(rows, n, 16 * ks + k),
                     "K: ks %u key %u k %u", ks, n, k);
  }
}

/* O = P·V: V is B in MN-major ("transposed") form: B(k = key, n = head-dim column). */
CF_TEST(wgmma_mnmajor_descriptor_addresses_v_as_loaded) {
  const uint32_t v = 0x400 + 3 * 128 * 256, rows = 128;
  for (uint32_t ks = 0; ks < rows / 16; ks++) {
    uint64_t d = cf_wg_desc_mnmajor(v, rows, ks);
    for (uint32_t n = 0; n < 128; n++)
      for (uint32_t k = 0; k < 16; k++)
        CF_CHECK_MSG(model_mnmajor(d, n, k) == v + cf_wg_tile_off(rows, 16 * ks + k, n),
                     "V: ks %u col %u key %u", ks, n, k);
  }
}

/* The descriptor model also catches a wrong layout: a tile stored without swizzle is not what
 * the swizzled descriptor reads (guards against a model that agrees with anything). */
CF_TEST(wgmma_model_rejects_an_unswizzled_tile) {
  uint64_t d = cf_wg_desc_kmajor(0x400, 128, 1);
  int mismatches = 0;
  for (uint32_t m = 0; m < 64; m++)
    for (uint32_t k = 0; k < 16; k++)
      mismatches += model_kmajor(d, m, k) != 0x400 + m * 128 + (16 + k) * 2;
  CF_CHECK_GT(mismatches, 0);
}

/* Register fragments: the accumulator and A-operand mappings cover their matrices exactly
 * once, and P packed from S accumulators (cf_wg_p_src) lands on the same (row, key). */
CF_TEST(wgmma_fragments_cover_and_p_reuses_s_in_place) {
  enum { N = 128 };
  static unsigned char acc[64][N], a[64][16];
  memset(acc, 0, sizeof acc);
  memset(a, 0, sizeof a);
  for (uint32_t t = 0; t < 128; t++) {
    for (uint32_t i = 0; i < N / 2; i++) {
      uint32_t r = cf_wg_acc_row(t, i), c = cf_wg_acc_col(t, i);
      CF_CHECK(r < 64 && c < N);
      CF_CHECK_EQ(acc[r][c]++, 0);
    }
    for (uint32_t j = 0; j < 4; j++)
      for (uint32_t h = 0; h < 2; h++) {
        uint32_t r = cf_wg_a_row(t, j), c = cf_wg_a_col(t, j, h);
        CF_CHECK(r < 64 && c < 16);
        CF_CHECK_EQ(a[r][c]++, 0);
      }
    for (uint32_t ks = 0; ks < N / 16; ks++)
      for (uint32_t j = 0; j < 4; j++)
        for (uint32_t h = 0; h < 2; h++) {
          uint32_t i = cf_wg_p_src(ks, j, h);
          CF_CHECK_EQ(cf_wg_acc_row(t, i), cf_wg_a_row(t, j));
          CF_CHECK_EQ(cf_wg_acc_col(t, i), 16 * ks + cf_wg_a_col(t, j, h));
        }
  }
  /* CUTLASS's CuTe form of the same layouts (CLayout_64xN, and ALayout_64x16 = CLayout_64x16
   * for 16-bit A): thread (t0, t1, t2) = t % 4, t / 4 % 8, t / 32, value (v0, v1, v2) =
   * v % 2, v / 2 % 2, v / 4; offset 128 t0 + t1 + 16 t2 + 64 v0 + 8 v1 + 512 v2 = m + 64 n. */
  for (uint32_t t = 0; t < 128; t++)
    for (uint32_t v = 0; v < N / 2; v++) {
      uint32_t off = 128 * (t % 4) + (t / 4 % 8) + 16 * (t / 32) + 64 * (v % 2) + 8 * (v / 2 % 2) +
                     512 * (v / 4);
      CF_CHECK_EQ(cf_wg_acc_row(t, v), off % 64);
      CF_CHECK_EQ(cf_wg_acc_col(t, v), off / 64);
      if (v < 8) { /* A: register j = v / 2 holds values 2j (low) and 2j + 1 (high) */
        CF_CHECK_EQ(cf_wg_a_row(t, v / 2), off % 64);
        CF_CHECK_EQ(cf_wg_a_col(t, v / 2, v % 2), off / 64);
      }
    }
  /* The kernel's causal mask splits the column into a per-thread part and a compile-time
   * part: cf_wg_acc_col(t, i) == cf_wg_acc_col(t, 0) + 8 (i / 4) + i % 2. */
  for (uint32_t t = 0; t < 128; t++)
    for (uint32_t i = 0; i < N / 2; i++)
      CF_CHECK_EQ(cf_wg_acc_col(t, i), cf_wg_acc_col(t, 0) + 8 * (i >> 2) + (i & 1));
  /* Per warp, the accumulator is the mma.sync m16n8 C layout: lane 5 holds rows 1 and 9,
   * columns 2 and 3 of each 8-column tile (the PTX figure for wgmma .m64nNk16 D). */
  CF_CHECK_EQ(cf_wg_acc_row(32 + 5, 0), 16u + 1);
  CF_CHECK_EQ(cf_wg_acc_row(32 + 5, 2), 16u + 9);
  CF_CHECK_EQ(cf_wg_acc_col(32 + 5, 1), 3u);
  CF_CHECK_EQ(cf_wg_acc_col(32 + 5, 4), 10u);
}

/* Shared memory of the attention kernel: for every 16-byte-aligned dynamic base the driver may
 * hand out, the five tiles start on 1024-byte boundaries (swizzle atoms, base_offset 0 in every
 * descriptor), the mbarriers are 8-byte aligned, and everything stays inside the allocation;
 * the total plus the 1 KiB the hardware reserves per block fits an SM. The TMA boxes fill the
 * tiles exactly as cf_wg_tile_off lays them out, and expect_tx counts both boxes. */
CF_TEST(wgmma_shared_memory_and_tma_boxes_fit_the_tiles) {
  CF_CHECK_LE(CF_WG_SMEM_BYTES + 1024u, CF_WG_SMEM_MAX_SM90);
  for (uint32_t raw = 0; raw < 4096; raw += 16) {
    uint32_t sq = cf_wg_smem_tiles(raw);
    CF_CHECK_EQ(sq % 1024, 0u);
    CF_CHECK_GE(sq, raw);
    for (uint32_t t = 0; t < 5; t++) CF_CHECK_EQ((sq + t * CF_WG_TILE_BYTES) % 1024, 0u);
    CF_CHECK_EQ((sq + CF_WG_BAR_OFF) % 8, 0u);
    CF_CHECK_LE(sq + CF_WG_BAR_OFF + 4 * 8, raw + CF_WG_SMEM_BYTES);
    /* the K/V descriptors of every step address only their own tile */
    for (uint32_t ks = 0; ks < 8; ks++) {
      uint32_t tile = sq + 4 * CF_WG_TILE_BYTES;
      uint64_t d = cf_wg_desc_mnmajor(tile, 128, ks);
      CF_CHECK_LT(model_mnmajor(d, 127, 15), tile + CF_WG_TILE_BYTES);
      d = cf_wg_desc_kmajor(tile, 128, ks);
      CF_CHECK_LT(model_kmajor(d, 127, 15), tile + CF_WG_TILE_BYTES);
    }
  }
  /* a box row is the 128-byte swizzle span; two boxes are one tile (what expect_tx announces) */
  CF_CHECK_EQ(CF_WG_TMA_BOX_COLS * 2u, 128u);
  CF_CHECK_EQ(2u * CF_WG_TMA_BOX_COLS * CF_WG_TMA_BOX_ROWS * 2u, CF_WG_TILE_BYTES);
  /* the second box starts where cf_wg_tile_off puts column 64, and inside a box the TMA's
   * SWIZZLE_128B order (16-byte chunk c of row r at c ^ (r % 8), box rows 128 bytes apart) is
   * the tiles' */
  CF_CHECK_EQ(cf_wg_tile_off(CF_WG_TMA_BOX_ROWS, 0, CF_WG_TMA_BOX_COLS), CF_WG_TILE_BYTES / 2);
  for (uint32_t b = 0; b < 2; b++)
    for (uint32_t r = 0; r < CF_WG_TMA_BOX_ROWS; r++)
      for (uint32_t c = 0; c < CF_WG_TMA_BOX_COLS; c++)
        CF_CHECK_EQ(cf_wg_tile_off(128, r, b * 64 + c),
                    b * (CF_WG_TILE_BYTES / 2) + sw128(r * 128 + c * 2));
}

/* ---- the kernel's schedule, simulated for one query row ----
 *
 * A scalar model of cf_attn_wgmma_kernel's two loops (same control flow, same schedule
 * functions from cf_wgmma_layout.h): K/V tile loads into the two stages with cp.async group
 * accounting, S of tile j reading K_j's stage, P·V of tile j-1 reading V_{j-1}'s stage and the
 * P register set of tile j-1, the online softmax with O rescaled after the P·V it must include,
 * per-warpgroup skipping, diagonal masking, split-KV ranges. Each read checks that its stage
 * holds the expected, completed tile; the row's (m, l, O) for its split must equal a direct
 * computation over the keys the split owns. Scores and values are one number per key. */
typedef struct {
  int k[2], v[2];      /* tile id in each stage (-1: none) */
  int kgrp[2], vgrp[2]; /* cp.async group that loads it */
  int groups, done;    /* groups issued; groups [0, done) complete */
  double m, l, o;
  double pm[2];        /* the max each P register set's values are relative to */
  int ptile[2];        /* the tile each P set holds */
  int loads[4], waits[4]; /* TMA variant: loads into / waits on mbarriers K0, K1, V0, V1 */
  int bad;
} sim_t;

static double sim_score(int key) { return sin(key * 0.37) * 3.0 + cos(key * 0.011) * 2.0; }
static double sim_value(int key) { return cos(key * 0.73) + 0.01 * (key % 17); }

static void sim_load(sim_t *s, int isk, int tile) {
  int st = cf_wg_stage(tile);
  s->loads[(isk ? 0 : 2) + st]++;
  if (isk) { s->k[st] = tile; s->kgrp[st] = s->groups; }
  else { s->v[st] = tile; s->vgrp[st] = s->groups; }
}
static void sim_commit_wait(sim_t *s, int keep) { s->groups++; s->done = s->groups - keep; }
/* The TMA variant's mbarrier wait: one per load, in load order (the parity bit then matches). */
static void sim_wait_bar(sim_t *s, int b) {
  if (++s->waits[b] > s->loads[b]) s->bad++;
}
static void sim_check_k(sim_t *s, int tile) {
  int st = cf_wg_stage(tile);
  if (s->k[st] != tile || s->kgrp[st] >= s->done) s->bad++;
}
static void sim_check_v(sim_t *s, int tile) {
  int st = cf_wg_stage(tile);
  if (s->v[st] != tile || s->vgrp[st] >= s->done) s->bad++;
}

/* Softmax of tile j for a row at pos (warpgroup's first position wg_first, keys < tk exist):
 * updates m, l and returns the rescale factor; P of the tile is relative to the new m. */
static double sim_softmax(sim_t *s, int j, int pos, int wg_first, int tk, int *pset) {
  int kb = j * 128, mask = cf_wg_needs_mask(j, wg_first);
  double mx = -INFINITY;
  for (int c = 0; c < 128; c++) {
    int key = kb + c;
    if (mask && key > pos) continue;
    mx = fmax(mx, key < tk ? sim_score(key) : 0.0); /* zero-filled rows past tk score 0 */
  }
  double mn = fmax(s->m, mx), b = mn == -INFINITY ? 0 : mn;
  double al = exp(s->m - b), rs = 0;
  for (int c = 0; c < 128; c++) {
    int key = kb + c;
    if (mask && key > pos) continue;
    rs += exp((key < tk ? sim_score(key) : 0.0) - b);
  }
  s->m = mn;
  s->l = s->l * al + rs;
  if (pset) { s->pm[*pset] = b; s->ptile[*pset] = j; }
  return al;
}
static void sim_pv(sim_t *s, int j, int pset, int pos, int wg_first, int tk) {
  if (s->ptile[pset] != j) s->bad++;
  int kb = j * 128, mask = cf_wg_needs_mask(j, wg_first);
  for (int c = 0; c < 128; c++) {
    int key = kb + c;
    if (mask && key > pos) continue;
    s->o += exp((key < tk ? sim_score(key) : 0.0) - s->pm[pset]) * (key < tk ? sim_value(key) : 0.0);
  }
}

static void sim_cta_row(int overlap, int t0, int tq, int nsplit, int z, int q0, int wg, int row,
                        sim_t *s) {
  int qend = q0 + 128 < tq ? q0 + 128 : tq, tk = t0 + tq, jbeg, ntiles;
  cf_wg_split(cf_wg_ntiles(t0, qend), nsplit, z, &jbeg, &ntiles);
  int wg_first = t0 + q0 + 64 * wg, pos = wg_first + row, nw = cf_wg_needed_end(ntiles, wg_first);
  memset(s, 0, sizeof *s);
  s->k[0] = s->k[1] = s->v[0] = s->v[1] = -1;
  s->ptile[0] = s->ptile[1] = -1;
  s->m = -INFINITY;
  if (jbeg >= ntiles) return;
  sim_load(s, 1, jbeg);
  if (!overlap) sim_load(s, 0, jbeg);
  s->groups++; /* commit (Q + first tiles) */
  if (!overlap) {
    for (int j = jbeg; j < ntiles; j++) {
      if (j + 1 < ntiles) {
        sim_load(s, 1, j + 1);
        sim_load(s, 0, j + 1);
        sim_commit_wait(s, 1);
      } else {
        s->done = s->groups;
      }
      sim_wait_bar(s, cf_wg_stage(j)); /* TMA: K_j, V_j */
      sim_wait_bar(s, 2 + cf_wg_stage(j));
      if (j < nw) {
        int ps = 0;
        sim_check_k(s, j);
        double al = sim_softmax(s, j, pos, wg_first, tk, &ps);
        s->o *= al;
        sim_check_v(s, j);
        sim_pv(s, j, 0, pos, wg_first, tk);
      }
    }
    return;
  }
  /* load_and_wait(j) */
#define SIM_LW(j)                                            \
  do {                                                       \
    if ((j) + 1 < ntiles) sim_load(s, 1, (j) + 1);           \
    sim_load(s, 0, (j));                                     \
    sim_commit_wait(s, 1);                                   \
    sim_wait_bar(s, cf_wg_stage(j));                         \
    if ((j) > jbeg) sim_wait_bar(s, 2 + cf_wg_stage((j) - 1)); \
  } while (0)
  SIM_LW(jbeg);
  sim_check_k(s, jbeg);
  int p0 = cf_wg_pset(jbeg, jbeg);
  sim_softmax(s, jbeg, pos, wg_first, tk, &p0);
  for (int j = jbeg + 1; j < ntiles; j++) {
    SIM_LW(j);
    if (j < nw) {
      sim_check_k(s, j);
      sim_check_v(s, j - 1);
      /* The P·V of tile j-1 is in flight while the softmax of tile j writes the new P: model
       * its register reads as happening last (at the wait), after that write. */
      int pn = cf_wg_pset(j, jbeg);
      double al = sim_softmax(s, j, pos, wg_first, tk, &pn);
      sim_pv(s, j - 1, cf_wg_pset(j - 1, jbeg), pos, wg_first, tk);
      s->o *= al; /* after the P·V of tile j-1 was added */
    } else if (j - 1 < nw) {
      sim_check_v(s, j - 1);
      sim_pv(s, j - 1, cf_wg_pset(j - 1, jbeg), pos, wg_first, tk);
    }
  }
#undef SIM_LW
  s->done = s->groups;
  sim_wait_bar(s, 2 + cf_wg_stage(ntiles - 1));
  if (ntiles - 1 < nw) {
    sim_check_v(s, ntiles - 1);
    sim_pv(s, ntiles - 1, cf_wg_pset(ntiles - 1, jbeg), pos, wg_first, tk);
  }
}

CF_TEST(wgmma_schedule_model_matches_direct_softmax_per_split) {
  static const int shapes[][2] = {{1, 0},   {2, 255}, {128, 128}, {129, 0},  {257, 0},
                                  {300, 4096}, {513, 777}, {64, 4000}, {1000, 100}, {96, 5000}};
  int checked = 0, bad = 0;
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
    int tq = shapes[si][0], t0 = shapes[si][1], tk = t0 + tq;
    for (int nsplit = 1; nsplit <= 8; nsplit *= 2)
      for (int overlap = 0; overlap < 2; overlap++)
        for (int q0 = 0; q0 < tq; q0 += 128)
          for (int wg = 0; wg < 2; wg++)
            for (int row = 0; row < 64; row += 7) {
              int i = q0 + 64 * wg + row;
              if (i >= tq) continue; /* padding rows are computed but never stored */
              int pos = t0 + i, qend = q0 + 128 < tq ? q0 + 128 : tq;
              double M = -INFINITY, L = 0, O = 0; /* combine of the splits, like the kernel's */
              for (int z = 0; z < nsplit; z++) {
                sim_t s;
                sim_cta_row(overlap, t0, tq, nsplit, z, q0, wg, row, &s);
                bad += s.bad;
                for (int b = 0; b < 4; b++) bad += s.loads[b] != s.waits[b]; /* all waited once */
                /* direct: keys this split owns that the row sees */
                int jbeg, jend;
                cf_wg_split(cf_wg_ntiles(t0, qend), nsplit, z, &jbeg, &jend);
                double m = -INFINITY, l = 0, o = 0;
                for (int key = jbeg * 128; key < jend * 128 && key <= pos; key++)
                  m = fmax(m, sim_score(key));
                for (int key = jbeg * 128; key < jend * 128 && key <= pos; key++) {
                  l += exp(sim_score(key) - m);
                  o += exp(sim_score(key) - m) * sim_value(key);
                }
                int ok = (m == -INFINITY) ? (s.l == 0 && s.o == 0)
                                          : (fabs(s.m - m) < 1e-12 && fabs(s.l - l) <= 1e-9 * l &&
                                             fabs(s.o - o) <= 1e-9 * (fabs(o) + l));
                CF_CHECK_MSG(ok, "overlap %d Tq %d t0 %d split %d/%d q0 %d wg %d row %d: m %g/%g l %g/%g o %g/%g",
                             overlap, tq, t0, z, nsplit, q0, wg, row, s.m, m, s.l, l, s.o, o);
                if (s.m != -INFINITY) {
                  double Mn = fmax(M, s.m);
                  L = L * exp(M - Mn) + s.l * exp(s.m - Mn);
                  O = O * exp(M - Mn) + s.o * exp(s.m - Mn);
                  M = Mn;
                }
              }
              /* All splits together see exactly keys [0, pos]. */
              double m = -INFINITY, l = 0, o = 0;
              for (int key = 0; key <= pos; key++) m = fmax(m, sim_score(key));
              for (int key = 0; key <= pos; key++) {
                l += exp(sim_score(key) - m);
                o += exp(sim_score(key) - m) * sim_value(key);
              }
              CF_CHECK_MSG(fabs(O / L - o / l) < 1e-9, "combined Tq %d t0 %d nsplit %d row %d: %g vs %g",
                           tq, t0, nsplit, i, O / L, o / l);
              checked++;
              (void)tk;
            }
  }
  CF_CHECK_EQ(bad, 0); /* every read found its tile in its stage, loaded and complete */
  CF_CHECK_GT(checked, 1000);
}
