/* cf_kv — whole-sequence KV buffers and the ways of filling them through the backend primitive
 * (whole, chunk by chunk, staircase), token-file reading and KV safetensors output.
 * Shared by `cacheflowctl kv`, the demo and the tests, so all of them exercise one code path.
 */
#ifndef CF_KV_H
#define CF_KV_H

#include <stddef.h>
#include <stdint.h>

#include "model/cf_backend.h"

/* KV of T tokens for every layer: k[l], v[l] are [T][n_kv_heads][head_dim] fp32. */
typedef struct {
  int n_layers, T, n_kv_heads, head_dim;
  size_t row; /* floats per token per layer (n_kv_heads * head_dim) */
  float **k, **v;
} cf_kv_t;

/* Allocate zeroed buffers for T tokens of model config c. Free with cf_kv_free.
 * Errors: CF_EINVAL (T <= 0), CF_ENOMEM naming the size. */
int cf_kv_init(cf_kv_t *kv, const cf_model_config_t *c, int T);
void cf_kv_free(cf_kv_t *kv); /* NULL-safe, idempotent on a zeroed struct */

/* KV of tokens[0..T) (T = kv->T) at every layer: chunk <= 0 or >= T: one forward call; else
 * one call per chunk of `chunk` tokens, each given the KV of the earlier chunks.
 * Returns 0 or the backend's error. */
int cf_kv_compute(cf_backend_t *be, const int32_t *tokens, int chunk, cf_kv_t *kv);

/* Staircase: heights h[0..nh), one per chunk of `chunk` tokens (nh must be ceil(T/chunk),
 * each 0 <= h[c] <= n_layers). First the whole KV is computed into a scratch copy; the cells
 * above each chunk's height (layers >= h[c]) are taken from it ("loaded"), and the cells
 * below are computed through the primitive, chunk 0 first: layers [0, h[c]) of chunk c, given
 * the prefix rows of chunks < c at those layers (each computed or loaded already). Cells to be
 * computed are NaN until written, so a cell the plan misses cannot pass unnoticed.
 * Errors: CF_EINVAL (count or value of h, chunk <= 0) naming it, CF_ENOMEM, backend errors. */
int cf_kv_compute_staircase(cf_backend_t *be, const int32_t *tokens, int chunk, const int *h,
                            int nh, cf_kv_t *kv);

/* Write kv as safetensors: layers.{l}.k / layers.{l}.v [T, n_kv_heads, head_dim] F32, plus
 * `tokens` I32 [T] when tokens is not NULL. Errors: those of cf_st_writer_write. */
int cf_kv_write(const cf_kv_t *kv, const int32_t *tokens, const char *path);

/* Read a file written by cf_kv_write (or transformers-made reference KV with the same names):
 * every layers.{l}.k / layers.{l}.v for l = 0.. while present, F32 [T, n_kv_heads, head_dim],
 * into freshly allocated *kv (free with cf_kv_free); *tokens (if not NULL) gets the `tokens`
 * tensor as int32 or NULL when absent (caller frees). Errors: those of cf_st_open, CF_EFORMAT
 * (no layers.0.k, a k without its v, shapes differing between layers), CF_EDTYPE, CF_ENOMEM. */
int cf_kv_load(const char *path, cf_kv_t *kv, int32_t **tokens);

/* max|a - ref| / max|ref| over n floats (max|a - ref| when ref is all zero); INFINITY when a
 * difference is NaN. */
double cf_rel_err(const float *a, const float *ref, size_t n);

/* Worst per-tensor relative error of a against ref: max over layers and k/v of
 * max|a - ref| / max|ref| (NaN anywhere counts as infinite). *worst_layer and *worst_kv ('k' or
 * 'v') name where it occurs (either may be NULL). Shapes must match: CF_ESHAPE otherwise. */
int cf_kv_max_rel_err(const cf_kv_t *a, const cf_kv_t *ref, double *err, int *worst_layer,
                      char *worst_kv);

/* Read token ids from `path`: a safetensors file with a 1-D (or [1, T]) I32 or I64 tensor
 * `tokens`, or a text file of integers separated by whitespace and/or commas (the brackets of
 * a JSON list "[1, 2, 3]" count as separators too). Ids must lie in
 * [0, vocab). On success *out (malloc'd, caller frees) holds *T >= 1 ids.
 * Errors: CF_ENOENT/CF_EIO (file), CF_EFORMAT (not a number, no tokens, missing `tokens`
 * tensor, wrong shape), CF_EDTYPE (tensor dtype), CF_ERANGE (id out of range, naming its
 * position), CF_ENOMEM. */
int cf_tokens_load(const char *path, int vocab, int32_t **out, int *T);

#endif
