/* The mixed-tier plan of optimal (cf_policy_optimal.c step 1b).
 *
 * When a request's chunks lie in tiers that read at different rates, the cells worth
 * computing are not the front chunks (the hull's shape) but those whose load is slow for
 * what their compute costs. Per device, every chunk of its requests is an item with, per
 * layer, x = its compute (the step's share past gamma: exact, steps are additive over
 * chunks) and y = its link time (latency left out). Minimising max(X, Y) over the number of
 * layers each chunk computes, fractionally, is solved by taking items in decreasing y / x
 * until compute meets the link: the dependency-free bound's own choice (cf_bound.c), so the
 * plan differs from the bound only by whole layers, gamma and latency, and pipeline ends.
 * Here the greedy gives each item the most layers that still fit (h_c = L for the best,
 * partial heights where the rest of the gap allows), so some chunk in the middle of a
 * prefix may compute 7 of 32 layers while its neighbours load. Loads run one op per layer
 * and run of loaded chunks, layer by layer, so each layer's computes find the earlier chunks
 * they attend to loaded in time; computes run one op per layer and run of computed chunks.
 * Requests run in arrival order, shortest first within an arrival. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

/* Per request, its chunks grouped by tier (chunk order within a tier), with per-layer
 * prefix sums of compute (past gamma) and link time (past latency) along each group. Within a
 * group y / x = rate / (alpha + beta * (chunk middle)) falls along it (the last, shorter chunk
 * included), so "every chunk with y / x above a price" is a prefix of each group: one binary
 * search per (request, tier) per price instead of sorting the chunks. */
typedef struct {
  int32_t *idx;   /* [chunks] chunk numbers, grouped by tier */
  double *px, *py; /* [chunks + tiers]: prefix sums along each group (group g at goff + g) */
  int32_t goff[CF_COST_MAX_TIERS + 1]; /* group t: idx[goff[t] .. goff[t + 1]) */
  double hole_x; /* compute per layer of the request's holes, a gamma per run of them
                    included (each run is its own step at every layer): in no group, always
                    computed at every layer (cf_sched.h) */
  int hole0;      /* chunk 0 is a hole */
} cf__groups_t;

static inline double cf__ratio(const cf__groups_t *g, int t, int32_t j) {
  size_t o = (size_t)g->goff[t] + (size_t)t; /* prefix sums of group t start here */
  double x = g->px[o + j + 1] - g->px[o + j], y = g->py[o + j + 1] - g->py[o + j];
  return x > 0 ? y / x : INFINITY;
}

/* Chunks of group t with y / x > s: the length of that prefix. */
static inline int32_t cf__count_above(const cf__groups_t *g, int t, double s) {
  int32_t lo = 0, hi = g->goff[t + 1] - g->goff[t];
  while (lo < hi) {
    int32_t mid = lo + (hi - lo) / 2;
    if (cf__ratio(g, t, mid) > s) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static void cf__groups_fill(const cf_sched_input_t *in, int r, int32_t nc, cf__groups_t *g) {
  const cf_sched_cost_t *c = &in->cost;
  const cf_sched_req_t *q = &in->reqs[r];
  int32_t cnt[CF_COST_MAX_TIERS] = {0};
  g->hole_x = 0;
  g->hole0 = nc > 0 && cf_sched_chunk_hole(q, 0);
  for (int32_t ch = 0; ch < nc; ch++)
    if (!cf_sched_chunk_hole(q, ch)) cnt[cf_sched_chunk_tier(q, ch)]++;
  g->goff[0] = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) g->goff[t + 1] = g->goff[t] + cnt[t];
  int32_t at[CF_COST_MAX_TIERS];
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
    at[t] = g->goff[t];
    g->px[g->goff[t] + t] = g->py[g->goff[t] + t] = 0;
  }
  for (int32_t ch = 0; ch < nc; ch++) {
    int t = cf_sched_chunk_tier(q, ch);
    double p = (double)cf_cost_tok(c, q->prefix_tokens, ch);
    double tk = (double)cf_cost_tok(c, q->prefix_tokens, ch + 1) - p;
    if (t == CF_SCHED_TIER_NONE) { /* past gamma, but gamma once per run of holes */
      g->hole_x += cf_cost_step(c, p, tk) - (ch > 0 && cf_sched_chunk_hole(q, ch - 1) ? c->gamma_s : 0);
      continue;
    }
    size_t o = (size_t)at[t] + (size_t)t;
    g->idx[at[t]++] = ch;
    g->px[o + 1] = g->px[o] + cf_cost_step(c, p, tk) - c->gamma_s;
    g->py[o + 1] = g->py[o] + tk * c->kv_bytes_per_token / cf_cost_tier_Bps(c, t);
  }
}

