/* SSD tier I/O: the io_uring wrapper and the preallocated data files. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/cf_store_int.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void *cf__aligned_alloc(size_t bytes) {
  void *p = NULL;
  if (posix_memalign(&p, CF__ALIGN, bytes ? bytes : CF__ALIGN)) return NULL;
  return p;
}

int cf__ring_init(cf__ring_t *r, unsigned depth) {
  memset(r, 0, sizeof *r);
  r->depth = depth ? depth : 1;
  int rc = io_uring_queue_init(r->depth, &r->ring, 0);
  if (rc < 0) {
    /* seccomp'd containers refuse io_uring: pread/pwrite keep the store working */
    CF_WARN("io_uring_queue_init(%u): %s; falling back to pread/pwrite", r->depth, strerror(-rc));
    r->ok = 0;
    return 0;
  }
  r->ok = 1;
  return 0;
}

void cf__ring_exit(cf__ring_t *r) {
  if (r->ok) io_uring_queue_exit(&r->ring);
  r->ok = 0;
}

static int cf__io_fail(cf_store_t *st, const cf__io_t *op) {
  int e = op->res < 0 ? -op->res : 0;
  if (e == ENOSPC) {
    __atomic_add_fetch(&st->n_enospc, 1, __ATOMIC_RELAXED);
    return cf_seterr(CF_ENOSPC, "store %s: %s %zu bytes at offset %llu: %s", st->dir,
                     op->write ? "write" : "read", op->len, (unsigned long long)op->off,
                     strerror(e));
  }
  __atomic_add_fetch(&st->n_io_errors, 1, __ATOMIC_RELAXED);
  if (e)
    return cf_seterr(CF_EIO, "store %s: %s %zu bytes at offset %llu: %s", st->dir,
                     op->write ? "write" : "read", op->len, (unsigned long long)op->off, strerror(e));
  return cf_seterr(CF_EIO, "store %s: short %s at offset %llu: %d of %zu bytes (file truncated?)",
                   st->dir, op->write ? "write" : "read", (unsigned long long)op->off, op->res,
                   op->len);
}

int cf__ring_run(cf_store_t *st, cf__ring_t *r, cf__io_t *ops, unsigned n) {
  int first = 0;
  if (!r || !r->ok) {
    for (unsigned i = 0; i < n; i++) {
      ssize_t k = ops[i].write ? pwrite(ops[i].fd, ops[i].buf, ops[i].len, (off_t)ops[i].off)
                               : pread(ops[i].fd, ops[i].buf, ops[i].len, (off_t)ops[i].off);
      ops[i].res = k < 0 ? -errno : (int)k;
      if ((size_t)ops[i].res != ops[i].len && !first) first = cf__io_fail(st, &ops[i]);
    }
    return first;
  }
  unsigned done = 0, sub = 0;
  while (done < n) {
    while (sub < n && sub - done < r->depth) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
      if (!sqe) break;
      if (ops[sub].write)
        io_uring_prep_write(sqe, ops[sub].fd, ops[sub].buf, (unsigned)ops[sub].len, ops[sub].off);
      else
        io_uring_prep_read(sqe, ops[sub].fd, ops[sub].buf, (unsigned)ops[sub].len, ops[sub].off);
      io_uring_sqe_set_data(sqe, &ops[sub]);
      sub++;
    }
    int rc = io_uring_submit(&r->ring);
    if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR)
      return cf_seterr(CF_EIO, "store %s: io_uring_submit: %s", st->dir, strerror(-rc));
    struct io_uring_cqe *cqe;
    rc = io_uring_wait_cqe(&r->ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return cf_seterr(CF_EIO, "store %s: io_uring_wait_cqe: %s", st->dir, strerror(-rc));
    do {
      cf__io_t *op = io_uring_cqe_get_data(cqe);
      op->res = cqe->res;
      io_uring_cqe_seen(&r->ring, cqe);
      done++;
      if ((size_t)op->res != op->len && op->res >= 0 && op->res < (int)op->len && !op->write) {
        /* a short read can be a legal partial transfer: finish it synchronously */
        ssize_t k = pread(op->fd, (uint8_t *)op->buf + op->res, op->len - (size_t)op->res,
                          (off_t)(op->off + (uint64_t)op->res));
        if (k > 0) op->res += (int)k;
      }
      if ((size_t)op->res != op->len && !first) first = cf__io_fail(st, op);
    } while (io_uring_peek_cqe(&r->ring, &cqe) == 0);
  }
  return first;
}

/* ---------------------------------------------------------------- data files */

void cf__fsync_dir(const char *dir) {
  /* a new file's directory entry must reach the disk too, or a power loss forgets the file */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    if (fsync(dfd) != 0) CF_WARN("store %s: fsync of the directory: %s", dir, strerror(errno));
    close(dfd);
  }
}

