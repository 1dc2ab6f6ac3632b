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
 * Tiers. When a request's chunks load at different rates (cf_cost.h), the choice per layer is
 * a token set, not a count: computing token i costs alpha + beta i (its attention over the
 * prefix: a step over [p, p + n) costs gamma + beta n (p + n/2), exactly gamma + the sum of
 * alpha + beta i over its tokens, continuous), loading it q_i, its tier's link time; past the one
 * gamma the choice is separable per token, so the inner minimum has a closed form per run of
 * one tier (cf__inner); with one tier it is the front-t-tokens form above. The points are still
 * convexified per (request, layer), and the same duality gives the bound.
 *
 * Holes (cf_sched.h: chunks no tier holds) are a run whose tokens must be in S: their compute
 * is charged whole and "load everything" is no longer a choice for their request.
 *
 * Sliding windows. A windowed layer (cf_cost_layer_windowed) must restore at least the
 * tokens of the final window, (P - W, P): its relaxation counts only those (cf_sched_window_skip
 * skips whole chunks outside every window the plan needs, never fewer than these). A hole is
 * computed at every layer (h = L), so it is never a skipped windowed cell: its compute is
 * charged whole at windowed layers too, wherever it lies.
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

/* A run of a request's prefix, tokens [a, b), lying in one tier. */
typedef struct {
  double a, b;
  int tier;
} cf__run_t;

/* A request's runs (one when it names no tiers). */
typedef struct {
  cf__run_t *run;
  int32_t n;
} cf__runs_t;

/* Chunks of consecutive equal tiers of request q merged into runs, into buf (room for one run
 * per chunk, at least 1). Returns the number of runs. */
static int32_t cf__runs(const cf_sched_cost_t *c, const cf_sched_req_t *q, cf__run_t *buf) {
  int64_t P = q->prefix_tokens;
  int32_t n = 0;
  if (!q->chunk_tier) {
    buf[0] = (cf__run_t){0, (double)P, 0};
    return 1;
  }
  for (int32_t ch = 0, nc = cf_cost_chunks(c, P); ch < nc; ch++) {
    double b = (double)cf_cost_tok(c, P, ch + 1);
    if (n && buf[n - 1].tier == q->chunk_tier[ch]) buf[n - 1].b = b;
    else buf[n++] = (cf__run_t){(double)cf_cost_tok(c, P, ch), b, q->chunk_tier[ch]};
  }
  return n;
}

/* min over token sets S of lam * phi(S) / nd + (1 - lam) * (link time of the tokens not in S),
 * phi(S) = gamma * (maximal intervals of S) + sum over i in S of (alpha + beta i) (continuous
 * positions: a step over [p, p + n) costs exactly gamma + the integral of alpha + beta x over
 * it, and a step covers consecutive chunks, so each maximal interval of S is at least one
 * step). Only tokens at or past `lo` are needed (a windowed layer); holes are in S wherever
 * they lie. Past gamma the cost is separable: within a run of one tier, token x is worth
 * computing iff f(x) = lam (alpha + beta x) / nd - (1 - lam) q < 0, and f rises with x, so
 * the separable choice is a prefix [a, x*) of the run. With gamma per interval, a run's part
 * of S is the empty set, that prefix, or the whole run (the whole run joins the intervals on
 * both sides; any other shape costs more: a suffix [y, b) costs the integral of f over it,
 * concave in y, so y = a or y = b; a middle piece moved left is cheaper and no more steps).
 * A dynamic program over the runs with the state "the token before is in S" takes the
 * cheapest. With one tier and no holes it is min(load everything, gamma + the front t
 * tokens) as above. Holes (cf_sched.h) cannot load: their compute is charged whole, and
 * scattered holes pay gamma once per interval, as every plan does. */
