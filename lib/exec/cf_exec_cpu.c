/* cf_exec_cpu — the CPU data path of lib/exec (cf_exec_ops.h): the backend's forward on fp32
 * staging, cf_kvmap scatter/gather into the engine's shared-memory blocks, futex readiness.
 *
 * Loaded cells go into the blocks bit for bit; the compute works in fp32, so its staging gets
 * loaded cells widened (exact), and computed rows are rounded (round-to-nearest-even, as the
 * CUDA kernels convert) when written to the blocks. */
#include <stdlib.h>
#include <string.h>

#include "exec/cf_exec.h"
#include "util/cf_err.h"

typedef struct {
  cf_backend_t *be;
  cf_exec_req_t *r;
  int L, T, hidden;
  size_t row;       /* elements per token row */
  float **sk, **sv; /* [L]: staging [T][row] or NULL */
  float *hid[2];    /* [T][hidden], parity by layer */
} cf__cpu_rq_t;

static int cf__cpu_validate(void *dev, const cf_exec_req_t *r) {
  (void)dev;
  if (!r->kv || !r->kv->k) return cf_seterr(CF_EINVAL, "restore: no engine kv buffer (the CPU executor needs a shared-memory one)");
  return 0;
}

static void cf__cpu_req_free(void *p) {
  cf__cpu_rq_t *q = p;
  if (!q) return;
  if (q->sk) for (int l = 0; l < q->L; l++) { free(q->sk[l]); free(q->sv[l]); }
  free(q->sk); free(q->sv); free(q->hid[0]); free(q->hid[1]);
  free(q);
}

static int cf__cpu_req_init(void *dev, cf_exec_req_t *r, void **rs) {
  cf_backend_t *be = dev;
  const cf_model_config_t *mc = &be->model->cfg;
  cf__cpu_rq_t *q = calloc(1, sizeof *q);
  *rs = q;
  if (!q) return cf_seterr(CF_ENOMEM, "exec: request state");
  q->be = be; q->r = r; q->L = mc->n_layers; q->T = r->n_tokens; q->hidden = mc->hidden;
  q->row = (size_t)mc->n_kv_heads * mc->head_dim;
  q->sk = calloc((size_t)q->L, sizeof(float *)); q->sv = calloc((size_t)q->L, sizeof(float *));
  if (!q->sk || !q->sv) return cf_seterr(CF_ENOMEM, "exec: staging table for %d layers", q->L);
  return 0;
}

static int cf__cpu_req_stage(void *p, int l) {
  cf__cpu_rq_t *q = p;
  size_t n = (size_t)q->T * q->row;
  if (q->sk[l]) return 0;
  q->sk[l] = calloc(n, sizeof(float));
  q->sv[l] = calloc(n, sizeof(float));
  if (!q->sk[l] || !q->sv[l]) return cf_seterr(CF_ENOMEM, "exec: staging for layer %d (%zu floats)", l, n);
  return 0;
}

static int cf__cpu_req_hidden(void *p) {
  cf__cpu_rq_t *q = p;
  if (q->hid[0] || q->L < 2) return 0;
  q->hid[0] = malloc((size_t)q->T * q->hidden * sizeof(float));
  q->hid[1] = malloc((size_t)q->T * q->hidden * sizeof(float));
  if (!q->hid[0] || !q->hid[1]) return cf_seterr(CF_ENOMEM, "exec: hidden states %d x %d", q->T, q->hidden);
  return 0;
}

static int cf__cpu_loader_init(void *dev, int index, void **ls) {
  (void)dev; (void)index;
  *ls = NULL;
  return 0;
}
static void cf__cpu_loader_free(void *ls) { (void)ls; }

static void *cf__cpu_host_alloc(void *dev, size_t bytes) {
  (void)dev;
  return aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
}
static void cf__cpu_host_free(void *dev, void *p, size_t bytes) { (void)dev; (void)bytes; free(p); }

