/* cf_plan — plan buffers, op emission, input checks, device assignment and the policy
 * dispatch behind cf_sched_plan(). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_bound.h"
#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

static const char *const cf__policy_names[CF_POLICY_COUNT] = {
    "recompute", "load", "cake", "layerwise", "cacheflow", "optimal"};

const char *cf_policy_name(cf_policy_t p) {
  return (unsigned)p < CF_POLICY_COUNT ? cf__policy_names[p] : "unknown";
}

int cf_policy_parse(const char *name, cf_policy_t *out) {
  for (int i = 0; i < CF_POLICY_COUNT; i++)
    if (name && strcmp(name, cf__policy_names[i]) == 0) {
      *out = (cf_policy_t)i;
      return 0;
    }
  return cf_seterr(CF_EINVAL,
                   "unknown policy '%s': expected recompute, load, cake, layerwise, cacheflow "
                   "or optimal",
                   name ? name : "(null)");
}

double cf_sched_load_s(const cf_sched_cost_t *c, const cf_sched_req_t *q, int32_t c0, int32_t c1,
                       int layers) {
  if (c1 <= c0 || layers <= 0) return 0.0;
  int64_t P = q->prefix_tokens, t0 = cf_cost_tok(c, P, c0);
  if (!q->chunk_tier) /* one tier: its rate over the op's tokens */
    return c->link_latency_s +
           (double)(cf_cost_tok(c, P, c1) - t0) * layers * c->kv_bytes_per_token / cf_cost_tier_Bps(c, 0);
  double s = 0; /* seconds per layer, chunk by chunk (a hole: nothing crosses the link) */
  for (int32_t ch = c0; ch < c1; ch++) {
    int64_t t1 = cf_cost_tok(c, P, ch + 1);
    if (q->chunk_tier[ch] != CF_SCHED_TIER_NONE) s += (double)(t1 - t0) / cf_cost_tier_Bps(c, q->chunk_tier[ch]);
    t0 = t1;
  }
  return c->link_latency_s + s * layers * c->kv_bytes_per_token;
}

int32_t cf_sched_req_holes(const cf_sched_cost_t *c, const cf_sched_req_t *q) {
  int32_t h = 0;
  for (int32_t ch = 0, n = q->chunk_tier ? cf_cost_chunks(c, q->prefix_tokens) : 0; ch < n; ch++)
    h += q->chunk_tier[ch] == CF_SCHED_TIER_NONE;
  return h;
}

void cf_sched_plan_init(cf_sched_plan_t *plan) { memset(plan, 0, sizeof *plan); }

void cf_sched_plan_free(cf_sched_plan_t *plan) {
  free(plan->device);
  free(plan->n_chunks);
  free(plan->h_off);
  free(plan->h);
  free(plan->ops);
  memset(plan, 0, sizeof *plan);
}

int cf_sched_input_check(const cf_sched_input_t *in) {
  int rc = cf_cost_check(&in->cost);
  if (rc) return rc;
  if (in->n_reqs < 0 || (in->n_reqs > 0 && !in->reqs))
    return cf_seterr(CF_EINVAL, "sched input: n_reqs = %d with reqs %s", in->n_reqs,
                     in->reqs ? "set" : "NULL");
  for (int r = 0; r < in->n_reqs; r++) {
    const cf_sched_req_t *q = &in->reqs[r];
    if (!isfinite(q->arrival_s) || q->arrival_s < 0)
      return cf_seterr(CF_EINVAL, "request %d: arrival_s = %g: expected a finite value >= 0", r,
                       q->arrival_s);
    if (q->prefix_tokens < 0 || q->prefix_tokens > ((int64_t)1 << 30))
      return cf_seterr(CF_EINVAL, "request %d: prefix_tokens = %lld: expected 0..2^30", r,
                       (long long)q->prefix_tokens);
    if (cf_cost_chunks(&in->cost, q->prefix_tokens) > INT32_MAX / 2)
      return cf_seterr(CF_EINVAL, "request %d: %lld tokens is too many chunks", r,
                       (long long)q->prefix_tokens);
    if (q->new_tokens < 0 || q->new_tokens > ((int64_t)1 << 30))
      return cf_seterr(CF_EINVAL, "request %d: new_tokens = %lld: expected 0..2^30", r,
                       (long long)q->new_tokens);
    if (q->device < -1 || q->device >= in->cost.n_devices)
      return cf_seterr(CF_EINVAL, "request %d: device %d: expected -1 or 0..%d", r, q->device,
                       in->cost.n_devices - 1);
    for (int32_t c = 0, n = q->chunk_tier ? cf_cost_chunks(&in->cost, q->prefix_tokens) : 0; c < n; c++)
      if (q->chunk_tier[c] >= CF_COST_MAX_TIERS && q->chunk_tier[c] != CF_SCHED_TIER_NONE)
        return cf_seterr(CF_EINVAL, "request %d: chunk %d: tier %d: expected 0..%d or %d (a hole)", r, c,
                         q->chunk_tier[c], CF_COST_MAX_TIERS - 1, CF_SCHED_TIER_NONE);
  }
  return 0;
}

