/* cf_memfit — see cf_memfit.h. */
#include "sched/cf_memfit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "sched/cf_sim.h"
#include "util/cf_err.h"

static int cf__hole(const cf_sched_req_t *q, int32_t c) {
  return q->chunk_tier && q->chunk_tier[c] == CF_MEMFIT_TIER_NONE;
}

/* End (tokens) of request r's last computed chunk; 0 when it computes nothing. */
static int64_t cf__extent(const cf_sched_input_t *in, const cf_sched_plan_t *p, int r) {
  const uint16_t *h = p->h + p->h_off[r];
  int64_t C = in->cost.chunk_tokens, T = in->reqs[r].prefix_tokens;
  for (int32_t c = p->n_chunks[r] - 1; c >= 0; c--)
    if (h[c] > 0) return (c + 1) * C < T ? (c + 1) * C : T;
  return 0;
}

double cf_memfit_footprint(const cf_memfit_t *m, const cf_sched_input_t *in,
                           const cf_sched_plan_t *p, int r) {
  return (double)cf__extent(in, p, r) * m->bytes_per_token;
}

/* Can request r's compute be cut (its ops rebuilt from a staircase)? Not with help (compute or
 * sends off its device) or on a later pipeline stage. */
static int cf__shrinkable(const cf_sched_input_t *in, const cf_sched_plan_t *p, int r) {
  if (cf_cost_stage(&in->cost, p->device[r]) > 0) return 0;
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (o->req == r && (o->kind == CF_OP_SEND || (o->kind == CF_OP_COMPUTE && o->stream != p->device[r])))
      return 0;
  }
  return 1;
}

/* Load request r's last computed chunk instead (h = 0). 1 done, 0 nothing can be cut. */
static int cf__shrink1(cf_sched_plan_t *p, const cf_sched_input_t *in, int r, int64_t *cells) {
  uint16_t *h = cf__plan_h(p, r);
  for (int32_t c = p->n_chunks[r] - 1; c >= 0; c--) {
    if (!h[c]) continue;
    if (cf__hole(&in->reqs[r], c)) return 0;
    *cells += h[c];
    h[c] = 0;
    return 1;
  }
  return 0;
}

/* Request r's ops from its staircase: per layer, its loads (runs of chunks with h <= l) and
 * its compute (runs with h > l), layers bottom first. */
static int cf__emit_staircase(cf_sched_plan_t *p, const cf_sched_input_t *in, int r) {
  const uint16_t *h = p->h + p->h_off[r];
  int n = p->n_chunks[r], link = cf_cost_link_of(&in->cost, p->device[r]), rc = 0;
  for (int l = 0; l < in->cost.n_layers && !rc; l++)
    for (int pass = 0; pass < 2 && !rc; pass++) /* 0: loads, 1: compute */
      for (int c = 0; c < n && !rc;) {
        if ((h[c] > l) != pass) { c++; continue; }
        int e = c + 1;
        while (e < n && (h[e] > l) == pass) e++;
        rc = pass ? cf__plan_op(p, r, CF_OP_COMPUTE, p->device[r], c, e, l, l + 1)
                  : cf__plan_op(p, r, CF_OP_LOAD, link, c, e, l, l + 1);
        c = e;
      }
  return rc;
}

/* Append a copy of op o (its dst too). */
static int cf__copy_op(cf_sched_plan_t *p, const cf_sched_op_t *o) {
  int rc = cf__plan_op(p, o->req, (cf_op_kind_t)o->kind, o->stream, o->c0, o->c1, o->l0, o->l1);
  if (!rc) p->ops[p->n_ops - 1] = *o;
  return rc;
}

/* Replace the ops of the requests marked in `changed` by ops from their staircases, at the
 * place of their first op (streams keep their order otherwise). */
static int cf__rebuild(cf_sched_plan_t *p, const cf_sched_input_t *in, const uint8_t *changed) {
  size_t n = p->n_ops;
  cf_sched_op_t *old = malloc((n ? n : 1) * sizeof *old);
  uint8_t *done = calloc((size_t)in->n_reqs, 1);
  if (!old || !done) { free(old); free(done); return cf_seterr(CF_ENOMEM, "memfit: %zu ops", n); }
  memcpy(old, p->ops, n * sizeof *old);
  p->n_ops = 0;
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    int r = old[i].req;
    if (!changed[r]) rc = cf__copy_op(p, &old[i]);
    else if (!done[r]) { rc = cf__emit_staircase(p, in, r); done[r] = 1; }
  }
  for (int r = 0; r < in->n_reqs && !rc; r++)
    if (changed[r] && !done[r]) rc = cf__emit_staircase(p, in, r);
  free(old);
  free(done);
  return rc;
}

