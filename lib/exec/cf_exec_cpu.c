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
#include "util/cf_mempool.h"

typedef struct {
  cf_backend_t *be;
  cf_exec_req_t *r;
  cf_mempool_t *pool; /* NULL: malloc (unbounded); else every buffer, this state included */
  int L, T, hidden;
  size_t row;       /* elements per token row */
  float **sk, **sv; /* [L]: staging [T][row] or NULL (budget: one block, sv = sk + rows * row) */
  int *srows;       /* budget: [L] rows each staging holds */
  float *spare;     /* budget: a staging block no layer holds now (reused first) */
  int sprows;
  float *hid[2];    /* [T][hidden], parity by layer (budget: one block, hid[1] = hid[0] + ...) */
  int hrows;
} cf__cpu_rq_t;

static void *cf__cpu_zalloc(cf_mempool_t *pool, size_t n, size_t sz) {
  return pool ? cf_mempool_calloc(pool, n, sz) : calloc(n, sz);
}
static void cf__cpu_zfree(cf_mempool_t *pool, void *p) {
  if (pool) cf_mempool_free(pool, p);
  else free(p);
}

static int cf__cpu_validate(void *dev, const cf_exec_req_t *r) {
  (void)dev;
  if (!r->kv || !r->kv->k) return cf_seterr(CF_EINVAL, "restore: no engine kv buffer (the CPU executor needs a shared-memory one)");
  return 0;
}

static void cf__cpu_req_release(void *p) {
  cf__cpu_rq_t *q = p;
  if (!q || !q->pool) return;
  if (q->sk && q->sv && q->srows) /* all three, or a failed init made none of the blocks */
    for (int l = 0; l < q->L; l++) {
      cf_mempool_free(q->pool, q->sk[l]);
      q->sk[l] = q->sv[l] = NULL;
      q->srows[l] = 0;
    }
  cf_mempool_free(q->pool, q->spare);
  cf_mempool_free(q->pool, q->hid[0]);
  q->spare = q->hid[0] = q->hid[1] = NULL;
  q->sprows = q->hrows = 0;
}

static void cf__cpu_req_free(void *p) {
  cf__cpu_rq_t *q = p;
  if (!q) return;
  if (q->pool) {
    cf__cpu_req_release(q);
  } else {
    for (int l = 0; l < q->L; l++) { free(q->sk[l]); free(q->sv[l]); }
    free(q->hid[0]); free(q->hid[1]);
  }
  cf__cpu_zfree(q->pool, q); /* its tables are carved from the same block */
}

static int cf__cpu_req_init(void *dev, cf_exec_req_t *r, void **rs) {
  cf_backend_t *be = dev;
  const cf_model_config_t *mc = &be->model->cfg;
  cf_mempool_t *pool = r->pool_;
  int L = mc->n_layers;
  /* one block: the state, then its tables (pointers, then ints) */
  size_t head = (sizeof(cf__cpu_rq_t) + 15) / 16 * 16;
  cf__cpu_rq_t *q = cf__cpu_zalloc(pool, 1, head + 2 * (size_t)L * sizeof(float *) + (size_t)L * sizeof(int));
  *rs = q;
  if (!q) return cf_seterr(CF_ENOMEM, "exec: request state%s", pool ? " (the memory budget cannot hold the batch's bookkeeping)" : "");
  q->pool = pool;
  q->be = be; q->r = r; q->L = L; q->T = r->n_tokens; q->hidden = mc->hidden;
  q->row = (size_t)mc->n_kv_heads * mc->head_dim;
  q->sk = (float **)((uint8_t *)q + head);
  q->sv = q->sk + L;
  q->srows = (int *)(q->sv + L);
  return 0;
}

/* Budget mode: layer l's staging holds rows [0, rows): the spare if it is large enough, else a
 * block from the pool; a smaller staging it had is copied over and given back. */
static int cf__cpu_req_stage_rows(void *p, int l, int rows) {
  cf__cpu_rq_t *q = p;
  if (q->sk[l] && q->srows[l] >= rows) return 0;
  float *b;
  int brows;
  if (q->spare && q->sprows >= rows) {
    b = q->spare; brows = q->sprows;
    q->spare = NULL; q->sprows = 0;
  } else {
    b = cf_mempool_alloc(q->pool, 2 * (size_t)rows * q->row * sizeof(float));
    brows = rows;
    if (!b) return CF_EAGAIN;
  }
  if (q->sk[l]) { /* grown (a load failure raised a later chunk): keep the rows it has */
    size_t n = (size_t)q->srows[l] * q->row;
    memcpy(b, q->sk[l], n * sizeof(float));
    memcpy(b + (size_t)brows * q->row, q->sv[l], n * sizeof(float));
    cf_mempool_free(q->pool, q->sk[l]);
  }
  q->sk[l] = b;
  q->sv[l] = b + (size_t)brows * q->row;
  q->srows[l] = brows;
  return 0;
}

static void cf__cpu_req_unstage(void *p, int l) {
  cf__cpu_rq_t *q = p;
  float *b = q->sk[l];
  if (!b) return;
  if (!q->spare || q->sprows < q->srows[l]) { /* the larger block stays as the spare */
    cf_mempool_free(q->pool, q->spare);
    q->spare = b; q->sprows = q->srows[l];
  } else {
    cf_mempool_free(q->pool, b);
  }
  q->sk[l] = q->sv[l] = NULL;
  q->srows[l] = 0;
}

static int cf__cpu_req_hidden_rows(void *p, int rows) {
  cf__cpu_rq_t *q = p;
  if (q->L < 2 || (q->hid[0] && q->hrows >= rows)) return 0;
  float *b = cf_mempool_alloc(q->pool, 2 * (size_t)rows * q->hidden * sizeof(float));
  if (!b) return CF_EAGAIN;
  if (q->hid[0]) {
    size_t n = (size_t)q->hrows * q->hidden;
    memcpy(b, q->hid[0], n * sizeof(float));
    memcpy(b + (size_t)rows * q->hidden, q->hid[1], n * sizeof(float));
    cf_mempool_free(q->pool, q->hid[0]);
  }
  q->hid[0] = b;
  q->hid[1] = b + (size_t)rows * q->hidden;
  q->hrows = rows;
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
    .req_stage_rows = cf__cpu_req_stage_rows,
    .req_hidden_rows = cf__cpu_req_hidden_rows,
    .req_unstage = cf__cpu_req_unstage,
    .req_release = cf__cpu_req_release,
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