static double cf__inner(const cf_sched_cost_t *c, const cf__runs_t *rr, const double *q, double lam,
                        double nd, double lo) {
  if (lam <= 0) return 0.0; /* compute everything for free */
  double w = lam / nd, g = w * c->gamma_s;
  double b0 = 0, b1 = INFINITY; /* cheapest so far with the last token not in S / in S */
  for (int32_t i = 0; i < rr->n; i++) {
    double a = rr->run[i].a, b = rr->run[i].b, x;
    if (rr->run[i].tier == CF_SCHED_TIER_NONE) { /* computed whole, at every layer: not clipped to lo */
      b1 = fmin(b0 + g, b1) + w * (c->alpha_s * (b - a) + c->beta_s * cf_cost_ctx(c, a, b - a));
      b0 = INFINITY;
      continue;
    }
    if (a < lo) { /* tokens before lo are not needed: the next interval starts afresh */
      b0 = fmin(b0, b1);
      b1 = INFINITY;
      if (b <= lo) continue;
      a = lo;
    }
    double qq = q[rr->run[i].tier];
    if (c->beta_s > 0) x = cf_cost_ctx_inv(c, ((1 - lam) * qq * nd / lam - c->alpha_s) / c->beta_s);
    else x = w * c->alpha_s < (1 - lam) * qq ? b : a;
    x = x < a ? a : x > b ? b : x;
    double none = (1 - lam) * (b - a) * qq;
    double whole = w * (c->alpha_s * (b - a) + c->beta_s * cf_cost_ctx(c, a, b - a));
    double pre = w * (c->alpha_s * (x - a) + c->beta_s * cf_cost_ctx(c, a, x - a)) + (1 - lam) * (b - x) * qq;
    double start = fmin(b0 + g, b1); /* S continues here: gamma unless the token before is in S */
    b0 = fmin(fmin(b0, b1) + none, start + pre);
    b1 = start + whole;
  }
  return fmin(b0, b1);
}

/* A windowed layer (window W) whose final window starts at lo = P - W + 1 > 0. The cells a
 * plan restores there (loaded or computed) form intervals; a computed token needs the W - 1
 * keys before it restored, so an interval [u, v) with u > 0 has its first W - 1 tokens
 * (all, when shorter) loaded: the first computed one would need key u - 1. The last interval
 * holds the final window. So either it starts at 0 (every token restored: `full`, the layer
 * as a full-attention one) or the link carries at least W - 1 tokens of some tier at this
 * layer, and, as before, the final window is restored (`fin`: cf__inner clipped to lo). The
 * second case costs at least the larger of `fin` and the holes' compute plus those W - 1
 * loads (each is a lower bound of the same set's cost; holes never load). Without tiers and
 * holes it is the load of the final window: what the plans do on a slow link, where the
 * dependency-free form let the window be computed without its own window's keys. */
static double cf__inner_win(const cf_sched_cost_t *c, const cf__runs_t *rr, const double *q, double lam,
                            double nd, double lo, double full) {
  double qmin = INFINITY, holes = 0, w = lam / nd;
  int any_hole = 0;
  for (int32_t i = 0; i < rr->n; i++) {
    double a = rr->run[i].a, b = rr->run[i].b;
    if (rr->run[i].tier != CF_SCHED_TIER_NONE) qmin = fmin(qmin, q[rr->run[i].tier]);
    else {
      any_hole = 1;
      holes += w * (c->alpha_s * (b - a) + c->beta_s * cf_cost_ctx(c, a, b - a));
    }
  }
  if (qmin == INFINITY) return full; /* nothing can load: every token is computed */
  double fin = cf__inner(c, rr, q, lam, nd, lo);
  double forced = holes + (any_hole ? w * c->gamma_s : 0) + (1 - lam) * (c->window - 1) * qmin;
  return fmin(full, fmax(fin, forced));
}

/* D(lam) of the requests idx[0..m) (their runs rr[idx[i]]). */
static double cf__dual(const cf_sched_cost_t *c, const cf__runs_t *rr, const int *idx, int m,
                       const double *q, double lam, int nd) {
  /* windowed layers need only the final window (P - W, P) of each prefix: at least those
   * cells are restored (cf_sched_window_skip may keep more), so counting only them stays a
   * lower bound */
  int Lw = 0;
  for (int l = 0; l < c->n_layers; l++) Lw += cf_cost_layer_windowed(c, l);
  double s = 0;
  for (int i = 0; i < m; i++) {
    const cf__runs_t *r = &rr[idx[i]];
    double P = r->n ? r->run[r->n - 1].b : 0;
    double full = cf__inner(c, r, q, lam, nd, 0), lo = P - c->window + 1;
    s += (c->n_layers - Lw) * full;
    if (Lw) s += Lw * (lo > 0 ? cf__inner_win(c, r, q, lam, nd, lo, full) : full);
  }
  return s;
}

