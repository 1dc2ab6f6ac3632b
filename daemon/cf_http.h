/* cf_http — the daemon's small HTTP side (libmicrohttpd, its own polling thread):
 *   GET /metrics  Prometheus text exposition format 0.0.4, written by the caller's callback
 *   GET /healthz  "ok\n" (200) while serving, "draining\n" (503) while draining
 * Anything else: 404; methods other than GET/HEAD: 405. */
#ifndef CF_HTTP_H
#define CF_HTTP_H

#include <stddef.h>

typedef struct cf_http_s cf_http_t;

/* Writes the metrics page into buf (at most cap bytes), returns the length. Runs on the HTTP
 * thread: it must read only thread-safe counters. */
typedef size_t (*cf_http_metrics_fn)(void *arg, char *buf, size_t cap);
/* 1 while healthy (serving), 0 while draining. Runs on the HTTP thread. */
typedef int (*cf_http_health_fn)(void *arg);

/* Listen on `addr` ("host:port" or "unix:/path"). Returns 0 or CF_EIO/CF_EINVAL naming addr. */
int cf_http_start(cf_http_t **out, const char *addr, cf_http_metrics_fn metrics, cf_http_health_fn health, void *arg);
void cf_http_stop(cf_http_t *h);

#endif
