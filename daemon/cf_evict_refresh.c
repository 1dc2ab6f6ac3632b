/* cf_evict_refresh — see cf_evict_refresh.h. */
#include "cf_evict_refresh.h"

#include <math.h>
#include <string.h>

#include "exec/cf_evict_cost.h"

void cf_evict_refresh_init(cf_evict_refresh_t *r, double tol) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  r->tol = tol > 0 ? tol : CF_EVICT_REFRESH_TOL;
}

void cf_evict_refresh_bind(cf_evict_refresh_t *r, cf_store_t *store, uint32_t chunk_tokens) {
  pthread_mutex_lock(&r->mu);
  r->store = store;
  r->chunk_tokens = chunk_tokens;
  r->have = 0; /* the next offer installs */
  pthread_mutex_unlock(&r->mu);
}

void cf_evict_refresh_close(cf_evict_refresh_t *r) { pthread_mutex_destroy(&r->mu); }

/* Some entry of b differs from a's by more than tol of a's (or the bucket width changed). */
static int cf__moved(const cf_store_cost_t *a, const cf_store_cost_t *b, double tol) {
  if (a->bucket_chunks != b->bucket_chunks) return 1;
  for (int t = 0; t < 2; t++)
    for (int i = 0; i < CF_STORE_COST_BUCKETS; i++)
      if (fabs((double)b->saved_s[t][i] - a->saved_s[t][i]) > tol * fabs((double)a->saved_s[t][i])) return 1;
  return 0;
}

int cf_evict_refresh_offer(cf_evict_refresh_t *r, const cf_sched_cost_t *cost, int force) {
  if (!cost) return 0;
  pthread_mutex_lock(&r->mu);
  if (!r->store) {
    pthread_mutex_unlock(&r->mu);
    return 0;
  }
  cf_store_cost_t t;
  cf_evict_cost_table(cost, r->chunk_tokens, &t); /* 128 entries: cheap next to a plan */
  r->offers++;
  int install = force || !r->have || cf__moved(&r->installed, &t, r->tol);
  if (install) {
    /* under our lock: two installs never interleave, the store ends with the newer table */
    cf_store_set_cost(r->store, &t);
    r->installed = t;
    r->have = 1;
    r->installs++;
  }
  pthread_mutex_unlock(&r->mu);
  return install;
}

void cf_evict_refresh_stats(cf_evict_refresh_t *r, cf_evict_refresh_stats_t *out) {
  pthread_mutex_lock(&r->mu);
  out->installs = r->installs;
  out->offers = r->offers;
  for (int t = 0; t < 2; t++) out->saved_s[t] = r->have ? r->installed.saved_s[t][CF_STORE_COST_BUCKETS - 1] : 0;
  pthread_mutex_unlock(&r->mu);
}

void cf_evict_refresh_table(cf_evict_refresh_t *r, cf_store_cost_t *out) {
  pthread_mutex_lock(&r->mu);
  *out = r->installed;
  pthread_mutex_unlock(&r->mu);
}
