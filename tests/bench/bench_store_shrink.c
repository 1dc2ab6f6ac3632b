/* bench_store_shrink — what an open with a smaller SSD cap costs (issue 19), as ratios to
 * baselines measured in the same run:
 *   shrink  open a store of N chunks with a cap of N/2: the policy (LRU) drops the older half
 *           (journaled) and moves the newer half, which lies past the cap, below it, then the
 *           journal is rewritten and the files cut;
 *   raw     an O_DIRECT pread/pwrite copy of the same bytes (N/2 slots, slot-sized blocks) from
 *           the upper to the lower half of a scratch file on the same disk, then fdatasync;
 *   fill    saving the N chunks into the store in the first place (straight to SSD, one flush).
 * Each of R rounds fills a fresh store, runs the raw copy, then the shrink; the best of each is
 * kept (the machine is shared). Env: CF_BENCH_DIR (default /var/tmp), CF_BENCH_QUICK=1. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/cf_store.h"
#include "unit/store_testlib.h"
#include "util/cf_err.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_store_shrink: %s: %s: %s\n", what, cf_strerror(rc), cf_errmsg());
  exit(1);
}

int main(void) {
  const char *base = getenv("CF_BENCH_DIR") ? getenv("CF_BENCH_DIR") : "/var/tmp";
  int quick = getenv("CF_BENCH_QUICK") && atoi(getenv("CF_BENCH_QUICK"));
  const int N = quick ? 32 : 96, R = quick ? 2 : 3, L = 4;
  cf_store_geom_t g;
  memset(&g, 0, sizeof g);
  memset(g.fingerprint, 0x5b, 16);
  g.dtype_size = 2;
  g.chunk_tokens = 256;
  g.n_layers = (uint32_t)L;
  g.n_kv_heads = 8;
  g.head_dim = 128; /* 1 MiB cells, 4 MiB slots */
  const size_t cb = cf_store_cell_bytes(&g), slot = cb * (size_t)L;
  char root[1024], dir[1100], scratch[1100];
  snprintf(root, sizeof root, "%s/cf_bench_shrink.XXXXXX", base);
  if (!mkdtemp(root)) { perror(root); return 1; }
  snprintf(dir, sizeof dir, "%s/store", root);
  snprintf(scratch, sizeof scratch, "%s/scratch", root);
  uint8_t *src = aligned_alloc(4096, slot);
  for (size_t i = 0; i < slot; i += 8) { uint64_t v = st_mix(i); memcpy(src + i, &v, 8); }
  double best_fill = 1e9, best_raw = 1e9, best_shrink = 1e9;
  cf_store_stats_t last;
  memset(&last, 0, sizeof last);
  for (int r = 0; r < R; r++) {
    char cmd[2300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", dir, scratch);
    if (system(cmd) != 0) return 1;
    /* fill */
    cf_store_config_t c;
    cf_store_config_default(&c);
    c.cpu_bytes = 0;
    c.ssd_bytes = (uint64_t)N * slot;
    c.spill = 0;
    cf_store_t *st;
    int rc = cf_store_open(dir, &g, &c, &st);
    if (rc) die("open", rc);
    double t0 = now();
    for (int id = 0; id < N; id++) {
      const void *cells[4];
      src[0] = (uint8_t)id; /* distinct bytes per chunk */
      src[1] = (uint8_t)r;
      for (int l = 0; l < L; l++) cells[l] = src + (size_t)l * cb;
      cf_store_key_t k;
      uint64_t a = st_mix((uint64_t)id), b = st_mix((uint64_t)id ^ 0x77);
      memcpy(k.b, &a, 8);
      memcpy(k.b + 8, &b, 8);
      if ((rc = cf_store_save(st, &k, 256, cells, 0))) die("save", rc);
    }
    if ((rc = cf_store_flush(st))) die("flush", rc);
    double t_fill = now() - t0;
    cf_store_close(st);
    /* raw copy of the same bytes: N/2 slots, upper half to lower half of a scratch file */
    int fd = open(scratch, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
    if (fd < 0) { perror(scratch); return 1; }
    if (fallocate(fd, 0, 0, (off_t)((size_t)N * slot)) != 0) { perror("fallocate"); return 1; }
    for (int i = N / 2; i < N; i++)
      if (pwrite(fd, src, slot, (off_t)((size_t)i * slot)) != (ssize_t)slot) { perror("pwrite"); return 1; }
    fdatasync(fd);
    uint8_t *buf = aligned_alloc(4096, slot);
    t0 = now();
    for (int i = N / 2; i < N; i++) {
      if (pread(fd, buf, slot, (off_t)((size_t)i * slot)) != (ssize_t)slot) { perror("pread"); return 1; }
      if (pwrite(fd, buf, slot, (off_t)((size_t)(i - N / 2) * slot)) != (ssize_t)slot) { perror("pwrite"); return 1; }
    }
    fdatasync(fd);
    double t_raw = now() - t0;
    close(fd);
    free(buf);
    /* shrink: open with half the cap */
    c.ssd_bytes = (uint64_t)(N / 2) * slot;
    t0 = now();
    if ((rc = cf_store_open(dir, &g, &c, &st))) die("shrink open", rc);
    double t_shrink = now() - t0;
    cf_store_get_stats(st, &last);
    cf_store_close(st);
    cf_store_verify_t v;
    if ((rc = cf_store_verify_dir(dir, &v))) die("verify", rc);
    if (v.chunks_damaged || v.chunks_ok != (uint64_t)(N / 2)) {
      fprintf(stderr, "bench_store_shrink: after the shrink: %llu ok, %llu damaged\n",
              (unsigned long long)v.chunks_ok, (unsigned long long)v.chunks_damaged);
      return 1;
    }
    if (t_fill < best_fill) best_fill = t_fill;
    if (t_raw < best_raw) best_raw = t_raw;
    if (t_shrink < best_shrink) best_shrink = t_shrink;
  }
  double moved_mb = (double)(N / 2) * (double)slot / 1e6;
  printf("bench_store_shrink: %d chunks of %.1f MiB, cap halved (%d dropped by LRU, %d moved, "
         "%.0f MB), best of %d, dir %s\n", N, slot / 1048576.0, N / 2, N / 2, moved_mb, R, base);
  printf("  fill    %.3f s\n  raw     %.3f s  (%.0f MB/s O_DIRECT copy of the moved bytes)\n"
         "  shrink  %.3f s  (%.0f MB/s)\n", best_fill, best_raw, moved_mb / best_raw, best_shrink,
         moved_mb / best_shrink);
  printf("  shrink / raw copy %.2f, shrink / fill %.2f; after it: %llu chunks, %llu SSD evictions\n",
         best_shrink / best_raw, best_shrink / best_fill, (unsigned long long)last.ssd_chunks,
         (unsigned long long)last.ssd_evictions);
  char cmd[1100];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (system(cmd) != 0) return 1;
  free(src);
  return 0;
}
