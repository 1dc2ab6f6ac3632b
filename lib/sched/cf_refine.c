/* Refinement shared by optimal's stages (see cf_sched_int.h): plan scores, and the local
 * search over general staircases that the front-chunks shape of the analytic plan cannot
 * express (cf_policy_optimal.c step 4d).
 *
 * Why it exists: the analytic plan computes the front chunks of every request to a balanced
 * height, one compute op per layer. Measured against the exact solver (test_sched_oracle),
 * the best plans of small batches often differ in ways that shape cannot reach: a whole
 * request computed while another is wholly loaded (fewer steps and link latencies than
 * splitting both), a short last chunk computed while earlier ones load (non-monotone h), a
 * slow tier's chunk computed to a partial height, loads split per layer so computes start
 * earlier, or another request order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

cf__score_t cf__score_of(const cf_sim_result_t *r, const cf__ref_t *ref) {
  cf__score_t s = {0, r->makespan_s, r->mean_ttft_s};
  if (ref && r->makespan_s > ref->mk) s.viol = 1; /* exact: no slack */
  return s;
}

int cf__score_better(cf__score_t a, cf__score_t b) {
  const double eps = 1e-12;
  if (a.viol != b.viol) return a.viol < b.viol;
  if (a.mk < b.mk * (1 - eps)) return 1;
  if (a.mk > b.mk * (1 + eps)) return 0;
  return a.mean < b.mean * (1 - eps);
}

void cf__swap_plans(cf_sched_plan_t *a, cf_sched_plan_t *b) {
  cf_sched_plan_t t = *a;
  *a = *b;
  *b = t;
}

/* A general plan: staircases (plan layout h[h_off[r] + c]), request order on the compute
 * streams and on the links, load style. */
typedef struct {
  uint16_t *h;
  int *order, *lorder;
  uint8_t *rows; /* per request: 0 = one LOAD per run of equal h (layers [h, L)); 1 = one per
                    layer and run; 2 = layers [max h, L) of every chunk in one LOAD (first),
                    the layers below one LOAD per layer and run */
} cf__gen_t;

/* Emit `g` into `out`: requests in g->order on the compute streams, in g->lorder on the
 * links (the streams are independent: ops of different streams interleave freely in ops[]).
 * Per request: boundary hidden states (later pipeline stages) and loads; computes layer by
 * layer, one op per run of consecutive computed chunks. A compute run at layer l needs
 * (c' < c0, l): loaded (the link's, no wait on this stream) or computed by an earlier run of
 * the same layer (earlier on this stream), and (c, l - 1), computed at the layer before: no
 * plan emitted here deadlocks. */
static int cf__gen_loads(const cf_sched_input_t *in, const int *dev, const cf__gen_t *g, int r,
                         cf_sched_plan_t *out) {
  int L = in->cost.n_layers, link = cf_cost_link_of(&in->cost, dev[r]), rc = 0;
  int32_t nc = out->n_chunks[r];
  const uint16_t *h = g->h + out->h_off[r];
  if (nc == 0) return 0; /* nothing to restore */
  for (int32_t a = 0, b; a < nc && !rc; a = b) { /* hidden states of runs computed at layer 0 */
    for (b = a + 1; b < nc && (h[b] > 0) == (h[a] > 0); b++) {}
    if (h[a] > 0) rc = cf__plan_hidden(out, in, r, a, b);
  }
  int band = L; /* rows up to here; mode 2: the layers no chunk computes are one rectangle */
  if (g->rows[r] == 2) {
    band = 0;
    for (int32_t c = 0; c < nc; c++) band = h[c] > band ? h[c] : band;
    if (band < L) rc = cf__plan_op(out, r, CF_OP_LOAD, link, 0, nc, band, L);
  }
  if (g->rows[r]) {
    for (int l = 0; l < band && !rc; l++)
      for (int32_t a = 0, b; a < nc && !rc; a = b) {
        for (b = a + 1; b < nc && (h[b] <= l) == (h[a] <= l); b++) {}
        if (h[a] <= l) rc = cf__plan_op(out, r, CF_OP_LOAD, link, a, b, l, l + 1);
      }
  } else {
    for (int32_t a = 0, b; a < nc && !rc; a = b) {
      for (b = a + 1; b < nc && h[b] == h[a]; b++) {}
      if (h[a] < L) rc = cf__plan_op(out, r, CF_OP_LOAD, link, a, b, h[a], L);
    }
  }
  return rc;
}

