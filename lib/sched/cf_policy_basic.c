/* The three static baselines: recompute (vLLM/SGLang prefix miss), load (LMCache/HiCache,
 * layer-wise pipelined) and layerwise (compute the bottom l layers of every chunk, load the
 * top: CacheFlow v1 for short prefixes, HCache-like). Each request is planned on its own; the
 * batch runs in arrival order on every stream. */
#include <stdlib.h>

#include "sched/cf_sched_int.h"
#include "util/cf_err.h"

int cf__layer_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                   cf_policy_t pol, const int *ell) {
  int rc = cf__plan_reset(out, in, dev, pol);
  if (rc) return rc;
  int n = in->n_reqs, L = in->cost.n_layers;
  int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
  int32_t *k = malloc((size_t)L * sizeof *k);
  if (!order || !k) {
    free(order);
    free(k);
    return cf_seterr(CF_ENOMEM, "%s: %d requests", cf_policy_name(pol), n);
  }
  cf__arrival_order(in, order);
  for (int i = 0; i < n && !rc; i++) {
    int r = order[i];
    for (int l = 0; l < L; l++) k[l] = l < ell[r] ? out->n_chunks[r] : 0;
    rc = cf__plan_emit_compute(out, in, r, k);
    if (!rc) rc = cf__plan_emit_loads(out, in, r, k, 1);
  }
  free(order);
  free(k);
  return rc ? rc : cf__plan_holes(in, out); /* holes: computed at every layer */
}

/* The static policies: per request the number of bottom layers it computes over all its
 * chunks (`layers`), planned by cf__layer_plan. */
static int cf__static_plan(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out,
                           cf_policy_t pol, int (*layers)(const cf_sched_cost_t *, const cf_sched_req_t *)) {
  int n = in->n_reqs, stack[64] = {0};
  int *ell = n <= 64 ? stack : malloc((size_t)n * sizeof *ell);
  if (!ell) return cf_seterr(CF_ENOMEM, "%s: %d requests", cf_policy_name(pol), n);
  for (int r = 0; r < n; r++) ell[r] = layers(&in->cost, &in->reqs[r]);
  int rc = cf__layer_plan(in, dev, out, pol, ell);
  if (ell != stack) free(ell);
  return rc;
}

static int cf__all_layers(const cf_sched_cost_t *c, const cf_sched_req_t *q) { return c->n_layers; }
static int cf__no_layers(const cf_sched_cost_t *c, const cf_sched_req_t *q) { return 0; }

/* Bottom layers to compute so that computing them and loading the rest take about as long:
 * argmin over l of max(l * step(all tokens), (L - l) * load(layer)); ties go to fewer layers. */
static int cf__balanced_layers(const cf_sched_cost_t *c, const cf_sched_req_t *q) {
  double tc = cf_cost_step(c, 0, (double)q->prefix_tokens);
  double tio = cf_sched_load_s(c, q, 0, cf_cost_chunks(c, q->prefix_tokens), 1); /* each chunk at its tier's rate */
  int best = 0;
  double bv = c->n_layers * tio;
  for (int l = 1; l <= c->n_layers; l++) {
    double v = l * tc > (c->n_layers - l) * tio ? l * tc : (c->n_layers - l) * tio;
    if (v < bv) { bv = v; best = l; }
  }
  return best;
}

int cf__policy_recompute(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__static_plan(in, dev, out, CF_POLICY_RECOMPUTE, cf__all_layers);
}

int cf__policy_load(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__static_plan(in, dev, out, CF_POLICY_LOAD, cf__no_layers);
}

int cf__policy_layerwise(const cf_sched_input_t *in, const int *dev, cf_sched_plan_t *out) {
  return cf__static_plan(in, dev, out, CF_POLICY_LAYERWISE, cf__balanced_layers);
}
