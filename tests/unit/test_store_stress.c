/* Concurrent spill + restore + save under the cost policy with a tiny SSD cap: several saver
 * threads (some saves durable), readers that hold pins and keep SSD reads in flight while the
 * spiller and the savers choose SSD victims, a flusher that writes back and evicts the CPU tier,
 * all against one real store (real files, the real spiller thread). Built for `make tsan`'s unit
 * pass (tests/tsan.sh runs it under ThreadSanitizer) and `make asan`; in `make test` a few seconds.
 * Asserts the durable contract, never timing: a read returns the exact saved bytes or a miss
 * (never other bytes, never a checksum failure), the caps hold at every look, no dirty chunk is
 * dropped unwritten, a flush with nothing failing returns 0, and after a close and reopen every
 * chunk the SSD tier held is there with its bytes. */
#include <pthread.h>
#include <stdlib.h>

#include "cf_test.h"
#include "store/cf_remote.h"
#include "unit/redis_testlib.h"
#include "unit/store_testlib.h"
#include "util/cf_err.h"

#define SLOT (2 * 8192) /* st_geom(16, 2, 64): two 8 KiB cells */
#define IDS 96          /* distinct chunks, about 12 x the SSD tier's 8 slots */

/* A chunk's token count: every fifth is a partial chunk (its own cell size). */
static uint32_t ntok_of(uint64_t id) { return id % 5 == 4 ? 7 : 16; }

typedef struct {
  cf_store_t *st;
  int idx, stop, *done_savers;
  unsigned seed;
  long saves, durable_ok, reads, pins, misses;
  long wrong, corrupt, cap_over, errors;
  long flush_fail; /* flusher: flushes (and squeezes) that reported ENOSPC */
  long lost_reported; /* of those: dirty chunks they reported dropped unwritten */
  char first_err[160];
} stress_t;

static void note_err(stress_t *a, const char *what, int rc) {
  if (!a->errors++) snprintf(a->first_err, sizeof a->first_err, "%s: %s (%s)", what, cf_err_name(rc), cf_errmsg());
}

static void check_caps(stress_t *a) {
  cf_store_stats_t s;
  cf_store_get_stats(a->st, &s);
  if (s.cpu_bytes_used > s.cpu_bytes_cap || s.ssd_bytes_used > s.ssd_bytes_cap) a->cap_over++;
}

/* Saver: chunk ids in a skewed order (low ids recur: they get read and become dear), each at an
 * index that makes a few of them expensive under the value table; every 7th save durable. */
