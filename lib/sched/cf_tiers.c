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

typedef struct {
  int32_t r, c;
  double x, y; /* per layer: compute past gamma, link past latency */
} cf__item_t;

static int cf__cmp_item(const void *pa, const void *pb) {
  const cf__item_t *a = pa, *b = pb;
  double ka = a->y * b->x, kb = b->y * a->x; /* a->y / a->x vs b->y / b->x, no division */
  if (ka != kb) return ka > kb ? -1 : 1;
  if (a->r != b->r) return a->r - b->r;
  return a->c - b->c;
}

static int cf__cmp_key(const void *pa, const void *pb, void *arg) {
  const double *key = arg;
  int a = *(const int *)pa, b = *(const int *)pb;
  if (key[2 * a] != key[2 * b]) return key[2 * a] < key[2 * b] ? -1 : 1;
  if (key[2 * a + 1] != key[2 * b + 1]) return key[2 * a + 1] < key[2 * b + 1] ? -1 : 1;
  return a - b;
}

int cf__tier_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                  double *est) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, rc;
  *est = INFINITY;
  if ((rc = cf__plan_reset(out, in, dev, CF_POLICY_OPTIMAL))) return rc;
  size_t nitems = out->h_off[n], nn = n ? (size_t)n : 1;
  cf__item_t *it = malloc((nitems ? nitems : 1) * sizeof *it);
  double *X = calloc((size_t)nd, sizeof *X), *Y = calloc((size_t)cf_cost_n_links(c), sizeof *Y);
  double *key = malloc(2 * nn * sizeof *key);
  int *order = malloc(2 * nn * sizeof *order), *border = order + nn;
  double *xr = malloc(2 * nn * sizeof *xr), *yr = xr + nn;
  if (!it || !X || !Y || !key || !order || !xr) {
    rc = cf_seterr(CF_ENOMEM, "optimal: tier plan of %d requests", n);
    goto out;
  }
  for (int d = 0; d < nd; d++) { /* per device: the greedy split of its requests' chunks */
    size_t m = 0;
    double Yd = 0, Xd = 0;
    for (int r = 0; r < n; r++) {
      if (dev[r] != d) continue;
      const cf_sched_req_t *q = &in->reqs[r];
      for (int32_t ch = 0; ch < out->n_chunks[r]; ch++) {
        double p = (double)cf_cost_tok(c, q->prefix_tokens, ch);
        double t = (double)cf_cost_tok(c, q->prefix_tokens, ch + 1) - p;
        it[m] = (cf__item_t){r, ch, cf_cost_step(c, p, t) - c->gamma_s,
                             cf_sched_load_s(c, q, ch, ch + 1, 1) - c->link_latency_s};
        Yd += L * it[m].y;
        m++;
      }
    }
    qsort(it, m, sizeof *it, cf__cmp_item);
    for (size_t i = 0; i < m; i++) {
      double gap = Yd - Xd, per = it[i].x + it[i].y;
      if (gap <= 0) break;
      int layers = per > 0 ? (int)fmin((double)L, floor(gap / per)) : L;
      if (layers <= 0) continue; /* a smaller item later may still fit */
      cf__plan_h(out, it[i].r)[it[i].c] = (uint16_t)layers;
      Xd += layers * it[i].x;
      Yd -= layers * it[i].y;
    }
  }
  /* Order. Each request's computes wait for the loads of the chunks they attend to, so a
   * request that mostly loads, run first, leaves the compute stream idle while a request that
   * mostly computes waits behind it on the link. Two orders are estimated (per request x, y
   * its compute and link time; its computes start after its first layer's loads and end
   * after its last layer's): arrival then shortest first, and Johnson's rule for two
   * machines in series (link, then compute: requests with y < x first by increasing y, then
   * the rest by decreasing x), which ignores arrivals. The smaller estimate wins. */
  for (int r = 0; r < n; r++) {
    const uint16_t *h = cf__plan_h(out, r);
    const cf_sched_req_t *q = &in->reqs[r];
    double x = 0, y = 0;
    for (int32_t ch = 0; ch < out->n_chunks[r]; ch++) {
      double p = (double)cf_cost_tok(c, q->prefix_tokens, ch);
      double t = (double)cf_cost_tok(c, q->prefix_tokens, ch + 1) - p;
      x += h[ch] * (cf_cost_step(c, p, t) - c->gamma_s);
      y += (L - h[ch]) * (cf_sched_load_s(c, q, ch, ch + 1, 1) - c->link_latency_s);
    }
    xr[r] = x;
    yr[r] = y;
  }
  double best = INFINITY;
  for (int way = 0; way < 2; way++) {
    for (int r = 0; r < n; r++) {
      order[r] = r;
      if (way == 0) {
        key[2 * r] = in->reqs[r].arrival_s;
        key[2 * r + 1] = xr[r] + yr[r];
      } else {
        key[2 * r] = yr[r] < xr[r] ? 0 : 1;
        key[2 * r + 1] = yr[r] < xr[r] ? yr[r] : -xr[r];
      }
    }
    qsort_r(order, (size_t)n, sizeof *order, cf__cmp_key, key);
    for (int d = 0; d < nd; d++) X[d] = 0;
    for (int k = 0; k < cf_cost_n_links(c); k++) Y[k] = 0;
    double e = 0;
    for (int i = 0; i < n; i++) {
      int r = order[i], d = dev[r], k = cf_cost_link_of(c, d);
      double a = in->reqs[r].arrival_s, ls = fmax(Y[k], a), le = ls + yr[r];
      if (yr[r] > 0) Y[k] = le;
      if (xr[r] > 0) {
        double cs = fmax(fmax(X[d], a), yr[r] > 0 ? ls + yr[r] / L : 0);
        X[d] = fmax(cs + xr[r], yr[r] > 0 ? le + xr[r] / L : 0);
      }
      e = fmax(e, fmax(X[d], Y[k]));
    }
    if (e < best) {
      best = e;
      memcpy(border, order, nn * sizeof *order);
    }
  }
  memcpy(order, border, nn * sizeof *order);
  for (int d = 0; d < nd; d++) X[d] = 0;
  for (int k = 0; k < cf_cost_n_links(c); k++) Y[k] = 0;
  double e = 0;
  for (int i = 0; i < n && !rc; i++) { /* emit */
    int r = order[i], d = dev[r], k = cf_cost_link_of(c, d);
    int32_t nc = out->n_chunks[r];
    const uint16_t *h = cf__plan_h(out, r);
    const cf_sched_req_t *q = &in->reqs[r];
    double xs = 0, ys = 0;
    for (int l = 0; l < L && !rc; l++)
      for (int32_t a = 0, b; a < nc && !rc; a = b) {
        for (b = a + 1; b < nc && (h[b] <= l) == (h[a] <= l); b++) {}
        if (h[a] <= l) {
          rc = cf__plan_op(out, r, CF_OP_LOAD, k, a, b, l, l + 1);
          ys += cf_sched_load_s(c, q, a, b, 1);
        }
      }
    for (int l = 0; l < L && !rc; l++)
      for (int32_t a = 0, b; a < nc && !rc; a = b) {
        for (b = a + 1; b < nc && (h[b] > l) == (h[a] > l); b++) {}
        if (h[a] > l) {
          rc = cf__plan_op(out, r, CF_OP_COMPUTE, d, a, b, l, l + 1);
          double p = (double)cf_cost_tok(c, q->prefix_tokens, a);
          xs += cf_cost_step(c, p, (double)cf_cost_tok(c, q->prefix_tokens, b) - p);
        }
      }
    /* the estimate again, with the steps' gamma and the loads' latency */
    double a = q->arrival_s, ls = fmax(Y[k], a), le = ls + ys;
    if (ys > 0) Y[k] = le;
    if (xs > 0) {
      double cs = fmax(fmax(X[d], a), ys > 0 ? ls + ys / L : 0);
      X[d] = fmax(cs + xs, ys > 0 ? le + xs / L : 0);
    }
    e = fmax(e, fmax(X[d], Y[k]));
  }
  if (!rc) *est = e;
out:
  free(it);
  free(X);
  free(Y);
  free(key);
  free(order);
  free(xr);
  return rc;
}