typedef struct {
  int r, t;
  int32_t j; /* the group's first chunk past the price */
  double ratio;
} cf__cand_t;

static int cf__cmp_cand(const void *pa, const void *pb) {
  const cf__cand_t *a = pa, *b = pb;
  if (a->ratio != b->ratio) return a->ratio > b->ratio ? -1 : 1;
  return a->r != b->r ? a->r - b->r : a->t - b->t;
}

/* Device d's split: bisection on the price s for the smallest with X(s) <= Y(s) (every chunk
 * above s computed at every layer), then the chunks just past it, best ratio first, get the
 * layers that still fit. Sets the heights in out and xr[r] (compute per request). */
static void cf__tier_split(const cf_sched_input_t *in, const int *dev, int d, cf__groups_t *G,
                           cf_sched_plan_t *out, cf__cand_t *cand, double *xr) {
  int n = in->n_reqs, L = in->cost.n_layers;
  double Ytot = 0, smax = 0, Xh = 0; /* Xh: the holes' compute, fixed */
  for (int r = 0; r < n; r++) {
    if (dev[r] != d) continue;
    Xh += L * G[r].hole_x;
    for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
      int32_t m = G[r].goff[t + 1] - G[r].goff[t];
      if (!m) continue;
      Ytot += L * G[r].py[G[r].goff[t] + t + m];
      double r0 = cf__ratio(&G[r], t, 0);
      if (isfinite(r0)) smax = fmax(smax, r0);
    }
  }
  /* X(s), Y(s) at price s */
#define CF__XY(s, X, Y)                                                                  \
  do {                                                                                   \
    X = Xh;                                                                              \
    Y = Ytot;                                                                            \
    for (int r_ = 0; r_ < n; r_++) {                                                     \
      if (dev[r_] != d) continue;                                                        \
      int any_ = 0;                                                                      \
      for (int t_ = 0; t_ < CF_COST_MAX_TIERS; t_++) {                                   \
        if (G[r_].goff[t_ + 1] == G[r_].goff[t_]) continue;                              \
        int32_t k_ = cf__count_above(&G[r_], t_, s);                                     \
        size_t o_ = (size_t)G[r_].goff[t_] + (size_t)t_;                                 \
        X += L * G[r_].px[o_ + k_];                                                      \
        Y -= L * G[r_].py[o_ + k_];                                                      \
        any_ |= k_ > 0;                                                                  \
      }                                                                                  \
      /* its computed chunks (the front ones of their tiers): a step per layer, unless the  \
       * prefix starts with holes, whose step they join */                               \
      if (any_ && !G[r_].hole0) X += L * gstep;                                          \
    }                                                                                    \
  } while (0)
  double gstep = in->cost.gamma_s;
  double lo = 0, hi = smax * 2 + 1e-300, X, Y; /* X(hi) = 0 <= Y; find the smallest s */
  CF__XY(0.0, X, Y);
  if (X <= Y) lo = hi = 0; /* computing everything still fits */
  for (int it = 0; it < 60 && hi - lo > 1e-12 * hi; it++) {
    double mid = 0.5 * (lo + hi);
    CF__XY(mid, X, Y);
    if (X <= Y) hi = mid;
    else lo = mid;
  }
  CF__XY(hi, X, Y);
