/* The cost eviction policy (eviction = cost, issue 15.2): caps never exceeded, the value order
 * honoured (a dear chunk outlives a cheap one saved after it, where LRU does the opposite),
 * aging (a dear chunk nobody uses leaves eventually, one in use stays), and the SSD tier's
 * journal, restart, shrink and verify under it. Dirty chunks written back before they go:
 * test_store's dirty-eviction case, run for every policy.
 * Real store, real files, real reads. */
#include <math.h>
#include <stdlib.h>

#include "cf_test.h"
#include "store/cf_remote.h"
#include "unit/redis_testlib.h"
#include "unit/store_testlib.h"

static char *tdir(const char *name) {
  static char buf[8][1024];
  static int i;
  char *p = buf[i++ % 8];
  snprintf(p, 1024, "%s/%s", cf_test_tmpdir(), name);
  return p;
}

#define SLOT (2 * 8192) /* st_geom(16, 2, 64): two 8 KiB cells (4 KiB-aligned) */

/* Value table: chunk index c is worth 1 s below index 100 and `dear` s from 100 on (both tiers). */
static cf_store_cost_t two_values(float dear) {
  cf_store_cost_t t;
  memset(&t, 0, sizeof t);
  t.bucket_chunks = 100;
  for (int b = 0; b < CF_STORE_COST_BUCKETS; b++) t.saved_s[0][b] = t.saved_s[1][b] = b ? dear : 1.0f;
  return t;
}

static cf_store_config_t cfg_cost(int cpu_slots, int ssd_slots, cf_store_evict_t pol) {
  /* deterministic: write-back happens only when an eviction needs it */
  cf_store_config_t c = st_config_slots(cpu_slots, ssd_slots, SLOT, pol);
  c.cost = two_values(100.0f);
  return c;
}

static int save_at(cf_store_t *st, uint64_t id, uint32_t pos) {
  const cf_store_geom_t *g = cf_store_geom(st);
  const void *cells[8];
  uint8_t *buf = st_make_cells(g, id, 16, cells);
  cf_store_key_t k = st_key(g, id);
  int rc = cf_store_save_at(st, &k, pos, 16, cells, 0);
  free(buf);
  return rc;
}

static int present(cf_store_t *st, uint64_t id) {
  cf_store_key_t k = st_key(cf_store_geom(st), id);
  return cf_store_lookup(st, &k, 1, NULL) == 1;
}

static void caps_ok(cf_store_t *st, const char *what) {
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(s.cpu_bytes_used <= s.cpu_bytes_cap, "%s: CPU tier %llu bytes over its cap %llu", what,
               (unsigned long long)s.cpu_bytes_used, (unsigned long long)s.cpu_bytes_cap);
  CF_CHECK_MSG(s.ssd_bytes_used <= s.ssd_bytes_cap, "%s: SSD tier %llu bytes over its cap %llu", what,
               (unsigned long long)s.ssd_bytes_used, (unsigned long long)s.ssd_bytes_cap);
}

/* Open store `name` with cfg_cost(cpu, ssd, pol), its value table *tab when given; NULL on failure. */
static cf_store_t *open_cost(const char *name, int cpu, int ssd, cf_store_evict_t pol, const cf_store_cost_t *tab) {
  cf_store_config_t c = cfg_cost(cpu, ssd, pol);
  if (tab) c.cost = *tab;
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir(name), &g, &c, &st));
  return st;
}

/* chunks of ids [lo, hi) present, each checked to read back its own bytes */
static int count_intact(cf_store_t *st, uint64_t lo, uint64_t hi) {
  int kept = 0;
  for (uint64_t id = lo; id < hi; id++) {
    if (!present(st, id)) continue;
    int eq, t;
    CF_CHECK_OK(st_check(st, id, 16, 0, 2, &eq, &t));
    CF_CHECK_MSG(eq, "chunk %d: bytes differ", (int)id);
    kept++;
  }
  return kept;
}

/* Four dear chunks (index 200) saved first, then eight cheap ones (index 0) into a CPU tier of 8:
 * cost gives up the cheap ones, LRU the dear ones (the oldest). */
static void dear_vs_cheap(cf_store_evict_t pol, const char *name, int want_dear_kept) {
  cf_store_t *st = open_cost(name, 8, 0, pol, NULL);
  if (!st) return;
  for (uint64_t id = 0; id < 4; id++) CF_CHECK_OK(save_at(st, id, 200));
  for (uint64_t id = 10; id < 18; id++) { CF_CHECK_OK(save_at(st, id, 0)); caps_ok(st, name); }
  int dear = 0, cheap = 0;
  for (uint64_t id = 0; id < 4; id++) dear += present(st, id);
  for (uint64_t id = 10; id < 18; id++) cheap += present(st, id);
  CF_CHECK_EQ(dear + cheap, 8);
  CF_CHECK_MSG(dear == (want_dear_kept ? 4 : 0), "%s: %d of the 4 dear chunks kept", name, dear);
  /* the cheap survivors under cost are the newest ones (equal value: the decay is LRU) */
  if (want_dear_kept)
    for (uint64_t id = 14; id < 18; id++) CF_CHECK_MSG(present(st, id), "%s: cheap chunk %d", name, (int)id);
  cf_store_close(st);
}

CF_TEST(store_cost_keeps_the_dear_chunks_lru_does_not) {
  dear_vs_cheap(CF_STORE_EVICT_COST, "cost_order", 1);
  dear_vs_cheap(CF_STORE_EVICT_LRU, "cost_order_lru", 0);
}

/* The index a chunk is saved at decides its value; a stored chunk re-saved at another index
 * (CF_EEXIST) takes the new one. */
CF_TEST(store_cost_resave_teaches_the_index) {
  cf_store_t *st = open_cost("cost_pos", 4, 0, CF_STORE_EVICT_COST, NULL);
  if (!st) return;
  for (uint64_t id = 0; id < 4; id++) CF_CHECK_OK(save_at(st, id, 0));
  CF_CHECK_ERR(save_at(st, 0, 300), CF_EEXIST); /* chunk 0 is dear now */
  for (uint64_t id = 10; id < 13; id++) CF_CHECK_OK(save_at(st, id, 0));
  CF_CHECK(present(st, 0));
  for (uint64_t id = 1; id < 4; id++) CF_CHECK(!present(st, id));
  cf_store_close(st);
}

/* Aging: two dear chunks (20x a cheap one); one is read every few saves, the other never again.
 * In a stream of cheap chunks the dead dear one outlives the cheap ones that arrived with it by
 * about tau * ln 20 clock ticks (tau = 2 x 8 slots: ~48 ticks of arrivals and uses), then
 * leaves; the used one stays. */
CF_TEST(store_cost_aging_lets_dead_chunks_leave) {
  cf_store_cost_t aging = two_values(20.0f);
  cf_store_t *st = open_cost("cost_aging", 8, 0, CF_STORE_EVICT_COST, &aging);
  if (!st) return;
  CF_CHECK_OK(save_at(st, 1, 200)); /* dead */
  CF_CHECK_OK(save_at(st, 2, 200)); /* in use */
  int dead_gone_at = -1;
  for (int i = 0; i < 2000; i++) {
    CF_CHECK_OK(save_at(st, 1000 + (uint64_t)i, 0));
    caps_ok(st, "aging");
    if (i % 4 == 0) {
      int eq, t;
      CF_CHECK_OK(st_check(st, 2, 16, 0, 2, &eq, &t));
      CF_CHECK(eq);
    }
    if (dead_gone_at < 0 && !present(st, 1)) dead_gone_at = i;
  }
  CF_CHECK_MSG(dead_gone_at > 0, "the dead dear chunk never left (or left at once: %d)", dead_gone_at);
  /* it outlived many cheap chunks first (its value held it), but not for ever: ~48 ticks, of
   * which a fifth are the used chunk's reads, so ~38 cheap saves */
  CF_CHECK_MSG(dead_gone_at >= 30 && dead_gone_at <= 50, "dead dear chunk left after %d cheap saves", dead_gone_at);
  CF_CHECK(present(st, 2));
  cf_store_close(st);
}

