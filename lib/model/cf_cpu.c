/* cf_cpu — the CPU backend of the model primitive (cf_backend.h).
 *
 * fp32 throughout. Each forward call walks its layers one by one, and each layer in token
 * blocks of CF__CPU_TB rows, in order: a block's attention only needs keys of earlier positions,
 * which the earlier blocks (or the caller's prefix) have already written into the KV buffers.
 * So scratch memory is bounded by the block size, not by t1 - t0: it is made once, at create
 * (block work space, the block's RoPE tables, a block of the residual stream), and a forward call
 * allocates nothing — unless it runs several layers without hidden_out (the residual stream of
 * all its rows then lives in a buffer of its own; the restore path never does: one layer per
 * call, hidden_out given or the block buffer used).
 *
 * Parallelism: OpenBLAS is set to one thread and the backend splits the work itself over its
 * own persistent pool — projections by output columns (each thread one sgemm on a slice of
 * the weight), attention by (KV head, query block) items handed out through an atomic counter.
 * Mixture-of-experts layers route each token to its top_k experts, sort the (token, expert)
 * pairs by expert and run each expert as one set of sgemms over all of its tokens (split into
 * CF__MOE_RC-row items so a popular expert spans threads), never one sgemm per token.
 * Sliding-window layers skip the key blocks before each query block's window.
 * One forward call runs at a time per backend (a mutex serialises callers).
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "model/cf_backend.h"
#include "model/cf_cpu_ops.h"
#include "util/cf_err.h"

#ifndef CF__CPU_TB
#define CF__CPU_TB 512   /* token rows per layer block */
#endif
#ifndef CF__CPU_QB
#define CF__CPU_QB 64    /* query rows per attention item */
#endif

typedef void (*cf__par_fn)(void *ctx, int tid, int nthreads);

typedef struct cf_cpu_s cf_cpu_t;
typedef struct { cf_cpu_t *b; int tid; } cf__worker_arg_t;

struct cf_cpu_s {
  cf_backend_t base;
  int nthreads;
  pthread_t *th;
  cf__worker_arg_t *args;
  int nstarted;
  pthread_mutex_t mu;
  pthread_cond_t cv_start, cv_done;
  unsigned gen;
  int pending, stop;
  cf__par_fn fn;
  void *ctx;
  pthread_mutex_t fwd_mu;
  float *inv_freq; /* [head_dim/2] */
  /* scratch, made at create, used under fwd_mu: block work space, RoPE tables of a block, and
   * a block of the residual stream (calls without hidden_out) */
  float *work, *tab, *xblk;
  size_t scratch_bytes;
};

/* ---------------------------------------------------------------- thread pool */

static void *cf__worker(void *arg) {
  cf__worker_arg_t *wa = arg;
  cf_cpu_t *b = wa->b;
  unsigned seen = 0;
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (b->gen == seen && !b->stop) pthread_cond_wait(&b->cv_start, &b->mu);
    if (b->stop) break;
    seen = b->gen;
    cf__par_fn fn = b->fn;
    void *ctx = b->ctx;
    pthread_mutex_unlock(&b->mu);
    fn(ctx, wa->tid, b->nthreads);
    pthread_mutex_lock(&b->mu);
    if (--b->pending == 0) pthread_cond_signal(&b->cv_done);
  }
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

/* Run fn(ctx, tid, n) on every thread of the pool (the caller is tid 0) and wait for all. */
static void cf__par(cf_cpu_t *b, cf__par_fn fn, void *ctx) {
  if (b->nthreads == 1) { fn(ctx, 0, 1); return; }
  pthread_mutex_lock(&b->mu);
  b->fn = fn;
  b->ctx = ctx;
  b->pending = b->nthreads - 1;
  b->gen++;
  pthread_cond_broadcast(&b->cv_start);
  pthread_mutex_unlock(&b->mu);
  fn(ctx, 0, b->nthreads);
  pthread_mutex_lock(&b->mu);
  while (b->pending) pthread_cond_wait(&b->cv_done, &b->mu);
  pthread_mutex_unlock(&b->mu);
}

static void cf__split(int n, int tid, int nt, int align, int *lo, int *hi) {
  int per = (n + nt - 1) / nt;
  per = (per + align - 1) / align * align;
  *lo = tid * per < n ? tid * per : n;
  *hi = *lo + per < n ? *lo + per : n;
}

