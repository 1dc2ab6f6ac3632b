/* cf_moe — the routing side of a mixture-of-experts MLP on the GPU (the expert GEMMs are
 * cuBLAS calls made by the CUDA backend, one set per expert over all of its tokens).
 *
 * For T tokens, E experts, K = top_k:
 *   cf_moe_route    logits [T][E] fp32 -> per token the K chosen experts in ascending order
 *                   (sel [T][K]) and their weights (w [T][K]): softmax in fp32, top-K by
 *                   probability (lower index first on a tie), renormalised to sum 1 when
 *                   norm_topk — transformers' order of operations;
 *   cf_moe_plan     counting sort of the T*K (token, slot) pairs by expert, tokens ascending
 *                   within an expert: off [E+1] (pairs of expert e are packed rows
 *                   [off[e], off[e+1])), pos [T][K] (packed row of each pair), tok [T*K]
 *                   (token of each packed row). One thread: T*K is at most a few thousand;
 *   cf_moe_gather   A[r] = xn[tok[r]] (bf16 rows of `hidden`);
 *   cf_moe_combine  x[t] += sum over k, in ascending expert order, of w[t][k] * O[pos[t][k]]
 *                   (fp32; the sum starts from 0 and is then added to the residual, as
 *                   transformers' index_add_ into zeros followed by residual + that).
 * All return 0, CF_EINVAL or CF_ECUDA (launch errors) and run on stream s. */
#ifndef CF_MOE_H
#define CF_MOE_H

#include <stdint.h>

#include "kernels/cf_convert.h"

#ifdef __cplusplus
extern "C" {
#endif

int cf_moe_route(const float *logits, int T, int E, int K, int norm_topk, int32_t *sel, float *w,
                 cudaStream_t s);
int cf_moe_plan(const int32_t *sel, int T, int E, int K, int32_t *off, int32_t *pos, int32_t *tok,
                cudaStream_t s);
int cf_moe_gather(cf_bf16_t *A, const cf_bf16_t *xn, const int32_t *tok, int rows, int hidden,
                  cudaStream_t s);
int cf_moe_combine(float *x, const float *O, const int32_t *pos, const float *w, int T, int K,
                   int hidden, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
