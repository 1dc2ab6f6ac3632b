/* Shrinking and growing the SSD tier across opens, with real processes and real kill -9 (issue 19).
 * Each step runs in a forked child (its own process, as a daemon restart would be); the parent
 * checks what the journal says afterwards: every chunk either present with the bytes it was saved
 * with, or dropped by a journaled record (absent from a read-only replay), no damage reported,
 * and the survivors the ones the eviction policy keeps. */
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "unit/store_testlib.h"

#define SLOT (2 * 8192) /* st_geom(16, 2, 64): two 8 KiB cells */

static cf_store_config_t cfg_slots(int slots, cf_store_evict_t pol) {
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0; /* saves go straight to SSD: the SSD order is the save order */
  c.ssd_bytes = (uint64_t)slots * SLOT;
  c.cpu_evict = pol;
  c.file_bytes = 8 * SLOT; /* several files, so a shrink removes some and cuts one */
  c.spill = 0;
  return c;
}

/* Run fn in a child process; returns its wait status. */
typedef void (*child_fn)(const char *dir, int slots, cf_store_evict_t pol, uint64_t a, uint64_t b);
static int in_child(child_fn fn, const char *dir, int slots, cf_store_evict_t pol, uint64_t a,
                    uint64_t b, const char *kill_at) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    if (kill_at) setenv("CF_STORE_TEST_KILL_AT", kill_at, 1);
    fn(dir, slots, pol, a, b);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

/* child: save ids [a, b) durably */
static void ch_save(const char *dir, int slots, cf_store_evict_t pol, uint64_t a, uint64_t b) {
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c = cfg_slots(slots, pol);
  cf_store_t *st;
  if (cf_store_open(dir, &g, &c, &st)) _exit(3);
  for (uint64_t id = a; id < b; id++)
    if (st_save(st, id, 16, 0)) _exit(4);
  if (cf_store_flush(st)) _exit(5);
  cf_store_close(st);
}

/* child: read ids [0, a) (a use: the policy keeps them longer), then save ids [80, b), close
 * cleanly */
static void ch_read_save(const char *dir, int slots, cf_store_evict_t pol, uint64_t a, uint64_t b) {
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c = cfg_slots(slots, pol);
  cf_store_t *st;
  if (cf_store_open(dir, &g, &c, &st)) _exit(3);
  for (uint64_t id = 0; id < a; id++) {
    int eq, t;
    if (st_check(st, id, 16, 0, 2, &eq, &t) || !eq) _exit(4);
  }
  for (uint64_t id = 80; id < b; id++)
    if (st_save(st, id, 16, 0)) _exit(5);
  if (cf_store_flush(st)) _exit(6);
  cf_store_close(st);
}

/* child: open (a shrink or a grow happens here) and close */
static void ch_open(const char *dir, int slots, cf_store_evict_t pol, uint64_t a, uint64_t b) {
  (void)a; (void)b;
  cf_store_geom_t g = st_geom(16, 2, 64);
  cf_store_config_t c = cfg_slots(slots, pol);
  cf_store_t *st;
  if (cf_store_open(dir, &g, &c, &st)) {
    fprintf(stderr, "child open: %s\n", cf_errmsg());
    _exit(3);
  }
  cf_store_close(st);
}

static int exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

/* What a read-only replay of the journal holds: present[id] for ids [0, n), every present chunk
 * checked byte for byte (*bad counts those that differ or fail). Returns how many are present. */
static int journal_holds(const char *dir, int n, uint8_t *present, int *bad) {
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.readonly = 1;
  c.spill = 0;
  cf_store_t *st;
  *bad = 0;
  if (cf_store_open(dir, NULL, &c, &st)) { *bad = -1; return 0; }
  int held = 0;
  for (int id = 0; id < n; id++) {
    int eq, t;
    int rc = st_check(st, (uint64_t)id, 16, 0, 2, &eq, &t);
    present[id] = rc == 0;
    if (rc == 0) { held++; if (!eq) (*bad)++; }
    else if (rc != CF_ENOTFOUND) (*bad)++;
  }
  cf_store_close(st);
  return held;
}

static void verify_clean(const char *dir, int want_ok) {
  cf_store_verify_t v;
  CF_CHECK_OK(cf_store_verify_dir(dir, &v));
  CF_CHECK_EQ(v.chunks_damaged, 0);
  CF_CHECK_EQ(v.journal_damaged, 0);
  if (want_ok >= 0) CF_CHECK_EQ(v.chunks_ok, (uint64_t)want_ok);
}