/* ---------------------------------------------------------------- projections */

/* C_s[:, j] (+)= A · W_s[j]^T + b_s[j] for up to three weights sharing the input A. */
typedef struct { const float *w, *bias; int n; float *c; int ldc; } cf__seg_t;
typedef struct {
  const float *a;
  int lda, m, kdim;
  float beta; /* 0: overwrite, 1: accumulate (the residual add) */
  int nseg;
  cf__seg_t seg[3];
} cf__gemm_job_t;

static void cf__gemm_worker(void *ctx, int tid, int nt) {
  const cf__gemm_job_t *j = ctx;
  int total = 0;
  for (int s = 0; s < j->nseg; s++) total += j->seg[s].n;
  int lo, hi;
  cf__split(total, tid, nt, 16, &lo, &hi);
  int off = 0;
  for (int s = 0; s < j->nseg; s++) {
    const cf__seg_t *g = &j->seg[s];
    int a = lo > off ? lo : off, e = hi < off + g->n ? hi : off + g->n;
    if (a < e) {
      int c0 = a - off, nc = e - a;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->m, nc, j->kdim, 1.0f, j->a,
                  j->lda, g->w + (size_t)c0 * j->kdim, j->kdim, j->beta, g->c + c0, g->ldc);
      if (g->bias)
        for (int r = 0; r < j->m; r++) {
          float *cr = g->c + (size_t)r * g->ldc + c0;
          for (int i = 0; i < nc; i++) cr[i] += g->bias[c0 + i];
        }
    }
    off += g->n;
  }
}

/* ---------------------------------------------------------------- row-parallel steps */

typedef struct {
  const cf_model_config_t *cfg;
  const cf_layer_weights_t *w;
  int n;             /* rows in this block */
  const float *x;    /* [n][hidden] residual block */
  float *h;          /* [n][hidden] normed input */
  const float *norm; /* which norm weight */
  float *q, *kc, *vc;
  const float *cos_t, *sin_t; /* tables, row 0 = this block's first token */
  float *g;
  const float *u;
  int inter;
} cf__rows_job_t;

static void cf__norm_worker(void *ctx, int tid, int nt) {
  const cf__rows_job_t *j = ctx;
  int lo, hi, d = j->cfg->hidden;
  cf__split(j->n, tid, nt, 1, &lo, &hi);
  if (lo < hi)
    cf__rmsnorm_rows(j->x + (size_t)lo * d, d, j->norm, (float)j->cfg->rms_eps,
                     j->h + (size_t)lo * d, d, hi - lo, d);
}

/* Per-head q/k RMSNorm (qwen3), then RoPE on q and on the new K rows. */
static void cf__qk_worker(void *ctx, int tid, int nt) {
  const cf__rows_job_t *j = ctx;
  const cf_model_config_t *c = j->cfg;
  int lo, hi, hd = c->head_dim, half = hd / 2;
  size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  float eps = (float)c->rms_eps;
  cf__split(j->n, tid, nt, 1, &lo, &hi);
  if (lo >= hi) return;
  float *q = j->q + lo * qd, *k = j->kc + lo * kvd;
  if (c->qk_norm) {
    cf__rmsnorm_rows(q, hd, j->w->q_norm, eps, q, hd, (hi - lo) * c->n_heads, hd);
    for (int r = 0; r < hi - lo; r++)
      cf__rmsnorm_rows(k + r * kvd, hd, j->w->k_norm, eps, k + r * kvd, hd, c->n_kv_heads, hd);
  }
  const float *ct = j->cos_t + (size_t)lo * half, *st = j->sin_t + (size_t)lo * half;
  cf__rope_apply(q, qd, hi - lo, c->n_heads, hd, ct, st);
  cf__rope_apply(k, kvd, hi - lo, c->n_kv_heads, hd, ct, st);
}

static void cf__silu_worker(void *ctx, int tid, int nt) {
  const cf__rows_job_t *j = ctx;
  int lo, hi;
  cf__split(j->n, tid, nt, 1, &lo, &hi);
  if (lo < hi)
    cf__silu_mul(j->g + (size_t)lo * j->inter, j->u + (size_t)lo * j->inter,
                 (size_t)(hi - lo) * j->inter);
}

/* ---------------------------------------------------------------- attention */

