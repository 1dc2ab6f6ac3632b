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
#include <stdio.h>
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
  free(res->cell_hfin_);
  free(res->cell_dev_);
  free(res->sidx_);
  free(res->cell_pres_);
  free(res->poff_);
  free(res->hid_);
  free(res->op_start_s);
  free(res->op_end_s);
  memset(res, 0, sizeof *res);
}

void cf_sim_result_trim(cf_sim_result_t *res) {
  free(res->cell_fin_);
  free(res->cell_pmax_);
  free(res->kp_);
  free(res->cell_hfin_);
  free(res->cell_dev_);
  free(res->cell_pres_);
  free(res->poff_);
  free(res->hid_);
  res->cell_pres_ = NULL;
  res->poff_ = NULL;
  res->hid_ = NULL;
  res->cap_pres_ = res->cap_poff_ = res->cap_hid_ = 0;
  res->cell_fin_ = res->cell_pmax_ = res->cell_hfin_ = NULL;
  res->cell_dev_ = NULL;
  res->kp_ = NULL;
  res->cap_cells_ = res->cap_kp_ = res->cap_help_ = 0;
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

/* Simulation state shared by the op steps. */
typedef struct {
  const cf_sched_input_t *in;
  const cf_sched_plan_t *p;
  const cf_sched_cost_t *c;
  int L;
  double *fin, *pmax, *hfin; /* hfin NULL: no help in this plan */
  int16_t *cdev;
  double *pres; /* NULL: no send to a helper; else arrival on each device, of requests ... */
  size_t *poff; /* ... with such sends: pres[poff[r] + (cell in r) * nd + device] */
  double *hid;  /* NULL: no pipeline stages; else [h_off[r] + chunk]: boundary hidden loaded */
  int nd;
  int32_t *kp;
  double *fc, *fp; /* compute and peer streams: free at */
  double busyc, busyp;
  int64_t ncomp, nhelp;
  const char *wait; /* why the last op returned "waiting" */
  double *ot0, *ot1; /* NULL, or per-op start / end (res->record_ops) */
} cf__simst_t;

/* Is cell (l, ch) of the request with cells rf computed, and on which device? */
static inline int cf__computed_on(const cf__simst_t *s, size_t cell, int owner) {
  if (s->hfin) return s->cdev[cell];
  return s->fin[cell] >= 0 ? owner : -1;
}
static inline double cf__computed_at(const cf__simst_t *s, size_t cell) {
  return s->hfin ? s->hfin[cell] : s->fin[cell];
}

/* Run compute or send op i if its inputs are known. Returns 1 (ran), 0 (waits: s->wait says
 * on what) or CF_EINVAL (the plan is invalid). */
static int cf__step(cf__simst_t *s, size_t i) {
  const cf_sched_plan_t *p = s->p;
  const cf_sched_cost_t *c = s->c;
  const cf_sched_op_t *o = &p->ops[i];
  int r = o->req, L = s->L, nc = p->n_chunks[r], d = p->device[r], l = o->l0;
  const uint16_t *h = p->h + p->h_off[r];
  size_t base = p->h_off[r] * L; /* request r's cells, layer-major: [l * nc + c] */
  double *rf = s->fin + base, *rp = s->pmax + base;
  const cf_sched_req_t *q = &s->in->reqs[r];
  double t0 = c->chunk_tokens * (double)o->c0;
  double tok = (double)cf_cost_tok(c, q->prefix_tokens, o->c1) - t0;
  double dep = q->arrival_s;
  int dv = o->stream;
  if (o->kind == CF_OP_SEND) {
    if (dv == d) return cf__bad_op(p, i, "send from the request's own device");
    int to = o->dst;
    for (int ll = o->l0; ll < o->l1; ll++)
      for (int ch = o->c0; ch < o->c1; ch++) {
        size_t cell = base + (size_t)ll * nc + ch;
        if (ll >= h[ch]) return cf__bad_op(p, i, "sends a cell the staircase loads");
        int on = cf__computed_on(s, cell, d);
        if (on < 0) { s->wait = "a sent cell is not computed yet"; return 0; }
        if (on != dv) return cf__bad_op(p, i, "sends a cell computed on another device");
        if ((to == d ? s->fin[cell] : s->pres[s->poff[r] + (cell - base) * s->nd + to]) >= 0)
          return cf__bad_op(p, i, "cell sent twice to the same device");
        dep = fmax(dep, s->hfin[cell]);
      }
    double start = fmax(s->fp[dv], dep), dur = cf_cost_send(c, tok, o->l1 - o->l0);
    s->fp[dv] = start + dur;
    s->busyp += dur;
    if (s->ot0) { s->ot0[i] = start; s->ot1[i] = start + dur; }
    for (int ll = o->l0; ll < o->l1; ll++)
      for (int ch = o->c0; ch < o->c1; ch++) {
        size_t cell = base + (size_t)ll * nc + ch;
        if (to == d) s->fin[cell] = start + dur;
        else s->pres[s->poff[r] + (cell - base) * s->nd + to] = start + dur;
      }
    return 1;
  }
  if (o->l1 != l + 1) return cf__bad_op(p, i, "a compute step spans one layer");
  if (l == 0 && cf_cost_stage(c, d) > 0) { /* a later stage's input: the stored hidden state */
    if (dv != d)
      return cf__bad_op(p, i, "a helper computes the first layer of a pipeline stage (its "
                              "boundary hidden states load only to the request's device)");
    for (int ch = o->c0; ch < o->c1; ch++) {
      double t = s->hid[p->h_off[r] + ch];
      if (t < 0) return cf__bad_op(p, i, "the boundary hidden state of a chunk is never loaded");
      dep = fmax(dep, t);
    }
  }
  for (int ch = o->c0; ch < o->c1; ch++) {
    if (l >= h[ch]) return cf__bad_op(p, i, "computes a cell the staircase loads");
    if (l > 0) { /* the hidden input: computed on this very device */
      size_t cell = base + (size_t)(l - 1) * nc + ch;
      int on = cf__computed_on(s, cell, d);
      if (on < 0) { s->wait = "input (chunk, layer-1) not computed before it"; return 0; }
      if (on != dv)
        return cf__bad_op(p, i, "input (chunk, layer-1) computed on another device (hidden "
                                "states are not sent)");
      dep = fmax(dep, cf__computed_at(s, cell));
    }
  }
  if (o->c0 > 0 && dv == d) { /* every (c' < c0, l) present on the request's device */
    int32_t *kk = &s->kp[(size_t)r * L + l];
    double *lf = rf + (size_t)l * nc, *lp = rp + (size_t)l * nc;
    while (*kk < nc && lf[*kk] >= 0) {
      lp[*kk] = fmax(*kk ? lp[*kk - 1] : 0.0, lf[*kk]);
      (*kk)++;
    }
    if (*kk < o->c0) {
      s->wait = "an earlier chunk at this layer is not present yet";
      return 0;
    }
    dep = fmax(dep, lp[o->c0 - 1]);
  } else if (o->c0 > 0) { /* a helper attends to a prefix it computed or was sent */
    for (int ch = 0; ch < o->c0; ch++) {
      size_t cell = base + (size_t)l * nc + ch;
      if (l >= h[ch])
        return cf__bad_op(p, i, "a helper needs an earlier chunk that is loaded (loads reach "
                                "only the request's device)");
      double t = s->cdev[cell] == dv                       ? s->hfin[cell]
                 : s->pres && s->poff[r] != (size_t)-1 ? s->pres[s->poff[r] + (cell - base) * s->nd + dv]
                                                        : -1;
      if (t < 0) {
        s->wait = "an earlier chunk at this layer is not on this helper yet (computed by it or "
                  "sent to it)";
        return 0;
      }
      dep = fmax(dep, t);
    }
  }
  double start = fmax(s->fc[dv], dep), dur = cf_cost_step(c, t0, tok);
  s->fc[dv] = start + dur;
  s->busyc += dur;
  if (s->ot0) { s->ot0[i] = start; s->ot1[i] = start + dur; }
  for (int ch = o->c0; ch < o->c1; ch++) {
    size_t cell = base + (size_t)l * nc + ch;
    if (cf__computed_on(s, cell, d) >= 0) return cf__bad_op(p, i, "cell computed twice");
    if (s->hfin) {
      s->hfin[cell] = start + dur;
      s->cdev[cell] = (int16_t)dv;
    }
    if (dv == d) rf[(size_t)l * nc + ch] = start + dur; /* help is present after its send */
  }
  s->ncomp += o->c1 - o->c0;
  if (dv != d) s->nhelp += o->c1 - o->c0;
  return 1;
}

/* Means and percentiles of the first n requests' restore_s / ttft_s; sets n_reqs. */
static int cf__summarise(cf_sim_result_t *res, int n) {
  double sum_ttft = 0, sum_rest = 0;
  for (int r = 0; r < n; r++) {
    sum_ttft += res->ttft_s[r];
    sum_rest += res->restore_s[r];
  }
  res->n_reqs = n;
  res->mean_ttft_s = n ? sum_ttft / n : 0;
  res->mean_restore_s = n ? sum_rest / n : 0;
  /* percentiles: sort a copy in the pmax scratch (it is free now) */
  double *tmp = n <= (int)res->cap_cells_ && res->cell_pmax_ ? res->cell_pmax_
                                                             : malloc((size_t)(n ? n : 1) * sizeof *tmp);
  if (!tmp) return cf_seterr(CF_ENOMEM, "simulator: percentiles of %d requests", n);
  memcpy(tmp, res->ttft_s, (size_t)n * sizeof *tmp);
  qsort(tmp, (size_t)n, sizeof *tmp, cf__cmp_dbl);
  res->p50_ttft_s = cf__pct(tmp, n, 0.50);
  res->p95_ttft_s = cf__pct(tmp, n, 0.95);
  res->p99_ttft_s = cf__pct(tmp, n, 0.99);
  if (tmp != res->cell_pmax_) free(tmp);
  return 0;
}

/* 1. The plan against the input: sizes, chunk counts, devices, heights. *cells_out: the
 * cells of the batch. 0 or CF_EINVAL. */
static int cf__check_shape(const cf_sched_input_t *in, const cf_sched_plan_t *p,
                           size_t *cells_out) {
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
    for (int ch = 0; ch < p->n_chunks[r]; ch++) {
      if (p->h[p->h_off[r] + ch] > L)
        return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d chunk %d: h = %d > L = %d",
                         cf_policy_name(p->policy), r, ch, p->h[p->h_off[r] + ch], L);
      if (cf_sched_chunk_hole(&in->reqs[r], ch) && p->h[p->h_off[r] + ch] != L)
        return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d chunk %d is a hole (stored in no "
                         "tier) but h = %d: it must be computed at all %d layers",
                         cf_policy_name(p->policy), r, ch, p->h[p->h_off[r] + ch], L);
    }
    cells += (size_t)p->n_chunks[r] * L;
  }
  *cells_out = cells;
  return 0;
}

