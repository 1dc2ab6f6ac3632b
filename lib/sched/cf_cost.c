/* cf_cost — defaults and validation of the scheduler's cost model (see cf_cost.h). */
#include "sched/cf_cost.h"

#include <math.h>
#include <stdio.h>

#include "util/cf_err.h"

void cf_cost_h100_llama8b(cf_sched_cost_t *c) {
  c->n_layers = 32;
  c->chunk_tokens = 256;
  c->kv_bytes_per_token = 4096; /* 2 (K,V) x 8 kv heads x 128 x bf16 */
  c->gamma_s = 0.173e-3;
  c->alpha_s = 0.622e-6;
  c->beta_s = 0.0488e-9;
  c->n_devices = 1;
  c->shared_link = 0;
  c->link_Bps = 48e9;
  c->link_latency_s = 8e-6;
  c->peer_Bps = 0; /* one device: no peer link */
  c->peer_latency_s = 0;
  c->pp_stages = 1;
  c->hidden_bytes_per_token = 0;
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) c->tier_Bps[t] = 0; /* every tier at link_Bps */
  c->window = 0; /* llama-3.1-8b: full attention on every layer */
  c->window_frac = 0;
  for (int i = 0; i < 4; i++) c->window_mask[i] = 0;
}

static int cf__pos(const char *name, double v, int allow_zero) {
  if (!isfinite(v) || v < 0 || (!allow_zero && v == 0))
    return cf_seterr(CF_EINVAL, "cost model: %s = %g: expected a finite %s number", name, v,
                     allow_zero ? "non-negative" : "positive");
  return 0;
}

int cf_cost_check(const cf_sched_cost_t *c) {
  int rc;
  if (c->n_layers < 1 || c->n_layers > 4096)
    return cf_seterr(CF_EINVAL, "cost model: n_layers = %d: expected 1..4096", c->n_layers);
  if (c->chunk_tokens < 1 || c->chunk_tokens > (1 << 20))
    return cf_seterr(CF_EINVAL, "cost model: chunk_tokens = %d: expected 1..1048576",
                     c->chunk_tokens);
  if (c->n_devices < 1 || c->n_devices > 1024)
    return cf_seterr(CF_EINVAL, "cost model: n_devices = %d: expected 1..1024", c->n_devices);
  if ((rc = cf__pos("kv_bytes_per_token", c->kv_bytes_per_token, 0))) return rc;
  if ((rc = cf__pos("gamma_s", c->gamma_s, 1))) return rc;
  if ((rc = cf__pos("alpha_s", c->alpha_s, 0))) return rc;
  if ((rc = cf__pos("beta_s", c->beta_s, 1))) return rc;
  if ((rc = cf__pos("link_Bps", c->link_Bps, 0))) return rc;
  if ((rc = cf__pos("link_latency_s", c->link_latency_s, 1))) return rc;
  if (c->window < 0 || !(c->window_frac >= 0 && c->window_frac <= 1))
    return cf_seterr(CF_EINVAL, "cost model: window = %d, window_frac = %g: expected a "
                     "non-negative window and a fraction in [0, 1]", c->window, c->window_frac);
  for (int t = 0; t < CF_COST_MAX_TIERS; t++) {
    char name[32];
    snprintf(name, sizeof name, "tier_Bps[%d]", t);
    if ((rc = cf__pos(name, c->tier_Bps[t], 1))) return rc;
  }
  if (c->n_devices > 1) { /* read only with several devices (see cf_cost.h) */
    if ((rc = cf__pos("peer_Bps", c->peer_Bps, 1))) return rc;
    if ((rc = cf__pos("peer_latency_s", c->peer_latency_s, 1))) return rc;
    if (c->pp_stages < 1 || c->n_devices % c->pp_stages)
      return cf_seterr(CF_EINVAL, "cost model: pp_stages = %d: expected 1.. dividing n_devices = %d",
                       c->pp_stages, c->n_devices);
    if (c->pp_stages > 1 && (rc = cf__pos("hidden_bytes_per_token", c->hidden_bytes_per_token, 0)))
      return rc;
  }
  return 0;
}