static int cf__copy_plan(cf_sched_plan_t *dst, const cf_sched_plan_t *src, const cf_sched_input_t *in) {
  int rc = cf__plan_reset(dst, in, src->device, src->policy);
  if (rc) return rc;
  memcpy(dst->h, src->h, src->h_off[src->n_reqs] * sizeof *src->h);
  for (size_t i = 0; i < src->n_ops && !rc; i++) rc = cf__copy_op(dst, &src->ops[i]);
  dst->est_makespan_s = src->est_makespan_s;
  dst->sim_evals = src->sim_evals;
  return rc;
}

typedef struct {
  cf_sched_req_t *reqs; /* the batch with arrivals moved to admission times */
  int *order;           /* arrival order */
  double *fp, *act_fp, *act_fin;
  cf_sim_result_t res;
} cf__ws_t;

/* Simulate p with the executor's admission: in arrival order, a request that computes waits
 * until the footprints admitted before it that are still running leave room for its own (it
 * starts when enough of them finished). Waiting is modelled as a later arrival; iterated
 * because finish times move with it. Fills makespan, peak and the number of waiting requests. */
static int cf__sim_wait(const cf_sched_input_t *in, const cf_sched_plan_t *p, const cf_memfit_t *m,
                        cf__ws_t *w, cf_memfit_report_t *rep) {
  int n = in->n_reqs;
  memcpy(w->reqs, in->reqs, (size_t)n * sizeof *w->reqs);
  cf_sched_input_t in2 = *in;
  in2.reqs = w->reqs;
  for (int r = 0; r < n; r++) w->fp[r] = cf_memfit_footprint(m, in, p, r);
  double B = m->budget_bytes > 0 ? m->budget_bytes : INFINITY;
  int rc = 0, waiting = 0;
  double peak = 0;
  for (int iter = 0; iter < 8; iter++) {
    if ((rc = cf_sim_run(&in2, p, &w->res))) return rc;
    int changed = 0, na = 0;
    double sum = 0;
    waiting = 0;
    peak = 0;
    for (int k = 0; k < n; k++) {
      int r = w->order[k];
      if (w->fp[r] <= 0) continue;
      double start = in->reqs[r].arrival_s;
      for (;;) { /* drop what ended by `start`; while it does not fit, wait for the next end */
        for (int a = 0; a < na;)
          if (w->act_fin[a] <= start) {
            sum -= w->act_fp[a];
            w->act_fp[a] = w->act_fp[na - 1]; w->act_fin[a] = w->act_fin[na - 1]; na--;
          } else a++;
        if (sum + w->fp[r] <= B || !na) break;
        double first = INFINITY;
        for (int a = 0; a < na; a++) if (w->act_fin[a] < first) first = w->act_fin[a];
        start = first;
      }
      if (start > in->reqs[r].arrival_s) waiting++;
      if (fabs(w->reqs[r].arrival_s - start) > 1e-12) { w->reqs[r].arrival_s = start; changed = 1; }
      w->act_fp[na] = w->fp[r]; w->act_fin[na] = w->res.finish_s[r]; na++;
      sum += w->fp[r];
      if (sum > peak) peak = sum;
    }
    if (!changed) break;
  }
  rep->makespan_s = w->res.makespan_s;
  rep->peak_bytes = peak;
  rep->waiting_reqs = waiting;
  return 0;
}

