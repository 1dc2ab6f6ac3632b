/* cf_bound — the dependency-free fractional lower bound on the restore makespan.
 *
 * Relaxation. Drop every dependency. A plan restores request r (N tokens, L layers) by, at
 * each layer l, computing some set S_l of its tokens and loading the rest. Whatever ops it
 * uses, layer l costs the compute stream at least
 *     phi(t) = [t > 0] * (gamma + alpha t + beta t^2 / 2),   t = |S_l|,
 * because a step over n tokens at position p costs gamma + alpha n + beta * integral_p^{p+n} x dx,
 * and the integral over any token set of size t is at least integral_0^t x dx = t^2/2 (the
 * front tokens are the cheapest: rearrangement), and at least one step is paid if t > 0.
 * The link pays psi(t) = (N - t) * b / bw (latency dropped). With several devices and links
 * we pool them (a request may be split across devices: still a relaxation) and charge
 * x = phi / n_devices, y = psi / n_links. Finally allow mixing, per request and layer, between
 * choices (convexify). The bound is
 *     T = min over the convex set Z of max(X, Y),  X = sum x, Y = sum y.
 *
 * Closed form. Z is the Minkowski sum over requests and layers of the convex hulls of the
 * points (x(t), y(t)); it is convex and compact and max(X, Y) = max over lam in [0, 1] of
 * lam X + (1 - lam) Y is bilinear, so by the minimax theorem
 *     T = max over lam of D(lam),   D(lam) = sum_r L * min_t [lam x_r(t) + (1 - lam) y_r(t)].
 * The inner min is over one variable: t = 0, or the stationary point of the convex quadratic
 *     t* = ((1 - lam) q n_d / lam - alpha) / beta  clamped to (0, N],  q = b / (bw n_l).
 * D is a minimum of functions linear in lam, hence concave: golden-section search finds the
 * max, and ANY lam gives a valid bound (weak duality), so search error only loosens it.
 * Uniform costs (beta = gamma = 0), one request: D(lam) = L N min(lam alpha, (1 - lam) q),
 * maximised at lam alpha = (1 - lam) q, giving T = Tc Tio / (Tc + Tio) with Tc = L N alpha,
 * Tio = L N q — DESIGN.md's formula. (Equivalently: load cells in decreasing order of
 * compute/load ratio — the back chunks first — until compute and load time meet.)
 *
 * Tiers. When a request's chunks load at different rates (cf_cost.h), the link time of the
 * loaded tokens is the sum of their per-token times q_i; for t computed tokens it is at least
 * Q - (the t largest q_i), whatever t tokens are computed, and phi(t) does not depend on which
 * ones. So the per-layer choice is still one variable t with a convex cost, piecewise over the
 * tiers (slowest first); the same duality gives the bound (cf__inner).
 *
 * Arrivals. Requests arriving at or after time a must all be restored inside [a, T], so
 * T >= a + T(those requests) (checked at up to 64 thresholds a); and T >= a_r + T_single(r)
 * on its own link and its own device, or, when devices may help each other over a peer link
 * (cf_cost_has_peer), with the compute of every device pooled (sends are free here).
 */
#include "sched/cf_bound.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"

/* Tokens of a request per tier (tiers of different read rates, see cf_cost.h). */
typedef struct {
  double n[CF_COST_MAX_TIERS];
} cf__tiers_t;

/* Per tier the link seconds per token per layer over nl pooled links, and the tiers ordered
 * slowest first (the tokens a plan should compute first to save the most link time). */
typedef struct {
  double q[CF_COST_MAX_TIERS];
  int ord[CF_COST_MAX_TIERS];
} cf__rates_t;

static void cf__tier_tokens(const cf_sched_cost_t *c, const cf_sched_req_t *q, cf__tiers_t *out) {
  memset(out, 0, sizeof *out);
  int64_t P = q->prefix_tokens;
  if (!q->chunk_tier) { out->n[0] = (double)P; return; }
  for (int32_t ch = 0, nc = cf_cost_chunks(c, P); ch < nc; ch++)
    out->n[q->chunk_tier[ch]] += (double)(cf_cost_tok(c, P, ch + 1) - cf_cost_tok(c, P, ch));
}

static void cf__rates(const cf_sched_cost_t *c, int nl, cf__rates_t *r) {
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
    r->q[t] = c->kv_bytes_per_token / (cf_cost_tier_Bps(c, t) * nl);
    int i = t;
    for (; i > 0 && r->q[r->ord[i - 1]] < r->q[t]; i--) r->ord[i] = r->ord[i - 1];
    r->ord[i] = t;
  }
}

/* min over t in [0, N] of lam * phi(t) / nd + (1 - lam) * (Q - top(t)): Q the link time of
 * loading all N tokens, top(t) the most link time computing t of them saves (the slowest
 * tiers' tokens first: concave, piecewise linear). On each tier's segment the function is a
 * convex quadratic, so its minimum there is the clamped stationary point or an end; t = 0
 * (no step at all) is checked apart. With one tier this is the single-rate form above. */