/* Shrink, grow, shrink again under each policy. 80 chunks saved; then one process reads ids
 * 0..9 and saves 80..99. A cap of 25 keeps what each policy ranks last to go:
 *   LRU      least recently saved or read first: 10..79, 0..9 (read), 80..99 — keeps 5..9, 80..99;
 *   S3-FIFO  oldest save first, a chunk read since goes round again: 10..99, then 0..9 — keeps
 *            85..99 and 0..9.
 * A cap of 100 then takes 50 more saves (100..149) without evicting; a cap of 40 keeps the newest
 * 40 (the read counts of the S3-FIFO run went with the rewrite that recorded their order). */
static void shrink_grow_shrink(cf_store_evict_t pol, const char *name) {
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/%s", cf_test_tmpdir(), name);
  uint8_t present[200];
  int bad;
  const int lru = pol == CF_STORE_EVICT_LRU;
  CF_CHECK(exited_ok(in_child(ch_save, dir, 100, pol, 0, 80, NULL)));
  CF_CHECK(exited_ok(in_child(ch_read_save, dir, 100, pol, 10, 100, NULL)));
  verify_clean(dir, 100);

  /* shrink to 25 */
  CF_CHECK(exited_ok(in_child(ch_open, dir, 25, pol, 0, 0, NULL)));
  verify_clean(dir, 25);
  CF_CHECK_EQ(journal_holds(dir, 200, present, &bad), 25);
  CF_CHECK_EQ(bad, 0);
  for (int id = 0; id < 100; id++) {
    int want = lru ? (id >= 5 && id < 10) || id >= 80 : id < 10 || id >= 85;
    CF_CHECK_MSG(present[id] == want, "%s: chunk %d %s after the shrink to 25", name, id,
                 present[id] ? "kept" : "dropped");
  }
  CF_CHECK_LE(dir_data_bytes(dir), 25 * SLOT);

  /* grow to 100: 50 more fit without evicting anything */
  CF_CHECK(exited_ok(in_child(ch_save, dir, 100, pol, 100, 150, NULL)));
  verify_clean(dir, 75);
  CF_CHECK_EQ(journal_holds(dir, 200, present, &bad), 75);
  CF_CHECK_EQ(bad, 0);
  for (int id = 100; id < 150; id++) CF_CHECK(present[id]);

  /* shrink again, to 40 */
  CF_CHECK(exited_ok(in_child(ch_open, dir, 40, pol, 0, 0, NULL)));
  verify_clean(dir, 40);
  CF_CHECK_EQ(journal_holds(dir, 200, present, &bad), 40);
  CF_CHECK_EQ(bad, 0);
  for (int id = 0; id < 150; id++)
    CF_CHECK_MSG(present[id] == (id >= 110), "%s: chunk %d %s after the shrink to 40", name, id,
                 present[id] ? "kept" : "dropped");
  CF_CHECK_LE(dir_data_bytes(dir), 40 * SLOT);
}

CF_TEST(store_shrink_grow_shrink_lru) { shrink_grow_shrink(CF_STORE_EVICT_LRU, "lru"); }
CF_TEST(store_shrink_grow_shrink_s3fifo) { shrink_grow_shrink(CF_STORE_EVICT_S3FIFO, "s3fifo"); }

static int copy_dir(const char *from, const char *to) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", to, from, to);
  return system(cmd);
}

/* The durable contract at every kill point of a shrink (CF_STORE_TEST_KILL_AT=1, 2, ... until
 * the shrink runs through), then at random moments: after each kill the journal holds every chunk
 * with its bytes or has dropped it, nothing reads as damaged, the read chunks are all there and
 * the dropped ones are a prefix of the save order; the next open finishes the shrink exactly. */
