/* cf_notify — sd_notify(3) protocol over a unix datagram socket. */
#include "cf_notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/cf_err.h"

int cf_notify(const char *msg) {
  const char *path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) return 0;
  size_t plen = strlen(path);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sa.sun_path)
    return cf_seterr(CF_EINVAL, "NOTIFY_SOCKET '%s': expected an absolute path or @abstract name", path);
  memcpy(sa.sun_path, path, plen);
  if (path[0] == '@') sa.sun_path[0] = 0; /* abstract namespace */
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return cf_seterr(CF_EIO, "notify: socket: %s", strerror(errno));
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  ssize_t n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len);
  int e = errno;
  close(fd);
  if (n < 0) return cf_seterr(CF_EIO, "notify %s: %s", path, strerror(e));
  return 0;
}

int cf_notifyf(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return cf_notify(buf);
}

uint64_t cf_notify_watchdog_usec(void) {
  const char *us = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
  if (!us) return 0;
  if (pid && strtol(pid, NULL, 10) != (long)getpid()) return 0; /* meant for another process */
  char *end;
  unsigned long long v = strtoull(us, &end, 10);
  return (*end || v == 0) ? 0 : (uint64_t)v;
}
