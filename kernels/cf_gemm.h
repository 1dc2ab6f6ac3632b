/* cf_gemm — the one GEMM shape the model needs, through cuBLAS: row-major Y = X · Wᵀ with
 * X [M][K] and W [N][K] in bf16 (W in the Hugging Face [out][in] layout), fp32 accumulation,
 * Y [M][N] in bf16 or fp32. With fp32 Y and beta = 1 the GEMM adds into Y, which is how the
 * backend fuses the residual add into the o_proj and down_proj GEMMs. */
#ifndef CF_GEMM_H
#define CF_GEMM_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cublasContext;

typedef struct {
  int M, N, K;
  const cf_bf16_t *X; int64_t ldx;  /* row stride of X in elements (>= K) */
  const cf_bf16_t *W; int64_t ldw;  /* row stride of W (>= K) */
  void *Y; int64_t ldy;             /* row stride of Y (>= N) */
  int y_f32;                        /* 1: Y is fp32, 0: Y is bf16 */
  float beta;                       /* Y = X·Wᵀ + beta·Y (beta 0: Y is only written) */
} cf_gemm_args_t;

/* Runs on stream s with handle h (the handle's workspace, set once by the caller with
 * cublasSetWorkspace, keeps this call from allocating). Returns 0, CF_EINVAL or CF_ECUDA. */
int cf_gemm_bf16(struct cublasContext *h, const cf_gemm_args_t *a, cudaStream_t s);

/* G GEMMs of the shape above (a[g] each with its own M, X, W, Y; all with the same y_f32 and
 * beta), e.g. one per mixture-of-experts expert over its routed tokens. When *grouped is set
 * and cuBLAS has cublasGemmGroupedBatchedEx (cuBLAS >= 12.5) they are ONE call, one group per
 * GEMM with M > 0; otherwise, or when cuBLAS answers CUBLAS_STATUS_NOT_SUPPORTED for these
 * types (it then clears *grouped so later calls skip the try), one cublasGemmEx per GEMM.
 * cuBLAS reads the W/X/Y pointer arrays from device memory: ptrs_host (pinned, 3*G entries) is
 * filled and copied on stream s into ptrs_dev (device, 3*G entries), so the caller must not
 * reuse ptrs_host until the stream has passed this call. *used (may be NULL): 1 when the
 * grouped call ran. Returns 0, CF_EINVAL, CF_ENOMEM or CF_ECUDA. */
int cf_gemm_bf16_grouped(struct cublasContext *h, const cf_gemm_args_t *a, int G, int *grouped,
                         void **ptrs_host, void **ptrs_dev, int *used, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
