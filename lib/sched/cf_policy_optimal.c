/* optimal — staircase plans chosen jointly over the batch from the cost model, then refined
 * with the simulator.
 *
 * 1. Shape. A plan whose computed cells at layer l are the front chunks [0, k_l) of the
 *    request, k_l non-increasing in l, is a valid staircase (h_c = #{l : k_l > c}) whose
 *    compute never waits for a load. Its costs are separable by layer:
 *        X = sum_l f(k_l), f(k) = step(0, tok(k))        (one step per layer, 0 if k = 0)
 *        Y = sum_l g(k_l), g(k) = (N - tok(k)) b / bw
 *    and the front chunks are exactly the cells the bound (cf_bound.c) computes first, so
 *    the only gap to the bound is integrality (whole chunks, whole layers) and pipeline ends.
 * 2. Joint split. Per request, the lower convex hull of the points (f(k), g(k)), k = 0..n.
 *    Any mix of per-layer choices lies on or above the Minkowski sum of the L-scaled hulls;
 *    walking all requests' hull edges of a device in increasing slope (most load time saved
 *    per second of compute first) traces its frontier. Bisection on T finds the smallest T at
 *    which every device can stay under T in compute while every link stays under T in loads.
 *    Each request ends at a hull vertex; the one request per device on the critical edge is
 *    split at the balance point with one extra "adjustment" layer at an intermediate k.
 * 3. Order. Requests run on both streams in arrival order, shortest first within an
 *    arrival (SPT: cuts mean TTFT without moving the makespan). A second candidate balances
 *    each request in turn against the cumulative compute and link times (finishes requests
 *    earlier when they arrive apart); a third keeps plain arrival order.
 * 4. Refinement (refine_evals != 0): simulate the candidates, hill-climb each request's
 *    position on its hull path by +-1 and +-L/4 layer moves, keep improvements in (makespan,
 *    then mean TTFT); finally simulate every other policy's plan and keep the best, so
 *    `optimal` is never worse than any of them in makespan on the same input.
 * The fast path (refine_evals == 0) is steps 1-3 with candidate 1 only: O(cells/L + edges log
 * edges) per batch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sim.h"
#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

typedef struct {
  int r, d, j;
  double df, dg, slope;
} cf__edge_t;

typedef struct {
  int j, m;     /* m layers at vertex j+1, the rest at vertex j ... */
  int32_t adj;  /* ... except one layer at k = adj when adj >= 0 */
} cf__pos_t;

typedef struct {
  const cf_sched_input_t *in;
  const cf_sched_cost_t *c;
  const int *dev;
  int n, L, nd, nl;
  int32_t *hk;  /* hull vertices (k values) of request r: hk[hoff[r] .. hoff[r] + H[r]) */
  size_t *hoff;
  int *H;
  cf__pos_t *pos;
  int *order;
  double *key;  /* sort key for the order */
  double q;     /* link seconds per token per layer */
} cf__opt_t;

static inline double cf__f(const cf__opt_t *o, int r, int32_t k) {
  return cf_cost_step(o->c, 0, (double)cf_cost_tok(o->c, o->in->reqs[r].prefix_tokens, k));
}
static inline double cf__g(const cf__opt_t *o, int r, int32_t k) {
  int64_t P = o->in->reqs[r].prefix_tokens;
  return (double)(P - cf_cost_tok(o->c, P, k)) * o->q;
}
static inline int32_t cf__hk(const cf__opt_t *o, int r, int j) { return o->hk[o->hoff[r] + j]; }

/* Compute and link time of request r at position p. */
static void cf__xy(const cf__opt_t *o, int r, cf__pos_t p, double *x, double *y) {
  int L = o->L, a = p.adj >= 0;
  int32_t k0 = cf__hk(o, r, p.j), k1 = p.m ? cf__hk(o, r, p.j + 1) : k0;
  *x = (L - p.m - a) * cf__f(o, r, k0) + p.m * cf__f(o, r, k1) + (a ? cf__f(o, r, p.adj) : 0);
  *y = (L - p.m - a) * cf__g(o, r, k0) + p.m * cf__g(o, r, k1) + (a ? cf__g(o, r, p.adj) : 0);
}

