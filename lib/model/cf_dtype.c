/* cf_dtype — element types, names and the bf16/f16 <-> fp32 conversions used by the loader
 * and by tools that write checkpoints. */
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "model/cf_model.h"
#include "util/cf_err.h"

static const struct {
  const char *name;
  size_t size;
} cf__dt[CF_DT__COUNT] = {
    [CF_DT_F32] = {"F32", 4}, [CF_DT_BF16] = {"BF16", 2}, [CF_DT_F16] = {"F16", 2},
    [CF_DT_I32] = {"I32", 4}, [CF_DT_I64] = {"I64", 8},   [CF_DT_F64] = {"F64", 8},
    [CF_DT_I16] = {"I16", 2}, [CF_DT_I8] = {"I8", 1},     [CF_DT_U8] = {"U8", 1},
    [CF_DT_BOOL] = {"BOOL", 1},
};

const char *cf_dtype_name(cf_dtype_t t) { return (unsigned)t < CF_DT__COUNT ? cf__dt[t].name : "?"; }
size_t cf_dtype_size(cf_dtype_t t) { return (unsigned)t < CF_DT__COUNT ? cf__dt[t].size : 0; }

int cf_dtype_parse(const char *s, cf_dtype_t *out) {
  for (int i = 0; i < CF_DT__COUNT; i++)
    if (strcmp(s, cf__dt[i].name) == 0) { *out = (cf_dtype_t)i; return 0; }
  return CF_EDTYPE;
}

const char *cf_arch_name(cf_arch_t a) {
  static const char *const n[] = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral"};
  return (unsigned)a < sizeof n / sizeof n[0] ? n[a] : "?";
}

const char *cf_rope_kind_name(cf_rope_kind_t k) {
  static const char *const n[] = {"default", "llama3"};
  return (unsigned)k < 2 ? n[k] : "?";
}

size_t cf_model_kv_row_floats(const cf_model_config_t *c) {
  return (size_t)c->n_kv_heads * (size_t)c->head_dim;
}

static inline float cf__bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t cf__f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

void cf_bf16_to_f32(const void *src, float *dst, size_t n) {
  const unsigned char *s = src;
  size_t i = 0;
#if defined(__SSE2__)
  /* bf16 is the top half of a float: interleave zeros below each value, 8 at a time. */
  const __m128i z = _mm_setzero_si128();
  for (; i + 8 <= n; i += 8) {
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i));
    _mm_storeu_si128((__m128i *)(void *)(dst + i), _mm_unpacklo_epi16(z, x));
    _mm_storeu_si128((__m128i *)(void *)(dst + i + 4), _mm_unpackhi_epi16(z, x));
  }
#endif
  for (; i < n; i++) {
    uint16_t h;
    memcpy(&h, s + 2 * i, 2);
    dst[i] = cf__bits_f32((uint32_t)h << 16);
  }
}

/* IEEE half -> single, exact. Subnormal halves are normalised by hand (no FPU rounding). */
static inline float cf__h2f(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0x1f) /* inf, or NaN made quiet with its payload kept (as F16C does) */
    return cf__bits_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
  if (exp == 0) {
    if (man == 0) return cf__bits_f32(sign);
    int e = -1;
    do { man <<= 1; e++; } while (!(man & 0x400)); /* shift until the implicit bit appears */
    man &= 0x3ff;
    return cf__bits_f32(sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13));
  }
  return cf__bits_f32(sign | ((exp + 127 - 15) << 23) | (man << 13));
}

static void cf__f16_to_f32_scalar(const unsigned char *s, float *dst, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    memcpy(&h, s + 2 * i, 2);
    dst[i] = cf__h2f(h);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* F16C widening is exact (every half is a float), so it gives the same bits as the scalar
 * path; it is used only when the CPU has it. */
__attribute__((target("f16c,avx"))) static void cf__f16_to_f32_f16c(const unsigned char *s,
                                                                    float *dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i))));
  cf__f16_to_f32_scalar(s + 2 * i, dst + i, n - i);
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
/* CPUID leaf 1 ECX bit 29 (F16C); AVX also needs the OS to save YMM state, which
 * __builtin_cpu_supports("avx") checks. Not cached: a cpuid per tensor costs nothing. */
static int cf__have_f16c(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  return (c & (1u << 29)) && __builtin_cpu_supports("avx");
}
#endif

void cf_f16_to_f32(const void *src, float *dst, size_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cf__have_f16c()) {
    cf__f16_to_f32_f16c(src, dst, n);
    return;
  }
#endif
  cf__f16_to_f32_scalar(src, dst, n);
}

void cf_f32_to_bf16(const float *src, void *dst, size_t n) {
  unsigned char *d = dst;
  for (size_t i = 0; i < n; i++) {
    uint32_t u = cf__f32_bits(src[i]);
    uint16_t h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h = (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    else h = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);            /* nearest even */
    memcpy(d + 2 * i, &h, 2);
  }
}

static inline uint16_t cf__f2h(float f) {
  uint32_t u = cf__f32_bits(f), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00);     /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);    /* rounds to >= 65536: inf */
  if (a < 0x38800000u) {                                     /* below 2^-14: subnormal half */
    if (a < 0x33000000u) return (uint16_t)sign;              /* below half the smallest: 0 */
    uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* value m*2^(e-150) = v*2^-24 */
    uint32_t v = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (v & 1))) v++;
    return (uint16_t)(sign | v);
  }
  uint32_t v = ((a - 0x38000000u) >> 13), rem = a & 0x1fff;  /* rebias 127 -> 15 */
  if (rem > 0x1000 || (rem == 0x1000 && (v & 1))) v++;
  return (uint16_t)(sign | v);
}

void cf_f32_to_f16(const float *src, void *dst, size_t n) {
  unsigned char *d = dst;
  for (size_t i = 0; i < n; i++) {
    uint16_t h = cf__f2h(src[i]);
    memcpy(d + 2 * i, &h, 2);
  }
}

void cf_dtype_to_f32(cf_dtype_t t, const void *src, float *dst, size_t n) {
  if (t == CF_DT_F32) memcpy(dst, src, n * sizeof(float));
  else if (t == CF_DT_BF16) cf_bf16_to_f32(src, dst, n);
  else if (t == CF_DT_F16) cf_f16_to_f32(src, dst, n);
}

void cf_dtype_from_f32(cf_dtype_t t, const float *src, void *dst, size_t n) {
  if (t == CF_DT_F32) memcpy(dst, src, n * sizeof(float));
  else if (t == CF_DT_BF16) cf_f32_to_bf16(src, dst, n);
  else if (t == CF_DT_F16) cf_f32_to_f16(src, dst, n);
}