static int cf__cpu_load(void *ls, void *p, int l, int t0, int t1, const void *k, const void *v, int stage) {
  (void)ls;
  cf__cpu_rq_t *q = p;
  /* the stored bytes go to the engine unchanged — its rows >= present_tokens: the engine's own
   * rows below stay untouched —; the compute attends over them all, widened */
  int w0 = t0 < q->r->present_tokens ? q->r->present_tokens : t0;
  if (w0 < t1) {
    size_t skip = (size_t)(w0 - t0) * q->row * cf_kv_elem_size(q->r->kv->layout.dtype);
    cf_kvmap_scatter(q->r->kv, l, q->r->blocks, w0, t1, (const uint8_t *)k + skip, (const uint8_t *)v + skip);
  }
  if (stage) {
    size_t n = (size_t)(t1 - t0) * q->row;
    cf_dtype_to_f32(q->r->kv->layout.dtype, k, q->sk[l] + (size_t)t0 * q->row, n);
    cf_dtype_to_f32(q->r->kv->layout.dtype, v, q->sv[l] + (size_t)t0 * q->row, n);
  }
  return 0;
}

static int cf__cpu_gather(void *p, int l, int t0, int t1) {
  cf__cpu_rq_t *q = p;
  cf_kvmap_gather_f32(q->r->kv, l, q->r->blocks, t0, t1, q->sk[l] + (size_t)t0 * q->row,
                      q->sv[l] + (size_t)t0 * q->row);
  return 0;
}

static int cf__cpu_forward(void *p, int l, int t0, int t1) {
  cf__cpu_rq_t *q = p;
  float *k[1] = {q->sk[l]}, *v[1] = {q->sv[l]};
  cf_fwd_args_t a = {
      .l0 = l, .l1 = l + 1, .t0 = t0, .t1 = t1,
      .tokens = q->r->tokens ? q->r->tokens + t0 : NULL,
      .hidden_in = l > 0 ? q->hid[l % 2] + (size_t)t0 * q->hidden : NULL,
      .k = k, .v = v,
      .hidden_out = l + 1 < q->L ? q->hid[(l + 1) % 2] + (size_t)t0 * q->hidden : NULL,
  };
  return cf_backend_forward(q->be, &a);
}

static int cf__cpu_write(void *p, int l, int t0, int t1) {
  cf__cpu_rq_t *q = p;
  /* computed in fp32: rounded to the engine's dtype on the way in */
  cf_kvmap_scatter_f32(q->r->kv, l, q->r->blocks, t0, t1, q->sk[l] + (size_t)t0 * q->row,
                       q->sv[l] + (size_t)t0 * q->row);
  return 0;
}

static void cf__cpu_begin(void *p) {
  cf__cpu_rq_t *q = p;
  if (q->r->ready) cf_ready_begin(q->r->ready, q->r->ready_slot, q->r->req_id);
}
static void cf__cpu_publish(void *p, int n) {
  cf__cpu_rq_t *q = p;
  if (q->r->ready) cf_ready_publish(q->r->ready, q->r->ready_slot, (uint64_t)n);
}
static void cf__cpu_finish(void *p, int err) {
  cf__cpu_rq_t *q = p;
  if (q->r->ready) cf_ready_finish(q->r->ready, q->r->ready_slot, err);
}

const cf_exec_ops_t cf_exec_cpu_ops = {
    .name = "cpu",
    .validate = cf__cpu_validate,
    .req_init = cf__cpu_req_init,
    .req_free = cf__cpu_req_free,
    .req_stage = cf__cpu_req_stage,
    .req_hidden = cf__cpu_req_hidden,
    .loader_init = cf__cpu_loader_init,
    .loader_free = cf__cpu_loader_free,
    .host_alloc = cf__cpu_host_alloc,
    .host_free = cf__cpu_host_free,
    .load = cf__cpu_load,
    .gather = cf__cpu_gather,
    .forward = cf__cpu_forward,
    .write = cf__cpu_write,
    .begin = cf__cpu_begin,
    .publish = cf__cpu_publish,
    .finish = cf__cpu_finish,
    .load_any_host = 1,
};
