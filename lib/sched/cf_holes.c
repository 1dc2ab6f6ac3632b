/* Holes: chunks no tier holds, computed at every layer by whatever plan a policy made
 * (cf_sched.h, cf_sched_int.h: cf__plan_holes).
 *
 * Why a rewrite of the finished plan rather than hole logic inside every policy: each policy
 * (recompute, load, layerwise, cake, cacheflow, optimal's analytic shape) picks its cells its
 * own way, and what a hole changes is the same for all of them: its loaded cells become
 * computed ones. Only the placement of the new compute ops needs care. A COMPUTE (r, l,
 * [c0, c1)) attends to every (c' < c0, l), so a hole cell (c, l) with c < c0 that the plan
 * loaded must now be computed before it on the same stream, and (c, l - 1) before that. So,
 * walking the request's own compute ops in stream order, the pending hole cells an op attends
 * to (holes c < c0, layers up to l) are emitted just before it, layer by layer; whatever is
 * left goes after the request's last own op. The dependencies of an emitted hole op (c, l)
 * are (c' < c, l) — own cells that the op it precedes also needed, hence earlier, loads, or
 * holes emitted before it in the same layer pass — and (c, l - 1), emitted in the previous
 * pass or computed by the original plan below the hole's old height. */
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

int cf__any_holes(const cf_sched_input_t *in) {
  for (int r = 0; r < in->n_reqs; r++)
    if (cf_sched_req_holes(&in->cost, &in->reqs[r]) > 0) return 1;
  return 0;
}

void cf__holes_clamp(const cf_sched_input_t *in, const size_t *h_off, uint16_t *h) {
  for (int r = 0; r < in->n_reqs; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    if (!q->chunk_tier) continue;
    for (int32_t ch = 0, nc = cf_cost_chunks(&in->cost, q->prefix_tokens); ch < nc; ch++)
      if (q->chunk_tier[ch] == CF_SCHED_TIER_NONE) h[h_off[r] + ch] = (uint16_t)in->cost.n_layers;
  }
}

typedef struct {
  cf_sched_op_t *a;
  size_t n, cap;
} cf__opvec_t;

static int cf__push(cf__opvec_t *v, cf_sched_op_t o) {
  if (v->n == v->cap) {
    size_t c = v->cap ? 2 * v->cap : 64;
    cf_sched_op_t *a = realloc(v->a, c * sizeof *a);
    if (!a) return cf_seterr(CF_ENOMEM, "holes: %zu ops", c);
    v->a = a;
    v->cap = c;
  }
  v->a[v->n++] = o;
  return 0;
}

static int cf__push_op(cf__opvec_t *v, int r, cf_op_kind_t kind, int stream, int32_t c0, int32_t c1,
                       int l0, int l1) {
  cf_sched_op_t o = {.req = r, .kind = (uint8_t)kind, .stream = (int16_t)stream, .c0 = c0, .c1 = c1,
                     .l0 = (int16_t)l0, .l1 = (int16_t)l1, .dst = -1};
  return cf__push(v, o);
}

/* Request r's hole chunks hc[0..m) (ascending) with e[i]: the lowest layer of hole i not
 * computed yet (its old height at first; L when done). Emit, layer by layer from the lowest
 * pending one up to `lmax`, the pending cells of the holes before chunk `cend`, one COMPUTE per
 * run of adjacent pending hole chunks, on device d. */
static int cf__emit_pending(cf__opvec_t *v, int r, int d, const int32_t *hc, uint16_t *e, int32_t m,
                            int32_t cend, int lmax) {
  int lo = lmax + 1;
  int32_t k = 0;
  for (; k < m && hc[k] < cend; k++)
    if (e[k] < lo) lo = e[k];
  for (int l = lo; l <= lmax; l++)
    for (int32_t i = 0, j; i < k; i = j) {
      j = i + 1;
      if (e[i] > l) continue;
      while (j < k && hc[j] == hc[j - 1] + 1 && e[j] <= l) j++;
      int rc = cf__push_op(v, r, CF_OP_COMPUTE, d, hc[i], hc[j - 1] + 1, l, l + 1);
      if (rc) return rc;
      for (int32_t u = i; u < j; u++) e[u] = (uint16_t)(l + 1);
    }
  return 0;
}