/* The SSD tier under cost: evictions at its cap are journaled, a restart keeps what was there,
 * verify finds no damage, a smaller cap at open shrinks by the policy and every kept chunk reads
 * back intact. */
CF_TEST(store_cost_ssd_journal_restart_shrink) {
  cf_store_config_t c = cfg_cost(0, 24, CF_STORE_EVICT_COST);
  cf_store_geom_t g = st_geom(16, 2, 64);
  const char *dir = tdir("cost_ssd");
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  /* 8 dear then 32 cheap: the SSD tier (24) keeps the dear ones and the newest cheap ones */
  for (uint64_t id = 0; id < 8; id++) CF_CHECK_OK(save_at(st, id, 250));
  for (uint64_t id = 100; id < 132; id++) { CF_CHECK_OK(save_at(st, id, 0)); caps_ok(st, "ssd"); }
  for (uint64_t id = 0; id < 8; id++) CF_CHECK_MSG(present(st, id), "dear chunk %d evicted", (int)id);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_chunks, 24);
  CF_CHECK_EQ(s.ssd_evictions, 16);
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);

  cf_store_verify_t v;
  CF_CHECK_OK(cf_store_verify_dir(dir, &v));
  CF_CHECK_EQ(v.chunks_ok, 24);
  CF_CHECK_EQ(v.chunks_damaged, 0);

  /* restart: the same 24 chunks, bytes intact; more saves evict again (journaled) */
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  CF_CHECK_EQ(count_intact(st, 0, 132), 24);
  for (uint64_t id = 200; id < 210; id++) { CF_CHECK_OK(save_at(st, id, 0)); caps_ok(st, "ssd restart"); }
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);

  /* a smaller cap: the shrink gives up chunks by the policy, keeps the rest readable */
  c.ssd_bytes = 12 * SLOT;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_chunks, 12);
  CF_CHECK_EQ(count_intact(st, 0, 210), 12);
  cf_store_close(st);
  CF_CHECK_OK(cf_store_verify_dir(dir, &v));
  CF_CHECK_EQ(v.chunks_ok, 12);
  CF_CHECK_EQ(v.chunks_damaged, 0);
}

/* Random saves (random indices), reads and removes over both tiers: caps hold after every
 * operation and every chunk the store reports present reads back with its own bytes. */
CF_TEST(store_cost_random_ops_keep_caps_and_bytes) {
  cf_store_config_t c = cfg_cost(6, 20, CF_STORE_EVICT_COST);
  c.spill = 1; /* the spiller runs too */
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(tdir("cost_random"), &g, &c, &st));
  if (!st) return;
  uint64_t r = 12345;
  for (int i = 0; i < 600; i++) {
    r = st_mix(r);
    uint64_t id = r % 60;
    int op = (int)((r >> 20) % 10);
    if (op < 5) {
      int rc = save_at(st, id, (uint32_t)((r >> 32) % 400));
      CF_CHECK_MSG(rc == 0 || rc == CF_EEXIST, "save %d: %d", (int)id, rc);
    } else if (op < 9) {
      if (present(st, id)) {
        int eq, t;
        int rc = st_check(st, id, 16, 0, 2, &eq, &t);
        /* evicted between the lookup and the read by the spiller's work: a miss, never wrong bytes */
        CF_CHECK_MSG(rc == CF_ENOTFOUND || (rc == 0 && eq), "read %d: rc %d eq %d", (int)id, rc, eq);
      }
    } else {
      cf_store_key_t k = st_key(&g, id);
      int rc = cf_store_remove(st, &k);
      CF_CHECK(rc == 0 || rc == CF_ENOTFOUND || rc == CF_EBUSY);
    }
    caps_ok(st, "random");
  }
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* In front of an SSD tier the CPU copy of a chunk saves only the SSD read (recompute cancels:
 * the chunk goes to SSD when it leaves), so the CPU tier keeps the most recently used chunks
 * whatever their index, and the SSD tier ranks by value: with 4 CPU and 6 SSD slots, 4 dear
 * chunks saved first then 8 cheap ones leave the 4 newest cheap ones in the CPU tier, every
 * dear one on SSD, and the SSD evictions (written-back chunks overflow it) cheap ones. */
CF_TEST(store_cost_cpu_tier_before_ssd_is_recency_ssd_is_value) {
  cf_store_t *st = open_cost("cost_tiers", 4, 6, CF_STORE_EVICT_COST, NULL);
  if (!st) return;
  cf_store_geom_t g = *cf_store_geom(st);
  for (uint64_t id = 0; id < 4; id++) CF_CHECK_OK(save_at(st, id, 200));
  for (uint64_t id = 10; id < 18; id++) { CF_CHECK_OK(save_at(st, id, 0)); caps_ok(st, "tiers"); }
  for (uint64_t id = 14; id < 18; id++) {
    cf_store_key_t k = st_key(&g, id);
    uint8_t t = 0;
    CF_CHECK_EQ(cf_store_lookup(st, &k, 1, &t), 1);
    CF_CHECK_MSG(t == CF_STORE_TIER_CPU, "newest cheap chunk %d not in the CPU tier (tier %d)", (int)id, t);
  }
  for (uint64_t id = 0; id < 4; id++) {
    cf_store_key_t k = st_key(&g, id);
    uint8_t t = 0;
    CF_CHECK_EQ(cf_store_lookup(st, &k, 1, &t), 1);
    CF_CHECK_MSG(t == CF_STORE_TIER_SSD, "dear chunk %d: tier %d, want SSD", (int)id, t);
  }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_GT(s.ssd_evictions, 0); /* the SSD tier did choose */
  int gone = 0;
  for (uint64_t id = 10; id < 14; id++) gone += !present(st, id);
  /* every SSD victim a cheap chunk (the dear ones are all there): one of the older cheap ones,
   * or the SSD copy of a newer one that its CPU copy outlives */
  CF_CHECK_GT(gone, 0);
  CF_CHECK(s.ssd_evictions >= (uint64_t)gone && s.ssd_evictions <= 8);
  cf_store_close(st);
}

/* The remote tier's write-back under cost: while its queue is more than half full, cheap chunks
 * (index 0) are not queued, dear ones (index 200) still are. A real redis-server, stopped with
 * SIGSTOP so the writer blocks and the queue fills, then resumed: afterwards the remote tier
 * holds the dear chunks and none of the cheap ones. */