typedef struct {
  const cf_model_config_t *cfg;
  const float *q;      /* [n][n_heads*hd] */
  const float *k, *v;  /* layer KV buffers, row 0 = position 0 */
  float *o;            /* [n][n_heads*hd] */
  int n, p;            /* rows, absolute position of row 0 */
  int window;          /* sliding window of this layer in keys, 0: none */
  int next;            /* atomic item counter */
  float *scratch;      /* per thread */
  size_t scratch_per;
} cf__attn_job_t;

/* Per-thread floats of attention scratch: packed queries and outputs of one item, plus the
 * kernel's score tile. */
static size_t cf__attn_per_thread(const cf_model_config_t *c) {
  int rows = CF__CPU_QB * (c->n_heads / c->n_kv_heads);
  return cf__attn_scratch_floats(rows) + 2 * (size_t)rows * c->head_dim;
}

/* Items are (KV head, query block): the rep query heads of a group are packed row-interleaved
 * (token i, head j → row i*rep + j) so one pair of sgemms serves the whole group. */
static void cf__attn_worker(void *ctx, int tid, int nt) {
  cf__attn_job_t *j = ctx;
  const cf_model_config_t *c = j->cfg;
  int hd = c->head_dim, G = c->n_kv_heads, rep = c->n_heads / G;
  size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)G * hd, grp = (size_t)rep * hd;
  int nqb = (j->n + CF__CPU_QB - 1) / CF__CPU_QB, items = nqb * G;
  float scale = (float)(1.0 / sqrt((double)hd));
  float *qp = j->scratch + (size_t)tid * j->scratch_per;
  float *op = qp + (size_t)CF__CPU_QB * grp, *scr = op + (size_t)CF__CPU_QB * grp;
  for (;;) {
    /* Later query blocks cost more (more keys): hand them out first, groups interleaved. */
    int it = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
    if (it >= items) break;
    int qb = nqb - 1 - it / G, g = it % G;
    int i0 = qb * CF__CPU_QB, nq = j->n - i0 < CF__CPU_QB ? j->n - i0 : CF__CPU_QB;
    for (int i = 0; i < nq; i++)
      memcpy(qp + i * grp, j->q + (size_t)(i0 + i) * qd + g * grp, sizeof(float) * grp);
    cf__attn_rows(qp, hd, j->k + (size_t)g * hd, j->v + (size_t)g * hd, kvd, hd, j->p + i0, nq,
                  rep, j->window, scale, op, hd, scr);
    for (int i = 0; i < nq; i++)
      memcpy(j->o + (size_t)(i0 + i) * qd + g * grp, op + i * grp, sizeof(float) * grp);
  }
}

/* ---------------------------------------------------------------- mixture of experts */

/* Rows per expert work item: large enough that each item's sgemms reuse the expert's weights
 * over many tokens, small enough that a popular expert splits over both threads. */
#ifndef CF__MOE_RC
#define CF__MOE_RC 256
#endif

/* Floats of MoE scratch for a block of n rows (0 for dense models): router logits, the packed
 * inputs, gate, up and expert outputs of the n*top_k (token, expert) pairs. Index arrays are
 * carved out of the same buffer (ints, so the count is in floats of the same size). */
static size_t cf__moe_floats(const cf_model_config_t *c, int n) {
  if (!c->n_experts) return 0;
  size_t pairs = (size_t)n * c->top_k, D = c->hidden, MI = c->moe_intermediate;
  return (size_t)n * c->n_experts + pairs * (2 * D + 2 * MI) + 4 * pairs + 2 * (c->n_experts + 1) +
         (size_t)(pairs + c->n_experts) * 2;
}

typedef struct {
  const cf_model_config_t *cfg;
  const cf_layer_weights_t *w;
  int n;              /* rows */
  const float *h;     /* [n][D] normed input */
  float *x;           /* [n][D] residual, += the MoE output */
  float *logits;      /* [n][E] router logits, then probabilities */
  int *sel;           /* [n][K] chosen experts, ascending */
  float *selw;        /* [n][K] their weights */
  int *off;           /* [E+1] packed offsets of each expert's pairs */
  int *pos;           /* [n][K] packed position of each (token, slot) */
  int *tok;           /* [pairs] token of each packed position */
  float *A, *G, *U, *O; /* [pairs][D], [pairs][MI] x2, [pairs][D] */
  int *item_e, *item_r; /* work items: expert, first packed row */
  int nitems, next;
} cf__moe_job_t;