static void *saver(void *p) {
  stress_t *a = p;
  uint64_t s = a->seed;
  for (int i = 0; i < 500; i++) {
    s = st_mix(s);
    uint64_t id = (s & 1) ? s % 16 : s % IDS;
    const cf_store_geom_t *g = cf_store_geom(a->st);
    const void *cells[8];
    uint8_t *buf = st_make_cells(g, id, ntok_of(id), cells);
    cf_store_key_t k = st_key(g, id);
    unsigned fl = i % 7 == 0 ? CF_STORE_SAVE_DURABLE : 0;
    int rc = cf_store_save_at(a->st, &k, (uint32_t)(id % 12), ntok_of(id), cells, fl);
    free(buf);
    /* EBUSY: every CPU slot pinned at that moment; ENOSPC: every SSD slot being read (a durable
     * save then fails cleanly) */
    if (rc == 0 || rc == CF_EEXIST) { a->saves++; if (fl && rc == 0) a->durable_ok++; }
    else if (rc != CF_EBUSY && rc != CF_ENOSPC) note_err(a, "save", rc);
    if (i % 50 == 0) check_caps(a);
  }
  __atomic_add_fetch(a->done_savers, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* One read's outcome: exact bytes of (id, layer) or a miss. */
static void judge(stress_t *a, uint64_t id, uint32_t layer, int status, uint32_t ntok, const uint8_t *got,
                  uint8_t *want) {
  if (status == CF_ENOTFOUND) { a->misses++; return; }
  if (status == CF_ECORRUPT) { a->corrupt++; return; }
  if (status) { note_err(a, "read", status); return; }
  const cf_store_geom_t *g = cf_store_geom(a->st);
  if (ntok != ntok_of(id)) { a->wrong++; return; }
  st_fill_cell(g, id, layer, ntok, want);
  if (memcmp(got, want, cf_store_cell_bytes_n(g, ntok))) a->wrong++;
  a->reads++;
}

/* Reader: batches of 4 async cell reads in flight at once (SSD slots held while the others choose
 * victims), a pin held across a synchronous read of another chunk, and whole-chunk reads. */
static void *reader(void *p) {
  stress_t *a = p;
  const cf_store_geom_t *g = cf_store_geom(a->st);
  const size_t cb = cf_store_cell_bytes(g);
  cf_store_reader_t *rd;
  int rc = cf_store_reader_open(a->st, 4, &rd);
  if (rc) { note_err(a, "reader_open", rc); return NULL; }
  uint8_t *buf[4], *want = malloc(cb), *whole = aligned_alloc(4096, 2 * 8192);
  for (int i = 0; i < 4; i++) buf[i] = aligned_alloc(4096, cb);
  uint64_t s = a->seed;
  long rounds = 0;
  /* on until the savers are done, and at least some rounds (a slow machine) */
  while (__atomic_load_n(a->done_savers, __ATOMIC_ACQUIRE) < 2 || rounds < 50) {
    rounds++;
    cf_store_read_t r[4];
    uint64_t ids[4];
    for (int i = 0; i < 4; i++) {
      s = st_mix(s);
      ids[i] = (s & 1) ? s % 16 : s % IDS;
      memset(&r[i], 0, sizeof r[i]);
      r[i].key = st_key(g, ids[i]);
      r[i].layer = (uint32_t)((s >> 20) % g->n_layers);
      r[i].dst = buf[i];
      r[i].dst_bytes = cb;
      r[i].tag = (uint64_t)i;
      rc = cf_store_read_submit(rd, &r[i]);
      if (rc < 0) { note_err(a, "read_submit", rc); r[i].status = rc; }
    }
    while (cf_store_reader_inflight(rd)) {
      cf_store_read_t *d[4];
      cf_store_read_poll(rd, 1, d, 4);
    }
    for (int i = 0; i < 4; i++) judge(a, ids[i], r[i].layer, r[i].status, r[i].n_tokens, buf[i], want);
    /* a pin held while another chunk is read whole (from SSD when it is there) */
    cf_store_pin_t pin;
    s = st_mix(s);
    uint64_t pid = s % 16, wid = (s >> 8) % IDS;
    cf_store_key_t pk = st_key(g, pid), wk = st_key(g, wid);
    int pinned = cf_store_pin(a->st, &pk, &pin) == 0;
    int tier;
    rc = cf_store_read(a->st, &wk, 0, g->n_layers, whole, 2 * 8192, &tier);
    if (rc == 0) {
      size_t wb = cf_store_cell_bytes_n(g, ntok_of(wid));
      for (uint32_t l = 0; l < g->n_layers; l++) judge(a, wid, l, 0, ntok_of(wid), whole + l * wb, want);
    } else {
      judge(a, wid, 0, rc, 0, NULL, want);
    }
    if (pinned) {
      if (pin.n_tokens != ntok_of(pid)) a->wrong++;
      for (uint32_t l = 0; l < g->n_layers && pin.n_tokens == ntok_of(pid); l++) {
        st_fill_cell(g, pid, l, pin.n_tokens, want);
        if (memcmp(pin.base + l * pin.cell_stride, want, pin.cell_bytes)) a->wrong++;
      }
      a->pins++;
      cf_store_unpin(a->st, &pin);
    }
    if (rounds % 20 == 0) check_caps(a);
  }
  for (int i = 0; i < 4; i++) free(buf[i]);
  free(want);
  free(whole);
  cf_store_reader_close(rd);
  return NULL;
}

/* The count of dirty chunks a failed flush reports dropped unwritten (cf_store_flush's message
 * "N chunk(s) saved since the last flush were evicted ..."), 0 when it reports none. */
static long lost_in_msg(const char *msg) {
  const char *p = strstr(msg, " chunk(s) saved since the last flush");
  if (!p) return 0;
  while (p > msg && p[-1] >= '0' && p[-1] <= '9') p--;
  return strtol(p, NULL, 10);
}

/* Flusher: write-back of everything dirty and a squeeze of the CPU tier, over and over. ENOSPC
 * only when the SSD slots were all held by reads and other write-backs at that moment (either
 * call reports it: the squeeze flushes first); EBUSY from the squeeze when every CPU slot was
 * pinned (reads, write-backs). */
static void *flusher(void *p) {
  stress_t *a = p;
  for (int i = 0; __atomic_load_n(a->done_savers, __ATOMIC_ACQUIRE) < 2; i++) {
    int flush = i & 1;
    int rc = flush ? cf_store_flush(a->st) : cf_store_evict_cpu(a->st, 3 * SLOT);
    if (rc == CF_ENOSPC) { a->flush_fail++; a->lost_reported += lost_in_msg(cf_errmsg()); }
    else if (rc && !(rc == CF_EBUSY && !flush)) note_err(a, flush ? "flush" : "evict_cpu", rc);
    check_caps(a);
  }
  return NULL;
}

static cf_store_config_t stress_cfg(void) {
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 10 * SLOT;
  c.ssd_bytes = 8 * SLOT; /* tiny: victims chosen all the time */
  c.file_bytes = 3 * SLOT; /* three data files, the last one short */
  c.cpu_evict = CF_STORE_EVICT_COST;
  c.cost.bucket_chunks = 4; /* indexes 0-3 cheap, 4-7 dearer, 8-11 dearest */
  for (int b = 0; b < CF_STORE_COST_BUCKETS; b++) {
    c.cost.saved_s[0][b] = 0.01f * (float)(1 + 4 * b);
    c.cost.saved_s[1][b] = 0.008f * (float)(1 + 4 * b);
  }
  c.spill = 1;
  c.spill_watermark = 0; /* the spiller writes back all the time */
  c.journal_slack = 64;  /* compactions while everything else runs */
  return c;
}

CF_TEST(store_stress_cost_spill_restore_save_tiny_ssd) {
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/stress", cf_test_tmpdir());
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c = stress_cfg();
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  enum { NS = 2, NR = 2 };
  stress_t a[NS + NR + 1];
  pthread_t th[NS + NR + 1];
  int done = 0;
  for (int i = 0; i < NS + NR + 1; i++) {
    memset(&a[i], 0, sizeof a[i]);
    a[i].st = st;
    a[i].idx = i;
    a[i].seed = (unsigned)(101 * i + 7);
    a[i].done_savers = &done;
  }
  for (int i = 0; i < NS + NR + 1; i++)
    pthread_create(&th[i], NULL, i < NS ? saver : i < NS + NR ? reader : flusher, &a[i]);
  for (int i = 0; i < NS + NR + 1; i++) pthread_join(th[i], NULL);
  long saves = 0, durable = 0, reads = 0;
  for (int i = 0; i < NS + NR + 1; i++) {
    CF_CHECK_EQ(a[i].wrong, 0);
    CF_CHECK_EQ(a[i].corrupt, 0);
    CF_CHECK_EQ(a[i].cap_over, 0);
    CF_CHECK_MSG(a[i].errors == 0, "thread %d: %ld errors, first %s", i, a[i].errors, a[i].first_err);
    saves += a[i].saves;
    durable += a[i].durable_ok;
    reads += a[i].reads;
  }
  CF_CHECK_GT(saves, 500);
  CF_CHECK_GT(durable, 0);
  CF_CHECK_GT(reads, 0);
  /* a dirty chunk leaves the CPU tier unwritten only when its write-back failed (the SSD slots
   * all held by reads and by other write-backs in flight: ENOSPC), and then the next flush says
   * so, with the count: the flusher's, or this one for losses after the flusher's last. The one
   * exception the contract makes: a chunk the full SSD tier refused (never durable), admitted
   * on its second weighing as the CPU tier evicts it and then failing that write-back. Quiet
   * now, a flush writes back every dirty chunk (nothing fails, no reader holds a slot). */
  long flush_fail = a[NS + NR].flush_fail, reported = a[NS + NR].lost_reported;
  int frc = cf_store_flush(st);
  if (frc == CF_ENOSPC) { flush_fail++; reported += lost_in_msg(cf_errmsg()); frc = cf_store_flush(st); }
  CF_CHECK_OK(frc);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_MSG((uint64_t)reported <= s.cpu_evict_dirty && s.cpu_evict_dirty <= (uint64_t)reported + s.ssd_refusals,
               "%llu dirty chunks dropped unwritten, %ld reported by flushes, %llu refusals",
               (unsigned long long)s.cpu_evict_dirty, reported, (unsigned long long)s.ssd_refusals);
  CF_CHECK_EQ(s.cpu_dirty, 0);
  CF_CHECK_EQ(s.corrupt_cells, 0);
  CF_CHECK_LE(s.cpu_bytes_used, s.cpu_bytes_cap);
  CF_CHECK_LE(s.ssd_bytes_used, s.ssd_bytes_cap);
  CF_CHECK_GT(s.ssd_evictions, 0); /* the tiny tier did choose victims */
  uint64_t ssd_chunks = s.ssd_chunks;
  long misses = 0, pins = 0;
  for (int i = 0; i < NS + NR + 1; i++) { misses += a[i].misses; pins += a[i].pins; }
  printf("  saves %ld (durable %ld), cell reads %ld, misses %ld, pins %ld; spills %llu, ssd evictions %llu, "
         "refusals %llu, cpu evictions %llu (dirty %llu, flush failures %ld reporting %ld), compactions %llu, ssd chunks %llu\n",
         saves, durable, reads, misses, pins,
         (unsigned long long)s.spills, (unsigned long long)s.ssd_evictions, (unsigned long long)s.ssd_refusals,
         (unsigned long long)s.cpu_evictions, (unsigned long long)s.cpu_evict_dirty, flush_fail, reported,
         (unsigned long long)s.journal_compactions,
         (unsigned long long)ssd_chunks);
  cf_store_close(st);

  /* reopen: what the SSD tier held is there, each chunk with its exact bytes */
  c.spill = 0;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_chunks, ssd_chunks);
  CF_CHECK_EQ(s.journal_damaged, 0);
  uint64_t found = 0;
  for (uint64_t id = 0; id < IDS; id++) {
    int eq, tier;
    int rc = st_check(st, id, ntok_of(id), 0, g.n_layers, &eq, &tier);
    CF_CHECK_MSG(rc == 0 || rc == CF_ENOTFOUND, "chunk %llu: %s", (unsigned long long)id, cf_err_name(rc));
    if (rc == 0) { CF_CHECK_MSG(eq, "chunk %llu: other bytes after reopen", (unsigned long long)id); found++; }
  }
  CF_CHECK_EQ(found, ssd_chunks);
  cf_store_close(st);
}

/* ---------------------------------------------------------------- value table vs saves */

typedef struct {
  cf_store_t *st;
  int stop;
  long sets;
} table_arg_t;

/* The daemon's re-fit hands the store a new value table while engines save. */
static void *table_setter(void *p) {
  table_arg_t *a = p;
  cf_store_cost_t t;
  memset(&t, 0, sizeof t);
  t.bucket_chunks = 4;
  while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
    float k = (float)(1 + __atomic_load_n(&a->sets, __ATOMIC_RELAXED) % 7);
    for (int b = 0; b < CF_STORE_COST_BUCKETS; b++) t.saved_s[0][b] = t.saved_s[1][b] = k * (float)(b + 1);
    cf_store_set_cost(a->st, &t);
    __atomic_add_fetch(&a->sets, 1, __ATOMIC_RELAXED);
  }
  return NULL;
}

