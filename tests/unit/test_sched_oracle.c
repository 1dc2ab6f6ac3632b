/* lib/sched against an exact solver on tiny instances.
 *
 * The oracle (branch and bound, independent of the planner's code) searches every plan that
 * cf_sim accepts on one device and one link: every staircase (any h_c in [0, L], increasing
 * or not), every grouping of each layer's computed chunks into COMPUTE ops, every partition
 * of the loaded cells into LOAD rectangles, and every order on both streams. It costs an op
 * exactly as cf_sim does (cf_cost_step at the op's first token, cf_sched_load_s with one link
 * latency per op, tier rates per chunk) and waits exactly on what cf_sim waits on (arrival,
 * stream free, (c, l-1) computed, every (c' < c0, l) present).
 *
 * Search. The plans are generated in order of op start time (a semi-active schedule sorted
 * by start: an op's inputs finish before it starts, so they come earlier): a node appends one
 * op, to either stream, that starts no earlier than the previous one (equal starts: compute
 * first). The staircase follows from the ops: a cell whose lower cell is loaded can only be
 * loaded. Bound: the stream free times plus the fractional split of the undecided cells
 * between the streams (each cell's marginal compute or link time, gamma and latency left
 * out; cells above a loaded one are loads). The incumbent starts at the best of the library's
 * policies (a valid plan), so the oracle returns min(that, anything better it finds); a plan it
 * finds is replayed through cf_sim_run, which must agree on its makespan.
 *
 * CF_ORACLE_TRIALS (default 600; the held-out draw is half that) and CF_ORACLE_CELLS (cells
 * per instance, default 8) make the sweep bigger (each instance is planned with optimal's
 * default options: for these tiny batches that ends in its own exact search, cf_exact.c, which
 * shares no code with this oracle); the held-out set is a second, differently seeded draw. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_test.h"
#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

enum { OR_MAXR = 3, OR_MAXCH = 4, OR_MAXL = 4, OR_MAXCELLS = 16, OR_MAXOPS = 2 * OR_MAXCELLS };

typedef struct {
  int8_t kind, r, c0, c1, l0, l1; /* kind: CF_OP_COMPUTE or CF_OP_LOAD */
} or_op_t;

typedef struct {
  const cf_sched_input_t *in;
  const cf_sched_cost_t *c;
  int n, L, nc[OR_MAXR], base[OR_MAXR], ncells;
  double arr[OR_MAXR];
  double x[OR_MAXCELLS], y[OR_MAXCELLS]; /* per cell: marginal compute (no gamma), load (no latency) */
  int8_t st[OR_MAXCELLS];                /* 0 undecided, 1 loaded, 2 computed */
  int8_t hole[OR_MAXCELLS];              /* a hole's cell (cf_sched.h): computed, never loaded */
  double fin[OR_MAXCELLS];
  or_op_t ops[OR_MAXOPS], best_ops[OR_MAXOPS];
  int nops, best_nops;
  double best;
  long nodes, node_cap;
} or_t;

static inline int or_cell(const or_t *o, int r, int l, int ch) { return o->base[r] + l * o->nc[r] + ch; }