static int cf__gen_emit(const cf_sched_input_t *in, const int *dev, const cf__gen_t *g,
                        cf_sched_plan_t *out) {
  int rc = cf__plan_reset(out, in, dev, CF_POLICY_OPTIMAL);
  int L = in->cost.n_layers;
  for (int i = 0; i < in->n_reqs && !rc; i++) {
    int r = g->lorder[i];
    memcpy(cf__plan_h(out, r), g->h + out->h_off[r], (size_t)out->n_chunks[r] * sizeof *g->h);
    rc = cf__gen_loads(in, dev, g, r, out);
  }
  for (int i = 0; i < in->n_reqs && !rc; i++) {
    int r = g->order[i];
    int32_t nc = out->n_chunks[r];
    const uint16_t *h = g->h + out->h_off[r];
    for (int l = 0; l < L && !rc; l++)
      for (int32_t a = 0, b; a < nc && !rc; a = b) {
        for (b = a + 1; b < nc && (h[b] > l) == (h[a] > l); b++) {}
        if (h[a] > l) rc = cf__plan_op(out, r, CF_OP_COMPUTE, dev[r], a, b, l, l + 1);
      }
  }
  return rc;
}

typedef struct {
  const cf_sched_input_t *in;
  const int *dev;
  const cf__ref_t *ref;
  cf__gen_t g;
  cf_sched_plan_t *best, tmp;
  cf__score_t *score; /* the best plan's */
  cf__score_t cur;    /* g's: moves are taken when they beat it */
  cf_sim_result_t sim;
  int *evals, budget;
  size_t cells;           /* staircase entries (chunks of the batch) */
  uint64_t *seen_key;     /* plans simulated already: hash -> score (open addressing) */
  cf__score_t *seen;
} cf__gsearch_t;

enum { CF__SEEN = 1 << 13 }; /* a power of two, > CF__MAX_RUNS */

/* FNV-1a over g: the staircases, both orders and the load groupings. */
static uint64_t cf__gen_hash(const cf__gsearch_t *s) {
  uint64_t x = 1469598103934665603ull;
  const cf__gen_t *g = &s->g;
  size_t n = (size_t)s->in->n_reqs;
  for (size_t i = 0; i < s->cells; i++) x = (x ^ g->h[i]) * 1099511628211ull;
  for (size_t i = 0; i < n; i++) x = (x ^ (uint64_t)g->order[i]) * 1099511628211ull;
  for (size_t i = 0; i < n; i++) x = (x ^ (uint64_t)g->lorder[i] ^ 0x100) * 1099511628211ull;
  for (size_t i = 0; i < n; i++) x = (x ^ g->rows[i] ^ 0x200) * 1099511628211ull;
  return x | 1; /* 0 marks an empty slot */
}

/* Emit and simulate the current g; taken when it beats g's score (returns 1; 0: not, or a
 * negative error), and it becomes the best plan when it beats that too. */
static int cf__gen_try(cf__gsearch_t *s) {
  cf__holes_clamp(s->in, s->best->h_off, s->g.h); /* a move never loads a hole */
  uint64_t key = cf__gen_hash(s);
  size_t slot = (size_t)(key >> 20) & (CF__SEEN - 1);
  while (s->seen_key[slot] && s->seen_key[slot] != key) slot = (slot + 1) & (CF__SEEN - 1);
  if (s->seen_key[slot]) { /* simulated before: not better than the best then, nor now */
    if (!cf__score_better(s->seen[slot], s->cur)) return 0;
    s->cur = s->seen[slot];
    return 1;
  }
  int rc = cf__gen_emit(s->in, s->dev, &s->g, &s->tmp);
  if (!rc) rc = cf__sim_clipped(s->in, &s->tmp, &s->sim);
  if (rc) return rc;
  (*s->evals)++;
  cf__score_t sc = cf__score_of(&s->sim, s->ref);
  s->seen_key[slot] = key;
  s->seen[slot] = sc;
  if (!cf__score_better(sc, s->cur)) return 0;
  s->cur = sc;
  if (cf__score_better(sc, *s->score)) {
    *s->score = sc;
    s->tmp.est_makespan_s = sc.mk;
    cf__swap_plans(s->best, &s->tmp);
  }
  return 1;
}

