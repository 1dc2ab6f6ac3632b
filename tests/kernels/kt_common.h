// kt_common — the harness of the standalone kernel tests (tests/kernels/kt_*.cu).
//
// Each binary checks every variant of its kernels against a CPU reference on fresh random
// inputs (seed printed; KT_SEED=n repeats a run), with outputs poisoned (all-ones bytes: NaN
// in bf16 and fp32) before each launch so an unwritten element fails. It ends with
// "N passed, N failed[, N skipped]" for tests/run.sh. `--bench` runs its benchmarks instead.
#ifndef KT_COMMON_H
#define KT_COMMON_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <vector>

#include "kernels/cf_cuda_check.h"  // first: gives cf_err.h C linkage
#include "kernels/cf_probe.h"

static int kt_passed, kt_failed, kt_skipped;
static uint64_t kt_rng_state;

static inline int kt_finish(void) {
  printf("%d passed, %d failed%s", kt_passed, kt_failed, kt_skipped ? "" : "\n");
  if (kt_skipped) printf(", %d skipped\n", kt_skipped);
  fflush(stdout);
  return kt_failed ? 1 : 0;
}

// Fatal setup failure (allocation, copy): count it and stop, printing the summary line.
#define KT_CUDA(call)                                                                      \
  do {                                                                                     \
    cudaError_t kt__e = (call);                                                            \
    if (kt__e != cudaSuccess) {                                                            \
      printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(kt__e)); \
      kt_failed++;                                                                         \
      exit(kt_finish());                                                                   \
    }                                                                                      \
  } while (0)

// A launcher must return 0; otherwise the check fails with its error detail.
#define KT_RC(expr)                                                                        \
  ([&]() -> bool {                                                                         \
    int kt__rc = (expr);                                                                   \
    if (kt__rc != 0) {                                                                     \
      printf("FAIL %s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #expr,                \
             cf_err_name(kt__rc), cf_errmsg());                                            \
      kt_failed++;                                                                         \
      return false;                                                                        \
    }                                                                                      \
    return true;                                                                           \
  }())

static inline void kt_check(bool ok, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf(ok ? "ok   " : "FAIL ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  if (ok) kt_passed++;
  else kt_failed++;
}

// Returns false (and prints the skip line) when there is no GPU.
static inline bool kt_init(int argc, char **argv, bool *bench) {
  *bench = argc > 1 && strcmp(argv[1], "--bench") == 0;
  const char *s = getenv("KT_SEED");
  kt_rng_state = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL) * 2654435761u + clock();
  if (kt_rng_state == 0) kt_rng_state = 1;
  printf("seed %llu (KT_SEED to repeat)\n", (unsigned long long)kt_rng_state);
  if (cf_probe_gpu_count() <= 0) {
    printf("skip: no CUDA GPU on this machine\n");
    kt_skipped++;
    return false;
  }
  return true;
}

static inline uint64_t kt_rand(void) {
  kt_rng_state ^= kt_rng_state << 13;
  kt_rng_state ^= kt_rng_state >> 7;
  kt_rng_state ^= kt_rng_state << 17;
  return kt_rng_state;
}
static inline float kt_unif(float lo, float hi) {
  return lo + (hi - lo) * (float)((kt_rand() >> 11) * (1.0 / 9007199254740992.0));
}
static inline int kt_randint(int n) { return (int)(kt_rand() % (uint64_t)n); }

// bf16 on the host: round to nearest even, as __float2bfloat16_rn.
static inline uint16_t kt_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}
static inline float kt_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline float kt_round_bf16(float f) { return kt_f32(kt_bf16(f)); }

// Random bf16 vector and its float values.
static inline void kt_rand_bf16(std::vector<uint16_t> &h, std::vector<float> &f, size_t n,
                                float lo, float hi) {
  h.resize(n);
  f.resize(n);
  for (size_t i = 0; i < n; i++) {
    h[i] = kt_bf16(kt_unif(lo, hi));
    f[i] = kt_f32(h[i]);
  }
}

template <typename T>
static inline T *kt_dev(size_t n) {
  void *p = NULL;
  KT_CUDA(cudaMalloc(&p, n * sizeof(T) + 16));
  KT_CUDA(cudaMemset(p, 0xff, n * sizeof(T) + 16));  // poison: NaN in bf16 and fp32
  return (T *)p;
}
template <typename T>
static inline T *kt_upload(const std::vector<T> &h) {
  T *d = kt_dev<T>(h.size());
  KT_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T>
static inline std::vector<T> kt_download(const T *d, size_t n) {
  std::vector<T> h(n);
  KT_CUDA(cudaDeviceSynchronize());
  KT_CUDA(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// ‖out - ref‖ / ‖ref‖ over n values; NaN anywhere (an unwritten, poisoned output) gives +inf.
static inline double kt_rel_l2(const float *out, const double *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!isfinite(out[i])) return INFINITY;
    double d = out[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}
static inline double kt_rel_l2_bf16(const uint16_t *out, const double *ref, size_t n) {
  std::vector<float> f(n);
  for (size_t i = 0; i < n; i++) f[i] = kt_f32(out[i]);
  return kt_rel_l2(f.data(), ref, n);
}

// Median time in ms of `fn` over `reps` runs (after 3 warm-ups), timed with CUDA events.
template <typename F>
static inline double kt_time_ms(F fn, int reps, cudaStream_t s = 0) {
  for (int i = 0; i < 3; i++) fn();
  KT_CUDA(cudaStreamSynchronize(s));
  std::vector<float> t(reps);
  cudaEvent_t a, b;
  KT_CUDA(cudaEventCreate(&a));
  KT_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < reps; i++) {
    KT_CUDA(cudaEventRecord(a, s));
    fn();
    KT_CUDA(cudaEventRecord(b, s));
    KT_CUDA(cudaEventSynchronize(b));
    KT_CUDA(cudaEventElapsedTime(&t[i], a, b));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}

#ifdef CF_PAGED_H
// A staging ring for cf_paged_load_staged: copy stream, highest-priority scatter stream, events.
static inline cf_paged_stager_t kt_stager(int64_t elems) {
  cf_paged_stager_t st;
  int lo, hi;
  KT_CUDA(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  KT_CUDA(cudaStreamCreateWithFlags(&st.copy, cudaStreamNonBlocking));
  KT_CUDA(cudaStreamCreateWithPriority(&st.scatter, cudaStreamNonBlocking, hi));
  for (int i = 0; i < CF_PAGED_STAGE_SLOTS; i++) {
    KT_CUDA(cudaEventCreateWithFlags(&st.copied[i], cudaEventDisableTiming));
    KT_CUDA(cudaEventCreateWithFlags(&st.freed[i], cudaEventDisableTiming));
  }
  st.staging = kt_dev<cf_bf16_t>(elems);
  st.staging_elems = elems;
  return st;
}

static inline void kt_stager_free(cf_paged_stager_t *st) {
  cudaStreamDestroy(st->copy);
  cudaStreamDestroy(st->scatter);
  for (int i = 0; i < CF_PAGED_STAGE_SLOTS; i++) {
    cudaEventDestroy(st->copied[i]);
    cudaEventDestroy(st->freed[i]);
  }
  cudaFree(st->staging);
}
#endif

#endif
