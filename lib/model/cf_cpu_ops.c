/* cf_cpu_ops — see cf_cpu_ops.h. Built with -O3 -fno-trapping-math (Makefile) so the
 * elementwise loops vectorise (the exp clamps are selects, which trapping math forbids). */
#include "model/cf_cpu_ops.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Hot elementwise loops get AVX-512, AVX2+FMA and baseline clones picked at load time, so one
 * binary runs everywhere and uses the widest vectors the CPU has. Not under ThreadSanitizer:
 * the ifunc resolvers run before its runtime is up and crash the process. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
#define CF__SIMD __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CF__SIMD
#endif

void cf__rmsnorm_rows(const float *x, size_t ldx, const float *w, float eps, float *y,
                      size_t ldy, int rows, int n) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * ldx;
    float *yr = y + (size_t)r * ldy;
    /* The mean of squares in double: transformers sums in fp32 with a pairwise/vector order we
     * cannot reproduce bit for bit; double is at least as exact as any fp32 order. */
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
    float var = (float)(ss / n);
    float inv = (float)(1.0 / sqrt((double)(var + eps)));
    /* transformers: weight * (x * rsqrt(var + eps)) */
    for (int i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
  }
}

/* transformers' _compute_yarn_parameters: a linear ramp over the pair index between the
 * dimensions where beta_fast and beta_slow rotations fit in the original context blends the
 * extrapolated (unscaled) and interpolated (/ factor) frequencies; float32 tensors, double for
 * the Python scalars. */
static void cf__rope_yarn(const cf_model_config_t *c, float *inv_freq) {
  int dim = c->head_dim, half = dim / 2;
  double base = c->rope_theta, omp = c->rope_orig_max_pos;
#define CF__CORR_DIM(rot) (dim * log(omp / ((rot) * 2 * M_PI)) / (2 * log(base)))
  double low = CF__CORR_DIM(c->rope_beta_fast), high = CF__CORR_DIM(c->rope_beta_slow);
#undef CF__CORR_DIM
  if (c->rope_truncate) { low = floor(low); high = ceil(high); }
  if (low < 0) low = 0;
  if (high > dim - 1) high = dim - 1;
  if (low == high) high += 0.001; /* transformers: prevent singularity */
  float fmin = (float)low, span = (float)(high - low), factor = (float)c->rope_factor;
  for (int i = 0; i < half; i++) {
    float pos_freq = powf((float)base, (float)(2 * i) / (float)dim);
    float extra = 1.0f / pos_freq, inter = 1.0f / (factor * pos_freq);
    float ramp = ((float)i - fmin) / span;
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    float ef = 1.0f - ramp; /* extrapolation factor */
    inv_freq[i] = inter * (1.0f - ef) + extra * ef;
  }
}

void cf__rope_inv_freq(const cf_model_config_t *c, float *inv_freq) {
  int dim = c->head_dim, half = dim / 2;
  float base = (float)c->rope_theta;
  if (c->rope_kind == CF_ROPE_YARN) {
    cf__rope_yarn(c, inv_freq);
    return;
  }
  for (int i = 0; i < half; i++) {
    /* 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in float32 */
    float e = (float)(2 * i) / (float)dim;
    inv_freq[i] = 1.0f / powf(base, e);
    if (c->rope_kind == CF_ROPE_LINEAR) inv_freq[i] /= (float)c->rope_factor;
  }
  if (c->rope_kind != CF_ROPE_LLAMA3) return;
  /* transformers' _compute_llama3_parameters, in float32 like its tensors. */
  float factor = (float)c->rope_factor;
  float lo = (float)c->rope_low_freq_factor, hi = (float)c->rope_high_freq_factor;
  float old_ctx = (float)c->rope_orig_max_pos;
  double low_wavelen = (double)c->rope_orig_max_pos / c->rope_low_freq_factor;
  double high_wavelen = (double)c->rope_orig_max_pos / c->rope_high_freq_factor;
  for (int i = 0; i < half; i++) {
    float f = inv_freq[i];
    float wavelen = (1.0f / f) * (float)(2 * M_PI); /* scalar / tensor == reciprocal * scalar */
    float fl = wavelen > (float)low_wavelen ? f / factor : f;
    float smooth = ((1.0f / wavelen) * old_ctx - lo) / (float)(hi - lo);
    float smoothed = (1.0f - smooth) * fl / factor + smooth * fl;
    int medium = !(wavelen < (float)high_wavelen) && !(wavelen > (float)low_wavelen);
    inv_freq[i] = medium ? smoothed : fl;
  }
}