CF_TEST(store_cost_remote_write_back_prefers_dear_chunks) {
  if (!rt_have_redis()) { cf_test_skip("redis-server not installed (make deps)"); return; }
  rt_server_t srv;
  CF_CHECK_EQ(rt_standalone(&srv, cf_test_tmpdir(), "cost_redis", NULL), 0);
  char url[64];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
  cf_store_config_t c = cfg_cost(64, 0, CF_STORE_EVICT_COST);
  c.remote_url = url;
  c.remote_queue_bytes = 8 * (uint64_t)SLOT; /* 8 chunks of two 8 KiB cells */
  c.remote_timeout_ms = 60000;               /* a stopped server blocks the writer, no timeout */
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir("cost_remote"), &g, &c, &st));
  if (!st) { rt_stop(&srv); return; }
  kill(srv.pid, SIGSTOP);
  /* dear chunks until the queue is more than half full (the writer holds what it took) */
  uint64_t dear = 0;
  cf_remote_stats_t rs;
  do {
    CF_CHECK_OK(save_at(st, dear++, 200));
    cf_remote_get_stats(cf_store_remote(st), &rs);
  } while (2 * rs.queue_bytes <= 8 * (uint64_t)SLOT && dear < 40);
  CF_CHECK_MSG(2 * rs.queue_bytes > 8 * (uint64_t)SLOT, "queue never filled (%llu bytes)",
               (unsigned long long)rs.queue_bytes);
  for (uint64_t id = 100; id < 104; id++) CF_CHECK_OK(save_at(st, id, 0));
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.remote_skipped_cheap, 4);
  kill(srv.pid, SIGCONT);
  CF_CHECK_OK(cf_remote_flush(cf_store_remote(st), 60000));
  int dear_there = 0;
  for (uint64_t id = 0; id < dear; id++) {
    cf_store_key_t k = st_key(&g, id);
    dear_there += (int)cf_remote_lookup(cf_store_remote(st), &k, 1);
  }
  CF_CHECK_EQ(dear_there, (int)dear); /* the queue had room for every dear one */
  for (uint64_t id = 100; id < 104; id++) {
    cf_store_key_t k = st_key(&g, id);
    CF_CHECK_MSG(cf_remote_lookup(cf_store_remote(st), &k, 1) == 0, "cheap chunk %d written back", (int)id);
  }
  /* with the queue drained, cheap chunks are written back again */
  CF_CHECK_OK(save_at(st, 200, 0));
  CF_CHECK_OK(cf_remote_flush(cf_store_remote(st), 60000));
  cf_store_key_t k = st_key(&g, 200);
  CF_CHECK_EQ(cf_remote_lookup(cf_store_remote(st), &k, 1), 1);
  cf_store_close(st);
  rt_stop(&srv);
}

/* A new value table (the daemon hands one over after each re-fit of its cost model) re-ranks by
 * value but keeps every chunk's age: of two equal chunks the older still leaves first, and a
 * chunk the new table makes dear is kept over newer cheap ones. */
CF_TEST(store_cost_table_refresh_keeps_ages) {
  cf_store_cost_t flat = two_values(1.0f);
  cf_store_t *st = open_cost("cost_refresh", 4, 0, CF_STORE_EVICT_COST, &flat);
  if (!st) return;
  CF_CHECK_OK(save_at(st, 1, 0));   /* oldest */
  CF_CHECK_OK(save_at(st, 2, 0));
  CF_CHECK_OK(save_at(st, 3, 200)); /* worth 1 now, dear after the refresh */
  CF_CHECK_OK(save_at(st, 4, 0));
  for (int k = 0; k < 3; k++) cf_store_set_cost(st, &flat); /* ages survive refreshes */
  CF_CHECK_OK(save_at(st, 5, 0));
  CF_CHECK_MSG(!present(st, 1) && present(st, 2), "after a refresh the oldest chunk still leaves first");
  cf_store_cost_t dear = two_values(50.0f);
  cf_store_set_cost(st, &dear);
  for (uint64_t id = 6; id < 9; id++) { CF_CHECK_OK(save_at(st, id, 0)); caps_ok(st, "refresh"); }
  CF_CHECK_MSG(present(st, 3), "the chunk the new table made dear was evicted");
  CF_CHECK(!present(st, 2) && !present(st, 4));
  cf_store_close(st);
}

/* The CPU tier in front of an SSD tier: a chunk read since it came in gets a short head start
 * over unread ones (CF__COST_CPU_USED: 0.35 tau, tau = 2 x 4 slots, ~2.8 ticks), not more: it
 * outlives the unread chunks saved one and two ticks after its read, then leaves before newer
 * ones. LRU, for reference, gives it up first. */
static int in_cpu(cf_store_t *st, uint64_t id) {
  cf_store_key_t k = st_key(cf_store_geom(st), id);
  uint8_t t = 0xff;
  return cf_store_lookup(st, &k, 1, &t) == 1 && t == CF_STORE_TIER_CPU;
}

CF_TEST(store_cost_cpu_tier_head_start_for_read_chunks) {
  cf_store_t *st = open_cost("cost_cpu_used", 4, 16, CF_STORE_EVICT_COST, NULL);
  if (!st) return;
  int eq, t;
  CF_CHECK_OK(save_at(st, 1, 0));
  CF_CHECK_OK(st_check(st, 1, 16, 0, 2, &eq, &t)); /* the read: a use */
  CF_CHECK(eq);
  for (uint64_t id = 2; id <= 4; id++) CF_CHECK_OK(save_at(st, id, 0)); /* CPU tier full */
  CF_CHECK_OK(save_at(st, 5, 0));
  CF_CHECK_MSG(in_cpu(st, 1) && !in_cpu(st, 2), "the read chunk kept over the next unread one");
  CF_CHECK_OK(save_at(st, 6, 0));
  CF_CHECK_MSG(in_cpu(st, 1) && !in_cpu(st, 3), "the read chunk kept over the second unread one");
  CF_CHECK_OK(save_at(st, 7, 0));
  CF_CHECK_MSG(!in_cpu(st, 1) && in_cpu(st, 4), "the head start is bounded: the read chunk leaves now");
  for (uint64_t id = 1; id <= 7; id++) CF_CHECK_MSG(present(st, id), "chunk %d lost (written back to SSD)", (int)id);
  caps_ok(st, "cpu head start");
  cf_store_close(st);

  st = open_cost("cost_cpu_used_lru", 4, 16, CF_STORE_EVICT_LRU, NULL);
  if (!st) return;
  CF_CHECK_OK(save_at(st, 1, 0));
  CF_CHECK_OK(st_check(st, 1, 16, 0, 2, &eq, &t));
  for (uint64_t id = 2; id <= 5; id++) CF_CHECK_OK(save_at(st, id, 0));
  CF_CHECK(!in_cpu(st, 1) && in_cpu(st, 2));
  cf_store_close(st);
}

/* A restore computes layers [0, h) of a chunk and loads [h, L) (cf_sched.h): a chunk the plan
 * partly computes is read from its second layer on, and that is a use as much as a whole read
 * (the use is counted at the last layer). Before, only a read of layer 0 counted, so on the
 * daemon such chunks stayed "unread" and lost the read class's head start. */
CF_TEST(store_cost_partial_read_from_a_later_layer_is_a_use) {
  cf_store_t *st = open_cost("cost_partial_use", 4, 16, CF_STORE_EVICT_COST, NULL);
  if (!st) return;
  int eq, t;
  CF_CHECK_OK(save_at(st, 1, 0));
  CF_CHECK_OK(st_check(st, 1, 16, 1, 1, &eq, &t)); /* layer 1 of 2 only: layer 0 computed */
  CF_CHECK(eq);
  for (uint64_t id = 2; id <= 4; id++) CF_CHECK_OK(save_at(st, id, 0)); /* CPU tier full */
  CF_CHECK_OK(save_at(st, 5, 0));
  CF_CHECK_MSG(in_cpu(st, 1) && !in_cpu(st, 2), "the chunk read from layer 1 on was not counted as used");
  cf_store_close(st);
}

