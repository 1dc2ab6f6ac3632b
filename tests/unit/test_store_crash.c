/* Crash test with real processes and real kill -9: a child saves (some durably), flushes, evicts
 * and spills in a loop and is SIGKILLed at a random moment; the parent reopens the store and
 * checks the durable-save contract: every chunk reported durable before the kill is there with
 * the right bytes, every chunk the store serves verifies, and `verify` finds no damage. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_test.h"
#include "unit/store_testlib.h"

#define ROUNDS 60
#define PER_ROUND 120 /* chunk ids per round: round * 1000 + [0, PER_ROUND) */

static cf_store_config_t crash_cfg(void) {
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 24 * 8192;            /* small: the CPU tier evicts constantly */
  c.ssd_bytes = (uint64_t)ROUNDS * PER_ROUND * 8192 + (1 << 20); /* no SSD eviction: exact check */
  c.file_bytes = 2 << 20;
  c.journal_slack = 0; /* compact at every open with dead records: kills land in compactions too */
  return c;
}

/* The child: never returns. Reports ids on `wfd` only after they are durable. */
static void child_main(const char *dir, const cf_store_geom_t *g, int round, int wfd, uint64_t seed) {
  cf_store_config_t c = crash_cfg();
  cf_store_t *st;
  if (cf_store_open(dir, g, &c, &st) != 0) {
    fprintf(stderr, "child: open: %s\n", cf_errmsg());
    _exit(3);
  }
  uint64_t pending[PER_ROUND];
  int np = 0;
  uint64_t s = seed;
  for (int i = 0; i < PER_ROUND; i++) {
    uint64_t id = (uint64_t)round * 1000 + (uint64_t)i;
    s = st_mix(s);
    int durable = s % 3 == 0;
    int rc = st_save(st, id, (s >> 8) % 5 == 0 ? 1 + (uint32_t)((s >> 16) % 16) : 16,
                     durable ? CF_STORE_SAVE_DURABLE : 0);
    if (rc == 0 && durable) {
      if (write(wfd, &id, sizeof id) != sizeof id) _exit(4);
    } else if (rc == 0) {
      pending[np++] = id;
    }
    if ((s >> 24) % 25 == 0) {
      if (cf_store_flush(st) == 0) {
        /* flush made every earlier save durable */
        if (write(wfd, pending, sizeof(uint64_t) * (size_t)np) != (ssize_t)(sizeof(uint64_t) * (size_t)np)) _exit(4);
      }
      /* a failed flush promises nothing for the saves before it (some may have been dropped
       * unwritten, reported once): they are never reported durable */
      np = 0;
    }
    if ((s >> 32) % 8 == 0 && cf_store_evict_cpu(st, 4 * 8192) == 0) {
      /* drop the unreported chunks again: DEL records, so compactions run (and get killed) */
      for (int j = 0; j < np; j++) {
        cf_store_key_t k = st_key(g, pending[j]);
        cf_store_remove(st, &k);
      }
      np = 0;
      cf_store_stats_t cs;
      cf_store_get_stats(st, &cs);
      uint64_t marker = (1ull << 63) | cs.journal_compactions; /* not an id: a statistic */
      if (write(wfd, &marker, sizeof marker) != sizeof marker) _exit(4);
    }
  }
  uint64_t fin = 1ull << 62; /* marker: the loop ended before the kill */
  if (write(wfd, &fin, sizeof fin) != sizeof fin) _exit(4);
  /* idle until killed, still spilling in the background */
  for (;;) pause();
}

/* Read every layer of chunk id and check the bytes. The child picked n_tokens at random, so the
 * parent accepts the chunk when exactly one token count reproduces all of its cells. */
static int check_chunk(cf_store_t *st, uint64_t id, int *eq) {
  const cf_store_geom_t *g = cf_store_geom(st);
  cf_store_key_t k = st_key(g, id);
  /* learn n_tokens by reading layer 0 into a full-size buffer */
  size_t cb = cf_store_cell_bytes(g);
  uint8_t *got = aligned_alloc(4096, cb * g->n_layers), *want = malloc(cb);
  int rc = cf_store_read(st, &k, 0, g->n_layers, got, cb * g->n_layers, NULL);
  *eq = 0;
  if (rc == 0) {
    /* try every n_tokens: exactly one must match all layers */
    for (uint32_t nt = 1; nt <= g->chunk_tokens && !*eq; nt++) {
      size_t cbn = cf_store_cell_bytes_n(g, nt);
      int all = 1;
      for (uint32_t l = 0; l < g->n_layers && all; l++) {
        st_fill_cell(g, id, l, nt, want);
        if (memcmp(got + l * cbn, want, cbn) != 0) all = 0;
      }
      *eq = all;
    }
  }
  free(got);
  free(want);
  return rc;
}

