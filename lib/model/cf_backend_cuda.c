/* CUDA backend of the model primitive: see cf_backend_cuda.h for the contract.
 *
 * Per layer and step of <= CF_CUDA_MAX_STEP tokens (x is the fp32 residual stream):
 *   xn  = rmsnorm(x)                         cf_rmsnorm
 *   qkv = xn · [Wq;Wk;Wv]ᵀ                   one cuBLAS GEMM against the stacked weight, fp32 out
 *   q, K[t], V[t] = rope(norm(qkv + b))      cf_rope_qkv writes K/V straight into the layer buffer
 *   a   = attention(q, K[0..t], V[0..t])     cf_attn_prefix (flash-style, GQA)
 *   x  += a · Woᵀ                            GEMM with fp32 output and beta = 1: the residual add
 *   xn  = rmsnorm(x)
 *   gu  = xn · [Wg;Wu]ᵀ                      one GEMM against the stacked gate|up weight
 *   h   = silu(g) * u                        cf_swiglu
 *   x  += h · Wdownᵀ                         GEMM, beta = 1
 * MoE layers replace the last three lines by cf__moe_pass (router GEMM, cf_moe route/plan/
 * gather, the experts' [gate; up] GEMMs over their tokens as one cuBLAS grouped GEMM, one
 * SwiGLU over every routed row, the down GEMMs grouped again, combine; per-expert cuBLAS
 * GEMMs where grouped GEMM is missing or refused, or CF_CUDA_MOE_GROUPED=0 at create).
 * Sliding-window layers pass their window to cf_attn_prefix.
 * Built without nvcc, the backend reports CF_ENODEV.
 */
#include "model/cf_backend_cuda.h"
#include "model/cf_borrow.h"

#include "util/cf_err.h"

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)

int cf_backend_cuda_create(const cf_model_t *m, int device, cf_backend_t **out) {
  (void)m; (void)device;
  *out = NULL;
  return cf_seterr(CF_ENODEV, "CUDA backend not built into this binary (no nvcc at build time)");
}

int cf_backend_cuda_devices(void) { return 0; }
size_t cf_backend_cuda_device_bytes(const cf_backend_t *be) { (void)be; return 0; }
int cf_backend_cuda_borrow(cf_backend_t *be, const cf_borrow_dev_t *w, size_t *released) {
  (void)be; (void)w;
  *released = 0;
  return cf_seterr(CF_ENODEV, "CUDA backend not built into this binary (no nvcc at build time)");
}
int cf_backend_cuda_unborrow(cf_backend_t *be) { (void)be; return 0; }

#else

#include <cublas_v2.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cf_attn.h"
#include "kernels/cf_convert.h"
#include "kernels/cf_cuda_check.h"
#include "kernels/cf_gemm.h"
#include "kernels/cf_moe.h"
#include "kernels/cf_rmsnorm.h"
#include "kernels/cf_rope.h"
#include "model/cf_cpu_ops.h"
#include "kernels/cf_swiglu.h"

#define CF_CUDA_BLAS_WS (32u << 20)      /* cuBLAS workspace, set once so GEMMs never allocate */
#define CF_CUDA_UPLOAD_FLOATS (8u << 20) /* fp32 staging for weight upload: 32 MiB */
#define CF_CUDA_ATTN_WS (16 << 20)       /* floats of split-KV attention workspace: 64 MiB */

/* Tokens per pass of a MoE MLP: bounds the routed-pair buffers (T x top_k rows of hidden and
 * of the experts' width) independently of the step size. */
#define CF_CUDA_MOE_STEP 1024

typedef struct {
  cf_bf16_t *wqkv, *wo, *wgu, *wdown;
  float *attn_norm, *mlp_norm, *q_norm, *k_norm;
  float *bqkv, *bo, *bgate, *bup, *bdown;
  /* MoE layers: router [E][D]; expert e's [gate; up] at ewgu + e*2*MI*D, down at ewdown + e*D*MI */
  cf_bf16_t *router, *ewgu, *ewdown;
} cf__cuda_layer_t;

typedef struct {
  cf_backend_t base;
  int device;
  int max_step;  /* tokens per internal step: CF_CUDA_MAX_STEP, or $CF_CUDA_MAX_STEP if smaller */
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_ws;
  cf__cuda_layer_t *layers;
  cf_bf16_t *embed;
  float *inv_freq;
  /* step workspace, for CF_CUDA_MAX_STEP tokens */
  float *x, *qkv;  /* fp32: the residual stream; the QKV projection (rounded once, after RoPE) */
  cf_bf16_t *xn, *q, *attn, *gu, *h;
  float *attn_ws;  /* split-KV partials for short chunks over long prefixes */
  int64_t attn_ws_floats;
  /* MoE pass workspace (MoE models only), CF_CUDA_MOE_STEP tokens x top_k pairs */
  float *moe_logits, *moe_w, *moe_out;
  int32_t *moe_sel, *moe_off, *moe_pos, *moe_tok;
  cf_bf16_t *moe_a, *moe_gu, *moe_h;
  int32_t *moe_off_host; /* pinned: the per-expert offsets the host loops over */
  /* grouped expert GEMMs: W/X/Y pointer arrays, [gate|up: 3E][down: 3E], pinned and device */
  void **moe_ptr_host, **moe_ptr_dev;
  int moe_grouped_gu, moe_grouped_dn; /* 1: try cuBLAS grouped GEMM (cleared if refused) */
  int moe_last_grouped;               /* the last pass: bit 0 gate|up grouped, bit 1 down; -1 none */
  cf_gemm_args_t *moe_args;           /* host [2E]: the gate|up and down GEMM of each expert */
  /* host-API staging, grown on demand */
  cf_bf16_t *kv;  size_t kv_cap;   /* [l1-l0][2][t1][n_kv*hd] */
  float *stage;   size_t stage_cap;
  float *hin, *hout; size_t hin_cap, hout_cap;
  int32_t *tok;   size_t tok_cap;
  size_t dev_bytes;  /* device memory its creation took (cudaMemGetInfo before/after) */
  int borrowed;      /* the matrices and embedding point into an engine's memory (cf_backend_cuda_borrow) */
} cf__cuda_be_t;

