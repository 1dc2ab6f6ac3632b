/* The CPU half of the SSD-tier GPU load path (lib/store/cf_stage_ring): a real store on disk,
 * real io_uring reads, real checksum failures and evictions, and sinks that copy with memcpy —
 * synchronously, or deferred so the ring must not reuse a slot the sink still reads. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_test.h"
#include "store/cf_stage_ring.h"
#include "store_testlib.h"



enum { C = 16, L = 4, HD = 128 }; /* cell: 2*16*2*128*2 = 16 KiB, a multiple of 4096 */

typedef struct {
  const cf_store_geom_t *g;
  uint8_t *out;          /* [n cells][cell bytes]: where each delivered cell lands */
  size_t cell_bytes;
  size_t off;            /* index of the run's cell 0 among all cells (runs restart at 0) */
  size_t next;           /* the absolute index the next callback must carry (delivery order) */
  int *seen;             /* per cell: times delivered or failed */
  int n_failed, order_errors;
  /* deferred mode: deliver only remembers; the copy happens in slot_done, after `lag` polls */
  int deferred, lag;
  struct { int busy, polls; size_t cell; const void *buf; size_t bytes; } slot[CF_RING_MAX_SLOTS];
  int max_busy, busy_now;
  int fail_at;           /* deliver returns CF_EIO at this index (-1: never) */
  int fail_started;      /* ... after it started consuming the buffer (a GPU sink whose load
                          * failed part-way: copies out of the slot already enqueued) */
} sink_t;

static int s_deliver(void *ud, size_t i, const cf_ring_cell_t *c, int slot, const void *buf,
                     size_t bytes, uint32_t n_tokens) {
  sink_t *k = ud;
  i += k->off;
  if (i != k->next) k->order_errors++;
  k->next = i + 1;
  k->seen[i]++;
  if ((int)i == k->fail_at && !k->fail_started) return cf_seterr(CF_EIO, "test sink: refusing cell %zu", i);
  CF_CHECK_EQ(bytes, cf_store_cell_bytes_n(k->g, n_tokens));
  CF_CHECK_EQ(c->tag, i * 3 + 1);
  if (!k->deferred) { memcpy(k->out + i * k->cell_bytes, buf, bytes); return 0; }
  CF_CHECK_MSG(!k->slot[slot].busy, "slot %d handed out while the sink still reads it", slot);
  k->slot[slot].busy = 1;
  k->slot[slot].polls = 0;
  k->slot[slot].cell = i;
  k->slot[slot].buf = buf;
  k->slot[slot].bytes = bytes;
  if (++k->busy_now > k->max_busy) k->max_busy = k->busy_now;
  if ((int)i == k->fail_at) return cf_seterr(CF_EIO, "test sink: cell %zu failed part-way", i);
  return 0;
}

static void s_failed(void *ud, size_t i, const cf_ring_cell_t *c, int status) {
  sink_t *k = ud;
  i += k->off;
  if (i != k->next) k->order_errors++;
  k->next = i + 1;
  k->seen[i]++;
  k->n_failed++;
}

/* The bytes are copied only now: had the ring read the next cell into this slot early, they
 * would be the wrong cell's. */
static int s_slot_done(void *ud, int slot, int wait) {
  sink_t *k = ud;
  if (!k->slot[slot].busy) return 1;
  if (!wait && k->slot[slot].polls++ < k->lag) return 0;
  memcpy(k->out + k->slot[slot].cell * k->cell_bytes, k->slot[slot].buf, k->slot[slot].bytes);
  k->slot[slot].busy = 0;
  k->busy_now--;
  return 1;
}

typedef struct {
  cf_store_t *st;
  cf_store_geom_t g;
  char dir[1024];
} fx_t;

/* An SSD-only store with chunks 0..n-1 (chunk `partial`, if >= 0, has 5 tokens), flushed. */
static int fx_open(fx_t *f, const char *name, int n, int partial) {
  f->g = st_geom(C, L, HD);
  snprintf(f->dir, sizeof f->dir, "%s/%s", cf_test_tmpdir(), name);
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0;
  c.ssd_bytes = 64u << 20;
  c.file_bytes = 16u << 20;
  int rc = cf_store_open(f->dir, &f->g, &c, &f->st);
  if (rc) return rc;
  for (int id = 0; id < n; id++)
    if ((rc = st_save(f->st, (uint64_t)id, id == partial ? 5 : C, 0))) return rc;
  return cf_store_flush(f->st);
}