/* wait for the spiller to leave no dirty chunk (no time asserted: it only has to happen) */
/* Wait until the spiller is done: no dirty chunk and no write-back in flight. A chunk leaves
 * the dirty list when the spiller takes it, before its batch is weighed, written and published
 * (or refused): cpu_dirty alone reads 0 while that batch's outcome is not in the stats yet. */
static void wait_clean(cf_store_t *st) {
  cf_store_stats_t s;
  for (int i = 0; i < 20000; i++) {
    cf_store_get_stats(st, &s);
    if (!s.cpu_dirty && !s.cpu_spilling) return;
    rt_sleep_ms(1);
  }
  CF_CHECK_MSG(0, "the spiller left %llu dirty chunks, %llu write-backs in flight",
               (unsigned long long)s.cpu_dirty, (unsigned long long)s.cpu_spilling);
}

/* The daemon's set-up (spiller on, watermark 0): every chunk is written back right after its
 * save, before anyone could read it. Into a full SSD tier of read chunks a fresh unread one is
 * refused (f = 1/2 against 2); it stays in the CPU tier, and when a read has shown it useful
 * the CPU tier's eviction weighs it again and the SSD tier takes it, where before the refusal
 * was final and it left with the CPU tier. Caps hold throughout, no bytes differ. */
/* a cost store with the daemon's write-back (spiller on); NULL on failure */
static cf_store_t *open_spilling(const char *name, int cpu, int ssd) {
  cf_store_config_t c = cfg_cost(cpu, ssd, CF_STORE_EVICT_COST);
  c.spill = 1;
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir(name), &g, &c, &st));
  return st;
}

CF_TEST(store_cost_refused_write_back_weighed_again_at_cpu_eviction) {
  cf_store_t *st = open_spilling("cost_refused", 3, 2);
  if (!st) return;
  int eq, t;
  for (uint64_t id = 1; id <= 2; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  for (uint64_t id = 1; id <= 2; id++) { CF_CHECK_OK(st_check(st, id, 16, 0, 2, &eq, &t)); CF_CHECK(eq); }
  CF_CHECK_OK(save_at(st, 3, 0));
  wait_clean(st);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_refusals, 1);
  CF_CHECK_EQ(s.cost_deferred, 1); /* that refusal was a deferral (/metrics' deferred write-backs) */
  CF_CHECK_EQ(s.ssd_refusals_unread, 1);
  CF_CHECK_EQ(s.ssd_evictions, 0); /* not gone: still in the CPU tier */
  CF_CHECK(in_cpu(st, 3));
  CF_CHECK_OK(st_check(st, 3, 16, 0, 2, &eq, &t));
  CF_CHECK(eq);
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_refused_read, 1);
  /* newer chunks push 3 out of the CPU tier: now it goes to SSD, an older read chunk leaves */
  uint64_t id = 10;
  for (; id < 20 && in_cpu(st, 3); id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); caps_ok(st, "refused"); }
  CF_CHECK_MSG(id < 20, "chunk 3 never left the CPU tier");
  CF_CHECK_MSG(present(st, 3), "chunk 3 left the CPU tier after %d saves and the SSD tier refused it", (int)(id - 10));
  CF_CHECK_OK(st_check(st, 3, 16, 0, 2, &eq, &t));
  CF_CHECK(eq);
  cf_store_get_stats(st, &s);
  CF_CHECK_GT(s.ssd_evictions, 0);
  CF_CHECK(s.ssd_evict_unread <= s.ssd_evictions);
  CF_CHECK_EQ(s.ssd_chunks, 2);
  CF_CHECK(s.cost_deferred <= s.ssd_refusals);
  CF_CHECK(s.cost_freq_w >= 0 && s.cost_freq_w <= 3);
  caps_ok(st, "refused");
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* The evaluation's rank hook (cf_store_config_t.rank, bench_eval_evict's clairvoyant row): the
 * heaps order by it instead of by value, asked with each chunk's key and index; the lowest
 * leaves first, the caps hold. */
typedef struct { cf_store_key_t k[9]; int asked; } rank_ud_t;

static double rank_by_id(void *ud, const cf_store_key_t *key, uint32_t pos, int tier) {
  (void)tier;
  (void)pos;
  rank_ud_t *r = ud;
  r->asked++;
  for (int id = 1; id <= 8; id++)
    if (!memcmp(r->k[id].b, key->b, sizeof key->b)) return id % 2 ? id : -id; /* odd ids high */
  return 0;
}

CF_TEST(store_cost_rank_hook_orders_the_heaps) {
  cf_store_config_t c = cfg_cost(4, 0, CF_STORE_EVICT_COST);
  cf_store_geom_t g = st_geom(16, 2, 64);
  rank_ud_t r = {.asked = 0};
  for (int id = 1; id <= 8; id++) r.k[id] = st_key(&g, (uint64_t)id);
  c.rank = rank_by_id;
  c.rank_ud = &r;
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir("cost_rank"), &g, &c, &st));
  if (!st) return;
  for (uint64_t id = 1; id <= 8; id++) { CF_CHECK_OK(save_at(st, id, 200)); caps_ok(st, "rank"); }
  /* each save first gives up the lowest resident: the even ones as they come, then (the tier
   * full of odd ones when 8 arrives) chunk 1 */
  for (uint64_t id = 1; id <= 8; id++) {
    int want = id == 3 || id == 5 || id == 7 || id == 8;
    CF_CHECK_MSG(present(st, id) == want, "chunk %d: present %d", (int)id, present(st, id));
  }
  CF_CHECK_GT(r.asked, 0);
  cf_store_close(st);
}

/* ---- The read class's head start, learnt from ghosts (cf_store_cost.c, cf__ghost_hit) */

/* one step of a synthetic trace: id read if stored (a use; 1), else saved again (0) */
static int read_or_resave(cf_store_t *st, uint64_t id) {
  if (present(st, id)) {
    int eq, t;
    CF_CHECK_OK(st_check(st, id, 16, 0, 2, &eq, &t));
    CF_CHECK(eq);
    return 1;
  }
  CF_CHECK_OK(save_at(st, id, 0));
  return 0;
}

/* The two traces below, also run against the CPU tier before SSD (further down); rd reads a
 * chunk and says whether it was a hit. fresh_next: every step saves a fresh chunk read once 8
 * steps later and a chunk read at once and never again; the hits of the fresh reads of steps
 * [from, to). */
static int fresh_next(cf_store_t *st, const char *name, int from, int to, int (*rd)(cf_store_t *, uint64_t)) {
  int hits = 0;
  for (int i = 0; i < to; i++) {
    CF_CHECK_OK(save_at(st, 10000 + (uint64_t)i, 0)); /* fresh, read at step i + 8 */
    uint64_t once = 50000 + (uint64_t)i;               /* read now, dead afterwards */
    CF_CHECK_OK(save_at(st, once, 0));
    CF_CHECK_EQ(rd(st, once), 1);
    if (i >= 8) {
      int h = rd(st, 10000 + (uint64_t)(i - 8));
      if (i >= from) hits += h;
    }
    caps_ok(st, name);
  }
  return hits;
}

/* n_pop popular chunks (with `prime`: saved and read once first) read in turn, two a step, among
 * `scan` one-shot chunks a step nobody reads again; the hits of the popular reads of steps
 * [from, to). */
