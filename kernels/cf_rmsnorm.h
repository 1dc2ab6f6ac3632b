/* cf_rmsnorm — RMSNorm of an fp32 residual stream into a bf16 GEMM input, optionally fused
 * with the residual add (one pass instead of an add kernel plus a norm kernel). */
#ifndef CF_RMSNORM_H
#define CF_RMSNORM_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

/* For each row r < rows of x ([rows][dim] fp32, contiguous):
 *   if add != NULL: x[r] += float(add[r])   (written back: x is the residual stream)
 *   y[r] = bf16( x[r] * rsqrt(mean(x[r]^2) + eps) * w )     (as transformers' LlamaRMSNorm)
 * w is [dim] fp32. y and add are [rows][dim] bf16. Returns 0, CF_EINVAL or CF_ECUDA. */
int cf_rmsnorm(cf_bf16_t *y, float *x, const cf_bf16_t *add, const float *w, int rows, int dim,
               float eps, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