/* Router: probabilities = softmax(logits) in fp32, the top_k of them (first index wins a tie),
 * renormalised when norm_topk — transformers' order of operations. Then each row's chosen
 * experts are put in ascending order, the order in which transformers' index_add_ sums them. */
static void cf__router_worker(void *ctx, int tid, int nt) {
  cf__moe_job_t *j = ctx;
  const cf_model_config_t *c = j->cfg;
  int E = c->n_experts, K = c->top_k, lo, hi;
  cf__split(j->n, tid, nt, 1, &lo, &hi);
  for (int r = lo; r < hi; r++) {
    float *p = j->logits + (size_t)r * E, mx = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
    int *se = j->sel + (size_t)r * K;
    float *sw = j->selw + (size_t)r * K, tot = 0;
    for (int k = 0; k < K; k++) { /* selection, descending: K is small */
      int best = -1;
      for (int e = 0; e < E; e++) {
        int taken = 0;
        for (int q = 0; q < k && !taken; q++) taken = se[q] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;
      }
      se[k] = best;
      sw[k] = p[best];
      tot += p[best];
    }
    if (c->norm_topk)
      for (int k = 0; k < K; k++) sw[k] /= tot;
    for (int a = 1; a < K; a++) /* insertion sort by expert id, weights alongside */
      for (int b = a; b > 0 && se[b - 1] > se[b]; b--) {
        int te = se[b]; se[b] = se[b - 1]; se[b - 1] = te;
        float tw = sw[b]; sw[b] = sw[b - 1]; sw[b - 1] = tw;
      }
  }
}

static void cf__moe_gather_worker(void *ctx, int tid, int nt) {
  cf__moe_job_t *j = ctx;
  int D = j->cfg->hidden, pairs = j->n * j->cfg->top_k, lo, hi;
  cf__split(pairs, tid, nt, 1, &lo, &hi);
  for (int i = lo; i < hi; i++)
    memcpy(j->A + (size_t)i * D, j->h + (size_t)j->tok[i] * D, sizeof(float) * D);
}

/* Each item: up to CF__MOE_RC packed rows of one expert through its SwiGLU, three sgemms. */
static void cf__moe_expert_worker(void *ctx, int tid, int nt) {
  (void)tid; (void)nt;
  cf__moe_job_t *j = ctx;
  const cf_model_config_t *c = j->cfg;
  int D = c->hidden, MI = c->moe_intermediate;
  for (;;) {
    int it = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
    if (it >= j->nitems) break;
    int e = j->item_e[it], r0 = j->item_r[it];
    int nr = j->off[e + 1] - r0 < CF__MOE_RC ? j->off[e + 1] - r0 : CF__MOE_RC;
    const float *a = j->A + (size_t)r0 * D;
    float *g = j->G + (size_t)r0 * MI, *u = j->U + (size_t)r0 * MI;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, MI, D, 1.0f, a, D, j->w->e_gate[e],
                D, 0.0f, g, MI);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, MI, D, 1.0f, a, D, j->w->e_up[e], D,
                0.0f, u, MI);
    cf__silu_mul(g, u, (size_t)nr * MI);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, D, MI, 1.0f, g, MI, j->w->e_down[e],
                MI, 0.0f, j->O + (size_t)r0 * D, D);
  }
}

/* x[t] += sum over t's experts, ascending, of weight * output (summed from 0 first, then added
 * to the residual: transformers' index_add_ into zeros, then residual + that). */
static void cf__moe_combine_worker(void *ctx, int tid, int nt) {
  cf__moe_job_t *j = ctx;
  int D = j->cfg->hidden, K = j->cfg->top_k, lo, hi;
  cf__split(j->n, tid, nt, 1, &lo, &hi);
  for (int t = lo; t < hi; t++) {
    float *xt = j->x + (size_t)t * D;
    for (int d = 0; d < D; d++) {
      float s = 0;
      for (int k = 0; k < K; k++) {
        int ps = j->pos[(size_t)t * K + k];
        s += j->O[(size_t)ps * D + d] * j->selw[(size_t)t * K + k];
      }
      xt[d] += s;
    }
  }
}