/* Pooled bound of the requests idx[0..m) whose runs are rr[]. */
static double cf__pooled(const cf_sched_cost_t *c, const cf__runs_t *rr, const int *idx, int m,
                         int nd, int nl) {
  double q[CF_COST_MAX_TIERS]; /* link seconds per token per layer of each tier, nl links pooled */
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) q[t] = c->kv_bytes_per_token / (cf_cost_tier_Bps(c, t) * nl);
  double lo = 0, hi = 1;
  const double g = 0.6180339887498949;
  double best = 0;
  /* Golden section on the concave D(lam); keep the best value seen (each is a valid bound). */
  double a = hi - g * (hi - lo), b = lo + g * (hi - lo);
  double fa = cf__dual(c, rr, idx, m, q, a, nd), fb = cf__dual(c, rr, idx, m, q, b, nd);
  for (int it = 0; it < 90; it++) {
    if (fa < fb) {
      lo = a; a = b; fa = fb; b = lo + g * (hi - lo);
      fb = cf__dual(c, rr, idx, m, q, b, nd);
    } else {
      hi = b; b = a; fb = fa; a = hi - g * (hi - lo);
      fa = cf__dual(c, rr, idx, m, q, a, nd);
    }
    if (fa > best) best = fa;
    if (fb > best) best = fb;
    if (hi - lo < 1e-13) break;
  }
  return best;
}

/* Runs of every request of `reqs` (one malloc: *buf, caller frees); NULL when out of memory. */
static cf__runs_t *cf__all_runs(const cf_sched_cost_t *c, const cf_sched_req_t *reqs, int n, cf__run_t **buf) {
  size_t total = 0;
  for (int r = 0; r < n; r++) total += reqs[r].chunk_tier ? (size_t)cf_cost_chunks(c, reqs[r].prefix_tokens) + 1 : 1;
  cf__runs_t *rr = malloc((size_t)(n ? n : 1) * sizeof *rr);
  *buf = malloc(total * sizeof **buf);
  if (!rr || !*buf) { free(rr); free(*buf); *buf = NULL; return NULL; }
  size_t at = 0;
  for (int r = 0; r < n; r++) {
    rr[r].run = *buf + at;
    rr[r].n = cf__runs(c, &reqs[r], rr[r].run);
    at += reqs[r].chunk_tier ? (size_t)cf_cost_chunks(c, reqs[r].prefix_tokens) + 1 : 1;
  }
  return rr;
}

/* The bound of request q with every token at the fastest tier's rate: still valid (loads only
 * got cheaper), for when the runs cannot be had. */
static double cf__fastest(const cf_sched_cost_t *c, const cf_sched_req_t *q, int nd) {
  double fast = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) fast = fmax(fast, cf_cost_tier_Bps(c, t));
  cf_sched_cost_t f = *c;
  f.link_Bps = fast;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) f.tier_Bps[t] = 0;
  cf__run_t run = {0, (double)q->prefix_tokens, 0};
  cf__runs_t rr = {&run, 1};
  int idx = 0;
  return cf__pooled(&f, &rr, &idx, 1, nd, 1);
}

/* The dependency a hole adds (cf_sched.h). Request q's first hole, chunk h (tokens
 * [s, e)), is computed at every layer, layer after layer (layer l needs its own layer l - 1
 * computed; a step covering more chunks costs at least the hole's share: step(s, e - s)), and
 * its layer-0 step needs every earlier token's layer-0 KV present (only the W - 1 before it
 * when layer 0 is windowed): loaded (the link latency and its bytes, at best at the fastest
 * tier's rate) or computed (at best as the front tokens, which attend to the least, gamma
 * left out: a step may cover them and the hole). Any split of those tokens waits for the
 * larger of the two, so the hole's last layer ends no earlier than
 *     min over t of max(compute(t), load(need - t)) + L * step(s, e - s)
 * after the request's arrival (compute(t) rises and load falls with t: bisection). And every
 * chunk's top cell is present at the end: loaded (one op: the latency and its bytes at its
 * tier's rate) or computed with every cell below it (L steps, one after the other, each at
 * least the chunk's own step), so the restore takes at least the smaller of the two for
 * every chunk (where gamma and the latency dominate, small prefixes, the dependency-free form
 * is far below it). A windowed layer may skip a chunk outside its final window
 * (cf_sched_window_skip): such a chunk's chain ends at the highest full-attention layer.
 * Every plan cf_sim accepts obeys both, helpers included (they receive computed cells only).
 * O(chunks). */