/* Try h[c0..c1) of request r set to v; keep it if better. Returns 1, 0 or an error. */
static int cf__gen_set(cf__gsearch_t *s, uint16_t *h, int32_t c0, int32_t c1, uint16_t v,
                       uint16_t *save) {
  int same = 1;
  for (int32_t c = c0; c < c1; c++) same &= h[c] == v;
  if (same || *s->evals >= s->budget) return 0;
  memcpy(save, h + c0, (size_t)(c1 - c0) * sizeof *h);
  for (int32_t c = c0; c < c1; c++) h[c] = v;
  int b = cf__gen_try(s);
  if (b <= 0) memcpy(h + c0, save, (size_t)(c1 - c0) * sizeof *h);
  return b;
}

/* Move ord[i] to position j; kept if better. Returns 1, 0 or an error. */
static int cf__gen_move(cf__gsearch_t *s, int *ord, int i, int j) {
  int v = ord[i];
  if (i < j) memmove(ord + i, ord + i + 1, (size_t)(j - i) * sizeof *ord);
  else memmove(ord + j + 1, ord + j, (size_t)(i - j) * sizeof *ord);
  ord[j] = v;
  int b = cf__gen_try(s);
  if (b > 0) return b;
  if (i < j) memmove(ord + i + 1, ord + i, (size_t)(j - i) * sizeof *ord);
  else memmove(ord + j, ord + j + 1, (size_t)(i - j) * sizeof *ord);
  ord[i] = v;
  return b;
}

/* Request i wholly computed and request j wholly loaded, at once (either alone may not pay
 * when the other still competes for its stream). Returns 1, 0 or an error. */
static int cf__gen_pair(cf__gsearch_t *s, int i, int j, uint16_t *save) {
  const cf_sched_input_t *in = s->in;
  int L = in->cost.n_layers;
  size_t oi = s->best->h_off[i], oj = s->best->h_off[j];
  int32_t ni = s->best->n_chunks[i], nj = s->best->n_chunks[j];
  uint16_t *hi = s->g.h + oi, *hj = s->g.h + oj;
  if (ni <= 0 || nj <= 0) return 0;
  int same = 1;
  for (int32_t c = 0; c < ni; c++) same &= hi[c] == L;
  for (int32_t c = 0; c < nj; c++) same &= hj[c] == 0;
  if (same) return 0;
  memcpy(save, hi, (size_t)ni * sizeof *hi);
  memcpy(save + ni, hj, (size_t)nj * sizeof *hj);
  for (int32_t c = 0; c < ni; c++) hi[c] = (uint16_t)L;
  for (int32_t c = 0; c < nj; c++) hj[c] = 0;
  int b = cf__gen_try(s);
  if (b <= 0) {
    memcpy(hi, save, (size_t)ni * sizeof *hi);
    memcpy(hj, save + ni, (size_t)nj * sizeof *hj);
  }
  return b;
}

/* Requests i and j (same chunk count, different staircases) trade staircases and load
 * groupings, then also their places in both orders. Returns 1, 0 or an error. */
static void cf__gen_trade_do(cf__gsearch_t *s, int i, int j, int orders) {
  int32_t nc = s->best->n_chunks[i];
  uint16_t *hi = s->g.h + s->best->h_off[i], *hj = s->g.h + s->best->h_off[j];
  for (int32_t c = 0; c < nc; c++) { uint16_t t = hi[c]; hi[c] = hj[c]; hj[c] = t; }
  uint8_t w = s->g.rows[i];
  s->g.rows[i] = s->g.rows[j];
  s->g.rows[j] = w;
  for (int k = 0; orders && k < s->in->n_reqs; k++) {
    int *o[2] = {&s->g.order[k], &s->g.lorder[k]};
    for (int m = 0; m < 2; m++) *o[m] = *o[m] == i ? j : *o[m] == j ? i : *o[m];
  }
}
static int cf__gen_trade(cf__gsearch_t *s, int i, int j) {
  int32_t nc = s->best->n_chunks[i];
  if (nc != s->best->n_chunks[j] || nc == 0) return 0;
  if (!memcmp(s->g.h + s->best->h_off[i], s->g.h + s->best->h_off[j], (size_t)nc * sizeof *s->g.h))
    return 0;
  for (int orders = 0; orders < 2 && *s->evals < s->budget; orders++) {
    cf__gen_trade_do(s, i, j, orders);
    int b = cf__gen_try(s);
    if (b) return b;
    cf__gen_trade_do(s, i, j, orders);
  }
  return 0;
}