size_t cf_backend_cuda_device_bytes(const cf_backend_t *be) {
  if (!be || !be->name || strcmp(be->name, "cuda") != 0) return 0;
  return ((const cf__cuda_be_t *)be)->dev_bytes;
}

/* Grow a device buffer to at least `bytes` (contents are not kept). */
static int cf__dgrow(void **p, size_t *cap, size_t bytes) {
  if (*cap >= bytes) return 0;
  if (*p) CF_CUDA_TRY(cudaFree(*p));
  *p = NULL;
  *cap = 0;
  if (cudaMalloc(p, bytes) != cudaSuccess) {
    cudaGetLastError();
    *p = NULL;
    return cf_seterr(CF_ENOMEM, "cuda backend: cudaMalloc of %zu bytes failed", bytes);
  }
  *cap = bytes;
  return 0;
}

static int cf__dalloc(void **p, size_t bytes, const char *what) {
  if (cudaMalloc(p, bytes) != cudaSuccess) {
    cudaGetLastError();
    *p = NULL;
    return cf_seterr(CF_ENOMEM, "cuda backend: cudaMalloc of %zu bytes for %s failed", bytes, what);
  }
  return 0;
}

/* Upload n fp32 host values as bf16 at dst (through the fp32 staging buffer). */
static int cf__up_bf16(cf__cuda_be_t *b, cf_bf16_t *dst, const float *src, size_t n) {
  for (size_t off = 0; off < n; off += CF_CUDA_UPLOAD_FLOATS) {
    size_t k = n - off < CF_CUDA_UPLOAD_FLOATS ? n - off : CF_CUDA_UPLOAD_FLOATS;
    CF_CUDA_TRY(cudaMemcpyAsync(b->stage, src + off, k * 4, cudaMemcpyHostToDevice, b->stream));
    int rc = cf_bf16_from_f32(dst + off, b->stage, (int64_t)k, b->stream);
    if (rc) return rc;
  }
  return 0;
}

/* Upload an fp32 vector (NULL src: *dst = NULL). */
static int cf__up_f32(float **dst, const float *src, size_t n, const char *what) {
  *dst = NULL;
  if (!src) return 0;
  int rc = cf__dalloc((void **)dst, n * 4, what);
  if (rc) return rc;
  CF_CUDA_TRY(cudaMemcpy(*dst, src, n * 4, cudaMemcpyHostToDevice));
  return 0;
}

/* Stacked biases [a; b; c] as one fp32 vector when any is present (missing parts are zero). */
static int cf__up_bias3(float **dst, const float *a, size_t na, const float *b_, size_t nb,
                        const float *c, size_t nc) {
  *dst = NULL;
  if (!a && !b_ && !c) return 0;
  size_t n = na + nb + nc;
  float *h = calloc(n, 4);
  if (!h) return cf_seterr(CF_ENOMEM, "cuda backend: bias staging");
  if (a) memcpy(h, a, na * 4);
  if (b_) memcpy(h + na, b_, nb * 4);
  if (c) memcpy(h + na + nb, c, nc * 4);
  int rc = cf__up_f32(dst, h, n, "stacked q/k/v bias");
  free(h);
  return rc;
}

/* Drop the big matrices' pointers (borrowed: the engine's; or freed by the caller). */
static void cf__forget_mats(cf__cuda_be_t *b) {
  for (int l = 0; l < b->base.model->cfg.n_layers; l++) {
    cf__cuda_layer_t *L = &b->layers[l];
    L->wqkv = L->wo = L->wgu = L->wdown = NULL;
  }
  b->embed = NULL;
}

static void cf__cuda_free(cf_backend_t *be) {
  if (!be) return;
  cf__cuda_be_t *b = (cf__cuda_be_t *)be;
  cudaSetDevice(b->device);
  if (b->stream) cudaStreamSynchronize(b->stream);
  if (b->borrowed) cf__forget_mats(b); /* the engine's memory: never ours to free */
  if (b->layers) {
    for (int l = 0; l < be->model->cfg.n_layers; l++) {
      cf__cuda_layer_t *L = &b->layers[l];
      void *ps[] = {L->wqkv, L->wo, L->wgu, L->wdown, L->attn_norm, L->mlp_norm, L->q_norm,
                    L->k_norm, L->bqkv, L->bo, L->bgate, L->bup, L->bdown, L->router, L->ewgu,
                    L->ewdown};
      for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    }
    free(b->layers);
  }
  void *ps[] = {b->embed, b->inv_freq, b->x, b->xn, b->qkv, b->q, b->attn, b->gu, b->h, b->attn_ws,
                b->kv, b->stage, b->hin, b->hout, b->tok, b->blas_ws, b->moe_logits, b->moe_w,
                b->moe_out, b->moe_sel, b->moe_off, b->moe_pos, b->moe_tok, b->moe_a, b->moe_gu,
                b->moe_h, b->moe_ptr_dev};
  for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
  if (b->moe_off_host) cudaFreeHost(b->moe_off_host);
  if (b->moe_ptr_host) cudaFreeHost(b->moe_ptr_host);
  free(b->moe_args);
  if (b->blas) cublasDestroy(b->blas);
  if (b->stream) cudaStreamDestroy(b->stream);
  cudaGetLastError();
  free(b);
}