static int cf__grow(void **buf, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  void *p = realloc(*buf, n * elem);
  if (!p) return cf_seterr(CF_ENOMEM, "plan: cannot grow to %zu entries of %zu bytes", n, elem);
  *buf = p;
  *cap = n;
  return 0;
}

int cf__plan_reset(cf_sched_plan_t *p, const cf_sched_input_t *in, const int *dev,
                   cf_policy_t policy) {
  int n = in->n_reqs;
  size_t cap = p->cap_reqs_;
  if ((size_t)n + 1 > cap) {
    size_t c = cap ? cap : 8;
    while (c < (size_t)n + 1) c *= 2;
    int *d = realloc(p->device, c * sizeof *d);
    if (d) p->device = d;
    int32_t *nc = realloc(p->n_chunks, c * sizeof *nc);
    if (nc) p->n_chunks = nc;
    size_t *ho = realloc(p->h_off, c * sizeof *ho);
    if (ho) p->h_off = ho;
    if (!d || !nc || !ho) return cf_seterr(CF_ENOMEM, "plan: %d requests", n);
    p->cap_reqs_ = c;
  }
  size_t tot = 0;
  for (int r = 0; r < n; r++) {
    p->device[r] = dev[r];
    p->n_chunks[r] = cf_cost_chunks(&in->cost, in->reqs[r].prefix_tokens);
    p->h_off[r] = tot;
    tot += (size_t)p->n_chunks[r];
  }
  p->h_off[n] = tot;
  int rc = cf__grow((void **)&p->h, &p->cap_h_, tot ? tot : 1, sizeof *p->h);
  if (rc) return rc;
  memset(p->h, 0, tot * sizeof *p->h);
  p->policy = policy;
  p->n_reqs = n;
  p->n_layers = in->cost.n_layers;
  p->n_devices = in->cost.n_devices;
  p->n_links = cf_cost_n_links(&in->cost);
  p->n_ops = 0;
  p->est_makespan_s = 0;
  p->sim_evals = 0;
  return 0;
}

int cf__plan_reserve(cf_sched_plan_t *p, size_t more) {
  if (p->n_ops + more <= p->cap_ops_) return 0;
  return cf__grow((void **)&p->ops, &p->cap_ops_, p->n_ops + more, sizeof *p->ops);
}

int cf__plan_op(cf_sched_plan_t *p, int r, cf_op_kind_t kind, int stream, int32_t c0,
                int32_t c1, int l0, int l1) {
  if (p->n_ops >= p->cap_ops_) { /* rarely: the buffer is kept between plans */
    int rc = cf__grow((void **)&p->ops, &p->cap_ops_, p->n_ops + 1, sizeof *p->ops);
    if (rc) return rc;
  }
  cf_sched_op_t *o = &p->ops[p->n_ops++];
  o->req = r;
  o->kind = (uint8_t)kind;
  o->pad_ = 0;
  o->dst = (int16_t)(kind == CF_OP_SEND ? p->device[r] : -1);
  o->pad2_ = 0;
  o->stream = (int16_t)stream;
  o->c0 = c0;
  o->c1 = c1;
  o->l0 = (int16_t)l0;
  o->l1 = (int16_t)l1;
  return 0;
}

