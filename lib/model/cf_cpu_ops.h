/* cf_cpu_ops — the CPU backend's own numerical kernels (internal to lib/model).
 *
 * Everything is fp32 and follows transformers' modeling code operation by operation, so the
 * CPU backend reproduces its KV to float rounding: RMSNorm (Llama/Qwen), RoPE tables built the
 * way transformers builds them (float32 inv_freq, float32 angles), rotate_half RoPE, SiLU gating,
 * and causal attention over a KV prefix with an online softmax in query/key blocks (never a
 * T x T matrix). Projections are OpenBLAS sgemm calls made by cf_cpu.c.
 */
#ifndef CF_CPU_OPS_H
#define CF_CPU_OPS_H

#include <stddef.h>

#include "model/cf_model.h"

/* Key block of the attention kernel: scores are formed CF__ATTN_BK keys at a time. */
#ifndef CF__ATTN_BK
#define CF__ATTN_BK 256
#endif

/* y[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * w for `rows` rows of n floats (x may equal y). */
void cf__rmsnorm_rows(const float *x, size_t ldx, const float *w, float eps, float *y,
                      size_t ldy, int rows, int n);

/* Fill inv_freq[head_dim/2] exactly as transformers' rope init does for cfg's rope type
 * (default: 1/theta^(2i/d) in float32; linear: that / factor; llama3 / yarn:
 * _compute_llama3_parameters / _compute_yarn_parameters). */
void cf__rope_inv_freq(const cf_model_config_t *cfg, float *inv_freq);
/* The factor cos and sin are multiplied by (yarn's attention factor; 1 for other kinds). */
float cf__rope_scale(const cf_model_config_t *cfg);

/* cos/sin tables [n][half] for positions pos0 .. pos0+n-1: angle = float(pos) * inv_freq in
 * float32 (as transformers' matmul forms it), then cos/sin of that float angle, times scale. */
void cf__rope_table(const float *inv_freq, int half, int pos0, int n, float scale, float *cos_t,
                    float *sin_t);

/* Rotate `rows` rows, each of nheads heads of hd floats (row stride ld), in place with
 * transformers' rotate_half layout; row r uses table row r. */
void cf__rope_apply(float *x, size_t ld, int rows, int nheads, int hd, const float *cos_t,
                    const float *sin_t);

/* g[i] = silu(g[i]) * u[i]. */
void cf__silu_mul(float *g, const float *u, size_t n);

/* Causal attention of the `rep` query heads that share one KV head (GQA), for nq consecutive
 * queries at absolute positions p0..p0+nq-1, over keys/values rows [0, p0+nq) (row stride ldkv).
 * q holds nq*rep rows of hd floats, query i of head j at row i*rep + j (stride ldq); o gets
 *   o[i*rep+j] = sum_t softmax_t(scale * q[i*rep+j].k[t], lo_i <= t <= p0+i) v[t]  (stride ldo)
 * with lo_i = 0, or max(0, p0+i-window+1) when window > 0 (sliding window: key blocks before
 * the first query's window are skipped, the rest masked per row).
 * Stacking the heads of a group makes both products rep times taller sgemms over the same K/V
 * tiles. scratch: at least cf__attn_scratch_floats(nq*rep) floats. Online softmax over
 * CF__ATTN_BK-key blocks; single-threaded (the caller parallelises over groups and blocks). */
size_t cf__attn_scratch_floats(int nrows);
void cf__attn_rows(const float *q, size_t ldq, const float *k, const float *v, size_t ldkv,
                   int hd, int p0, int nq, int rep, int window, float scale, float *o,
                   size_t ldo, float *scratch);

#endif