CF_TEST(store_shrink_kill9_every_step) {
  const int N = 120, HOT = 15, CAP = 40;
  char tmpl[1200], dir[1200];
  snprintf(tmpl, sizeof tmpl, "%s/template", cf_test_tmpdir());
  snprintf(dir, sizeof dir, "%s/work", cf_test_tmpdir());
  CF_CHECK(exited_ok(in_child(ch_save, tmpl, N, CF_STORE_EVICT_LRU, 0, (uint64_t)N, NULL)));
  CF_CHECK(exited_ok(in_child(ch_read_save, tmpl, N, CF_STORE_EVICT_LRU, HOT, 80, NULL)));
  uint8_t present[200];
  int killed = 0, points = 0, random_kills = 0;
  /* rounds 1..: kill point `round`, until a shrink runs through; then 10 random moments */
  for (int round = 1, random_left = -1; round <= 200 && random_left != 0; round++) {
    int at_point = random_left < 0;
    if (copy_dir(tmpl, dir) != 0) { CF_CHECK(0); return; }
    int status;
    if (at_point) {
      char k[16];
      snprintf(k, sizeof k, "%d", round);
      status = in_child(ch_open, dir, CAP, CF_STORE_EVICT_LRU, 0, 0, k);
    } else {
      /* a random moment of the shrink, wherever it lands (also mid-write) */
      fflush(stdout);
      pid_t pid = fork();
      if (pid == 0) { ch_open(dir, CAP, CF_STORE_EVICT_LRU, 0, 0); _exit(0); }
      struct timespec ts = {0, (long)(cf_test_rand() % 20000) * 1000};
      nanosleep(&ts, NULL);
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      random_left--;
    }
    int was_killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    CF_CHECK_MSG(was_killed || exited_ok(status), "round %d: child status %d", round, status);
    if (at_point && !was_killed) { points = round - 1; random_left = 10; } /* every point done */
    if (!at_point && was_killed) random_kills++;
    killed += was_killed;

    /* what the journal says right after the kill */
    int bad;
    int held = journal_holds(dir, N, present, &bad);
    CF_CHECK_MSG(bad == 0, "round %d: %d chunk(s) read wrong or failed", round, bad);
    CF_CHECK_GE(held, CAP);
    cf_store_verify_t v;
    CF_CHECK_OK(cf_store_verify_dir(dir, &v));
    CF_CHECK_MSG(v.chunks_damaged == 0 && v.journal_damaged == 0,
                 "round %d: verify after the kill: %s", round, v.first_damage);
    for (int id = 0; id < HOT; id++) CF_CHECK_MSG(present[id], "round %d: read chunk %d dropped", round, id);
    /* LRU drops the unread in save order: the survivors among them are a suffix */
    for (int id = HOT + 1; id < N; id++)
      CF_CHECK_MSG(!present[id - 1] || present[id], "round %d: chunk %d dropped but %d kept", round,
                   id, id - 1);

    /* the next open with the small cap finishes the shrink */
    CF_CHECK(exited_ok(in_child(ch_open, dir, CAP, CF_STORE_EVICT_LRU, 0, 0, NULL)));
    CF_CHECK_EQ(journal_holds(dir, N, present, &bad), CAP);
    CF_CHECK_EQ(bad, 0);
    for (int id = 0; id < N; id++)
      CF_CHECK_MSG(present[id] == (id < HOT || id >= N - (CAP - HOT)),
                   "round %d: chunk %d %s after the finished shrink", round, id,
                   present[id] ? "kept" : "dropped");
    verify_clean(dir, CAP);
    CF_CHECK_LE(dir_data_bytes(dir), (uint64_t)CAP * SLOT);
  }
  printf("  shrink kill -9: %d kill points, %d kills in all (%d at random moments)\n", points,
         killed, random_kills);
  CF_CHECK_GT(points, 5);
}

/* A chunk whose bytes rotted in a slot the shrink has to move is dropped (counted), not copied. */
CF_TEST(store_shrink_drops_a_corrupt_chunk_it_would_move) {
  char dir[1200];
  snprintf(dir, sizeof dir, "%s/rot", cf_test_tmpdir());
  CF_CHECK(exited_ok(in_child(ch_save, dir, 40, CF_STORE_EVICT_LRU, 0, 40, NULL)));
  /* chunk 35 sits in slot 35 (data.004, slot 3): flip a byte of its second cell */
  char p[1300];
  snprintf(p, sizeof p, "%s/data.004", dir);
  FILE *f = fopen(p, "r+b");
  CF_CHECK(f != NULL);
  if (!f) return;
  fseek(f, 3 * SLOT + 8192 + 77, SEEK_SET);
  int ch = fgetc(f);
  fseek(f, 3 * SLOT + 8192 + 77, SEEK_SET);
  fputc(ch ^ 0x5a, f);
  fclose(f);
  CF_CHECK(exited_ok(in_child(ch_open, dir, 20, CF_STORE_EVICT_LRU, 0, 0, NULL)));
  uint8_t present[64];
  int bad;
  CF_CHECK_EQ(journal_holds(dir, 40, present, &bad), 19);
  CF_CHECK_EQ(bad, 0);
  CF_CHECK(!present[35]);
  for (int id = 20; id < 40; id++) if (id != 35) CF_CHECK(present[id]);
  verify_clean(dir, 19);
}
