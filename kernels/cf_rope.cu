// cf_rope — bias + per-head q/k RMSNorm + rotary embedding of the QKV projection output.
#include "kernels/cf_rope.h"

#include <math.h>

#include "kernels/cf_cuda_check.h"
#include "kernels/cf_kernels_common.cuh"

// kernels

#define CF_ROPE_MAX_PAIRS_PER_LANE 8  // head_dim <= 512

// One warp per (token, head slot); lanes hold pairs (i, i + hd/2) in registers so the
// optional per-head norm needs no second pass over memory.
__device__ __forceinline__ float cf_ld(const bf16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float cf_ld(const float *p, int64_t i) { return p[i]; }

template <typename TIN>
__global__ void cf_rope_qkv_kernel(cf_rope_args_t a) {
  int nslot = a.n_heads + 2 * a.n_kv_heads;
  int64_t wid = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (wid >= (int64_t)a.T * nslot) return;
  int t = (int)(wid / nslot), j = (int)(wid % nslot);
  int hd = a.head_dim, half = hd / 2;
  const TIN *src = (const TIN *)a.qkv + ((int64_t)t * nslot + j) * hd;
  const float *b = a.bias ? a.bias + (int64_t)j * hd : nullptr;
  float x1[CF_ROPE_MAX_PAIRS_PER_LANE], x2[CF_ROPE_MAX_PAIRS_PER_LANE];
  float ss = 0.f;
#pragma unroll
  for (int r = 0; r < CF_ROPE_MAX_PAIRS_PER_LANE; r++) {
    int i = lane + 32 * r;
    x1[r] = x2[r] = 0.f;
    if (i < half) {
      x1[r] = cf_ld(src, i) + (b ? b[i] : 0.f);
      x2[r] = cf_ld(src, i + half) + (b ? b[i + half] : 0.f);
      ss += x1[r] * x1[r] + x2[r] * x2[r];
    }
  }
  bf16 *dst;
  if (j >= a.n_heads + a.n_kv_heads) {  // v: bias only
    dst = (bf16 *)a.v + (int64_t)t * a.kv_row_stride + (int64_t)(j - a.n_heads - a.n_kv_heads) * hd;
  } else {
    bool is_q = j < a.n_heads;
    const float *nw = is_q ? a.q_norm : a.k_norm;
    if (nw) {
      float inv = rsqrtf(cf_warp_sum(ss) / (float)hd + a.norm_eps);
#pragma unroll
      for (int r = 0; r < CF_ROPE_MAX_PAIRS_PER_LANE; r++) {
        int i = lane + 32 * r;
        if (i < half) {
          x1[r] = x1[r] * inv * nw[i];
          x2[r] = x2[r] * inv * nw[i + half];
        }
      }
    }
    float pos = (float)(a.pos0 + t);
#pragma unroll
    for (int r = 0; r < CF_ROPE_MAX_PAIRS_PER_LANE; r++) {
      int i = lane + 32 * r;
      if (i < half) {
        float c, s_;
        sincosf(pos * a.inv_freq[i], &s_, &c);  // precise: angles reach 1e5 rad at long context
        float y1 = x1[r] * c - x2[r] * s_, y2 = x2[r] * c + x1[r] * s_;
        x1[r] = y1;
        x2[r] = y2;
      }
    }
    dst = is_q ? (bf16 *)a.q + ((int64_t)t * a.n_heads + j) * hd
               : (bf16 *)a.k + (int64_t)t * a.kv_row_stride + (int64_t)(j - a.n_heads) * hd;
  }
#pragma unroll
  for (int r = 0; r < CF_ROPE_MAX_PAIRS_PER_LANE; r++) {
    int i = lane + 32 * r;
    if (i < half) {
      dst[i] = __float2bfloat16_rn(x1[r]);
      dst[i + half] = __float2bfloat16_rn(x2[r]);
    }
  }
}

// launchers

extern "C" int cf_rope_inv_freq(float *inv_freq, int head_dim, double theta, int llama3,
                                double factor, double low_freq_factor, double high_freq_factor,
                                int orig_max_pos) {
  CF_REQUIRE(inv_freq && head_dim > 0 && head_dim % 2 == 0 && theta > 0,
             "cf_rope_inv_freq: head_dim=%d theta=%g", head_dim, theta);
  CF_REQUIRE(!llama3 || (factor > 0 && high_freq_factor > low_freq_factor && orig_max_pos > 0),
             "cf_rope_inv_freq: llama3 scaling needs factor > 0, high_freq_factor (%g) > "
             "low_freq_factor (%g), original_max_position_embeddings (%d) > 0",
             high_freq_factor, low_freq_factor, orig_max_pos);
  for (int i = 0; i < head_dim / 2; i++) {
    // transformers: base ** (arange(0, dim, 2).float() / dim) in fp32
    float expo = (float)(2 * i) / (float)head_dim;
    double f = 1.0 / pow(theta, (double)expo);
    if (llama3) {
      double low_wl = orig_max_pos / low_freq_factor, high_wl = orig_max_pos / high_freq_factor;
      double wl = 2.0 * M_PI / f;
      if (wl > low_wl) {
        f = f / factor;
      } else if (wl >= high_wl) {  // medium band: smooth interpolation
        double sm = (orig_max_pos / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
        f = (1.0 - sm) * f / factor + sm * f;
      }
    }
    inv_freq[i] = (float)f;
  }
  return 0;
}

extern "C" int cf_rope_qkv(const cf_rope_args_t *a, cudaStream_t s) {
  CF_REQUIRE(a && a->T >= 0 && a->n_heads > 0 && a->n_kv_heads > 0 && a->head_dim > 0,
             "cf_rope_qkv: bad shape");
  CF_REQUIRE(a->head_dim % 2 == 0 && a->head_dim <= 64 * CF_ROPE_MAX_PAIRS_PER_LANE,
             "cf_rope_qkv: head_dim %d must be even and <= %d", a->head_dim,
             64 * CF_ROPE_MAX_PAIRS_PER_LANE);
  CF_REQUIRE(a->qkv && a->inv_freq && a->q && a->k && a->v,
             "cf_rope_qkv: qkv, inv_freq, q, k, v are required");
  CF_REQUIRE(a->kv_row_stride >= (int64_t)a->n_kv_heads * a->head_dim,
             "cf_rope_qkv: kv_row_stride %lld < n_kv_heads*head_dim %d",
             (long long)a->kv_row_stride, a->n_kv_heads * a->head_dim);
  if (a->T == 0) return 0;
  int64_t warps = (int64_t)a->T * (a->n_heads + 2 * a->n_kv_heads);
  if (a->qkv_f32) cf_rope_qkv_kernel<float><<<cf_div_up(warps, 8), 256, 0, s>>>(*a);
  else cf_rope_qkv_kernel<bf16><<<cf_div_up(warps, 8), 256, 0, s>>>(*a);
  CF_LAUNCH_TRY();
  return 0;
}
