/* cf_evict_cost — the value table of the store's cost eviction policy (eviction = cost), filled
 * from the scheduler's cost model. It lives here because lib/exec is the first module above
 * both lib/sched (the cost model) and lib/store (the table's type), which are siblings. */
#ifndef CF_EVICT_COST_H
#define CF_EVICT_COST_H

#include "sched/cf_cost.h"
#include "store/cf_store.h"

/* For chunks of `chunk_tokens` tokens: bucket_chunks so that the 64 buckets span 128k tokens,
 * and per bucket (its first chunk's position p) and tier t in {CPU 0, SSD 1} the seconds one
 * full chunk's presence saves: n_layers * step(p, C) - n_layers * C * kv_bytes_per_token /
 * rate(t), at least 1% of the recompute (a chunk slower to read than to compute is still
 * worth keeping a little: the planner may read part of it while the GPU is busy). */
void cf_evict_cost_table(const cf_sched_cost_t *c, uint32_t chunk_tokens, cf_store_cost_t *out);

#endif
