// cf_moe — routing, pair sorting, gather and combine of a mixture-of-experts MLP (see cf_moe.h).
#include "kernels/cf_moe.h"

#include <math.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// One thread per token: E is at most a few hundred, so plain loops over it are cheap next to
// the expert GEMMs; the selection is K passes of an argmax.
__global__ void cf_moe_route_kernel(const float *logits, int T, int E, int K, int norm_topk,
                                    int32_t *sel, float *w) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const float *p = logits + (int64_t)t * E;
  float mx = -INFINITY, sum = 0.f;
  for (int e = 0; e < E; e++) mx = fmaxf(mx, p[e]);
  for (int e = 0; e < E; e++) sum += expf(p[e] - mx);
  int32_t *se = sel + (int64_t)t * K;
  float *sw = w + (int64_t)t * K, tot = 0.f;
  for (int k = 0; k < K; k++) {
    int best = -1;
    float bv = 0.f;
    for (int e = 0; e < E; e++) {
      bool taken = false;
      for (int q = 0; q < k; q++) taken |= se[q] == e;
      float v = expf(p[e] - mx) / sum;
      if (!taken && (best < 0 || v > bv)) { best = e; bv = v; }
    }
    se[k] = best;
    sw[k] = bv;
    tot += bv;
  }
  if (norm_topk)
    for (int k = 0; k < K; k++) sw[k] /= tot;
  for (int a = 1; a < K; a++)  // ascending expert order, weights alongside
    for (int b = a; b > 0 && se[b - 1] > se[b]; b--) {
      int32_t te = se[b]; se[b] = se[b - 1]; se[b - 1] = te;
      float tw = sw[b]; sw[b] = sw[b - 1]; sw[b - 1] = tw;
    }
}

__global__ void cf_moe_plan_kernel(const int32_t *sel, int T, int E, int K, int32_t *off,
                                   int32_t *pos, int32_t *tok) {
  if (blockIdx.x || threadIdx.x) return;
  int n = T * K;
  for (int e = 0; e <= E; e++) off[e] = 0;
  for (int i = 0; i < n; i++) off[sel[i] + 1]++;
  for (int e = 0; e < E; e++) off[e + 1] += off[e];
  // off[e] is the cursor of expert e while placing; afterwards it is restored by a shift.
  for (int i = 0; i < n; i++) {
    int r = off[sel[i]]++;
    pos[i] = r;
    tok[r] = i / K;
  }
  for (int e = E; e > 0; e--) off[e] = off[e - 1];
  off[0] = 0;
}

__global__ void cf_moe_gather_kernel(bf16 *A, const bf16 *xn, const int32_t *tok, int rows,
                                     int hidden) {
  int64_t n = (int64_t)rows * hidden;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t r = i / hidden, c = i - r * hidden;
    A[i] = xn[(int64_t)tok[r] * hidden + c];
  }
}

__global__ void cf_moe_combine_kernel(float *x, const float *O, const int32_t *pos, const float *w,
                                      int T, int K, int hidden) {
  int64_t n = (int64_t)T * hidden;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int64_t t = i / hidden, c = i - t * hidden;
    float s = 0.f;
    for (int k = 0; k < K; k++) s += O[(int64_t)pos[t * K + k] * hidden + c] * w[t * K + k];
    x[i] += s;
  }
}

extern "C" int cf_moe_route(const float *logits, int T, int E, int K, int norm_topk, int32_t *sel,
                            float *w, cudaStream_t s) {
  CF_REQUIRE(logits && sel && w && T >= 0 && E > 0 && K > 0 && K <= E,
             "cf_moe_route: T=%d E=%d K=%d (need 0 < K <= E) and non-NULL buffers", T, E, K);
  if (!T) return 0;
  cf_moe_route_kernel<<<cf_div_up(T, 128), 128, 0, s>>>(logits, T, E, K, norm_topk, sel, w);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_moe_plan(const int32_t *sel, int T, int E, int K, int32_t *off, int32_t *pos,
                           int32_t *tok, cudaStream_t s) {
  CF_REQUIRE(sel && off && pos && tok && T >= 0 && E > 0 && K > 0,
             "cf_moe_plan: T=%d E=%d K=%d and non-NULL buffers", T, E, K);
  cf_moe_plan_kernel<<<1, 1, 0, s>>>(sel, T, E, K, off, pos, tok);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_moe_gather(cf_bf16_t *A, const cf_bf16_t *xn, const int32_t *tok, int rows,
                             int hidden, cudaStream_t s) {
  CF_REQUIRE(A && xn && tok && rows >= 0 && hidden > 0, "cf_moe_gather: rows=%d hidden=%d", rows,
             hidden);
  if (!rows) return 0;
  int64_t n = (int64_t)rows * hidden;
  int blocks = (int)(cf_div_up(n, 256) < 4096 ? cf_div_up(n, 256) : 4096);
  cf_moe_gather_kernel<<<blocks, 256, 0, s>>>((bf16 *)A, (const bf16 *)xn, tok, rows, hidden);
  CF_LAUNCH_TRY();
  return 0;
}

extern "C" int cf_moe_combine(float *x, const float *O, const int32_t *pos, const float *w, int T,
                              int K, int hidden, cudaStream_t s) {
  CF_REQUIRE(x && O && pos && w && T >= 0 && K > 0 && hidden > 0,
             "cf_moe_combine: T=%d K=%d hidden=%d", T, K, hidden);
  if (!T) return 0;
  int64_t n = (int64_t)T * hidden;
  int blocks = (int)(cf_div_up(n, 256) < 4096 ? cf_div_up(n, 256) : 4096);
  cf_moe_combine_kernel<<<blocks, 256, 0, s>>>(x, O, pos, w, T, K, hidden);
  CF_LAUNCH_TRY();
  return 0;
}