/* Lower convex hull of (f(k), g(k)), k = 0..n (Andrew's monotone chain; f increases with k). */
static void cf__hull(cf__opt_t *o, int r, int32_t n) {
  int32_t *h = o->hk + o->hoff[r];
  int m = 0;
  for (int32_t k = 0; k <= n; k++) {
    double x = cf__f(o, r, k), y = cf__g(o, r, k);
    while (m >= 2) {
      double ax = cf__f(o, r, h[m - 2]), ay = cf__g(o, r, h[m - 2]);
      double bx = cf__f(o, r, h[m - 1]), by = cf__g(o, r, h[m - 1]);
      if ((bx - ax) * (y - ay) - (by - ay) * (x - ax) <= 0) m--;
      else break;
    }
    h[m++] = k;
  }
  o->H[r] = m;
}

/* Position of request r on its hull path that minimises max(a + X_r, b + Y_r). */
static cf__pos_t cf__balance(const cf__opt_t *o, int r, double a, double b) {
  int L = o->L, H = o->H[r];
  cf__pos_t best = {0, 0, -1};
  double x, y;
  cf__xy(o, r, best, &x, &y);
  double bv = fmax(a + x, b + y);
  for (int j = 0; j + 1 < H; j++) {
    int32_t k0 = cf__hk(o, r, j), k1 = cf__hk(o, r, j + 1);
    double f0 = cf__f(o, r, k0), g0 = cf__g(o, r, k0);
    double df = cf__f(o, r, k1) - f0, dg = cf__g(o, r, k1) - g0;
    double X = L * f0, Y = L * g0;
    if (a + X + L * df <= b + Y + L * dg) { /* the whole edge is still load-bound */
      cf__pos_t p = {j + 1, 0, -1};
      double v = fmax(a + X + L * df, b + Y + L * dg);
      if (v < bv) { bv = v; best = p; }
      continue;
    }
    int ms = (int)ceil((b + Y - a - X) / (df - dg));
    if (ms < 0) ms = 0;
    if (ms > L) ms = L;
    for (int m = ms - 1; m <= ms; m++) {
      if (m < 0) continue;
      cf__pos_t p = {j, m, -1};
      if (m == L) { p.j = j + 1; p.m = 0; }
      cf__xy(o, r, p, &x, &y);
      double v = fmax(a + x, b + y);
      if (v < bv) { bv = v; best = p; }
      if (m < L) /* one layer at an intermediate split */
        for (int32_t k = k0 + 1; k < k1; k++) {
          double xx = x + cf__f(o, r, k) - f0, yy = y + cf__g(o, r, k) - g0;
          double vv = fmax(a + xx, b + yy);
          if (vv < bv) { bv = vv; best = p; best.adj = k; }
        }
    }
    break;
  }
  return best;
}

static int cf__cmp_edge(const void *pa, const void *pb) {
  const cf__edge_t *a = pa, *b = pb;
  if (a->d != b->d) return a->d - b->d;
  if (a->slope != b->slope) return a->slope < b->slope ? -1 : 1;
  if (a->r != b->r) return a->r - b->r;
  return a->j - b->j;
}

/* Walk each device's edges (sorted) with compute budget T. With `set`, record positions
 * (whole edges only) and the critical request per device in crit[]. Returns the max over
 * links of the link time (fractional on the critical edge). */
static double cf__walk(cf__opt_t *o, const cf__edge_t *e, size_t ne, const double *y0, double T,
                       double *X, double *Yl, int set, int *crit) {
  int L = o->L;
  for (int k = 0; k < o->nl; k++) Yl[k] = 0;
  for (int d = 0; d < o->nd; d++) {
    X[d] = 0;
    Yl[cf_cost_link_of(o->c, d)] += y0[d];
    if (set) crit[d] = -1;
  }
  int stopped_dev = -1;
  for (size_t i = 0; i < ne; i++) {
    int d = e[i].d;
    if (d == stopped_dev) continue;
    int k = cf_cost_link_of(o->c, d);
    double w = L * e[i].df;
    if (X[d] + w <= T) {
      X[d] += w;
      Yl[k] += L * e[i].dg;
      if (set) { o->pos[e[i].r].j = e[i].j + 1; o->pos[e[i].r].m = 0; }
    } else {
      double m = (T - X[d]) / e[i].df;
      X[d] = T;
      Yl[k] += m * e[i].dg;
      if (set) crit[d] = e[i].r;
      stopped_dev = d;
    }
  }
  double mx = 0;
  for (int k = 0; k < o->nl; k++) mx = fmax(mx, Yl[k]);
  return mx;
}