static int popular_scan(cf_store_t *st, const char *name, int n_pop, int scan, int prime, int from, int to,
                        int (*rd)(cf_store_t *, uint64_t)) {
  int hits = 0;
  for (uint64_t id = 100; prime && id < 100 + (uint64_t)n_pop; id++) {
    CF_CHECK_OK(save_at(st, id, 0));
    CF_CHECK_EQ(rd(st, id), 1);
  }
  for (int i = 0; i < to; i++) {
    for (int k = 0; k < 2; k++) {
      int h = rd(st, 100 + (uint64_t)((2 * i + k) % n_pop));
      if (i >= from) hits += h;
    }
    for (int k = 0; k < scan; k++) CF_CHECK_OK(save_at(st, 90000 + (uint64_t)scan * (uint64_t)i + (uint64_t)k, 0));
    caps_ok(st, name);
  }
  return hits;
}

/* Recency is right (the real daemon's trace): every step saves a fresh chunk that is read once 8
 * steps later, and a chunk that is read at once and never again. A CPU-only store of 32 chunks,
 * all worth the same. LRU keeps every fresh chunk until its read (23 touches between save and
 * read). The fixed head start of the read class (ln 4: f = 2 against 1/2) makes the dead read
 * chunks outlive the fresh unread ones: the fresh chunks leave unread and are saved again, ghost
 * hits of the unread class, so the head start falls and the policy ends up evicting like LRU,
 * with LRU's hits. Returns the hits of steps [from, to). */
static int recency_trace(cf_store_evict_t pol, const char *name, int from, int to, double *bonus) {
  cf_store_t *st = open_cost(name, 32, 0, pol, NULL);
  if (!st) return -1;
  cf_store_cost_t flat = two_values(1.0f);
  cf_store_set_cost(st, &flat);
  int hits = fresh_next(st, name, from, to, read_or_resave);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  if (bonus) *bonus = s.cost_read_bonus;
  if (pol == CF_STORE_EVICT_COST)
    CF_CHECK_MSG(s.cost_ghost_unread > 0 && s.cost_ghost_read == 0, "%s: ghost hits unread %llu read %llu", name,
                 (unsigned long long)s.cost_ghost_unread, (unsigned long long)s.cost_ghost_read);
  cf_store_close(st);
  return hits;
}

CF_TEST(store_cost_learns_recency_where_recency_is_right) {
  double bonus = -1;
  int lru = recency_trace(CF_STORE_EVICT_LRU, "learn_rec_lru", 200, 400, NULL);
  int cost = recency_trace(CF_STORE_EVICT_COST, "learn_rec_cost", 200, 400, &bonus);
  int cost_early = recency_trace(CF_STORE_EVICT_COST, "learn_rec_early", 8, 40, NULL);
  CF_CHECK_MSG(lru == 200, "LRU kept %d of the last 200 fresh chunks until their read", lru);
  /* at first (head start ln 4) the fresh chunks leave unread; once learnt, LRU's hits */
  CF_CHECK_MSG(cost_early < 16, "cost with the initial head start kept %d of 32 fresh chunks", cost_early);
  CF_CHECK_MSG(cost >= 196, "cost kept %d of the last 200 fresh chunks (LRU %d)", cost, lru);
  CF_CHECK_MSG(bonus >= 0 && bonus < 0.25, "the read class's head start is %.3f after learning", bonus);
}

/* Frequency is right (S3-FIFO's case, RAG's popular documents): 16 popular chunks (saved and
 * read once first) read in turn, two a step, among three one-shot chunks a step that nobody
 * reads again. LRU lets the scan push
 * the popular chunks out (40 touches between two reads of one, 32 slots); cost keeps them by
 * the read class's head start, and the one-shot chunks never come back, so nothing teaches it
 * otherwise: the head start stays and so do cost's hits. Returns the popular hits of the last
 * 200 steps. */
static int filter_trace(cf_store_evict_t pol, const char *name, double *bonus) {
  cf_store_t *st = open_cost(name, 32, 0, pol, NULL);
  if (!st) return -1;
  cf_store_cost_t flat = two_values(1.0f);
  cf_store_set_cost(st, &flat);
  int hits = popular_scan(st, name, 16, 3, 1, 200, 400, read_or_resave);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  if (bonus) *bonus = s.cost_read_bonus;
  cf_store_close(st);
  return hits;
}

CF_TEST(store_cost_keeps_its_filter_where_frequency_is_right) {
  double bonus = -1;
  int lru = filter_trace(CF_STORE_EVICT_LRU, "learn_freq_lru", NULL);
  int cost = filter_trace(CF_STORE_EVICT_COST, "learn_freq_cost", &bonus);
  CF_CHECK_MSG(lru < 100, "LRU kept the popular chunks through the scan (%d of 400 reads hit)", lru);
  CF_CHECK_MSG(cost >= 390, "cost hit %d of the last 400 popular reads (LRU %d)", cost, lru);
  CF_CHECK_MSG(bonus >= 1.386, "the read class's head start fell to %.3f with no unread chunk back", bonus);
}

/* ---- Frequency that outlives the chunk (cf_store_cost.c, cf__freq_*) */

/* RAG's medium-popular documents: 16 popular chunks, two asked per step in turn (each every 8
 * steps), among 10 one-shot chunks saved per step, in a CPU-only store of 32 chunks, all worth
 * the same. 96 touches lie between two asks of a popular chunk: while nothing remembers it past
 * its eviction it has always left before it is asked again, unread and as new as the one-shot
 * chunks (LRU never hits; nor does a read count that dies with the chunk). The sketch counts the
 * popular keys across their evictions; their victims come back where the one-shot ones never
 * do, so the weight learnt for frequent chunks grows and they stay through the scan. Returns
 * the popular hits of steps [200, 400) (of 400 asks). */
static int return_trace(cf_store_evict_t pol, const char *name) {
  cf_store_t *st = open_cost(name, 32, 0, pol, NULL);
  if (!st) return -1;
  cf_store_cost_t flat = two_values(1.0f);
  cf_store_set_cost(st, &flat);
  int hits = popular_scan(st, name, 16, 10, 0, 200, 400, read_or_resave);
  cf_store_close(st);
  return hits;
}

CF_TEST(store_cost_frequency_outlives_eviction) {
  int lru = return_trace(CF_STORE_EVICT_LRU, "freq_ret_lru");
  int cost = return_trace(CF_STORE_EVICT_COST, "freq_ret_cost");
  CF_CHECK_MSG(lru == 0, "LRU hit %d popular asks with 96 touches between two", lru);
  CF_CHECK_MSG(cost >= 360, "cost hit %d of the last 400 popular asks (LRU %d)", cost, lru);
}

/* With the SSD tier full, a write-back waits for the CPU tier to give the chunk up (the daemon's
 * set-up: spiller on): the two tiers then hold different chunks, not the CPU tier's copies twice.
 * When the CPU tier gives the waiting chunks up they are weighed against the SSD tier's minimum,
 * and the newer ones take the older ones' slots. A save does not wait on that write-back: once a
 * save has filled the CPU tier, the spill thread writes the next victim back ahead of the next
 * save's eviction and gives its CPU copy up once on SSD (cf_store_spill.c, cf__evict_ahead),
 * so a slot is free for that save and no chunk is in both tiers. Bytes intact, caps held. */
static int stored(cf_store_t *st, uint64_t lo, uint64_t hi) {
  int n = 0;
  for (uint64_t id = lo; id < hi; id++) n += present(st, id);
  return n;
}

