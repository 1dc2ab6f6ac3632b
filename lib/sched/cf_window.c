/* Sliding-window layers: the cells no later token needs (cf_sched_window_skip, cf_sched.h), and
 * the pass that takes them out of a plan's LOADs (cf__plan_window_clip, cf_sched_int.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

int32_t cf_sched_window_skip(const cf_sched_cost_t *c, int64_t P, const uint16_t *h, int32_t nc,
                             int l, uint8_t *skip) {
  memset(skip, 0, (size_t)(nc > 0 ? nc : 0));
  if (nc <= 0 || !cf_cost_layer_windowed(c, l)) return 0;
  int64_t W = c->window, C = c->chunk_tokens, need = P - W + 1; /* the next token's first key */
  int32_t n = 0;
  /* right to left: the nearest chunk computed at l to the right needs the W - 1 keys before
   * its first token; the ones further right need fewer of them */
  for (int32_t ch = nc - 1; ch >= 0; ch--) {
    if (h[ch] > l) { /* computed here: needed, and needs its window */
      int64_t w = ch * C - W + 1;
      if (w < need) need = w;
      continue;
    }
    int64_t end = (ch + 1) * C < P ? (ch + 1) * C : P;
    if (end <= need) {
      skip[ch] = 1;
      n++;
    }
  }
  return n;
}

/* Append LOADs of request r covering the kept cells of [c0, c1) x [l0, l1) (skip: the request's
 * per-layer masks, nc apart): one rectangle per run of kept chunks, stacked over the layers
 * whose runs are the same. */
static int cf__clip_op(cf_sched_plan_t *p, const cf_sched_op_t *o, const uint8_t *skip, int32_t nc) {
  int rc = 0;
  for (int l = o->l0; l < o->l1 && !rc;) {
    int l1 = l + 1; /* layers with the same mask over [c0, c1) */
    while (l1 < o->l1 && !memcmp(skip + (size_t)l * nc + o->c0, skip + (size_t)l1 * nc + o->c0,
                                 (size_t)(o->c1 - o->c0)))
      l1++;
    const uint8_t *m = skip + (size_t)l * nc;
    for (int32_t a = o->c0, b; a < o->c1 && !rc; a = b) {
      for (b = a + 1; b < o->c1 && m[b] == m[a]; b++) {}
      if (!m[a]) rc = cf__plan_op(p, o->req, CF_OP_LOAD, o->stream, a, b, l, l1);
    }
    l = l1;
  }
  return rc;
}

int cf__plan_window_clip(const cf_sched_input_t *in, cf_sched_plan_t *p) {
  const cf_sched_cost_t *c = &in->cost;
  int L = c->n_layers, any = 0;
  if (c->window <= 0) return 0;
  for (int l = 0; l < L && !any; l++) any = cf_cost_layer_windowed(c, l);
  if (!any) return 0;
  size_t cells = p->h_off[p->n_reqs] * (size_t)L, n_skip = 0;
  uint8_t *skip = malloc(cells ? cells : 1);
  if (!skip) return cf_seterr(CF_ENOMEM, "plan: window masks of %zu cells", cells);
  for (int r = 0; r < p->n_reqs; r++) {
    int32_t nc = p->n_chunks[r];
    for (int l = 0; l < L; l++)
      n_skip += (size_t)cf_sched_window_skip(c, in->reqs[r].prefix_tokens, cf__plan_h(p, r), nc, l,
                                             skip + p->h_off[r] * L + (size_t)l * nc);
  }
  int rc = 0;
  if (n_skip) { /* rebuild the op list in place of each LOAD that touches a skipped cell */
    cf_sched_op_t *old = p->ops;
    size_t n_old = p->n_ops;
    p->ops = NULL;
    p->n_ops = p->cap_ops_ = 0;
    for (size_t i = 0; i < n_old && !rc; i++) {
      const cf_sched_op_t *o = &old[i];
      if (o->kind != CF_OP_LOAD || o->l0 < 0) { /* computes, sends, hidden states: as they are */
        if (!(rc = cf__plan_op(p, o->req, (cf_op_kind_t)o->kind, o->stream, o->c0, o->c1, o->l0, o->l1)))
          p->ops[p->n_ops - 1] = *o;
        continue;
      }
      rc = cf__clip_op(p, o, skip + p->h_off[o->req] * L, p->n_chunks[o->req]);
    }
    free(old);
  }
  free(skip);
  return rc;
}

