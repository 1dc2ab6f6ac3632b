// cf_gemm — bf16 GEMM with fp32 accumulation via cublasGemmEx.
#include "kernels/cf_gemm.h"

#include <cublas_v2.h>

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