/* Fractional lower bound on the makespan from this node. */
static double or_lower(const or_t *o, double cf, double lf, double maxfin) {
  double amin = INFINITY, X0 = 0, Y0 = 0, xs[OR_MAXCELLS], ys[OR_MAXCELLS];
  int m = 0;
  for (int r = 0; r < o->n; r++)
    for (int ch = 0; ch < o->nc[r]; ch++) {
      int forced = 0;
      for (int l = 0; l < o->L; l++) {
        int i = or_cell(o, r, l, ch);
        if (o->st[i] == 1) forced = 1;
        if (o->st[i]) continue;
        amin = fmin(amin, o->arr[r]);
        if (o->hole[i]) X0 += o->x[i];
        else if (forced) Y0 += o->y[i];
        else { xs[m] = o->x[i]; ys[m] = o->y[i]; m++; }
      }
    }
  if (amin == INFINITY) return maxfin;
  double cfe = fmax(cf, amin), lfe = fmax(lf, amin);
  /* cells by x / y ascending: the cheapest to compute relative to their load first */
  for (int a = 1; a < m; a++)
    for (int b = a; b > 0 && xs[b] * ys[b - 1] < xs[b - 1] * ys[b]; b--) {
      double t = xs[b]; xs[b] = xs[b - 1]; xs[b - 1] = t;
      t = ys[b]; ys[b] = ys[b - 1]; ys[b - 1] = t;
    }
  double X = X0, Y = Y0;
  for (int i = 0; i < m; i++) Y += ys[i];
  double T = fmax(cfe + X, lfe + Y);
  for (int i = 0; i < m; i++) {
    double A = cfe + X, B = lfe + Y;
    if (A + xs[i] >= B - ys[i]) { /* the crossing lies inside cell i */
      double f = (B - A) / (xs[i] + ys[i]);
      if (f > 0) T = fmin(T, A + f * xs[i]);
      break;
    }
    X += xs[i];
    Y -= ys[i];
    T = fmin(T, fmax(cfe + X, lfe + Y));
  }
  return fmax(T, maxfin);
}

static void or_dfs(or_t *o, double cf, double lf, double last, int last_kind, double maxfin, int left) {
  if (++o->nodes > o->node_cap) return;
  if (!left) {
    if (maxfin < o->best * (1 - 1e-12)) {
      o->best = maxfin;
      o->best_nops = o->nops;
      memcpy(o->best_ops, o->ops, (size_t)o->nops * sizeof *o->ops);
    }
    return;
  }
  if (or_lower(o, cf, lf, maxfin) >= o->best * (1 - 1e-12)) return;
  const cf_sched_cost_t *c = o->c;
  int L = o->L;
  /* COMPUTE (r, l, [c0, c1)) */
  for (int r = 0; r < o->n; r++) {
    const cf_sched_req_t *q = &o->in->reqs[r];
    for (int l = 0; l < L; l++)
      for (int c0 = 0; c0 < o->nc[r]; c0++) {
        double dep = fmax(cf, o->arr[r]);
        int ok = 1;
        for (int cc = 0; cc < c0 && ok; cc++) {
          int i = or_cell(o, r, l, cc);
          if (!o->st[i]) ok = 0;
          else dep = fmax(dep, o->fin[i]);
        }
        if (!ok) break; /* later c0 need this prefix too */
        for (int c1 = c0 + 1; c1 <= o->nc[r]; c1++) {
          int i = or_cell(o, r, l, c1 - 1);
          if (o->st[i]) break;
          if (l > 0) {
            int j = or_cell(o, r, l - 1, c1 - 1);
            if (o->st[j] != 2) break;
            dep = fmax(dep, o->fin[j]);
          }
          if (dep < last || (dep == last && last_kind == CF_OP_LOAD)) continue;
          double t0 = (double)cf_cost_tok(c, q->prefix_tokens, c0);
          double dur = cf_cost_step(c, t0, (double)cf_cost_tok(c, q->prefix_tokens, c1) - t0);
          double end = dep + dur;
          for (int ch = c0; ch < c1; ch++) {
            int k = or_cell(o, r, l, ch);
            o->st[k] = 2;
            o->fin[k] = end;
          }
          o->ops[o->nops++] = (or_op_t){CF_OP_COMPUTE, (int8_t)r, (int8_t)c0, (int8_t)c1, (int8_t)l, (int8_t)(l + 1)};
          or_dfs(o, end, lf, dep, CF_OP_COMPUTE, fmax(maxfin, end), left - (c1 - c0));
          o->nops--;
          for (int ch = c0; ch < c1; ch++) o->st[or_cell(o, r, l, ch)] = 0;
        }
      }
  }
  /* LOAD (r, [c0, c1) x [l0, l1)) of undecided cells */
  for (int r = 0; r < o->n; r++) {
    const cf_sched_req_t *q = &o->in->reqs[r];
    double start = fmax(lf, o->arr[r]);
    if (start < last) continue;
    for (int c0 = 0; c0 < o->nc[r]; c0++)
      for (int c1 = c0 + 1; c1 <= o->nc[r]; c1++)
        for (int l0 = 0; l0 < L; l0++)
          for (int l1 = l0 + 1; l1 <= L; l1++) {
            int ok = 1;
            for (int l = l0; l < l1 && ok; l++)
              for (int ch = c0; ch < c1 && ok; ch++)
                ok = !o->st[or_cell(o, r, l, ch)] && !o->hole[or_cell(o, r, l, ch)];
            if (!ok) break; /* taller rectangles contain this one */
            double end = start + cf_sched_load_s(c, q, c0, c1, l1 - l0);
            for (int l = l0; l < l1; l++)
              for (int ch = c0; ch < c1; ch++) {
                int k = or_cell(o, r, l, ch);
                o->st[k] = 1;
                o->fin[k] = end;
              }
            o->ops[o->nops++] = (or_op_t){CF_OP_LOAD, (int8_t)r, (int8_t)c0, (int8_t)c1, (int8_t)l0, (int8_t)l1};
            or_dfs(o, cf, end, start, CF_OP_LOAD, fmax(maxfin, end), left - (c1 - c0) * (l1 - l0));
            o->nops--;
            for (int l = l0; l < l1; l++)
              for (int ch = c0; ch < c1; ch++) o->st[or_cell(o, r, l, ch)] = 0;
          }
  }
}