static const double *cf__sort_key;
static const cf_sched_req_t *cf__sort_req;
static int cf__cmp_order(const void *pa, const void *pb) {
  int a = *(const int *)pa, b = *(const int *)pb;
  if (cf__sort_req[a].arrival_s != cf__sort_req[b].arrival_s)
    return cf__sort_req[a].arrival_s < cf__sort_req[b].arrival_s ? -1 : 1;
  if (cf__sort_key && cf__sort_key[a] != cf__sort_key[b])
    return cf__sort_key[a] < cf__sort_key[b] ? -1 : 1;
  return a - b;
}

static void cf__make_order(cf__opt_t *o, int spt) {
  for (int r = 0; r < o->n; r++) {
    o->order[r] = r;
    double x, y;
    cf__xy(o, r, o->pos[r], &x, &y);
    o->key[r] = x + y;
  }
  cf__sort_key = spt ? o->key : NULL;
  cf__sort_req = o->in->reqs;
  qsort(o->order, (size_t)o->n, sizeof *o->order, cf__cmp_order);
}

/* Emit the plan for the current positions and order. */
static int cf__emit(const cf__opt_t *o, cf_sched_plan_t *out, int32_t *kbuf) {
  int rc = cf__plan_reset(out, o->in, o->dev, CF_POLICY_OPTIMAL);
  for (int i = 0; i < o->n && !rc; i++) {
    int r = o->order[i], L = o->L;
    cf__pos_t p = o->pos[r];
    int a = p.adj >= 0, l = 0;
    int32_t k0 = cf__hk(o, r, p.j), k1 = p.m ? cf__hk(o, r, p.j + 1) : k0;
    for (int t = 0; t < p.m; t++) kbuf[l++] = k1;
    if (a) kbuf[l++] = p.adj;
    while (l < L) kbuf[l++] = k0;
    rc = cf__plan_emit_compute(out, o->in, r, kbuf);
    if (!rc) rc = cf__plan_emit_loads(out, o->in, r, kbuf, 0);
  }
  return rc;
}

/* Candidate 2: balance each request against the cumulative stream times, in order. */
static void cf__cumulative(cf__opt_t *o, double *Xc, double *Yc) {
  for (int d = 0; d < o->nd; d++) Xc[d] = 0;
  for (int k = 0; k < o->nl; k++) Yc[k] = 0;
  for (int i = 0; i < o->n; i++) {
    int r = o->order[i], d = o->dev[r], k = cf_cost_link_of(o->c, d);
    double t = o->in->reqs[r].arrival_s, a = fmax(Xc[d], t), b = fmax(Yc[k], t), x, y;
    o->pos[r] = cf__balance(o, r, a, b);
    cf__xy(o, r, o->pos[r], &x, &y);
    if (x > 0) Xc[d] = a + x;
    if (y > 0) Yc[k] = b + y;
  }
}

/* How a simulated plan compares with the other policies' best (mk_o: smallest makespan,
 * mean_o / p99_o: smallest mean and p99 TTFT among them). The makespan bound is hard: a plan
 * slower than the best other policy is out (viol >= 1e6). Then the smaller the TTFT excess
 * over the best other policy the better, then the makespan, then the mean TTFT. */
typedef struct {
  double viol, mk, mean;
} cf__score_t;

typedef struct {
  double mk, mean, p99;
} cf__ref_t;