/* 2. Static checks of every op. *help_out: some cell is computed off its request's device;
 * *fwd_out: some helper sends to another helper. 0 or CF_EINVAL. */
static int cf__check_ops(const cf_sched_input_t *in, const cf_sched_plan_t *p, int *help_out,
                         int *fwd_out) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices;
  int help = 0, fwd = 0;
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (o->kind != CF_OP_COMPUTE && o->kind != CF_OP_LOAD && o->kind != CF_OP_SEND)
      return cf__bad_op(p, i, "unknown kind");
    if (o->req < 0 || o->req >= n) return cf__bad_op(p, i, "no such request");
    int d = p->device[o->req];
    int hidden = o->kind == CF_OP_LOAD && o->l0 == -1 && o->l1 == 0;
    if (hidden && cf_cost_stage(c, d) == 0)
      return cf__bad_op(p, i, "a boundary hidden-state load for a first pipeline stage");
    if (o->c0 < 0 || o->c0 >= o->c1 || o->c1 > p->n_chunks[o->req] ||
        (!hidden && (o->l0 < 0 || o->l0 >= o->l1 || o->l1 > L)))
      return cf__bad_op(p, i, "empty or out-of-range rectangle");
    if (o->kind == CF_OP_LOAD) {
      if (o->stream != cf_cost_link_of(c, d)) return cf__bad_op(p, i, "load on another device's link");
      continue;
    }
    if (o->stream < 0 || o->stream >= nd) return cf__bad_op(p, i, "no such device");
    if (cf_cost_stage(c, o->stream) != cf_cost_stage(c, d))
      return cf__bad_op(p, i, "a device of another pipeline stage (it holds other layers)");
    if (o->kind == CF_OP_SEND && o->stream == d)
      return cf__bad_op(p, i, "send from the request's own device");
    if (o->kind == CF_OP_SEND && (o->dst < 0 || o->dst >= nd || o->dst == o->stream))
      return cf__bad_op(p, i, "send to no such device or to itself");
    if (o->kind == CF_OP_SEND && o->dst != d) fwd = 1;
    if (o->kind == CF_OP_SEND || o->stream != d) {
      if (!cf_cost_has_peer(c))
        return cf__bad_op(p, i, o->kind == CF_OP_SEND ? "a send without a peer link (peer_Bps = 0)"
                                                      : "compute on another device without a "
                                                        "peer link (peer_Bps = 0)");
      help = 1;
    }
  }
  *help_out = help;
  *fwd_out = fwd;
  return 0;
}