/* The MoE MLP of T (<= CF_CUDA_MOE_STEP) tokens whose normed input is xn [T][D] (bf16): route,
 * sort the (token, expert) pairs by expert, then for the experts with tokens their [gate; up]
 * GEMMs (one grouped cuBLAS call), one SwiGLU over all T*K packed rows (each row is one
 * expert's, so this is the per-expert SwiGLU at once) and their down GEMMs (grouped again);
 * x [T][D] += the weighted sum. The host needs the per-expert counts to size the GEMMs: one
 * small device-to-host copy and a stream sync per pass. That sync also guarantees that the
 * previous pass's pointer-array copies have run before moe_ptr_host is rewritten. */
static int cf__moe_pass(cf__cuda_be_t *b, const cf__cuda_layer_t *L, const cf_bf16_t *xn,
                        float *x, int T, cudaStream_t s) {
  const cf_model_config_t *c = &b->base.model->cfg;
  int D = c->hidden, E = c->n_experts, K = c->top_k, MI = c->moe_intermediate, rc;
  cf_gemm_args_t gr = {T, E, D, xn, D, L->router, D, b->moe_logits, E, 1, 0.f};
  if ((rc = cf_gemm_bf16(b->blas, &gr, s)) ||
      (rc = cf_moe_route(b->moe_logits, T, E, K, c->norm_topk, b->moe_sel, b->moe_w, s)) ||
      (rc = cf_moe_plan(b->moe_sel, T, E, K, b->moe_off, b->moe_pos, b->moe_tok, s)) ||
      (rc = cf_moe_gather(b->moe_a, xn, b->moe_tok, T * K, D, s)))
    return rc;
  CF_CUDA_TRY(cudaMemcpyAsync(b->moe_off_host, b->moe_off, sizeof(int32_t) * (E + 1),
                              cudaMemcpyDeviceToHost, s));
  CF_CUDA_TRY(cudaStreamSynchronize(s));
  const int32_t *off = b->moe_off_host;
  cf_gemm_args_t *gg = b->moe_args, *gd = b->moe_args + E;
  for (int e = 0; e < E; e++) { /* experts without tokens have M = 0: no group, no call */
    int r0 = off[e], n = off[e + 1] - off[e];
    const cf_bf16_t *wgu = L->ewgu + (size_t)e * 2 * MI * D, *wdn = L->ewdown + (size_t)e * D * MI;
    gg[e] = (cf_gemm_args_t){n, 2 * MI, D, b->moe_a + (size_t)r0 * D, D, wgu, D,
                             b->moe_gu + (size_t)r0 * 2 * MI, 2 * MI, 0, 0.f};
    gd[e] = (cf_gemm_args_t){n, D, MI, b->moe_h + (size_t)r0 * MI, MI, wdn, MI,
                             b->moe_out + (size_t)r0 * D, D, 1, 0.f};
  }
  int used_gu = 0, used_dn = 0, rows = off[E];
  if ((rc = cf_gemm_bf16_grouped(b->blas, gg, E, &b->moe_grouped_gu, b->moe_ptr_host,
                                 b->moe_ptr_dev, &used_gu, s)) ||
      (rc = cf_swiglu(b->moe_h, b->moe_gu, NULL, NULL, rows, MI, s)) ||
      (rc = cf_gemm_bf16_grouped(b->blas, gd, E, &b->moe_grouped_dn, b->moe_ptr_host + 3 * E,
                                 b->moe_ptr_dev + 3 * E, &used_dn, s)))
    return rc;
  b->moe_last_grouped = (used_gu ? 1 : 0) | (used_dn ? 2 : 0);
  return cf_moe_combine(x, b->moe_out, b->moe_pos, b->moe_w, T, K, D, s);
}

/* One layer over one step of T tokens at absolute positions [p0, p0+T). */
static int cf__layer(cf__cuda_be_t *b, int l, int p0, int T, cf_bf16_t *kbuf, cf_bf16_t *vbuf,
                     int64_t kv_rs, cudaStream_t s) {
  const cf_model_config_t *c = &b->base.model->cfg;
  const cf__cuda_layer_t *L = &b->layers[l];
  int hd = c->head_dim, H = c->n_heads, KV = c->n_kv_heads, D = c->hidden, I = c->intermediate;
  int nqkv = (H + 2 * KV) * hd;
  float eps = (float)c->rms_eps;
  int rc;
  if ((rc = cf_rmsnorm(b->xn, b->x, NULL, L->attn_norm, T, D, eps, s))) return rc;
  cf_gemm_args_t g = {T, nqkv, D, b->xn, D, L->wqkv, D, b->qkv, nqkv, 1, 0.f};
  if ((rc = cf_gemm_bf16(b->blas, &g, s))) return rc;
  cf_rope_args_t r = {T, p0, H, KV, hd, b->qkv, 1, L->bqkv, L->q_norm, L->k_norm, eps, b->inv_freq,
                      b->q, kbuf + p0 * kv_rs, vbuf + p0 * kv_rs, kv_rs};
  if ((rc = cf_rope_qkv(&r, s))) return rc;
  cf_attn_args_t at = {T, p0, H, KV, hd, 1.f / sqrtf((float)hd), b->q, (int64_t)H * hd,
                       kbuf, vbuf, kv_rs, b->attn, (int64_t)H * hd, b->attn_ws, b->attn_ws_floats,
                       cf_model_layer_window(c, l)};
  if ((rc = cf_attn_prefix(&at, s))) return rc;
  cf_gemm_args_t go = {T, D, H * hd, b->attn, H * hd, L->wo, H * hd, b->x, D, 1, 1.f};
  if ((rc = cf_gemm_bf16(b->blas, &go, s))) return rc;
  if (L->bo && (rc = cf_add_bias_f32(b->x, L->bo, T, D, s))) return rc;
  if ((rc = cf_rmsnorm(b->xn, b->x, NULL, L->mlp_norm, T, D, eps, s))) return rc;
  if (c->layer_moe[l]) {
    for (int t = 0; t < T; t += CF_CUDA_MOE_STEP) {
      int n = T - t < CF_CUDA_MOE_STEP ? T - t : CF_CUDA_MOE_STEP;
      if ((rc = cf__moe_pass(b, L, b->xn + (size_t)t * D, b->x + (size_t)t * D, n, s))) return rc;
    }
    return 0;
  }
  cf_gemm_args_t gg = {T, 2 * I, D, b->xn, D, L->wgu, D, b->gu, 2 * I, 0, 0.f};
  if ((rc = cf_gemm_bf16(b->blas, &gg, s))) return rc;
  if ((rc = cf_swiglu(b->h, b->gu, L->bgate, L->bup, T, I, s))) return rc;
  cf_gemm_args_t gd = {T, D, I, b->h, I, L->wdown, I, b->x, D, 1, 1.f};
  if ((rc = cf_gemm_bf16(b->blas, &gd, s))) return rc;
  if (L->bdown && (rc = cf_add_bias_f32(b->x, L->bdown, T, D, s))) return rc;
  return 0;
}