CF_TEST(store_cost_full_ssd_tier_defers_write_back_to_cpu_eviction) {
  cf_store_t *st = open_spilling("cost_defer", 4, 8);
  if (!st) return;
  for (uint64_t id = 1; id <= 12; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); caps_ok(st, "defer"); }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_chunks, 8);
  CF_CHECK_EQ(s.ssd_refusals, 4); /* 9-12: deferred, in the CPU tier only */
  CF_CHECK_EQ(s.cost_deferred, 4);
  /* the oldest, 9, was then written back ahead of the next save (pushing 1 out) and left the
   * CPU tier: a slot free, the tiers still disjoint. (lookups, not reads: a read would give the
   * read chunks the read class's head start) */
  CF_CHECK_EQ(s.cpu_evict_ahead, 1);
  CF_CHECK_EQ(s.ssd_evictions, 1);
  CF_CHECK_MSG(!in_cpu(st, 9) && present(st, 9), "chunk 9 not on SSD only");
  for (uint64_t id = 10; id <= 12; id++) CF_CHECK_MSG(in_cpu(st, id), "chunk %d not in the CPU tier", (int)id);
  CF_CHECK_EQ(s.cpu_chunks, 3);
  CF_CHECK_EQ(stored(st, 1, 13), 11);
  CF_CHECK_EQ(s.cpu_chunks + s.ssd_chunks, 11); /* no chunk in both tiers */
  for (uint64_t id = 13; id <= 16; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); caps_ok(st, "defer"); }
  /* 9-13 left the CPU tier for the SSD tier, pushing out the oldest, 1-5; no save wrote back */
  CF_CHECK_EQ(count_intact(st, 9, 17), 8);
  CF_CHECK_EQ(count_intact(st, 1, 6), 0);
  CF_CHECK_EQ(count_intact(st, 6, 9), 3);
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_chunks, 8);
  CF_CHECK_EQ(s.ssd_evictions, 5);
  CF_CHECK_EQ(s.cpu_evict_ahead, 5);
  CF_CHECK_EQ(s.cpu_evict_writebacks, 0);
  CF_CHECK_EQ(s.cpu_chunks + s.ssd_chunks, 11);
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* A save's eviction meeting a deferred chunk the SSD tier admits now (here made the CPU tier's
 * victim by reads of the chunks above it, after the spill thread last looked) does not write it
 * back itself when a clean copy of an SSD chunk is among the next victims: that copy goes (the
 * chunk stays, on SSD) and the deferred chunk is handed to the spill thread, which writes it
 * back; the next eviction drops its CPU copy. */
CF_TEST(store_cost_save_takes_a_clean_victim_instead_of_writing_back) {
  cf_store_t *st = open_spilling("cost_handoff", 4, 8);
  if (!st) return;
  int eq, t;
  /* 1-8 on SSD, 5-8 also in the CPU tier (clean); 9 evicts 5 and is deferred */
  for (uint64_t id = 1; id <= 9; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); caps_ok(st, "handoff"); }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.cost_deferred, 1);
  CF_CHECK_EQ(s.cpu_evict_ahead, 0); /* the victim then was 6, clean */
  for (uint64_t id = 6; id <= 9; id++) CF_CHECK_MSG(in_cpu(st, id), "chunk %d not in the CPU tier", (int)id);
  for (uint64_t id = 6; id <= 8; id++) { CF_CHECK_OK(st_check(st, id, 16, 0, 2, &eq, &t)); CF_CHECK(eq); }
  CF_CHECK_OK(save_at(st, 10, 0));
  wait_clean(st);
  caps_ok(st, "handoff");
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.cpu_evict_handoffs, 1);
  CF_CHECK_EQ(s.cpu_evict_writebacks, 0);
  CF_CHECK_MSG(in_cpu(st, 9), "the deferred chunk 9 left the CPU tier (written back by the save)");
  CF_CHECK_MSG(!in_cpu(st, 6), "chunk 6's clean copy stayed");
  CF_CHECK(in_cpu(st, 7) && in_cpu(st, 8) && in_cpu(st, 10));
  CF_CHECK_MSG(stored(st, 2, 11) == 9 && !present(st, 1), "9 not written back over 1");
  CF_CHECK_EQ(s.ssd_chunks, 8);
  /* 9 is clean now: the next save's eviction drops its CPU copy, writing nothing */
  CF_CHECK_OK(save_at(st, 11, 0));
  wait_clean(st);
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(!in_cpu(st, 9) && present(st, 9), "chunk 9 not on SSD only");
  CF_CHECK_EQ(s.cpu_evict_writebacks, 0);
  CF_CHECK_EQ(stored(st, 3, 12), 9);
  CF_CHECK_EQ(count_intact(st, 9, 10), 1); /* (reads: promotions change the tiers) */
  caps_ok(st, "handoff");
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* Deferral only while the full SSD tier is selective (cf_store_cost.c, cf__defer_learn): where
 * it would take almost every write-back anyway (a large capacity: the newest chunks outrank its
 * oldest), a deferred chunk only holds a CPU slot that a promotion could use, so write-backs go
 * straight in; where it would refuse many (dear, read chunks against cheap fresh ones), they are
 * deferred again. Daemon's set-up (spiller on); CPU tier of 4, SSD tier of 32. */
static uint64_t deferred(cf_store_t *st) {
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  return s.cost_deferred;
}

CF_TEST(store_cost_defers_write_backs_only_while_the_ssd_tier_is_selective) {
  cf_store_t *st = open_spilling("cost_defer_choice", 4, 32);
  if (!st) return;
  /* cheap chunks, each newer than the SSD tier's oldest: every write-back would be admitted */
  uint64_t id = 1;
  for (; id <= 80; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  caps_ok(st, "admitting");
  uint64_t d0 = deferred(st);
  for (; id <= 150; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  uint64_t d1 = deferred(st);
  CF_CHECK_MSG(d1 == d0, "%llu of 70 write-backs deferred where the SSD tier admitted every one",
               (unsigned long long)(d1 - d0));
  CF_CHECK_MSG(!in_cpu(st, 145) && present(st, 145), "chunk 145 not written straight to the SSD tier");
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.cost_defer_on, 0);
  CF_CHECK_EQ(s.cost_defer_switches, 1);
  /* dear chunks fill the SSD tier and are read: fresh cheap ones are refused (100x cheaper,
   * unread), so the tier is selective again and write-backs wait for the CPU tier's eviction */
  for (uint64_t k = 1000; k < 1032; k++) { CF_CHECK_OK(save_at(st, k, 200)); wait_clean(st); }
  int eq, t;
  for (uint64_t k = 1000; k < 1032; k++) { CF_CHECK_OK(st_check(st, k, 16, 0, 2, &eq, &t)); CF_CHECK(eq); }
  uint64_t d2 = deferred(st);
  for (id = 2000; id < 2100; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  uint64_t d3 = deferred(st);
  CF_CHECK_MSG(d3 - d2 >= 50, "only %llu of 100 cheap write-backs deferred into an SSD tier refusing them",
               (unsigned long long)(d3 - d2));
  CF_CHECK_EQ(count_intact(st, 1000, 1032), 32); /* the dear ones stayed */
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.cost_defer_on, 1);
  caps_ok(st, "refusing");
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* Promotion on read (cf_store_cost.c, cf__cost_promotes): the value tier keeps what it values,
 * so under the cost policy a whole-chunk read from the SSD tier copies the chunk into the CPU
 * tier (its SSD copy stays); LRU's store, not asked to promote, reads it from SSD each time. A
 * promotion never writes back, so it never drops a deferred chunk (refused by the full SSD tier,
 * in the CPU tier only) that the SSD tier would take now: the chunk is then just not promoted. */
static int promoted_after_read(cf_store_evict_t pol, const char *name) {
  cf_store_config_t c = cfg_cost(4, 16, pol);
  c.spill = 1; /* the daemon's write-back: every CPU chunk is clean (also on SSD) */
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir(name), &g, &c, &st));
  if (!st) return -1;
  for (uint64_t id = 1; id <= 8; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  CF_CHECK_MSG(!in_cpu(st, 1) && present(st, 1), "%s: chunk 1 not on SSD only", name);
  int eq, t;
  CF_CHECK_OK(st_check(st, 1, 16, 0, 2, &eq, &t));
  CF_CHECK(eq);
  CF_CHECK_EQ(t, CF_STORE_TIER_SSD);
  int up = in_cpu(st, 1);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.promotions, (uint64_t)up);
  CF_CHECK_EQ(s.ssd_chunks, 8); /* the SSD copy stays */
  CF_CHECK_EQ(count_intact(st, 1, 9), 8);
  caps_ok(st, name);
  cf_store_close(st);
  return up;
}

