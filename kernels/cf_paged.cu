// cf_paged — scatter/gather of KV rows into/out of a paged cache (vLLM layout by default).
#include "kernels/cf_paged.h"

#include <string.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

// One work unit = VEC contiguous bf16 of one (plane, token, head). Units are numbered with
// the head_dim chunk fastest, so a warp's accesses are contiguous on both sides when the
// layout is. UNROLL independent loads are issued before the stores: over PCIe (zero-copy)
// latency is ~1-2 us, so many requests must be in flight per thread.
template <typename V, bool SCATTER, int UNROLL>
__global__ void cf_paged_kernel(cf_paged_args_t a) {
  constexpr int VEC = sizeof(V) / 2;
  const cf_paged_layout_t L = a.layout;
  int per_head = L.head_dim / VEC;
  int64_t per_tok = (int64_t)L.n_kv_heads * per_head;
  int64_t n = 2 * (int64_t)a.T * per_tok;
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t base = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; base < n;
       base += stride * UNROLL) {
    V val[UNROLL];
    int64_t coff[UNROLL], poff[UNROLL];
    bf16 *cptr[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      int64_t i = base + u * stride;
      poff[u] = -1;
      if (i >= n) continue;
      int plane = (int)(i / ((int64_t)a.T * per_tok));
      int64_t r = i - plane * (int64_t)a.T * per_tok;
      int t = (int)(r / per_tok);
      int64_t r2 = r - t * per_tok;
      int h = (int)(r2 / per_head), d = (int)(r2 - (int64_t)h * per_head) * VEC;
      int tok = a.tok0 + t;
      int blk = a.block_table[tok / L.block_size];
      if (blk < 0 || blk >= L.num_blocks) continue;
      poff[u] = plane * L.kv_stride + blk * L.block_stride +
                (int64_t)(tok % L.block_size) * L.token_stride + h * L.head_stride + d;
      cptr[u] = (bf16 *)(plane ? a.v : a.k);
      coff[u] = (int64_t)t * a.row_stride + (int64_t)h * L.head_dim + d;
      if (SCATTER) val[u] = *(const V *)(cptr[u] + coff[u]);
      else val[u] = *(const V *)((const bf16 *)a.cache + poff[u]);
    }
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
      if (poff[u] < 0) continue;
      if (SCATTER) *(V *)((bf16 *)a.cache + poff[u]) = val[u];
      else *(V *)(cptr[u] + coff[u]) = val[u];
    }
  }
}

// launchers

extern "C" void cf_paged_layout_vllm(cf_paged_layout_t *l, int num_blocks, int block_size,
                                     int n_kv_heads, int head_dim) {
  l->num_blocks = num_blocks;
  l->block_size = block_size;
  l->n_kv_heads = n_kv_heads;
  l->head_dim = head_dim;
  l->head_stride = head_dim;
  l->token_stride = (int64_t)n_kv_heads * head_dim;
  l->block_stride = l->token_stride * block_size;
  l->kv_stride = l->block_stride * num_blocks;
}

extern "C" int64_t cf_paged_layout_span(const cf_paged_layout_t *l) {
  return l->kv_stride + (int64_t)(l->num_blocks - 1) * l->block_stride +
         (int64_t)(l->block_size - 1) * l->token_stride +
         (int64_t)(l->n_kv_heads - 1) * l->head_stride + l->head_dim;
}

static int cf__paged_check(const cf_paged_args_t *a, const char *who) {
  CF_REQUIRE(a && a->cache && a->k && a->v, "%s: cache, k and v are required", who);
  const cf_paged_layout_t *L = &a->layout;
  CF_REQUIRE(L->num_blocks > 0 && L->block_size > 0 && L->n_kv_heads > 0 && L->head_dim > 0,
             "%s: layout num_blocks=%d block_size=%d n_kv_heads=%d head_dim=%d", who,
             L->num_blocks, L->block_size, L->n_kv_heads, L->head_dim);
  CF_REQUIRE(L->kv_stride > 0 && L->block_stride > 0 && L->token_stride > 0 &&
                 L->head_stride >= L->head_dim,
             "%s: layout strides must be positive and head_stride >= head_dim", who);
  CF_REQUIRE(a->tok0 >= 0 && a->T >= 0 && a->ctas >= 0, "%s: tok0=%d T=%d ctas=%d", who, a->tok0,
             a->T, a->ctas);
  CF_REQUIRE(a->row_stride >= (int64_t)L->n_kv_heads * L->head_dim,
             "%s: row_stride %lld < n_kv_heads*head_dim %d", who, (long long)a->row_stride,
             L->n_kv_heads * L->head_dim);
  if (a->T > 0) {
    int need = (a->tok0 + a->T - 1) / L->block_size + 1;
    CF_REQUIRE(a->block_table && a->n_table >= need,
               "%s: block table has %d entries, tokens [%d, %d) need %d", who, a->n_table,
               a->tok0, a->tok0 + a->T, need);
  }
  return 0;
}