int cf__plan_holes(const cf_sched_input_t *in, cf_sched_plan_t *p) {
  if (!cf__any_holes(in)) return 0;
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, rc = 0;
  size_t nn = (size_t)n;
  /* per request: its holes (offsets into hc / e), its first op and its last own compute op */
  size_t *hoff = calloc(nn + 1, sizeof *hoff);
  size_t *first = malloc(nn * sizeof *first), *last = malloc(nn * sizeof *last);
  char *tail_done = calloc(nn, 1);
  int32_t *hc = NULL;
  uint16_t *e = NULL;
  cf__opvec_t v = {0};
  if (!hoff || !first || !last || !tail_done) {
    rc = cf_seterr(CF_ENOMEM, "holes: %d requests", n);
    goto out;
  }
  for (int r = 0; r < n; r++) hoff[r + 1] = hoff[r] + (size_t)cf_sched_req_holes(c, &in->reqs[r]);
  hc = malloc((hoff[n] ? hoff[n] : 1) * sizeof *hc);
  e = malloc((hoff[n] ? hoff[n] : 1) * sizeof *e);
  if (!hc || !e) {
    rc = cf_seterr(CF_ENOMEM, "holes: %zu hole chunks", hoff[n]);
    goto out;
  }
  for (int r = 0; r < n; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    uint16_t *h = cf__plan_h(p, r);
    size_t k = hoff[r];
    for (int32_t ch = 0; ch < p->n_chunks[r]; ch++)
      if (cf_sched_chunk_hole(q, ch)) {
        hc[k] = ch;
        e[k++] = h[ch];
        h[ch] = (uint16_t)L; /* the staircase: computed at every layer */
      }
    first[r] = last[r] = (size_t)-1;
  }
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (first[o->req] == (size_t)-1) first[o->req] = i;
    if (o->kind == CF_OP_COMPUTE && o->stream == p->device[o->req]) last[o->req] = i;
  }
  for (size_t i = 0; i < p->n_ops && !rc; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    int r = o->req, d = p->device[r];
    int32_t m = (int32_t)(hoff[r + 1] - hoff[r]);
    const int32_t *H = hc + hoff[r];
    uint16_t *E = e + hoff[r];
    if (!m) {
      rc = cf__push(&v, *o);
      continue;
    }
    if (i == first[r] && cf_cost_stage(c, d) > 0) /* later stage: hole chunks newly computed at layer 0 */
      for (int32_t a = 0, b; a < m && !rc; a = b) {
        b = a + 1;
        if (E[a] != 0) continue;
        while (b < m && H[b] == H[b - 1] + 1 && E[b] == 0) b++;
        rc = cf__push_op(&v, r, CF_OP_LOAD, cf_cost_link_of(c, d), H[a], H[b - 1] + 1, -1, 0);
      }
    if (!rc && i == first[r] && last[r] == (size_t)-1) { /* it computes nothing of its own */
      rc = cf__emit_pending(&v, r, d, H, E, m, p->n_chunks[r], L - 1);
      tail_done[r] = 1;
    }
    if (rc) break;
    if (o->kind == CF_OP_LOAD && o->l0 >= 0) { /* without its hole chunks */
      for (int32_t a = o->c0, b; a < o->c1 && !rc; a = b) {
        for (b = a; b < o->c1 && !cf_sched_chunk_hole(&in->reqs[r], b); b++) {}
        if (b > a) rc = cf__push_op(&v, r, CF_OP_LOAD, o->stream, a, b, o->l0, o->l1);
        while (b < o->c1 && cf_sched_chunk_hole(&in->reqs[r], b)) b++;
      }
      continue;
    }
    if (o->kind == CF_OP_COMPUTE && o->stream == d) /* the holes it attends to, first */
      rc = cf__emit_pending(&v, r, d, H, E, m, o->c0, o->l0);
    if (!rc) rc = cf__push(&v, *o);
    if (!rc && i == last[r] && !tail_done[r]) {
      rc = cf__emit_pending(&v, r, d, H, E, m, p->n_chunks[r], L - 1);
      tail_done[r] = 1;
    }
  }
  if (!rc) {
    free(p->ops);
    p->ops = v.a;
    p->n_ops = v.n;
    p->cap_ops_ = v.cap;
    v.a = NULL;
  }
out:
  free(v.a);
  free(hoff);
  free(first);
  free(last);
  free(tail_done);
  free(hc);
  free(e);
  return rc;
}