/* One pass of first-improvement moves; returns 1 when something improved, 0, or an error. */
static int cf__gen_pass(cf__gsearch_t *s, uint16_t *save) {
  const cf_sched_input_t *in = s->in;
  int L = in->cost.n_layers, n = in->n_reqs, any = 0, b;
  for (int i = n - 1; i >= 0 && *s->evals < s->budget; i--) { /* later requests first */
    int r = s->g.order[i];
    int32_t nc = cf_cost_chunks(&in->cost, in->reqs[r].prefix_tokens);
    uint16_t *h = s->g.h + s->best->h_off[r];
    /* the whole request computed or loaded */
    if ((b = cf__gen_set(s, h, 0, nc, (uint16_t)L, save)) < 0) return b;
    any |= b;
    if ((b = cf__gen_set(s, h, 0, nc, 0, save)) < 0) return b;
    any |= b;
    for (int k = 1; k < 3 && *s->evals < s->budget; k++) { /* the other load groupings */
      uint8_t was = s->g.rows[r];
      s->g.rows[r] = (uint8_t)((was + k) % 3);
      if ((b = cf__gen_try(s)) < 0) return b;
      if (b) { any = 1; break; }
      s->g.rows[r] = was;
    }
    for (int32_t c = nc - 1; c >= 0 && *s->evals < s->budget; c--) /* one chunk's height */
      for (int v = 0; v <= L && *s->evals < s->budget; v++) {
        if (L > 4 && v != 0 && v != L && abs(v - h[c]) != 1) continue; /* tall: +-1, 0, L */
        if ((b = cf__gen_set(s, h, c, c + 1, (uint16_t)v, save)) < 0) return b;
        if (b) { any = 1; break; }
      }
    /* one layer moved from chunk a to chunk c: compute one more of c, one fewer of a (all
     * pairs of a short request, neighbours of a long one) */
    for (int32_t a = 0; a < nc && *s->evals < s->budget; a++)
      for (int32_t c = 0; c < nc && *s->evals < s->budget; c++) {
        if (c == a || h[a] == 0 || h[c] == L || (nc > 8 && abs(c - a) != 1)) continue;
        h[a]--;
        h[c]++;
        if ((b = cf__gen_try(s)) < 0) return b;
        if (!b) { h[a]++; h[c]--; }
        any |= b;
      }
  }
  for (int w = 0; w < 2; w++) { /* one request moved elsewhere in the compute or link order */
    int *ord = w ? s->g.lorder : s->g.order;
    for (int i = 0; i < n && *s->evals < s->budget; i++)
      for (int j = 0; j < n && *s->evals < s->budget; j++) {
        if (j == i) continue;
        if ((b = cf__gen_move(s, ord, i, j)) < 0) return b;
        any |= b;
      }
  }
  for (int i = 0; i < n && *s->evals < s->budget; i++) /* two requests trade staircases */
    for (int j = i + 1; j < n && *s->evals < s->budget; j++) {
      if ((b = cf__gen_trade(s, i, j)) < 0) return b;
      any |= b;
    }
  for (int i = 0; i < n && *s->evals < s->budget; i++) /* one request computed, one loaded */
    for (int j = 0; j < n && *s->evals < s->budget; j++) {
      if (j == i) continue;
      if ((b = cf__gen_pair(s, i, j, save)) < 0) return b;
      any |= b;
    }
  return any;
}

/* Iterated local search with what budget is left: from the current local optimum, change two
 * random chunks' heights (or move a request in one order), descend, and keep the result when
 * it beats the optimum (else return to it). The random numbers come from a fixed-seed
 * generator: the plan stays a function of the input. Returns 0 or a negative error. */
