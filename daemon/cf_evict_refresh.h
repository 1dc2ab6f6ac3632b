/* cf_evict_refresh — keeps the store's cost eviction table (eviction = cost) in step with the
 * cost model the planner plans with.
 *
 * The table (cf_evict_cost_table: per position bucket and tier, the seconds a chunk's presence
 * saves) is built from the cost model; the online re-fit (cf_refit) rescales the compute term
 * and re-fits the tiers' read rates after every executed restore, so a table built once at
 * start-up values chunks with a model the planner no longer uses (on a host whose compute got
 * 2x slower, recomputing a deep chunk is worth twice what the table says). The planner hands
 * every round's model here; the table is rebuilt from it and installed when some entry moved by
 * more than `tol` (relative) from the installed one. Installing re-ranks every stored chunk
 * (cf_store_set_cost: O(n) under the store's lock), so small drifts (timer noise moves the
 * re-fit by a few % per restore) do not install; drift accumulates against the installed table,
 * so a sustained change always does. Thread-safe (the executor thread plans, the loop thread
 * reloads). */
#ifndef CF_EVICT_REFRESH_H
#define CF_EVICT_REFRESH_H

#include <pthread.h>
#include <stdint.h>

#include "sched/cf_cost.h"
#include "store/cf_store.h"

typedef struct {
  pthread_mutex_t mu;
  cf_store_t *store;          /* borrowed; NULL: nothing to refresh */
  uint32_t chunk_tokens;
  double tol;                 /* relative change of some entry that installs a new table */
  cf_store_cost_t installed;  /* what the store values chunks with now */
  int have;
  uint64_t installs;          /* tables handed to the store (the first one included) */
  uint64_t offers;            /* models offered */
} cf_evict_refresh_t;

#define CF_EVICT_REFRESH_TOL 0.05

/* Unbound: every offer is ignored (eviction is not cost, or no store). tol <= 0: CF_EVICT_REFRESH_TOL. */
void cf_evict_refresh_init(cf_evict_refresh_t *r, double tol);
/* The store to keep in step (borrowed; NULL unbinds), its chunks of chunk_tokens tokens. */
void cf_evict_refresh_bind(cf_evict_refresh_t *r, cf_store_t *store, uint32_t chunk_tokens);
void cf_evict_refresh_close(cf_evict_refresh_t *r);
/* Offer the model plans use now; `force` installs even an unchanged table (start-up, reload).
 * Returns 1 when a table was installed, else 0. */
int cf_evict_refresh_offer(cf_evict_refresh_t *r, const cf_sched_cost_t *cost, int force);

typedef struct {
  uint64_t installs, offers;
  double saved_s[2];          /* the installed table's deepest bucket per tier (CPU, SSD): 0 without one */
} cf_evict_refresh_stats_t;
void cf_evict_refresh_stats(cf_evict_refresh_t *r, cf_evict_refresh_stats_t *out);
/* A copy of the installed table (zeroed before the first install). */
void cf_evict_refresh_table(cf_evict_refresh_t *r, cf_store_cost_t *out);

#endif
