/* cf_redis — blocking hiredis client with cluster routing (see the header). */
#include "store/cf_redis.h"

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/cf_err.h"
#include "util/cf_log.h"

#define CF__REDIR_ROUNDS 5

typedef struct {
  redisContext *c;
  int64_t next_try_ns; /* no reconnect before this (backoff) */
  int backoff_ms;
  uint64_t epoch;      /* the exec that opened this connection */
  int retried;         /* this exec already retried the node on a fresh connection */
} cf__rnode_t;

struct cf_redis_s {
  cf_redis_url_t url;
  cf_redis_opts_t o;
  char password[256];
  /* standalone: node 0; cluster: indices of map.nodes */
  cf_redis_slotmap_t map;
  cf__rnode_t nodes[CF_REDIS_MAX_NODES];
  int need_refresh;
  int64_t last_refresh_ns;
  uint64_t epoch; /* exec counter: a connection opened by an earlier exec may have gone stale */
  cf_redis_reply_fn on_reply; /* cf_redis_exec_each's callback (NULL otherwise) */
  void *on_reply_ud;
  cf_redis_stats_t st;
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---------------------------------------------------------------- URL */

static int parse_hostport(const char *s, size_t n, int default_port, cf_redis_addr_t *a,
                          const char *url) {
  char buf[CF_REDIS_HOST_MAX + 16];
  if (n == 0) return cf_seterr(CF_EINVAL, "remote_url '%s': empty host", url);
  if (n >= sizeof buf) return cf_seterr(CF_EINVAL, "remote_url '%s': host too long", url);
  memcpy(buf, s, n);
  buf[n] = 0;
  char *host = buf, *port = NULL;
  if (buf[0] == '[') { /* [v6]:port */
    char *rb = strchr(buf, ']');
    if (!rb) return cf_seterr(CF_EINVAL, "remote_url '%s': '[' without ']' in '%s'", url, buf);
    *rb = 0;
    host = buf + 1;
    if (rb[1] == ':') port = rb + 2;
    else if (rb[1]) return cf_seterr(CF_EINVAL, "remote_url '%s': junk after ']' in '%s'", url, s);
  } else {
    char *c = strchr(buf, ':');
    if (c) {
      if (strchr(c + 1, ':'))
        return cf_seterr(CF_EINVAL, "remote_url '%s': IPv6 address must be in brackets ([::1]:6379)", url);
      *c = 0;
      port = c + 1;
    }
  }
  if (!*host) return cf_seterr(CF_EINVAL, "remote_url '%s': empty host", url);
  for (const char *h = host; *h; h++) /* a name or an address: letters, digits, . - _ (and : % in [v6]) */
    if (!((*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || (*h >= '0' && *h <= '9') || *h == '.' ||
          *h == '-' || *h == '_' || ((*h == ':' || *h == '%') && buf[0] == '[')))
      return cf_seterr(CF_EINVAL, "remote_url '%s': host '%s' has a character ('%c') no host name or address has",
                       url, host, *h);
  long p = default_port;
  if (port) {
    char *end;
    p = strtol(port, &end, 10);
    if (end == port || *end || p <= 0 || p > 65535)
      return cf_seterr(CF_EINVAL, "remote_url '%s': port '%s' is not 1..65535", url, port);
  }
  if (strlen(host) >= CF_REDIS_HOST_MAX) return cf_seterr(CF_EINVAL, "remote_url '%s': host too long", url);
  snprintf(a->host, sizeof a->host, "%s", host);
  a->port = (int)p;
  return 0;
}

static int parse_db(const char *s, const char *url, int *db) {
  char *end;
  long v = strtol(s, &end, 10);
  if (end == s || *end || v < 0 || v > 15)
    return cf_seterr(CF_EINVAL, "remote_url '%s': database '%s' is not 0..15", url, s);
  *db = (int)v;
  return 0;
}

int cf_redis_url_parse(const char *url, cf_redis_url_t *u) {
  memset(u, 0, sizeof *u);
  if (!url || !*url) return cf_seterr(CF_EINVAL, "remote_url is empty");
  if (strchr(url, '@'))
    return cf_seterr(CF_EINVAL, "remote_url '%s': credentials in the URL are not accepted "
                     "(they would show in logs and GetConfig): set remote_password", url);
  const char *p;
  if (strncmp(url, "unix:", 5) == 0 || strncmp(url, "redis+unix:", 11) == 0) {
    p = url + (url[0] == 'u' ? 5 : 11);
    if (strncmp(p, "//", 2) == 0) p += 2;
    if (*p != '/') return cf_seterr(CF_EINVAL, "remote_url '%s': unix socket path must be absolute", url);
    const char *q = strchr(p, '?');
    size_t n = q ? (size_t)(q - p) : strlen(p);
    if (n >= sizeof u->path)
      return cf_seterr(CF_EINVAL, "remote_url '%s': unix socket path longer than %zu bytes", url,
                       sizeof u->path - 1);
    memcpy(u->path, p, n);
    u->path[n] = 0;
    if (q) {
      if (strncmp(q, "?db=", 4) != 0)
        return cf_seterr(CF_EINVAL, "remote_url '%s': only '?db=N' may follow the path", url);
      int rc = parse_db(q + 4, url, &u->db);
      if (rc) return rc;
    }
    u->kind = CF_REDIS_UNIX;
    return 0;
  }
  int cluster;
  if (strncmp(url, "redis://", 8) == 0) cluster = 0, p = url + 8;
  else if (strncmp(url, "redis+cluster://", 16) == 0) cluster = 1, p = url + 16;
  else if (strncmp(url, "rediss://", 9) == 0)
    return cf_seterr(CF_EINVAL, "remote_url '%s': TLS (rediss://) is not supported by this build's "
                     "hiredis 0.14; use redis:// on a trusted network or a TLS tunnel", url);
  else
    return cf_seterr(CF_EINVAL, "remote_url '%s': scheme must be redis://, redis+cluster:// or unix:",
                     url);
  const char *slash = strchr(p, '/');
  size_t hl = slash ? (size_t)(slash - p) : strlen(p);
  if (slash && slash[1]) {
    if (cluster) return cf_seterr(CF_EINVAL, "remote_url '%s': a Redis Cluster has no database number", url);
    int rc = parse_db(slash + 1, url, &u->db);
    if (rc) return rc;
  }
  if (!cluster) {
    if (memchr(p, ',', hl))
      return cf_seterr(CF_EINVAL, "remote_url '%s': several hosts need redis+cluster://", url);
    int rc = parse_hostport(p, hl, 6379, &u->seeds[0], url);
    if (rc) return rc;
    u->n_seeds = 1;
    u->kind = CF_REDIS_TCP;
    return 0;
  }
  const char *end = p + hl;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    size_t n = comma ? (size_t)(comma - p) : (size_t)(end - p);
    if (u->n_seeds == CF_REDIS_MAX_SEEDS)
      return cf_seterr(CF_EINVAL, "remote_url '%s': more than %d seed nodes", url, CF_REDIS_MAX_SEEDS);
    int rc = parse_hostport(p, n, 6379, &u->seeds[u->n_seeds], url);
    if (rc) return rc;
    u->n_seeds++;
    p += n + (comma ? 1 : 0);
    if (comma && p == end) return cf_seterr(CF_EINVAL, "remote_url '%s': empty host after ','", url);
  }
  if (!u->n_seeds) return cf_seterr(CF_EINVAL, "remote_url '%s': no seed node", url);
  u->kind = CF_REDIS_CLUSTER;
  return 0;
}

void cf_redis_url_str(const cf_redis_url_t *u, char *buf, size_t n) {
  if (u->kind == CF_REDIS_UNIX) { /* "unix://" + path: a path that itself starts with "//" survives */
    if (u->db) snprintf(buf, n, "unix://%s?db=%d", u->path, u->db);
    else snprintf(buf, n, "unix://%s", u->path);
    return;
  }
  size_t o = (size_t)snprintf(buf, n, "%s://", u->kind == CF_REDIS_CLUSTER ? "redis+cluster" : "redis");
  for (int i = 0; i < u->n_seeds && o < n; i++)
  {
    int br = strpbrk(u->seeds[i].host, ":%") != NULL; /* an IPv6 address (and zone) goes in [] */
    o += (size_t)snprintf(buf + o, n - o, "%s%s%s%s:%d", i ? "," : "", br ? "[" : "", u->seeds[i].host,
                          br ? "]" : "", u->seeds[i].port);
  }
  if (u->db && o < n) snprintf(buf + o, n - o, "/%d", u->db);
}

/* ---------------------------------------------------------------- connections */

void cf_redis_opts_default(cf_redis_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->timeout_ms = 1000;
  o->backoff_min_ms = 100;
  o->backoff_max_ms = 5000;
}

int cf_redis_open(const cf_redis_url_t *u, const cf_redis_opts_t *o, cf_redis_t **out) {
  cf_redis_t *r = calloc(1, sizeof *r);
  if (!r) return cf_seterr(CF_ENOMEM, "redis client");
  r->url = *u;
  if (o) r->o = *o;
  else cf_redis_opts_default(&r->o);
  if (r->o.timeout_ms <= 0) r->o.timeout_ms = 1000;
  if (r->o.backoff_min_ms <= 0) r->o.backoff_min_ms = 100;
  if (r->o.backoff_max_ms < r->o.backoff_min_ms) r->o.backoff_max_ms = r->o.backoff_min_ms;
  snprintf(r->password, sizeof r->password, "%s", (o && o->password) ? o->password : "");
  r->o.password = r->password;
  cf_redis_slotmap_init(&r->map);
  if (u->kind == CF_REDIS_CLUSTER) {
    for (int i = 0; i < u->n_seeds; i++) cf_redis_slotmap_node(&r->map, u->seeds[i].host, u->seeds[i].port);
    r->need_refresh = 1;
  } else {
    r->map.n_nodes = 1; /* node 0: the server */
    r->map.nodes[0] = u->kind == CF_REDIS_TCP ? u->seeds[0] : (cf_redis_addr_t){{0}, 0};
  }
  for (int i = 0; i < CF_REDIS_MAX_NODES; i++) r->nodes[i].backoff_ms = r->o.backoff_min_ms;
  *out = r;
  return 0;
}

static void node_drop(cf_redis_t *r, int id) {
  cf__rnode_t *nd = &r->nodes[id];
  if (nd->c) {
    redisFree(nd->c);
    nd->c = NULL;
  }
  nd->next_try_ns = now_ns() + (int64_t)nd->backoff_ms * 1000000;
  nd->backoff_ms = nd->backoff_ms * 2 > r->o.backoff_max_ms ? r->o.backoff_max_ms : nd->backoff_ms * 2;
  if (r->url.kind == CF_REDIS_CLUSTER) r->need_refresh = 1;
}

void cf_redis_close(cf_redis_t *r) {
  if (!r) return;
  for (int i = 0; i < CF_REDIS_MAX_NODES; i++)
    if (r->nodes[i].c) redisFree(r->nodes[i].c);
  free(r);
}

static const char *node_name(const cf_redis_t *r, int id, char *buf, size_t n) {
  if (r->url.kind == CF_REDIS_UNIX) snprintf(buf, n, "unix:%s", r->url.path);
  else snprintf(buf, n, "%s:%d", r->map.nodes[id].host, r->map.nodes[id].port);
  return buf;
}

/* A command on a fresh connection, checked for an OK-ish reply (AUTH, SELECT). */
static int setup_cmd(cf_redis_t *r, redisContext *c, const char *what, const char *fmt, const char *arg) {
  redisReply *rep = redisCommand(c, fmt, arg);
  if (!rep) return cf_seterr(CF_EIO, "%s: %s", what, c->errstr);
  int bad = rep->type == REDIS_REPLY_ERROR;
  if (bad) cf_seterr(CF_EACCES, "%s refused: %.*s", what, (int)rep->len, rep->str);
  freeReplyObject(rep);
  return bad ? CF_EACCES : 0;
}

/* Connected context for node id, or NULL (backoff running or the connect failed: message set). */
static redisContext *node_conn(cf_redis_t *r, int id) {
  cf__rnode_t *nd = &r->nodes[id];
  char name[CF_REDIS_HOST_MAX + 16];
  if (nd->c) return nd->c;
  if (now_ns() < nd->next_try_ns) {
    cf_seterr(CF_EIO, "redis %s down (retrying with backoff)", node_name(r, id, name, sizeof name));
    return NULL;
  }
  struct timeval tv = {r->o.timeout_ms / 1000, (r->o.timeout_ms % 1000) * 1000};
  redisContext *c = r->url.kind == CF_REDIS_UNIX
                        ? redisConnectUnixWithTimeout(r->url.path, tv)
                        : redisConnectWithTimeout(r->map.nodes[id].host, r->map.nodes[id].port, tv);
  int rc = 0;
  if (!c) rc = cf_seterr(CF_ENOMEM, "redis %s: connect", node_name(r, id, name, sizeof name));
  else if (c->err)
    rc = cf_seterr(CF_EIO, "redis %s: connect: %s", node_name(r, id, name, sizeof name), c->errstr);
  else if (redisSetTimeout(c, tv) != REDIS_OK)
    rc = cf_seterr(CF_EIO, "redis %s: set timeout: %s", node_name(r, id, name, sizeof name), c->errstr);
  if (!rc && c->connection_type == REDIS_CONN_TCP) redisEnableKeepAlive(c);
  if (!rc && r->password[0]) rc = setup_cmd(r, c, "AUTH", "AUTH %s", r->password);
  if (!rc && r->url.db) {
    char db[8];
    snprintf(db, sizeof db, "%d", r->url.db);
    rc = setup_cmd(r, c, "SELECT", "SELECT %s", db);
  }
  if (rc) {
    if (c) redisFree(c);
    r->st.connect_errors++;
    nd->c = NULL;
    node_drop(r, id);
    return NULL;
  }
  nd->c = c;
  nd->epoch = r->epoch;
  nd->backoff_ms = r->o.backoff_min_ms;
  r->st.connects++;
  return c;
}

/* Re-read CLUSTER SLOTS from the first node that answers (known masters first, then the seeds). */
static int refresh_slots(cf_redis_t *r) {
  int64_t t = now_ns();
  if (t - r->last_refresh_ns < (int64_t)r->o.backoff_min_ms * 1000000 / 4) return 0;
  r->last_refresh_ns = t;
  r->st.slot_refreshes++;
  for (int id = 0; id < r->map.n_nodes; id++) {
    redisContext *c = node_conn(r, id);
    if (!c) continue;
    redisReply *rep = redisCommand(c, "CLUSTER SLOTS");
    if (!rep) {
      r->st.io_errors++;
      node_drop(r, id);
      continue;
    }
    if (rep->type != REDIS_REPLY_ARRAY) {
      CF_WARN("redis %s:%d: CLUSTER SLOTS: %.*s", r->map.nodes[id].host, r->map.nodes[id].port,
              rep->type == REDIS_REPLY_ERROR ? (int)rep->len : 0, rep->str ? rep->str : "");
      freeReplyObject(rep);
      continue;
    }
    char host[CF_REDIS_HOST_MAX];
    snprintf(host, sizeof host, "%s", r->map.nodes[id].host);
    cf_redis_slotmap_clear_slots(&r->map);
    for (size_t i = 0; i < rep->elements; i++) {
      redisReply *e = rep->element[i];
      if (e->type != REDIS_REPLY_ARRAY || e->elements < 3) continue;
      redisReply *m = e->element[2];
      if (e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
          m->type != REDIS_REPLY_ARRAY || m->elements < 2 || m->element[0]->type != REDIS_REPLY_STRING ||
          m->element[1]->type != REDIS_REPLY_INTEGER)
        continue;
      /* an empty host: the node does not know its address; it is the one we asked */
      const char *mh = m->element[0]->len ? m->element[0]->str : host;
      cf_redis_slotmap_assign(&r->map, (unsigned)e->element[0]->integer,
                              (unsigned)e->element[1]->integer, mh, (int)m->element[1]->integer);
    }
    freeReplyObject(rep);
    r->need_refresh = 0;
    return 0;
  }
  return cf_seterr(CF_EIO, "redis cluster: no node answered CLUSTER SLOTS");
}

/* ---------------------------------------------------------------- pipelines */

void cf_redis_cmd(cf_redis_cmd_t *c, int argc, ...) {
  memset(c, 0, sizeof *c);
  va_list ap;
  va_start(ap, argc);
  c->argc = argc > 4 ? 4 : argc;
  for (int i = 0; i < c->argc; i++) {
    c->argv[i] = va_arg(ap, const char *);
    c->argvlen[i] = va_arg(ap, size_t);
  }
  va_end(ap);
}

void cf_redis_cmds_release(cf_redis_cmd_t *cmds, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (cmds[i].reply_) freeReplyObject(cmds[i].reply_);
    cmds[i].reply_ = NULL;
    cmds[i].str = NULL;
    cmds[i].len = 0;
  }
}