/* A windowed layer's cells no token needs (cf_sched_window_skip) are present from the start
 * without any op: their finish time is -0.0 (>= 0 for every wait, told apart by its sign where
 * a load of one is checked). */
static inline int cf__skipped_at(double t) { return t == 0 && signbit(t); }
static int cf__mark_skipped(const cf_sched_input_t *in, const cf_sched_plan_t *p, cf_sim_result_t *res) {
  const cf_sched_cost_t *c = &in->cost;
  int L = c->n_layers, any = 0;
  res->cells_skipped = 0;
  for (int l = 0; l < L && !any; l++) any = cf_cost_layer_windowed(c, l);
  if (!any) return 0;
  int32_t maxc = 1;
  for (int r = 0; r < in->n_reqs; r++) maxc = p->n_chunks[r] > maxc ? p->n_chunks[r] : maxc;
  uint8_t *sk = malloc((size_t)maxc);
  if (!sk) return cf_seterr(CF_ENOMEM, "simulator: window mask of %d chunks", maxc);
  for (int r = 0; r < in->n_reqs; r++) {
    int32_t nc = p->n_chunks[r];
    double *rf = res->cell_fin_ + p->h_off[r] * L;
    for (int l = 0; l < L; l++)
      if (cf_sched_window_skip(c, in->reqs[r].prefix_tokens, p->h + p->h_off[r], nc, l, sk))
        for (int32_t ch = 0; ch < nc; ch++)
          if (sk[ch]) {
            rf[(size_t)l * nc + ch] = -0.0;
            res->cells_skipped++;
          }
  }
  free(sk);
  return 0;
}