int cf_memfit_plan(const cf_sched_input_t *in, cf_policy_t policy, const cf_memfit_t *m,
                   cf_sched_plan_t *out, cf_memfit_report_t *rep) {
  cf_memfit_report_t dummy;
  if (!rep) rep = &dummy;
  memset(rep, 0, sizeof *rep);
  if (!m || !isfinite(m->bytes_per_token) || m->bytes_per_token < 0)
    return cf_seterr(CF_EINVAL, "memfit: bytes_per_token must be finite and >= 0");
  int rc = cf_sched_plan(in, policy, out);
  if (rc) return rc;
  int n = in->n_reqs;
  cf__ws_t w = {0};
  cf_sim_result_init(&w.res);
  cf_sched_plan_t alt;
  cf_sched_plan_init(&alt);
  uint8_t *changed = calloc((size_t)n + 1, 1);
  w.reqs = malloc(((size_t)n + 1) * sizeof *w.reqs);
  w.order = malloc(((size_t)n + 1) * sizeof *w.order);
  w.fp = malloc(((size_t)n + 1) * sizeof *w.fp);
  w.act_fp = malloc(((size_t)n + 1) * sizeof *w.act_fp);
  w.act_fin = malloc(((size_t)n + 1) * sizeof *w.act_fin);
  if (!changed || !w.reqs || !w.order || !w.fp || !w.act_fp || !w.act_fin) {
    rc = cf_seterr(CF_ENOMEM, "memfit: %d requests", n);
    goto out;
  }
  cf__arrival_order(in, w.order);
  double B = m->budget_bytes;
  if (B > 0) {
    /* 1. alone it must fit: cut its compute from the back */
    for (int r = 0; r < n; r++) {
      int cut = 0;
      while (cf_memfit_footprint(m, in, out, r) > B) {
        if (!cf__shrinkable(in, out, r) || !cf__shrink1(out, in, r, &rep->cells_shifted)) {
          rc = cf_seterr(CF_ENOMEM, "memfit: request %d must compute %lld tokens (chunks stored in no tier, or "
                         "computed across devices): %.0f bytes of working memory, the budget is %.0f",
                         r, (long long)cf__extent(in, out, r), cf_memfit_footprint(m, in, out, r), B);
          goto out;
        }
        cut = 1;
      }
      changed[r] = (uint8_t)cut;
      rep->shrunk_reqs += cut;
    }
    if (rep->shrunk_reqs && (rc = cf__rebuild(out, in, changed))) goto out;
  }
  double total = 0;
  for (int r = 0; r < n; r++) total += cf_memfit_footprint(m, in, out, r);
  if (B <= 0 || total <= B) { /* everything fits at once */
    rc = cf__sim_wait(in, out, m, &w, rep);
    rep->strategy = 0;
    goto out;
  }
  /* 2. wait (as planned) or shift (cut the largest footprints until the batch fits at once) */
  cf_memfit_report_t rw = *rep, rs = *rep;
  if ((rc = cf__sim_wait(in, out, m, &w, &rw))) goto out;
  if ((rc = cf__copy_plan(&alt, out, in))) goto out;
  memset(changed, 0, (size_t)n);
  int shrunk = 0;
  while (total > B) {
    int best = -1;
    double bf = 0;
    for (int r = 0; r < n; r++) {
      double f = cf_memfit_footprint(m, in, &alt, r);
      if (f > bf && cf__shrinkable(in, &alt, r)) {
        /* only if its last computed chunk can be loaded */
        const uint16_t *h = alt.h + alt.h_off[r];
        int32_t c = alt.n_chunks[r] - 1;
        while (c >= 0 && !h[c]) c--;
        if (c >= 0 && !cf__hole(&in->reqs[r], c)) { best = r; bf = f; }
      }
    }
    if (best < 0) break; /* the rest waits */
    if (!changed[best]) shrunk++;
    changed[best] = 1;
    cf__shrink1(&alt, in, best, &rs.cells_shifted);
    total -= bf - cf_memfit_footprint(m, in, &alt, best);
  }
  if ((rc = cf__rebuild(&alt, in, changed))) goto out;
  rs.shrunk_reqs += shrunk;
  if ((rc = cf__sim_wait(in, &alt, m, &w, &rs))) goto out;
  if (rs.makespan_s < rw.makespan_s) {
    cf__swap_plans(out, &alt);
    *rep = rs;
    rep->strategy = 2;
  } else {
    *rep = rw;
    rep->strategy = 1;
  }
out:
  if (!rc) out->est_makespan_s = rep->makespan_s;
  cf_sched_plan_free(&alt);
  cf_sim_result_free(&w.res);
  free(changed); free(w.reqs); free(w.order); free(w.fp); free(w.act_fp); free(w.act_fin);
  return rc;
}