static void set_reply(cf_redis_cmd_t *c, redisReply *rep) {
  c->reply_ = rep;
  c->type = rep->type;
  c->integer = rep->integer;
  c->str = rep->str;
  c->len = rep->len;
  c->status = rep->type == REDIS_REPLY_NIL ? CF_ENOTFOUND : rep->type == REDIS_REPLY_ERROR ? CF_EPROTO : 0;
}

/* A connection that an earlier exec opened failed: the server may have restarted (or closed an
 * idle client) since. Drop it without backoff and let the commands go again on a fresh one, once
 * per exec (the commands the remote tier sends are idempotent: GET, SET, EXISTS, DEL, SCAN).
 * Returns 1 when the caller should requeue. */
static int stale_retry(cf_redis_t *r, int id) {
  cf__rnode_t *nd = &r->nodes[id];
  if (!nd->c || nd->epoch == r->epoch || nd->retried) return 0;
  nd->retried = 1;
  redisFree(nd->c);
  nd->c = NULL;
  nd->next_try_ns = 0;
  return 1;
}

/* Write every queued command of node id (order[] holds command indices, ask[] whether ASKING goes
 * first), flushing the output buffer; returns 0 or CF_EIO (connection dropped). */
static int node_send(cf_redis_t *r, int id, cf_redis_cmd_t *cmds, const size_t *order, size_t n) {
  redisContext *c = node_conn(r, id);
  if (!c) return CF_EIO;
  for (size_t k = 0; k < n; k++) {
    cf_redis_cmd_t *cm = &cmds[order[k]];
    if (cm->ask_ && redisAppendCommand(c, "ASKING") != REDIS_OK) goto fail;
    if (redisAppendCommandArgv(c, cm->argc, cm->argv, cm->argvlen) != REDIS_OK) goto fail;
  }
  int done = 0;
  while (!done)
    if (redisBufferWrite(c, &done) != REDIS_OK) goto fail;
  return 0;
fail:;
  char name[CF_REDIS_HOST_MAX + 16];
  cf_seterr(CF_EIO, "redis %s: write: %s", node_name(r, id, name, sizeof name), c->errstr);
  r->st.io_errors++;
  if (stale_retry(r, id)) return CF_EAGAIN;
  node_drop(r, id);
  return CF_EIO;
}

