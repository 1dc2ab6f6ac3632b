/* Exact plans for tiny batches (see cf_sched_int.h: cf__exact_plan).
 *
 * Why it exists: on instances of a handful of cells the best plan is often one the local
 * search (cf_refine.c) cannot express or reach in one move: ops of different requests
 * interleaved on one stream (a short compute of a late arrival between two of an earlier
 * request), a staircase that rises towards later chunks together with a load grouping that
 * puts the small load under it first, or two requests changed at once. Measured against the
 * test's independent solver (test_sched_oracle) those were 0.1-0.3% of random tiny instances
 * at 1.02-1.12x the optimum. For such batches the whole plan space is small enough to search.
 *
 * Search: depth first over schedules built in order of op start time. A node appends one op
 * to the compute stream or the link that starts no earlier than the previous op (ties:
 * compute first), so every plan cf_sim accepts on one device and one link has exactly one
 * path (its ops sorted by start; an op's inputs finish before it starts). A COMPUTE is a run
 * of chunks at a layer whose lower cells are computed and whose earlier chunks at that layer
 * are present; a LOAD is any rectangle of cells not yet placed. A cell above a loaded one can
 * only be loaded (its compute would need the hidden state below); a hole's cell (a chunk stored
 * nowhere, cf_sched.h) can only be computed. Pruning: the makespan so
 * far, and a lower bound on the rest: the undecided cells split fractionally between the two
 * streams (each cell's marginal compute or link seconds, the per-step gamma and per-op latency
 * left out), cheapest compute per link second first. Nodes are capped (the cap derives from
 * the refinement budget), so the planning time stays bounded: past the cap the best plan
 * found so far (or the incumbent) stands. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

enum { EX_R = 4, EX_CH = 8, EX_L = 8, EX_OPS = 2 * CF__EXACT_CELLS };

typedef struct {
  int8_t kind, r, c0, c1, l0, l1;
} ex_op_t;

typedef struct {
  const cf_sched_input_t *in;
  int n, L, ncells, nc[EX_R], base[EX_R];
  double arr[EX_R];
  double step[EX_R][EX_CH][EX_CH + 1]; /* COMPUTE of chunks [c0, c1) at one layer */
  /* per cell, two lower bounds on what it adds to its stream: [0] its marginal compute or link
   * seconds (gamma, latency left out); [1] those plus its share of one gamma (a COMPUTE covers
   * at most the request's chunks at one layer) or one latency (a LOAD at most all its cells) */
  double x[2][CF__EXACT_CELLS], y[2][CF__EXACT_CELLS];
  int rank[2][CF__EXACT_CELLS]; /* cells in increasing x / y: the bound's fill order */
  int8_t cr[CF__EXACT_CELLS], cl[CF__EXACT_CELLS], cch[CF__EXACT_CELLS]; /* cell -> r, l, c */
  int8_t st[CF__EXACT_CELLS]; /* 0 free, 1 loaded, 2 computed */
  int8_t hole[CF__EXACT_CELLS]; /* a hole's cell (cf_sched.h): computed, never loaded */
  double fin[CF__EXACT_CELLS];
  ex_op_t ops[EX_OPS], best_ops[EX_OPS];
  int nops, best_nops;
  double best;
  long nodes, cap;
} ex_t;

static inline int ex_cell(const ex_t *e, int r, int l, int ch) { return e->base[r] + l * e->nc[r] + ch; }

/* The fractional split of the free cells between the compute stream (free from cf) and the
 * link (free from lf): cells go to the compute stream in rank order while that lowers the
 * later of the two ends; cells above a loaded cell stay on the link. Y: all free cells' link
 * seconds. *X: compute seconds of every cell that could be computed. */
