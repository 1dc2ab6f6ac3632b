/* cf_dtype — element types (the safetensors names) and exact bf16/f16 <-> fp32 conversions.
 *
 * In util, not model, because every layer holds typed data: the loader's weights (lib/model),
 * KV cells in the store, an engine's paged blocks (lib/ipc), CUDA IPC buffers (lib/gpu).
 */
#ifndef CF_DTYPE_H
#define CF_DTYPE_H

#include <stddef.h>

/* Element types of safetensors files. Only F32/BF16/F16 are accepted for weights and KV; the
 * others exist so that files holding token ids, masks or quantisation tables can be opened. */
typedef enum {
  CF_DT_F32 = 0, CF_DT_BF16, CF_DT_F16, CF_DT_I32, CF_DT_I64,
  CF_DT_F64, CF_DT_I16, CF_DT_I8, CF_DT_U8, CF_DT_BOOL, CF_DT__COUNT
} cf_dtype_t;

/* safetensors spelling ("F32", "BF16", ...); "?" when out of range. */
const char *cf_dtype_name(cf_dtype_t t);
/* Bytes per element; 0 when out of range. */
size_t cf_dtype_size(cf_dtype_t t);
/* Parses a safetensors dtype string; CF_EDTYPE (no detail set) when unknown. */
int cf_dtype_parse(const char *s, cf_dtype_t *out);

/* Exact widening conversions (every bf16/f16 value, subnormals and inf included, is
 * representable in fp32; f16 signalling NaNs come out quiet, as with F16C). `src` needs no
 * alignment. */
void cf_bf16_to_f32(const void *src, float *dst, size_t n);
void cf_f16_to_f32(const void *src, float *dst, size_t n);
/* Narrowing with round-to-nearest-even (NaN stays NaN). `dst` needs no alignment. */
void cf_f32_to_bf16(const float *src, void *dst, size_t n);
void cf_f32_to_f16(const float *src, void *dst, size_t n);
/* The same, chosen by dtype (F32: a plain copy; BF16/F16: the conversions above), for code that
 * holds data in a run-time dtype (KV cells, engine blocks). Other dtypes: nothing is written
 * (callers validate the dtype first: cf_kv_elem_size / cf_kv_layout_check). */
void cf_dtype_to_f32(cf_dtype_t t, const void *src, float *dst, size_t n);
void cf_dtype_from_f32(cf_dtype_t t, const float *src, void *dst, size_t n);

#endif