CF_TEST(store_cost_promotes_ssd_reads_but_never_drops_a_deferred_chunk) {
  CF_CHECK_MSG(promoted_after_read(CF_STORE_EVICT_COST, "cost_promote") == 1, "cost: chunk 1 not promoted");
  CF_CHECK_MSG(promoted_after_read(CF_STORE_EVICT_LRU, "cost_promote_lru") == 0, "lru: chunk 1 promoted");

  /* CPU tier of 2, SSD tier of 2: cheap 1 and 2 on SSD (and in the CPU tier); dear 3 pushes
   * 1's clean copy out of the CPU tier and, the SSD tier full, its write-back is deferred; 2 is
   * read. The CPU tier's victim is now 3 (by recency: unread, older than 2's read), which the
   * SSD tier would take over 1 or 2 (100x dearer). A read of 1 from SSD must not drop 3 for
   * 1's copy. */
  cf_store_t *st = open_spilling("cost_promote_refused", 2, 2);
  if (!st) return;
  int eq, t;
  for (uint64_t id = 1; id <= 3; id++) { CF_CHECK_OK(save_at(st, id, id == 3 ? 200 : 0)); wait_clean(st); caps_ok(st, "refused"); }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_refusals, 1);
  CF_CHECK(in_cpu(st, 3) && in_cpu(st, 2) && !in_cpu(st, 1));
  CF_CHECK_OK(st_check(st, 2, 16, 0, 2, &eq, &t));
  CF_CHECK(eq);
  CF_CHECK_OK(st_check(st, 1, 16, 0, 2, &eq, &t));
  CF_CHECK(eq);
  CF_CHECK_EQ(t, CF_STORE_TIER_SSD);
  CF_CHECK_MSG(present(st, 3), "the deferred chunk 3 was dropped by the promotion of 1");
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.promotions, 0);
  CF_CHECK_EQ(count_intact(st, 1, 4), 3);
  /* when saves push 3 out of the CPU tier, the SSD tier takes it */
  uint64_t id = 4;
  for (; id < 10 && in_cpu(st, 3); id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); caps_ok(st, "refused"); }
  CF_CHECK_MSG(id < 10, "chunk 3 never left the CPU tier");
  CF_CHECK_MSG(present(st, 3), "chunk 3 left the CPU tier and the SSD tier refused it");
  caps_ok(st, "refused");
  CF_CHECK_OK(cf_store_flush(st));
  cf_store_close(st);
}

/* The daemon's restores read an SSD chunk one layer per read (through the async reader): a
 * chunk whose first layer was read from SSD is promoted afterwards by the spill thread
 * (cf_store_promote.c), as a whole-chunk read promotes at once; before, a layer-by-layer read
 * never promoted, so the daemon ran the cost policy without its promotion on read. */
static int read_layers_async(cf_store_t *st, uint64_t id) {
  const cf_store_geom_t *g = cf_store_geom(st);
  size_t cb = cf_store_cell_bytes_n(g, 16);
  cf_store_reader_t *rd = NULL;
  CF_CHECK_OK(cf_store_reader_open(st, 4, &rd));
  if (!rd) return -1;
  int ok = 1;
  uint8_t *want = malloc(cb);
  for (uint32_t l = 0; l < g->n_layers; l++) {
    uint8_t *got = aligned_alloc(4096, (cb + 4095) / 4096 * 4096);
    cf_store_read_t req = {.key = st_key(g, id), .layer = l, .dst = got, .dst_bytes = cb};
    int rc = cf_store_read_submit(rd, &req);
    if (rc == 0) {
      cf_store_read_t *done = NULL;
      CF_CHECK_EQ(cf_store_read_poll(rd, 1, &done, 1), 1);
    }
    st_fill_cell(g, id, l, 16, want);
    /* (the later layers may come from the CPU tier: promoted meanwhile) */
    ok &= rc >= 0 && req.status == 0 && (l || req.tier == CF_STORE_TIER_SSD) && !memcmp(got, want, cb);
    free(got);
  }
  free(want);
  cf_store_reader_close(rd);
  return ok;
}

CF_TEST(store_cost_promotes_chunks_read_a_layer_at_a_time) {
  cf_store_config_t c = cfg_cost(4, 16, CF_STORE_EVICT_COST);
  c.spill = 1;
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir("cost_promote_layers"), &g, &c, &st));
  if (!st) return;
  for (uint64_t id = 1; id <= 8; id++) { CF_CHECK_OK(save_at(st, id, 0)); wait_clean(st); }
  CF_CHECK(!in_cpu(st, 1) && !in_cpu(st, 2) && present(st, 1) && present(st, 2));
  int eq, t;
  /* chunk 1 by synchronous reads of one layer each */
  for (uint32_t l = 0; l < 2; l++) {
    CF_CHECK_OK(st_check(st, 1, 16, l, 1, &eq, &t));
    CF_CHECK(eq);
    if (!l) CF_CHECK_EQ(t, CF_STORE_TIER_SSD); /* (layer 1 may be promoted already) */
  }
  wait_clean(st);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(in_cpu(st, 1), "chunk 1, read a layer at a time from SSD, not promoted");
  CF_CHECK_EQ(s.promotions, 1);
  /* chunk 2 through the async reader, the daemon's path */
  CF_CHECK_EQ(read_layers_async(st, 2), 1);
  wait_clean(st);
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(in_cpu(st, 2), "chunk 2, read a layer at a time by the async reader, not promoted");
  CF_CHECK_EQ(s.promotions, 2);
  CF_CHECK_EQ(s.ssd_chunks, 8); /* the SSD copies stay */
  CF_CHECK_EQ(count_intact(st, 1, 9), 8);
  caps_ok(st, "promote layers");
  cf_store_close(st);
}

/* The CPU tier in front of an SSD tier (cf_store_cost_cpu.c): its read class's head start is
 * the one whose shadow cache would have had the most CPU-tier hits, by a lead chance does not
 * explain. A CPU tier of 32 chunks before an SSD tier that holds everything, all chunks worth
 * the same, whole-chunk reads from SSD promoted into the CPU tier (so a chunk the tier gave
 * up by mistake can come back once the lesson is learnt; without promotion it stays on SSD).
 * The hit is the chunk's tier when it is read; counted once the shadows have had 600 steps. */
static cf_store_t *open_cpu_tier(const char *name, cf_store_evict_t pol) {
  cf_store_config_t c = cfg_cost(32, 2048, pol);
  c.cost = two_values(1.0f);
  c.promote_on_read = 1;
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir(name), &g, &c, &st));
  return st;
}

static int cpu_read(cf_store_t *st, uint64_t id) {
  int hit = in_cpu(st, id);
  CF_CHECK_EQ(read_or_resave(st, id), 1); /* from SSD if not in the CPU tier */
  return hit;
}

