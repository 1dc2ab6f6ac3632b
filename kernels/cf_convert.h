/* cf_convert — bf16 <-> fp32 conversion, bias add, embedding gather (device buffers).
 * bf16 values are passed as cf_bf16_t (raw 16-bit patterns) so C code can hold them. */
#ifndef CF_CONVERT_H
#define CF_CONVERT_H

#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t cf_bf16_t;

/* dst[i] = bf16(src[i]) (round to nearest even), i < n. Returns 0 or CF_EINVAL/CF_ECUDA. */
int cf_bf16_from_f32(cf_bf16_t *dst, const float *src, int64_t n, cudaStream_t s);
/* dst[i] = float(src[i]), exact. */
int cf_f32_from_bf16(float *dst, const cf_bf16_t *src, int64_t n, cudaStream_t s);
/* x[r][c] += b[c] for r < rows, c < cols (fp32, row-major, contiguous). */
int cf_add_bias_f32(float *x, const float *b, int rows, int cols, cudaStream_t s);
/* x[t][:] = float(table[tokens[t]][:]) for t < T. tokens live in device memory; an id outside
 * [0, vocab) writes a row of NaN instead of reading out of bounds (callers validate ids first). */
int cf_embed_bf16(float *x, const cf_bf16_t *table, const int32_t *tokens, int T, int hidden,
                  int vocab, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