int cf__file_put(const char *dir, const char *name, const void *buf, size_t n) {
  char tmp[1100], fin[1100];
  snprintf(tmp, sizeof tmp, "%s/%s.tmp", dir, name);
  snprintf(fin, sizeof fin, "%s/%s", dir, name);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES
                     : e == ENOSPC ? CF_ENOSPC : CF_EIO,
                     "store %s: cannot create %s: %s", dir, name, strerror(e));
  }
  ssize_t k = write(fd, buf, n);
  int e = errno;
  if (k != (ssize_t)n || fsync(fd) != 0) {
    if (k == (ssize_t)n) e = errno; /* the fsync's */
    close(fd);
    unlink(tmp);
    return cf_seterr(e == ENOSPC ? CF_ENOSPC : e == EACCES || e == EROFS || e == EPERM ? CF_EACCES : CF_EIO,
                     "store %s: writing %s: %s", dir, name,
                     k >= 0 && k != (ssize_t)n ? "short write" : strerror(e));
  }
  close(fd);
  if (rename(tmp, fin) != 0) return cf_seterr(CF_EIO, "store %s: rename %s: %s", dir, name, strerror(errno));
  cf__fsync_dir(dir);
  return 0;
}

static void cf__data_path(const cf_store_t *st, int i, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/data.%03d", st->dir, i);
}

static uint64_t cf__file_bytes(const cf_store_t *st, int i) {
  int32_t first = i * st->slots_per_file;
  int32_t n = st->n_ssd_slots - first;
  if (n > st->slots_per_file) n = st->slots_per_file;
  return (uint64_t)n * st->slot_bytes;
}

void cf__slot_pos(const cf_store_t *st, int32_t slot, int *fd, uint64_t *off) {
  *fd = st->dfd[slot / st->slots_per_file];
  *off = (uint64_t)(slot % st->slots_per_file) * st->slot_bytes;
}

/* Open one data file O_DIRECT, falling back to buffered I/O on filesystems that refuse it. */
static int cf__data_openfd(cf_store_t *st, int i, int create) {
  char p[1100];
  cf__data_path(st, i, p, sizeof p);
  int fl = st->cfg.readonly ? O_RDONLY : O_RDWR;
  if (create) fl |= O_CREAT;
  int fd = open(p, fl | (st->direct ? O_DIRECT : 0) | O_CLOEXEC, 0644);
  if (fd < 0 && errno == EINVAL && st->direct) {
    fd = open(p, fl | O_CLOEXEC, 0644);
    if (fd >= 0 && st->direct) {
      CF_WARN("%s: O_DIRECT refused by the filesystem: buffered I/O + fdatasync", p);
      st->direct = 0;
    }
  }
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) return CF_ENOENT;
    return cf_seterr(e == EACCES || e == EROFS || e == EPERM ? CF_EACCES : CF_EIO, "%s: %s", p,
                     strerror(e));
  }
  return fd;
}

/* Push slots of file i whose bytes exist (a truncated file only offers the slots it holds).
 * Caller holds mu. */
static void cf__data_offer_locked(cf_store_t *st, int i, uint64_t have) {
  int32_t first = i * st->slots_per_file;
  uint64_t want = cf__file_bytes(st, i);
  int32_t n = (int32_t)(want / st->slot_bytes);
  for (int32_t s = first + n - 1; s >= first; s--) {
    if (st->ssd_owner[s] >= 0) continue;
    if ((uint64_t)(s - first + 1) * st->slot_bytes > have) continue;
    st->ssd_free[st->n_ssd_free++] = s;
  }
  st->st.ssd_file_bytes += have < want ? have : want;
}

static void cf__data_offer(cf_store_t *st, int i, uint64_t have) {
  pthread_mutex_lock(&st->mu);
  cf__data_offer_locked(st, i, have);
  pthread_mutex_unlock(&st->mu);
}

int cf__data_open_existing(cf_store_t *st) {
  st->direct = !st->cfg.buffered_io;
  st->files_ready = 0;
  for (int i = 0; i < st->n_files; i++) {
    int fd = cf__data_openfd(st, i, 0);
    if (fd == CF_ENOENT) break;
    if (fd < 0) return fd;
    /* a file shorter than its slots is judged by the replay (cf__replay_check_files): only
     * chunks past its end are lost, and a shorter last file is normal before a grow */
    st->dfd[i] = fd;
    st->files_ready = i + 1;
  }
  return 0;
}