/* Cells chunk-major: chunk id, layer l at index id*L + l. */
static cf_ring_cell_t *fx_cells(fx_t *f, int n) {
  cf_ring_cell_t *cells = calloc((size_t)n * L, sizeof *cells);
  for (int id = 0; id < n; id++)
    for (int l = 0; l < L; l++) {
      size_t i = (size_t)id * L + l;
      cells[i].key = st_key(&f->g, (uint64_t)id);
      cells[i].layer = (uint32_t)l;
      cells[i].tok0 = id * C;
      cells[i].tag = i * 3 + 1;
    }
  return cells;
}

static void sink_init(sink_t *k, fx_t *f, size_t n_cells, int deferred, int lag) {
  memset(k, 0, sizeof *k);
  k->g = &f->g;
  k->cell_bytes = cf_store_cell_bytes(&f->g);
  k->out = calloc(n_cells, k->cell_bytes);
  k->seen = calloc(n_cells, sizeof(int));
  k->deferred = deferred;
  k->lag = lag;
  k->fail_at = -1;
}

static void sink_free(sink_t *k) { free(k->out); free(k->seen); }

/* Cell i (chunk i / L, layer i % L) arrived with the bytes that were saved. */
static int cell_ok(sink_t *k, size_t i, uint32_t n_tokens) {
  uint8_t want[2 * C * 2 * HD * 2];
  st_fill_cell(k->g, i / L, (uint32_t)(i % L), n_tokens, want);
  return memcmp(k->out + i * k->cell_bytes, want, cf_store_cell_bytes_n(k->g, n_tokens)) == 0;
}

static void run_all(int deferred, int n_slots, int lag, const char *name) {
  enum { N = 24 };
  fx_t f;
  int rc = fx_open(&f, name, N, 7);
  CF_CHECK_OK(rc);
  if (rc) { cf_store_close(f.st); return; }
  cf_ring_cell_t *cells = fx_cells(&f, N);
  sink_t k;
  sink_init(&k, &f, N * L, deferred, lag);
  cf_ring_sink_t sink = {s_deliver, s_failed, deferred ? s_slot_done : NULL, &k};
  cf_ring_t r;
  CF_CHECK_OK(cf_ring_init(&r, f.st, n_slots, NULL));
  int status[N * L];
  size_t n_ok;
  /* two runs back to back: the slot counter and busy slots carry over */
  CF_CHECK_OK(cf_ring_run(&r, cells, N * L / 2, &sink, status, &n_ok));
  CF_CHECK_EQ(n_ok, N * L / 2);
  k.off = N * L / 2;
  CF_CHECK_OK(cf_ring_run(&r, cells + N * L / 2, N * L / 2, &sink, status + N * L / 2, &n_ok));
  CF_CHECK_EQ(n_ok, N * L / 2);
  CF_CHECK_OK(cf_ring_drain(&r, &sink));
  CF_CHECK_EQ(k.order_errors, 0);
  CF_CHECK_EQ(k.busy_now, 0);
  CF_CHECK_LE(k.max_busy, n_slots);
  if (deferred) CF_CHECK_GE(k.max_busy, 2); /* the sink really overlapped the reads */
  for (int i = 0; i < N * L; i++) {
    CF_CHECK_EQ(status[i], 0);
    CF_CHECK_EQ(k.seen[i], 1);
    CF_CHECK_MSG(cell_ok(&k, (size_t)i, i / L == 7 ? 5 : C), "cell %d (chunk %d layer %d) has wrong bytes", i, i / L, i % L);
  }
  cf_store_stats_t s;
  cf_store_get_stats(f.st, &s);
  CF_CHECK_EQ(s.ssd_hits, N * L);
  CF_CHECK_EQ(s.corrupt_cells, 0);
  cf_ring_close(&r);
  sink_free(&k);
  free(cells);
  cf_store_close(f.st);
}

CF_TEST(ring_sync_sink_delivers_every_cell_in_order) { run_all(0, 2, 0, "sync2"); }
CF_TEST(ring_deferred_sink_never_gets_a_busy_slot) { run_all(1, 4, 3, "defer4"); }
CF_TEST(ring_deferred_sink_many_slots_slow_consumer) { run_all(1, 8, 20, "defer8"); }

