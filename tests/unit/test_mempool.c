/* lib/util cf_mempool: first fit with splitting and merging, page alignment, the budget never
 * exceeded (refusals instead), stats (use, high-water mark, refusals), a caller's region
 * (cf_mempool_create_at), waiting for a free (cf_mempool_alloc_wait), and random alloc/free sequences against a shadow model. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "cf_test.h"
#include "util/cf_mempool.h"

#define PG 4096

CF_TEST(mempool_first_fit_split_merge) {
  cf_mempool_t *p;
  CF_CHECK_OK(cf_mempool_create("t", 8 * PG, &p));
  void *a = cf_mempool_alloc(p, 1), *b = cf_mempool_alloc(p, PG + 1), *c = cf_mempool_alloc(p, 3 * PG);
  CF_CHECK(a && b && c);
  CF_CHECK_EQ((uintptr_t)a % PG, 0);
  CF_CHECK_EQ((uint8_t *)b - (uint8_t *)a, PG);
  CF_CHECK_EQ((uint8_t *)c - (uint8_t *)b, 2 * PG);
  cf_mempool_stats_t st;
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.used, 6 * PG);
  CF_CHECK_EQ(st.largest_free, 2 * PG);
  CF_CHECK(cf_mempool_alloc(p, 3 * PG) == NULL); /* 2 pages left: refused, not exceeded */
  cf_mempool_free(p, b);
  cf_mempool_free(p, a);                          /* a + b merge: 3 pages at the front */
  void *d = cf_mempool_alloc(p, 3 * PG);
  CF_CHECK(d == a);
  cf_mempool_free(p, d);
  cf_mempool_free(p, c);
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.used, 0);
  CF_CHECK_EQ(st.largest_free, 8 * PG); /* everything merged back */
  CF_CHECK_EQ(st.peak, 6 * PG);
  CF_CHECK_EQ(st.refusals, 1);
  cf_mempool_reset_peak(p);
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.peak, 0);
  cf_mempool_destroy(p);
}

CF_TEST(mempool_region_of_the_caller) {
  size_t n = 16 * PG;
  uint8_t *region = aligned_alloc(PG, n);
  cf_mempool_t *p;
  CF_CHECK_OK(cf_mempool_create_at("dev", region, n, &p));
  uint8_t *a = cf_mempool_alloc(p, 5 * PG);
  CF_CHECK(a == region);
  CF_CHECK(cf_mempool_alloc(p, 12 * PG) == NULL);
  cf_mempool_free(p, a);
  cf_mempool_destroy(p);
  region[0] = 1; /* still the caller's */
  free(region);
  CF_CHECK_EQ(cf_mempool_create_at("dev", NULL, n, &p), CF_EINVAL);
  CF_CHECK_EQ(cf_mempool_create("host", 0, &p), CF_EINVAL);
}

typedef struct {
  cf_mempool_t *p;
  size_t bytes;
  void *got;
  atomic_int done;
} cf__waiter_t;

static void *cf__wait_thread(void *a) {
  cf__waiter_t *w = a;
  w->got = cf_mempool_alloc_wait(w->p, w->bytes);
  atomic_store(&w->done, 1);
  return NULL;
}

/* alloc_wait (the GPU save's buffers, issue 18): with the pool busy it waits (never fails, never
 * exceeds the budget) until a free makes room; a block over the whole budget is refused at once. */
CF_TEST(mempool_alloc_wait_for_a_free) {
  cf_mempool_t *p;
  CF_CHECK_OK(cf_mempool_create("t", 4 * PG, &p));
  CF_CHECK(cf_mempool_alloc_wait(p, 5 * PG) == NULL); /* could never fit: no wait */
  void *a = cf_mempool_alloc_wait(p, 3 * PG);          /* room now: no wait */
  CF_CHECK(a != NULL);
  cf_mempool_stats_t st;
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.waits, 0);
  CF_CHECK_EQ(st.refusals, 1);
  cf__waiter_t w = {.p = p, .bytes = 2 * PG};
  pthread_t t;
  CF_CHECK_EQ(pthread_create(&t, NULL, cf__wait_thread, &w), 0);
  do { /* until the waiter is known to be waiting (no timing: its count) */
    sched_yield();
    cf_mempool_stats(p, &st);
  } while (st.waits == 0);
  CF_CHECK_EQ(atomic_load(&w.done), 0); /* 1 page free: it waits */
  CF_CHECK_EQ(st.used, 3 * PG);
  cf_mempool_free(p, a);
  pthread_join(t, NULL);
  CF_CHECK(w.got == a); /* first fit after the merge */
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.used, 2 * PG);
  CF_CHECK_LE(st.peak, 4 * PG);
  CF_CHECK_EQ(st.waits, 1);
  cf_mempool_free(p, w.got);
  cf_mempool_destroy(p);
}

/* Random sequences: blocks never overlap, never leave the arena, use = the sum of live charges,
 * and the pool returns to one free block at the end. */
CF_TEST(mempool_random_against_a_shadow) {
  cf_mempool_t *p;
  size_t budget = 64 * PG;
  CF_CHECK_OK(cf_mempool_create("t", budget, &p));
  uint8_t *live[64];
  size_t sz[64];
  int n = 0;
  size_t sum = 0;
  uint8_t *base = NULL;
  for (int it = 0; it < 4000; it++) {
    if (n < 64 && (cf_test_rand() % 3 || !n)) {
      size_t want = 1 + cf_test_rand() % (6 * PG);
      uint8_t *q = cf_mempool_alloc(p, want);
      if (!q) { CF_CHECK_GT(sum + cf_mempool_charge(want), 0); continue; }
      if (!base || q < base) base = q;
      for (int i = 0; i < n; i++)
        CF_CHECK(q + cf_mempool_charge(want) <= live[i] || live[i] + cf_mempool_charge(sz[i]) <= q);
      memset(q, it & 0xff, want); /* writable */
      live[n] = q; sz[n++] = want; sum += cf_mempool_charge(want);
    } else {
      int k = (int)(cf_test_rand() % (unsigned)n);
      cf_mempool_free(p, live[k]);
      sum -= cf_mempool_charge(sz[k]);
      live[k] = live[n - 1]; sz[k] = sz[n - 1]; n--;
    }
    cf_mempool_stats_t st;
    cf_mempool_stats(p, &st);
    CF_CHECK_EQ(st.used, sum);
    CF_CHECK_LE(st.peak, budget);
  }
  for (int i = 0; i < n; i++) cf_mempool_free(p, live[i]);
  cf_mempool_stats_t st;
  cf_mempool_stats(p, &st);
  CF_CHECK_EQ(st.used, 0);
  CF_CHECK_EQ(st.largest_free, budget);
  cf_mempool_destroy(p);
}
