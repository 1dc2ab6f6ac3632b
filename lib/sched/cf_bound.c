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
 * Arrivals. Requests arriving at or after time a must all be restored inside [a, T], so
 * T >= a + T(those requests) (checked at up to 64 thresholds a); and T >= a_r + T_single(r)
 * on its own link and its own device, or, when devices may help each other over a peer link
 * (cf_cost_has_peer), with the compute of every device pooled (sends are free here).
 */
#include "sched/cf_bound.h"

#include <math.h>
#include <stdlib.h>

#include "sched/cf_sched_int.h"

/* min over t in [0, N] of lam * phi(t) / nd + (1 - lam) * (N - t) * q. */
static double cf__inner(const cf_sched_cost_t *c, double N, double lam, double nd, double q) {
  double best = (1 - lam) * N * q; /* t = 0: load everything */
  if (lam <= 0) return 0.0;        /* t = N: compute everything for free */
  double t;
  if (c->beta_s > 0)
    t = ((1 - lam) * q * nd / lam - c->alpha_s) / c->beta_s;
  else
    t = lam * c->alpha_s / nd < (1 - lam) * q ? N : 0;
  if (t > N) t = N;
  if (t > 0) {
    double v = lam / nd * (c->gamma_s + c->alpha_s * t + 0.5 * c->beta_s * t * t) +
               (1 - lam) * (N - t) * q;
    if (v < best) best = v;
  }
  return best;
}

/* Pooled bound of the requests reqs[idx[0..m)]. */
static double cf__pooled(const cf_sched_cost_t *c, const cf_sched_req_t *reqs, const int *idx,
                         int m, int nd, int nl) {
  double q = c->kv_bytes_per_token / (c->link_Bps * nl);
  double lo = 0, hi = 1;
  const double g = 0.6180339887498949;
  double best = 0;
  /* Golden section on the concave D(lam); keep the best value seen (each is a valid bound). */
  double a = hi - g * (hi - lo), b = lo + g * (hi - lo), fa = 0, fb = 0;
  for (int pass = 0; pass < 2; pass++) {
    double lam = pass ? b : a, s = 0;
    for (int i = 0; i < m; i++)
      s += c->n_layers * cf__inner(c, (double)reqs[idx[i]].prefix_tokens, lam, nd, q);
    if (pass) fb = s; else fa = s;
  }
  for (int it = 0; it < 90; it++) {
    if (fa < fb) {
      lo = a; a = b; fa = fb; b = lo + g * (hi - lo);
      double s = 0;
      for (int i = 0; i < m; i++)
        s += c->n_layers * cf__inner(c, (double)reqs[idx[i]].prefix_tokens, b, nd, q);
      fb = s;
    } else {
      hi = b; b = a; fb = fa; a = hi - g * (hi - lo);
      double s = 0;
      for (int i = 0; i < m; i++)
        s += c->n_layers * cf__inner(c, (double)reqs[idx[i]].prefix_tokens, a, nd, q);
      fa = s;
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

double cf_bound_single(const cf_sched_cost_t *c, int64_t P) {
  if (P <= 0) return 0.0;
  cf_sched_req_t q = {0, P, 0, 0};
  int idx = 0;
  return cf__pooled(c, &q, &idx, 1, 1, 1) * CF__BOUND_SLACK;
}

double cf_bound(const cf_sched_input_t *in) {
  int n = in->n_reqs;
  if (n <= 0) return 0.0;
  int *order = malloc((size_t)n * sizeof *order);
  double T = 0;
  int nd1 = cf_cost_has_peer(&in->cost) ? in->cost.n_devices : 1; /* compute one request may use */
  for (int r = 0; r < n; r++) {
    if (in->reqs[r].prefix_tokens <= 0) continue;
    double t = in->reqs[r].arrival_s +
               cf__pooled(&in->cost, in->reqs, &r, 1, nd1, 1) * CF__BOUND_SLACK;
    if (t > T) T = t;
  }
  if (!order) return T; /* still a valid (weaker) bound */
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
               cf__pooled(&in->cost, in->reqs, order + i, n - i, nd, nl);
    if (t > T) T = t;
  }
  free(order);
  return T * CF__BOUND_SLACK;
}