static double ex_split(const ex_t *e, int k, double cf, double lf, double Y, double *Xall) {
  const double *x = e->x[k], *y = e->y[k];
  double X = 0, Xs = 0;
  for (int i = 0; i < e->ncells; i++) /* free hole cells: on the compute stream whatever */
    if (!e->st[i] && e->hole[i]) X += x[i];
  Xs = X;
  double T = fmax(cf + X, lf + Y);
  int crossed = 0;
  for (int j = 0; j < e->ncells; j++) {
    int i = e->rank[k][j], r = e->cr[i], ch = e->cch[i], loaded_below = 0;
    if (e->st[i] || e->hole[i]) continue;
    for (int m = 0; m < e->cl[i] && !loaded_below; m++) loaded_below = e->st[ex_cell(e, r, m, ch)] == 1;
    if (loaded_below) continue;
    Xs += x[i];
    if (crossed) continue;
    double A = cf + X, B = lf + Y;
    if (A + x[i] >= B - y[i]) { /* the balance point lies inside this cell */
      double f = (B - A) / (x[i] + y[i]);
      if (f > 0) T = fmin(T, A + f * x[i]);
      crossed = 1;
      continue;
    }
    X += x[i];
    Y -= y[i];
    T = fmin(T, fmax(cf + X, lf + Y));
  }
  *Xall = Xs;
  return T;
}

/* Lower bound on the makespan of any completion, the larger of two: (a) the best of (every
 * free cell loaded: one latency at least), (every computable cell computed: one gamma at least;
 * cells above loads still loaded) and (some of each: one gamma and one latency, the fractional
 * split); (b) the fractional split with each cell's share of gamma and latency (ex_t.x[1]). */
static double ex_bound(const ex_t *e, double cf, double lf, double done) {
  const cf_sched_cost_t *c = &e->in->cost;
  double amin = INFINITY, Y = 0, Y1 = 0, Yforced = 0;
  int holes = 0; /* free hole cells: "every cell loaded" is no completion */
  for (int i = 0; i < e->ncells; i++)
    if (!e->st[i]) {
      amin = fmin(amin, e->arr[e->cr[i]]);
      holes |= e->hole[i];
      Y += e->y[0][i];
      Y1 += e->y[1][i];
      for (int m = 0; m < e->cl[i]; m++)
        if (e->st[ex_cell(e, e->cr[i], m, e->cch[i])] == 1) { Yforced += e->y[0][i]; break; }
    }
  if (amin == INFINITY) return done;
  cf = fmax(cf, amin);
  lf = fmax(lf, amin);
  double Xall, T = ex_split(e, 0, cf + c->gamma_s, lf + c->link_latency_s, Y, &Xall);
  if (!holes) T = fmin(T, fmax(cf, lf + Y + c->link_latency_s)); /* all loaded */
  if (Yforced == 0) T = fmin(T, fmax(cf + c->gamma_s + Xall, lf)); /* all computed */
  T = fmax(T, ex_split(e, 1, cf, lf, Y1, &Xall));
  return fmax(T, done);
}

static void ex_take(ex_t *e, const ex_op_t *op, int8_t st, double end) {
  for (int l = op->l0; l < op->l1; l++)
    for (int ch = op->c0; ch < op->c1; ch++) {
      int i = ex_cell(e, op->r, l, ch);
      e->st[i] = st;
      e->fin[i] = end;
    }
  e->ops[e->nops++] = *op;
}

static void ex_untake(ex_t *e, const ex_op_t *op) {
  for (int l = op->l0; l < op->l1; l++)
    for (int ch = op->c0; ch < op->c1; ch++) e->st[ex_cell(e, op->r, l, ch)] = 0;
  e->nops--;
}

static void ex_search(ex_t *e, double cf, double lf, double last, int last_load, double done,
                      int free_cells);