int cf_backend_cuda_forward_dev(cf_backend_t *be, const cf_cuda_fwd_args_t *a, cudaStream_t s) {
  if (!be || !a || strcmp(be->name, "cuda") != 0)
    return cf_seterr(CF_EINVAL, "cf_backend_cuda_forward_dev: not a CUDA backend");
  cf__cuda_be_t *b = (cf__cuda_be_t *)be;
  const cf_model_config_t *c = &be->model->cfg;
  if (a->l0 < 0 || a->l1 <= a->l0 || a->l1 > c->n_layers)
    return cf_seterr(CF_EINVAL, "forward_dev: layers [%d, %d) not within [0, %d)", a->l0, a->l1,
                     c->n_layers);
  if (a->t0 < 0 || a->t1 <= a->t0)
    return cf_seterr(CF_EINVAL, "forward_dev: tokens [%d, %d) empty or negative", a->t0, a->t1);
  if (a->l0 == 0 && !a->tokens) return cf_seterr(CF_EINVAL, "forward_dev: l0 == 0 needs tokens");
  if (a->l0 > 0 && !a->hidden_in)
    return cf_seterr(CF_EINVAL, "forward_dev: l0 = %d > 0 needs hidden_in", a->l0);
  if (!a->k || !a->v) return cf_seterr(CF_EINVAL, "forward_dev: k and v arrays are required");
  for (int i = 0; i < a->l1 - a->l0; i++)
    if (!a->k[i] || !a->v[i])
      return cf_seterr(CF_EINVAL, "forward_dev: k/v buffer of layer %d is NULL", a->l0 + i);
  if (a->kv_row_stride < (int64_t)c->n_kv_heads * c->head_dim)
    return cf_seterr(CF_EINVAL, "forward_dev: kv_row_stride %lld < n_kv_heads*head_dim %d",
                     (long long)a->kv_row_stride, c->n_kv_heads * c->head_dim);
  if (!s) s = b->stream;
  CF_CUDA_TRY(cudaSetDevice(b->device));
  int D = c->hidden, rc;
  for (int p0 = a->t0; p0 < a->t1; p0 += b->max_step) {
    int T = a->t1 - p0 < b->max_step ? a->t1 - p0 : b->max_step;
    int64_t off = (int64_t)(p0 - a->t0);
    if (a->l0 == 0) {
      if ((rc = cf_embed_bf16(b->x, b->embed, a->tokens + off, T, D, c->vocab, s))) return rc;
    } else {
      CF_CUDA_TRY(cudaMemcpyAsync(b->x, a->hidden_in + off * D, (size_t)T * D * 4,
                                  cudaMemcpyDeviceToDevice, s));
    }
    for (int l = a->l0; l < a->l1; l++)
      if ((rc = cf__layer(b, l, p0, T, a->k[l - a->l0], a->v[l - a->l0], a->kv_row_stride, s)))
        return cf_err_prefix(rc, "layer %d, tokens [%d, %d): ", l, p0, p0 + T);
    if (a->hidden_out)
      CF_CUDA_TRY(cudaMemcpyAsync(a->hidden_out + off * D, b->x, (size_t)T * D * 4,
                                  cudaMemcpyDeviceToDevice, s));
  }
  return 0;
}