static int cf__gen_kicks(cf__gsearch_t *s, uint16_t *save, size_t cells, size_t nn) {
  const cf_sched_input_t *in = s->in;
  int n = in->n_reqs, L = in->cost.n_layers, rc = 0;
  if (cells == 0) return 0;
  uint16_t *h0 = malloc(cells * sizeof *h0);
  int *o0 = malloc(2 * nn * sizeof *o0);
  uint8_t *w0 = malloc(nn);
  if (!h0 || !o0 || !w0) {
    free(h0); free(o0); free(w0);
    return 0; /* no room to kick: the plan so far stands */
  }
  uint64_t x = 0x9e3779b97f4a7c15ull;
  /* kicks that only revisit simulated plans cost no run: bound them by count as well */
  for (int kick = 0; *s->evals < s->budget && rc >= 0 && kick < 4 * s->budget; kick++) {
    memcpy(h0, s->g.h, cells * sizeof *h0);
    memcpy(o0, s->g.order, nn * sizeof *o0);
    memcpy(o0 + nn, s->g.lorder, nn * sizeof *o0);
    memcpy(w0, s->g.rows, nn);
    cf__score_t c0 = s->cur;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17; /* xorshift64 */
    for (int k = 0, moves = 1 + (int)((x >> 40) % 3); k < moves; k++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      uint64_t u = x >> 11;
      if (u % 8 == 1) { /* a request wholly computed or loaded */
        int r = (int)((u >> 3) % (uint64_t)n);
        for (size_t i = s->best->h_off[r]; i < s->best->h_off[r + 1]; i++)
          s->g.h[i] = (uint16_t)((u >> 20) & 1 ? L : 0);
      } else if (n > 1 && u % 4 == 0) { /* a request moved in one order */
        int *ord = (u >> 2) & 1 ? s->g.lorder : s->g.order, i = (int)((u >> 3) % (uint64_t)n),
            j = (int)((u >> 20) % (uint64_t)n), v = ord[i];
        if (i < j) memmove(ord + i, ord + i + 1, (size_t)(j - i) * sizeof *ord);
        else memmove(ord + j + 1, ord + j, (size_t)(i - j) * sizeof *ord);
        ord[j] = v;
      } else { /* a chunk's height */
        size_t cell = (size_t)((u >> 2) % cells);
        s->g.h[cell] = (uint16_t)((u >> 30) % (uint64_t)(L + 1));
      }
    }
    s->cur = (cf__score_t){INFINITY, INFINITY, INFINITY};
    if ((rc = cf__gen_try(s)) < 0) break;
    while (*s->evals < s->budget && (rc = cf__gen_pass(s, save)) > 0) {}
    if (rc < 0) break;
    if (!cf__score_better(s->cur, c0)) { /* back to the optimum */
      memcpy(s->g.h, h0, cells * sizeof *h0);
      memcpy(s->g.order, o0, nn * sizeof *o0);
      memcpy(s->g.lorder, o0 + nn, nn * sizeof *o0);
      memcpy(s->g.rows, w0, nn);
      s->cur = c0;
    }
  }
  free(h0);
  free(o0);
  free(w0);
  return rc < 0 ? rc : 0;
}

int cf__refine_general(const cf_sched_input_t *in, const int *dev, const cf__ref_t *ref,
                       cf_sched_plan_t *best, cf__score_t *score, int *evals, int budget) {
  int n = in->n_reqs, rc = 0;
  for (size_t i = 0; i < best->n_ops; i++) /* plans with help stay as they are */
    if (best->ops[i].kind == CF_OP_SEND ||
        (best->ops[i].kind == CF_OP_COMPUTE && best->ops[i].stream != dev[best->ops[i].req]))
      return 0;
  size_t cells = best->h_off[n], nn = n ? (size_t)n : 1;
  int32_t maxc = 1;
  for (int r = 0; r < n; r++) maxc = best->n_chunks[r] > maxc ? best->n_chunks[r] : maxc;
  cf__gsearch_t s = {in, dev, ref, {0}, best, {0}, score, {INFINITY, INFINITY, INFINITY}, {0}, evals, budget};
  cf_sched_plan_init(&s.tmp);
  cf_sim_result_init(&s.sim);
  s.g.h = malloc((cells ? cells : 1) * sizeof *s.g.h);
  s.g.order = malloc(nn * sizeof *s.g.order);
  s.g.lorder = malloc(nn * sizeof *s.g.lorder);
  s.g.rows = calloc(nn, 1);
  s.cells = cells;
  s.seen_key = calloc(CF__SEEN, sizeof *s.seen_key);
  s.seen = malloc(CF__SEEN * sizeof *s.seen);
  uint16_t *save = malloc(2 * (size_t)maxc * sizeof *save);
  if (!s.g.h || !s.g.order || !s.g.lorder || !s.g.rows || !save || !s.seen_key || !s.seen) {
    rc = cf_seterr(CF_ENOMEM, "optimal: general refinement of %d requests", n);
    goto out;
  }
  memcpy(s.g.h, best->h, cells * sizeof *s.g.h);
  cf__arrival_order(in, s.g.order);
  memcpy(s.g.lorder, s.g.order, nn * sizeof *s.g.order);
  /* the best plan's staircases re-emitted in this shape: loads per layer, else per run */
  for (int r = 0; r < n; r++) s.g.rows[r] = 1;
  if ((rc = cf__gen_try(&s)) < 0) goto out;
  if (rc == 0) {
    memset(s.g.rows, 0, nn);
    if ((rc = cf__gen_try(&s)) < 0) goto out;
  }
  while (*evals < budget && (rc = cf__gen_pass(&s, save)) > 0) {}
  /* A second start for small batches: the best plan that wholly computes some requests and
   * wholly loads the others (2^n of them), searched from there too. */
  if (rc >= 0 && n <= 4 && *evals + (1 << n) < budget) {
    int best_mask = 0;
    cf__score_t bm = {INFINITY, INFINITY, INFINITY};
    memset(s.g.rows, 0, nn);
    cf__arrival_order(in, s.g.order);
    memcpy(s.g.lorder, s.g.order, nn * sizeof *s.g.order);
    for (int mask = 0; mask < (1 << n); mask++) {
      for (int r = 0; r < n; r++)
        for (size_t i = best->h_off[r]; i < best->h_off[r + 1]; i++)
          s.g.h[i] = (uint16_t)((mask >> r & 1) ? in->cost.n_layers : 0);
      s.cur = (cf__score_t){INFINITY, INFINITY, INFINITY};
      if ((rc = cf__gen_try(&s)) < 0) goto out;
      if (cf__score_better(s.cur, bm)) { bm = s.cur; best_mask = mask; }
    }
    for (int r = 0; r < n; r++)
      for (size_t i = best->h_off[r]; i < best->h_off[r + 1]; i++)
        s.g.h[i] = (uint16_t)((best_mask >> r & 1) ? in->cost.n_layers : 0);
    s.cur = bm;
    while (*evals < budget && (rc = cf__gen_pass(&s, save)) > 0) {}
  }
  if (rc >= 0) rc = cf__gen_kicks(&s, save, cells, nn);
out:
  free(s.g.h);
  free(s.g.order);
  free(s.g.lorder);
  free(s.g.rows);
  free(s.seen_key);
  free(s.seen);
  free(save);
  cf_sched_plan_free(&s.tmp);
  cf_sim_result_free(&s.sim);
  return rc < 0 ? rc : 0;
}