/* The MoE MLP of one block: h (normed) in, x += output. Scratch `ms` of cf__moe_floats(n). */
static void cf__moe_block(cf_cpu_t *b, const cf_model_config_t *c, const cf_layer_weights_t *w,
                          int n, const float *h, float *x, float *ms) {
  int E = c->n_experts, K = c->top_k, D = c->hidden, MI = c->moe_intermediate, pairs = n * K;
  cf__moe_job_t j = {.cfg = c, .w = w, .n = n, .h = h, .x = x};
  float *f = ms;
  j.logits = f; f += (size_t)n * E;
  j.A = f; f += (size_t)pairs * D;
  j.O = f; f += (size_t)pairs * D;
  j.G = f; f += (size_t)pairs * MI;
  j.U = f; f += (size_t)pairs * MI;
  j.selw = f; f += pairs;
  int *ip = (int *)f;
  j.sel = ip; ip += pairs;
  j.pos = ip; ip += pairs;
  j.tok = ip; ip += pairs;
  j.off = ip; ip += E + 1;
  j.item_e = ip; ip += pairs + E;
  j.item_r = ip;

  cf__gemm_job_t rg = {.a = h, .lda = D, .m = n, .kdim = D, .beta = 0, .nseg = 1,
                       .seg = {{w->router, NULL, E, j.logits, E}}};
  cf__par(b, cf__gemm_worker, &rg);
  cf__par(b, cf__router_worker, &j);
  /* Counting sort of the (token, slot) pairs by expert, tokens ascending within an expert. */
  memset(j.off, 0, sizeof(int) * (E + 1));
  for (int i = 0; i < pairs; i++) j.off[j.sel[i] + 1]++;
  for (int e = 0; e < E; e++) j.off[e + 1] += j.off[e];
  int *fill = j.item_r; /* borrowed as a cursor before the items are built */
  memcpy(fill, j.off, sizeof(int) * E);
  for (int i = 0; i < pairs; i++) {
    int ps = fill[j.sel[i]]++;
    j.pos[i] = ps;
    j.tok[ps] = i / K;
  }
  /* Items, biggest experts first (rough longest-processing-time order for two threads). */
  j.nitems = 0;
  for (int e = 0; e < E; e++)
    for (int r = j.off[e]; r < j.off[e + 1]; r += CF__MOE_RC) {
      j.item_e[j.nitems] = e;
      j.item_r[j.nitems++] = r;
    }
  for (int a = 1; a < j.nitems; a++) /* insertion sort on item row counts, descending */
    for (int q = a; q > 0; q--) {
      int eq = j.item_e[q], ep = j.item_e[q - 1];
      int nq = j.off[eq + 1] - j.item_r[q], np = j.off[ep + 1] - j.item_r[q - 1];
      nq = nq < CF__MOE_RC ? nq : CF__MOE_RC;
      np = np < CF__MOE_RC ? np : CF__MOE_RC;
      if (nq <= np) break;
      int t = j.item_e[q]; j.item_e[q] = j.item_e[q - 1]; j.item_e[q - 1] = t;
      t = j.item_r[q]; j.item_r[q] = j.item_r[q - 1]; j.item_r[q - 1] = t;
    }
  cf__par(b, cf__moe_gather_worker, &j);
  cf__par(b, cf__moe_expert_worker, &j);
  cf__par(b, cf__moe_combine_worker, &j);
}

/* ---------------------------------------------------------------- forward */