static int exec_round(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t *pend, size_t np, size_t *requeue,
                      size_t *nrq, int forced_node) {
  int cluster = r->url.kind == CF_REDIS_CLUSTER && forced_node < 0;
  if (cluster && r->need_refresh) refresh_slots(r);
  /* route */
  size_t *order = malloc(np * sizeof *order + 1);
  if (!order) {
    for (size_t k = 0; k < np; k++) cmds[pend[k]].status = CF_EIO;
    return cf_seterr(CF_ENOMEM, "redis pipeline");
  }
  int n_nodes = forced_node >= 0 ? forced_node + 1 : r->map.n_nodes;
  for (size_t k = 0; k < np; k++) {
    cf_redis_cmd_t *c = &cmds[pend[k]];
    if (forced_node >= 0) c->node_ = forced_node;
    else if (!cluster) c->node_ = 0;
    else if (!c->ask_) {
      c->node_ = r->map.slot[cf_redis_key_slot(c->argv[1], c->argvlen[1])];
      if (c->node_ < 0) { /* slot not covered (cluster down or not yet known) */
        c->status = CF_EIO;
        r->need_refresh = 1;
      }
    }
  }
  /* send, node by node (all nodes are written before any is read) */
  int sent[CF_REDIS_MAX_NODES] = {0};
  size_t *first = calloc((size_t)n_nodes + 1, sizeof *first), *cnt = calloc((size_t)n_nodes + 1, sizeof *cnt);
  if (!first || !cnt) {
    free(order), free(first), free(cnt);
    for (size_t k = 0; k < np; k++) cmds[pend[k]].status = CF_EIO;
    return cf_seterr(CF_ENOMEM, "redis pipeline");
  }
  for (size_t k = 0; k < np; k++)
    if (cmds[pend[k]].status != CF_EIO) cnt[cmds[pend[k]].node_]++;
  for (int id = 1; id <= n_nodes; id++) first[id] = first[id - 1] + cnt[id - 1];
  size_t *fill = calloc((size_t)n_nodes + 1, sizeof *fill);
  if (!fill) {
    free(order), free(first), free(cnt);
    for (size_t k = 0; k < np; k++) cmds[pend[k]].status = CF_EIO;
    return cf_seterr(CF_ENOMEM, "redis pipeline");
  }
  for (size_t k = 0; k < np; k++) {
    cf_redis_cmd_t *c = &cmds[pend[k]];
    if (c->status != CF_EIO) order[first[c->node_] + fill[c->node_]++] = pend[k];
  }
  for (int id = 0; id < n_nodes; id++) {
    if (!cnt[id]) continue;
    int src = node_send(r, id, cmds, order + first[id], cnt[id]);
    if (src == 0) sent[id] = 1;
    else
      for (size_t k = 0; k < cnt[id]; k++) {
        if (src == CF_EAGAIN) requeue[(*nrq)++] = order[first[id] + k]; /* a stale connection */
        else cmds[order[first[id] + k]].status = CF_EIO;
      }
  }
  /* read */
  for (int id = 0; id < n_nodes; id++) {
    if (!sent[id]) continue;
    redisContext *c = r->nodes[id].c;
    for (size_t k = 0; k < cnt[id]; k++) {
      cf_redis_cmd_t *cm = &cmds[order[first[id] + k]];
      void *rep = NULL;
      if (cm->ask_) { /* the ASKING reply */
        if (redisGetReply(c, &rep) != REDIS_OK) goto lost;
        freeReplyObject(rep);
        rep = NULL;
      }
      if (redisGetReply(c, &rep) != REDIS_OK) goto lost;
      redisReply *rr = rep;
      cm->ask_ = 0;
      if (rr->type == REDIS_REPLY_ERROR && forced_node < 0) {
        unsigned slot;
        cf_redis_addr_t a;
        int kind = cf_redis_parse_redirect(rr->str, rr->len, r->map.nodes[id].host, &slot, &a);
        if (kind == CF_REDIS_REDIR_MOVED) {
          r->st.moved++;
          cf_redis_slotmap_assign(&r->map, slot, slot, a.host, a.port);
          r->need_refresh = 1; /* a whole range probably moved: re-read the map next time */
          freeReplyObject(rr);
          requeue[(*nrq)++] = order[first[id] + k];
          continue;
        }
        if (kind == CF_REDIS_REDIR_ASK) {
          r->st.ask++;
          int ni = cf_redis_slotmap_node(&r->map, a.host, a.port);
          freeReplyObject(rr);
          if (ni < 0) {
            cm->status = CF_EIO;
            continue;
          }
          cm->node_ = ni;
          cm->ask_ = 1;
          requeue[(*nrq)++] = order[first[id] + k];
          continue;
        }
        if (rr->len >= 8 && strncmp(rr->str, "TRYAGAIN", 8) == 0) { /* multi-key op mid-migration */
          freeReplyObject(rr);
          requeue[(*nrq)++] = order[first[id] + k];
          continue;
        }
      }
      set_reply(cm, rr);
      /* exec_each: hand the reply over now; freed at once when the callback is done with it, so
       * a pipeline of big values does not hold them all (and fault fresh pages for each batch) */
      if (r->on_reply && r->on_reply(r->on_reply_ud, (size_t)(cm - cmds), cm)) cf_redis_cmds_release(cm, 1);
      continue;
    lost:;
      char name[CF_REDIS_HOST_MAX + 16];
      cf_seterr(CF_EIO, "redis %s: read: %s", node_name(r, id, name, sizeof name), c->errstr);
      r->st.io_errors++;
      if (stale_retry(r, id)) {
        for (size_t j = k; j < cnt[id]; j++) {
          cmds[order[first[id] + j]].ask_ = 0;
          requeue[(*nrq)++] = order[first[id] + j];
        }
        break;
      }
      for (size_t j = k; j < cnt[id]; j++) cmds[order[first[id] + j]].status = CF_EIO;
      node_drop(r, id);
      break;
    }
  }
  free(order), free(first), free(cnt), free(fill);
  return 0;
}