/* Every COMPUTE that can start now on the compute stream. */
static void ex_computes(ex_t *e, double cf, double lf, double last, int last_load, double done,
                        int free_cells) {
  for (int r = 0; r < e->n; r++)
    for (int l = 0; l < e->L; l++) {
      double ready = fmax(cf, e->arr[r]);
      for (int c0 = 0; c0 < e->nc[r]; c0++) {
        if (c0 > 0) { /* chunk c0 - 1 at this layer must be present for runs from c0 on */
          int p = ex_cell(e, r, l, c0 - 1);
          if (!e->st[p]) break;
          ready = fmax(ready, e->fin[p]);
        }
        double start = ready;
        for (int c1 = c0 + 1; c1 <= e->nc[r]; c1++) {
          int i = ex_cell(e, r, l, c1 - 1);
          if (e->st[i]) break;
          if (l > 0) {
            int below = ex_cell(e, r, l - 1, c1 - 1);
            if (e->st[below] != 2) break;
            start = fmax(start, e->fin[below]);
          }
          if (start < last || (start == last && last_load)) continue;
          double end = start + e->step[r][c0][c1];
          ex_op_t op = {CF_OP_COMPUTE, (int8_t)r, (int8_t)c0, (int8_t)c1, (int8_t)l, (int8_t)(l + 1)};
          ex_take(e, &op, 2, end);
          ex_search(e, end, lf, start, 0, fmax(done, end), free_cells - (c1 - c0));
          ex_untake(e, &op);
        }
      }
    }
}

/* Every LOAD rectangle of free cells that can start now on the link. */
static void ex_loads(ex_t *e, double cf, double lf, double last, double done, int free_cells) {
  for (int r = 0; r < e->n; r++) {
    double start = fmax(lf, e->arr[r]);
    if (start < last) continue;
    const cf_sched_req_t *q = &e->in->reqs[r];
    for (int c0 = 0; c0 < e->nc[r]; c0++)
      for (int c1 = c0 + 1; c1 <= e->nc[r]; c1++) {
        /* the rectangle's columns must be free: grow it layer by layer from l0 */
        for (int l0 = 0; l0 < e->L; l0++)
          for (int l1 = l0 + 1; l1 <= e->L; l1++) {
            int ok = 1;
            for (int ch = c0; ch < c1 && ok; ch++)
              ok = !e->st[ex_cell(e, r, l1 - 1, ch)] && !e->hole[ex_cell(e, r, l1 - 1, ch)];
            if (!ok) break;
            double end = start + cf_sched_load_s(&e->in->cost, q, c0, c1, l1 - l0);
            ex_op_t op = {CF_OP_LOAD, (int8_t)r, (int8_t)c0, (int8_t)c1, (int8_t)l0, (int8_t)l1};
            ex_take(e, &op, 1, end);
            ex_search(e, cf, end, start, 1, fmax(done, end), free_cells - (c1 - c0) * (l1 - l0));
            ex_untake(e, &op);
          }
      }
  }
}

static void ex_search(ex_t *e, double cf, double lf, double last, int last_load, double done,
                      int free_cells) {
  if (++e->nodes > e->cap) return;
  if (free_cells == 0) {
    if (done < e->best * (1 - 1e-12)) {
      e->best = done;
      e->best_nops = e->nops;
      memcpy(e->best_ops, e->ops, (size_t)e->nops * sizeof *e->ops);
    }
    return;
  }
  if (ex_bound(e, cf, lf, done) >= e->best * (1 - 1e-12)) return;
  ex_computes(e, cf, lf, last, last_load, done, free_cells);
  ex_loads(e, cf, lf, last, done, free_cells);
}

int cf__exact_applies(const cf_sched_input_t *in) {
  const cf_sched_cost_t *c = &in->cost;
  if (c->n_devices != 1 || in->n_reqs < 1 || in->n_reqs > EX_R || c->n_layers > EX_L) return 0;
  int cells = 0;
  for (int r = 0; r < in->n_reqs; r++) {
    int32_t nc = cf_cost_chunks(c, in->reqs[r].prefix_tokens);
    if (nc > EX_CH) return 0;
    cells += nc * c->n_layers;
  }
  return cells > 0 && cells <= CF__EXACT_CELLS;
}