static int cf__cpu_forward(cf_backend_t *be, const cf_fwd_args_t *a) {
  cf_cpu_t *b = (cf_cpu_t *)be;
  const cf_model_t *m = be->model;
  const cf_model_config_t *c = &m->cfg;
  int T = a->t1 - a->t0, D = c->hidden, hd = c->head_dim, half = hd / 2, NI = c->intermediate;
  size_t qd = (size_t)c->n_heads * hd, kvd = (size_t)c->n_kv_heads * hd;
  int TB = T < CF__CPU_TB ? T : CF__CPU_TB;
  size_t attn_per = cf__attn_per_thread(c);

  /* the residual stream: the caller's hidden_out (all rows), else for one layer the block
   * buffer (each block read from the input as it comes), else a buffer of this call's own */
  float *x = a->hidden_out, *xown = NULL;
  int xblock = !x && a->l1 - a->l0 == 1;
  if (!x && !xblock) {
    x = xown = malloc(sizeof(float) * (size_t)T * D);
    if (!x) return cf_seterr(CF_ENOMEM, "cpu backend: %zu floats of residual stream for %d tokens", (size_t)T * D, T);
  }
  float *h = b->work, *q = h + (size_t)TB * D, *att = q + (size_t)TB * qd;
  float *gate = att + (size_t)TB * qd, *up = gate + (size_t)TB * NI;
  float *ascr = up + (size_t)TB * NI;
  float *mscr = ascr + b->nthreads * attn_per; /* MoE scratch (MoE models only) */
  float *cos_t = b->tab, *sin_t = b->tab + (size_t)CF__CPU_TB * half;

  pthread_mutex_lock(&b->fwd_mu);
  /* Each of our threads runs single-threaded sgemm on its slice; OpenBLAS' own threads would
   * oversubscribe the cores. The setting is process-wide, so it is (re)asserted per call in
   * case other code in the process changed it. */
  openblas_set_num_threads(1);
  if (xblock) {
    /* filled block by block below */
  } else if (a->l0 == 0) {
    for (int i = 0; i < T; i++)
      memcpy(x + (size_t)i * D, m->embed + (size_t)a->tokens[i] * D, sizeof(float) * D);
  } else if (x != a->hidden_in) {
    memmove(x, a->hidden_in, sizeof(float) * (size_t)T * D);
  }

  for (int l = a->l0; l < a->l1; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    float *kl = a->k[l - a->l0], *vl = a->v[l - a->l0];
    for (int rb = 0; rb < T; rb += TB) {
      int n = T - rb < TB ? T - rb : TB, p = a->t0 + rb;
      float *xb;
      if (xblock) {
        xb = b->xblk;
        if (a->l0 == 0)
          for (int i = 0; i < n; i++)
            memcpy(xb + (size_t)i * D, m->embed + (size_t)a->tokens[rb + i] * D, sizeof(float) * D);
        else
          memcpy(xb, a->hidden_in + (size_t)rb * D, sizeof(float) * (size_t)n * D);
      } else {
        xb = x + (size_t)rb * D;
      }
      /* this block's positions */
      cf__rope_table(b->inv_freq, half, p, n, cf__rope_scale(c), cos_t, sin_t);
      float *kc = kl + (size_t)p * kvd, *vc = vl + (size_t)p * kvd;
      cf__rows_job_t rj = {.cfg = c, .w = w, .n = n, .x = xb, .h = h, .norm = w->attn_norm,
                           .q = q, .kc = kc, .vc = vc, .cos_t = cos_t,
                           .sin_t = sin_t, .g = gate, .u = up, .inter = NI};
      cf__par(b, cf__norm_worker, &rj);

      cf__gemm_job_t gj = {.a = h, .lda = D, .m = n, .kdim = D, .beta = 0, .nseg = 3,
                           .seg = {{w->wq, w->bq, (int)qd, q, (int)qd},
                                   {w->wk, w->bk, (int)kvd, kc, (int)kvd},
                                   {w->wv, w->bv, (int)kvd, vc, (int)kvd}}};
      cf__par(b, cf__gemm_worker, &gj);
      cf__par(b, cf__qk_worker, &rj);

      cf__attn_job_t aj = {.cfg = c, .q = q, .k = kl, .v = vl, .o = att, .n = n, .p = p,
                           .window = cf_model_layer_window(c, l), .next = 0, .scratch = ascr,
                           .scratch_per = attn_per};
      cf__par(b, cf__attn_worker, &aj);

      cf__gemm_job_t oj = {.a = att, .lda = (int)qd, .m = n, .kdim = (int)qd, .beta = 1,
                           .nseg = 1, .seg = {{w->wo, w->bo, D, xb, D}}};
      cf__par(b, cf__gemm_worker, &oj);

      rj.norm = w->mlp_norm;
      cf__par(b, cf__norm_worker, &rj);
      if (c->layer_moe[l]) {
        cf__moe_block(b, c, w, n, h, xb, mscr);
        continue;
      }
      cf__gemm_job_t mj = {.a = h, .lda = D, .m = n, .kdim = D, .beta = 0, .nseg = 2,
                           .seg = {{w->w_gate, w->b_gate, NI, gate, NI},
                                   {w->w_up, w->b_up, NI, up, NI}}};
      cf__par(b, cf__gemm_worker, &mj);
      cf__par(b, cf__silu_worker, &rj);
      cf__gemm_job_t dj = {.a = gate, .lda = NI, .m = n, .kdim = NI, .beta = 1, .nseg = 1,
                           .seg = {{w->w_down, w->b_down, D, xb, D}}};
      cf__par(b, cf__gemm_worker, &dj);
    }
  }
  pthread_mutex_unlock(&b->fwd_mu);
  free(xown);
  return 0;
}

