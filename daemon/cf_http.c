/* cf_http — /metrics and /healthz over libmicrohttpd. */
#include "cf_http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__METRICS_CAP (256u << 10)

struct cf_http_s {
  struct MHD_Daemon *d;
  cf_http_metrics_fn metrics;
  cf_http_health_fn health;
  void *arg;
  char unix_path[108];
};

static enum MHD_Result cf__reply(struct MHD_Connection *conn, unsigned code, const char *type, char *body, size_t n,
                                 enum MHD_ResponseMemoryMode mode) {
  struct MHD_Response *r = MHD_create_response_from_buffer(n, body, mode);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", type);
  enum MHD_Result ret = MHD_queue_response(conn, code, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result cf__handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  cf_http_t *h = cls;
  if (strcmp(method, "GET") && strcmp(method, "HEAD"))
    return cf__reply(conn, 405, "text/plain", "method not allowed\n", 19, MHD_RESPMEM_PERSISTENT);
  if (!strcmp(url, "/metrics")) {
    char *buf = malloc(CF__METRICS_CAP);
    if (!buf) return cf__reply(conn, 500, "text/plain", "out of memory\n", 14, MHD_RESPMEM_PERSISTENT);
    size_t n = h->metrics(h->arg, buf, CF__METRICS_CAP);
    return cf__reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8", buf, n, MHD_RESPMEM_MUST_FREE);
  }
  if (!strcmp(url, "/healthz")) {
    if (h->health(h->arg)) return cf__reply(conn, 200, "text/plain", "ok\n", 3, MHD_RESPMEM_PERSISTENT);
    return cf__reply(conn, 503, "text/plain", "draining\n", 9, MHD_RESPMEM_PERSISTENT);
  }
  return cf__reply(conn, 404, "text/plain", "not found: try /metrics or /healthz\n", 36, MHD_RESPMEM_PERSISTENT);
}

static int cf__listen_unix(const char *path, int *fd_out) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return cf_seterr(CF_EINVAL, "unix:%s: path too long", path);
  strcpy(sa.sun_path, path);
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path); /* stale from a crash */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return cf_seterr(CF_EIO, "unix:%s: socket: %s", path, strerror(errno));
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 64)) {
    int e = errno;
    close(fd);
    return cf_seterr(CF_EIO, "unix:%s: cannot listen: %s", path, strerror(e));
  }
  chmod(path, 0660);
  *fd_out = fd;
  return 0;
}

int cf_http_start(cf_http_t **out, const char *addr, cf_http_metrics_fn metrics, cf_http_health_fn health, void *arg) {
  *out = NULL;
  cf_http_t *h = calloc(1, sizeof *h);
  if (!h) return cf_seterr(CF_ENOMEM, "http");
  h->metrics = metrics;
  h->health = health;
  h->arg = arg;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
  if (!strncmp(addr, "unix:", 5)) {
    int fd = -1, rc = cf__listen_unix(addr + 5, &fd);
    if (rc) { free(h); return rc; }
    snprintf(h->unix_path, sizeof h->unix_path, "%s", addr + 5);
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, cf__handle, h, MHD_OPTION_LISTEN_SOCKET, fd,
                            MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!h->d) close(fd);
  } else {
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) { free(h); return cf_seterr(CF_EINVAL, "%s: expected host:port", addr); }
    memcpy(host, addr, colon - addr);
    host[colon - addr] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
    int g = getaddrinfo(host, colon + 1, &hints, &ai);
    if (g) { free(h); return cf_seterr(CF_EINVAL, "%s: %s", addr, gai_strerror(g)); }
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, cf__handle, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                            MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    freeaddrinfo(ai);
  }
  if (!h->d) { free(h); return cf_seterr(CF_EIO, "%s: cannot start the HTTP listener (address in use?)", addr); }
  *out = h;
  return 0;
}

void cf_http_stop(cf_http_t *h) {
  if (!h) return;
  MHD_stop_daemon(h->d);
  if (h->unix_path[0]) unlink(h->unix_path);
  free(h);
}
