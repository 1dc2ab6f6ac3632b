/* cf_sim — discrete-event execution of a plan (see cf_sim.h).
 *
 * Loads never wait on anything but their link and their request's arrival, so every link is
 * timed first, in plan order. A compute op then only waits on loads (known by now) and on
 * compute ops of the same request, which run on the same device stream: timing each device's
 * stream in order is an exact event simulation, and a compute op whose input is not timed yet
 * is waiting on its own stream's future: a deadlock, i.e. an invalid plan.
 *
 * Per cell we keep its finish time; per (request, layer) a "known prefix" pointer and the
 * running max of finish times over it, so "every (c' < c0, l) present" costs O(1) amortised.
 */
#include "sched/cf_sim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

void cf_sim_result_init(cf_sim_result_t *res) { memset(res, 0, sizeof *res); }

void cf_sim_result_free(cf_sim_result_t *res) {
  free(res->finish_s);
  free(res->restore_s);
  free(res->ttft_s);
  free(res->cell_fin_);
  free(res->cell_pmax_);
  free(res->kp_);
  memset(res, 0, sizeof *res);
}

void cf_sim_result_trim(cf_sim_result_t *res) {
  free(res->cell_fin_);
  free(res->cell_pmax_);
  free(res->kp_);
  res->cell_fin_ = res->cell_pmax_ = NULL;
  res->kp_ = NULL;
  res->cap_cells_ = res->cap_kp_ = 0;
}

static int cf__need(void **p, size_t *cap, size_t n, size_t elem) {
  if (n <= *cap) return 0;
  void *q = realloc(*p, n * elem);
  if (!q) return cf_seterr(CF_ENOMEM, "simulator: %zu entries of %zu bytes", n, elem);
  *p = q;
  *cap = n;
  return 0;
}

static int cf__cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n). */
static double cf__pct(const double *v, int n, double q) {
  if (n <= 0) return 0;
  int i = (int)ceil(q * n) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return v[i];
}

static int cf__bad_op(const cf_sched_plan_t *p, size_t i, const char *why) {
  const cf_sched_op_t *o = &p->ops[i];
  return cf_seterr(CF_EINVAL, "invalid plan (%s): op %zu %s req %d stream %d chunks [%d,%d) "
                   "layers [%d,%d): %s", cf_policy_name(p->policy), i,
                   o->kind == CF_OP_COMPUTE ? "compute" : "load", o->req, o->stream, o->c0,
                   o->c1, o->l0, o->l1, why);
}