/* Saves with a remote tier under the cost policy weigh each chunk against the value table
 * (cf__remote_saved: cheap chunks skip a busy write-back queue) while cf_store_set_cost replaces
 * that table: the weighing must read it under the store's lock (a ThreadSanitizer data race on
 * st->cfg.cost before, and a torn table: a mix of the old and new values). `make tsan` runs this
 * binary. A real redis-server as the remote tier. */
CF_TEST(store_stress_value_table_replaced_while_saving_to_remote) {
  if (!rt_have_redis()) { cf_test_skip("redis-server not installed (make deps)"); return; }
  rt_server_t srv;
  CF_CHECK_EQ(rt_standalone(&srv, cf_test_tmpdir(), "stress_redis", NULL), 0);
  char url[64], dir[1100];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", srv.port);
  snprintf(dir, sizeof dir, "%s/stress_table", cf_test_tmpdir());
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c = stress_cfg();
  c.remote_url = url;
  c.remote_timeout_ms = 60000;
  cf_store_t *st = NULL;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) { rt_stop(&srv); return; }
  table_arg_t a = {st, 0, 0};
  pthread_t th;
  pthread_create(&th, NULL, table_setter, &a);
  for (uint64_t id = 0; id < 200 || !__atomic_load_n(&a.sets, __ATOMIC_RELAXED); id++) {
    const void *cells[8];
    uint8_t *buf = st_make_cells(&g, id, 16, cells);
    cf_store_key_t k = st_key(&g, id);
    int rc = cf_store_save_at(st, &k, (uint32_t)(id % 12), 16, cells, 0);
    free(buf);
    CF_CHECK_MSG(rc == 0 || rc == CF_EEXIST || rc == CF_EBUSY, "save %llu: %s", (unsigned long long)id, cf_err_name(rc));
    if (id > 100000) break;
  }
  __atomic_store_n(&a.stop, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  CF_CHECK_GT(__atomic_load_n(&a.sets, __ATOMIC_RELAXED), 0);
  CF_CHECK_OK(cf_remote_flush(cf_store_remote(st), 60000));
  cf_store_close(st);
  rt_stop(&srv);
}