#undef CF__XY
  int nc = 0;
  for (int r = 0; r < n; r++) {
    if (dev[r] != d) continue;
    uint16_t *h = cf__plan_h(out, r);
    for (int32_t ch = 0; ch < out->n_chunks[r]; ch++) /* holes: every layer */
      if (cf_sched_chunk_hole(&in->reqs[r], ch)) h[ch] = (uint16_t)L;
    xr[r] += L * G[r].hole_x;
    for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
      int32_t m = G[r].goff[t + 1] - G[r].goff[t];
      if (!m) continue;
      int32_t k = cf__count_above(&G[r], t, hi);
      size_t o = (size_t)G[r].goff[t] + (size_t)t;
      for (int32_t j = 0; j < k; j++) h[G[r].idx[G[r].goff[t] + j]] = (uint16_t)L;
      xr[r] += L * G[r].px[o + k];
      if (k < m) cand[nc++] = (cf__cand_t){r, t, k, cf__ratio(&G[r], t, k)};
    }
  }
  qsort(cand, (size_t)nc, sizeof *cand, cf__cmp_cand);
  for (int i = 0; i < nc && Y > X; i++) { /* the gap: the next chunks, partial heights */
    const cf__groups_t *g = &G[cand[i].r];
    size_t o = (size_t)g->goff[cand[i].t] + (size_t)cand[i].t + (size_t)cand[i].j;
    double x = g->px[o + 1] - g->px[o], y = g->py[o + 1] - g->py[o];
    int layers = x + y > 0 ? (int)fmin((double)L, floor((Y - X) / (x + y))) : 0;
    if (layers <= 0) continue;
    cf__plan_h(out, cand[i].r)[g->idx[g->goff[cand[i].t] + cand[i].j]] = (uint16_t)layers;
    X += layers * x;
    Y -= layers * y;
    xr[cand[i].r] += layers * x;
  }
}

static int cf__cmp_key(const void *pa, const void *pb, void *arg) {
  const double *key = arg;
  int a = *(const int *)pa, b = *(const int *)pb;
  if (key[2 * a] != key[2 * b]) return key[2 * a] < key[2 * b] ? -1 : 1;
  if (key[2 * a + 1] != key[2 * b + 1]) return key[2 * a + 1] < key[2 * b + 1] ? -1 : 1;
  return a - b;
}

/* Scratch of cf__tier_emit, sized for a request's chunks: segment starts, one layer's runs
 * (chunks [ra, rb) and the op's cost) and the layers where the runs change. */
typedef struct {
  int32_t *seg, *ra, *rb; /* [chunks + 1] each */
  double *rcost;          /* [chunks + 1] */
  uint8_t *change;        /* [layers + 1] */
  size_t ops_layer;       /* ops so far were every load one layer (cf__tier_plan's *ops_layer) */
} cf__emit_buf_t;

/* Request r's runs at layer l (pass 0: loaded chunks, 1: computed), each with what its op costs
 * at one layer, into B->ra/rb/rcost; returns how many. */
static int32_t cf__tier_runs(const cf_sched_cost_t *c, const cf_sched_req_t *q, const uint16_t *h,
                             const int32_t *seg, int32_t ns, int pass, int l, cf__emit_buf_t *B) {
  int32_t nr = 0;
  for (int32_t i = 0, j; i < ns; i = j) {
    int on = pass ? h[seg[i]] > l : h[seg[i]] <= l;
    for (j = i + 1; j < ns && (pass ? h[seg[j]] > l : h[seg[j]] <= l) == on; j++) {}
    if (!on) continue;
    int32_t a = seg[i], b = seg[j];
    double s = 0;
    if (pass == 0) {
      for (int32_t u = i; u < j; u++) /* each segment is one tier: its rate */
        s += (double)(cf_cost_tok(c, q->prefix_tokens, seg[u + 1]) -
                      cf_cost_tok(c, q->prefix_tokens, seg[u])) *
             c->kv_bytes_per_token / cf_cost_tier_Bps(c, cf_sched_chunk_tier(q, seg[u]));
      s += c->link_latency_s;
    } else {
      double p = (double)cf_cost_tok(c, q->prefix_tokens, a);
      s = cf_cost_step(c, p, (double)cf_cost_tok(c, q->prefix_tokens, b) - p);
    }
    B->ra[nr] = a;
    B->rb[nr] = b;
    B->rcost[nr++] = s;
  }
  return nr;
}