/* 3. Scratch sized for the plan and reset (a cell not present yet: -1). *pp_out: pipeline
 * stages. 0 or CF_ENOMEM. */
static int cf__sim_scratch(const cf_sched_input_t *in, const cf_sched_plan_t *p,
                           cf_sim_result_t *res, size_t cells, int help, int fwd, int *pp_out) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices;
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
  if (help) { /* 10 more bytes per cell, only for plans with cross-device compute */
    size_t cap = res->cap_help_;
    if ((rc = cf__need((void **)&res->cell_hfin_, &cap, cells ? cells : 1, sizeof(double))))
      return rc;
    size_t cap2 = res->cap_help_;
    if ((rc = cf__need((void **)&res->cell_dev_, &cap2, cells ? cells : 1, sizeof(int16_t))))
      return rc;
    res->cap_help_ = cap < cap2 ? cap : cap2;
  }
  size_t npres = 0;
  if (fwd) { /* requests whose helpers send to each other: each cell's arrival on each device */
    if ((rc = cf__need((void **)&res->poff_, &res->cap_poff_, (size_t)n, sizeof(size_t)))) return rc;
    for (int r = 0; r < n; r++) res->poff_[r] = (size_t)-1;
    for (size_t i = 0; i < p->n_ops; i++) {
      const cf_sched_op_t *o = &p->ops[i];
      if (o->kind == CF_OP_SEND && o->dst != p->device[o->req]) res->poff_[o->req] = 0;
    }
    for (int r = 0; r < n; r++)
      if (res->poff_[r] == 0) {
        res->poff_[r] = npres;
        npres += (size_t)p->n_chunks[r] * L * nd;
      }
    if (npres > ((size_t)1 << 28))
      return cf_seterr(CF_ENOMEM, "simulator: %zu cell-device pairs of helped requests is too "
                       "many", npres);
    if ((rc = cf__need((void **)&res->cell_pres_, &res->cap_pres_, npres + 1, sizeof(double))))
      return rc;
    for (size_t i = 0; i < npres; i++) res->cell_pres_[i] = -1;
  }
  int pp = cf_cost_stage(c, nd - 1) > 0; /* pipeline stages: boundary hidden states */
  if (pp) {
    size_t nch = cells / (size_t)L;
    if ((rc = cf__need((void **)&res->hid_, &res->cap_hid_, nch + 1, sizeof(double)))) return rc;
    for (size_t i = 0; i < nch; i++) res->hid_[i] = -1;
  }
  if ((rc = cf__need((void **)&res->kp_, &res->cap_kp_, (size_t)(n ? n : 1) * L,
                     sizeof(int32_t))))
    return rc;
  if ((rc = cf__need((void **)&res->sidx_, &res->cap_sidx_, p->n_ops + 4 * (size_t)nd + 2,
                     sizeof(size_t))))
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
  if (res->record_ops && res->cap_opt_ < (p->n_ops ? p->n_ops : 1)) {
    size_t m = p->n_ops ? p->n_ops : 1;
    double *a = realloc(res->op_start_s, m * sizeof *a);
    if (a) res->op_start_s = a;
    double *b = realloc(res->op_end_s, m * sizeof *b);
    if (b) res->op_end_s = b;
    if (!a || !b) return cf_seterr(CF_ENOMEM, "simulator: times of %zu ops", p->n_ops);
    res->cap_opt_ = m;
  }
  double *fin = res->cell_fin_;
  for (size_t i = 0; i < cells; i++) fin[i] = -1;
  if ((rc = cf__mark_skipped(in, p, res))) return rc;
  if (help) {
    for (size_t i = 0; i < cells; i++) res->cell_hfin_[i] = -1;
    for (size_t i = 0; i < cells; i++) res->cell_dev_[i] = -1;
  }
  memset(res->kp_, 0, (size_t)n * L * sizeof *res->kp_);
  *pp_out = pp;
  return 0;
}

