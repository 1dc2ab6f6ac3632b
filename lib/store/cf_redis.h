/* cf_redis — a small blocking Redis / Valkey client for the remote tier: one standalone server
 * (TCP or a unix socket) or a Redis Cluster, pipelined commands, cluster slot routing with
 * MOVED/ASK redirections, timeouts, AUTH, and reconnection with backoff.
 *
 * Built on hiredis's blocking API (hiredis 0.14 has no cluster client and no TLS): the store's
 * loader and writer threads call it; nothing here touches an event loop. A cf_redis_t belongs to
 * one thread at a time (the remote tier keeps a pool of them).
 *
 * Failure model: a node that refuses, resets or does not answer within the timeout fails the
 * commands routed to it with CF_EIO (never a hang past the timeout); its connection is dropped and
 * retried no sooner than the backoff (doubling from backoff_min_ms to backoff_max_ms), so a dead
 * node costs a restore one timeout, not one per command. In a cluster a connection error or a
 * MOVED makes the next exec re-read CLUSTER SLOTS.
 */
#ifndef CF_REDIS_H
#define CF_REDIS_H

#include <stddef.h>
#include <stdint.h>

#include "store/cf_redis_slots.h"

#define CF_REDIS_MAX_SEEDS 16

typedef enum { CF_REDIS_TCP = 0, CF_REDIS_UNIX = 1, CF_REDIS_CLUSTER = 2 } cf_redis_kind_t;

typedef struct {
  cf_redis_kind_t kind;
  cf_redis_addr_t seeds[CF_REDIS_MAX_SEEDS]; /* TCP: seeds[0]; cluster: the nodes to ask first */
  int n_seeds;
  char path[108];                            /* unix socket path */
  int db;                                    /* SELECT (standalone only; cluster has db 0) */
} cf_redis_url_t;

/* Parse a remote_url:
 *   redis://host[:port][/db]              standalone (port 6379 by default; [v6addr] allowed)
 *   redis+cluster://h1:p1,h2:p2[,...]     Redis Cluster, seed nodes (any live one suffices)
 *   unix:/path/redis.sock, unix:///path, redis+unix:///path[?db=N]
 * Credentials in the URL are refused (they would end up in logs and GetConfig): the password is
 * remote_password. Returns 0 or CF_EINVAL with a message naming what is wrong. */
int cf_redis_url_parse(const char *url, cf_redis_url_t *out);
/* "redis://h:p[/db]", "redis+cluster://h1:p1,...", "unix:///path[?db=N]" (for logs; parses back
 * to the same URL). */
void cf_redis_url_str(const cf_redis_url_t *u, char *buf, size_t n);

typedef struct {
  int timeout_ms;      /* connect and per-reply timeout (default 1000) */
  const char *password;/* AUTH when non-empty (copied) */
  int backoff_min_ms;  /* reconnect backoff after a failure (default 100) ... */
  int backoff_max_ms;  /* ... doubling up to this (default 5000) */
} cf_redis_opts_t;

void cf_redis_opts_default(cf_redis_opts_t *o);

typedef struct cf_redis_s cf_redis_t;

/* A client for `u`. It connects lazily (on the first exec), so opening succeeds while the server
 * is down. Returns 0 or CF_ENOMEM. Close with cf_redis_close (NULL is a no-op). */
int cf_redis_open(const cf_redis_url_t *u, const cf_redis_opts_t *o, cf_redis_t **out);
void cf_redis_close(cf_redis_t *r);

/* One command of a pipeline. argv[1] is the key it is routed by (argc >= 2); argv strings are
 * binary (argvlen). Out: status 0 (a reply: type, integer, str/len of a bulk, status or error
 * string, valid until cf_redis_cmds_release), CF_ENOTFOUND (nil reply), CF_EPROTO (an error reply
 * other than a redirection, e.g. OOM under maxmemory: str holds it), CF_EIO (connection refused,
 * lost or timed out, or too many redirections). */
enum { CF_REDIS_R_STRING = 1, CF_REDIS_R_ARRAY = 2, CF_REDIS_R_INTEGER = 3, CF_REDIS_R_NIL = 4,
       CF_REDIS_R_STATUS = 5, CF_REDIS_R_ERROR = 6 };
typedef struct {
  int argc;
  const char *argv[4];
  size_t argvlen[4];
  int status;
  int type;
  long long integer;
  const char *str;
  size_t len;
  void *reply_; /* private */
  int node_, ask_;
} cf_redis_cmd_t;

/* Run cmds[0..n) pipelined: per node, every command is written before any reply is read, and the
 * nodes of a cluster are written to before any is read from. Redirections are followed (MOVED
 * updates the slot map, ASK sends ASKING first), at most 5 rounds. Every command gets a status;
 * the return value is the number of commands whose status is CF_EIO (0: every node answered).
 * Release the replies with cf_redis_cmds_release before reusing cmds. */
int cf_redis_exec(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t n);
void cf_redis_cmds_release(cf_redis_cmd_t *cmds, size_t n);
/* Like cf_redis_exec, and fn(ud, i, &cmds[i]) as soon as command i has its final reply (status 0,
 * CF_ENOTFOUND or CF_EPROTO; replies arrive per node in order, nodes one after another). fn returns
 * 1 when done with the reply (it is freed at once), 0 to keep it until cf_redis_cmds_release.
 * Commands that end with CF_EIO get no call: look at their status after the return. */
typedef int (*cf_redis_reply_fn)(void *ud, size_t i, cf_redis_cmd_t *c);
int cf_redis_exec_each(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t n, cf_redis_reply_fn fn, void *ud);
/* Fill a command: cf_redis_cmd(&c, 2, "GET", 3, key, klen). */
void cf_redis_cmd(cf_redis_cmd_t *c, int argc, ...);

/* A reply, or an element of an array reply (SCAN's [cursor, [keys]]), valid as long as the
 * command's reply. */
typedef struct {
  int type;
  long long integer;
  const char *str;
  size_t len;
  size_t elements;
  const void *p_;
} cf_redis_val_t;
/* The reply of a command whose status is 0 or CF_EPROTO; returns 0 or CF_ENOTFOUND (no reply). */
int cf_redis_val(const cf_redis_cmd_t *c, cf_redis_val_t *out);
/* Element i of array `a`; returns 0 or CF_ERANGE. */
int cf_redis_val_elem(const cf_redis_val_t *a, size_t i, cf_redis_val_t *out);

/* Nodes to address one by one (verify's SCAN, tests' FLUSHALL): the standalone server, or every
 * master of the cluster's current slot map. Returns the count (<= max); ids for cf_redis_exec_node. */
int cf_redis_masters(cf_redis_t *r, int *ids, int max);
/* Like cf_redis_exec, every command sent to node `id` regardless of its key (no redirections
 * followed). */
int cf_redis_exec_node(cf_redis_t *r, int id, cf_redis_cmd_t *cmds, size_t n);

typedef struct {
  uint64_t connects, connect_errors, io_errors, moved, ask, slot_refreshes;
  int nodes_up, nodes_known; /* connections open now / nodes the client knows */
} cf_redis_stats_t;
void cf_redis_get_stats(const cf_redis_t *r, cf_redis_stats_t *out);

#endif