/* Exact minimum makespan of `in` (one device, one link), given a valid plan's makespan `ub`.
 * Returns the optimum (<= ub); *found: the oracle's own plan beat ub (left in o->best_ops).
 * Returns -1 when the node cap was hit (the instance is skipped, not guessed). */
static double or_solve(or_t *o, const cf_sched_input_t *in, double ub, int *found) {
  memset(o, 0, sizeof *o);
  o->in = in;
  o->c = &in->cost;
  o->n = in->n_reqs;
  o->L = in->cost.n_layers;
  for (int r = 0; r < o->n; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    o->nc[r] = cf_cost_chunks(o->c, q->prefix_tokens);
    o->base[r] = o->ncells;
    o->arr[r] = q->arrival_s;
    for (int ch = 0; ch < o->nc[r]; ch++) {
      double t0 = (double)cf_cost_tok(o->c, q->prefix_tokens, ch);
      double t = (double)cf_cost_tok(o->c, q->prefix_tokens, ch + 1) - t0;
      double x = cf_cost_step(o->c, t0, t) - o->c->gamma_s;
      double y = cf_sched_load_s(o->c, q, ch, ch + 1, 1) - o->c->link_latency_s;
      for (int l = 0; l < o->L; l++) {
        o->x[o->ncells + l * o->nc[r] + ch] = x;
        o->y[o->ncells + l * o->nc[r] + ch] = y;
        o->hole[o->ncells + l * o->nc[r] + ch] = (int8_t)cf_sched_chunk_hole(q, ch);
      }
    }
    o->ncells += o->nc[r] * o->L;
  }
  o->best = ub;
  o->node_cap = 50 * 1000 * 1000;
  or_dfs(o, 0, 0, 0, CF_OP_COMPUTE, 0, o->ncells);
  *found = o->best_nops > 0;
  return o->nodes > o->node_cap ? -1 : o->best;
}

