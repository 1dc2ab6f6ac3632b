/* optimal — staircase plans chosen jointly over the batch from the cost model, then refined
 * with the simulator within a time budget.
 *
 * 1. Shape. A plan whose computed cells at layer l are the front chunks [0, k_l) of the
 *    request, k_l non-increasing in l, is a valid staircase (h_c = #{l : k_l > c}) whose
 *    compute never waits for a load. Its costs are separable by layer:
 *        X = sum_l f(k_l), f(k) = step(0, tok(k))        (one step per layer, 0 if k = 0)
 *        Y = sum_l g(k_l), g(k) = (N - tok(k)) b / bw
 *    and the front chunks are exactly the cells the bound (cf_bound.c) computes first, so
 *    the only gap to the bound is integrality (whole chunks, whole layers) and pipeline ends.
 * 2. Joint split. Per request, the lower convex hull of the points (f(k), g(k)), k = 0..n
 *    (implicit: see cf__hull). Any mix of per-layer choices lies on or above the Minkowski sum
 *    of the L-scaled hulls, whose frontier takes hull edges in increasing slope (most link
 *    time saved per second of compute first). A price s selects, in every request, the edges
 *    with slope <= s (O(1) per request); bisection on s finds where a device's compute meets
 *    its link. With one link shared by several devices, Newton on T finds the T at which every
 *    device computing for T leaves exactly T of loads (per-device price bisection inside).
 *    Each request ends at a hull vertex; the one request per device on the next edge is split
 *    at the balance point with one extra "adjustment" layer at an intermediate k.
 2b. Help (peer link, DESIGN.md §1 (b); see cf__help): while the device that sets the
 *    estimated makespan has a request other devices of its pipeline stage could compute for,
 *    give it one more helper; its position moves to the k where pooled compute meets its link.
 * 3. Order. Requests run on both streams in arrival order, shortest first within an arrival
 *    (SPT: cuts mean TTFT without moving the makespan).
 * 1b. Mixed tiers (some chunk at another rate, or a hole: cf_sched.h): cf_tiers.c's plan instead, alone when the
 *    plan is not refined (the hull walk costs too much there, and its shape is a special case).
 * 4. Refinement, within the time budget (cf__refine_runs: 0.1% of the estimated makespan,
 *    2-10 ms, in simulator runs at a fixed price per cell; none when the 7-9 runs of a and b
 *    do not fit):
 *    a. every other policy's plan (and the tier plan; with sliding windows the windowed
 *       candidate, cf_window.c) simulated: they set the bar;
 *    b. the analytic plan and its variants (arrival order, cumulative balance, without help);
 *    c. hill climbing on each request's hull position (+-1, +-L/4 layers);
 *    d. from the best of all that, cf_refine.c searches general staircases, groupings and
 *       orders. The score: slower than the best other policy is out, then makespan, then mean
 *       TTFT, so no other policy's plan beats the result on makespan (nor on both);
 *    e. tiny batches (one device, <= CF__EXACT_CELLS cells: (request, chunk, layer) cells, so
 *       toy models only: a real model's one chunk has >= 16 layers) get an exact search
 *       (cf_exact.c) over every plan cf_sim accepts, ops of different requests interleaved
 *       on a stream included, with 3/4 of the budget in search nodes but at least 250k nodes
 *       (~50 ms at most, ~10 us typically); d gets the rest of the budget.
 * The analytic path is O(requests x 64 price steps + ops), no allocation proportional to
 * cells (0.12-0.6 ms for 64 x 128k tokens, bench_sched).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sim.h"
#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

typedef struct {
  int j, m;     /* m layers at vertex j+1, the rest at vertex j ... */
  int32_t adj;  /* ... except one layer at k = adj when adj >= 0 */
} cf__pos_t;

typedef struct {
  const cf_sched_input_t *in;
  const cf_sched_cost_t *c;
  const int *dev;
  int n, L, nd, nl;
  int32_t *kstar; /* hull of request r: vertices k = 0, kstar, kstar + 1, ..., n */
  int *H;         /* number of hull vertices */
  int *dreq, *doff; /* requests of device d: dreq[doff[d] .. doff[d + 1]) */
  cf__pos_t *pos;
  int *order;
  double *key;  /* sort key for the order */
  int maxhelp;   /* helpers per request at most (n_devices - 1, <= CF__MAXHELP) */
  int *hcnt;     /* request r has hcnt[r] helpers: */
  int *hdev;     /* hdev[r * maxhelp + i] computes chunks [hsplit[.. i-1], hsplit[.. i]) */
  int32_t *hsplit;
  int *hreq;     /* per device: the request it is helped with */
  int use_help;  /* emit the help above (0: every request computed by its own device) */
  double q;     /* link seconds per token per layer (tier 0) */
  double *gsum; /* NULL (every chunk in tier 0), or per request r the link seconds per layer of
                   its chunks [0, j) at their tiers' rates: gsum[goff[r] + j], j = 0..chunks */
  size_t *goff;
  double price_tol; /* relative precision of the price bisection */
} cf__opt_t;

static inline double cf__f(const cf__opt_t *o, int r, int32_t k) {
  return cf_cost_step(o->c, 0, (double)cf_cost_tok(o->c, o->in->reqs[r].prefix_tokens, k));
}
static inline double cf__g(const cf__opt_t *o, int r, int32_t k) {
  int64_t P = o->in->reqs[r].prefix_tokens;
  if (o->gsum) { /* mixed tiers: the back chunks' own rates */
    const double *g = o->gsum + o->goff[r];
    return g[cf_cost_chunks(o->c, P)] - g[k];
  }
  return (double)(P - cf_cost_tok(o->c, P, k)) * o->q;
}

/* Does some chunk read at another rate than tier 0's? */
static int cf__mixed_rates(const cf_sched_input_t *in) {
  const cf_sched_cost_t *c = &in->cost;
  for (int r = 0; r < in->n_reqs; r++)
    for (int32_t ch = 0, nc = in->reqs[r].chunk_tier ? cf_cost_chunks(c, in->reqs[r].prefix_tokens) : 0;
         ch < nc; ch++)
      if (in->reqs[r].chunk_tier[ch] == CF_SCHED_TIER_NONE || /* a hole: no load at all */
          cf_cost_tier_Bps(c, in->reqs[r].chunk_tier[ch]) != cf_cost_tier_Bps(c, 0))
        return 1;
  return 0;
}

/* Per-request link prefix sums when some request names its chunks' tiers (o->gsum stays NULL
 * otherwise: the single-rate closed forms apply). The front-chunks shape and the hull below
 * were derived for one rate; with several the chain of (f, g) points need not be convex, so
 * the hull walk is a heuristic there and the refinement (which also simulates every other
 * policy's plan) keeps optimal no slower than them. Returns 0 or CF_ENOMEM. */