/* Request r's loads above layer 0 as rectangles [a, b) x [max(h, 1), L), one per run of
 * consecutive loaded chunks with one start layer, in chunk order; adds their link time to *yl. */
static int cf__tier_merged(const cf_sched_cost_t *c, const cf_sched_req_t *q, cf_sched_plan_t *out,
                           int r, int k, const uint16_t *h, const int32_t *seg, int32_t ns,
                           double *yl) {
  int L = c->n_layers;
  for (int32_t i = 0, j; i < ns; i = j) {
    int l0 = h[seg[i]] > 1 ? h[seg[i]] : 1;
    if (l0 >= L) {
      j = i + 1;
      continue;
    }
    double s = 0;
    for (j = i; j < ns && (h[seg[j]] > 1 ? h[seg[j]] : 1) == l0; j++) /* each segment one tier */
      s += (double)(cf_cost_tok(c, q->prefix_tokens, seg[j + 1]) -
                    cf_cost_tok(c, q->prefix_tokens, seg[j])) *
           c->kv_bytes_per_token / cf_cost_tier_Bps(c, cf_sched_chunk_tier(q, seg[j]));
    int rc = cf__plan_op(out, r, CF_OP_LOAD, k, seg[i], seg[j], l0, L);
    if (rc) return rc;
    *yl += s * (L - l0) + c->link_latency_s;
  }
  return 0;
}

/* Request r's ops: loads one per layer and run of loaded chunks, then computes one per
 * layer and run of computed chunks; runs are found over segments of equal h (few: the tier
 * runs, the holes and the partial heights), not chunk by chunk, and only at the layers where
 * some segment's height starts or ends (a layer band between two heights repeats the same
 * runs: scattered holes make ~260k ops at 64 x 128k tokens, and finding the runs per layer
 * was most of the planning time).
 * Merged loads: when the request's loads all end (*yfree: its link's free time, updated)
 * before its compute stream (free at *xfree at the earliest: the compute it has run, updated)
 * can finish its layer-0 computes, no compute above layer 0 can wait on a load, so its loads
 * above layer 0 go as one op per run of chunks with one start layer (layers [max(h, 1), L)),
 * chunk by chunk, after the per-layer loads of layer 0: same starts, fewer ops and link
 * latencies (every 2nd chunk a hole: half the ops). *xs_out, *ys_out: its compute and link
 * time. */