int cf__exact_plan(const cf_sched_input_t *in, const int *dev, const cf__ref_t *ref,
                   cf_sched_plan_t *best, cf__score_t *score, long max_nodes, long *nodes) {
  const cf_sched_cost_t *c = &in->cost;
  ex_t *e = calloc(1, sizeof *e);
  if (!e) return cf_seterr(CF_ENOMEM, "optimal: exact search");
  e->in = in;
  e->n = in->n_reqs;
  e->L = c->n_layers;
  for (int r = 0; r < e->n; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    e->nc[r] = cf_cost_chunks(c, q->prefix_tokens);
    e->base[r] = e->ncells;
    e->arr[r] = q->arrival_s;
    for (int c0 = 0; c0 < e->nc[r]; c0++)
      for (int c1 = c0 + 1; c1 <= e->nc[r]; c1++) {
        double t0 = (double)cf_cost_tok(c, q->prefix_tokens, c0);
        e->step[r][c0][c1] = cf_cost_step(c, t0, (double)cf_cost_tok(c, q->prefix_tokens, c1) - t0);
      }
    for (int ch = 0; ch < e->nc[r]; ch++)
      for (int l = 0; l < e->L; l++) {
        int i = e->ncells + l * e->nc[r] + ch;
        e->x[0][i] = e->step[r][ch][ch + 1] - c->gamma_s;
        e->y[0][i] = cf_sched_load_s(c, q, ch, ch + 1, 1) - c->link_latency_s;
        e->x[1][i] = e->x[0][i] + c->gamma_s / e->nc[r];
        e->y[1][i] = e->y[0][i] + c->link_latency_s / (e->nc[r] * e->L);
        e->cr[i] = (int8_t)r;
        e->cl[i] = (int8_t)l;
        e->cch[i] = (int8_t)ch;
        e->hole[i] = (int8_t)cf_sched_chunk_hole(q, ch);
        if (e->hole[i]) e->y[1][i] = 0; /* never on the link: no share of a latency */
      }
    e->ncells += e->nc[r] * e->L;
  }
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < e->ncells; i++) { /* rank: increasing x / y (insertion: a few cells) */
      const double *x = e->x[k], *y = e->y[k];
      int *rk = e->rank[k], j = i;
      for (; j > 0 && x[i] * y[rk[j - 1]] < x[rk[j - 1]] * y[i]; j--) rk[j] = rk[j - 1];
      rk[j] = i;
    }
  e->best = score->mk;
  e->cap = max_nodes;
  ex_search(e, 0, 0, 0, 0, 0, e->ncells);
  if (nodes) *nodes = e->nodes;
  int rc = 0;
  if (e->best_nops > 0) { /* beat the incumbent: emit, simulate, keep when it scores better */
    cf_sched_plan_t p;
    cf_sched_plan_init(&p);
    if (!(rc = cf__plan_reset(&p, in, dev, CF_POLICY_OPTIMAL))) {
      int link = cf_cost_link_of(c, dev[0]);
      for (int i = 0; i < e->best_nops && !rc; i++) {
        const ex_op_t *o = &e->best_ops[i];
        rc = cf__plan_op(&p, o->r, (cf_op_kind_t)o->kind, o->kind == CF_OP_LOAD ? link : dev[o->r],
                         o->c0, o->c1, o->l0, o->l1);
        if (o->kind == CF_OP_COMPUTE)
          for (int ch = o->c0; ch < o->c1; ch++)
            if (cf__plan_h(&p, o->r)[ch] < o->l1) cf__plan_h(&p, o->r)[ch] = (uint16_t)o->l1;
      }
    }
    cf_sim_result_t s;
    cf_sim_result_init(&s);
    if (!rc) rc = cf__sim_clipped(in, &p, &s);
    if (!rc) {
      cf__score_t sc = cf__score_of(&s, ref);
      if (cf__score_better(sc, *score)) {
        *score = sc;
        p.est_makespan_s = sc.mk;
        p.sim_evals = best->sim_evals;
        cf__swap_plans(best, &p);
      }
    }
    cf_sim_result_free(&s);
    cf_sched_plan_free(&p);
  }
  free(e);
  return rc;
}
