/* Growing the SSD tier's data files while other threads save: a store with no CPU tier (every save
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
  /* a slot: each layer's cell rounded up to the store's 4 KiB alignment */
  uint64_t slot = 2 * ((cf_store_cell_bytes(&g) + 4095) / 4096 * 4096);
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