/* The host-argument forward: see cf_backend.h (args already validated by cf_backend_forward). */
static int cf__cuda_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  cf__cuda_be_t *b = (cf__cuda_be_t *)be;
  const cf_model_config_t *c = &be->model->cfg;
  int nl = a->l1 - a->l0, T = a->t1 - a->t0, D = c->hidden;
  int64_t row = (int64_t)c->n_kv_heads * c->head_dim;
  size_t plane = (size_t)a->t1 * row;  /* elements of one layer's K (or V) */
  int rc;
  CF_CUDA_TRY(cudaSetDevice(b->device));
  if ((rc = cf__dgrow((void **)&b->kv, &b->kv_cap, (size_t)nl * 2 * plane * 2))) return rc;
  size_t stage_need = plane > (size_t)T * D ? plane : (size_t)T * D;
  if (stage_need < CF_CUDA_UPLOAD_FLOATS) stage_need = CF_CUDA_UPLOAD_FLOATS;
  if ((rc = cf__dgrow((void **)&b->stage, &b->stage_cap, stage_need * 4))) return rc;
  if (a->l0 > 0 && (rc = cf__dgrow((void **)&b->hin, &b->hin_cap, (size_t)T * D * 4))) return rc;
  if (a->hidden_out && (rc = cf__dgrow((void **)&b->hout, &b->hout_cap, (size_t)T * D * 4)))
    return rc;

  uint16_t *kp[nl], *vp[nl];
  for (int i = 0; i < nl; i++) {
    kp[i] = b->kv + (size_t)(2 * i) * plane;
    vp[i] = b->kv + (size_t)(2 * i + 1) * plane;
    if (a->t0 > 0) { /* the prefix: fp32 host rows [0, t0) -> bf16 device */
      size_t n = (size_t)a->t0 * row;
      CF_CUDA_TRY(cudaMemcpyAsync(b->stage, a->k[i], n * 4, cudaMemcpyHostToDevice, b->stream));
      if ((rc = cf_bf16_from_f32(kp[i], b->stage, (int64_t)n, b->stream))) return rc;
      CF_CUDA_TRY(cudaMemcpyAsync(b->stage, a->v[i], n * 4, cudaMemcpyHostToDevice, b->stream));
      if ((rc = cf_bf16_from_f32(vp[i], b->stage, (int64_t)n, b->stream))) return rc;
    }
  }
  cf_cuda_fwd_args_t d = {a->l0, a->l1, a->t0, a->t1, NULL, NULL, kp, vp, row,
                         a->hidden_out ? b->hout : NULL};
  if (a->l0 == 0) {
    for (int t = 0; t < T; t++)
      if (a->tokens[t] < 0 || a->tokens[t] >= c->vocab)
        return cf_seterr(CF_EINVAL, "forward: token %d (position %d) outside vocab [0, %d)",
                         a->tokens[t], a->t0 + t, c->vocab);
    if ((rc = cf__dgrow((void **)&b->tok, &b->tok_cap, (size_t)T * 4))) return rc;
    CF_CUDA_TRY(cudaMemcpyAsync(b->tok, a->tokens, (size_t)T * 4, cudaMemcpyHostToDevice,
                                b->stream));
    d.tokens = b->tok;
  } else {
    CF_CUDA_TRY(cudaMemcpyAsync(b->hin, a->hidden_in, (size_t)T * D * 4, cudaMemcpyHostToDevice,
                                b->stream));
    d.hidden_in = b->hin;
  }
  if ((rc = cf_backend_cuda_forward_dev(be, &d, b->stream))) return rc;
  for (int i = 0; i < nl; i++) { /* the new rows [t0, t1) -> fp32 host */
    size_t n = (size_t)T * row, o = (size_t)a->t0 * row;
    if ((rc = cf_f32_from_bf16(b->stage, kp[i] + o, (int64_t)n, b->stream))) return rc;
    CF_CUDA_TRY(cudaMemcpyAsync(a->k[i] + o, b->stage, n * 4, cudaMemcpyDeviceToHost, b->stream));
    if ((rc = cf_f32_from_bf16(b->stage, vp[i] + o, (int64_t)n, b->stream))) return rc;
    CF_CUDA_TRY(cudaMemcpyAsync(a->v[i] + o, b->stage, n * 4, cudaMemcpyDeviceToHost, b->stream));
  }
  if (a->hidden_out)
    CF_CUDA_TRY(cudaMemcpyAsync(a->hidden_out, b->hout, (size_t)T * D * 4,
                                cudaMemcpyDeviceToHost, b->stream));
  CF_CUDA_TRY(cudaStreamSynchronize(b->stream));
  return 0;
}

/* Layer l's projection matrices as bf16 in the fused layout vLLM uses too: wqkv = [q; k; v] rows,
 * wgu = [gate; up] rows (dense layers), wo, wdown; allocated and uploaded from the host model. */
static int cf__layer_mats(cf__cuda_be_t *b, int l) {
  const cf_model_config_t *c = &b->base.model->cfg;
  const cf_layer_weights_t *w = &b->base.model->layers[l];
  cf__cuda_layer_t *L = &b->layers[l];
  size_t D = c->hidden, I = c->intermediate, nq = (size_t)c->n_heads * c->head_dim,
         nkv = (size_t)c->n_kv_heads * c->head_dim;
  int moe = c->layer_moe[l], rc;
  if ((rc = cf__dalloc((void **)&L->wqkv, (nq + 2 * nkv) * D * 2, "wqkv")) ||
      (rc = cf__up_bf16(b, L->wqkv, w->wq, nq * D)) ||
      (rc = cf__up_bf16(b, L->wqkv + nq * D, w->wk, nkv * D)) ||
      (rc = cf__up_bf16(b, L->wqkv + (nq + nkv) * D, w->wv, nkv * D)) ||
      (rc = cf__dalloc((void **)&L->wo, D * nq * 2, "wo")) ||
      (rc = cf__up_bf16(b, L->wo, w->wo, D * nq)) ||
      (!moe && (rc = cf__dalloc((void **)&L->wgu, 2 * I * D * 2, "w_gate|w_up"))) ||
      (!moe && (rc = cf__up_bf16(b, L->wgu, w->w_gate, I * D))) ||
      (!moe && (rc = cf__up_bf16(b, L->wgu + I * D, w->w_up, I * D))) ||
      (!moe && (rc = cf__dalloc((void **)&L->wdown, D * I * 2, "w_down"))) ||
      (!moe && (rc = cf__up_bf16(b, L->wdown, w->w_down, D * I))))
    return rc;
  return 0;
}