/* ---------------------------------------------------------------- a refusal is no lost write-back */

/* The CPU tier evicts a dirty cheap chunk A; its write-back batch also takes a dirty dear chunk
 * B. The full SSD tier (both its chunks being read: no victim) refuses A on its value and has no
 * slot for B (ENOSPC). A goes, as the SSD tier's refusal (never durable), not as a dirty chunk
 * whose write-back failed: the next flush, once B is written, returns 0, not "1 chunk(s) ... not
 * durable" (it did, found by store_stress_cost_spill_restore_save_tiny_ssd's accounting). */
CF_TEST(store_stress_refused_victim_is_not_a_lost_write_back) {
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/stress_refused", cf_test_tmpdir());
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_t *st;
  CF_CHECK_OK(st_open_two_slots(dir, &g, stress_cfg(), &st));
  if (!st) return;
  const size_t cb = cf_store_cell_bytes(&g);
  const void *cells[8];
  uint8_t *buf;
  /* two dear chunks (index 11, the dearest bucket) fill the SSD tier, then leave the CPU tier */
  for (uint64_t id = 0; id < 2; id++) {
    buf = st_make_cells(&g, id, 16, cells);
    cf_store_key_t k = st_key(&g, id);
    CF_CHECK_OK(cf_store_save_at(st, &k, 11, 16, cells, CF_STORE_SAVE_DURABLE));
    free(buf);
  }
  CF_CHECK_OK(cf_store_evict_cpu(st, 0));
  /* both read from SSD, the reads left in flight: neither can be the SSD tier's victim; B
   * (newer, as dear) outranks them, A (cheap) does not */
  cf_store_reader_t *rd;
  CF_CHECK_OK(cf_store_reader_open(st, 4, &rd));
  if (!rd) { cf_store_close(st); return; }
  cf_store_read_t r[2];
  uint8_t *dst[2];
  for (int i = 0; i < 2; i++) {
    dst[i] = aligned_alloc(4096, cb);
    memset(&r[i], 0, sizeof r[i]);
    r[i].key = st_key(&g, (uint64_t)i);
    r[i].layer = 1; /* not the first layer: not a use, the chunks stay in the unread class */
    r[i].dst = dst[i];
    r[i].dst_bytes = cb;
    CF_CHECK_EQ(cf_store_read_submit(rd, &r[i]), 0); /* in flight (SSD) */
  }
  /* A cheap (index 0), then B dear (index 11): the CPU tier is full */
  uint64_t ids[3] = {10, 11, 12};
  uint32_t pos[3] = {0, 11, 11};
  for (int i = 0; i < 3; i++) {
    /* the third save evicts A, the oldest: its batch is A (refused) and B (no slot) */
    buf = st_make_cells(&g, ids[i], 16, cells);
    cf_store_key_t k = st_key(&g, ids[i]);
    CF_CHECK_OK(cf_store_save_at(st, &k, pos[i], 16, cells, 0));
    free(buf);
  }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_GE(s.ssd_refusals, 1);
  CF_CHECK_EQ(s.cpu_evict_dirty, 0);
  cf_store_key_t ka = st_key(&g, 10);
  CF_CHECK_EQ(cf_store_lookup(st, &ka, 1, NULL), 0); /* A went */
  /* the reads complete; B and the third chunk can be written back now */
  while (cf_store_reader_inflight(rd)) {
    cf_store_read_t *d[2];
    cf_store_read_poll(rd, 1, d, 2);
  }
  for (int i = 0; i < 2; i++) {
    CF_CHECK_EQ(r[i].status, 0);
    free(dst[i]);
  }
  cf_store_reader_close(rd);
  int rc = cf_store_flush(st);
  CF_CHECK_MSG(rc == 0, "flush: %s (%s)", cf_err_name(rc), cf_errmsg());
  cf_store_close(st);
}
