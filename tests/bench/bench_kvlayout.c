/* bench_kvlayout — what an engine's KV layout costs the daemon's copies into and out of its
 * blocks (lib/ipc cf_kvmap), as ratios to the dense vLLM NHD layout and to memcpy of the same
 * bytes, measured in the same run.
 *
 * 4096 tokens of the demo model's KV shape (2 KV heads x 64, f32), blocks of 16 tokens at
 * shuffled block ids, best of 7 per row:
 *   scatter      a loaded cell into the blocks (raw bytes: what every load does)
 *   scatter_f32  computed rows into the blocks (what every computed cell does)
 *   gather_f32   the blocks into the compute's staging (context of computed chunks)
 * for the layouts: nhd (dense; one run per block), hnd, vllm-cpu (vLLM's CPU float32 layout: K
 * dimension-major, so K moves element by element), shard (one TP rank's 1 of the 2 heads).
 *   usage: bench_kvlayout [tokens]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ipc/cf_kvmap.h"
#include "util/cf_err.h"

enum { BS = 16, NH = 2, HD = 64, E = 4 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct { const char *name; int variant; } lay_t;

/* Layout `variant` over one buffer `buf` (2 planes' worth): K at k0, V at v0. */
static int make(int variant, int nb, uint8_t *buf, cf_kvmap_t *m) {
  cf_kv_layout_t L;
  if (cf_kv_layout_init(&L, 1, nb, BS, variant == 3 ? 1 : NH, HD, CF_DT_F32)) return -1;
  uint64_t voff = (uint64_t)nb * BS * NH * HD * E;
  if (variant == 1) { /* HND [blocks][heads][tokens][dim] */
    L.token_stride = HD * E; L.head_stride = BS * HD * E; L.block_stride = NH * BS * HD * E;
  } else if (variant == 2) { /* vLLM CPU f32: [blocks][heads][BS][2*HD], K dim-major, V token-major */
    uint64_t blk = NH * BS * 2 * HD * E;
    L.block_stride = blk; L.token_stride = E; L.head_stride = BS * 2 * HD * E; L.dim_stride = BS * E;
    L.vs = (cf_kv_strides_t){blk, HD * E, BS * 2 * HD * E, E};
    voff = BS * HD * E;
  } else if (variant == 3) { /* shard: head 1 of 2 */
    L.head0 = 1; L.model_heads = NH;
  }
  uint8_t *k[1] = {buf}, *v[1] = {buf + voff};
  return cf_kvmap_view(m, &L, k, v);
}

int main(int argc, char **argv) {
  int T = argc > 1 ? atoi(argv[1]) : 4096;
  if (T < BS) T = BS;
  int nb = (T + BS - 1) / BS, pool = nb * 2;
  size_t row = NH * HD, flat = (size_t)T * row;
  size_t bytes = (size_t)pool * BS * row * E * 2;
  uint8_t *buf = calloc(1, bytes);
  float *k = malloc(flat * 4), *v = malloc(flat * 4), *k2 = malloc(flat * 4), *v2 = malloc(flat * 4);
  int32_t *blocks = malloc(sizeof(int32_t) * nb);
  if (!buf || !k || !v || !k2 || !v2 || !blocks) return 1;
  for (size_t i = 0; i < flat; i++) { k[i] = (float)i; v[i] = -(float)i; }
  for (int i = 0; i < nb; i++) blocks[i] = (i * 7919) % pool; /* pool is even, 7919 odd prime: a permutation of a subset */
  /* memcpy of the same bytes (K and V, all rows) */
  double mc = 1e9;
  for (int rep = 0; rep < 7; rep++) {
    double t = now();
    memcpy(k2, k, flat * 4);
    memcpy(v2, v, flat * 4);
    t = now() - t;
    if (t < mc) mc = t;
  }
  lay_t lays[] = {{"nhd", 0}, {"hnd", 1}, {"vllm-cpu", 2}, {"shard", 3}};
  const char *ops[] = {"scatter", "scatter_f32", "gather_f32"};
  double base[3] = {0};
  printf("bench_kvlayout: %d tokens x %d heads x %d dims f32, blocks of %d; memcpy %.2f GB/s\n", T, NH, HD, BS,
         2.0 * flat * 4 / mc / 1e9);
  printf("%-10s %-12s %10s %12s %12s\n", "layout", "op", "GB/s", "x memcpy", "time / nhd");
  for (int li = 0; li < 4; li++) {
    cf_kvmap_t m;
    if (make(lays[li].variant, pool, buf, &m)) { fprintf(stderr, "layout %s: %s\n", lays[li].name, cf_errmsg()); return 1; }
    for (int op = 0; op < 3; op++) {
      double best = 1e9;
      for (int rep = 0; rep < 7; rep++) {
        double t = now();
        if (op == 0) cf_kvmap_scatter(&m, 0, blocks, 0, T, k, v);
        else if (op == 1) cf_kvmap_scatter_f32(&m, 0, blocks, 0, T, k, v);
        else cf_kvmap_gather_f32(&m, 0, blocks, 0, T, k2, v2);
        t = now() - t;
        if (t < best) best = t;
      }
      /* the bytes the engine's blocks take or give: a shard moves half the rows' bytes */
      double moved = 2.0 * T * (lays[li].variant == 3 ? HD : row) * E;
      if (li == 0) base[op] = best;
      printf("%-10s %-12s %10.2f %12.2f %12.2f\n", lays[li].name, ops[op], moved / best / 1e9,
             (moved / best) / (2.0 * flat * 4 / mc), best / base[op]);
    }
    cf_kvmap_close(&m);
  }
  free(buf); free(k); free(v); free(k2); free(v2); free(blocks);
  return 0;
}