/* One of the traces above against the CPU tier before SSD: popular_scan (freq) or fresh_next.
 * Frequency is right (RAG's popular documents among one-shot question tails): 24 popular chunks
 * read two a step among three one-shot saves (60 touches between two reads of a popular chunk,
 * 32 CPU slots: LRU's scan pushes them out, and so does the head start of 0.35 tau, 22
 * touches, that the tier starts from). Recency is right (agentic runs: the next step reads what
 * the last one saved; LRU keeps every fresh chunk until its read): a head start of 0.35 tau
 * already keeps some dead read chunks over fresh unread ones. Returns the CPU-tier hits of steps
 * [600, 800); *head: the head start the tier ends with. */
static int cpu_trace(cf_store_evict_t pol, const char *name, int freq, double *head) {
  cf_store_t *st = open_cpu_tier(name, pol);
  if (!st) return -1;
  int hits = freq ? popular_scan(st, name, 24, 3, 1, 600, 800, cpu_read) : fresh_next(st, name, 600, 800, cpu_read);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  if (head) *head = s.cost_cpu_head_start;
  if (freq)
    for (uint64_t id = 100; id < 124; id++) CF_CHECK_MSG(present(st, id), "%s: popular chunk %d lost", name, (int)id);
  cf_store_close(st);
  return hits;
}

CF_TEST(store_cost_cpu_tier_keeps_reread_chunks_through_one_hit_scans) {
  double head = -1;
  int lru = cpu_trace(CF_STORE_EVICT_LRU, "cpu_freq_lru", 1, NULL);
  int cost = cpu_trace(CF_STORE_EVICT_COST, "cpu_freq_cost", 1, &head);
  CF_CHECK_MSG(lru < 100, "LRU's CPU tier kept the popular chunks through the scan (%d of 400 hits)", lru);
  CF_CHECK_MSG(cost >= 390, "cost's CPU tier hit %d of the last 400 popular reads (LRU %d)", cost, lru);
  /* the head start it starts from (0.35 tau) is not enough here: a larger one was chosen */
  CF_CHECK_MSG(head > 0.35, "the CPU tier's head start is %.3f tau", head);
}

CF_TEST(store_cost_cpu_tier_keeps_fresh_chunks_where_recency_is_right) {
  double head = -1;
  int lru = cpu_trace(CF_STORE_EVICT_LRU, "cpu_rec_lru", 0, NULL);
  int cost = cpu_trace(CF_STORE_EVICT_COST, "cpu_rec_cost", 0, &head);
  CF_CHECK_MSG(lru == 200, "LRU's CPU tier kept %d of the last 200 fresh chunks until their read", lru);
  CF_CHECK_MSG(cost >= 196, "cost's CPU tier kept %d of the last 200 fresh chunks (LRU %d)", cost, lru);
  CF_CHECK_MSG(head >= 0 && head < 0.35, "the CPU tier's head start is %.3f tau", head);
}

/* The reuse-rate order (cf_store_cost_rate.c): once the frequency-minded shadow (ln 4 tau) is in
 * charge, the CPU tier ranks by reads since first seen over the time since. popular_scan's 24
 * popular chunks first with 3 one-shot saves a step (the ln 4 shadow wins: the test above), then
 * with 8 (120 touches between two reads of a popular chunk, more than any head start keeps a
 * read chunk for: ln 4 tau = 89 touches for 32 slots). Recency, head start or not, loses the
 * popular chunks to the longer scan (each is read from SSD and promoted, then pushed out again
 * before its next read); their reuse rate keeps them. Returns the CPU-tier hits of the second
 * scan's steps [200, 300) (200 reads); *rate: whether the tier ends in the rate order. */
static int rate_trace(cf_store_evict_t pol, const char *name, int *rate) {
  cf_store_t *st = open_cpu_tier(name, pol);
  if (!st) return -1;
  popular_scan(st, name, 24, 3, 1, 0, 600, cpu_read);
  int hits = 0;
  for (int i = 0; i < 300; i++) { /* the same popular reads, 8 new one-shot saves a step */
    for (int k = 0; k < 2; k++) {
      int h = cpu_read(st, 100 + (uint64_t)((2 * i + k) % 24));
      if (i >= 200) hits += h;
    }
    for (int k = 0; k < 8; k++) CF_CHECK_OK(save_at(st, 300000 + 8 * (uint64_t)i + (uint64_t)k, 0));
    caps_ok(st, name);
  }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  if (rate) *rate = s.cost_cpu_rate_order;
  for (uint64_t id = 100; id < 124; id++) CF_CHECK_MSG(present(st, id), "%s: popular chunk %d lost", name, (int)id);
  cf_store_close(st);
  return hits;
}

CF_TEST(store_cost_cpu_tier_ranks_by_reuse_rate_when_frequency_leads) {
  int rate = -1;
  int lru = rate_trace(CF_STORE_EVICT_LRU, "cpu_rate_lru", NULL);
  int cost = rate_trace(CF_STORE_EVICT_COST, "cpu_rate_cost", &rate);
  CF_CHECK_MSG(lru == 0, "LRU's CPU tier hit %d popular reads with 120 touches between two", lru);
  CF_CHECK_MSG(rate == 1, "the CPU tier is not in the rate order");
  CF_CHECK_MSG(cost >= 180, "cost's CPU tier hit %d of the last 200 popular reads (LRU %d)", cost, lru);
}

/* The recency trace never puts the CPU tier in the rate order (agentic runs: the next step reads
 * the chunks the last one saved, unread yet, which a rate order would rank last). */
CF_TEST(store_cost_cpu_tier_stays_in_recency_order_where_recency_is_right) {
  cf_store_t *st = open_cpu_tier("cpu_rate_rec", CF_STORE_EVICT_COST);
  if (!st) return;
  int hits = fresh_next(st, "cpu_rate_rec", 600, 800, cpu_read);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(!s.cost_cpu_rate_order, "the recency trace put the CPU tier in the rate order");
  CF_CHECK_MSG(hits >= 196, "cost's CPU tier kept %d of the last 200 fresh chunks", hits);
  cf_store_close(st);
}

/* A CPU tier over the shadows' 4096 nodes (4500 slots): the shadows follow a sample of the keys
 * (half of them here, shadows of 2250), the tier keeps its cap and its chunks, and its head
 * start stays one of the shadows'. Saves of 6000 chunks, each of the last 64 read again. */
CF_TEST(store_cost_cpu_tier_shadows_sample_a_large_tier) {
  cf_store_config_t c = cfg_cost(4500, 2048, CF_STORE_EVICT_COST);
  c.file_bytes = 256 * SLOT;
  c.cost = two_values(1.0f);
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(tdir("cpu_sampled"), &g, &c, &st));
  if (!st) return;
  int reads = 0;
  for (uint64_t id = 0; id < 6000; id++) {
    CF_CHECK_OK(save_at(st, 200000 + id, 0));
    if (id >= 64) reads += cpu_read(st, 200000 + id - 64 + (id % 7)); /* a recent one */
    if (id % 500 == 0) caps_ok(st, "sampled");
  }
  caps_ok(st, "sampled");
  CF_CHECK_MSG(reads > 5000, "only %d of 5936 recent reads found in the CPU tier", reads);
  CF_CHECK_EQ(count_intact(st, 200000, 206000), 6000);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  double h = s.cost_cpu_head_start;
  CF_CHECK_MSG(h == 0.0 || fabs(h - 0.5 * 0.6931471805599453) < 1e-9 || fabs(h - 1.3862943611198906) < 1e-9,
               "the CPU tier's head start %.4f is none of its shadows'", h);
  cf_store_close(st);
}
