/* cf_evict_cost — see cf_evict_cost.h. */
#include "exec/cf_evict_cost.h"

#include <string.h>

void cf_evict_cost_table(const cf_sched_cost_t *c, uint32_t chunk_tokens, cf_store_cost_t *out) {
  memset(out, 0, sizeof *out);
  uint32_t C = chunk_tokens ? chunk_tokens : 1;
  uint32_t span = (131072u + C - 1) / C; /* chunks in 128k tokens */
  out->bucket_chunks = (span + CF_STORE_COST_BUCKETS - 1) / CF_STORE_COST_BUCKETS;
  if (!out->bucket_chunks) out->bucket_chunks = 1;
  const double L = c->n_layers > 0 ? c->n_layers : 1;
  for (int b = 0; b < CF_STORE_COST_BUCKETS; b++) {
    double p = (double)b * out->bucket_chunks * C;
    double recompute = L * cf_cost_step(c, p, C);
    for (int t = 0; t < 2; t++) {
      double rate = cf_cost_tier_Bps(c, t);
      double load = rate > 0 ? L * C * c->kv_bytes_per_token / rate : recompute;
      double saved = recompute - load;
      if (saved < 0.01 * recompute) saved = 0.01 * recompute;
      out->saved_s[t][b] = (float)saved;
    }
  }
}