CF_TEST(store_crash_kill9_durable_contract) {
  cf_store_geom_t g = st_geom(16, 2, 64); /* cells of 8 KiB */
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/crash", cf_test_tmpdir());
  static uint8_t durable[ROUNDS * 1000];
  memset(durable, 0, sizeof durable);
  long n_durable = 0, served = 0, torn = 0, compacted = 0, child_compactions = 0, finished = 0;
  uint64_t seed = cf_test_rand();
  for (int round = 0; round < ROUNDS; round++) {
    int pfd[2];
    long last_marker = 0;
    if (pipe(pfd) != 0) { CF_CHECK(0); return; }
    pid_t pid = fork();
    if (pid == 0) {
      close(pfd[0]);
      child_main(dir, &g, round, pfd[1], seed + (uint64_t)round);
    }
    close(pfd[1]);
    /* kill at a random moment: during open, saves, fsyncs, spills or idle */
    struct timespec ts = {0, (long)(cf_test_rand() % 80000) * 1000};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    CF_CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                 "round %d: child ended on its own (status %d)", round, status);
    uint64_t id;
    while (read(pfd[0], &id, sizeof id) == sizeof id) {
      if (id == (1ull << 62)) { finished++; continue; }
      if (id >> 63) { child_compactions += (long)(id & ~(1ull << 63)) > last_marker ? 1 : 0; last_marker = (long)(id & ~(1ull << 63)); continue; }
      if (id < sizeof durable && !durable[id]) { durable[id] = 1; n_durable++; }
    }
    close(pfd[0]);

    cf_store_config_t c = crash_cfg();
    c.spill = 0;
    cf_store_t *st;
    CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
    if (!st) return;
    cf_store_stats_t s;
    cf_store_get_stats(st, &s);
    torn += (long)s.journal_torn;
    compacted += (long)s.journal_compactions;
    CF_CHECK_EQ(s.journal_damaged, 0);
    /* every durable chunk of every round so far is there and right */
    for (int r = 0; r <= round; r++)
      for (int i = 0; i < PER_ROUND; i++) {
        uint64_t k = (uint64_t)r * 1000 + (uint64_t)i;
        if (!durable[k]) continue;
        if (r < round && (k % 7)) continue; /* older rounds: a sample keeps the test short */
        int eq;
        int rc = check_chunk(st, k, &eq);
        CF_CHECK_MSG(rc == 0 && eq, "round %d: durable chunk %llu: %s, bytes %s", round,
                     (unsigned long long)k, rc ? cf_err_name(rc) : "ok", eq ? "equal" : "DIFFER");
      }
    /* anything else this round's child left is either absent or verifies */
    for (int i = 0; i < PER_ROUND; i++) {
      uint64_t k = (uint64_t)round * 1000 + (uint64_t)i;
      int eq;
      int rc = check_chunk(st, k, &eq);
      if (rc == CF_ENOTFOUND) continue;
      served++;
      CF_CHECK_MSG(rc == 0 && eq, "round %d: chunk %llu served: %s, bytes %s", round,
                   (unsigned long long)k, rc ? cf_err_name(rc) : "ok", eq ? "equal" : "DIFFER");
    }
    cf_store_get_stats(st, &s);
    CF_CHECK_EQ(s.corrupt_cells, 0);
    cf_store_close(st);
    if (round % 15 == 14 || round == ROUNDS - 1) {
      cf_store_verify_t v;
      CF_CHECK_OK(cf_store_verify_dir(dir, &v));
      CF_CHECK_EQ(v.chunks_damaged, 0);
      CF_CHECK_EQ(v.journal_damaged, 0);
      CF_CHECK_GT(v.chunks_ok, 0);
    }
  }
  printf("  crash: %d rounds, %ld chunks reported durable, %ld served after kills, %ld torn "
         "records, journal compactions: %ld at reopen, seen in %ld child rounds; %ld children "
         "killed after their loop\n", ROUNDS, n_durable, served, torn, compacted,
         child_compactions, finished);
  /* compactions under kill are the subject of store_crash_kill9_during_compaction */
  CF_CHECK_GT(n_durable, 30); /* the kills did not all land before the first durable save */
}

