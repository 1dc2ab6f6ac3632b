/* The store's cost eviction table follows the online re-fit (daemon/cf_evict_refresh.c through
 * the planner's rounds): installed once at start, left alone while the re-fitted model stays
 * within the tolerance, rebuilt from the re-fitted model (and handed to the store) once a
 * sustained slow-down of the compute moved it, so that the value of a deep chunk (recomputing
 * it is what its presence saves) doubles with a 2x slower compute. Real store, real planner,
 * real re-fit. */
#include <math.h>

#include "cf_evict_refresh.h" /* linked from libcfdaemon */
#include "cf_planner.h"
#include "cf_test.h"
#include "exec/cf_evict_cost.h"
#include "store/cf_store_int.h" /* the table the store ranks with (st->cfg.cost) */
#include "unit/store_testlib.h"

#define C 64
#define L 8

static void cost_of(cf_sched_cost_t *c) {
  cf_cost_h100_llama8b(c);
  c->n_layers = L;
  c->chunk_tokens = C;
  c->kv_bytes_per_token = 1024;
  c->alpha_s = 1e-6; /* 8 steps of 512 tokens: ~4 ms predicted, above the re-fit's noise floor */
}

/* Executor stats of a restore that took `factor` times what `c` predicts for its steps. */
static cf_exec_stats_t slow_stats(const cf_sched_cost_t *c, double factor, double *took_s) {
  cf_exec_stats_t st = {0};
  st.forward_calls = 8;
  st.step_tokens = 8 * 512;
  st.step_attn = 8 * 512 * 256.0;
  double pred = c->gamma_s * 8 + c->alpha_s * st.step_tokens + c->beta_s * st.step_attn;
  st.compute_busy_ns = (int64_t)(pred * factor * 1e9);
  *took_s = pred * factor;
  return st;
}

/* One planning round of one restore (what the executor runs before each batch). */
static int plan_round(cf_planner_t *pl) {
  uint8_t tiers[4] = {CF_STORE_TIER_CPU, CF_STORE_TIER_CPU, CF_STORE_TIER_CPU, CF_STORE_TIER_CPU};
  cf_plan_input_t in = {.n_tokens = 4 * C + 16, .policy = CF_POLICY_OPTIMAL, .cached_tokens = 4 * C, .chunk_tiers = tiers};
  cf_restore_plan_t out;
  int rc = cf_planner_plan(pl, &in, &out, 1, C, L);
  cf_restore_plan_free(&out);
  return rc;
}

static cf_store_cost_t store_table(cf_store_t *st) {
  pthread_mutex_lock(&st->mu);
  cf_store_cost_t t = st->cfg.cost;
  pthread_mutex_unlock(&st->mu);
  return t;
}