/* The oracle's best plan as a cf_sched_plan_t, simulated by cf_sim_run. */
static double or_replay(const or_t *o, const cf_sched_input_t *in) {
  cf_sched_plan_t p;
  cf_sched_plan_init(&p);
  int n = in->n_reqs;
  p.policy = CF_POLICY_OPTIMAL;
  p.n_reqs = n;
  p.n_layers = o->L;
  p.n_devices = 1;
  p.n_links = 1;
  p.device = calloc((size_t)n, sizeof *p.device);
  p.n_chunks = calloc((size_t)n, sizeof *p.n_chunks);
  p.h_off = calloc((size_t)n + 1, sizeof *p.h_off);
  p.h = calloc(OR_MAXCELLS, sizeof *p.h);
  p.ops = calloc(OR_MAXOPS, sizeof *p.ops);
  for (int r = 0; r < n; r++) {
    p.n_chunks[r] = o->nc[r];
    p.h_off[r + 1] = p.h_off[r] + (size_t)o->nc[r];
  }
  for (int i = 0; i < o->best_nops; i++) {
    const or_op_t *b = &o->best_ops[i];
    cf_sched_op_t *op = &p.ops[p.n_ops++];
    *op = (cf_sched_op_t){.req = b->r, .kind = (uint8_t)b->kind, .stream = 0, .c0 = b->c0,
                          .c1 = b->c1, .l0 = b->l0, .l1 = b->l1, .dst = -1};
    if (b->kind == CF_OP_COMPUTE)
      for (int ch = b->c0; ch < b->c1; ch++)
        if (p.h[p.h_off[b->r] + ch] < b->l1) p.h[p.h_off[b->r] + ch] = (uint16_t)b->l1;
  }
  cf_sim_result_t s;
  cf_sim_result_init(&s);
  int rc = cf_sim_run(in, &p, &s);
  double mk = rc ? -1 : s.makespan_s;
  if (rc) printf("  oracle plan rejected by cf_sim: %s\n", cf_errmsg());
  cf_sim_result_free(&s);
  cf_sched_plan_free(&p);
  return mk;
}

/* The instance, optimal's plan and (found) the oracle's, for CF_ORACLE_VERBOSE. */
static void or_dump(const or_t *o, const cf_sched_input_t *in, const cf_sched_plan_t *p, int found) {
  const cf_sched_cost_t *c = &in->cost;
  printf("instance: L %d chunk %d gamma %.3g alpha %.3g beta %.3g link %.3g B/s lat %.3g tier1 %.3g\n",
         c->n_layers, c->chunk_tokens, c->gamma_s, c->alpha_s, c->beta_s, c->link_Bps,
         c->link_latency_s, c->tier_Bps[1]);
  for (int r = 0; r < in->n_reqs; r++) {
    printf("  req %d: arrival %.6f tokens %lld tiers", r, in->reqs[r].arrival_s,
           (long long)in->reqs[r].prefix_tokens);
    for (int ch = 0; ch < o->nc[r]; ch++) printf(" %d", cf_sched_chunk_tier(&in->reqs[r], ch));
    printf("\n");
  }
  printf("  optimal (%d simulator runs):", p->sim_evals);
  for (size_t i = 0; i < p->n_ops; i++)
    printf(" %c%d[%d,%d)x[%d,%d)", p->ops[i].kind == CF_OP_COMPUTE ? 'C' : 'L', p->ops[i].req,
           p->ops[i].c0, p->ops[i].c1, p->ops[i].l0, p->ops[i].l1);
  printf("\n  exact:  ");
  for (int i = 0; found && i < o->best_nops; i++)
    printf(" %c%d[%d,%d)x[%d,%d)", o->best_ops[i].kind == CF_OP_COMPUTE ? 'C' : 'L',
           o->best_ops[i].r, o->best_ops[i].c0, o->best_ops[i].c1, o->best_ops[i].l0,
           o->best_ops[i].l1);
  printf("\n");
}

/* A tiny random instance: 1-3 requests of 1-3 chunks, 1-3 layers (at most maxcells cells),
 * link 0.1-10x the compute of a chunk, latency 0-100 us, one or two tiers, arrivals at once or
 * staggered. */
