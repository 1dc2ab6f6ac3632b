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
/* Load time of unit u of request q (each chunk at its tier's rate); q NULL: a prefix of P
 * tokens in tier 0 (the threshold search's probe). */
static double cf__unit_load(const cf_sched_cost_t *c, const cf_sched_req_t *q, int64_t P, int mode,
                            int32_t u) {
  cf_sched_req_t probe = {.prefix_tokens = P};
  if (!q) q = &probe;
  if (mode == CF__LAYER) return cf_sched_load_s(c, q, 0, cf_cost_chunks(c, P), 1);
  return cf_sched_load_s(c, q, u, u + 1, c->n_layers);
}

/* Standalone race time of one request in `mode`: both pointers start at time 0 and claim
 * units greedily; returns when the last claimed unit finishes. */
static double cf__race_alone(const cf_sched_cost_t *c, int64_t P, int mode) {
  int32_t n = mode == CF__LAYER ? c->n_layers : cf_cost_chunks(c, P);
  int32_t lo = 0, hi = n;
  double tc = 0, tl = 0;
  while (lo < hi) {
    if (tc <= tl) tc += cf__unit_comp(c, P, mode, lo++);
    else tl += cf__unit_load(c, NULL, P, mode, --hi);
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

/* cacheflow's link pick: per link a max-heap of (remaining tail, arrival rank) with lazy
 * deletion — a request's tail only shrinks, so every change pushes a fresh entry and stale
 * ones are dropped when they surface. O(log n) per pick instead of a scan of the batch. */
typedef struct {
  double tail;
  int rank, r;
} cf__hent_t;

typedef struct {
  cf__hent_t *a;
  size_t n, cap;
} cf__heap_t;

static int cf__hless(const cf__hent_t *x, const cf__hent_t *y) { /* x below y */
  return x->tail < y->tail || (x->tail == y->tail && x->rank > y->rank);
}

static int cf__hpush(cf__heap_t *h, double tail, int rank, int r) {
  if (h->n == h->cap) {
    size_t c = h->cap ? 2 * h->cap : 64;
    cf__hent_t *a = realloc(h->a, c * sizeof *a);
    if (!a) return cf_seterr(CF_ENOMEM, "cacheflow: link heap of %zu entries", c);
    h->a = a;
    h->cap = c;
  }
  size_t i = h->n++;
  h->a[i] = (cf__hent_t){tail, rank, r};
  while (i > 0 && cf__hless(&h->a[(i - 1) / 2], &h->a[i])) {
    cf__hent_t t = h->a[i];
    h->a[i] = h->a[(i - 1) / 2];
    h->a[(i - 1) / 2] = t;
    i = (i - 1) / 2;
  }
  return 0;
}

static void cf__hpop(cf__heap_t *h) {
  h->a[0] = h->a[--h->n];
  for (size_t i = 0;;) {
    size_t l = 2 * i + 1, b = i;
    if (l < h->n && cf__hless(&h->a[b], &h->a[l])) b = l;
    if (l + 1 < h->n && cf__hless(&h->a[b], &h->a[l + 1])) b = l + 1;
    if (b == i) break;
    cf__hent_t t = h->a[i];
    h->a[i] = h->a[b];
    h->a[b] = t;
    i = b;
  }
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
  int tail_link = pol == CF_POLICY_CACHEFLOW;
  cf__heap_t *heap = calloc((size_t)nl, sizeof *heap);
  int *addp = calloc((size_t)nl, sizeof *addp), *rank = malloc((size_t)(n ? n : 1) * sizeof *rank);
  char *added = calloc((size_t)(n ? n : 1), 1);
  if (!st || !order || !fr || !head || !done || !heap || !addp || !rank || !added) {
    rc = cf_seterr(CF_ENOMEM, "%s: %d requests", cf_policy_name(pol), n);
    goto out;
  }
  cf__arrival_order(in, order);
  for (int i = 0; i < n; i++) rank[order[i]] = i;
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
    if (is_link && tail_link) {
      int k = s - nd;
      cf__heap_t *hp = &heap[k];
      for (; addp[k] < n && in->reqs[order[addp[k]]].arrival_s <= t; addp[k]++) {
        int r = order[addp[k]];
        if (cf_cost_link_of(c, dev[r]) != k || st[r].lo >= st[r].hi) continue;
        added[r] = 1;
        if ((rc = cf__hpush(hp, st[r].tail, rank[r], r))) goto out;
      }
      while (hp->n && pick < 0) {
        int r = hp->a[0].r;
        if (st[r].lo >= st[r].hi || hp->a[0].tail != st[r].tail) cf__hpop(hp); /* stale */
        else pick = r;
      }
      for (int i = addp[k]; pick < 0 && i < n; i++) {
        int r = order[i];
        if (cf_cost_link_of(c, dev[r]) == k && st[r].lo < st[r].hi) {
          next_arrival = in->reqs[r].arrival_s;
          break;
        }
      }
    } else {
      for (int i = head[s]; i < n; i++) { /* FCFS */
        int r = order[i];
        if ((is_link ? cf_cost_link_of(c, dev[r]) != s - nd : dev[r] != s) ||
            st[r].lo >= st[r].hi) {
          if (i == head[s]) head[s]++; /* finished or not ours: never eligible again */
          continue;
        }
        if (in->reqs[r].arrival_s > t) next_arrival = in->reqs[r].arrival_s;
        else pick = r;
        break; /* sorted by arrival: the first one of ours decides */
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
      /* a later pipeline stage loads the hidden state entering layer 0 when it claims it (the
       * load joins its link's queue then; the simulator times it exactly) */
      if (st[r].mode == CF__TOKEN) {
        rc = cf__plan_hidden(out, in, r, u, u + 1);
        for (int l = 0; l < L && !rc; l++) rc = cf__plan_op(out, r, CF_OP_COMPUTE, s, u, u + 1, l, l + 1);
      } else {
        if (u == 0) rc = cf__plan_hidden(out, in, r, 0, nc);
        if (!rc) rc = cf__plan_op(out, r, CF_OP_COMPUTE, s, 0, nc, u, u + 1);
      }
    } else {
      int32_t u = --st[r].hi;
      st[r].tail -= cf__unit_comp(c, P, st[r].mode, u);
      fr[s] = t + cf__unit_load(c, &in->reqs[r], P, st[r].mode, u);
      if (st[r].mode == CF__TOKEN)
        rc = cf__plan_op(out, r, CF_OP_LOAD, s - nd, u, u + 1, 0, L);
      else
        rc = cf__plan_op(out, r, CF_OP_LOAD, s - nd, 0, nc, u, u + 1);
    }
    if (rc) goto out;
    if (tail_link && added[r] && st[r].lo < st[r].hi &&
        (rc = cf__hpush(&heap[cf_cost_link_of(c, dev[r])], st[r].tail, rank[r], r)))
      goto out;
  }
  for (int r = 0; r < n; r++) { /* staircases from where the pointers met */
    uint16_t *h = cf__plan_h(out, r);
    for (int32_t ch = 0; ch < out->n_chunks[r]; ch++)
      h[ch] = (uint16_t)(st[r].mode == CF__LAYER ? st[r].lo : (ch < st[r].lo ? L : 0));
  }
  /* holes: the link claimed them at no cost (cf_sched_load_s); they are computed instead */
  rc = cf__plan_holes(in, out);
out:
  free(st);
  free(order);
  free(fr);
  free(head);
  free(done);
  for (int k = 0; heap && k < nl; k++) free(heap[k].a);
  free(heap);
  free(addp);
  free(rank);
  free(added);
  return rc;
}

int cf__policy_cake(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__race(in, dev, out, CF_POLICY_CAKE);
}

int cf__policy_cacheflow(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__race(in, dev, out, CF_POLICY_CACHEFLOW);
}