static void flip_byte(const char *path, uint64_t off) {
  int fd = open(path, O_RDWR);
  uint8_t b = 0;
  if (fd < 0) return;
  if (pread(fd, &b, 1, (off_t)off) == 1) {
    b ^= 0x10;
    if (pwrite(fd, &b, 1, (off_t)off) != 1) { /* the test notices */ }
  }
  fsync(fd);
  close(fd);
}

CF_TEST(ring_checksum_failure_and_eviction_reported_per_cell) {
  enum { N = 10 };
  fx_t f;
  int rc = fx_open(&f, "corrupt", N, -1);
  CF_CHECK_OK(rc);
  if (rc) { cf_store_close(f.st); return; }
  cf_store_close(f.st);
  /* chunk i is in SSD slot i (slots fill upward); slot = L cells of 16 KiB. Damage chunk 3's
   * layer 1: its layers 2, 3 are then gone (the store drops the whole chunk) */
  size_t cellb = cf_store_cell_bytes(&f.g);
  char p[1200];
  snprintf(p, sizeof p, "%s/data.000", f.dir);
  flip_byte(p, 3 * L * cellb + 1 * cellb + 777);
  cf_store_config_t c;
  cf_store_config_default(&c);
  c.cpu_bytes = 0;
  c.ssd_bytes = 64u << 20;
  c.file_bytes = 16u << 20;
  CF_CHECK_OK(cf_store_open(f.dir, &f.g, &c, &f.st));
  if (!f.st) return;
  /* chunk 6 evicted (removed) before the run */
  cf_store_key_t k6 = st_key(&f.g, 6);
  CF_CHECK_OK(cf_store_remove(f.st, &k6));
  cf_ring_cell_t *cells = fx_cells(&f, N);
  sink_t k;
  sink_init(&k, &f, N * L, 1, 2);
  cf_ring_sink_t sink = {s_deliver, s_failed, s_slot_done, &k};
  cf_ring_t r;
  CF_CHECK_OK(cf_ring_init(&r, f.st, 3, NULL));
  int status[N * L];
  size_t n_ok;
  CF_CHECK_OK(cf_ring_run(&r, cells, N * L, &sink, status, &n_ok));
  CF_CHECK_OK(cf_ring_drain(&r, &sink));
  CF_CHECK_EQ(k.order_errors, 0);
  for (int i = 0; i < N * L; i++) {
    int id = i / L, l = i % L;
    CF_CHECK_EQ(k.seen[i], 1);
    int want = id == 6 ? CF_ENOTFOUND : id == 3 && l == 1 ? CF_ECORRUPT : id == 3 && l > 1 ? CF_ENOTFOUND : 0;
    CF_CHECK_MSG(status[i] == want, "cell %d (chunk %d layer %d): %s, expected %s", i, id, l,
                 cf_err_name(status[i]), cf_err_name(want));
    if (want == 0) CF_CHECK_MSG(cell_ok(&k, (size_t)i, C), "cell %d has wrong bytes", i);
  }
  CF_CHECK_EQ(n_ok, N * L - L - 3);
  CF_CHECK_EQ(k.n_failed, L + 3);
  cf_store_stats_t s;
  cf_store_get_stats(f.st, &s);
  CF_CHECK_EQ(s.corrupt_cells, 1);
  CF_CHECK_EQ(s.corrupt_chunks, 1);
  cf_ring_close(&r);
  sink_free(&k);
  free(cells);
  cf_store_close(f.st);
}