/* Kills during journal compaction: a child keeps 30 durable chunks and churns others (save,
 * flush, remove) so the journal is rewritten over and over; every kill must leave the 30 intact,
 * no churned chunk served wrong, and a clean verify. */
CF_TEST(store_crash_kill9_during_compaction) {
  cf_store_geom_t g = st_geom(16, 2, 64);
  char dir[1100];
  snprintf(dir, sizeof dir, "%s/crash_compact", cf_test_tmpdir());
  long compactions = 0;
  const int KEEP = 30, ROUNDS_C = 25;
  for (int round = 0; round < ROUNDS_C; round++) {
    int pfd[2];
    if (pipe(pfd) != 0) { CF_CHECK(0); return; }
    pid_t pid = fork();
    if (pid == 0) {
      close(pfd[0]);
      cf_store_config_t c = crash_cfg();
      cf_store_t *st;
      if (cf_store_open(dir, &g, &c, &st) != 0) _exit(3);
      for (int i = 0; i < KEEP; i++) {
        int rc = st_save(st, (uint64_t)i, 16, CF_STORE_SAVE_DURABLE);
        if (rc != 0 && rc != CF_EEXIST) _exit(5);
      }
      uint64_t ready = 1ull << 62;
      if (write(pfd[1], &ready, sizeof ready) != sizeof ready) _exit(4);
      for (uint64_t n = 0;; n++) {
        uint64_t base = 100000 + (uint64_t)round * 100000 + (n % 50) * 20;
        for (uint64_t j = 0; j < 20; j++) st_save(st, base + j, 16, 0);
        cf_store_flush(st);
        for (uint64_t j = 0; j < 20; j++) { cf_store_key_t k = st_key(&g, base + j); cf_store_remove(st, &k); }
        cf_store_stats_t s;
        cf_store_get_stats(st, &s);
        uint64_t m = (1ull << 63) | s.journal_compactions;
        if (write(pfd[1], &m, sizeof m) != sizeof m) _exit(4);
      }
    }
    close(pfd[1]);
    /* wait until the durable set is saved, then kill at a random moment of the churn */
    uint64_t v;
    int ready = 0;
    while (!ready && read(pfd[0], &v, sizeof v) == sizeof v) ready = v == (1ull << 62);
    struct timespec ts = {0, 5000000 + (long)(cf_test_rand() % 50000) * 1000};
    nanosleep(&ts, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    long last = 0;
    while (read(pfd[0], &v, sizeof v) == sizeof v)
      if (v >> 63) last = (long)(v & ~(1ull << 63));
    close(pfd[0]);
    compactions += last;
    CF_CHECK_MSG(ready, "round %d: child never got its durable chunks saved", round);
    cf_store_config_t c = crash_cfg();
    c.spill = 0;
    cf_store_t *st;
    CF_CHECK_OK(cf_store_open(dir, &g, &c, &st));
    if (!st) return;
    for (int i = 0; i < KEEP; i++) {
      int eq;
      int rc = check_chunk(st, (uint64_t)i, &eq);
      CF_CHECK_MSG(rc == 0 && eq, "round %d: durable chunk %d: %s", round, i, cf_err_name(rc));
    }
    for (uint64_t j = 0; j < 1000; j++) {
      int eq;
      int rc = check_chunk(st, 100000 + (uint64_t)round * 100000 + j, &eq);
      CF_CHECK(rc == CF_ENOTFOUND || (rc == 0 && eq));
    }
    cf_store_close(st);
  }
  cf_store_verify_t vr;
  CF_CHECK_OK(cf_store_verify_dir(dir, &vr));
  CF_CHECK_EQ(vr.chunks_damaged, 0);
  CF_CHECK_EQ(vr.journal_damaged, 0);
  printf("  compaction crash: %d rounds, %ld compactions before the kills\n", ROUNDS_C, compactions);
  CF_CHECK_GT(compactions, 0);
}