static cf__score_t cf__score_of(const cf_sim_result_t *r, const cf__ref_t *ref) {
  cf__score_t s = {0, r->makespan_s, r->mean_ttft_s};
  if (!ref) return s;
  const double eps = 1e-12;
  if (r->makespan_s > ref->mk * (1 + eps)) s.viol = 1e6 + r->makespan_s / ref->mk;
  else {
    if (ref->mean > 0 && r->mean_ttft_s > ref->mean * (1 + eps)) s.viol += r->mean_ttft_s / ref->mean - 1;
    if (ref->p99 > 0 && r->p99_ttft_s > ref->p99 * (1 + eps)) s.viol += r->p99_ttft_s / ref->p99 - 1;
  }
  return s;
}

static int cf__score_better(cf__score_t a, cf__score_t b) {
  const double eps = 1e-12;
  if (a.viol < b.viol - eps) return 1;
  if (a.viol > b.viol + eps) return 0;
  if (a.mk < b.mk * (1 - eps)) return 1;
  if (a.mk > b.mk * (1 + eps)) return 0;
  return a.mean < b.mean * (1 - eps);
}

static void cf__swap_plans(cf_sched_plan_t *a, cf_sched_plan_t *b) {
  cf_sched_plan_t t = *a;
  *a = *b;
  *b = t;
}

/* Default local-search budget: what fits in ~20M simulated cells, between 8 and 64 runs. */
static int cf__default_evals(const cf_sched_input_t *in) {
  double cells = 0;
  for (int r = 0; r < in->n_reqs; r++)
    cells += (double)cf_cost_chunks(&in->cost, in->reqs[r].prefix_tokens) * in->cost.n_layers;
  double e = cells > 0 ? 2e7 / cells : 64;
  return e > 64 ? 64 : e < 8 ? 8 : (int)e;
}