template <bool SCATTER>
static int cf__paged_launch(const cf_paged_args_t *a, cudaStream_t s) {
  const cf_paged_layout_t *L = &a->layout;
  bool v16 = L->head_dim % 8 == 0 && L->kv_stride % 8 == 0 && L->block_stride % 8 == 0 &&
             L->token_stride % 8 == 0 && L->head_stride % 8 == 0 && a->row_stride % 8 == 0 &&
             (uintptr_t)a->cache % 16 == 0 && (uintptr_t)a->k % 16 == 0 &&
             (uintptr_t)a->v % 16 == 0;
  int64_t n = 2 * (int64_t)a->T * L->n_kv_heads * (v16 ? L->head_dim / 8 : L->head_dim);
  if (n == 0) return 0;
  // 4 units per thread in flight; enough blocks for ~16 resident blocks of 256 per SM.
  unsigned grid = cf_div_up(n, 256 * 4);
  if (grid > 132 * 8) grid = 132 * 8;
  if (a->ctas > 0 && grid > (unsigned)a->ctas) grid = (unsigned)a->ctas;
  if (v16) cf_paged_kernel<uint4, SCATTER, 4><<<grid, 256, 0, s>>>(*a);
  else cf_paged_kernel<uint16_t, SCATTER, 4><<<grid, 256, 0, s>>>(*a);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_paged_scatter(const cf_paged_args_t *a, cudaStream_t s) {
  int rc = cf__paged_check(a, "cf_paged_scatter");
  return rc ? rc : cf__paged_launch<true>(a, s);
}

extern "C" int cf_paged_gather(const cf_paged_args_t *a, cudaStream_t s) {
  int rc = cf__paged_check(a, "cf_paged_gather");
  return rc ? rc : cf__paged_launch<false>(a, s);
}

extern "C" int cf_paged_load_staged(const cf_paged_args_t *a, const cf_paged_stager_t *st) {
  uint64_t next = 0;
  return cf_paged_load_staged_next(a, st, &next);
}

extern "C" int cf_paged_load_staged_next(const cf_paged_args_t *a, const cf_paged_stager_t *st,
                                         uint64_t *next_slot) {
  int rc = cf__paged_check(a, "cf_paged_load_staged");
  if (rc) return rc;
  CF_REQUIRE(st && st->staging && (uintptr_t)st->staging % 16 == 0,
             "cf_paged_load_staged: stager with a 16-byte aligned staging buffer required");
  int64_t rs = a->row_stride, slot = (st->staging_elems / CF_PAGED_STAGE_SLOTS) / 16 * 8;
  int64_t per = slot / rs;  // tokens per piece: a slot is [K part | V part], slot elems each
  CF_REQUIRE(per >= 1, "cf_paged_load_staged: staging of %lld elements: a slot part of %lld cannot "
             "hold one row of %lld", (long long)st->staging_elems, (long long)slot, (long long)rs);
  int64_t row = (int64_t)a->layout.n_kv_heads * a->layout.head_dim;
  // A store cell ([K rows][V rows], V right after K) that fits one piece goes in ONE copy: a
  // restore enqueues one cell per call, so every API call per cell counts.
  bool one_copy = a->T <= per && a->v == a->k + (int64_t)a->T * rs;
  for (int64_t t = 0; t < a->T; t += per) {
    int sl = (int)((*next_slot)++ % CF_PAGED_STAGE_SLOTS);
    cf_bf16_t *sk = st->staging + sl * 2 * slot, *sv = one_copy ? sk + (int64_t)a->T * rs : sk + slot;
    int64_t n = a->T - t < per ? a->T - t : per;
    size_t bytes = (size_t)((n - 1) * rs + row) * 2;
    CF_CUDA_TRY(cudaStreamWaitEvent(st->copy, st->freed[sl], 0));  // slot's last scatter done
    if (one_copy) {  // K rows, the gap after the last one, V rows: (2T-1) strides + a row
      CF_CUDA_TRY(cudaMemcpyAsync(sk, a->k, (size_t)((2 * a->T - 1) * rs + row) * 2,
                                  cudaMemcpyHostToDevice, st->copy));
    } else {
      CF_CUDA_TRY(cudaMemcpyAsync(sk, a->k + t * rs, bytes, cudaMemcpyHostToDevice, st->copy));
      CF_CUDA_TRY(cudaMemcpyAsync(sv, a->v + t * rs, bytes, cudaMemcpyHostToDevice, st->copy));
    }
    CF_CUDA_TRY(cudaEventRecord(st->copied[sl], st->copy));
    CF_CUDA_TRY(cudaStreamWaitEvent(st->scatter, st->copied[sl], 0));
    cf_paged_args_t p = *a;
    p.tok0 = a->tok0 + (int)t;
    p.T = (int)n;
    p.k = sk;
    p.v = sv;
    p.ctas = a->ctas > 0 ? a->ctas : 132;
    if ((rc = cf__paged_launch<true>(&p, st->scatter))) return rc;
    CF_CUDA_TRY(cudaEventRecord(st->freed[sl], st->scatter));
  }
  return 0;
}

// Walk the contiguous runs of a scatter (as cf_paged_scatter_memcpy copies them) and hand each
// (dst, src, bytes) to `emit`; stops at the first non-zero return.
template <typename F>
static int cf__paged_runs(const cf_paged_args_t *a, const int32_t *table, F emit) {
  const cf_paged_layout_t *L = &a->layout;
  int64_t row = (int64_t)L->n_kv_heads * L->head_dim;
  bool dense = L->head_stride == L->head_dim && L->token_stride == row && a->row_stride == row;
  for (int plane = 0; plane < 2; plane++) {
    const bf16 *src = (const bf16 *)(plane ? a->v : a->k);
    for (int t = 0; t < a->T;) {
      int tok = a->tok0 + t, blk = table[tok / L->block_size];
      int slot = tok % L->block_size;
      int run = dense ? L->block_size - slot : 1;
      if (run > a->T - t) run = a->T - t;
      if (blk >= 0 && blk < L->num_blocks) {
        bf16 *dst = (bf16 *)a->cache + plane * L->kv_stride + blk * L->block_stride +
                    slot * L->token_stride;
        int rc;
        if (dense) {
          if ((rc = emit(dst, src + t * a->row_stride, (size_t)run * row * 2))) return rc;
        } else {
          for (int h = 0; h < L->n_kv_heads; h++)
            if ((rc = emit(dst + h * L->head_stride, src + t * a->row_stride + h * L->head_dim,
                           (size_t)L->head_dim * 2)))
              return rc;
        }
      }
      t += run;
    }
  }
  return 0;
}

extern "C" int cf_paged_load_batched(const cf_paged_args_t *a, const int32_t *table,
                                     const cf_paged_batch_t *sc, cudaStream_t s) {
  int rc = cf__paged_check(a, "cf_paged_load_batched");
  if (rc) return rc;
  CF_REQUIRE(table && sc && sc->dst && sc->src && sc->size && sc->cap > 0,
             "cf_paged_load_batched: host block table and scratch arrays required");
  CF_REQUIRE(s != 0, "cf_paged_load_batched: cudaMemcpyBatchAsync refuses the legacy default "
             "stream; pass a created stream");
  cudaMemcpyAttributes attr;
  memset(&attr, 0, sizeof attr);
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  attr.flags = cudaMemcpyFlagPreferOverlapWithCompute;
  size_t n = 0, idx0 = 0;
  auto flush = [&]() -> int {
    if (n == 0) return 0;
    CF_CUDA_TRY(cudaMemcpyBatchAsync(sc->dst, sc->src, sc->size, n, &attr, &idx0, 1, s));
    n = 0;
    return 0;
  };
  rc = cf__paged_runs(a, table, [&](void *d, const void *src, size_t bytes) -> int {
    sc->dst[n] = d;
    sc->src[n] = src;
    sc->size[n] = bytes;
    return ++n == sc->cap ? flush() : 0;
  });
  return rc ? rc : flush();
}

extern "C" int cf_paged_scatter_memcpy(const cf_paged_args_t *a, const int32_t *table,
                                       cudaStream_t s) {
  int rc = cf__paged_check(a, "cf_paged_scatter_memcpy");
  if (rc) return rc;
  CF_REQUIRE(table, "cf_paged_scatter_memcpy: host block table required");
  return cf__paged_runs(a, table, [&](void *d, const void *src, size_t bytes) -> int {
    CF_CUDA_TRY(cudaMemcpyAsync(d, src, bytes, cudaMemcpyDefault, s));
    return 0;
  });
}