int cf__data_grow(cf_store_t *st) {
  pthread_mutex_lock(&st->grow_mu);
  int rc = 0;
  int i = st->files_ready;
  if (i >= st->n_files) goto out;
  int fd = cf__data_openfd(st, i, 1);
  if (fd < 0) { rc = fd == CF_ENOENT ? cf_seterr(CF_ENOENT, "store %s: data file", st->dir) : fd; goto out; }
  uint64_t want = cf__file_bytes(st, i);
  if (fallocate(fd, 0, 0, (off_t)want) != 0) {
    int e = errno;
    if (e == EOPNOTSUPP) {
      if (ftruncate(fd, (off_t)want) == 0) goto ok;
      e = errno;
    }
    /* leave no half-allocated file behind: a later open must not trust it */
    char p[1100];
    cf__data_path(st, i, p, sizeof p);
    close(fd);
    unlink(p);
    if (e == ENOSPC || e == EDQUOT) {
      __atomic_add_fetch(&st->n_enospc, 1, __ATOMIC_RELAXED);
      rc = cf_seterr(CF_ENOSPC, "store %s: preallocating data.%03d (%llu bytes): %s", st->dir, i,
                     (unsigned long long)want, strerror(e));
    } else {
      rc = cf_seterr(CF_EIO, "store %s: preallocating data.%03d (%llu bytes): %s", st->dir, i,
                     (unsigned long long)want, strerror(e));
    }
    goto out;
  }
ok:
  /* the new file's directory entry is durable before any slot of it is handed out: a durable
   * save that lands there (and syncs files [0, files_ready)) needs the file to survive a crash */
  cf__fsync_dir(st->dir);
  st->dfd[i] = fd;
  cf__test_delay_point("CF_STORE_TEST_GROW_DELAY_US"); /* widens the window a test checks */
  /* one step under mu: cf__ssd_alloc_prep and cf__cost_refuse read files_ready and the free list
   * under mu, so none sees "all files ready, no free slot" while the new file's slots are still
   * to come (a needless eviction, a refused write-back or a false ENOSPC). The release store
   * still pairs with cf__data_sync's lock-free acquire: who sees the count also sees dfd[i]. */
  pthread_mutex_lock(&st->mu);
  __atomic_store_n(&st->files_ready, i + 1, __ATOMIC_RELEASE);
  cf__data_offer_locked(st, i, want);
  pthread_mutex_unlock(&st->mu);
out:
  pthread_mutex_unlock(&st->grow_mu);
  return rc;
}

void cf__data_close(cf_store_t *st) {
  if (!st->dfd) return;
  for (int i = 0; i < st->n_files; i++)
    if (st->dfd[i] >= 0) close(st->dfd[i]);
}

int cf__data_sync(cf_store_t *st) {
  int n = __atomic_load_n(&st->files_ready, __ATOMIC_ACQUIRE);
  for (int i = 0; i < n; i++) {
    if (st->dfd[i] >= 0 && fdatasync(st->dfd[i]) != 0) {
      __atomic_add_fetch(&st->n_io_errors, 1, __ATOMIC_RELAXED);
      return cf_seterr(CF_EIO, "store %s: fdatasync data.%03d: %s", st->dir, i, strerror(errno));
    }
  }
  return 0;
}

/* Offer the free slots of every existing data file once the journal replay (and a shrink) has
 * claimed its own. Files past the cap are removed and the last one cut to it: no record of the
 * journal names a slot there any more (cf__ssd_shrink rewrote it first). */
void cf__data_offer_all(cf_store_t *st) {
  /* a smaller cap than last time: files and bytes past it go (their records were dropped) */
  /* highest first, so a kill midway leaves the files numbered without a gap (the next open
   * looks for data.000, data.001, ... and stops at the first one missing) */
  int top = st->n_files;
  for (;; top++) {
    char p[1100];
    struct stat sb;
    cf__data_path(st, top, p, sizeof p);
    if (stat(p, &sb) != 0) break;
  }
  for (int i = top - 1; i >= st->n_files; i--) {
    char p[1100];
    cf__data_path(st, i, p, sizeof p);
    if (unlink(p) != 0) break;
    CF_INFO("store %s: data.%03d removed: beyond the SSD cap", st->dir, i);
    cf__test_kill_point(st);
  }
  for (int i = 0; i < st->files_ready; i++) {
    struct stat sb;
    if (fstat(st->dfd[i], &sb) != 0) continue;
    uint64_t want = cf__file_bytes(st, i);
    if ((uint64_t)sb.st_size > want && ftruncate(st->dfd[i], (off_t)want) == 0) {
      sb.st_size = (off_t)want;
      cf__test_kill_point(st);
    }
    /* a truncated file (its lost chunks were dropped by the replay) is extended for reuse */
    if ((uint64_t)sb.st_size < want && fallocate(st->dfd[i], 0, 0, (off_t)want) == 0)
      sb.st_size = (off_t)want;
    cf__data_offer(st, i, (uint64_t)sb.st_size);
  }
}