static int exec_any(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t n, int forced_node) {
  if (!n) return 0;
  size_t *pend = malloc(2 * n * sizeof *pend);
  if (!pend) {
    for (size_t i = 0; i < n; i++) cmds[i].status = CF_EIO;
    return (int)n;
  }
  size_t *rq = pend + n, np = n;
  r->epoch++;
  for (int i = 0; i < r->map.n_nodes; i++) r->nodes[i].retried = 0;
  for (size_t i = 0; i < n; i++) {
    pend[i] = i;
    cmds[i].status = 0;
    cmds[i].reply_ = NULL;
    cmds[i].ask_ = 0;
  }
  for (int round = 0; np && round < CF__REDIR_ROUNDS; round++) {
    size_t nrq = 0;
    exec_round(r, cmds, pend, np, rq, &nrq, forced_node);
    memcpy(pend, rq, nrq * sizeof *pend);
    np = nrq;
  }
  for (size_t k = 0; k < np; k++) cmds[pend[k]].status = CF_EIO; /* redirected too often */
  if (np) cf_seterr(CF_EIO, "redis cluster: %zu commands redirected more than %d times", np, CF__REDIR_ROUNDS);
  free(pend);
  int nio = 0;
  for (size_t i = 0; i < n; i++) nio += cmds[i].status == CF_EIO;
  return nio;
}