/* Seconds op o occupies its stream (its stream: compute device, link or peer port); fast: a
 * LOAD's at most (its chunks all at the fastest tier's rate). */
static double cf__op_s(const cf_sched_input_t *in, const cf_sched_op_t *o, int fast) {
  const cf_sched_cost_t *c = &in->cost;
  const cf_sched_req_t *q = &in->reqs[o->req];
  double t0 = (double)cf_cost_tok(c, q->prefix_tokens, o->c0);
  double tok = (double)cf_cost_tok(c, q->prefix_tokens, o->c1) - t0;
  if (o->kind == CF_OP_COMPUTE) return cf_cost_step(c, t0, tok);
  if (o->kind == CF_OP_SEND) return cf_cost_send(c, tok, o->l1 - o->l0);
  if (o->l0 < 0) return cf_cost_load_hidden(c, tok);
  if (fast) { /* a lower bound in O(1): every chunk at the fastest tier's rate */
    double bps = 0;
    for (int t = 0; t < CF_COST_MAX_TIERS; t++) bps = fmax(bps, cf_cost_tier_Bps(c, t));
    return c->link_latency_s + tok * (o->l1 - o->l0) * c->kv_bytes_per_token / bps;
  }
  return cf_sched_load_s(c, q, o->c0, o->c1, o->l1 - o->l0);
}

/* Makespan of plan p when it is a lower bound (lower = 1: the busiest stream's busy time after
 * the first arrival, loads at the fastest tier's rate; every plan takes at least that) or, for a plan of one op kind without
 * cross-stream waits (lower = 0: loads only, or computes only, each request on one device: a
 * stream runs its ops back to back, each from its request's arrival), exactly what cf_sim
 * gives. Streams are told apart by kind and number. */