CF_TEST(evict_cost_table_follows_the_refit) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/evref", cf_test_tmpdir());
  cf_store_geom_t g = st_geom(C, L, 64);
  cf_store_config_t sc;
  cf_store_config_default(&sc);
  sc.cpu_bytes = 1 << 20;
  sc.ssd_bytes = 0;
  sc.spill = 0;
  sc.cpu_evict = CF_STORE_EVICT_COST;
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(dir, &g, &sc, &st));

  cf_sched_cost_t base;
  cost_of(&base);
  cf_planner_t pl;
  cf_planner_init(&pl, 0.5);
  cf_planner_set_cost(&pl, &base, 1);
  cf_evict_refresh_t r;
  cf_evict_refresh_init(&r, 0);
  cf_evict_refresh_bind(&r, st, C);
  cf_planner_set_evict(&pl, &r);

  /* start-up: the calibrated model's table, in the store */
  cf_sched_cost_t now;
  CF_CHECK_OK(cf_planner_cost_now(&pl, &now));
  CF_CHECK(cf_evict_refresh_offer(&r, &now, 1) == 1);
  cf_store_cost_t t0, want;
  cf_evict_cost_table(&base, C, &want);
  t0 = store_table(st);
  CF_CHECK(t0.bucket_chunks == want.bucket_chunks && !memcmp(t0.saved_s, want.saved_s, sizeof want.saved_s));
  float deep0 = t0.saved_s[0][CF_STORE_COST_BUCKETS - 1];
  CF_CHECK(deep0 > 0);

  /* rounds with no re-fit sample: offered, not re-installed (no O(n) re-rank per round) */
  for (int i = 0; i < 3; i++) CF_CHECK_OK(plan_round(&pl));
  cf_evict_refresh_stats_t s;
  cf_evict_refresh_stats(&r, &s);
  CF_CHECK_MSG(s.installs == 1 && s.offers == 4, "installs %llu offers %llu", (unsigned long long)s.installs,
               (unsigned long long)s.offers);

  /* restores on time: the re-fit stays at 1, the table too */
  double took;
  cf_exec_stats_t x = slow_stats(&base, 1.0, &took);
  for (int i = 0; i < 3; i++) {
    cf_refit_sample(cf_planner_refit(&pl), &base, &x, took, took);
    CF_CHECK_OK(plan_round(&pl));
  }
  cf_evict_refresh_stats(&r, &s);
  CF_CHECK(s.installs == 1);

  /* the compute became 2x slower: the re-fit follows within a few restores, and the rounds
   * after it hand the store a table built from the re-fitted model */
  x = slow_stats(&base, 2.0, &took);
  for (int i = 0; i < 10; i++) {
    cf_refit_sample(cf_planner_refit(&pl), &base, &x, took, took / 2);
    CF_CHECK_OK(plan_round(&pl));
  }
  cf_refit_stats_t fs;
  cf_refit_stats(cf_planner_refit(&pl), &fs);
  CF_CHECK_MSG(fabs(fs.scale - 2) < 0.05, "scale %.3f", fs.scale);
  cf_evict_refresh_stats(&r, &s);
  CF_CHECK_MSG(s.installs >= 2, "installs %llu", (unsigned long long)s.installs);
  cf_store_cost_t t1 = store_table(st);
  CF_CHECK_OK(cf_planner_cost_now(&pl, &now));
  cf_evict_cost_table(&now, C, &want);
  /* the store ranks with a table within the tolerance of the model plans use now */
  for (int b = 0; b < CF_STORE_COST_BUCKETS; b++)
    CF_CHECK_MSG(fabsf(t1.saved_s[0][b] - want.saved_s[0][b]) <= CF_EVICT_REFRESH_TOL * want.saved_s[0][b] + 1e-12f,
                 "bucket %d: store %.6g, model now %.6g", b, t1.saved_s[0][b], want.saved_s[0][b]);
  /* a deep chunk: recomputing it is most of what it saves, and recomputing now costs ~2x */
  float deep1 = t1.saved_s[0][CF_STORE_COST_BUCKETS - 1];
  CF_CHECK_MSG(deep1 > 1.8f * deep0 && deep1 < 2.2f * deep0, "deep chunk worth %.6g s, was %.6g s", deep1, deep0);
  CF_CHECK(fabs(s.saved_s[0] - deep1) < 1e-12);

  /* re-fit off (cost_refit = off, reload): the calibrated model again, installed by the reload */
  cf_planner_set_cost(&pl, &base, 0);
  CF_CHECK_OK(cf_planner_cost_now(&pl, &now));
  cf_evict_refresh_offer(&r, &now, 1);
  cf_store_cost_t t2 = store_table(st);
  CF_CHECK(!memcmp(t2.saved_s, t0.saved_s, sizeof t0.saved_s));

  /* an unbound refresher (eviction is not cost) never touches a store */
  cf_evict_refresh_t none;
  cf_evict_refresh_init(&none, 0);
  CF_CHECK(cf_evict_refresh_offer(&none, &now, 1) == 0);
  cf_evict_refresh_close(&none);

  cf_planner_set_evict(&pl, NULL);
  cf_planner_close(&pl);
  cf_evict_refresh_close(&r);
  cf_store_close(st);
}
