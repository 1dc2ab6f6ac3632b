/* Moments when the SSD tier looks full but is not, each raced by real threads on a real store:
 * 1. growing the data files while other threads save;
 * 2. a CPU-tier eviction whose dirty victim finds every SSD slot held by another thread's reads.
 *
 * 1. Growing the SSD tier's data files while other threads save: a store with no CPU tier (every save
 * takes an SSD slot at once) and one slot per data file, so every other save preallocates the next
 * file. Savers put exactly as many distinct chunks as the tier has slots, so no save may be
 * refused and no chunk may be evicted: a thread that saw "every file ready, no free slot" while the
 * last file's slots were still to be offered evicted a chunk (or got ENOSPC) for nothing. The
 * store's test hook CF_STORE_TEST_GROW_DELAY_US holds the grower between preallocating a file and
 * publishing it, so the other savers reach the allocator in that window on every run (before the
 * fix, file ready and its slots were published in two steps around that point). Asserts behaviour
 * only: every save succeeds, no eviction, every chunk reads back with its bytes, also durable
 * saves, and after a reopen. */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_test.h"
#include "unit/store_testlib.h"
#include "util/cf_err.h"

#define SPF 4                       /* slots per data file */
#define FILES 3
#define SLOTS (SPF * FILES)         /* the SSD tier holds exactly every chunk */
#define THREADS SPF                 /* the last file's slots, one per thread */
#define TRIALS 5

typedef struct {
  cf_store_t *st;
  const char *dir;
  int idx, trial;
  pthread_barrier_t *go;
  int fails;
  char first_err[160];
} grow_t;

static uint64_t id_of(int trial, int n) { return (uint64_t)trial * 1000 + (uint64_t)n; }

/* Thread 0 saves at once and so preallocates the last data file; the others wait for that file to
 * appear, then save at staggered moments (0, 4, 10 ms): at least one of them reaches the allocator
 * while the grower sits in the hook's delay. */
static void *saver(void *p) {
  grow_t *a = p;
  pthread_barrier_wait(a->go);
  if (a->idx) {
    char path[1100];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.%03d", a->dir, FILES - 1);
    while (stat(path, &sb) != 0) sched_yield();
    static const int stagger_us[] = {0, 0, 4000, 10000};
    if (stagger_us[a->idx]) usleep(stagger_us[a->idx]);
  }
  /* odd threads durable: the sync must cover the new file their slot lies in */
  int rc = st_save(a->st, id_of(a->trial, SLOTS - SPF + a->idx), 16, a->idx % 2 ? CF_STORE_SAVE_DURABLE : 0);
  if (rc) snprintf(a->first_err, sizeof a->first_err, "save %d: %s (%s)", a->idx, cf_err_name(rc), cf_errmsg());
  a->fails = rc != 0;
  return NULL;
}

static void run_trial(int trial) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/grow%d", cf_test_tmpdir(), trial);
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0;
  uint64_t slot = st_slot_bytes(&g);
  c.file_bytes = SPF * slot;
  c.ssd_bytes = SLOTS * slot;
  cf_store_t *st;
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.ssd_bytes_cap, SLOTS * slot);
  /* every file but the last filled, one save at a time */
  for (int n = 0; n < SLOTS - SPF; n++) CF_CHECK_OK(st_save(st, id_of(trial, n), 16, 0));

  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, THREADS);
  grow_t a[THREADS];
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) {
    a[i] = (grow_t){.st = st, .dir = dir, .idx = i, .trial = trial, .go = &go};
    pthread_create(&th[i], NULL, saver, &a[i]);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&go);
  for (int i = 0; i < THREADS; i++) CF_CHECK_MSG(!a[i].fails, "trial %d: %s", trial, a[i].first_err);

  cf_store_get_stats(st, &s);
  CF_CHECK_MSG(s.ssd_evictions == 0, "trial %d: %llu chunks evicted with the tier not full", trial,
               (unsigned long long)s.ssd_evictions);
  CF_CHECK_EQ(s.ssd_chunks, SLOTS);
  CF_CHECK_EQ(s.enospc, 0);
  for (int reopen = 0; reopen < 2; reopen++) {
    for (int n = 0; n < SLOTS; n++) {
      int equal, tier;
      int rc = st_check(st, id_of(trial, n), 16, 0, 2, &equal, &tier);
      CF_CHECK_MSG(rc == 0 && equal, "trial %d reopen %d chunk %d: %s equal=%d", trial, reopen, n,
                   cf_err_name(rc), equal);
    }
    cf_store_close(st);
    st = NULL;
    if (reopen) break;
    CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
    if (!st) return;
  }
}

CF_TEST(grow_publishes_file_and_slots_together) {
  setenv("CF_STORE_TEST_GROW_DELAY_US", "30000", 1); /* before any thread starts */
  for (int t = 0; t < TRIALS; t++) run_trial(t);
  unsetenv("CF_STORE_TEST_GROW_DELAY_US");
}