int cf__sim_clipped(const cf_sched_input_t *in, cf_sched_plan_t *p, cf_sim_result_t *res) {
  int rc = cf__plan_window_clip(in, p);
  return rc ? rc : cf_sim_run(in, p, res);
}

int cf__window_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out, double *est) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, nl = cf_cost_n_links(c), any = 0;
  *est = INFINITY;
  for (int l = 0; l < L && !any; l++) any = cf_cost_layer_windowed(c, l);
  if (!any || n == 0 || cf_cost_stage(c, nd - 1) > 0) return 0;
  size_t nn = (size_t)n;
  int *ell = calloc(nn, sizeof *ell);
  double *X = calloc((size_t)(nd + nl), sizeof *X), *Y = X + nd;
  double *comp = malloc(2 * nn * sizeof *comp), *full = comp + nn;
  double *win = malloc(nn * sizeof *win);
  if (!ell || !X || !comp || !win) {
    free(ell); free(X); free(comp); free(win);
    return cf_seterr(CF_ENOMEM, "optimal: windowed candidate of %d requests", n);
  }
  double amin = INFINITY;
  for (int r = 0; r < n; r++) { /* per layer: compute every chunk, load all, load the final window */
    const cf_sched_req_t *q = &in->reqs[r];
    int64_t P = q->prefix_tokens, need = P - c->window + 1;
    int32_t nc = cf_cost_chunks(c, P), kw = need > 0 ? (int32_t)(need / c->chunk_tokens) : 0;
    comp[r] = cf_cost_step(c, 0, (double)P);
    full[r] = cf_sched_load_s(c, q, 0, nc, 1);
    win[r] = cf_sched_load_s(c, q, kw, nc, 1);
    amin = fmin(amin, q->arrival_s);
    for (int l = 0; l < L; l++) Y[cf_cost_link_of(c, dev[r])] += cf_cost_layer_windowed(c, l) ? win[r] : full[r];
    /* holes are computed at every layer whatever ell says (cf__plan_holes) */
    if (cf_sched_req_holes(c, q)) ell[r] = -1;
  }
  for (int it = 0; it < n * L; it++) { /* raise one request's ell while a link is the bottleneck */
    double T = 0;
    int link = -1;
    for (int d = 0; d < nd; d++) T = fmax(T, X[d]);
    for (int k = 0; k < nl; k++)
      if (Y[k] > T) { T = Y[k]; link = k; }
    if (link < 0) break;
    int best = -1;
    double bv = 0;
    for (int r = 0; r < n; r++) {
      if (ell[r] < 0 || ell[r] >= L || cf_cost_link_of(c, dev[r]) != link || X[dev[r]] + comp[r] >= T) continue;
      double v = (cf_cost_layer_windowed(c, ell[r]) ? win[r] : full[r]) / comp[r];
      if (v > bv) { bv = v; best = r; }
    }
    if (best < 0) break;
    X[dev[best]] += comp[best];
    Y[link] -= cf_cost_layer_windowed(c, ell[best]) ? win[best] : full[best];
    ell[best]++;
  }
  double T = 0;
  for (int s = 0; s < nd + nl; s++) T = fmax(T, X[s]);
  for (int r = 0; r < n; r++) ell[r] = ell[r] < 0 ? 0 : ell[r];
  int rc = cf__layer_plan(in, dev, out, CF_POLICY_OPTIMAL, ell);
  if (!rc) rc = cf__plan_window_clip(in, out);
  if (!rc) *est = amin + T;
  free(ell);
  free(X);
  free(comp);
  free(win);
  return rc;
}