static int cf__cuda_upload(cf__cuda_be_t *b) {
  const cf_model_t *m = b->base.model;
  const cf_model_config_t *c = &m->cfg;
  size_t D = c->hidden, I = c->intermediate, hd = c->head_dim;
  size_t nq = (size_t)c->n_heads * hd, nkv = (size_t)c->n_kv_heads * hd;
  int rc;
  if ((rc = cf__dalloc((void **)&b->embed, (size_t)c->vocab * D * 2, "embedding"))) return rc;
  if ((rc = cf__up_bf16(b, b->embed, m->embed, (size_t)c->vocab * D))) return rc;
  float invf[512];
  if (hd / 2 > sizeof invf / sizeof invf[0])
    return cf_seterr(CF_EUNSUPPORTED, "cuda backend: head_dim %zu > 1024", hd);
  /* The rope kernel rotates with cos/sin unscaled: yarn's attention factor is not applied. */
  if (cf__rope_scale(c) != 1.0f)
    return cf_seterr(CF_EUNSUPPORTED, "cuda backend: rope_type yarn with attention_factor %g "
                     "(not 1) is not supported (the CPU backend computes it)", c->rope_attn_factor);
  if (c->rope_kind == CF_ROPE_LINEAR || c->rope_kind == CF_ROPE_YARN)
    cf__rope_inv_freq(c, invf); /* the CPU backend's tables, as transformers builds them */
  else if ((rc = cf_rope_inv_freq(invf, (int)hd, c->rope_theta, c->rope_kind == CF_ROPE_LLAMA3,
                                  c->rope_factor, c->rope_low_freq_factor,
                                  c->rope_high_freq_factor, c->rope_orig_max_pos)))
    return rc;
  if ((rc = cf__up_f32(&b->inv_freq, invf, hd / 2, "rope inv_freq"))) return rc;
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    cf__cuda_layer_t *L = &b->layers[l];
    int moe = c->layer_moe[l];
    if (!w->wq || !w->wk || !w->wv || !w->wo || !w->attn_norm || !w->mlp_norm ||
        (!moe && (!w->w_gate || !w->w_up || !w->w_down)) ||
        (moe && (!w->router || !w->e_gate || !w->e_up || !w->e_down)))
      return cf_seterr(CF_EINVAL, "cuda backend: layer %d is missing a weight", l);
    if (moe) { /* experts stacked per expert as [gate; up] and down, one allocation each */
      size_t E = c->n_experts, MI = c->moe_intermediate;
      if ((rc = cf__dalloc((void **)&L->router, E * D * 2, "router")) ||
          (rc = cf__up_bf16(b, L->router, w->router, E * D)) ||
          (rc = cf__dalloc((void **)&L->ewgu, E * 2 * MI * D * 2, "experts gate|up")) ||
          (rc = cf__dalloc((void **)&L->ewdown, E * D * MI * 2, "experts down")))
        return cf_err_prefix(rc, "layer %d: ", l);
      for (size_t e = 0; e < E && !rc; e++)
        if ((rc = cf__up_bf16(b, L->ewgu + e * 2 * MI * D, w->e_gate[e], MI * D)) ||
            (rc = cf__up_bf16(b, L->ewgu + e * 2 * MI * D + MI * D, w->e_up[e], MI * D)) ||
            (rc = cf__up_bf16(b, L->ewdown + e * D * MI, w->e_down[e], D * MI)))
          return cf_err_prefix(rc, "layer %d expert %zu: ", l, e);
    }
    if ((rc = cf__layer_mats(b, l)) ||
        (rc = cf__up_f32(&L->attn_norm, w->attn_norm, D, "attn_norm")) ||
        (rc = cf__up_f32(&L->mlp_norm, w->mlp_norm, D, "mlp_norm")) ||
        (rc = cf__up_f32(&L->q_norm, c->qk_norm ? w->q_norm : NULL, hd, "q_norm")) ||
        (rc = cf__up_f32(&L->k_norm, c->qk_norm ? w->k_norm : NULL, hd, "k_norm")) ||
        (rc = cf__up_bias3(&L->bqkv, w->bq, nq, w->bk, nkv, w->bv, nkv)) ||
        (rc = cf__up_f32(&L->bo, w->bo, D, "o bias")) ||
        (rc = cf__up_f32(&L->bgate, w->b_gate, I, "gate bias")) ||
        (rc = cf__up_f32(&L->bup, w->b_up, I, "up bias")) ||
        (rc = cf__up_f32(&L->bdown, w->b_down, D, "down bias")))
      return cf_err_prefix(rc, "layer %d: ", l);
    if (c->qk_norm && (!w->q_norm || !w->k_norm))
      return cf_seterr(CF_EINVAL, "cuda backend: layer %d: qk_norm set but q_norm/k_norm missing", l);
  }
  /* the whole device, not only b->stream: cf__up_f32's cudaMemcpy from pageable memory may
   * return before its DMA lands, on the legacy stream, which b->stream (non-blocking) does not
   * follow; the forward may run on any caller's stream (cf_backend_cuda_forward_dev) */
  CF_CUDA_TRY(cudaDeviceSynchronize());
  return 0;
}

/* Bytes of the matrices and the embedding (what borrowing frees). */
static size_t cf__mat_bytes(const cf_model_config_t *c) {
  size_t D = c->hidden, I = c->intermediate, nq = (size_t)c->n_heads * c->head_dim,
         nkv = (size_t)c->n_kv_heads * c->head_dim;
  return ((size_t)c->n_layers * ((nq + 2 * nkv) * D + D * nq + 3 * I * D) + (size_t)c->vocab * D) * 2;
}

