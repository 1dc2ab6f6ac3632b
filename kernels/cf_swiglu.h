/* cf_swiglu — the SwiGLU MLP activation over the fused gate|up GEMM output. */
#ifndef CF_SWIGLU_H
#define CF_SWIGLU_H

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

/* gu is [T][2*I] bf16: columns [0, I) the gate projection, [I, 2I) the up projection (one
 * GEMM against the stacked [gate; up] weight). out[t][j] = bf16(silu(g + bg) * (u + bu)) with
 * g, u read from gu and the optional fp32 biases b_gate/b_up ([I], NULL for none).
 * out is [T][I] bf16 and must not overlap gu. Returns 0, CF_EINVAL or CF_ECUDA. */
int cf_swiglu(cf_bf16_t *out, const cf_bf16_t *gu, const float *b_gate, const float *b_up, int T,
              int I, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
