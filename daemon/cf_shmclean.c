/* cf_shmclean — see cf_shmclean.h. */
#include "cf_shmclean.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ipc/cf_ready.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

/* Parse 1+ decimal digits at *s (at most 20), advancing it; returns the value or -1. */
static long long cf__digits(const char **s) {
  const char *p = *s;
  long long v = 0;
  int n = 0;
  while (*p >= '0' && *p <= '9') {
    if (++n > 20 || v > (long long)9e17) return -1;
    v = v * 10 + (*p++ - '0');
  }
  if (!n) return -1;
  *s = p;
  return v;
}

int cf_shmclean_parse(const char *name, long *pid) {
  static const char pre[] = "cacheflowd-", mid[] = "-ready-";
  const char *p = name;
  if (strncmp(p, pre, sizeof pre - 1)) return 0;
  p += sizeof pre - 1;
  long long v = cf__digits(&p);
  if (v <= 0 || v > 0x7fffffff || strncmp(p, mid, sizeof mid - 1)) return 0;
  p += sizeof mid - 1;
  if (cf__digits(&p) < 0 || *p) return 0;
  *pid = (long)v;
  return 1;
}

/* 1 when the file `name` in directory fd `dfd` is a regular file starting with the readiness
 * magic (opened without following links). */
static int cf__is_ready_file(int dfd, const char *name) {
  int fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return 0;
  struct stat st;
  char magic[8];
  int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && pread(fd, magic, sizeof magic, 0) == (ssize_t)sizeof magic &&
           memcmp(magic, CF_READY_MAGIC, sizeof magic) == 0;
  close(fd);
  return ok;
}

int cf_shmclean_stale(const char *dir, int *removed, int *kept) {
  int nrm = 0, nkeep = 0;
  if (removed) *removed = 0;
  if (kept) *kept = 0;
  DIR *d = opendir(dir);
  if (!d) {
    int e = errno;
    return cf_seterr(e == ENOENT ? CF_ENOENT : e == EACCES ? CF_EACCES : CF_EIO, "readiness cleanup: %s: %s", dir,
                     strerror(e));
  }
  int dfd = dirfd(d);
  struct dirent *de;
  while ((de = readdir(d))) {
    long pid;
    if (!cf_shmclean_parse(de->d_name, &pid)) continue;
    /* alive (or another user's, EPERM): not ours to judge; our own pid: a file we made */
    if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) { nkeep++; continue; }
    if (!cf__is_ready_file(dfd, de->d_name)) {
      CF_WARN("readiness cleanup: %s/%s: not a readiness file of ours (no %s magic): kept", dir, de->d_name,
              CF_READY_MAGIC);
      nkeep++;
      continue;
    }
    if (unlinkat(dfd, de->d_name, 0) == 0) {
      CF_INFO("readiness cleanup: removed %s/%s (daemon pid %ld is gone)", dir, de->d_name, pid);
      nrm++;
    } else {
      CF_WARN("readiness cleanup: %s/%s: %s: kept", dir, de->d_name, strerror(errno));
      nkeep++;
    }
  }
  closedir(d);
  if (removed) *removed = nrm;
  if (kept) *kept = nkeep;
  return 0;
}