int cf_backend_cuda_borrow(cf_backend_t *be, const cf_borrow_dev_t *w, size_t *released) {
  *released = 0;
  if (!be || !be->name || strcmp(be->name, "cuda") != 0) return cf_seterr(CF_EINVAL, "cuda borrow: not the cuda backend");
  cf__cuda_be_t *b = (cf__cuda_be_t *)be;
  const cf_model_config_t *c = &be->model->cfg;
  if (b->borrowed) return cf_seterr(CF_EBUSY, "cuda borrow: already on borrowed weights");
  if (c->n_experts > 0) return cf_seterr(CF_EUNSUPPORTED, "cuda borrow: mixture-of-experts layers");
  CF_CUDA_TRY(cudaSetDevice(b->device));
  /* the whole device: forwards may run on a caller's stream (cf_backend_cuda_forward_dev) */
  CF_CUDA_TRY(cudaDeviceSynchronize()); /* nothing still reads the own copy */
  for (int l = 0; l < c->n_layers; l++) {
    cf__cuda_layer_t *L = &b->layers[l];
    void *own[] = {L->wqkv, L->wo, L->wgu, L->wdown};
    for (int i = 0; i < 4; i++) cudaFree(own[i]);
    L->wqkv = (cf_bf16_t *)w->layers[l].wqkv;
    L->wo = (cf_bf16_t *)w->layers[l].wo;
    L->wgu = (cf_bf16_t *)w->layers[l].wgu;
    L->wdown = (cf_bf16_t *)w->layers[l].wdown;
  }
  cudaFree(b->embed);
  b->embed = (cf_bf16_t *)w->embed;
  b->borrowed = 1;
  *released = cf__mat_bytes(c);
  b->dev_bytes = b->dev_bytes > *released ? b->dev_bytes - *released : 0;
  return 0;
}

int cf_backend_cuda_unborrow(cf_backend_t *be) {
  if (!be || !be->name || strcmp(be->name, "cuda") != 0) return cf_seterr(CF_EINVAL, "cuda borrow: not the cuda backend");
  cf__cuda_be_t *b = (cf__cuda_be_t *)be;
  const cf_model_config_t *c = &be->model->cfg;
  if (!b->borrowed) return 0;
  if (!be->model->layers || !be->model->embed)
    return cf_seterr(CF_EINVAL, "cuda borrow: the host model holds no weights to upload (reload them first)");
  CF_CUDA_TRY(cudaSetDevice(b->device));
  CF_CUDA_TRY(cudaDeviceSynchronize()); /* the engine's memory is read no more, on any stream */
  cf__forget_mats(b);
  b->borrowed = 0;
  int rc = cf__dalloc((void **)&b->embed, (size_t)c->vocab * c->hidden * 2, "embedding");
  if (!rc) rc = cf__up_bf16(b, b->embed, be->model->embed, (size_t)c->vocab * c->hidden);
  for (int l = 0; l < c->n_layers && !rc; l++) rc = cf__layer_mats(b, l);
  if (!rc) rc = cudaStreamSynchronize(b->stream) == cudaSuccess ? 0 : cf_seterr(CF_ECUDA, "cuda borrow: upload");
  if (!rc) b->dev_bytes += cf__mat_bytes(c);
  return rc; /* on failure the layers left NULL are re-tried by the next call's cf__layer_mats (cudaFree(NULL) ok) */
}

int cf_backend_cuda_devices(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError(); /* clear the sticky "no driver" error */
    return 0;
  }
  return n;
}