static int cf__tier_emit(const cf_sched_input_t *in, cf_sched_plan_t *out, int r,
                         cf__emit_buf_t *B, double *xfree, double *yfree, double *xs_out,
                         double *ys_out) {
  const cf_sched_cost_t *c = &in->cost;
  const cf_sched_req_t *q = &in->reqs[r];
  int L = c->n_layers, d = out->device[r], k = cf_cost_link_of(c, d), rc = 0;
  int32_t nc = out->n_chunks[r], ns = 0, nr = 0, *seg = B->seg;
  const uint16_t *h = cf__plan_h(out, r);
  memset(B->change, 0, (size_t)L + 1);
  B->change[0] = 1;
  for (int32_t a = 0; a < nc; a++) { /* segments: equal height and tier */
    if (a == 0 || h[a] != h[a - 1] || cf_sched_chunk_tier(q, a) != cf_sched_chunk_tier(q, a - 1))
      seg[ns++] = a;
    if (h[a] < L) B->change[h[a]] = 1; /* layer h[a] is the first that loads chunk a */
  }
  seg[ns] = nc;
  /* per-layer link time and layer-0 compute: may the loads above layer 0 merge? */
  double x0 = 0, yl = 0, xs = 0;
  nr = cf__tier_runs(c, q, h, seg, ns, 1, 0, B);
  for (int32_t i = 0; i < nr; i++) x0 += B->rcost[i];
  for (int l = 0; l < L; l++) {
    if (B->change[l]) nr = cf__tier_runs(c, q, h, seg, ns, 0, l, B);
    for (int32_t i = 0; i < nr; i++) yl += B->rcost[i];
    B->ops_layer += (size_t)nr;
  }
  double a_s = q->arrival_s;
  int merge = L > 1 && yl > 0 && fmax(*yfree, a_s) + yl <= fmax(*xfree, a_s) + x0;
  yl = 0;
  for (int pass = 0; pass < 2 && !rc; pass++) /* 0: loads, 1: computes */
    for (int l = 0; l < (merge && pass == 0 ? 1 : L) && !rc; l++) {
      if (B->change[l]) nr = cf__tier_runs(c, q, h, seg, ns, pass, l, B);
      if ((rc = cf__plan_reserve(out, (size_t)nr))) break;
      for (int32_t i = 0; i < nr; i++) {
        cf__plan_put(out, r, pass ? CF_OP_COMPUTE : CF_OP_LOAD, pass ? d : k, B->ra[i], B->rb[i], l, l + 1);
        if (pass) xs += B->rcost[i];
        else yl += B->rcost[i];
      }
      if (pass) B->ops_layer += (size_t)nr;
      if (merge && pass == 0 && !rc) rc = cf__tier_merged(c, q, out, r, k, h, seg, ns, &yl);
    }
  *xfree = fmax(*xfree, a_s) + xs;
  if (yl > 0) *yfree = fmax(*yfree, a_s) + yl;
  *xs_out = xs;
  *ys_out = yl;
  return rc;
}

/* When the streams end with requests in `order`: each request's link time from its arrival
 * when the link is free; its computes from its arrival, the compute stream free and its
 * first layer's loads, ending no earlier than one layer after its last loads. */
static double cf__tier_estimate(const cf_sched_input_t *in, const int *dev, const int *order,
                                const double *xr, const double *yr, double *X, double *Y) {
  const cf_sched_cost_t *c = &in->cost;
  int L = c->n_layers;
  for (int d = 0; d < c->n_devices; d++) X[d] = 0;
  for (int k = 0; k < cf_cost_n_links(c); k++) Y[k] = 0;
  double e = 0;
  for (int i = 0; i < in->n_reqs; i++) {
    int r = order[i], d = dev[r], k = cf_cost_link_of(c, d);
    double a = in->reqs[r].arrival_s, ls = fmax(Y[k], a), le = ls + yr[r];
    if (yr[r] > 0) Y[k] = le;
    if (xr[r] > 0) {
      double cs = fmax(fmax(X[d], a), yr[r] > 0 ? ls + yr[r] / L : 0);
      X[d] = fmax(cs + xr[r], yr[r] > 0 ? le + xr[r] / L : 0);
    }
    e = fmax(e, fmax(X[d], Y[k]));
  }
  return e;
}