static double cf__streams_s(const cf_sched_input_t *in, const cf_sched_plan_t *p, int lower) {
  const cf_sched_cost_t *c = &in->cost;
  int ns = 3 * (c->n_devices + cf_cost_n_links(c)) + 3;
  double *fr = calloc((size_t)ns, sizeof *fr), amin = INFINITY, mk = 0;
  if (!fr) return lower ? 0 : INFINITY; /* no claim either way */
  for (int r = 0; r < in->n_reqs; r++) amin = fmin(amin, in->reqs[r].arrival_s);
  /* seconds per loaded token-layer at the fastest tier's rate (cf__op_s's fast form, hoisted:
   * this loop runs once per op of plans of up to ~1M ops) */
  double fast = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) fast = fmax(fast, cf_cost_tier_Bps(c, t));
  fast = c->kv_bytes_per_token / fast;
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    int st = 3 * o->stream + o->kind;
    if (st < 0 || st >= ns) continue;
    double a = lower ? amin : in->reqs[o->req].arrival_s, d;
    if (lower && o->kind == CF_OP_LOAD && o->l0 >= 0) {
      int64_t P = in->reqs[o->req].prefix_tokens;
      d = c->link_latency_s + (double)(cf_cost_tok(c, P, o->c1) - cf_cost_tok(c, P, o->c0)) * (o->l1 - o->l0) * fast;
    } else {
      d = cf__op_s(in, o, lower);
    }
    double f = fr[st] > a ? fr[st] : a; /* not fmax: a libm call per op showed in profiles */
    fr[st] = f + d;
  }
  for (int i = 0; i < ns; i++) mk = fr[i] > mk ? fr[i] : mk; /* a stream's time only grows */
  free(fr);
  return mk;
}

/* A lower bound on the makespan of load's (k = 0: every cell the windows keep, loaded) or
 * recompute's (k = 1) plan, in O(chunks): built only when it is below `lb`. */
static double cf__alt_lb(const cf_sched_input_t *in, const int *dev, int k) {
  const cf_sched_cost_t *c = &in->cost;
  int ns = k ? c->n_devices : cf_cost_n_links(c), L = c->n_layers;
  double *busy = calloc((size_t)ns, sizeof *busy), amin = INFINITY, mk = 0;
  if (!busy) return 0; /* build it: no claim */
  for (int r = 0; r < in->n_reqs; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    amin = fmin(amin, q->arrival_s);
    if (k) { busy[dev[r]] += L * cf_cost_step(c, 0, (double)q->prefix_tokens); continue; }
    /* loads (latency left out): tokens per tier, of the whole prefix and of chunks [kw, nc),
     * what a windowed layer keeps when nothing is computed (the final window) */
    int64_t need = q->prefix_tokens - c->window + 1, P = q->prefix_tokens;
    int32_t kw = c->window > 0 && need > 0 ? (int32_t)(need / c->chunk_tokens) : 0;
    double all = 0, tail = 0;
    if (!q->chunk_tier) {
      all = (double)P * c->kv_bytes_per_token / cf_cost_tier_Bps(c, 0);
      tail = (double)(P - cf_cost_tok(c, P, kw)) * c->kv_bytes_per_token / cf_cost_tier_Bps(c, 0);
    } else {
      int64_t na[CF_COST_MAX_TIERS] = {0}, nt[CF_COST_MAX_TIERS] = {0};
      for (int32_t ch = 0, nc = cf_cost_chunks(c, P); ch < nc; ch++) {
        int64_t tok = cf_cost_tok(c, P, ch + 1) - (int64_t)ch * c->chunk_tokens;
        if (q->chunk_tier[ch] >= CF_COST_MAX_TIERS) continue; /* stored nowhere: not loaded */
        na[q->chunk_tier[ch]] += tok;
        if (ch >= kw) nt[q->chunk_tier[ch]] += tok;
      }
      for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
        all += (double)na[t] * c->kv_bytes_per_token / cf_cost_tier_Bps(c, t);
        tail += (double)nt[t] * c->kv_bytes_per_token / cf_cost_tier_Bps(c, t);
      }
    }
    for (int l = 0; l < L; l++) busy[cf_cost_link_of(c, dev[r])] += cf_cost_layer_windowed(c, l) ? tail : all;
  }
  for (int i = 0; i < ns; i++) mk = fmax(mk, busy[i]);
  free(busy);
  return amin + mk;
}