/* 4. Op lists of each compute (0..nd-1) and peer (nd..2nd-1) stream, in plan order:
 * sidx[off[s] .. off[s + 1]); head[s] = off[s]. Returns off (head follows it). */
static size_t *cf__stream_lists(const cf_sched_plan_t *p, cf_sim_result_t *res, int nd) {
  int ns = 2 * nd;
  size_t *off = res->sidx_ + p->n_ops, *head = off + ns + 1;
  memset(off, 0, (size_t)(ns + 1) * sizeof *off);
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (o->kind != CF_OP_LOAD) off[(o->kind == CF_OP_SEND ? nd : 0) + o->stream + 1]++;
  }
  for (int k = 0; k < ns; k++) off[k + 1] += off[k];
  for (int k = 0; k < ns; k++) head[k] = off[k];
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (o->kind != CF_OP_LOAD) res->sidx_[head[(o->kind == CF_OP_SEND ? nd : 0) + o->stream]++] = i;
  }
  for (int k = 0; k < ns; k++) head[k] = off[k];
  return off;
}

/* 5. Loads wait for nothing but their link and their request's arrival: every link is timed
 * first, in plan order (fl: each link's free time). 0 or CF_EINVAL. */
static int cf__time_loads(const cf_sched_input_t *in, const cf_sched_plan_t *p,
                          cf_sim_result_t *res, double *fl, double *busyl_out,
                          int64_t *nload_out) {
  const cf_sched_cost_t *c = &in->cost;
  int L = c->n_layers, rc = 0;
  double *fin = res->cell_fin_, busyl = 0;
  int64_t nload = 0;
  for (size_t i = 0; i < p->n_ops && !rc; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    if (o->kind != CF_OP_LOAD) continue;
    int r = o->req, nc = p->n_chunks[r], k = o->stream;
    const uint16_t *h = p->h + p->h_off[r];
    double *rf = fin + p->h_off[r] * L;
    const cf_sched_req_t *q = &in->reqs[r];
    double t0 = c->chunk_tokens * (double)o->c0;
    double tok = (double)cf_cost_tok(c, q->prefix_tokens, o->c1) - t0;
    if (o->l0 == -1) { /* boundary hidden states of chunks the stage computes at layer 0 */
      double start = fmax(fl[k], q->arrival_s), dur = cf_cost_load_hidden(c, tok);
      fl[k] = start + dur;
      busyl += dur;
      if (res->record_ops) { res->op_start_s[i] = start; res->op_end_s[i] = start + dur; }
      for (int ch = o->c0; ch < o->c1 && !rc; ch++) {
        double *t = &res->hid_[p->h_off[r] + ch];
        if (h[ch] == 0) rc = cf__bad_op(p, i, "loads the boundary hidden state of a chunk it does not compute");
        else if (*t >= 0) rc = cf__bad_op(p, i, "boundary hidden state loaded twice");
        else *t = start + dur;
      }
      continue;
    }
    double start = fmax(fl[k], q->arrival_s), dur = cf_sched_load_s(c, q, o->c0, o->c1, o->l1 - o->l0);
    fl[k] = start + dur;
    busyl += dur;
    if (res->record_ops) { res->op_start_s[i] = start; res->op_end_s[i] = start + dur; }
    for (int l = o->l0; l < o->l1 && !rc; l++)
      for (int ch = o->c0; ch < o->c1; ch++) {
        if (l < h[ch]) { rc = cf__bad_op(p, i, "loads a cell the staircase computes"); break; }
        if (rf[l * nc + ch] >= 0 && !cf__skipped_at(rf[l * nc + ch])) { rc = cf__bad_op(p, i, "cell loaded twice"); break; }
        rf[l * nc + ch] = start + dur;
      }
    nload += (int64_t)(o->c1 - o->c0) * (o->l1 - o->l0);
  }
  *busyl_out = busyl;
  *nload_out = nload;
  return rc;
}