/* h_c = #{l : k_l > c}; k is non-increasing, so walk both in O(n + L) */
static void cf__set_staircase(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                              const int32_t *k) {
  int L = in->cost.n_layers, n = p->n_chunks[r];
  uint16_t *h = cf__plan_h(p, r);
  int l = L;
  for (int c = 0; c < n; c++) {
    while (l > 0 && k[l - 1] <= c) l--;
    h[c] = (uint16_t)l;
  }
}

int cf__plan_hidden(cf_sched_plan_t *p, const cf_sched_input_t *in, int r, int32_t c0,
                    int32_t c1) {
  if (cf_cost_stage(&in->cost, p->device[r]) == 0 || c1 <= c0) return 0;
  return cf__plan_op(p, r, CF_OP_LOAD, cf_cost_link_of(&in->cost, p->device[r]), c0, c1, -1, 0);
}

int cf__plan_emit_compute_split(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                                const int32_t *k, int32_t a) {
  cf__set_staircase(p, in, r, k);
  if (k[0] > 0) { /* a later pipeline stage: its layer-0 input comes first, over its link */
    int rc = cf__plan_hidden(p, in, r, 0, k[0]);
    if (rc) return rc;
  }
  for (int l = 0; l < in->cost.n_layers && k[l] > 0; l++) {
    int32_t c0 = a < k[l] ? a : k[l];
    if (c0 == k[l]) continue; /* the helper computes all of this layer */
    int rc = cf__plan_op(p, r, CF_OP_COMPUTE, p->device[r], c0, k[l], l, l + 1);
    if (rc) return rc;
  }
  return 0;
}

int cf__plan_send(cf_sched_plan_t *p, int r, int from, int to, int32_t c0, int32_t c1, int l0,
                  int l1) {
  int rc = cf__plan_op(p, r, CF_OP_SEND, from, c0, c1, l0, l1);
  if (!rc) p->ops[p->n_ops - 1].dst = (int16_t)to;
  return rc;
}

int cf__plan_emit_help(cf_sched_plan_t *p, const cf_sched_input_t *in, int r, const int32_t *k,
                       const int32_t *a, const int *helper, int m) {
  for (int l = 0; l < in->cost.n_layers && k[l] > 0; l++)
    for (int i = 0; i < m; i++) {
      int32_t c0 = i ? a[i - 1] : 0, c1 = a[i] < k[l] ? a[i] : k[l];
      if (c1 <= c0) break;
      int rc = cf__plan_op(p, r, CF_OP_COMPUTE, helper[i], c0, c1, l, l + 1);
      /* to the later helpers that attend to these cells at this layer (the next one first:
       * it waits for them), then to the request's device */
      for (int j = i + 1; j < m && !rc && a[j - 1] < k[l]; j++)
        rc = cf__plan_send(p, r, helper[i], helper[j], c0, c1, l, l + 1);
      if (!rc) rc = cf__plan_send(p, r, helper[i], p->device[r], c0, c1, l, l + 1);
      if (rc) return rc;
    }
  return 0;
}

int cf__plan_emit_compute(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                          const int32_t *k) {
  return cf__plan_emit_compute_split(p, in, r, k, 0); /* no helper: every chunk on r's device */
}

int cf__plan_emit_loads(cf_sched_plan_t *p, const cf_sched_input_t *in, int r,
                        const int32_t *k, int per_layer) {
  int L = in->cost.n_layers, n = p->n_chunks[r];
  int link = cf_cost_link_of(&in->cost, p->device[r]);
  for (int l = 0; l < L;) {
    int l1 = l + 1;
    while (!per_layer && l1 < L && k[l1] == k[l]) l1++;
    if (k[l] < n) {
      int rc = cf__plan_op(p, r, CF_OP_LOAD, link, k[l], n, l, l1);
      if (rc) return rc;
    }
    l = l1;
  }
  return 0;
}