int cf__check_closed_forms(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                           double busy) {
  const cf_sched_cost_t *c = &in->cost;
  if (cf_cost_stage(c, c->n_devices - 1) > 0) return 0; /* hidden-state loads: not one kind */
  int windowed = 0;
  for (int l = 0; l < c->n_layers && !windowed; l++) windowed = cf_cost_layer_windowed(c, l);
  int rc = cf__plan_window_clip(in, out);
  if (rc) return rc;
  double lb;
  if (busy >= 0 && !windowed) {
    double amin = INFINITY;
    for (int r = 0; r < in->n_reqs; r++) amin = fmin(amin, in->reqs[r].arrival_s);
    lb = amin + busy;
  } else {
    lb = cf__streams_s(in, out, 1);
  }
  cf_sched_plan_t alt;
  cf_sched_plan_init(&alt);
  /* with holes, load's plan computes them: two kinds, no closed form, so it is not built
   * (building it cost as much as the plan itself: a hole compute per layer and run); the
   * windowed candidate (k = 2) computes and loads, but no op of it waits on another stream
   * (its computes take every chunk of a layer, its loads need nothing), so its streams run
   * back to back as well: exact without holes */
  int holes = cf__any_holes(in);
  for (int k = holes ? 1 : 0; k < (windowed && !holes ? 3 : 2) && !rc; k++) {
    double wlb = 0;
    if (k == 2) {
      if ((rc = cf__window_plan(in, dev, &alt, &wlb))) break;
      if (wlb >= lb * (1 - 1e-9)) continue; /* its busiest stream: cannot beat `out` */
    } else {
      if (cf__alt_lb(in, dev, k) >= lb * (1 - 1e-9)) continue; /* cannot beat it: not built */
      rc = k ? cf__policy_recompute(in, dev, &alt) : cf__policy_load(in, dev, &alt);
      if (!rc) rc = cf__plan_window_clip(in, &alt);
      if (rc) break;
    }
    int kinds = 0; /* the closed form holds for plans of one op kind only (k < 2) */
    for (size_t i = 0; i < alt.n_ops; i++) kinds |= 1 << alt.ops[i].kind;
    if (k < 2 && (kinds & (kinds - 1))) continue;
    double mk = cf__streams_s(in, &alt, 0);
    if (mk < lb * (1 - 1e-9)) { /* strictly better than anything `out` can do */
      alt.policy = CF_POLICY_OPTIMAL;
      alt.est_makespan_s = mk;
      alt.sim_evals = out->sim_evals;
      cf__swap_plans(out, &alt);
      lb = mk;
    }
  }
  cf_sched_plan_free(&alt);
  return rc;
}

int cf__check_others(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out, int runs) {
  typedef int (*plan_fn)(const cf_sched_input_t *, const int *, cf_sched_plan_t *);
  static const plan_fn fn[5] = {cf__policy_recompute, cf__policy_load, cf__policy_cake,
                                cf__policy_layerwise, cf__policy_cacheflow};
  enum { NP = 5 };
  if (runs == 0 || runs == 1 || in->n_reqs == 0) return 0; /* cannot compare: nothing to do */
  cf_sched_plan_t alt[NP];
  double lb[NP];
  int idx[NP], rc = 0, used = 0;
  cf_sim_result_t sim;
  cf_sim_result_init(&sim);
  for (int i = 0; i < NP; i++) cf_sched_plan_init(&alt[i]);
  /* each other policy's plan and a lower bound on its makespan in O(ops) (its streams back to
   * back from each request's arrival: cf_sim starts no op earlier) */
  for (int i = 0; i < NP && !rc; i++) {
    idx[i] = i;
    if (!(rc = fn[i](in, dev, &alt[i]))) rc = cf__plan_window_clip(in, &alt[i]);
    lb[i] = rc ? INFINITY : cf__streams_s(in, &alt[i], 0);
  }
  for (int i = 1; i < NP; i++) /* likeliest winners first: by lower bound */
    for (int j = i; j > 0 && lb[idx[j]] < lb[idx[j - 1]]; j--) { int t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t; }
  double mk = INFINITY, mean = INFINITY;
  if (!rc && lb[idx[0]] < INFINITY) {
    if (!(rc = cf__sim_clipped(in, out, &sim))) {
      used++;
      mk = sim.makespan_s;
      mean = sim.mean_ttft_s;
    }
  }
  for (int k = 0; k < NP && !rc && (runs < 0 || used < runs); k++) {
    int i = idx[k];
    if (lb[i] >= mk * (1 - 1e-12)) break; /* this one and the rest cannot be faster */
    if ((rc = cf_sim_run(in, &alt[i], &sim))) break;
    used++;
    cf__score_t a = {0, sim.makespan_s, sim.mean_ttft_s}, b = {0, mk, mean};
    if (sim.makespan_s < mk && cf__score_better(a, b)) {
      mk = sim.makespan_s;
      mean = sim.mean_ttft_s;
      alt[i].policy = CF_POLICY_OPTIMAL;
      alt[i].est_makespan_s = mk;
      alt[i].sim_evals = out->sim_evals;
      cf__swap_plans(out, &alt[i]);
    }
  }
  out->sim_evals += used;
  for (int i = 0; i < NP; i++) cf_sched_plan_free(&alt[i]);
  cf_sim_result_free(&sim);
  return rc;
}