/* 6. Compute and peer streams: advance every stream as far as its next op's inputs are known,
 * until all ran. Each stream runs in plan order, so this is an exact event simulation;
 * without help a device's ops wait only on loads and on its own stream (one sweep). A round
 * in which nothing moves is a deadlock: the first stuck op names it. 0 or CF_EINVAL. */
static int cf__run_streams(cf__simst_t *st, const cf_sched_plan_t *p, cf_sim_result_t *res,
                           size_t *off, int ns) {
  size_t *head = off + ns + 1, left = off[ns];
  int rc = 0;
  while (left && !rc) {
    size_t before = left;
    for (int k = 0; k < ns && !rc; k++)
      while (head[k] < off[k + 1]) {
        int st_rc = cf__step(st, res->sidx_[head[k]]);
        if (st_rc < 0) { rc = st_rc; break; }
        if (st_rc == 0) break;
        head[k]++;
        left--;
      }
    if (!rc && left == before) {
      for (int k = 0; k < ns; k++)
        if (head[k] < off[k + 1]) {
          (void)cf__step(st, res->sidx_[head[k]]); /* sets st->wait */
          char why[200];
          snprintf(why, sizeof why, "%s, and it is produced later on the same stream or on one "
                   "stuck behind it, or never (deadlock)", st->wait ? st->wait : "waits");
          rc = cf__bad_op(p, res->sidx_[head[k]], why);
          break;
        }
    }
  }
  return rc;
}