float cf__rope_scale(const cf_model_config_t *c) {
  return c->rope_kind == CF_ROPE_YARN ? (float)c->rope_attn_factor : 1.0f;
}

void cf__rope_table(const float *inv_freq, int half, int pos0, int n, float scale, float *cos_t,
                    float *sin_t) {
  for (int r = 0; r < n; r++) {
    float p = (float)(pos0 + r);
    for (int i = 0; i < half; i++) {
      float a = p * inv_freq[i]; /* one float32 rounding, as the fp32 matmul does */
      /* transformers: emb.cos() * attention_scaling, both float32 */
      cos_t[(size_t)r * half + i] = (float)cos((double)a) * scale;
      sin_t[(size_t)r * half + i] = (float)sin((double)a) * scale;
    }
  }
}

CF__SIMD void cf__rope_apply(float *x, size_t ld, int rows, int nheads, int hd, const float *cos_t,
                    const float *sin_t) {
  int half = hd / 2;
  for (int r = 0; r < rows; r++) {
    const float *c = cos_t + (size_t)r * half, *s = sin_t + (size_t)r * half;
    for (int h = 0; h < nheads; h++) {
      float *a = x + (size_t)r * ld + (size_t)h * hd, *b = a + half;
      for (int i = 0; i < half; i++) {
        /* q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1) */
        float x1 = a[i], x2 = b[i];
        a[i] = x1 * c[i] + (-x2) * s[i];
        b[i] = x2 * c[i] + x1 * s[i];
      }
    }
  }
}

/* exp(x) by Cody-Waite reduction and Cephes' degree-6 polynomial. Branch-free and written with
 * integer bit operations only, so the loops below vectorise without -ffast-math. */
static inline float cf__expf(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.3f ? 88.3f : x;
  /* round to nearest via the 1.5*2^23 trick (no SSE4.1 floor needed) */
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } e;
  e.i = ((int32_t)n + 127) << 23;
  return p * e.f;
}

CF__SIMD void cf__silu_mul(float *g, const float *u, size_t n) {
  /* silu(x) = x * sigmoid(x) = x / (1 + exp(-x)) */
  for (size_t i = 0; i < n; i++) {
    float x = g[i];
    g[i] = x / (1.0f + cf__expf(-x)) * u[i];
  }
}

/* One query row of one key block of the online softmax: s[0..kn) holds raw scores q.k, of
 * which [lo, valid) are visible (causal; lo > 0 only under a sliding window). Turns s into
 * probabilities relative to the new running max (0 outside [lo, valid)), updates the running max *m and sum *l, and rescales the row's
 * output accumulator o[hd] to the new max. The scores are scaled exactly as transformers does
 * (fl(q.k * scale)) before the max is subtracted. */