int cf__tier_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                  double *est, double *busy, double *ops_layer) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, rc;
  *est = INFINITY;
  if ((rc = cf__plan_reset(out, in, dev, CF_POLICY_OPTIMAL))) return rc;
  size_t nitems = out->h_off[n], nn = n ? (size_t)n : 1;
  cf__groups_t *G = calloc(nn, sizeof *G);
  int32_t *idx = malloc((nitems + 1) * sizeof *idx);
  double *pxy = malloc(2 * (nitems + nn * CF_COST_MAX_TIERS) * sizeof *pxy);
  cf__cand_t *cand = malloc(nn * CF_COST_MAX_TIERS * sizeof *cand);
  double *X = calloc((size_t)nd, sizeof *X), *Y = calloc((size_t)cf_cost_n_links(c), sizeof *Y);
  double *key = malloc(2 * nn * sizeof *key);
  int *order = malloc(2 * nn * sizeof *order), *border = order + nn;
  double *xr = calloc(2 * nn, sizeof *xr), *yr = xr + nn;
  cf__emit_buf_t eb = {malloc(3 * (nitems + 1) * sizeof *eb.seg), NULL, NULL,
                       malloc((nitems + 1) * sizeof *eb.rcost), malloc((size_t)L + 1), 0};
  if (!G || !idx || !pxy || !cand || !X || !Y || !key || !order || !xr || !eb.seg || !eb.rcost || !eb.change) {
    rc = cf_seterr(CF_ENOMEM, "optimal: tier plan of %d requests", n);
    goto out;
  }
  eb.ra = eb.seg + (nitems + 1);
  eb.rb = eb.ra + (nitems + 1);
  for (int r = 0; r < n; r++) {
    size_t o = out->h_off[r] + (size_t)r * CF_COST_MAX_TIERS;
    G[r].idx = idx + out->h_off[r];
    G[r].px = pxy + o;
    G[r].py = pxy + (nitems + nn * CF_COST_MAX_TIERS) + o;
    cf__groups_fill(in, r, out->n_chunks[r], &G[r]);
  }
  for (int d = 0; d < nd; d++) cf__tier_split(in, dev, d, G, out, cand, xr);
  for (int r = 0; r < n; r++) { /* link time of each request at its heights */
    const uint16_t *h = cf__plan_h(out, r);
    for (int t = 0; t < CF_COST_MAX_TIERS; t++)
      for (int32_t j = G[r].goff[t]; j < G[r].goff[t + 1]; j++) {
        size_t o = (size_t)j + (size_t)t;
        yr[r] += (L - h[G[r].idx[j]]) * (G[r].py[o + 1] - G[r].py[o]);
      }
  }
  /* Order. Each request's computes wait for the loads of the chunks they attend to, so a
   * request that mostly loads, run first, leaves the compute stream idle while a request that
   * mostly computes waits behind it on the link. Two orders are estimated: arrival then
   * shortest first, and Johnson's rule for two machines in series (link, then compute:
   * requests with y < x first by increasing y, then the rest by decreasing x), which ignores
   * arrivals. The smaller estimate wins. */
  double best = INFINITY;
  for (int way = 0; way < 2; way++) {
    for (int r = 0; r < n; r++) {
      order[r] = r;
      key[2 * r] = way == 0 ? in->reqs[r].arrival_s : yr[r] < xr[r] ? 0 : 1;
      key[2 * r + 1] = way == 0 ? xr[r] + yr[r] : yr[r] < xr[r] ? yr[r] : -xr[r];
    }
    qsort_r(order, (size_t)n, sizeof *order, cf__cmp_key, key);
    double e = cf__tier_estimate(in, dev, order, xr, yr, X, Y);
    if (e < best) {
      best = e;
      memcpy(border, order, nn * sizeof *order);
    }
  }
  for (int d = 0; d < nd; d++) X[d] = 0; /* emit's stream clocks: compute at the earliest, */
  for (int k = 0; k < cf_cost_n_links(c); k++) Y[k] = 0; /* the link exactly */
  for (int i = 0; i < n && !rc; i++) { /* emit; the estimate again with gamma and latency */
    int r = border[i], d = dev[r];
    rc = cf__tier_emit(in, out, r, &eb, &X[d], &Y[cf_cost_link_of(c, d)], &xr[r], &yr[r]);
  }
  if (!rc) *est = cf__tier_estimate(in, dev, border, xr, yr, X, Y);
  if (ops_layer) *ops_layer = (double)eb.ops_layer;
  if (!rc && busy) { /* per stream, the exact op costs cf__tier_emit summed */
    for (int d = 0; d < nd; d++) X[d] = 0;
    for (int k = 0; k < cf_cost_n_links(c); k++) Y[k] = 0;
    *busy = 0;
    for (int r = 0; r < n; r++) {
      X[dev[r]] += xr[r];
      Y[cf_cost_link_of(c, dev[r])] += yr[r];
      *busy = fmax(*busy, fmax(X[dev[r]], Y[cf_cost_link_of(c, dev[r])]));
    }
  }
out:
  free(G);
  free(idx);
  free(pxy);
  free(cand);
  free(eb.seg);
  free(eb.rcost);
  free(eb.change);
  free(X);
  free(Y);
  free(key);
  free(order);
  free(xr);
  return rc;
}
