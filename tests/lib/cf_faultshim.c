/* cf_faultshim — an LD_PRELOAD library that makes the SSD tier's reads or writes fail, for the
 * fault tests (tests/integration/store_faults.sh) and the fault table in README.
 *
 * The store submits its SSD I/O through io_uring, which a preload library cannot intercept (the
 * kernel runs the submissions). So the shim makes io_uring_queue_init fail (-ENOSYS): the store
 * then runs the same requests through pread/pwrite — its fallback for kernels and seccomp
 * profiles without io_uring, whose results go through the same completion code (cf__ring_run,
 * cf__read_finish) — and the shim fails those real system calls on chosen files.
 *
 * Control, read at every call so a test switches faults on and off while the daemon runs:
 *   CF_FAULT_CTL=FILE  the shim is active only when this variable is set; while FILE exists and
 *                      holds "OP ERRNO MATCH" (OP: read, write or rw; ERRNO: EIO or ENOSPC;
 *                      MATCH: a substring of the file's path, e.g. "/store/" or
 *                      "/store/journal"), matching calls fail with that errno; without FILE
 *                      every call goes through. Reads are pread; writes are pwrite (the data
 *                      files) and write (the journal's appends).
 * Every failure injected is counted in FILE.hits (one line appended per call), so a test can
 * tell that the fault was really on the path it exercised. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

struct io_uring;

int io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags);
int io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags) {
  static int (*real)(unsigned, struct io_uring *, unsigned);
  if (!getenv("CF_FAULT_CTL")) {
    if (!real) real = (int (*)(unsigned, struct io_uring *, unsigned))dlsym(RTLD_NEXT, "io_uring_queue_init");
    return real ? real(entries, ring, flags) : -ENOSYS;
  }
  return -ENOSYS; /* the store falls back to pread/pwrite: the calls below */
}

/* The errno to inject for this call, 0 for none. */
static __thread int cf__in_shim; /* the shim's own fopen/fprintf write too: not faulted, no recursion */
static int cf__fault_ctl(int fd, int write);
static int cf__fault(int fd, int write) {
  if (cf__in_shim || !getenv("CF_FAULT_CTL")) return 0;
  cf__in_shim = 1;
  int e = cf__fault_ctl(fd, write);
  cf__in_shim = 0;
  return e;
}
static int cf__fault_ctl(int fd, int write) {
  const char *ctl = getenv("CF_FAULT_CTL");
  int saved = errno;
  char line[512] = "", op[16], err[16], match[256];
  FILE *f = fopen(ctl, "re");
  if (!f) { errno = saved; return 0; }
  char *ok = fgets(line, sizeof line, f);
  fclose(f);
  if (!ok || sscanf(line, "%15s %15s %255s", op, err, match) != 3) { errno = saved; return 0; }
  if (strcmp(op, "rw") && strcmp(op, write ? "write" : "read")) { errno = saved; return 0; }
  char link[64], path[512];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) { errno = saved; return 0; }
  path[n] = 0;
  if (!strstr(path, match)) { errno = saved; return 0; }
  char hits[600];
  snprintf(hits, sizeof hits, "%s.hits", ctl);
  FILE *h = fopen(hits, "ae");
  if (h) { fprintf(h, "%s %s %s\n", write ? "write" : "read", err, path); fclose(h); }
  return !strcmp(err, "ENOSPC") ? ENOSPC : EIO;
}

#define CF__WRAP(name, ret, write, params, args, proto)                          \
  ret name params {                                                             \
    static ret(*real) proto;                                                    \
    if (!real) real = (ret(*) proto)dlsym(RTLD_NEXT, #name);                    \
    int e = cf__fault(fd, write);                                               \
    if (e) { errno = e; return -1; }                                            \
    return real args;                                                           \
  }

CF__WRAP(pread, ssize_t, 0, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), (int, void *, size_t, off_t))
CF__WRAP(pread64, ssize_t, 0, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), (int, void *, size_t, off_t))
CF__WRAP(pwrite, ssize_t, 1, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off),
         (int, const void *, size_t, off_t))
CF__WRAP(pwrite64, ssize_t, 1, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off),
         (int, const void *, size_t, off_t))
/* write(2): the journal's appends (DIR/journal) — a full disk hits them as well as the data files */
CF__WRAP(write, ssize_t, 1, (int fd, const void *buf, size_t n), (fd, buf, n), (int, const void *, size_t))