/* 2. A reader thread holds SSD reads of both chunks of a full 2-slot SSD tier (async reads in
 * flight: neither can be the SSD tier's victim). The main thread saves three chunks into a 2-slot
 * CPU tier: the third evicts a dirty one, whose write-back gets ENOSPC. Those slots are held only
 * until the reader polls, so the eviction must wait for them and write back, not drop the chunk
 * (before the fix it dropped it: cpu_evict_dirty 1 and the next flush "1 chunk(s) ... not
 * durable"). The reader polls once the store reports a waiting eviction (cpu_evict_waits), or once
 * the save returned (without the fix), so the test never depends on how long anything takes. */
typedef struct {
  cf_store_t *st;
  const cf_store_geom_t *g;
  int held, saved, skipped, polled;
} holder_t;

static void *read_holder(void *p) {
  holder_t *h = p;
  cf_store_reader_t *rd;
  if (cf_store_reader_open(h->st, 4, &rd)) { __atomic_store_n(&h->skipped, 1, __ATOMIC_RELEASE); return NULL; }
  size_t cb = cf_store_cell_bytes(h->g);
  uint8_t *dst = aligned_alloc(4096, 2 * ((cb + 4095) / 4096 * 4096));
  cf_store_read_t req[2];
  memset(req, 0, sizeof req);
  int inflight = 0;
  for (int i = 0; i < 2; i++) {
    req[i].key = st_key(h->g, (uint64_t)i + 1);
    req[i].dst = dst + i * ((cb + 4095) / 4096 * 4096);
    req[i].dst_bytes = cb;
    inflight += cf_store_read_submit(rd, &req[i]) == 0;
  }
  if (inflight < 2) __atomic_store_n(&h->skipped, 1, __ATOMIC_RELEASE); /* no io_uring: nothing held */
  __atomic_store_n(&h->held, 1, __ATOMIC_RELEASE);
  for (;;) {
    cf_store_stats_t s;
    cf_store_get_stats(h->st, &s);
    if (s.cpu_evict_waits || __atomic_load_n(&h->saved, __ATOMIC_ACQUIRE)) break;
    usleep(1000);
  }
  cf_store_read_t *done[2];
  while (cf_store_reader_inflight(rd)) cf_store_read_poll(rd, 1, done, 2);
  for (int i = 0; i < 2; i++) h->polled += req[i].status == 0;
  cf_store_reader_close(rd);
  free(dst);
  return NULL;
}

CF_TEST(eviction_waits_for_ssd_reads_of_other_threads) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/evwait", cf_test_tmpdir());
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c;
  cf_store_config_default(&c);
  cf_store_t *st;
  CF_CHECK_OK(st_open_two_slots(dir, &g, c, &st));
  if (!st) return;
  CF_CHECK_OK(st_save(st, 1, 16, CF_STORE_SAVE_DURABLE));
  CF_CHECK_OK(st_save(st, 2, 16, CF_STORE_SAVE_DURABLE));
  CF_CHECK_OK(cf_store_evict_cpu(st, 0)); /* 1 and 2 only on SSD: both SSD slots in use */
  holder_t h = {.st = st, .g = &g};
  pthread_t th;
  pthread_create(&th, NULL, read_holder, &h);
  while (!__atomic_load_n(&h.held, __ATOMIC_ACQUIRE)) usleep(1000);
  if (__atomic_load_n(&h.skipped, __ATOMIC_ACQUIRE)) {
    __atomic_store_n(&h.saved, 1, __ATOMIC_RELEASE);
    pthread_join(th, NULL);
    cf_store_close(st);
    CF_SKIP("io_uring unavailable: SSD reads complete at submit");
  }
  /* CPU tier: 3 and 4 dirty; saving 5 evicts one of them while both SSD slots are being read */
  CF_CHECK_OK(st_save(st, 3, 16, 0));
  CF_CHECK_OK(st_save(st, 4, 16, 0));
  CF_CHECK_OK(st_save(st, 5, 16, 0));
  __atomic_store_n(&h.saved, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  CF_CHECK_EQ(h.polled, 2);
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  CF_CHECK_EQ(s.cpu_evict_dirty, 0); /* written back after the reads, not dropped */
  CF_CHECK_GE(s.cpu_evict_waits, 1);
  CF_CHECK_OK(cf_store_flush(st)); /* nothing lost */
  cf_store_close(st);
  CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
  if (!st) return;
  /* the 2-slot SSD tier holds the two newest of 3, 4, 5 (each write-back evicted the oldest) */
  int held = 0;
  for (uint64_t id = 3; id <= 5; id++) {
    int eq, t;
    int rc = st_check(st, id, 16, 0, 2, &eq, &t);
    if (rc == CF_ENOTFOUND) continue;
    CF_CHECK_MSG(rc == 0 && eq, "chunk %llu after reopen: %s", (unsigned long long)id, cf_err_name(rc));
    held++;
  }
  CF_CHECK_EQ(held, 2);
  cf_store_close(st);
}