static double cf__inner(const cf_sched_cost_t *c, const cf__tiers_t *tk, const cf__rates_t *rt,
                        double lam, double nd) {
  double Q = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) Q += tk->n[t] * rt->q[t];
  double best = (1 - lam) * Q; /* t = 0: load everything */
  if (lam <= 0) return 0.0;    /* t = N: compute everything for free */
  double T0 = 0, saved = 0;    /* the segment's first token, the link time saved before it */
  for (int i = 0; i < CF_COST_MAX_TIERS; i++) {
    int tier = rt->ord[i];
    double n = tk->n[tier], q = rt->q[tier];
    if (n <= 0) continue;
    double cand[3] = {T0, T0 + n, T0 + n};
    if (c->beta_s > 0)
      cand[2] = fmin(fmax(((1 - lam) * q * nd / lam - c->alpha_s) / c->beta_s, T0), T0 + n);
    for (int k = 0; k < 3; k++) {
      double t = cand[k];
      if (t <= 0) continue;
      double v = lam / nd * (c->gamma_s + c->alpha_s * t + 0.5 * c->beta_s * t * t) +
                 (1 - lam) * (Q - saved - q * (t - T0));
      if (v < best) best = v;
    }
    saved += q * n;
    T0 += n;
  }
  return best;
}

/* D(lam) of the requests idx[0..m) (their tier tokens tk[idx[i]]). */
static double cf__dual(const cf_sched_cost_t *c, const cf__tiers_t *tk, const int *idx, int m,
                       const cf__rates_t *rt, double lam, int nd) {
  double s = 0;
  for (int i = 0; i < m; i++) s += c->n_layers * cf__inner(c, &tk[idx[i]], rt, lam, nd);
  return s;
}

/* Pooled bound of the requests idx[0..m) whose tier tokens are tk[]. */
static double cf__pooled(const cf_sched_cost_t *c, const cf__tiers_t *tk, const int *idx, int m,
                         int nd, int nl) {
  cf__rates_t rt;
  cf__rates(c, nl, &rt);
  double lo = 0, hi = 1;
  const double g = 0.6180339887498949;
  double best = 0;
  /* Golden section on the concave D(lam); keep the best value seen (each is a valid bound). */
  double a = hi - g * (hi - lo), b = lo + g * (hi - lo);
  double fa = cf__dual(c, tk, idx, m, &rt, a, nd), fb = cf__dual(c, tk, idx, m, &rt, b, nd);
  for (int it = 0; it < 90; it++) {
    if (fa < fb) {
      lo = a; a = b; fa = fb; b = lo + g * (hi - lo);
      fb = cf__dual(c, tk, idx, m, &rt, b, nd);
    } else {
      hi = b; b = a; fb = fa; a = hi - g * (hi - lo);
      fa = cf__dual(c, tk, idx, m, &rt, a, nd);
    }
    if (fa > best) best = fa;
    if (fb > best) best = fb;
    if (hi - lo < 1e-13) break;
  }
  return best;
}

/* Plans can meet the bound exactly (e.g. recompute over a very slow link), and the simulator
 * sums the same costs in another order: shave 1e-9 so rounding never puts a plan below it. */
#define CF__BOUND_SLACK (1 - 1e-9)

double cf_bound_request(const cf_sched_cost_t *c, const cf_sched_req_t *q) {
  if (q->prefix_tokens <= 0) return 0.0;
  cf__tiers_t tk;
  cf__tier_tokens(c, q, &tk);
  int idx = 0;
  return cf__pooled(c, &tk, &idx, 1, 1, 1) * CF__BOUND_SLACK;
}

double cf_bound_single(const cf_sched_cost_t *c, int64_t P) {
  cf_sched_req_t q = {.prefix_tokens = P};
  return cf_bound_request(c, &q);
}

double cf_bound(const cf_sched_input_t *in) {
  int n = in->n_reqs;
  if (n <= 0) return 0.0;
  int *order = malloc((size_t)n * sizeof *order);
  cf__tiers_t *tk = malloc((size_t)n * sizeof *tk);
  double T = 0;
  if (!tk) { /* each request alone (still valid): cf_bound_request needs no scratch */
    for (int r = 0; r < n; r++) T = fmax(T, in->reqs[r].arrival_s + cf_bound_request(&in->cost, &in->reqs[r]));
    free(order);
    return T;
  }
  for (int r = 0; r < n; r++) cf__tier_tokens(&in->cost, &in->reqs[r], &tk[r]);
  int nd1 = cf_cost_has_peer(&in->cost) ? in->cost.n_devices : 1; /* compute one request may use */
  for (int r = 0; r < n; r++) {
    if (in->reqs[r].prefix_tokens <= 0) continue;
    double t = in->reqs[r].arrival_s +
               cf__pooled(&in->cost, tk, &r, 1, nd1, 1) * CF__BOUND_SLACK;
    if (t > T) T = t;
  }
  if (!order) { free(tk); return T; } /* still a valid (weaker) bound */
  cf__arrival_order(in, order);
  int nd = in->cost.n_devices, nl = cf_cost_n_links(&in->cost);
  /* Every threshold is a valid constraint; taking at most CF__THRESHOLDS of them, spread
   * evenly over the arrival order, keeps this O(n) for huge batches (all when n is small). */
  enum { CF__THRESHOLDS = 64 };
  int step = n <= CF__THRESHOLDS ? 1 : n / CF__THRESHOLDS;
  for (int i = 0; i < n; i += step) {
    while (i > 0 && i < n && in->reqs[order[i]].arrival_s == in->reqs[order[i - 1]].arrival_s) i++;
    if (i >= n) break;
    double t = in->reqs[order[i]].arrival_s +
               cf__pooled(&in->cost, tk, order + i, n - i, nd, nl);
    if (t > T) T = t;
  }
  free(order);
  free(tk);
  return T * CF__BOUND_SLACK;
}