static void cf__cpu_free(cf_backend_t *be) {
  cf_cpu_t *b = (cf_cpu_t *)be;
  pthread_mutex_lock(&b->mu);
  b->stop = 1;
  pthread_cond_broadcast(&b->cv_start);
  pthread_mutex_unlock(&b->mu);
  for (int i = 0; i < b->nstarted; i++) pthread_join(b->th[i], NULL);
  pthread_mutex_destroy(&b->mu);
  pthread_mutex_destroy(&b->fwd_mu);
  pthread_cond_destroy(&b->cv_start);
  pthread_cond_destroy(&b->cv_done);
  free(b->th);
  free(b->args);
  free(b->inv_freq);
  free(b->work);
  free(b->tab);
  free(b->xblk);
  free(b);
}

int cf_backend_cpu_create(const cf_model_t *m, int n_threads, cf_backend_t **out) {
  *out = NULL;
  if (!m) return cf_seterr(CF_EINVAL, "cpu backend: model is NULL");
  if (n_threads < 0 || n_threads > 256)
    return cf_seterr(CF_EINVAL, "cpu backend: n_threads %d outside [0, 256]", n_threads);
  const cf_model_config_t *c = &m->cfg;
  if (c->head_dim <= 0 || c->head_dim % 2 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
    return cf_seterr(CF_EINVAL, "cpu backend: head_dim %d (must be even) and heads %d/%d "
                     "(must divide) unusable", c->head_dim, c->n_heads, c->n_kv_heads);
  cf_cpu_t *b = calloc(1, sizeof *b);
  if (!b) return cf_seterr(CF_ENOMEM, "cpu backend: state");
  b->base.name = "cpu";
  b->base.model = m;
  b->base.forward = cf__cpu_forward;
  b->base.free = cf__cpu_free;
  b->nthreads = n_threads ? n_threads : 2;
  pthread_mutex_init(&b->mu, NULL);
  pthread_mutex_init(&b->fwd_mu, NULL);
  pthread_cond_init(&b->cv_start, NULL);
  pthread_cond_init(&b->cv_done, NULL);
  b->inv_freq = malloc(sizeof(float) * (c->head_dim / 2));
  b->th = calloc(b->nthreads, sizeof *b->th);
  b->args = calloc(b->nthreads, sizeof *b->args);
  /* the scratch of the largest block, once (cf__cpu_forward's layout) */
  int TB = CF__CPU_TB, D = c->hidden;
  size_t qd = (size_t)c->n_heads * c->head_dim;
  size_t blk = (size_t)TB * D + 2 * (size_t)TB * qd + 2 * (size_t)TB * c->intermediate +
               (size_t)b->nthreads * cf__attn_per_thread(c) + cf__moe_floats(c, TB);
  b->work = malloc(sizeof(float) * blk);
  b->tab = malloc(sizeof(float) * (size_t)TB * c->head_dim);
  b->xblk = malloc(sizeof(float) * (size_t)TB * D);
  b->scratch_bytes = sizeof(float) * (blk + (size_t)TB * c->head_dim + (size_t)TB * D);
  if (!b->inv_freq || !b->th || !b->args || !b->work || !b->tab || !b->xblk) {
    cf__cpu_free(&b->base);
    return cf_seterr(CF_ENOMEM, "cpu backend: state");
  }
  cf__rope_inv_freq(c, b->inv_freq);
  for (int i = 1; i < b->nthreads; i++) {
    b->args[i].b = b;
    b->args[i].tid = i;
    if (pthread_create(&b->th[b->nstarted], NULL, cf__worker, &b->args[i]) != 0) {
      cf__cpu_free(&b->base);
      return cf_seterr(CF_ENOMEM, "cpu backend: cannot start worker thread %d", i);
    }
    b->nstarted++;
  }
  *out = &b->base;
  return 0;
}