CF_TEST(ring_sink_error_stops_run_with_no_read_in_flight) {
  enum { N = 8 };
  fx_t f;
  int rc = fx_open(&f, "sinkerr", N, -1);
  CF_CHECK_OK(rc);
  if (rc) { cf_store_close(f.st); return; }
  cf_ring_cell_t *cells = fx_cells(&f, N);
  sink_t k;
  sink_init(&k, &f, N * L, 1, 1);
  k.fail_at = 9;
  cf_ring_sink_t sink = {s_deliver, s_failed, s_slot_done, &k};
  cf_ring_t r;
  CF_CHECK_OK(cf_ring_init(&r, f.st, 4, NULL));
  size_t n_ok = 99;
  CF_CHECK_EQ(cf_ring_run(&r, cells, N * L, &sink, NULL, &n_ok), CF_EIO);
  CF_CHECK_EQ(n_ok, 9);
  CF_CHECK_EQ(k.next, 10); /* nothing offered after the refused cell */
  CF_CHECK_EQ(cf_store_reader_inflight(r.rd), 0);
  CF_CHECK_OK(cf_ring_drain(&r, &sink));
  CF_CHECK_EQ(k.busy_now, 0);
  /* the ring is usable again: the rest of the cells go through */
  k.fail_at = -1;
  k.off = 10;
  CF_CHECK_OK(cf_ring_run(&r, cells + 10, N * L - 10, &sink, NULL, &n_ok));
  CF_CHECK_OK(cf_ring_drain(&r, &sink));
  CF_CHECK_EQ(n_ok, N * L - 10);
  for (int i = 10; i < N * L; i++) CF_CHECK_MSG(cell_ok(&k, (size_t)i, C), "cell %d has wrong bytes", i);
  cf_ring_close(&r);
  sink_free(&k);
  free(cells);
  cf_store_close(f.st);
}

/* A deliver that fails after it started reading its slot: the ring must not hand that slot
 * out again (next run) before the sink's slot_done released it. */
CF_TEST(ring_sink_failed_part_way_keeps_its_slot_until_released) {
  enum { N = 8 };
  fx_t f;
  int rc = fx_open(&f, "sinkpart", N, -1);
  CF_CHECK_OK(rc);
  if (rc) { cf_store_close(f.st); return; }
  cf_ring_cell_t *cells = fx_cells(&f, N);
  sink_t k;
  sink_init(&k, &f, N * L, 1, 1000); /* deferred, slow: slot_done(wait = 0) says "busy" */
  k.fail_at = 5;
  k.fail_started = 1;
  cf_ring_sink_t sink = {s_deliver, s_failed, s_slot_done, &k};
  cf_ring_t r;
  CF_CHECK_OK(cf_ring_init(&r, f.st, 4, NULL));
  size_t n_ok = 0;
  CF_CHECK_EQ(cf_ring_run(&r, cells, N * L, &sink, NULL, &n_ok), CF_EIO);
  CF_CHECK_EQ(n_ok, 5);
  /* the next run starts with the failed cell's slot + 1 and wraps onto it after 3 cells: the
   * sink's deliver checks it is never handed a slot it still reads */
  k.fail_at = -1;
  k.off = 6;
  k.next = 6;
  CF_CHECK_OK(cf_ring_run(&r, cells + 6, N * L - 6, &sink, NULL, &n_ok));
  CF_CHECK_OK(cf_ring_drain(&r, &sink));
  CF_CHECK_EQ(k.busy_now, 0);
  CF_CHECK_EQ(k.order_errors, 0);
  for (int i = 6; i < N * L; i++) CF_CHECK_MSG(cell_ok(&k, (size_t)i, C), "cell %d has wrong bytes", i);
  cf_ring_close(&r);
  sink_free(&k);
  free(cells);
  cf_store_close(f.st);
}

CF_TEST(ring_rejects_bad_arguments) {
  fx_t f;
  int rc = fx_open(&f, "args", 1, -1);
  CF_CHECK_OK(rc);
  if (rc) { cf_store_close(f.st); return; }
  cf_ring_t r;
  CF_CHECK_EQ(cf_ring_init(&r, f.st, 1, NULL), CF_EINVAL);
  CF_CHECK(strstr(cf_errmsg(), "n_slots 1") != NULL);
  CF_CHECK_EQ(cf_ring_init(&r, f.st, 65, NULL), CF_EINVAL);
  uint8_t *m = aligned_alloc(4096, 8 * cf_ring_slot_bytes(f.st) + 4096);
  CF_CHECK_EQ(cf_ring_init(&r, f.st, 2, m + 8), CF_EINVAL);
  CF_CHECK(strstr(cf_errmsg(), "aligned") != NULL);
  CF_CHECK_OK(cf_ring_init(&r, f.st, 2, m));
  CF_CHECK_EQ(cf_ring_slot_bytes(f.st), 16384);
  cf_ring_sink_t none = {0};
  CF_CHECK_EQ(cf_ring_run(&r, NULL, 0, &none, NULL, NULL), CF_EINVAL);
  cf_ring_close(&r);
  free(m);
  cf_store_close(f.st);
}