/* (arrival, index) order of requests x before y */
static int cf__before(const cf_sched_req_t *q, int x, int y) {
  if (q[x].arrival_s != q[y].arrival_s) return q[x].arrival_s < q[y].arrival_s;
  return x < y;
}

/* Insertion sort by (arrival, index): stable, allocation-free, reentrant, and batches are
 * usually already in arrival order (O(n) then). */
void cf__arrival_order(const cf_sched_input_t *in, int *order) {
  for (int i = 0; i < in->n_reqs; i++) {
    int j = i;
    while (j > 0 && cf__before(in->reqs, i, order[j - 1])) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
}

void cf__assign_devices(const cf_sched_input_t *in, int *dev) {
  int G = in->cost.n_devices, n = in->n_reqs;
  if (G == 1) {
    for (int r = 0; r < n; r++) dev[r] = 0;
    return;
  }
  double *load = calloc((size_t)G, sizeof *load);
  double *sz = malloc((size_t)(n ? n : 1) * sizeof *sz);
  int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
  if (!load || !order || !sz) { /* fall back to round robin: still deterministic and valid */
    for (int r = 0; r < n; r++) dev[r] = in->reqs[r].device >= 0 ? in->reqs[r].device : r % G;
    free(load);
    free(sz);
    free(order);
    return;
  }
  for (int r = 0; r < n; r++) sz[r] = cf_bound_request(&in->cost, &in->reqs[r]);
  cf__arrival_order(in, order);
  for (int i = 0; i < n; i++) { /* pinned requests first: they are not ours to move */
    int r = order[i];
    if (in->reqs[r].device >= 0) {
      dev[r] = in->reqs[r].device;
      load[dev[r]] = fmax(load[dev[r]], in->reqs[r].arrival_s) + sz[r];
    }
  }
  /* within one arrival time, largest first (LPT): bursts balance far better */
  for (int i = 1; i < n; i++) {
    int v = order[i], j = i;
    while (j > 0 && in->reqs[order[j - 1]].arrival_s == in->reqs[v].arrival_s &&
           sz[order[j - 1]] < sz[v]) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = v;
  }
  for (int i = 0; i < n; i++) {
    int r = order[i];
    if (in->reqs[r].device >= 0) continue;
    double a = in->reqs[r].arrival_s;
    int best = 0;
    for (int d = 1; d < G; d++)
      if (fmax(load[d], a) < fmax(load[best], a) ||
          (fmax(load[d], a) == fmax(load[best], a) && load[d] < load[best]))
        best = d;
    dev[r] = best;
    load[best] = fmax(load[best], a) + sz[r];
  }
  free(load);
  free(sz);
  free(order);
}

int cf_sched_plan(const cf_sched_input_t *in, cf_policy_t policy, cf_sched_plan_t *out) {
  int rc = cf_sched_input_check(in);
  if (rc) return rc;
  if ((unsigned)policy >= CF_POLICY_COUNT)
    return cf_seterr(CF_EINVAL, "policy %d: expected 0..%d", (int)policy, CF_POLICY_COUNT - 1);
  int stack_dev[64];
  int *dev = in->n_reqs <= 64 ? stack_dev : malloc((size_t)in->n_reqs * sizeof *dev);
  if (!dev) return cf_seterr(CF_ENOMEM, "plan: device array for %d requests", in->n_reqs);
  cf__assign_devices(in, dev);
  switch (policy) {
  case CF_POLICY_RECOMPUTE: rc = cf__policy_recompute(in, dev, out); break;
  case CF_POLICY_LOAD: rc = cf__policy_load(in, dev, out); break;
  case CF_POLICY_CAKE: rc = cf__policy_cake(in, dev, out); break;
  case CF_POLICY_LAYERWISE: rc = cf__policy_layerwise(in, dev, out); break;
  case CF_POLICY_CACHEFLOW: rc = cf__policy_cacheflow(in, dev, out); break;
  default: rc = cf__policy_optimal(in, dev, out); break;
  }
  if (!rc) rc = cf__plan_window_clip(in, out); /* windowed cells no token needs: not loaded */
  if (dev != stack_dev) free(dev);
  return rc;
}
