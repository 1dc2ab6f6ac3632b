/* cf_backend — the model engine's one primitive, behind one interface for every backend.
 *
 * forward(): for layers [l0, l1) and tokens [t0, t1) (absolute positions), given
 *   - the layer-l0 input: token ids (l0 == 0) or hidden states [t1-t0][hidden] (l0 > 0),
 *   - the KV of tokens [0, t0) for each of those layers,
 * compute the KV of tokens [t0, t1) for each layer and the layer-l1 input hidden states.
 *
 * KV buffers: k[i] and v[i] (i = l - l0) each point to a per-layer buffer laid out
 * [token][n_kv_heads][head_dim] fp32 (post-RoPE, as transformers caches it), holding at least
 * t1 rows: rows [0, t0) are read (the prefix), rows [t0, t1) are written. So a chunked or
 * staircase computation passes the same whole-sequence buffers on every call.
 */
#ifndef CF_BACKEND_H
#define CF_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "model/cf_model.h"

typedef struct {
  int l0, l1;               /* layer range, 0 <= l0 < l1 <= n_layers */
  int t0, t1;               /* token range, 0 <= t0 < t1 */
  const int32_t *tokens;    /* [t1-t0] token ids; required when l0 == 0 */
  const float *hidden_in;   /* [t1-t0][hidden]; required when l0 > 0 */
  float *const *k;          /* [l1-l0] per-layer KV buffers, see above */
  float *const *v;
  float *hidden_out;        /* [t1-t0][hidden], the input of layer l1 (NULL: not needed) */
} cf_fwd_args_t;

typedef struct cf_backend_s cf_backend_t;
struct cf_backend_s {
  const char *name;             /* "cpu", "cuda" */
  const cf_model_t *model;      /* borrowed: must outlive the backend */
  int (*forward)(cf_backend_t *be, const cf_fwd_args_t *a);
  void (*free)(cf_backend_t *be);
};

/* Validate `a` against the model (ranges, required pointers) and run the backend.
 * Returns 0, CF_EINVAL with a detail naming the bad argument, or a backend error. */
int cf_backend_forward(cf_backend_t *be, const cf_fwd_args_t *a);
void cf_backend_free(cf_backend_t *be);

/* CPU backend: fp32, OpenBLAS sgemm, n_threads worker threads (0: 2). The model is borrowed. */
int cf_backend_cpu_create(const cf_model_t *m, int n_threads, cf_backend_t **out);

/* CUDA backend (built when nvcc exists): bf16 weights uploaded once to `device`.
 * Returns CF_ENODEV when no GPU is usable, so callers fall back to the CPU backend. */
int cf_backend_cuda_create(const cf_model_t *m, int device, cf_backend_t **out);
/* Device memory the CUDA backend took at creation (its own weights, step scratch, cuBLAS
 * workspace; measured with cudaMemGetInfo around it, so other users of the device at the same
 * moment would count too). 0 for another backend or without CUDA. */
size_t cf_backend_cuda_device_bytes(const cf_backend_t *be);
/* Borrowed weights (issue 18): compute on an engine's device tensors (cf_borrow_device: vLLM's
 * fused bf16 qkv_proj / gate_up_proj / o_proj / down_proj and the embedding) instead of the
 * backend's own copies, which are freed (*released bytes; device_bytes drops by them). Call with
 * no forward running (the executor's between-rounds swap). unborrow uploads the own copies again
 * from be->model's host weights. 0 or CF_E* (CF_ENODEV without CUDA). Written, not run on a GPU. */
struct cf_borrow_dev_s;
int cf_backend_cuda_borrow(cf_backend_t *be, const struct cf_borrow_dev_s *w, size_t *released);
int cf_backend_cuda_unborrow(cf_backend_t *be);
/* CUDA devices this process can use: 0 without CUDA in this build, a driver or a GPU. */
int cf_backend_cuda_devices(void);

/* Pick by name: "cpu", "cuda", or "auto" (cuda when a GPU is usable, else cpu). */
int cf_backend_create(const char *name, const cf_model_t *m, cf_backend_t **out);

#endif
