/* Real redis-server processes for the remote-tier tests and benchmarks (header-only).
 *
 * Each server runs in its own directory under the test's temp dir, on a loopback port picked free
 * by the kernel (bind to port 0, read it back, close, start redis-server there; a lost race is
 * retried with another port), with persistence off. rt_stop sends SIGKILL (a real fault, also the
 * way tests end them) and reaps the process. A cluster is three masters joined with
 * `redis-cli --cluster create`, waited on until every node reports cluster_state:ok. */
#ifndef CF_REDIS_TESTLIB_H
#define CF_REDIS_TESTLIB_H

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  pid_t pid;
  int port;
  char dir[768];
  char sock[512]; /* unix socket path when started with one */
  char extra[512];
} rt_server_t;

static inline int rt_have_redis(void) {
  return access("/usr/bin/redis-server", X_OK) == 0 && access("/usr/bin/redis-cli", X_OK) == 0;
}

static inline void rt_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static inline int rt_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t l = sizeof a;
  int port = -1;
  /* cluster nodes also listen on port + 10000: keep both below 65536 */
  for (int tries = 0; tries < 50 && port < 0; tries++) {
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &l) == 0) {
      int p = ntohs(a.sin_port);
      if (p < 55000) port = p;
    }
    close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
  }
  close(fd);
  return port;
}

/* A command on a fresh connection to s (NULL on failure); free with freeReplyObject. */
static inline redisReply *rt_cmd(const rt_server_t *s, const char *fmt, ...) {
  struct timeval tv = {2, 0};
  redisContext *c = s->sock[0] ? redisConnectUnixWithTimeout(s->sock, tv)
                               : redisConnectWithTimeout("127.0.0.1", s->port, tv);
  if (!c || c->err) {
    if (c) redisFree(c);
    return NULL;
  }
  redisSetTimeout(c, tv);
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  redisFree(c);
  return r;
}

static inline int rt_ping(const rt_server_t *s) {
  redisReply *r = rt_cmd(s, "PING");
  int ok = r && r->type == REDIS_REPLY_STATUS;
  if (r) freeReplyObject(r);
  return ok;
}

/* (Re)start s: s->dir, s->extra (more redis-server arguments, space separated), s->sock ("" for
 * TCP only); s->port 0 picks one. Returns 0 when the server answers PING. */
static inline int rt_start(rt_server_t *s) {
  mkdir(s->dir, 0755);
  for (int attempt = 0; attempt < 5; attempt++) {
    int pick = s->port == 0;
    if (pick) s->port = rt_free_port();
    char portbuf[16], logf[800];
    snprintf(portbuf, sizeof portbuf, "%d", s->port);
    snprintf(logf, sizeof logf, "%s/redis.log", s->dir);
    pid_t pid = fork();
    if (pid == 0) {
      const char *argv[64];
      int n = 0;
      argv[n++] = "redis-server";
      argv[n++] = "--port"; argv[n++] = portbuf;
      argv[n++] = "--bind"; argv[n++] = "127.0.0.1";
      argv[n++] = "--dir"; argv[n++] = s->dir;
      argv[n++] = "--save"; argv[n++] = "";
      argv[n++] = "--appendonly"; argv[n++] = "no";
      argv[n++] = "--logfile"; argv[n++] = logf;
      argv[n++] = "--protected-mode"; argv[n++] = "no";
      if (s->sock[0]) { argv[n++] = "--unixsocket"; argv[n++] = s->sock; }
      char extra[512];
      snprintf(extra, sizeof extra, "%s", s->extra);
      for (char *t = strtok(extra, " "); t && n < 62; t = strtok(NULL, " ")) argv[n++] = t;
      argv[n] = NULL;
      execvp("redis-server", (char *const *)argv);
      _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 200; i++) {
      if (rt_ping(s)) return 0;
      int st;
      if (waitpid(pid, &st, WNOHANG) == pid) break; /* exited: port taken? */
      rt_sleep_ms(25);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    if (!pick) return -1; /* a fixed port: the caller decides */
    s->port = 0;
  }
  return -1;
}

static inline void rt_stop(rt_server_t *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
  }
  s->pid = 0;
}

static inline int rt_standalone(rt_server_t *s, const char *base, const char *name, const char *extra) {
  memset(s, 0, sizeof *s);
  snprintf(s->dir, sizeof s->dir, "%s/%s", base, name);
  snprintf(s->extra, sizeof s->extra, "%s", extra ? extra : "");
  return rt_start(s);
}

/* Three masters, slots split by redis-cli. Returns 0 when cluster_state:ok on each. */
static inline int rt_cluster(rt_server_t s[3], const char *base) {
  for (int i = 0; i < 3; i++) {
    memset(&s[i], 0, sizeof s[i]);
    snprintf(s[i].dir, sizeof s[i].dir, "%s/node%d", base, i);
    snprintf(s[i].extra, sizeof s[i].extra,
             "--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 "
             "--cluster-require-full-coverage no");
    if (rt_start(&s[i])) return -1;
  }
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "redis-cli --cluster create 127.0.0.1:%d 127.0.0.1:%d 127.0.0.1:%d --cluster-yes >%s/create.log 2>&1",
           s[0].port, s[1].port, s[2].port, base);
  if (system(cmd) != 0) return -1;
  for (int t = 0; t < 400; t++) {
    int ok = 0;
    for (int i = 0; i < 3; i++) {
      redisReply *r = rt_cmd(&s[i], "CLUSTER INFO");
      if (r && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok")) ok++;
      if (r) freeReplyObject(r);
    }
    if (ok == 3) return 0;
    rt_sleep_ms(50);
  }
  return -1;
}

/* Node id ("CLUSTER MYID") of s into out (41 bytes). */
static inline int rt_myid(const rt_server_t *s, char *out) {
  redisReply *r = rt_cmd(s, "CLUSTER MYID");
  int ok = r && r->type == REDIS_REPLY_STRING && r->len < 41;
  if (ok) memcpy(out, r->str, r->len + 1);
  if (r) freeReplyObject(r);
  return ok ? 0 : -1;
}

/* Index of the node in s[0..n) that owns `slot` (by CLUSTER SLOTS on s[0]), or -1. */
static inline int rt_slot_owner(const rt_server_t *s, int n, unsigned slot) {
  redisReply *r = rt_cmd(&s[0], "CLUSTER SLOTS");
  int who = -1;
  if (r && r->type == REDIS_REPLY_ARRAY)
    for (size_t i = 0; i < r->elements; i++) {
      redisReply *e = r->element[i];
      if ((unsigned)e->element[0]->integer <= slot && slot <= (unsigned)e->element[1]->integer)
        for (int j = 0; j < n; j++)
          if (e->element[2]->element[1]->integer == s[j].port) who = j;
    }
  if (r) freeReplyObject(r);
  return who;
}

#endif