CF__SIMD static void cf__softmax_block_row(float *s, int lo, int valid, int kn, float scale,
                                           float *m, float *l, float *o, int hd) {
  /* Keys before the window: -inf, so they take part in neither max nor sum (exp gives 0). */
  for (int j = 0; j < lo; j++) s[j] = -INFINITY;
  /* max of the raw scores: scale > 0 and rounding is monotonic, so fl(max*scale) is the max of
   * the scaled scores. 16 lanes so the reduction vectorises without reassociation. */
  float acc[16];
  for (int t = 0; t < 16; t++) acc[t] = -INFINITY;
  int j = 0;
  for (; j + 16 <= valid; j += 16)
    for (int t = 0; t < 16; t++) acc[t] = s[j + t] > acc[t] ? s[j + t] : acc[t];
  float mx = -INFINITY;
  for (int t = 0; t < 16; t++) mx = acc[t] > mx ? acc[t] : mx;
  for (; j < valid; j++) mx = s[j] > mx ? s[j] : mx;
  mx *= scale;
  float mnew = mx > *m ? mx : *m;
  float alpha = *m == -INFINITY ? 0.0f : cf__expf(*m - mnew);
  for (j = 0; j < valid; j++) s[j] = cf__expf(s[j] * scale - mnew);
  for (j = 0; j < lo; j++) s[j] = 0; /* cf__expf clamps, so -inf gave ~1e-38: make it exact */
  for (int t = 0; t < 16; t++) acc[t] = 0;
  for (j = 0; j + 16 <= valid; j += 16)
    for (int t = 0; t < 16; t++) acc[t] += s[j + t];
  float sum = 0;
  for (int t = 0; t < 16; t++) sum += acc[t];
  for (; j < valid; j++) sum += s[j];
  for (j = valid; j < kn; j++) s[j] = 0; /* causal mask */
  *l = *l * alpha + sum;
  *m = mnew;
  if (alpha != 1.0f)
    for (int d = 0; d < hd; d++) o[d] *= alpha;
}

size_t cf__attn_scratch_floats(int nrows) { return (size_t)nrows * (CF__ATTN_BK + 2); }

void cf__attn_rows(const float *q, size_t ldq, const float *k, const float *v, size_t ldkv,
                   int hd, int p0, int nq, int rep, int window, float scale, float *o,
                   size_t ldo, float *scratch) {
  int nr = nq * rep;                                /* rows: query i, head j at row i*rep + j */
  float *S = scratch;                               /* [nr][BK] scores, then probabilities */
  float *m = scratch + (size_t)nr * CF__ATTN_BK;    /* running row max */
  float *l = m + nr;                                /* running row sum */
  int nk = p0 + nq; /* keys visible to the last query */
  for (int r = 0; r < nr; r++) {
    m[r] = -INFINITY;
    l[r] = 0;
    memset(o + (size_t)r * ldo, 0, sizeof(float) * hd);
  }
  /* Sliding window: the first query sees keys from p0 - window + 1 on; the blocks start
   * there (keys before it are never formed, not masked after the fact). */
  int kfirst = window > 0 && p0 - window + 1 > 0 ? p0 - window + 1 : 0;
  for (int kb = kfirst; kb < nk; kb += CF__ATTN_BK) {
    int kn = nk - kb < CF__ATTN_BK ? nk - kb : CF__ATTN_BK;
    /* Queries whose position is below kb see nothing of this block; start at the first that does. */
    int r0 = (kb > p0 ? kb - p0 : 0) * rep;
    /* Under a window, queries at positions >= kb + kn - 1 + window see nothing of it either. */
    int r1 = nr;
    if (window > 0 && kb + kn - 1 + window - p0 < nq) r1 = (kb + kn - 1 + window - p0) * rep;
    if (r1 <= r0) continue;
    int mr = r1 - r0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, mr, kn, hd, 1.0f,
                q + (size_t)r0 * ldq, (int)ldq, k + (size_t)kb * ldkv, (int)ldkv, 0.0f,
                S + (size_t)r0 * CF__ATTN_BK, CF__ATTN_BK);
    for (int r = r0; r < r1; r++) {
      int pos = p0 + r / rep, valid = pos + 1 - kb; /* keys kb .. position of row r */
      int lo = window > 0 && pos - window + 1 > kb ? pos - window + 1 - kb : 0;
      cf__softmax_block_row(S + (size_t)r * CF__ATTN_BK, lo, valid < kn ? valid : kn, kn, scale,
                            &m[r], &l[r], o + (size_t)r * ldo, hd);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mr, hd, kn, 1.0f,
                S + (size_t)r0 * CF__ATTN_BK, CF__ATTN_BK, v + (size_t)kb * ldkv, (int)ldkv,
                1.0f, o + (size_t)r0 * ldo, (int)ldo);
  }
  for (int r = 0; r < nr; r++) {
    float inv = 1.0f / l[r];
    float *orow = o + (size_t)r * ldo;
    for (int d = 0; d < hd; d++) orow[d] *= inv;
  }
}