static void or_instance(cf_sched_input_t *in, cf_sched_req_t *reqs, uint8_t (*tiers)[OR_MAXCH],
                        int maxcells, int holes) {
  cf_sched_cost_t *c = &in->cost;
  memset(in, 0, sizeof *in);
  cf_cost_h100_llama8b(c);
  for (;;) {
    c->n_layers = 1 + (int)(cf_test_uniform() * 3);
    in->n_reqs = 1 + (int)(cf_test_uniform() * 3);
    int cells = 0;
    c->chunk_tokens = 16 << (int)(cf_test_uniform() * 6); /* 16..512 */
    for (int r = 0; r < in->n_reqs; r++) {
      int nc = 1 + (int)(cf_test_uniform() * 3);
      int64_t last = 1 + (int64_t)(cf_test_uniform() * c->chunk_tokens);
      reqs[r] = (cf_sched_req_t){0, (nc - 1) * (int64_t)c->chunk_tokens + last,
                                 (int64_t)(cf_test_uniform() * 64), 0, NULL};
      cells += nc * c->n_layers;
    }
    if (cells <= maxcells) break;
  }
  c->gamma_s *= 0.1 + cf_test_uniform() * 2;
  c->alpha_s *= 0.2 + cf_test_uniform() * 3;
  c->beta_s *= cf_test_uniform() * 4;
  double chunk_step = cf_cost_step(c, 0, c->chunk_tokens);
  double ratio = exp(log(0.1) + cf_test_uniform() * log(100.0)); /* load / compute of a chunk */
  c->link_Bps = c->kv_bytes_per_token * c->chunk_tokens / (ratio * chunk_step);
  c->link_latency_s = cf_test_uniform() * 100e-6;
  int two = cf_test_uniform() < 0.5;
  if (two) c->tier_Bps[1] = c->link_Bps * (0.1 + cf_test_uniform() * 1.4);
  int any_hole = 0;
  double span = 0;
  for (int r = 0; r < in->n_reqs; r++) span += cf_bound_request(c, &reqs[r]);
  int stagger = cf_test_uniform() < 0.5;
  for (int r = 0; r < in->n_reqs; r++) {
    if (stagger) reqs[r].arrival_s = cf_test_uniform() * span;
    if (two || holes) {
      for (int ch = 0; ch < OR_MAXCH; ch++) {
        tiers[r][ch] = (uint8_t)(two && cf_test_uniform() < 0.5);
        if (holes && cf_test_uniform() < 0.4) tiers[r][ch] = CF_SCHED_TIER_NONE;
        any_hole |= ch < cf_cost_chunks(c, reqs[r].prefix_tokens) && tiers[r][ch] == CF_SCHED_TIER_NONE;
      }
      reqs[r].chunk_tier = tiers[r];
    }
  }
  if (holes && !any_hole) tiers[0][0] = CF_SCHED_TIER_NONE; /* every instance has one */
  in->reqs = reqs;
}