int cf_sim_run(const cf_sched_input_t *in, const cf_sched_plan_t *p, cf_sim_result_t *res) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, nl = cf_cost_n_links(c);
  if (p->n_reqs != n || p->n_layers != L || p->n_devices != nd || p->n_links != nl)
    return cf_seterr(CF_EINVAL, "invalid plan (%s): made for %d requests, %d layers, %d devices,"
                     " %d links; input has %d, %d, %d, %d", cf_policy_name(p->policy),
                     p->n_reqs, p->n_layers, p->n_devices, p->n_links, n, L, nd, nl);
  size_t cells = 0;
  for (int r = 0; r < n; r++) {
    if (p->n_chunks[r] != cf_cost_chunks(c, in->reqs[r].prefix_tokens) ||
        p->h_off[r] != cells / (size_t)L)
      return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d has %d chunks, expected %d",
                       cf_policy_name(p->policy), r, p->n_chunks[r],
                       cf_cost_chunks(c, in->reqs[r].prefix_tokens));
    if (p->device[r] < 0 || p->device[r] >= nd)
      return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d on device %d of %d",
                       cf_policy_name(p->policy), r, p->device[r], nd);
    if (in->reqs[r].device >= 0 && p->device[r] != in->reqs[r].device)
      return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d pinned to device %d, planned "
                       "on %d", cf_policy_name(p->policy), r, in->reqs[r].device, p->device[r]);
    for (int ch = 0; ch < p->n_chunks[r]; ch++)
      if (p->h[p->h_off[r] + ch] > L)
        return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d chunk %d: h = %d > L = %d",
                         cf_policy_name(p->policy), r, ch, p->h[p->h_off[r] + ch], L);
    cells += (size_t)p->n_chunks[r] * L;
  }
  int rc;
  if ((rc = cf__need((void **)&res->cell_fin_, &res->cap_cells_, cells ? cells : 1,
                     sizeof(double))))
    return rc;
  /* cell_pmax_ shares cap_cells_: grow it to the same size. */
  {
    double *q = realloc(res->cell_pmax_, (res->cap_cells_) * sizeof(double));
    if (!q) return cf_seterr(CF_ENOMEM, "simulator: %zu cells", cells);
    res->cell_pmax_ = q;
  }
  if ((rc = cf__need((void **)&res->kp_, &res->cap_kp_, (size_t)(n ? n : 1) * L,
                     sizeof(int32_t))))
    return rc;
  if (res->cap_reqs_ < (size_t)n || !res->finish_s) {
    size_t m = n ? (size_t)n : 1;
    double *a = realloc(res->finish_s, m * sizeof *a);
    if (a) res->finish_s = a;
    double *b = realloc(res->restore_s, m * sizeof *b);
    if (b) res->restore_s = b;
    double *t = realloc(res->ttft_s, m * sizeof *t);
    if (t) res->ttft_s = t;
    if (!a || !b || !t) return cf_seterr(CF_ENOMEM, "simulator: %d requests", n);
    res->cap_reqs_ = m;
  }
  double *fin = res->cell_fin_, *pmax = res->cell_pmax_;
  int32_t *kp = res->kp_;
  for (size_t i = 0; i < cells; i++) fin[i] = -1;
  memset(kp, 0, (size_t)n * L * sizeof *kp);

  double freec[64], freel[64], busyc = 0, busyl = 0;
  double *fc = nd <= 64 ? freec : calloc((size_t)nd, sizeof *fc);
  double *fl = nl <= 64 ? freel : calloc((size_t)nl, sizeof *fl);
  if (!fc || !fl) {
    if (fc != freec) free(fc);
    return cf_seterr(CF_ENOMEM, "simulator: %d devices", nd);
  }
  for (int d = 0; d < nd; d++) fc[d] = 0;
  for (int k = 0; k < nl; k++) fl[k] = 0;
  int64_t ncomp = 0, nload = 0;
  rc = 0;

  /* Pass 1 (links), pass 2 (compute streams): ops of a stream are in plan order in ops[]. */
  for (int pass = 0; pass < 2 && !rc; pass++) {
    for (size_t i = 0; i < p->n_ops && !rc; i++) {
      const cf_sched_op_t *o = &p->ops[i];
      if (o->kind != CF_OP_COMPUTE && o->kind != CF_OP_LOAD) {
        rc = cf__bad_op(p, i, "unknown kind");
        break;
      }
      if ((o->kind == CF_OP_LOAD) != (pass == 0)) continue;
      if (o->req < 0 || o->req >= n) { rc = cf__bad_op(p, i, "no such request"); break; }
      int r = o->req, nc = p->n_chunks[r];
      if (o->c0 < 0 || o->c0 >= o->c1 || o->c1 > nc || o->l0 < 0 || o->l0 >= o->l1 ||
          o->l1 > L) {
        rc = cf__bad_op(p, i, "empty or out-of-range rectangle");
        break;
      }
      const uint16_t *h = p->h + p->h_off[r];
      double *rf = fin + p->h_off[r] * L; /* request r's cells, layer-major: [l * nc + c] */
      double *rp = pmax + p->h_off[r] * L;
      const cf_sched_req_t *q = &in->reqs[r];
      double t0 = c->chunk_tokens * (double)o->c0;
      double tok = (double)cf_cost_tok(c, q->prefix_tokens, o->c1) - t0;
      double start, dur;
      if (pass == 0) {
        int k = cf_cost_link_of(c, p->device[r]);
        if (o->stream != k) { rc = cf__bad_op(p, i, "load on another device's link"); break; }
        start = fmax(fl[k], q->arrival_s);
        dur = cf_cost_load(c, tok, o->l1 - o->l0);
        fl[k] = start + dur;
        busyl += dur;
        for (int l = o->l0; l < o->l1 && !rc; l++)
          for (int ch = o->c0; ch < o->c1; ch++) {
            if (l < h[ch]) { rc = cf__bad_op(p, i, "loads a cell the staircase computes"); break; }
            if (rf[l * nc + ch] >= 0) { rc = cf__bad_op(p, i, "cell loaded twice"); break; }
            rf[l * nc + ch] = start + dur;
          }
        nload += (int64_t)(o->c1 - o->c0) * (o->l1 - o->l0);
        continue;
      }
      int d = p->device[r], l = o->l0;
      if (o->stream != d) { rc = cf__bad_op(p, i, "compute on another device"); break; }
      if (o->l1 != l + 1) { rc = cf__bad_op(p, i, "a compute step spans one layer"); break; }
      double dep = q->arrival_s;
      for (int ch = o->c0; ch < o->c1; ch++) {
        if (l >= h[ch]) { rc = cf__bad_op(p, i, "computes a cell the staircase loads"); break; }
        if (l > 0) {
          double f = rf[(l - 1) * nc + ch];
          if (f < 0) { rc = cf__bad_op(p, i, "input (chunk, layer-1) not computed before it"); break; }
          if (f > dep) dep = f;
        }
      }
      if (rc) break;
      if (o->c0 > 0) { /* every (c' < c0, l) present */
        int32_t *kk = &kp[(size_t)r * L + l];
        double *lf = rf + (size_t)l * nc, *lp = rp + (size_t)l * nc;
        while (*kk < nc && lf[*kk] >= 0) {
          lp[*kk] = fmax(*kk ? lp[*kk - 1] : 0.0, lf[*kk]);
          (*kk)++;
        }
        if (*kk < o->c0) {
          rc = cf__bad_op(p, i, "an earlier chunk at this layer is computed later on the same "
                                "stream or never (deadlock)");
          break;
        }
        if (lp[o->c0 - 1] > dep) dep = lp[o->c0 - 1];
      }
      start = fmax(fc[d], dep);
      dur = cf_cost_step(c, t0, tok);
      fc[d] = start + dur;
      busyc += dur;
      for (int ch = o->c0; ch < o->c1; ch++) {
        if (rf[l * nc + ch] >= 0) { rc = cf__bad_op(p, i, "cell computed twice"); break; }
        rf[l * nc + ch] = start + dur;
      }
      ncomp += o->c1 - o->c0;
    }
  }
  if (fc != freec) free(fc);
  if (fl != freel) free(fl);
  if (rc) return rc;

  double mk = 0, sum_ttft = 0, sum_rest = 0;
  for (int r = 0; r < n; r++) {
    int nc = p->n_chunks[r];
    const double *rf = fin + p->h_off[r] * L;
    double f = in->reqs[r].arrival_s;
    for (size_t i = 0; i < (size_t)nc * L; i++) {
      if (rf[i] < 0)
        return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d chunk %zu layer %zu is "
                         "neither computed nor loaded", cf_policy_name(p->policy), r,
                         i % (size_t)nc, i / (size_t)nc);
      if (rf[i] > f) f = rf[i];
    }
    res->finish_s[r] = f;
    res->restore_s[r] = f - in->reqs[r].arrival_s;
    res->ttft_s[r] =
        res->restore_s[r] + cf_cost_prefill(c, in->reqs[r].prefix_tokens, in->reqs[r].new_tokens);
    sum_ttft += res->ttft_s[r];
    sum_rest += res->restore_s[r];
    if (f > mk) mk = f;
  }
  res->n_reqs = n;
  res->makespan_s = mk;
  res->mean_ttft_s = n ? sum_ttft / n : 0;
  res->mean_restore_s = n ? sum_rest / n : 0;
  res->compute_util = mk > 0 ? busyc / (nd * mk) : 0;
  res->link_util = mk > 0 ? busyl / (nl * mk) : 0;
  res->cells_computed = ncomp; /* compute ops are one layer high: chunks = cells */
  res->cells_loaded = nload;
  /* percentiles: sort a copy in the pmax scratch (it is free now) */
  double *tmp = n <= (int)res->cap_cells_ ? res->cell_pmax_ : malloc((size_t)n * sizeof *tmp);
  if (!tmp) return cf_seterr(CF_ENOMEM, "simulator: percentiles of %d requests", n);
  memcpy(tmp, res->ttft_s, (size_t)n * sizeof *tmp);
  qsort(tmp, (size_t)n, sizeof *tmp, cf__cmp_dbl);
  res->p50_ttft_s = cf__pct(tmp, n, 0.50);
  res->p95_ttft_s = cf__pct(tmp, n, 0.95);
  res->p99_ttft_s = cf__pct(tmp, n, 0.99);
  if (tmp != res->cell_pmax_) free(tmp);
  return 0;
}
