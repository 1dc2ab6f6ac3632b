/* The run-time two-pointer policies: cake and cacheflow.
 *
 * Both decide the split while the restore runs: the compute stream claims work from the
 * front of a request and the link claims it from the back, and where they meet is decided by
 * their actual speeds. We reproduce that by running the race in simulated time with the same
 * costs the simulator uses (compute of claimed front units depends only on earlier front units
 * on the same stream, loads on nothing), and emit each stream's ops in claim order, so the
 * simulator replays exactly the race's timeline.
 *
 *   cake (Jin et al., ICML'25): per request, token-wise. Compute claims chunk `lo` (all L
 *     layers, one step per layer: it cannot batch chunks, it does not know the meeting point in
 *     advance), the link claims chunk `hi - 1` (all layers, one op). Streams serve requests in
 *     arrival order.
 *   cacheflow (CacheFlow v1): per request token-wise (as cake) when its prefix is at least the
 *     profiled threshold, else layer-wise (compute claims the lowest unclaimed layer over all
 *     chunks in one step, the link the highest unclaimed layer). The threshold is the shortest
 *     prefix for which the token-wise race beats the layer-wise one on this cost model. Compute
 *     serves requests in arrival order; the link serves the arrived request with the longest
 *     remaining tail (most unclaimed recompute time: the largest cut per byte loaded).
 */
#include <math.h>
#include <stdlib.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

enum { CF__TOKEN = 0, CF__LAYER = 1 };

typedef struct {
  int mode;
  int32_t lo, hi; /* unclaimed units [lo, hi): chunks (token mode) or layers (layer mode) */
  double tail;    /* compute time of the unclaimed units */
} cf__race_t;

/* Compute time of unit u of request r. */
static double cf__unit_comp(const cf_sched_cost_t *c, int64_t P, int mode, int32_t u) {
  if (mode == CF__LAYER) return cf_cost_step(c, 0, (double)P);
  double p = (double)u * c->chunk_tokens;
  return c->n_layers * cf_cost_step(c, p, (double)cf_cost_tok(c, P, u + 1) - p);
}
static double cf__unit_load(const cf_sched_cost_t *c, int64_t P, int mode, int32_t u) {
  if (mode == CF__LAYER) return cf_cost_load(c, (double)P, 1);
  double p = (double)u * c->chunk_tokens;
  return cf_cost_load(c, (double)cf_cost_tok(c, P, u + 1) - p, c->n_layers);
}

/* Standalone race time of one request in `mode`: both pointers start at time 0 and claim
 * units greedily; returns when the last claimed unit finishes. */
static double cf__race_alone(const cf_sched_cost_t *c, int64_t P, int mode) {
  int32_t n = mode == CF__LAYER ? c->n_layers : cf_cost_chunks(c, P);
  int32_t lo = 0, hi = n;
  double tc = 0, tl = 0;
  while (lo < hi) {
    if (tc <= tl) tc += cf__unit_comp(c, P, mode, lo++);
    else tl += cf__unit_load(c, P, mode, --hi);
  }
  return tc > tl ? tc : tl;
}

/* Shortest prefix (in chunks) from which token-wise beats layer-wise; binary search over
 * [1, max_chunks] (the comparison flips once: per-chunk step costs dominate short prefixes,
 * attention over long ones). Returns max_chunks + 1 when token-wise never wins. */
static int32_t cf__threshold(const cf_sched_cost_t *c, int32_t max_chunks) {
  int32_t lo = 1, hi = max_chunks + 1;
  while (lo < hi) {
    int32_t m = lo + (hi - lo) / 2;
    int64_t P = (int64_t)m * c->chunk_tokens;
    if (cf__race_alone(c, P, CF__TOKEN) <= cf__race_alone(c, P, CF__LAYER)) hi = m;
    else lo = m + 1;
  }
  return lo;
}