int cf__policy_optimal(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, nl = cf_cost_n_links(c);
  cf__opt_t o = {in, c, dev, n, L, nd, nl};
  o.q = c->kv_bytes_per_token / c->link_Bps;
  size_t npts = 0;
  for (int r = 0; r < n; r++) npts += (size_t)cf_cost_chunks(c, in->reqs[r].prefix_tokens) + 1;
  int rc = 0;
  size_t nn = n ? (size_t)n : 1;
  o.hk = malloc((npts ? npts : 1) * sizeof *o.hk);
  o.hoff = malloc(nn * sizeof *o.hoff);
  o.H = malloc(nn * sizeof *o.H);
  o.pos = malloc(nn * sizeof *o.pos);
  o.order = malloc(nn * sizeof *o.order);
  o.key = malloc(nn * sizeof *o.key);
  cf__edge_t *e = malloc((npts ? npts : 1) * sizeof *e);
  double *y0 = calloc((size_t)nd, sizeof *y0), *X = calloc((size_t)nd, sizeof *X);
  double *Yl = calloc((size_t)nl, sizeof *Yl);
  int *crit = calloc((size_t)nd, sizeof *crit);
  int32_t *kbuf = malloc((size_t)L * sizeof *kbuf);
  cf__pos_t *best_pos = malloc(nn * sizeof *best_pos);
  int *best_order = malloc(nn * sizeof *best_order);
  cf_sched_plan_t tmp, alt;
  cf_sched_plan_init(&tmp);
  cf_sched_plan_init(&alt);
  cf_sim_result_t sim;
  cf_sim_result_init(&sim);
  if (!o.hk || !o.hoff || !o.H || !o.pos || !o.order || !o.key || !e || !y0 || !X || !Yl ||
      !crit || !kbuf || !best_pos || !best_order) {
    rc = cf_seterr(CF_ENOMEM, "optimal: %d requests, %zu hull points", n, npts);
    goto out;
  }

  /* 1-2: hulls, edges, bisection on T, integer positions. */
  size_t off = 0, ne = 0;
  for (int r = 0; r < n; r++) {
    int32_t nc = cf_cost_chunks(c, in->reqs[r].prefix_tokens);
    o.hoff[r] = off;
    off += (size_t)nc + 1;
    cf__hull(&o, r, nc);
    o.pos[r].j = 0;
    o.pos[r].m = 0;
    o.pos[r].adj = -1;
    y0[dev[r]] += L * cf__g(&o, r, 0);
    for (int j = 0; j + 1 < o.H[r]; j++) {
      cf__edge_t *x = &e[ne++];
      x->r = r;
      x->d = dev[r];
      x->j = j;
      x->df = cf__f(&o, r, cf__hk(&o, r, j + 1)) - cf__f(&o, r, cf__hk(&o, r, j));
      x->dg = cf__g(&o, r, cf__hk(&o, r, j + 1)) - cf__g(&o, r, cf__hk(&o, r, j));
      x->slope = x->dg / x->df;
    }
  }
  qsort(e, ne, sizeof *e, cf__cmp_edge);
  double lo = 0, hi = 0;
  for (int k = 0; k < nl; k++) Yl[k] = 0;
  for (int d = 0; d < nd; d++) Yl[cf_cost_link_of(c, d)] += y0[d];
  for (int k = 0; k < nl; k++) hi = fmax(hi, Yl[k]);
  for (int it = 0; it < 100 && hi - lo > 1e-12 * hi; it++) {
    double mid = 0.5 * (lo + hi);
    if (cf__walk(&o, e, ne, y0, mid, X, Yl, 0, NULL) <= mid) hi = mid;
    else lo = mid;
  }
  cf__walk(&o, e, ne, y0, hi, X, Yl, 1, crit);
  /* exact X, Y from the whole-edge positions, then split each critical request */
  for (int d = 0; d < nd; d++) X[d] = 0;
  for (int k = 0; k < nl; k++) Yl[k] = 0;
  for (int r = 0; r < n; r++) {
    double x, y;
    cf__xy(&o, r, o.pos[r], &x, &y);
    X[dev[r]] += x;
    Yl[cf_cost_link_of(c, dev[r])] += y;
  }
  for (int d = 0; d < nd; d++) {
    int r = crit[d], k = cf_cost_link_of(c, d);
    if (r < 0) continue;
    double x, y;
    cf__xy(&o, r, o.pos[r], &x, &y);
    double a = X[d] - x, b = Yl[k] - y;
    o.pos[r] = cf__balance(&o, r, a, b);
    cf__xy(&o, r, o.pos[r], &x, &y);
    X[d] = a + x;
    Yl[k] = b + y;
  }
  double est = 0;
  for (int d = 0; d < nd; d++) est = fmax(est, X[d]);
  for (int k = 0; k < nl; k++) est = fmax(est, Yl[k]);

  /* 3: order (shortest first within an arrival). */
  cf__make_order(&o, 1);
  if ((rc = cf__emit(&o, out, kbuf))) goto out;
  out->est_makespan_s = est;
  if (in->refine_evals == 0 || n == 0) goto out;

  /* 4: refinement with the simulator. First the other policies: they set the bar. */
  int budget = in->refine_evals < 0 ? cf__default_evals(in) : in->refine_evals, evals = 0;
  cf__ref_t ref = {INFINITY, INFINITY, INFINITY};
  cf__score_t alt_score = {INFINITY, INFINITY, INFINITY};
  for (int pol = 0; pol < CF_POLICY_COUNT; pol++) {
    if (pol == CF_POLICY_OPTIMAL) continue;
    int (*fn)(const cf_sched_input_t *, const int *, cf_sched_plan_t *) =
        pol == CF_POLICY_RECOMPUTE   ? cf__policy_recompute
        : pol == CF_POLICY_LOAD      ? cf__policy_load
        : pol == CF_POLICY_CAKE      ? cf__policy_cake
        : pol == CF_POLICY_LAYERWISE ? cf__policy_layerwise
                                     : cf__policy_cacheflow;
    if ((rc = fn(in, dev, &tmp))) goto out;
    if ((rc = cf_sim_run(in, &tmp, &sim))) goto out;
    evals++;
    ref.mk = fmin(ref.mk, sim.makespan_s);
    ref.mean = fmin(ref.mean, sim.mean_ttft_s);
    ref.p99 = fmin(ref.p99, sim.p99_ttft_s);
    cf__score_t sc = cf__score_of(&sim, NULL);
    if (cf__score_better(sc, alt_score)) { /* best other so far, by makespan */
      alt_score = sc;
      cf__swap_plans(&alt, &tmp);
    }
  }
  if ((rc = cf_sim_run(in, &alt, &sim))) goto out;
  alt_score = cf__score_of(&sim, &ref);
  if ((rc = cf_sim_run(in, out, &sim))) goto out;
  evals++;
  cf__score_t best = cf__score_of(&sim, &ref);
  memcpy(best_pos, o.pos, nn * sizeof *o.pos);
  memcpy(best_order, o.order, nn * sizeof *o.order);
  for (int cand = 0; cand < 3; cand++) {
    memcpy(o.pos, best_pos, nn * sizeof *o.pos);
    if (cand == 0) { /* plain arrival order, same split */
      cf__sort_key = NULL;
      for (int r = 0; r < n; r++) o.order[r] = r;
      cf__sort_req = in->reqs;
      qsort(o.order, nn, sizeof *o.order, cf__cmp_order);
    } else { /* cumulative balance, in SPT order (1) or arrival order (2) */
      if (cand == 1) cf__make_order(&o, 1);
      else {
        cf__sort_key = NULL;
        for (int r = 0; r < n; r++) o.order[r] = r;
        qsort(o.order, nn, sizeof *o.order, cf__cmp_order);
      }
      cf__cumulative(&o, X, Yl);
    }
    if ((rc = cf__emit(&o, &tmp, kbuf))) goto out;
    if ((rc = cf_sim_run(in, &tmp, &sim))) goto out;
    evals++;
    cf__score_t sc = cf__score_of(&sim, &ref);
    if (cf__score_better(sc, best)) {
      best = sc;
      memcpy(best_pos, o.pos, nn * sizeof *o.pos);
      memcpy(best_order, o.order, nn * sizeof *o.order);
    }
  }
  /* hill climbing on each request's position along its hull path */
  memcpy(o.pos, best_pos, nn * sizeof *o.pos);
  memcpy(o.order, best_order, nn * sizeof *o.order);
  const int steps[4] = {1, -1, L / 4 > 1 ? L / 4 : 2, -(L / 4 > 1 ? L / 4 : 2)};
  int improved = 1;
  while (improved && evals < budget) {
    improved = 0;
    for (int i = 0; i < n && evals < budget; i++) {
      int r = o.order[n - 1 - i]; /* later requests first: they set the makespan */
      for (int s = 0; s < 4 && evals < budget; s++) {
        cf__pos_t p = best_pos[r];
        int u = p.j * L + p.m + (p.adj >= 0 ? 1 : 0) + steps[s];
        int umax = (o.H[r] - 1) * L;
        if (u < 0 || u > umax || (u == p.j * L + p.m && p.adj < 0)) continue;
        o.pos[r].j = u / L;
        o.pos[r].m = u % L;
        o.pos[r].adj = -1;
        if (o.pos[r].j == o.H[r] - 1) o.pos[r].m = 0;
        if ((rc = cf__emit(&o, &tmp, kbuf))) goto out;
        if ((rc = cf_sim_run(in, &tmp, &sim))) goto out;
        evals++;
        cf__score_t sc = cf__score_of(&sim, &ref);
        if (cf__score_better(sc, best)) {
          best = sc;
          best_pos[r] = o.pos[r];
          improved = 1;
          break;
        }
        o.pos[r] = best_pos[r];
      }
    }
  }
  memcpy(o.pos, best_pos, nn * sizeof *o.pos);
  memcpy(o.order, best_order, nn * sizeof *o.order);
  if ((rc = cf__emit(&o, out, kbuf))) goto out;
  out->est_makespan_s = best.mk;
  if (cf__score_better(alt_score, best)) { /* another policy's plan is better: use it */
    alt.policy = CF_POLICY_OPTIMAL;
    cf__swap_plans(out, &alt);
    out->est_makespan_s = alt_score.mk;
  }
  out->sim_evals = evals;
out:
  free(o.hk);
  free(o.hoff);
  free(o.H);
  free(o.pos);
  free(o.order);
  free(o.key);
  free(e);
  free(y0);
  free(X);
  free(Yl);
  free(crit);
  free(kbuf);
  free(best_pos);
  free(best_order);
  cf_sched_plan_free(&tmp);
  cf_sched_plan_free(&alt);
  cf_sim_result_free(&sim);
  return rc;
}