int cf_redis_exec(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t n) { return exec_any(r, cmds, n, -1); }

int cf_redis_exec_each(cf_redis_t *r, cf_redis_cmd_t *cmds, size_t n, cf_redis_reply_fn fn, void *ud) {
  r->on_reply = fn;
  r->on_reply_ud = ud;
  int nio = exec_any(r, cmds, n, -1);
  r->on_reply = NULL;
  r->on_reply_ud = NULL;
  return nio;
}

int cf_redis_exec_node(cf_redis_t *r, int id, cf_redis_cmd_t *cmds, size_t n) {
  if (id < 0 || id >= r->map.n_nodes) {
    for (size_t i = 0; i < n; i++) cmds[i].status = CF_EINVAL, cmds[i].reply_ = NULL;
    return (int)n;
  }
  return exec_any(r, cmds, n, id);
}

int cf_redis_masters(cf_redis_t *r, int *ids, int max) {
  if (r->url.kind != CF_REDIS_CLUSTER) {
    if (max > 0) ids[0] = 0;
    return max > 0;
  }
  if (r->need_refresh || !cf_redis_slotmap_covered(&r->map)) refresh_slots(r);
  uint8_t seen[CF_REDIS_MAX_NODES] = {0};
  int n = 0;
  for (unsigned s = 0; s < CF_REDIS_SLOTS; s++) {
    int id = r->map.slot[s];
    if (id >= 0 && !seen[id]) {
      seen[id] = 1;
      if (n < max) ids[n] = id;
      n++;
    }
  }
  return n < max ? n : max;
}

static void val_of(const redisReply *rr, cf_redis_val_t *out) {
  out->type = rr->type;
  out->integer = rr->integer;
  out->str = rr->str;
  out->len = rr->len;
  out->elements = rr->type == REDIS_REPLY_ARRAY ? rr->elements : 0;
  out->p_ = rr;
}

int cf_redis_val(const cf_redis_cmd_t *c, cf_redis_val_t *out) {
  if (!c->reply_) return CF_ENOTFOUND;
  val_of(c->reply_, out);
  return 0;
}

int cf_redis_val_elem(const cf_redis_val_t *a, size_t i, cf_redis_val_t *out) {
  if (i >= a->elements) return CF_ERANGE;
  val_of(((const redisReply *)a->p_)->element[i], out);
  return 0;
}

void cf_redis_get_stats(const cf_redis_t *r, cf_redis_stats_t *out) {
  *out = r->st;
  out->nodes_known = r->map.n_nodes;
  out->nodes_up = 0;
  for (int i = 0; i < r->map.n_nodes; i++) out->nodes_up += r->nodes[i].c != NULL;
}