static int cf__race(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                    cf_policy_t pol) {
  const cf_sched_cost_t *c = &in->cost;
  int rc = cf__plan_reset(out, in, dev, pol);
  if (rc) return rc;
  int n = in->n_reqs, nd = c->n_devices, nl = cf_cost_n_links(c), L = c->n_layers;
  int ns = nd + nl;
  cf__race_t *st = calloc((size_t)(n ? n : 1), sizeof *st);
  int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
  double *fr = calloc((size_t)ns, sizeof *fr);
  int *head = calloc((size_t)ns, sizeof *head); /* FCFS scan start per stream */
  char *done = calloc((size_t)ns, 1);
  if (!st || !order || !fr || !head || !done) {
    rc = cf_seterr(CF_ENOMEM, "%s: %d requests", cf_policy_name(pol), n);
    goto out;
  }
  cf__arrival_order(in, order);
  int32_t maxn = 1;
  for (int r = 0; r < n; r++)
    if (out->n_chunks[r] > maxn) maxn = out->n_chunks[r];
  int32_t thr = pol == CF_POLICY_CACHEFLOW ? cf__threshold(c, maxn) : 0;
  for (int r = 0; r < n; r++) {
    int64_t P = in->reqs[r].prefix_tokens;
    st[r].mode = out->n_chunks[r] >= thr ? CF__TOKEN : CF__LAYER;
    st[r].lo = 0;
    st[r].hi = out->n_chunks[r] == 0 ? 0 : st[r].mode == CF__LAYER ? L : out->n_chunks[r];
    for (int32_t u = 0; u < st[r].hi; u++) st[r].tail += cf__unit_comp(c, P, st[r].mode, u);
  }
  for (;;) {
    int s = -1;
    for (int i = 0; i < ns; i++)
      if (!done[i] && (s < 0 || fr[i] < fr[s])) s = i;
    if (s < 0) break;
    int is_link = s >= nd;
    double t = fr[s], next_arrival = INFINITY;
    int pick = -1;
    for (int i = head[s]; i < n; i++) {
      int r = order[i];
      if ((is_link ? cf_cost_link_of(c, dev[r]) != s - nd : dev[r] != s) ||
          st[r].lo >= st[r].hi) {
        if (i == head[s]) head[s]++; /* finished or not ours: never eligible again */
        continue;
      }
      if (in->reqs[r].arrival_s > t) {
        next_arrival = in->reqs[r].arrival_s;
        break; /* sorted by arrival: nothing later has arrived either */
      }
      if (pick < 0) {
        pick = r;
        if (!(is_link && pol == CF_POLICY_CACHEFLOW)) break; /* FCFS */
      } else if (st[r].tail > st[pick].tail) {
        pick = r; /* cacheflow's link: the longest remaining tail */
      }
    }
    if (pick < 0) {
      if (isinf(next_arrival)) done[s] = 1;
      else fr[s] = next_arrival;
      continue;
    }
    int r = pick;
    int64_t P = in->reqs[r].prefix_tokens;
    int32_t nc = out->n_chunks[r];
    if (!is_link) {
      int32_t u = st[r].lo++;
      double d = cf__unit_comp(c, P, st[r].mode, u);
      st[r].tail -= d;
      fr[s] = t + d;
      if (st[r].mode == CF__TOKEN)
        for (int l = 0; l < L && !rc; l++) rc = cf__plan_op(out, r, CF_OP_COMPUTE, s, u, u + 1, l, l + 1);
      else
        rc = cf__plan_op(out, r, CF_OP_COMPUTE, s, 0, nc, u, u + 1);
    } else {
      int32_t u = --st[r].hi;
      st[r].tail -= cf__unit_comp(c, P, st[r].mode, u);
      fr[s] = t + cf__unit_load(c, P, st[r].mode, u);
      if (st[r].mode == CF__TOKEN)
        rc = cf__plan_op(out, r, CF_OP_LOAD, s - nd, u, u + 1, 0, L);
      else
        rc = cf__plan_op(out, r, CF_OP_LOAD, s - nd, 0, nc, u, u + 1);
    }
    if (rc) goto out;
  }
  for (int r = 0; r < n; r++) { /* staircases from where the pointers met */
    uint16_t *h = cf__plan_h(out, r);
    for (int32_t ch = 0; ch < out->n_chunks[r]; ch++)
      h[ch] = (uint16_t)(st[r].mode == CF__LAYER ? st[r].lo : (ch < st[r].lo ? L : 0));
  }
out:
  free(st);
  free(order);
  free(fr);
  free(head);
  free(done);
  return rc;
}

int cf__policy_cake(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__race(in, dev, out, CF_POLICY_CAKE);
}

int cf__policy_cacheflow(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__race(in, dev, out, CF_POLICY_CACHEFLOW);
}