/* 7. Every cell present; per request finish, restore and TTFT; makespan and utilisation. */
static int cf__sim_results(const cf_sched_input_t *in, const cf_sched_plan_t *p,
                           cf_sim_result_t *res, int help, const cf__simst_t *st, double busyl,
                           int64_t nload) {
  const cf_sched_cost_t *c = &in->cost;
  int n = in->n_reqs, L = c->n_layers, nd = c->n_devices, nl = cf_cost_n_links(c);
  const double *fin = res->cell_fin_;
  double mk = 0;
  for (int r = 0; r < n; r++) {
    int nc = p->n_chunks[r];
    const double *rf = fin + p->h_off[r] * L;
    double f = in->reqs[r].arrival_s;
    for (size_t i = 0; i < (size_t)nc * L; i++) {
      if (rf[i] < 0 && help && res->cell_dev_[p->h_off[r] * L + i] >= 0)
        return cf_seterr(CF_EINVAL, "invalid plan (%s): request %d chunk %zu layer %zu is "
                         "computed on device %d but never sent to device %d",
                         cf_policy_name(p->policy), r, i % (size_t)nc, i / (size_t)nc,
                         res->cell_dev_[p->h_off[r] * L + i], p->device[r]);
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
    if (f > mk) mk = f;
  }
  res->makespan_s = mk;
  res->compute_util = mk > 0 ? st->busyc / (nd * mk) : 0;
  res->link_util = mk > 0 ? busyl / (nl * mk) : 0;
  res->peer_util = mk > 0 ? st->busyp / (nd * mk) : 0;
  res->cells_helped = st->nhelp;
  res->cells_computed = st->ncomp; /* compute ops are one layer high: chunks = cells */
  res->cells_loaded = nload;
  return cf__summarise(res, n);
}

int cf_sim_run(const cf_sched_input_t *in, const cf_sched_plan_t *p, cf_sim_result_t *res) {
  const cf_sched_cost_t *c = &in->cost;
  int nd = c->n_devices, nl = cf_cost_n_links(c), help = 0, fwd = 0, pp = 0, rc;
  size_t cells = 0;
  if ((rc = cf__check_shape(in, p, &cells)) || (rc = cf__check_ops(in, p, &help, &fwd)) ||
      (rc = cf__sim_scratch(in, p, res, cells, help, fwd, &pp)))
    return rc;
  size_t *off = cf__stream_lists(p, res, nd);
  double freec[64], freep[64], freel[64], busyl = 0;
  double *fc = nd <= 64 ? freec : calloc((size_t)nd, sizeof *fc);
  double *fp = nd <= 64 ? freep : calloc((size_t)nd, sizeof *fp);
  double *fl = nl <= 64 ? freel : calloc((size_t)nl, sizeof *fl);
  int64_t nload = 0;
  if (!fc || !fl || !fp) {
    rc = cf_seterr(CF_ENOMEM, "simulator: %d devices", nd);
    goto out;
  }
  for (int d = 0; d < nd; d++) fc[d] = fp[d] = 0;
  for (int k = 0; k < nl; k++) fl[k] = 0;
  cf__simst_t st = {in, p, c, c->n_layers, res->cell_fin_, res->cell_pmax_,
                    help ? res->cell_hfin_ : NULL, help ? res->cell_dev_ : NULL,
                    fwd ? res->cell_pres_ : NULL, fwd ? res->poff_ : NULL, pp ? res->hid_ : NULL,
                    nd, res->kp_, fc, fp, 0, 0, 0, 0, NULL,
                    res->record_ops ? res->op_start_s : NULL, res->record_ops ? res->op_end_s : NULL};
  if (!(rc = cf__time_loads(in, p, res, fl, &busyl, &nload)) &&
      !(rc = cf__run_streams(&st, p, res, off, 2 * nd)))
    rc = cf__sim_results(in, p, res, help, &st, busyl, nload);
out:
  if (fc != freec) free(fc);
  if (fp != freep) free(fp);
  if (fl != freel) free(fl);
  return rc;
}

int cf_sim_fold_stages(const cf_sched_input_t *in, int stages, cf_sim_result_t *res) {
  int n = res->n_reqs;
  if (stages < 1 || n % stages || in->n_reqs != n)
    return cf_seterr(CF_EINVAL, "fold stages: %d results, %d requests, %d stages", n,
                     in->n_reqs, stages);
  for (int i = 0; i < n / stages; i++) {
    const cf_sched_req_t *q = &in->reqs[i * stages];
    double f = 0;
    for (int s = 0; s < stages; s++) f = fmax(f, res->finish_s[i * stages + s]);
    res->finish_s[i] = f;
    res->restore_s[i] = f - q->arrival_s;
    /* the new tokens' prefill passes the stages one after the other */
    res->ttft_s[i] = res->restore_s[i] + stages * cf_cost_prefill(&in->cost, q->prefix_tokens,
                                                                   q->new_tokens);
  }
  return cf__summarise(res, n / stages);
}
