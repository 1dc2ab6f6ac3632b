// cf_gemm — bf16 GEMM with fp32 accumulation via cublasGemmEx, and a grouped form through
// cublasGemmGroupedBatchedEx (per-GEMM cublasGemmEx when that is absent or refuses the types).
#include "kernels/cf_gemm.h"

#include <cublas_v2.h>
#include <stdlib.h>

#include "kernels/cf_cuda_check.h"

// launchers

extern "C" int cf_gemm_bf16(struct cublasContext *h, const cf_gemm_args_t *a, cudaStream_t s) {
  CF_REQUIRE(h && a && a->M >= 0 && a->N > 0 && a->K > 0 && a->X && a->W && a->Y,
             "cf_gemm_bf16: bad arguments (M=%d N=%d K=%d)", a ? a->M : -1, a ? a->N : -1,
             a ? a->K : -1);
  CF_REQUIRE(a->ldx >= a->K && a->ldw >= a->K && a->ldy >= a->N,
             "cf_gemm_bf16: leading dimensions ldx=%lld ldw=%lld ldy=%lld too small for K=%d N=%d",
             (long long)a->ldx, (long long)a->ldw, (long long)a->ldy, a->K, a->N);
  if (a->M == 0) return 0;
  float alpha = 1.f, beta = a->beta;
  CF_CUBLAS_TRY(cublasSetStream(h, s));
  // Column-major view: Yᵀ [N][M] = W [N][K] (stored as Kx N col-major, so op T) · Xᵀ [K][M].
  CF_CUBLAS_TRY(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, a->N, a->M, a->K, &alpha, a->W,
                             CUDA_R_16BF, (int)a->ldw, a->X, CUDA_R_16BF, (int)a->ldx, &beta, a->Y,
                             a->y_f32 ? CUDA_R_32F : CUDA_R_16BF, (int)a->ldy, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT));
  return 0;
}

#if defined(CUBLAS_VERSION) && CUBLAS_VERSION >= 120500
#define CF_HAVE_GROUPED_GEMM 1
#else
#define CF_HAVE_GROUPED_GEMM 0
#endif

#if CF_HAVE_GROUPED_GEMM
// One cublasGemmGroupedBatchedEx over the n GEMMs idx[0..n) of a (each its own group of size
// 1: the shapes differ in M). *st: the cuBLAS status (NOT_SUPPORTED is the caller's cue to
// fall back). Returns 0, or CF_ENOMEM / CF_ECUDA on a host allocation / pointer copy failure.
static int cf__grouped_call(struct cublasContext *h, const cf_gemm_args_t *a, const int *idx,
                            int n, void **ph, void **pd, int *st, cudaStream_t s) {
  // host arrays, one entry per group: 6 ints + 2 ops + 2 floats
  size_t bytes = (size_t)n * (7 * sizeof(int) + 2 * sizeof(cublasOperation_t) + 2 * sizeof(float));
  char *buf = (char *)malloc(bytes);
  if (!buf) return cf_seterr(CF_ENOMEM, "cf_gemm_bf16_grouped: %d groups", n);
  int *m = (int *)buf, *nn = m + n, *k = nn + n, *lda = k + n, *ldb = lda + n, *ldc = ldb + n,
      *gs = ldc + n;
  cublasOperation_t *ta = (cublasOperation_t *)(gs + n), *tb = ta + n;
  float *alpha = (float *)(tb + n), *beta = alpha + n;
  for (int i = 0; i < n; i++) {
    const cf_gemm_args_t *g = &a[idx[i]];
    // column-major view as in cf_gemm_bf16: Yᵀ [N][M] = W (op T) · Xᵀ
    m[i] = g->N; nn[i] = g->M; k[i] = g->K;
    lda[i] = (int)g->ldw; ldb[i] = (int)g->ldx; ldc[i] = (int)g->ldy; gs[i] = 1;
    ta[i] = CUBLAS_OP_T; tb[i] = CUBLAS_OP_N;
    alpha[i] = 1.f; beta[i] = g->beta;
    ph[i] = (void *)g->W; ph[n + i] = (void *)g->X; ph[2 * n + i] = g->Y;
  }
  cudaError_t ce = cudaMemcpyAsync(pd, ph, sizeof(void *) * 3 * (size_t)n,
                                   cudaMemcpyHostToDevice, s);
  if (ce != cudaSuccess) {
    free(buf);
    (void)cudaGetLastError();
    return cf_seterr(CF_ECUDA, "cf_gemm_bf16_grouped: pointer copy: %s", cudaGetErrorString(ce));
  }
  *st = (int)cublasGemmGroupedBatchedEx(
      h, ta, tb, m, nn, k, alpha, (const void *const *)pd, CUDA_R_16BF, lda,
      (const void *const *)(pd + n), CUDA_R_16BF, ldb, beta, pd + 2 * n,
      a[idx[0]].y_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, n, gs, CUBLAS_COMPUTE_32F);
  free(buf);  // cuBLAS has read the host arrays when the call returns
  return 0;
}
#endif

extern "C" int cf_gemm_bf16_grouped(struct cublasContext *h, const cf_gemm_args_t *a, int G,
                                    int *grouped, void **ptrs_host, void **ptrs_dev, int *used,
                                    cudaStream_t s) {
  CF_REQUIRE(h && a && G >= 0 && grouped && ptrs_host && ptrs_dev,
             "cf_gemm_bf16_grouped: bad arguments (G=%d)", G);
  if (used) *used = 0;
  int n = 0;
  for (int g = 0; g < G; g++) {
    CF_REQUIRE(a[g].y_f32 == a[0].y_f32 && a[g].beta == a[0].beta,
               "cf_gemm_bf16_grouped: GEMM %d differs from GEMM 0 in output type or beta", g);
    CF_REQUIRE(a[g].M >= 0 && a[g].N > 0 && a[g].K > 0 && a[g].X && a[g].W && a[g].Y &&
                   a[g].ldx >= a[g].K && a[g].ldw >= a[g].K && a[g].ldy >= a[g].N,
               "cf_gemm_bf16_grouped: bad GEMM %d (M=%d N=%d K=%d)", g, a[g].M, a[g].N, a[g].K);
    n += a[g].M > 0;
  }
  if (n == 0) return 0;
#if CF_HAVE_GROUPED_GEMM
  if (*grouped) {
    int *idx = (int *)malloc(sizeof(int) * (size_t)n);
    if (!idx) return cf_seterr(CF_ENOMEM, "cf_gemm_bf16_grouped: %d groups", n);
    for (int g = 0, i = 0; g < G; g++)
      if (a[g].M > 0) idx[i++] = g;
    CF_CUBLAS_TRY(cublasSetStream(h, s));
    int st = CUBLAS_STATUS_SUCCESS, rc = cf__grouped_call(h, a, idx, n, ptrs_host, ptrs_dev, &st, s);
    free(idx);
    if (rc) return rc;
    if (st == CUBLAS_STATUS_SUCCESS) {
      if (used) *used = 1;
      return 0;
    }
    if (st != CUBLAS_STATUS_NOT_SUPPORTED)
      return cf_seterr(CF_ECUDA, "cublasGemmGroupedBatchedEx (%d groups): cuBLAS status %d (%s)",
                       n, st, cublasGetStatusString((cublasStatus_t)st));
    *grouped = 0;  // these types are not offered grouped: per-GEMM calls from now on
  }
#else
  *grouped = 0;
#endif
  for (int g = 0; g < G; g++) {
    int rc = cf_gemm_bf16(h, &a[g], s);
    if (rc) return rc;
  }
  return 0;
}