static int cf__tier_sums(cf__opt_t *o) {
  const cf_sched_input_t *in = o->in;
  if (!cf__mixed_rates(in)) return 0; /* named tiers all at tier 0's rate: as if none */
  if (!(o->goff = malloc(((size_t)o->n + 1) * sizeof *o->goff))) return cf_seterr(CF_ENOMEM, "optimal: tier sums");
  o->goff[0] = 0;
  for (int r = 0; r < o->n; r++) o->goff[r + 1] = o->goff[r] + (size_t)cf_cost_chunks(o->c, in->reqs[r].prefix_tokens) + 1;
  if (!(o->gsum = malloc(o->goff[o->n] * sizeof *o->gsum))) return cf_seterr(CF_ENOMEM, "optimal: tier sums");
  for (int r = 0; r < o->n; r++) {
    double *g = o->gsum + o->goff[r];
    int32_t nc = cf_cost_chunks(o->c, in->reqs[r].prefix_tokens);
    g[0] = 0;
    for (int32_t ch = 0; ch < nc; ch++) /* one layer of the chunk, latency excluded */
      g[ch + 1] = g[ch] + cf_sched_load_s(o->c, &in->reqs[r], ch, ch + 1, 1) - o->c->link_latency_s;
  }
  return 0;
}
static inline int32_t cf__hk(const cf__opt_t *o, int r, int j) {
  return j == 0 ? 0 : o->kstar[r] + j - 1;
}
/* Slope (link seconds saved per compute second, negative) of hull edge j -> j + 1. */
static inline double cf__slope(const cf__opt_t *o, int r, int j) {
  int32_t k0 = cf__hk(o, r, j), k1 = cf__hk(o, r, j + 1);
  return (cf__g(o, r, k1) - cf__g(o, r, k0)) / (cf__f(o, r, k1) - cf__f(o, r, k0));
}

/* Compute and link time of request r at position p. */
static void cf__xy(const cf__opt_t *o, int r, cf__pos_t p, double *x, double *y) {
  int L = o->L, a = p.adj >= 0;
  int32_t k0 = cf__hk(o, r, p.j), k1 = p.m ? cf__hk(o, r, p.j + 1) : k0;
  *x = (L - p.m - a) * cf__f(o, r, k0) + p.m * cf__f(o, r, k1) + (a ? cf__f(o, r, p.adj) : 0);
  *y = (L - p.m - a) * cf__g(o, r, k0) + p.m * cf__g(o, r, k1) + (a ? cf__g(o, r, p.adj) : 0);
}

/* Where t / phi(t) peaks, phi(t) = gamma + alpha t + beta ctx(0, t) (the step of the front t
 * tokens): at phi = t phi'. Full attention: ctx = t^2/2, t = sqrt(2 gamma / beta). A fraction
 * f of the layers windowed at W, past W: ctx = (1-f) t^2/2 + f (W t - W^2/2), so
 * t^2 = (2 gamma - f beta W^2) / ((1-f) beta); every layer windowed: t / phi rises forever. */
static double cf__peak_t(const cf_sched_cost_t *c) {
  double t = sqrt(2 * c->gamma_s / c->beta_s), W = c->window, f = c->window_frac;
  if (W <= 0 || f <= 0 || t <= W) return t;
  if (f >= 1) return INFINITY;
  return sqrt((2 * c->gamma_s - f * c->beta_s * W * W) / ((1 - f) * c->beta_s));
}

/* Lower convex hull of the points (f(k), g(k)), k = 0..n, without building it: for k >= 1
 * the points sample the curve t -> (phi(t), (N - t) q), phi(t) = gamma + alpha t +
 * beta ctx(0, t), at increasing t; its slope -q / (alpha + beta ctx'(t)) increases with t
 * (ctx' is the context of the t-th query, non-decreasing also with windows), so they form a
 * convex chain. Only k = 0 (x = 0: no step at all) sits off the curve; the hull leaves it
 * along the tangent to the chain, i.e. to the k maximising t / phi(t), which is unimodal with
 * its peak at cf__peak_t. Vertices: 0, kstar, kstar + 1, ..., n. */
static void cf__hull(cf__opt_t *o, int r, int32_t n) {
  if (n == 0) { o->kstar[r] = 0; o->H[r] = 1; return; }
  const cf_sched_cost_t *c = o->c;
  int32_t k = n;
  if (c->beta_s > 0) {
    double t = cf__peak_t(c);
    k = (int32_t)fmin((double)n, floor(t / c->chunk_tokens));
    if (k < 1) k = 1;
    int64_t P = o->in->reqs[r].prefix_tokens;
    /* the peak lies between k and k + 1: keep the better (later on ties: drops collinear) */
    if (k < n) {
      double t0 = (double)cf_cost_tok(c, P, k), t1 = (double)cf_cost_tok(c, P, k + 1);
      if (t1 / cf__f(o, r, k + 1) >= t0 / cf__f(o, r, k)) k++;
    }
  }
  o->kstar[r] = k;
  o->H[r] = n - k + 2;
}

/* Number of hull edges of request r with slope <= s (they are in increasing slope order).
 * Edge k -> k+1 (k >= kstar) has slope -q / (alpha + beta * mid_k), mid_k the position of the
 * chunk's middle token, so the count has a closed form; two direct checks absorb rounding and
 * the first (tangent) and last (partial chunk) edges. */
static int cf__edges_below(const cf__opt_t *o, int r, double s) {
  int E = o->H[r] - 1, j;
  if (E <= 0 || cf__slope(o, r, 0) > s) return 0;
  if (s >= 0) return E;
  const cf_sched_cost_t *c = o->c;
  if (c->beta_s > 0) {
    /* mixed tiers: the request's mean rate; the walks below correct the guess */
    double q = o->gsum ? cf__g(o, r, 0) / (double)o->in->reqs[r].prefix_tokens : o->q;
    /* largest midpoint that qualifies: the position whose context prices at s */
    double M = cf_cost_ctx_inv(c, (q / -s - c->alpha_s) / c->beta_s);
    double kk = floor(M / c->chunk_tokens - 0.5);   /* last qualifying k (full chunks) */
    double jj = kk - o->kstar[r] + 2;               /* edges j = 1.. have k = kstar + j - 1 */
    j = jj < 1 ? 1 : jj > E ? E : (int)jj;
  } else {
    j = E; /* all slopes equal past the tangent */
  }
  while (j < E && cf__slope(o, r, j) <= s) j++;
  while (j > 1 && cf__slope(o, r, j - 1) > s) j--;
  return j;
}

/* Whole-vertex positions of device d's requests at price s; sums their X and Y. */
static void cf__at_price(cf__opt_t *o, int d, double s, double *X, double *Y) {
  *X = *Y = 0;
  for (int i = o->doff[d]; i < o->doff[d + 1]; i++) {
    int r = o->dreq[i], j = cf__edges_below(o, r, s);
    int32_t k = cf__hk(o, r, j);
    o->pos[r].j = j;
    o->pos[r].m = 0;
    o->pos[r].adj = -1;
    *X += o->L * cf__f(o, r, k);
    *Y += o->L * cf__g(o, r, k);
  }
}

/* Device d's next edge in slope order after the positions of cf__at_price: request (or -1)
 * and its slope; *second: the next smallest slope of another request (INFINITY if none) and
 * *second_i its place in dreq (ties go to the earlier place). */
static int cf__next_edge(const cf__opt_t *o, int d, double *slope, double *second, int *second_i) {
  int best = -1, bi = -1;
  *second = INFINITY;
  *second_i = -1;
  for (int i = o->doff[d]; i < o->doff[d + 1]; i++) {
    int r = o->dreq[i];
    if (o->pos[r].j + 1 >= o->H[r]) continue;
    double sl = cf__slope(o, r, o->pos[r].j);
    if (best < 0 || sl < *slope) {
      if (best >= 0) { *second = *slope; *second_i = bi; }
      best = r; bi = i; *slope = sl;
    } else if (sl < *second) {
      *second = sl;
      *second_i = i;
    }
  }
  if (best >= 0) *second_i = *second_i < 0 ? -1 : (*second_i < bi) ? -2 : *second_i;
  return best;
}