static double cf__chain(const cf_sched_cost_t *c, const cf_sched_req_t *q) {
  int32_t nc = cf_cost_chunks(c, q->prefix_tokens), h = nc;
  int lf = c->n_layers - 1; /* the highest layer that skips nothing */
  while (lf >= 0 && cf_cost_layer_windowed(c, lf)) lf--;
  double T = 0, fin = (double)q->prefix_tokens - c->window + 1;
  for (int32_t ch = 0; ch < nc; ch++) {
    double s = (double)cf_cost_tok(c, q->prefix_tokens, ch), e = (double)cf_cost_tok(c, q->prefix_tokens, ch + 1);
    int layers = lf == c->n_layers - 1 || e > fin ? c->n_layers : lf + 1;
    double comp = c->n_layers * cf_cost_step(c, s, e - s);
    if (cf_sched_chunk_hole(q, ch)) { /* computed at every layer, windowed or not */
      if (h == nc) h = ch;
      T = fmax(T, comp);
    } else if (layers > 0) {
      T = fmax(T, fmin(layers * cf_cost_step(c, s, e - s),
                       c->link_latency_s + (e - s) * c->kv_bytes_per_token /
                                               cf_cost_tier_Bps(c, cf_sched_chunk_tier(q, ch))));
    }
  }
  if (h == nc) return T;
  double s = (double)cf_cost_tok(c, q->prefix_tokens, h), e = (double)cf_cost_tok(c, q->prefix_tokens, h + 1);
  double need = s;
  if (cf_cost_layer_windowed(c, 0) && need > c->window - 1) need = c->window - 1;
  double fast = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) fast = fmax(fast, cf_cost_tier_Bps(c, t));
#define CF__COMP(t) (c->alpha_s * (t) + c->beta_s * cf_cost_ctx(c, 0, (t)))
#define CF__LOAD(t) (c->link_latency_s + (need - (t)) * c->kv_bytes_per_token / fast)
  double wait = 0;
  if (need > 0) {
    wait = CF__COMP(need); /* load nothing: no latency either */
    if (wait >= CF__LOAD(need)) { /* else every split waits at least the latency, more */
      /* bisection keeps COMP(lo) < LOAD(lo) and COMP(hi) >= LOAD(hi); then every t has
       * max(COMP, LOAD)(t) >= max(COMP(lo), LOAD(hi)) (below lo: LOAD(t) >= LOAD(lo) > COMP(lo);
       * above hi: COMP(t) >= COMP(hi) >= LOAD(hi); between: each side's monotony) */
      double lo = 0, hi = need;
      for (int it = 0; it < 60; it++) {
        double t = 0.5 * (lo + hi);
        if (CF__COMP(t) < CF__LOAD(t)) lo = t;
        else hi = t;
      }
      wait = fmin(wait, fmax(CF__COMP(lo), CF__LOAD(hi)));
    }
  }
#undef CF__COMP
#undef CF__LOAD
  return fmax(T, wait + c->n_layers * cf_cost_step(c, s, e - s));
}

/* Plans can meet the bound exactly (e.g. recompute over a very slow link), and the simulator
 * sums the same costs in another order: shave 1e-9 so rounding never puts a plan below it. */
#define CF__BOUND_SLACK (1 - 1e-9)

double cf_bound_request(const cf_sched_cost_t *c, const cf_sched_req_t *q) {
  if (q->prefix_tokens <= 0) return 0.0;
  cf__run_t *buf;
  cf__runs_t *rr = cf__all_runs(c, q, 1, &buf);
  int idx = 0;
  double T = rr ? cf__pooled(c, rr, &idx, 1, 1, 1) : cf__fastest(c, q, 1);
  T = fmax(T, cf__chain(c, q));
  free(rr);
  free(buf);
  return T * CF__BOUND_SLACK;
}

double cf_bound_single(const cf_sched_cost_t *c, int64_t P) {
  cf_sched_req_t q = {.prefix_tokens = P};
  return cf_bound_request(c, &q);
}

double cf_bound(const cf_sched_input_t *in) {
  int n = in->n_reqs;
  if (n <= 0) return 0.0;
  int *order = malloc((size_t)n * sizeof *order);
  cf__run_t *buf;
  cf__runs_t *tk = cf__all_runs(&in->cost, in->reqs, n, &buf);
  double T = 0;
  int nd0 = cf_cost_has_peer(&in->cost) ? in->cost.n_devices : 1;
  if (!tk) { /* each request alone at the fastest tier's rate: still valid */
    for (int r = 0; r < n; r++)
      if (in->reqs[r].prefix_tokens > 0)
        T = fmax(T, in->reqs[r].arrival_s + cf__fastest(&in->cost, &in->reqs[r], nd0) * CF__BOUND_SLACK);
    free(order);
    return T;
  }
  int nd1 = cf_cost_has_peer(&in->cost) ? in->cost.n_devices : 1; /* compute one request may use */
  for (int r = 0; r < n; r++) {
    if (in->reqs[r].prefix_tokens <= 0) continue;
    double t = in->reqs[r].arrival_s +
               fmax(cf__pooled(&in->cost, tk, &r, 1, nd1, 1), cf__chain(&in->cost, &in->reqs[r])) * CF__BOUND_SLACK;
    if (t > T) T = t;
  }
  if (!order) { free(tk); free(buf); return T; } /* still a valid (weaker) bound */
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
  free(buf);
  return T * CF__BOUND_SLACK;
}
