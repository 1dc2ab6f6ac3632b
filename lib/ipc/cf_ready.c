/* cf_ready — see cf_ready.h. */
#include "ipc/cf_ready.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ipc/cf_shmguard.h"
#include "util/cf_err.h"

#define CF__READY_HDR 64u /* magic[8], n_slots, padding to one cache line */

_Static_assert(sizeof(cf_ready_slot_t) == 64, "one cache line per readiness slot");

static size_t cf__ready_bytes(int n) { return CF__READY_HDR + (size_t)n * sizeof(cf_ready_slot_t); }

static int cf__ready_map(cf_ready_t *r, int fd, int n, int create) {
  size_t bytes = cf__ready_bytes(n);
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return cf_seterr(cf_err_from_errno(-errno), "%s: mmap: %s", r->path, strerror(errno));
  r->map = p; r->map_bytes = bytes; r->n_slots = n;
  /* the creator (the daemon) writes the counters: an engine truncating the file must not kill it */
  if (create) cf_shmguard_add(p, bytes, r->path);
  r->slots = (cf_ready_slot_t *)((uint8_t *)p + CF__READY_HDR);
  if (create) {
    for (int i = 0; i < n; i++) atomic_store(&r->slots[i].status, CF_READY_IDLE);
    int32_t nn = n;
    memcpy((uint8_t *)p + 8, &nn, 4);
    /* the magic last: an opener that sees it sees initialised slots */
    atomic_thread_fence(memory_order_release);
    memcpy(p, CF_READY_MAGIC, 8);
  }
  return 0;
}

int cf_ready_create(cf_ready_t *r, const char *path, int n_slots) {
  memset(r, 0, sizeof *r);
  if (n_slots < 1 || n_slots > 65536)
    return cf_seterr(CF_EINVAL, "readiness file %s: n_slots %d not in [1, 65536]", path, n_slots);
  if (strlen(path) >= sizeof r->path)
    return cf_seterr(CF_EINVAL, "readiness path longer than %zu bytes: %s", sizeof r->path - 1, path);
  snprintf(r->path, sizeof r->path, "%s", path);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0660);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: create: %s", path, strerror(errno));
  int rc = 0;
  if (ftruncate(fd, (off_t)cf__ready_bytes(n_slots)))
    rc = cf_seterr(cf_err_from_errno(-errno), "%s: ftruncate: %s", path, strerror(errno));
  else rc = cf__ready_map(r, fd, n_slots, 1);
  close(fd);
  if (rc) unlink(path);
  else r->owner = 1;
  return rc;
}

int cf_ready_open(cf_ready_t *r, const char *path) {
  memset(r, 0, sizeof *r);
  if (strlen(path) >= sizeof r->path)
    return cf_seterr(CF_EINVAL, "readiness path longer than %zu bytes: %s", sizeof r->path - 1, path);
  snprintf(r->path, sizeof r->path, "%s", path);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return cf_seterr(cf_err_from_errno(-errno), "%s: open: %s", path, strerror(errno));
  char hdr[12];
  struct stat st;
  int rc = 0;
  int32_t n = 0;
  if (fstat(fd, &st) || pread(fd, hdr, sizeof hdr, 0) != (ssize_t)sizeof hdr ||
      memcmp(hdr, CF_READY_MAGIC, 8)) {
    rc = cf_seterr(CF_EFORMAT, "%s: not a CacheFlow readiness file (bad magic)", path);
    goto out;
  }
  memcpy(&n, hdr + 8, 4);
  if (n < 1 || n > 65536 || (size_t)st.st_size < cf__ready_bytes(n)) {
    rc = cf_seterr(CF_EFORMAT, "%s: %d slots but file is %lld bytes", path, n, (long long)st.st_size);
    goto out;
  }
  rc = cf__ready_map(r, fd, n, 0);
out:
  close(fd);
  return rc;
}

void cf_ready_close(cf_ready_t *r) {
  if (r->map) { cf_shmguard_remove(r->map); munmap(r->map, r->map_bytes); }
  if (r->owner && r->path[0]) unlink(r->path);
  memset(r, 0, sizeof *r);
}

/* Shared (not FUTEX_PRIVATE) ops: the word lives in a MAP_SHARED file mapping. */
static void cf__wake(cf_ready_slot_t *s) {
  atomic_fetch_add_explicit(&s->seq, 1, memory_order_release);
  syscall(SYS_futex, &s->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void cf_ready_begin(cf_ready_t *r, int slot, uint64_t req_id) {
  cf_ready_slot_t *s = &r->slots[slot];
  atomic_store(&s->layers, 0);
  atomic_store(&s->gate, 0);
  atomic_store(&s->req_id, req_id);
  atomic_store(&s->status, CF_READY_RUNNING);
  cf__wake(s);
}

void cf_ready_publish(cf_ready_t *r, int slot, uint64_t n) {
  cf_ready_slot_t *s = &r->slots[slot];
  uint64_t cur = atomic_load(&s->layers);
  while (cur < n && !atomic_compare_exchange_weak(&s->layers, &cur, n)) {}
  cf__wake(s);
}

void cf_ready_finish(cf_ready_t *r, int slot, int err) {
  cf_ready_slot_t *s = &r->slots[slot];
  atomic_store(&s->status, err ? (int64_t)err : CF_READY_DONE);
  cf__wake(s);
}

static int64_t cf__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cf_ready_wait(cf_ready_t *r, int slot, uint64_t min_layers, int64_t timeout_ns,
                  uint64_t *layers_out) {
  if (slot < 0 || slot >= r->n_slots)
    return cf_seterr(CF_ERANGE, "readiness slot %d out of range [0, %d)", slot, r->n_slots);
  cf_ready_slot_t *s = &r->slots[slot];
  int64_t deadline = timeout_ns < 0 ? -1 : cf__now_ns() + timeout_ns;
  for (;;) {
    /* read seq first: a change after this read makes FUTEX_WAIT return at once */
    uint32_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
    uint64_t n = atomic_load(&s->layers);
    int64_t st = atomic_load(&s->status);
    if (layers_out) *layers_out = n;
    if (n >= min_layers) return 0;
    if (st < 0) return cf_seterr((int)st, "readiness slot %d: restore failed after %llu layers: %s",
                                 slot, (unsigned long long)n, cf_strerror((int)st));
    if (st == CF_READY_DONE)
      return cf_seterr(CF_ERANGE, "readiness slot %d: restore done with %llu layers, %llu awaited",
                       slot, (unsigned long long)n, (unsigned long long)min_layers);
    struct timespec ts, *tsp = NULL;
    if (deadline >= 0) {
      int64_t left = deadline - cf__now_ns();
      if (left <= 0)
        return cf_seterr(CF_ETIMEDOUT, "readiness slot %d: %llu of %llu layers after the timeout",
                         slot, (unsigned long long)n, (unsigned long long)min_layers);
      ts.tv_sec = left / 1000000000; ts.tv_nsec = left % 1000000000;
      tsp = &ts;
    }
    syscall(SYS_futex, &s->seq, FUTEX_WAIT, seq, tsp, NULL, 0);
  }
}
