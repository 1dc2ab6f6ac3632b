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
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* The real calls, resolved once at load (cf__shim_init, at the end): a lazy dlsym on first use
 * could run inside a signal handler (below) and raced between threads. */
static ssize_t (*cf__real_pread)(int, void *, size_t, off_t), (*cf__real_pread64)(int, void *, size_t, off_t);
static ssize_t (*cf__real_pwrite)(int, const void *, size_t, off_t), (*cf__real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*cf__real_write)(int, const void *, size_t);
static void cf__shim_init(void);

/* Everything from here to the wrappers is async-signal-safe (open, read, fstat, readlink,
 * write, close; no stdio, no malloc): write(2) is also called from signal handlers — libuv's
 * handler writes the signal number to its pipe on SIGTERM / SIGHUP — and the fopen / fprintf
 * this used before ran malloc inside that handler (TSan: "signal-unsafe call inside of a signal"
 * in store_faults under `make tsan`; a deadlock if the signal lands inside malloc). */
static size_t cf__cat(char *dst, size_t at, size_t cap, const char *s) {
  while (*s && at + 1 < cap) dst[at++] = *s++;
  dst[at] = 0;
  return at;
}
/* the next blank-separated word of *p into w (at most cap - 1 bytes); 0 when there is none */
static int cf__word(const char **p, char *w, size_t cap) {
  const char *s = *p;
  while (*s == ' ' || *s == '\t') s++;
  size_t n = 0;
  while (*s && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r' && n + 1 < cap) w[n++] = *s++;
  w[n] = 0;
  *p = s;
  return n > 0;
}

/* The errno to inject for this call, 0 for none. */
static __thread int cf__in_shim; /* the shim's own writes (the hits file) are not faulted: no recursion */
static int cf__fault_ctl(int fd, int write);
static int cf__fault(int fd, int write) {
  if (cf__in_shim || !getenv("CF_FAULT_CTL")) return 0;
  cf__in_shim = 1;
  int saved = errno;
  int e = cf__fault_ctl(fd, write);
  errno = saved;
  cf__in_shim = 0;
  return e;
}
static int cf__fault_ctl(int fd, int write) {
  const char *ctl = getenv("CF_FAULT_CTL");
  struct stat sb;
  /* only regular files (the store's data files and journal): pipes and sockets never */
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
  char line[512], op[16], err[16], match[256];
  int cfd = open(ctl, O_RDONLY | O_CLOEXEC);
  if (cfd < 0) return 0;
  ssize_t k = read(cfd, line, sizeof line - 1);
  close(cfd);
  if (k <= 0) return 0;
  line[k] = 0;
  const char *p = line;
  if (!cf__word(&p, op, sizeof op) || !cf__word(&p, err, sizeof err) || !cf__word(&p, match, sizeof match)) return 0;
  if (strcmp(op, "rw") && strcmp(op, write ? "write" : "read")) return 0;
  char link[64] = "", path[512];
  char num[16], *q = num + sizeof num;
  *--q = 0;
  unsigned u = (unsigned)fd;
  do *--q = (char)('0' + u % 10); while (u /= 10);
  cf__cat(link, cf__cat(link, 0, sizeof link, "/proc/self/fd/"), sizeof link, q);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  if (!strstr(path, match)) return 0;
  char hits[600] = "", rec[600] = "";
  cf__cat(hits, cf__cat(hits, 0, sizeof hits, ctl), sizeof hits, ".hits");
  size_t r = cf__cat(rec, 0, sizeof rec, write ? "write " : "read ");
  r = cf__cat(rec, cf__cat(rec, r, sizeof rec, err), sizeof rec, " ");
  r = cf__cat(rec, cf__cat(rec, r, sizeof rec, path), sizeof rec, "\n");
  int h = open(hits, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (h >= 0) {
    if (cf__real_write) (void)!cf__real_write(h, rec, r);
    close(h);
  }
  return !strcmp(err, "ENOSPC") ? ENOSPC : EIO;
}

#define CF__WRAP(name, ret, write, params, args, proto)                          \
  ret name params {                                                             \
    if (!cf__real_##name) cf__shim_init(); /* called before the constructor ran */ \
    int e = cf__fault(fd, write);                                               \
    if (e) { errno = e; return -1; }                                            \
    return cf__real_##name args;                                                \
  }

CF__WRAP(pread, ssize_t, 0, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), (int, void *, size_t, off_t))
CF__WRAP(pread64, ssize_t, 0, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), (int, void *, size_t, off_t))
CF__WRAP(pwrite, ssize_t, 1, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off),
         (int, const void *, size_t, off_t))
CF__WRAP(pwrite64, ssize_t, 1, (int fd, const void *buf, size_t n, off_t off), (fd, buf, n, off),
         (int, const void *, size_t, off_t))
/* write(2): the journal's appends (DIR/journal) — a full disk hits them as well as the data files */
CF__WRAP(write, ssize_t, 1, (int fd, const void *buf, size_t n), (fd, buf, n), (int, const void *, size_t))

__attribute__((constructor)) static void cf__shim_init(void) {
  cf__real_pread = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread");
  cf__real_pread64 = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
  cf__real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
  cf__real_pwrite64 = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
  cf__real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
}