static int cmp_dbl(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int env_int(const char *name, int dflt, int lo, int hi) {
  const char *v = getenv(name);
  int x = v && *v ? atoi(v) : dflt;
  return x < lo ? lo : x > hi ? hi : x;
}

/* optimal (default options) against the oracle on `trials` instances; reports the ratios. */
static void oracle_sweep(const char *what, int trials, int holes, double limit) {
  int maxcells = env_int("CF_ORACLE_CELLS", 8, 1, OR_MAXCELLS);
  static or_t o;
  cf_sched_req_t reqs[OR_MAXR];
  uint8_t tiers[OR_MAXR][OR_MAXCH];
  cf_sched_plan_t p;
  cf_sched_plan_init(&p);
  cf_sim_result_t s;
  cf_sim_result_init(&s);
  double *ratio = malloc((size_t)trials * sizeof *ratio), *gap = malloc((size_t)trials * sizeof *gap);
  int m = 0, skipped = 0, beaten = 0, over = 0;
  long nodes = 0;
  for (int t = 0; t < trials; t++) {
    cf_sched_input_t in;
    or_instance(&in, reqs, tiers, maxcells, holes);
    /* the best other policy: the oracle's first incumbent */
    double ub = INFINITY;
    for (int pol = 0; pol < CF_POLICY_COUNT; pol++) {
      if (pol == CF_POLICY_OPTIMAL) continue;
      CF_CHECK_OK(cf_sched_plan(&in, (cf_policy_t)pol, &p));
      CF_CHECK_OK(cf_sim_run(&in, &p, &s));
      ub = fmin(ub, s.makespan_s);
    }
    CF_CHECK_OK(cf_sched_plan(&in, CF_POLICY_OPTIMAL, &p));
    CF_CHECK_OK(cf_sim_run(&in, &p, &s));
    double mk = s.makespan_s;
    int found;
    double opt = or_solve(&o, &in, fmin(ub, mk * (1 + 1e-9)), &found);
    nodes += o.nodes;
    if (opt < 0) { skipped++; continue; }
    if (found) { /* the oracle's plan, replayed: the two agree on what it costs */
      double sim = or_replay(&o, &in);
      CF_CHECK_MSG(fabs(sim - opt) <= 1e-9 * opt, "oracle %.9g vs cf_sim %.9g", opt, sim);
      beaten++;
    }
    double B = cf_bound(&in);
    CF_CHECK_MSG(opt >= B * (1 - 1e-9), "optimum %.9g below the bound %.9g", opt, B);
    double rt = mk / opt;
    if (getenv("CF_ORACLE_VERBOSE") && rt > limit) or_dump(&o, &in, &p, found);
    gap[m] = B > 0 ? opt / B : 1;
    ratio[m++] = rt;
    if (rt > limit) {
      over++;
      printf("  %s trial %d: optimal %.6g s = %.4fx the exact %.6g s (%d reqs, %d layers, chunk "
             "%d, lat %.0f us, tier1 %g)\n", what, t, mk, rt, opt, in.n_reqs, in.cost.n_layers,
             in.cost.chunk_tokens, in.cost.link_latency_s * 1e6, in.cost.tier_Bps[1]);
    }
    CF_CHECK_MSG(rt <= limit, "%s trial %d: optimal %.4fx the exact optimum", what, t, rt);
  }
  qsort(ratio, (size_t)m, sizeof *ratio, cmp_dbl);
  qsort(gap, (size_t)m, sizeof *gap, cmp_dbl);
  if (m) /* how loose the bound is: the exact optimum over it */
    printf("  %s: exact / bound: median %.4f p90 %.4f max %.4f\n", what, gap[m / 2],
           gap[(int)(0.9 * (m - 1))], gap[m - 1]);
  if (m)
    printf("  %s: optimal / exact over %d instances (<= %d cells; %d over the node cap): min %.4f "
           "median %.4f p90 %.4f max %.4f; the exact plan beat optimal's in %d; %.0f nodes/instance\n",
           what, m, maxcells, skipped, ratio[0], ratio[m / 2], ratio[(int)(0.9 * (m - 1))],
           ratio[m - 1], beaten, (double)nodes / trials);
  if (m) printf("  %s: %d of %d instances over %.2fx the exact optimum\n", what, over, m, limit);
  /* The goal: every instance within 1.02x (asserted above). Before optimal's exact search for
   * tiny batches (cf_exact.c) 0.1-0.3% of them were over it (max seen 1.12x): plans with ops
   * of two requests interleaved on a stream, or a rising staircase with its small load first,
   * that the local search's moves cannot express. */
  CF_CHECK_LE(skipped * 100, trials); /* the cap is for pathological draws only */
  free(ratio);
  free(gap);
  cf_sched_plan_free(&p);
  cf_sim_result_free(&s);
}

CF_TEST(sched_oracle_optimal_near_exact) {
  oracle_sweep("property", env_int("CF_ORACLE_TRIALS", 600, 1, 10000000), 0, 1.02);
}

/* A held-out draw (its own sequence from the same seed: the draws continue where the first
 * test's stop only when run in one binary, so it is seeded apart here). */
CF_TEST(sched_oracle_held_out) {
  for (int i = 0; i < 7919; i++) (void)cf_test_rand();
  oracle_sweep("held-out", env_int("CF_ORACLE_TRIALS", 600, 1, 10000000) / 2, 0, 1.02);
}

/* Holes (cf_sched.h): about 40% of the chunks stored nowhere (computed at every layer; the
 * oracle never loads them). Measures both gaps: optimal over the exact optimum (asserted within
 * 1.02x per instance, as without holes; before cf_exact.c took holes, the local search alone
 * left up to 1.10x on some seeds), and the exact optimum over the bound. */
CF_TEST(sched_oracle_holes) {
  for (int i = 0; i < 4409; i++) (void)cf_test_rand();
  oracle_sweep("holes", env_int("CF_ORACLE_TRIALS", 600, 1, 10000000) / 2, 1, 1.02);
}