/* Price bisection for device d: the largest price at which its compute stays under the
 * budget T (T < 0: under its own link time, the crossing). Leaves positions at that price
 * and returns the request on the next edge (-1 if none); *X, *Y the sums there. */
static int cf__device_split(cf__opt_t *o, int d, double T, double *X, double *Y) {
  double lo = -1e300, hi = 0;
  /* the steepest first edge bounds the prices that matter */
  double smin = 0;
  for (int i = o->doff[d]; i < o->doff[d + 1]; i++)
    if (o->H[o->dreq[i]] > 1) smin = fmin(smin, cf__slope(o, o->dreq[i], 0));
  lo = smin * (1 + 1e-9) - 1e-300;
  cf__at_price(o, d, 0, X, Y);
  if (T < 0 ? *X <= *Y : *X <= T) return -1; /* recompute everything fits */
  for (int it = 0; it < 64; it++) {
    double mid = 0.5 * (lo + hi);
    cf__at_price(o, d, mid, X, Y);
    if (T < 0 ? *X <= *Y : *X <= T) lo = mid;
    else hi = mid;
    if (hi - lo <= o->price_tol * fabs(lo)) break;
  }
  cf__at_price(o, d, lo, X, Y);
  /* Ties: requests whose next edges have the same slope (identical requests) all switch at
   * the same price, so the price alone leaves them all before it. Take those edges one whole
   * edge at a time while they still fit, so all but one of the tied requests move, and only
   * the last (returned) is split by cf__balance. */
  for (;;) {
    double sl = 0, second;
    int si, r = cf__next_edge(o, d, &sl, &second, &si);
    if (r < 0) return -1;
    /* r keeps the smallest slope while its next edge is below the runner-up's (or equal and
     * r comes first): take its edges in one go (collinear runs: windowed layers past the
     * window, where every chunk costs the same, would otherwise cost a scan per edge) */
    do {
      int32_t k0 = cf__hk(o, r, o->pos[r].j), k1 = cf__hk(o, r, o->pos[r].j + 1);
      double dx = o->L * (cf__f(o, r, k1) - cf__f(o, r, k0));
      double dy = o->L * (cf__g(o, r, k1) - cf__g(o, r, k0));
      if (T < 0 ? *X + dx > *Y + dy : *X + dx > T) return r;
      o->pos[r].j++;
      *X += dx;
      *Y += dy;
      if (o->pos[r].j + 1 >= o->H[r]) break;
      sl = cf__slope(o, r, o->pos[r].j);
    } while (sl < second || (sl == second && si >= 0));
  }
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

typedef struct {
  const double *key; /* NULL: arrival order only */
  const cf_sched_req_t *req;
} cf__order_ctx_t;

static int cf__cmp_order(const void *pa, const void *pb, void *arg) {
  const cf__order_ctx_t *x = arg;
  int a = *(const int *)pa, b = *(const int *)pb;
  if (x->req[a].arrival_s != x->req[b].arrival_s)
    return x->req[a].arrival_s < x->req[b].arrival_s ? -1 : 1;
  if (x->key && x->key[a] != x->key[b]) return x->key[a] < x->key[b] ? -1 : 1;
  return a - b;
}

/* Order requests by arrival, then (spt) by their compute + load time at the current positions.
 * Within an arrival a helped request goes last: its device runs the rest of its work while
 * the helpers start (cf__help's estimate counts that work before it). */
static void cf__make_order(cf__opt_t *o, int spt) {
  for (int r = 0; r < o->n; r++) {
    o->order[r] = r;
    double x, y;
    cf__xy(o, r, o->pos[r], &x, &y);
    int helped = o->use_help && o->hcnt[r] > 0;
    o->key[r] = helped ? INFINITY : spt ? x + y : 0;
  }
  cf__order_ctx_t ctx = {o->key, o->in->reqs};
  qsort_r(o->order, (size_t)o->n, sizeof *o->order, cf__cmp_order, &ctx);
}

/* Request r's per-layer computed chunk counts k_l at its position (non-increasing). */
static void cf__kvec(const cf__opt_t *o, int r, int32_t *kbuf) {
  int L = o->L, l = 0;
  cf__pos_t p = o->pos[r];
  int32_t k0 = cf__hk(o, r, p.j), k1 = p.m ? cf__hk(o, r, p.j + 1) : k0;
  for (int t = 0; t < p.m; t++) kbuf[l++] = k1;
  if (p.adj >= 0) kbuf[l++] = p.adj;
  while (l < L) kbuf[l++] = k0;
}

/* Emit the plan for the current positions, order and (use_help) help. A helped request's
 * help ops follow its own, so on a helper they keep the request's place in the order (a
 * helper's own request arriving later must not hold the help back). */
static int cf__emit(const cf__opt_t *o, cf_sched_plan_t *out, int32_t *kbuf) {
  int rc = cf__plan_reset(out, o->in, o->dev, CF_POLICY_OPTIMAL);
  for (int i = 0; i < o->n && !rc; i++) {
    int r = o->order[i], help = o->use_help && o->hcnt[r] > 0;
    size_t hoff = (size_t)r * o->maxhelp;
    cf__kvec(o, r, kbuf);
    if (help)
      rc = cf__plan_emit_compute_split(out, o->in, r, kbuf, o->hsplit[hoff + o->hcnt[r] - 1]);
    else
      rc = cf__plan_emit_compute(out, o->in, r, kbuf);
    if (!rc) rc = cf__plan_emit_loads(out, o->in, r, kbuf, 0);
    if (!rc && help)
      rc = cf__plan_emit_help(out, o->in, r, kbuf, o->hsplit + hoff, o->hdev + hoff, o->hcnt[r]);
  }
  return rc ? rc : cf__plan_holes(o->in, out); /* holes: computed at every layer */
}

/* Cross-device help (DESIGN.md §1 (b)). A request r whose device sets the makespan gets m
 * helper devices e_1..e_m (the least busy devices that neither help nor are helped yet): at
 * every layer r computes (chunks [0, k)), e_i computes chunks [a_{i-1}, a_i) (a_0 = 0) and
 * sends them to the later helpers (they attend to them) and to r's device, which computes
 * [a_m, k) and loads [k, n). Compute pooled over m + 1 devices moves r's optimum to a larger
 * k (fewer loads). Helpers are added one at a time to whichever device sets the estimated
 * makespan (so several long requests share the idle devices), while it cuts the estimate.
 * Every stream time here counts arrivals (cf__stream_ends, cf__ready, cf__after): the owner,
 * its helpers and its link start r's part only when their earlier requests are done.
 *
 * Estimate for given k: the split points put each helper's compute end (its start plus L
 * steps over its chunks) at a common target, found by bisection so the owner's part ends
 * there too; the result is then timed layer by layer (the wavefront: helper i's layer l waits
 * for helper i-1's layer l and its send; the owner's for all of them). k is bisected where
 * that compute end crosses the link end oy + L g(k). O(m log n) per estimate. */
enum { CF__MAXHELP = 15 };

typedef struct {
  int32_t k, a[CF__MAXHELP];
  double t, tc; /* estimated end; its compute part (owner's) */
  double hend[CF__MAXHELP];
} cf__helpfit_t;

/* When request r's loads end if they start at oy with every layer at k chunks: one LOAD op,
 * so one link latency (cf__g leaves latencies out). */
static inline double cf__link_end(const cf__opt_t *o, int r, int32_t k, double oy) {
  int32_t n = cf_cost_chunks(o->c, o->in->reqs[r].prefix_tokens);
  return k < n ? oy + o->L * cf__g(o, r, k) + o->c->link_latency_s : oy;
}

/* Splits and timing of request r at k with helpers starting at hs[0..m), owner at ox. */
static void cf__help_at(const cf__opt_t *o, int r, int32_t k, double ox, double oy,
                        const double *hs, int m, cf__helpfit_t *f) {
  const cf_sched_cost_t *c = o->c;
  int L = o->L;
  int64_t P = o->in->reqs[r].prefix_tokens;
  double tk = (double)cf_cost_tok(c, P, k);
  double lo = 0, hi = ox + L * cf_cost_step(c, 0, tk);
  for (int i = 0; i < m; i++) lo = fmin(lo, hs[i]);
  int32_t a[CF__MAXHELP];
  for (int it = 0; it < 50 && hi - lo > 1e-9 * hi; it++) { /* smallest target the owner meets */
    double T = 0.5 * (lo + hi);
    int32_t prev = 0;
    for (int i = 0; i < m; i++) { /* a_i: as many chunks as end by T */
      double tp = (double)cf_cost_tok(c, P, prev);
      int32_t x = prev, y = k;
      while (x < y) {
        int32_t mid = x + (y - x + 1) / 2;
        double tm = (double)cf_cost_tok(c, P, mid);
        if (hs[i] + L * cf_cost_step(c, tp, tm - tp) <= T) x = mid;
        else y = mid - 1;
      }
      a[i] = prev = x;
    }
    double tp = (double)cf_cost_tok(c, P, prev);
    if (ox + L * cf_cost_step(c, tp, tk - tp) <= T) {
      hi = T;
      memcpy(f->a, a, (size_t)m * sizeof *a);
    } else {
      lo = T;
    }
  }
  if (hi == ox + L * cf_cost_step(c, 0, tk)) /* never met: all on the owner */
    for (int i = 0; i < m; i++) f->a[i] = 0;
  /* time it layer by layer; S[i]: when helper i's peer stream has sent its cells of the layer
   * to the m - i later participants (it sends them in turn: a send waits for the previous
   * layer's sends, so a peer link slower than the helper's compute falls further behind each
   * layer, and the owner waits for it) */
  double F[CF__MAXHELP + 1], w[CF__MAXHELP + 1], s1[CF__MAXHELP], S[CF__MAXHELP], peer = 0;
  for (int i = 0; i <= m; i++) {
    int32_t c0 = i ? f->a[i - 1] : 0, c1 = i < m ? f->a[i] : k;
    double t0 = (double)cf_cost_tok(c, P, c0), t1 = (double)cf_cost_tok(c, P, c1);
    w[i] = cf_cost_step(c, t0, t1 - t0);
    F[i] = i < m ? hs[i] : ox;
    if (i < m) {
      s1[i] = cf_cost_send(c, t1 - t0, 1) * (m - i);
      S[i] = hs[i];
    }
  }
  for (int l = 0; l < L; l++) {
    double ready = 0; /* cells of the earlier participants at this layer, arrived */
    for (int i = 0; i <= m; i++) {
      if (w[i] > 0) F[i] = fmax(F[i], ready) + w[i];
      if (i < m && w[i] > 0) ready = fmax(ready, S[i] = fmax(S[i], F[i]) + s1[i]);
    }
  }
  for (int i = 0; i < m; i++) peer = fmax(peer, S[i]);
  for (int i = 0; i < m; i++) f->hend[i] = F[i];
  f->k = k;
  f->tc = F[m];
  double t = fmax(F[m], cf__link_end(o, r, k, oy));
  for (int i = 0; i < m; i++) t = fmax(t, F[i]);
  f->t = fmax(t, peer);
}

/* Best k (a hull vertex >= kstar) for request r with helpers starting at hs[0..m). */
static void cf__help_fit(const cf__opt_t *o, int r, double ox, double oy, const double *hs,
                         int m, cf__helpfit_t *best) {
  int32_t n = cf_cost_chunks(o->c, o->in->reqs[r].prefix_tokens);
  int32_t lo = o->kstar[r] > 0 ? o->kstar[r] : 1, hi = n;
  cf__helpfit_t f;
  best->t = INFINITY;
  best->k = -1;
  if (lo > n) return;
  while (lo < hi) { /* smallest k whose compute end reaches its link end */
    int32_t mid = lo + (hi - lo) / 2;
    cf__help_at(o, r, mid, ox, oy, hs, m, &f);
    if (f.tc >= cf__link_end(o, r, mid, oy)) hi = mid;
    else lo = mid + 1;
  }
  for (int32_t k = lo - 1; k <= lo + 1; k++) {
    if (k < (o->kstar[r] > 0 ? o->kstar[r] : 1) || k > n) continue;
    cf__help_at(o, r, k, ox, oy, hs, m, &f);
    if (f.t < best->t) *best = f;
  }
}

/* Link latency of request q's LOAD ops at its position: one per run of layers with the same
 * k < n (cf__plan_emit_loads merges them; cf__xy leaves latencies out). */
static double cf__loads_lat(const cf__opt_t *o, int q) {
  cf__pos_t p = o->pos[q];
  int32_t n = cf_cost_chunks(o->c, o->in->reqs[q].prefix_tokens);
  int32_t k0 = cf__hk(o, q, p.j), k1 = p.m ? cf__hk(o, q, p.j + 1) : k0;
  int32_t ks[3] = {p.m ? k1 : -1, p.adj, o->L - p.m - (p.adj >= 0) > 0 ? k0 : -1}, prev = -1;
  int ops = 0;
  for (int i = 0; i < 3; i++) {
    if (ks[i] < 0) continue;
    if (ks[i] < n && ks[i] != prev) ops++;
    prev = ks[i];
  }
  return ops * o->c->link_latency_s;
}

/* Stream times around request r, with arrivals: a stream (device d's compute when link < 0,
 * else link `link`'s loads) runs its other requests in arrival order (o->order, set by
 * cf__stream_ends), each starting when it has arrived and the stream is free. Within r's
 * arrival r goes last (a helped request does, cf__make_order), and its help runs at r's place
 * on the helper. cf__ready: when r's part can start on the stream (its earlier requests done,
 * r arrived). cf__after: when the stream ends if r's part ends at t (later requests appended).
 * Summing the earlier work instead (as if all had arrived at 0) made help look cheaper than it
 * is: a helper whose own request arrives at 0.11 s and computes 0.19 s is free at 0.30 s, not
 * at 0.19 s, and the owner then waits each layer for the late helper's cells. */
static double cf__stream_of(const cf__opt_t *o, int q, int d, int link) {
  double x, y;
  if (link < 0 ? o->dev[q] != d : cf_cost_link_of(o->c, o->dev[q]) != link) return -1;
  cf__xy(o, q, o->pos[q], &x, &y);
  return link < 0 ? x : y + cf__loads_lat(o, q);
}
static double cf__ready(const cf__opt_t *o, int d, int link, int r) {
  double a = o->in->reqs[r].arrival_s, t = 0;
  for (int i = 0; i < o->n; i++) {
    int q = o->order[i];
    double aq = o->in->reqs[q].arrival_s, w;
    if (aq > a) break;
    if (q == r || (w = cf__stream_of(o, q, d, link)) <= 0) continue;
    t = fmax(t, aq) + w;
  }
  return fmax(t, a);
}
static double cf__after(const cf__opt_t *o, int d, int link, int r, double t) {
  double a = o->in->reqs[r].arrival_s, w;
  for (int i = 0; i < o->n; i++) {
    int q = o->order[i];
    double aq = o->in->reqs[q].arrival_s;
    if (aq <= a || (w = cf__stream_of(o, q, d, link)) <= 0) continue;
    t = fmax(t, aq) + w;
  }
  return t;
}

/* X[d], Yl[k]: when device d's compute and link k's loads end at the current positions, every
 * stream running its requests in arrival order (sets o->order to it), each from its arrival or
 * when the stream is free. Sums that ignore arrivals underestimate a batch that arrives over
 * time, and help judged against them (cf__help) was added where it hurt. */
static void cf__stream_ends(cf__opt_t *o, double *X, double *Yl) {
  cf__make_order(o, 0);
  for (int d = 0; d < o->nd; d++) X[d] = 0;
  for (int k = 0; k < o->nl; k++) Yl[k] = 0;
  for (int i = 0; i < o->n; i++) {
    int q = o->order[i], d = o->dev[q], k = cf_cost_link_of(o->c, d);
    double aq = o->in->reqs[q].arrival_s, x, y;
    cf__xy(o, q, o->pos[q], &x, &y);
    if (x > 0) X[d] = fmax(X[d], aq) + x;
    if (y > 0) Yl[k] = fmax(Yl[k], aq) + y + cf__loads_lat(o, q);
  }
}

/* Greedy (see above). X, Yl: the streams' ends (cf__stream_ends; o->order in arrival order),
 * updated with the help; role: per device 0 free, 1 helps, 2 is helped. Returns whether any
 * help was set. */
static int cf__help(cf__opt_t *o, double *X, double *Yl, int *role) {
  const cf_sched_cost_t *c = o->c;
  if (!cf_cost_has_peer(c)) return 0;
  int any = 0, MH = o->maxhelp;
  for (int d = 0; d < o->nd; d++) role[d] = 0;
  int *hreq = o->hreq; /* request being helped on device d (role 2) */
  for (int it = 0; it < o->nd; it++) {
    int d = -1;
    double Td = -1;
    for (int e = 0; e < o->nd; e++) {
      double t = fmax(X[e], Yl[cf_cost_link_of(c, e)]);
      if (t > Td) { Td = t; d = e; }
    }
    if (d < 0 || role[d] == 1) break; /* a helper sets the makespan */
    /* a later pipeline stage's layer 0 needs hidden states that load only to its device */
    if (cf_cost_stage(c, d) > 0) break;
    int r = role[d] == 2 ? hreq[d] : -1;
    if (r < 0) {
      double big = -1, x, y;
      for (int i = o->doff[d]; i < o->doff[d + 1]; i++) {
        int q = o->dreq[i];
        cf__xy(o, q, o->pos[q], &x, &y);
        /* a request with holes is not helped: a hole's cells above the help would need their
         * hidden input from the helper (cf__plan_holes computes them on the owner) */
        if (o->H[q] > 1 && x + y > big && !cf_sched_req_holes(c, &o->in->reqs[q])) { big = x + y; r = q; }
      }
    }
    int h = -1;
    for (int e = 0; e < o->nd; e++)
      if (e != d && !role[e] && cf_cost_stage(c, e) == cf_cost_stage(c, d) && (h < 0 || X[e] < X[h]))
        h = e;
    if (r < 0 || h < 0 || o->hcnt[r] >= MH) break;
    int k = cf_cost_link_of(c, d);
    double ox = cf__ready(o, d, -1, r), oy = cf__ready(o, 0, k, r);
    /* helpers in order of their start: the earliest free computes the front chunks */
    int m = o->hcnt[r], *hd = o->hdev + (size_t)r * MH;
    double hs[CF__MAXHELP];
    int cand[CF__MAXHELP];
    memcpy(cand, hd, (size_t)m * sizeof *cand);
    cand[m++] = h;
    for (int i = 0; i < m; i++) hs[i] = cf__ready(o, cand[i], -1, r);
    for (int i = 1; i < m; i++) /* by start: insertion sort of (cand, hs) */
      for (int j = i; j > 0 && hs[j] < hs[j - 1]; j--) {
        int t = cand[j]; cand[j] = cand[j - 1]; cand[j - 1] = t;
        double u = hs[j]; hs[j] = hs[j - 1]; hs[j - 1] = u;
      }
    cf__helpfit_t f;
    cf__help_fit(o, r, ox, oy, hs, m, &f);
    if (f.k < 0) break;
    /* the streams' ends with the work that runs after r */
    double xd = cf__after(o, d, -1, r, f.tc), yk = cf__after(o, 0, k, r, cf__link_end(o, r, f.k, oy));
    double hx[CF__MAXHELP], t = fmax(f.t, fmax(xd, yk));
    for (int i = 0; i < m; i++) t = fmax(t, hx[i] = cf__after(o, cand[i], -1, r, f.hend[i]));
    if (t >= Td * (1 - 1e-3)) break;
    o->pos[r].j = f.k - o->kstar[r] + 1;
    o->pos[r].m = 0;
    o->pos[r].adj = -1;
    o->hcnt[r] = m;
    memcpy(hd, cand, (size_t)m * sizeof *cand);
    memcpy(o->hsplit + (size_t)r * MH, f.a, (size_t)m * sizeof *f.a);
    X[d] = xd;
    Yl[k] = yk;
    for (int i = 0; i < m; i++) X[cand[i]] = hx[i];
    role[d] = 2;
    hreq[d] = r;
    role[h] = 1;
    any = 1;
  }
  return any;
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

/* Emit the current positions and order into `tmp`, simulate, and if it beats *best take its
 * score. Returns 1 (better), 0 (not), or a negative error. */
static int cf__try(const cf__opt_t *o, cf_sched_plan_t *tmp, int32_t *kbuf, cf_sim_result_t *sim,
                   const cf__ref_t *ref, cf__score_t *best, int *evals) {
  int rc = cf__emit(o, tmp, kbuf);
  if (!rc) rc = cf__sim_clipped(o->in, tmp, sim);
  if (rc) return rc;
  (*evals)++;
  cf__score_t sc = cf__score_of(sim, ref);
  if (!cf__score_better(sc, *best)) return 0;
  *best = sc;
  return 1;
}

/* Simulator runs the refinement budget buys (cf_sched.h): the budget is refine_budget_s, or
 * by default 0.1% of the analytic plan's estimated makespan `est`, within 1..10 ms; each run
 * is priced at 1 us plus CF_SCHED_SIM_S_PER_CELL per cell of the batch. 0 when fewer than
 * the CF__MIN_RUNS that checking the other policies' plans and the candidates takes: a
 * refinement that cannot even do that is not started. */
enum { CF__MIN_RUNS = 6, CF__MAX_RUNS = 4096 };
/* A tiny batch's exact search (cf_exact.c): CF__EXACT_SHARE of the budget in nodes, at least
 * CF__EXACT_MIN_NODES; the local search before it gets the rest of the budget and hands it a
 * good incumbent to prune with. Measured (test_sched_oracle, 8 cells at most): the search ends
 * after a median of ~40 nodes (~10 us), but the plans beating the local search by over 2% were
 * found after up to 54k nodes and a full search took up to 181k (36 ms); with the 2 ms default
 * budget alone (6000 nodes) 1 instance in 4500 stayed over 1.02x. So tiny batches (toy shapes:
 * a real model's one chunk is >= 16 cells) may plan for up to ~50 ms. */
#define CF__EXACT_SHARE 0.75
#define CF__EXACT_MIN_NODES 250000
static double cf__refine_s(const cf_sched_input_t *in, double est) {
  if (in->refine_budget_s < 0) return 0;
  return in->refine_budget_s > 0 ? in->refine_budget_s
                                 : fmin(CF_SCHED_REFINE_MAX_S,
                                        fmax(CF_SCHED_REFINE_BUDGET_S, CF_SCHED_REFINE_SHARE * est));
}
/* ops: a plan's op count beyond one per cell's worth (the tier plan's with every load one
 * layer, as the other policies' plans have them: cf__tier_plan's *ops_layer; 0 otherwise): a simulator
 * run costs per op as much as per cell (measured: 20 ns/cell when every cell is its own op,
 * every 2nd chunk a hole; 3-5 ns/cell for plans of few large ops), so with scattered holes the
 * runs are counted over cells + ops, or the refinement overran its budget 2-3x. */
static int cf__tiers_apply(const cf_sched_input_t *in);
static double cf__run_s(const cf_sched_input_t *in, double ops) {
  double cells = ops;
  for (int r = 0; r < in->n_reqs; r++)
    cells += (double)cf_cost_chunks(&in->cost, in->reqs[r].prefix_tokens) * in->cost.n_layers;
  return 1e-6 + cells * CF_SCHED_SIM_S_PER_CELL;
}
/* Simulator runs the check of an unrefined plan against the other policies (cf__check_others)
 * may spend: no cap when the analytic plan alone was asked for (refine_budget_s < 0:
 * cacheflow-sim --refine 0, tests) or the budget is no object (refine_evals caps refinement, not
 * this check: --refine 1..8); with the daemon's default budget what it buys (the plan, then the
 * others whose lower bound is below its makespan, likeliest first), 0 or 1 meaning the
 * closed-form check alone (cf__check_closed_forms). 64 x 128k tokens (a run 5-30 ms against a
 * plan's 0.1-2.5 ms) gets none; 8 x 32k tokens with every 2nd chunk a hole (an 8 ms budget)
 * 2 runs, 3 ms against the tier plan's 0.07 ms. Requiring all 6 runs left batches of 16
 * requests (--gen agentic, --gen rag on 4 engines) with optimal above another policy. */
static int cf__check_runs(const cf_sched_input_t *in, double est, double ops) {
  if (in->refine_budget_s < 0) return -1;
  double runs = cf__refine_s(in, est) / cf__run_s(in, ops);
  return runs >= CF_POLICY_COUNT ? -1 : (int)runs;
}
static int cf__refine_runs(const cf_sched_input_t *in, double est, double ops) {
  double budget = cf__refine_s(in, est);
  if (budget <= 0) return 0;
  if (cf__exact_applies(in)) budget *= 1 - CF__EXACT_SHARE; /* the rest: the exact search (4e) */
  double runs = budget / cf__run_s(in, ops);
  if (in->refine_evals > 0 && runs > in->refine_evals) runs = in->refine_evals;
  if (runs > CF__MAX_RUNS) runs = CF__MAX_RUNS;
  /* refinement, once started, simulates every other policy's plan (4a: with the tier and
   * windowed candidates where they apply), the best of them again and the fast path's (4b)
   * whatever its budget: a budget that buys fewer runs than that gets none (counting 6 let
   * 8 x 32k tokens with every 2nd chunk a hole spend 9 runs of a 6-run budget) */
  const cf_sched_cost_t *c = &in->cost;
  int fixed = CF_POLICY_COUNT - 1 + 2 + cf__tiers_apply(in) + (c->window > 0 && c->window_frac > 0);
  return runs < CF__MIN_RUNS || runs < fixed ? 0 : (int)runs;
}

/* Mixed tiers (some chunk reads at another rate than tier 0), no pipeline stages, one link
 * per device (or one device): the tier plan (cf_tiers.c) applies. A batch that names tiers
 * all at one rate is planned exactly as one that names none. */
static int cf__tiers_apply(const cf_sched_input_t *in) {
  const cf_sched_cost_t *c = &in->cost;
  return c->pp_stages <= 1 && !(c->shared_link && c->n_devices > 1) && cf__mixed_rates(in);
}
static int cf__tier_candidate(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  double est;
  return cf__tier_plan(in, dev, out, &est, NULL, NULL);
}

/* optimal's scratch beyond cf__opt_t, shared by its steps. */
typedef struct {
  double *X, *Yl;          /* per device compute end, per link load end */
  int *crit;               /* per device: the request split at the balance point (-1: none) */
  int32_t *kbuf;           /* [L] per-layer chunk counts of one request */
  cf__pos_t *best_pos, *pos0; /* best positions so far; the positions before help */
  int *best_order, *role;
  cf_sched_plan_t tmp, alt; /* scratch plan; the best other policy's plan */
  cf_sim_result_t sim;
} cf__optbuf_t;

static void cf__opt_free(cf__opt_t *o, cf__optbuf_t *b) {
  void *p[] = {o->gsum, o->goff, o->kstar, o->H, o->dreq, o->doff, o->pos, o->order, o->key,
               o->hcnt, o->hdev, o->hsplit, o->hreq, b->X, b->Yl, b->crit, b->kbuf,
               b->best_pos, b->best_order, b->role, b->pos0};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
  cf_sched_plan_free(&b->tmp);
  cf_sched_plan_free(&b->alt);
  cf_sim_result_free(&b->sim);
}

/* Allocate o's per-request and per-device arrays and b. Returns 0 or CF_ENOMEM (free with
 * cf__opt_free either way). */
static int cf__opt_alloc(cf__opt_t *o, cf__optbuf_t *b) {
  size_t nn = o->n ? (size_t)o->n : 1, nd = (size_t)o->nd;
  memset(b, 0, sizeof *b);
  cf_sched_plan_init(&b->tmp);
  cf_sched_plan_init(&b->alt);
  cf_sim_result_init(&b->sim);
  o->kstar = malloc(nn * sizeof *o->kstar);
  o->H = malloc(nn * sizeof *o->H);
  o->pos = malloc(nn * sizeof *o->pos);
  o->order = malloc(nn * sizeof *o->order);
  o->key = malloc(nn * sizeof *o->key);
  o->dreq = malloc(nn * sizeof *o->dreq);
  o->doff = calloc(nd + 1, sizeof *o->doff);
  o->maxhelp = o->nd - 1 < CF__MAXHELP ? o->nd - 1 : CF__MAXHELP;
  size_t nh = nn * (size_t)(o->maxhelp > 0 ? o->maxhelp : 1);
  o->hcnt = calloc(nn, sizeof *o->hcnt);
  o->hdev = malloc(nh * sizeof *o->hdev);
  o->hsplit = malloc(nh * sizeof *o->hsplit);
  o->hreq = malloc(nd * sizeof *o->hreq);
  b->X = calloc(nd, sizeof *b->X);
  b->Yl = calloc((size_t)o->nl, sizeof *b->Yl);
  b->crit = calloc(nd, sizeof *b->crit);
  b->kbuf = malloc((size_t)o->L * sizeof *b->kbuf);
  b->best_pos = malloc(nn * sizeof *b->best_pos);
  b->best_order = malloc(nn * sizeof *b->best_order);
  b->role = calloc(nd, sizeof *b->role);
  b->pos0 = malloc(nn * sizeof *b->pos0);
  if (!o->kstar || !o->H || !o->pos || !o->order || !o->key || !o->dreq || !o->doff ||
      !o->hcnt || !o->hdev || !o->hsplit || !o->hreq || !b->X || !b->Yl || !b->crit ||
      !b->kbuf || !b->best_pos || !b->best_order || !b->role || !b->pos0)
    return cf_seterr(CF_ENOMEM, "optimal: %d requests", o->n);
  return cf__tier_sums(o);
}

/* Steps 1-2b: hulls, the joint split (per device the price where compute meets its link, or
 * with one shared link Newton on T with per-device budgets), the critical requests balanced,
 * then help. Leaves o->pos, b->pos0 (before help), o->use_help; returns the estimate. */
static double cf__split(cf__opt_t *o, cf__optbuf_t *b) {
  const cf_sched_cost_t *c = o->c;
  int n = o->n, nd = o->nd, nl = o->nl;
  const int *dev = o->dev;
  double *X = b->X, *Yl = b->Yl;
  int *crit = b->crit;
  for (int r = 0; r < n; r++) cf__hull(o, r, cf_cost_chunks(c, o->in->reqs[r].prefix_tokens));
  for (int r = 0; r < n; r++) o->doff[dev[r] + 1]++;
  for (int d = 0; d < nd; d++) o->doff[d + 1] += o->doff[d];
  memcpy(crit, o->doff, (size_t)nd * sizeof *crit); /* crit[] as the fill cursor for now */
  for (int r = 0; r < n; r++) o->dreq[crit[dev[r]]++] = r;
  double y_unused; /* exact sums are recomputed below */
  if (!c->shared_link || nd == 1) {
    for (int d = 0; d < nd; d++) crit[d] = cf__device_split(o, d, -1, &X[d], &y_unused);
  } else {
    /* Find T with Y(T) = T, Y(T) = link time when every device computes for T: convex,
     * decreasing, piecewise linear, so Newton from T = 0 climbs monotonically to the root
     * in a few steps (one per breakpoint crossed). */
    double hi = 0;
    o->price_tol = 1e-9; /* nested search: 1e-9 is far below the cost model's accuracy */
    for (int it = 0; it < 100; it++) {
      double Y = 0, dY = 0;
      for (int d = 0; d < nd; d++) {
        double x, y, sl = 0, sl2;
        int i2;
        if (cf__device_split(o, d, hi, &x, &y) >= 0) { /* the rest of T on the next edge */
          cf__next_edge(o, d, &sl, &sl2, &i2);
          y += (hi - x) * sl;
          dY += sl;
        }
        Y += y;
      }
      double h = Y - hi;
      if (h <= 1e-9 * hi) break;
      hi += h / (1 - dY);
    }
    for (int d = 0; d < nd; d++) crit[d] = cf__device_split(o, d, hi, &X[d], &y_unused);
  }
  /* exact X, Y from the whole-vertex positions, then split each critical request */
  for (int d = 0; d < nd; d++) X[d] = 0;
  for (int k = 0; k < nl; k++) Yl[k] = 0;
  for (int r = 0; r < n; r++) {
    double x, y;
    cf__xy(o, r, o->pos[r], &x, &y);
    X[dev[r]] += x;
    Yl[cf_cost_link_of(c, dev[r])] += y;
  }
  for (int d = 0; d < nd; d++) {
    int r = crit[d], k = cf_cost_link_of(c, d);
    if (r < 0) continue;
    double x, y;
    cf__xy(o, r, o->pos[r], &x, &y);
    double a = X[d] - x, bb = Yl[k] - y;
    o->pos[r] = cf__balance(o, r, a, bb);
    cf__xy(o, r, o->pos[r], &x, &y);
    X[d] = a + x;
    Yl[k] = bb + y;
  }
  memcpy(b->pos0, o->pos, (size_t)(n ? n : 1) * sizeof *o->pos);
  cf__stream_ends(o, X, Yl); /* with arrivals: the estimate, and what help must beat */
  o->use_help = cf__help(o, X, Yl, b->role); /* other devices' idle compute, over the peer link */
  double est = 0;
  for (int d = 0; d < nd; d++) est = fmax(est, X[d]);
  for (int k = 0; k < nl; k++) est = fmax(est, Yl[k]);
  return est;
}

/* The windowed candidate (cf_window.c); *skip: no layer is windowed, nothing planned. */
static int cf__window_candidate(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                                int *skip) {
  double est;
  int rc = cf__window_plan(in, dev, out, &est);
  *skip = !rc && est == INFINITY;
  return rc;
}

/* Step 4a: every other policy's plan (and with mixed tiers the tier candidate, with windowed
 * layers the windowed candidate), simulated: they set the bar (*ref) and the best of them by
 * makespan goes to b->alt (*alt_score). */
static int cf__refine_others(cf__opt_t *o, cf__optbuf_t *b, cf__ref_t *ref,
                             cf__score_t *alt_score, int *evals) {
  const cf_sched_input_t *in = o->in;
  int rc;
  for (int pol = 0; pol <= CF_POLICY_COUNT + 1; pol++) { /* COUNT: the tier plan; + 1: windowed */
    if (pol == CF_POLICY_OPTIMAL) continue;
    if (pol == CF_POLICY_COUNT && !cf__tiers_apply(in)) continue;
    int skip = 0;
    if (pol == CF_POLICY_COUNT + 1) rc = cf__window_candidate(in, o->dev, &b->tmp, &skip);
    else
      rc = (pol == CF_POLICY_RECOMPUTE   ? cf__policy_recompute
            : pol == CF_POLICY_LOAD      ? cf__policy_load
            : pol == CF_POLICY_CAKE      ? cf__policy_cake
            : pol == CF_POLICY_LAYERWISE ? cf__policy_layerwise
            : pol == CF_POLICY_CACHEFLOW ? cf__policy_cacheflow
                                         : cf__tier_candidate)(in, o->dev, &b->tmp);
    if (rc) return rc;
    if (skip) continue;
    if ((rc = cf__sim_clipped(in, &b->tmp, &b->sim))) {
      if (pol >= CF_POLICY_COUNT) continue; /* a candidate the simulator refuses is dropped */
      return rc;
    }
    (*evals)++;
    ref->mk = fmin(ref->mk, b->sim.makespan_s);
    ref->mean = fmin(ref->mean, b->sim.mean_ttft_s);
    ref->p99 = fmin(ref->p99, b->sim.p99_ttft_s);
    cf__score_t sc = cf__score_of(&b->sim, NULL);
    if (cf__score_better(sc, *alt_score)) { /* best other so far, by makespan */
      *alt_score = sc;
      cf__swap_plans(&b->alt, &b->tmp);
    }
  }
  if ((rc = cf__sim_clipped(in, &b->alt, &b->sim))) return rc;
  *alt_score = cf__score_of(&b->sim, ref);
  return 0;
}

/* Step 4b: the fast path's plan (in out), then the other candidates: same split in arrival
 * order; cumulative balance (SPT and arrival order); without help when the fast path used
 * it. Leaves the best positions and order in b->best_pos / best_order, their help in
 * o->use_help, and the score in *best. */
static int cf__refine_candidates(cf__opt_t *o, cf__optbuf_t *b, cf_sched_plan_t *out,
                                 const cf__ref_t *ref, cf__score_t *best, int *evals,
                                 int budget) {
  size_t nn = o->n ? (size_t)o->n : 1;
  int rc = cf__sim_clipped(o->in, out, &b->sim);
  if (rc) return rc;
  (*evals)++;
  *best = cf__score_of(&b->sim, ref);
  memcpy(b->best_pos, o->pos, nn * sizeof *o->pos);
  memcpy(b->best_order, o->order, nn * sizeof *o->order);
  int helped = o->use_help, best_help = o->use_help;
  for (int cand = 0; cand < (helped ? 5 : 3) && *evals < budget; cand++) {
    /* 0: same split, arrival order; 1, 2: cumulative balance; 3, 4: without help (when the
     * fast path used it): the split before help, SPT and arrival order */
    memcpy(o->pos, cand < 3 ? b->best_pos : b->pos0, nn * sizeof *o->pos);
    o->use_help = cand < 3 ? helped : 0;
    cf__make_order(o, cand == 1 || cand == 3);
    if (cand == 1 || cand == 2) cf__cumulative(o, b->X, b->Yl);
    int better = cf__try(o, &b->tmp, b->kbuf, &b->sim, ref, best, evals);
    if (better < 0) return better;
    if (better) {
      memcpy(b->best_pos, o->pos, nn * sizeof *o->pos);
      memcpy(b->best_order, o->order, nn * sizeof *o->order);
      best_help = o->use_help;
    }
  }
  o->use_help = best_help;
  return 0;
}

/* Step 4c: hill climbing on each request's position along its hull path (+-1 and +-L/4
 * layers), from b->best_pos / best_order. */
static int cf__hill_climb(cf__opt_t *o, cf__optbuf_t *b, const cf__ref_t *ref,
                          cf__score_t *best, int *evals, int budget) {
  int n = o->n, L = o->L;
  memcpy(o->pos, b->best_pos, (size_t)(n ? n : 1) * sizeof *o->pos);
  memcpy(o->order, b->best_order, (size_t)(n ? n : 1) * sizeof *o->order);
  const int steps[4] = {1, -1, L / 4 > 1 ? L / 4 : 2, -(L / 4 > 1 ? L / 4 : 2)};
  int improved = 1;
  while (improved && *evals < budget) {
    improved = 0;
    for (int i = 0; i < n && *evals < budget; i++) {
      int r = o->order[n - 1 - i]; /* later requests first: they set the makespan */
      for (int s = 0; s < 4 && *evals < budget; s++) {
        cf__pos_t p = b->best_pos[r];
        int u = p.j * L + p.m + (p.adj >= 0 ? 1 : 0) + steps[s];
        int umax = (o->H[r] - 1) * L;
        if (u < 0 || u > umax || (u == p.j * L + p.m && p.adj < 0)) continue;
        o->pos[r].j = u / L;
        o->pos[r].m = u % L;
        o->pos[r].adj = -1;
        if (o->pos[r].j == o->H[r] - 1) o->pos[r].m = 0;
        int better = cf__try(o, &b->tmp, b->kbuf, &b->sim, ref, best, evals);
        if (better < 0) return better;
        if (better) {
          b->best_pos[r] = o->pos[r];
          improved = 1;
          break;
        }
        o->pos[r] = b->best_pos[r];
      }
    }
  }
  memcpy(o->pos, b->best_pos, (size_t)(n ? n : 1) * sizeof *o->pos);
  return 0;
}

int cf__policy_optimal(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  const cf_sched_cost_t *c = &in->cost;
  cf__opt_t o = {in, c, dev, in->n_reqs, c->n_layers, c->n_devices, cf_cost_n_links(c)};
  o.q = c->kv_bytes_per_token / cf_cost_tier_Bps(c, 0);
  o.price_tol = 1e-12;
  int budget, evals = 0, rc;
  double te = 0, te_ops = 0; /* the tier plan's estimate and (with holes) op count, when it applies */
  if (cf__tiers_apply(in) && !cf_cost_has_peer(c)) {
    /* 1b: mixed tiers: the tier plan (cf_tiers.c; the front-chunks shape below is a special
     * case of its choice), without the hull's cost when it is not refined */
    double busy, ops_layer;
    if ((rc = cf__tier_plan(in, dev, out, &te, &busy, &ops_layer))) return rc;
    out->est_makespan_s = te;
    te_ops = cf__any_holes(in) ? ops_layer : 0;
    if (!(budget = cf__refine_runs(in, te, te_ops)) || in->n_reqs == 0) {
      rc = cf__check_closed_forms(in, dev, out, busy);
      return rc ? rc : cf__check_others(in, dev, out, cf__check_runs(in, te, te_ops));
    }
  }
  cf__optbuf_t b;
  if ((rc = cf__opt_alloc(&o, &b))) goto out;
  /* 1-3: the analytic plan, shortest first within an arrival: the fast path */
  double est = cf__split(&o, &b);
  cf__make_order(&o, 1);
  if ((rc = cf__emit(&o, out, b.kbuf))) goto out;
  out->est_makespan_s = est;
  /* the budget the tier plan's estimate gave (the hull knows no holes: its estimate can be far
   * below, and a budget of none would return its plan instead of refining both) */
  budget = cf__refine_runs(in, fmax(est, te), te_ops);
  if (budget == 0 || o.n == 0) {
    rc = cf__check_closed_forms(in, dev, out, -1);
    if (!rc) rc = cf__check_others(in, dev, out, cf__check_runs(in, fmax(est, te), te_ops));
    goto out;
  } /* with mixed tiers the refinement simulates the
                                            tier plan, with the other policies' */

  /* 4: refinement with the simulator, within the budget */
  cf__ref_t ref = {INFINITY, INFINITY, INFINITY};
  cf__score_t alt_score = {INFINITY, INFINITY, INFINITY}, best;
  if ((rc = cf__refine_others(&o, &b, &ref, &alt_score, &evals))) goto out;
  if ((rc = cf__refine_candidates(&o, &b, out, &ref, &best, &evals, budget))) goto out;
  if ((rc = cf__hill_climb(&o, &b, &ref, &best, &evals, budget))) goto out;
  if ((rc = cf__emit(&o, out, b.kbuf))) goto out;
  out->est_makespan_s = best.mk;
  if (cf__score_better(alt_score, best)) { /* another policy's plan is better: start there */
    b.alt.policy = CF_POLICY_OPTIMAL;
    b.alt.est_makespan_s = alt_score.mk;
    cf__swap_plans(out, &b.alt);
    best = alt_score;
  }
  /* 4d: general staircases, grouping and order, from the best plan so far */
  if ((rc = cf__refine_general(in, dev, &ref, out, &best, &evals, budget))) goto out;
  out->sim_evals = evals;
  /* 4e: tiny batches: the exact search, most of the time budget in search nodes */
  if (cf__exact_applies(in)) {
    long nodes = 0, cap = (long)(CF__EXACT_SHARE * cf__refine_s(in, est) / CF_SCHED_NODE_S);
    if (cap < CF__EXACT_MIN_NODES) cap = CF__EXACT_MIN_NODES;
    if ((rc = cf__exact_plan(in, dev, &ref, out, &best, cap, &nodes))) goto out;
  }
out:
  cf__opt_free(&o, &b);
  return rc;
}
