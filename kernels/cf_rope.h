/* cf_rope — rotary position embedding of the fused QKV GEMM output, with the optional
 * projection bias and per-head q/k RMSNorm (qwen3) folded in, writing q for attention and
 * k/v straight into the layer's KV buffer (one pass over the QKV output). */
#ifndef CF_ROPE_H
#define CF_ROPE_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Host helper: the inverse frequencies inv_freq[i], i < head_dim/2, as transformers computes
 * them: 1 / theta^(2i/head_dim), then, when llama3 != 0, Llama-3.1's scaling by `factor`
 * between the low- and high-frequency wavelengths of orig_max_pos. Returns 0 or CF_EINVAL. */
int cf_rope_inv_freq(float *inv_freq, int head_dim, double theta, int llama3, double factor,
                     double low_freq_factor, double high_freq_factor, int orig_max_pos);

typedef struct {
  int T;                  /* tokens in the chunk */
  int pos0;               /* absolute position of the first token */
  int n_heads, n_kv_heads, head_dim;  /* head_dim even */
  const void *qkv;        /* [T][(n_heads + 2*n_kv_heads) * head_dim]: q heads, k heads, v heads */
  int qkv_f32;            /* 1: qkv is fp32 (one bf16 rounding fewer on q/k/v), 0: bf16 */
  const float *bias;      /* [(n_heads + 2*n_kv_heads) * head_dim] or NULL */
  const float *q_norm, *k_norm;  /* [head_dim] per-head RMSNorm weights (qwen3) or NULL */
  float norm_eps;
  const float *inv_freq;  /* [head_dim/2], device */
  cf_bf16_t *q;           /* out [T][n_heads][head_dim] */
  cf_bf16_t *k, *v;       /* out: row t at k + t*kv_row_stride, [n_kv_heads][head_dim] each */
  int64_t kv_row_stride;  /* elements between token rows of k and v (>= n_kv_heads*head_dim) */
} cf_rope_args_t;

/* q = rope(norm_q(q_proj + bq)), k = rope(norm_k(k_proj + bk)), v = v_proj + bv, with the
 * NeoX/transformers rotate_half layout: element i pairs with i + head_dim/2, angle
 * (pos0 + t) * inv_freq[i], computed in fp32. Returns 0, CF_EINVAL or CF_ECUDA. */
int cf_rope_qkv(const cf_rope_args_t *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