int cf_backend_cuda_create(const cf_model_t *m, int device, cf_backend_t **out) {
  *out = NULL;
  if (!m) return cf_seterr(CF_EINVAL, "cf_backend_cuda_create: model is NULL");
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    return cf_seterr(CF_ENODEV, "cuda backend: no CUDA device (cudaGetDeviceCount: %d)", n);
  }
  if (device < 0 || device >= n)
    return cf_seterr(CF_ENODEV, "cuda backend: device %d not in [0, %d)", device, n);
  const cf_model_config_t *c = &m->cfg;
  if (c->head_dim % 2 || c->head_dim > 256 || c->n_heads % c->n_kv_heads)
    return cf_seterr(CF_EUNSUPPORTED, "cuda backend: head_dim %d (even, <= 256 needed), "
                     "n_heads %d / n_kv_heads %d", c->head_dim, c->n_heads, c->n_kv_heads);
  cf__cuda_be_t *b = calloc(1, sizeof *b);
  if (!b) return cf_seterr(CF_ENOMEM, "cuda backend: calloc");
  b->base.name = "cuda";
  b->base.model = m;
  b->base.forward = cf__cuda_forward;
  b->base.free = cf__cuda_free;
  b->device = device;
  b->moe_last_grouped = -1;
  b->max_step = CF_CUDA_MAX_STEP;
  const char *ms = getenv("CF_CUDA_MAX_STEP");  /* tests use small steps to cover the loop */
  if (ms && atoi(ms) > 0 && atoi(ms) < CF_CUDA_MAX_STEP) b->max_step = atoi(ms);
  int rc = 0;
  b->layers = calloc((size_t)c->n_layers, sizeof *b->layers);
  if (!b->layers) { rc = cf_seterr(CF_ENOMEM, "cuda backend: layers"); goto fail; }
  if (cudaSetDevice(device) != cudaSuccess ||
      cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking) != cudaSuccess) {
    rc = cf_seterr(CF_ECUDA, "cuda backend: cudaSetDevice/cudaStreamCreate on device %d: %s",
                   device, cudaGetErrorString(cudaGetLastError()));
    goto fail;
  }
  size_t free0 = 0, total0 = 0; /* what this backend takes: weights, scratch, cuBLAS */
  if (cudaMemGetInfo(&free0, &total0) != cudaSuccess) { (void)cudaGetLastError(); free0 = 0; }
  if (cublasCreate(&b->blas) != CUBLAS_STATUS_SUCCESS) {
    b->blas = NULL;
    rc = cf_seterr(CF_ECUDA, "cuda backend: cublasCreate failed");
    goto fail;
  }
  if ((rc = cf__dalloc(&b->blas_ws, CF_CUDA_BLAS_WS, "cuBLAS workspace"))) goto fail;
  if (cublasSetWorkspace(b->blas, b->blas_ws, CF_CUDA_BLAS_WS) != CUBLAS_STATUS_SUCCESS) {
    rc = cf_seterr(CF_ECUDA, "cuda backend: cublasSetWorkspace failed");
    goto fail;
  }
  if ((rc = cf__dgrow((void **)&b->stage, &b->stage_cap, CF_CUDA_UPLOAD_FLOATS * 4))) goto fail;
  if ((rc = cf__cuda_upload(b))) goto fail;
  size_t S = (size_t)b->max_step, D = c->hidden, I = c->intermediate;
  b->attn_ws_floats = CF_ATTN_WS_FLOATS(S * c->n_heads, c->head_dim);
  if (b->attn_ws_floats > CF_CUDA_ATTN_WS) b->attn_ws_floats = CF_CUDA_ATTN_WS;
  size_t nq = (size_t)c->n_heads * c->head_dim, nkv = (size_t)c->n_kv_heads * c->head_dim;
  if ((rc = cf__dalloc((void **)&b->x, S * D * 4, "residual")) ||
      (rc = cf__dalloc((void **)&b->xn, S * D * 2, "normed")) ||
      (rc = cf__dalloc((void **)&b->qkv, S * (nq + 2 * nkv) * 4, "qkv")) ||
      (rc = cf__dalloc((void **)&b->q, S * nq * 2, "q")) ||
      (rc = cf__dalloc((void **)&b->attn, S * nq * 2, "attention output")) ||
      (rc = cf__dalloc((void **)&b->gu, S * 2 * I * 2, "gate|up")) ||
      (rc = cf__dalloc((void **)&b->h, S * I * 2, "mlp hidden")) ||
      (rc = cf__dalloc((void **)&b->attn_ws, (size_t)b->attn_ws_floats * 4, "attention workspace")))
    goto fail;
  if (c->n_experts > 0) {
    size_t M = CF_CUDA_MOE_STEP, P = M * c->top_k, E = c->n_experts, MI = c->moe_intermediate;
    if ((rc = cf__dalloc((void **)&b->moe_logits, M * E * 4, "router logits")) ||
        (rc = cf__dalloc((void **)&b->moe_w, P * 4, "routing weights")) ||
        (rc = cf__dalloc((void **)&b->moe_sel, P * 4, "routed experts")) ||
        (rc = cf__dalloc((void **)&b->moe_pos, P * 4, "pair rows")) ||
        (rc = cf__dalloc((void **)&b->moe_tok, P * 4, "row tokens")) ||
        (rc = cf__dalloc((void **)&b->moe_off, (E + 1) * 4, "expert offsets")) ||
        (rc = cf__dalloc((void **)&b->moe_a, P * D * 2, "expert inputs")) ||
        (rc = cf__dalloc((void **)&b->moe_gu, P * 2 * MI * 2, "expert gate|up")) ||
        (rc = cf__dalloc((void **)&b->moe_h, P * MI * 2, "expert hidden")) ||
        (rc = cf__dalloc((void **)&b->moe_out, P * D * 4, "expert outputs")))
      goto fail;
    if (cudaMallocHost((void **)&b->moe_off_host, (E + 1) * 4) != cudaSuccess) {
      cudaGetLastError();
      b->moe_off_host = NULL;
      rc = cf_seterr(CF_ENOMEM, "cuda backend: pinned expert offsets");
      goto fail;
    }
    if ((rc = cf__dalloc((void **)&b->moe_ptr_dev, 6 * E * sizeof(void *), "expert GEMM pointers")))
      goto fail;
    if (!(b->moe_args = calloc(2 * E, sizeof *b->moe_args))) {
      rc = cf_seterr(CF_ENOMEM, "cuda backend: expert GEMM arguments");
      goto fail;
    }
    if (cudaMallocHost((void **)&b->moe_ptr_host, 6 * E * sizeof(void *)) != cudaSuccess) {
      cudaGetLastError();
      b->moe_ptr_host = NULL;
      rc = cf_seterr(CF_ENOMEM, "cuda backend: pinned expert GEMM pointers");
      goto fail;
    }
    /* CF_CUDA_MOE_GROUPED=0: per-expert GEMMs (the fallback path, kept testable on a GPU whose
     * cuBLAS does have grouped GEMM) */
    const char *g = getenv("CF_CUDA_MOE_GROUPED");
    b->moe_grouped_gu = b->moe_grouped_dn = !(g && strcmp(g, "0") == 0);
  }
  size_t free1 = 0, total1 = 0;
  if (free0 && cudaMemGetInfo(&free1, &total1) == cudaSuccess && free1 <= free0) b->dev_bytes = free0 - free1;
  (void)cudaGetLastError();
  *out = &b->base;
  return 0;
fail:
  cf__cuda_free(&b->base);
  return rc;
}

int cf_backend_cuda_moe_grouped(const cf_backend_t *be) {
  return be ? ((const cf__cuda_be_t *)be)->moe_last_grouped : -1;
}

#endif
