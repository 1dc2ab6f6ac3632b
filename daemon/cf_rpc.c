/* cf_rpc — gRPC C core server: CQ thread for receives, libuv loop thread for sends.
 * See cf_rpc.h for the threading contract. */
#include "cf_rpc.h"

#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util/cf_err.h"
#include "util/cf_log.h"

/* Requests kept posted at once: one would do for correctness; a few avoid a gap between a
 * call's arrival and the next request under load. */
#define CF__POSTED 8

enum { CF__T_NEW, CF__T_RECV, CF__T_CLOSE, CF__T_SEND, CF__T_SHUTDOWN, CF__T_CQDONE };

typedef struct cf__tag_s {
  int kind, ok;
  cf_rpc_call_t *call;
  struct cf__tag_s *next; /* in the CQ -> loop queue */
  /* Bumped (release) by the loop thread before it starts a batch with this tag, read (acquire)
   * by the CQ thread when the batch completes: the loop's last reads of a reused tag (t_send
   * of a stream) happen before the CQ thread rewrites it. gRPC orders them already, inside
   * libgrpc, where ThreadSanitizer cannot see; this makes the order visible to it. */
  unsigned gen;
} cf__tag_t;

typedef struct cf__out_s {
  struct cf__out_s *next;
  grpc_byte_buffer *msg; /* NULL: status only */
  int final, status;
  char *details;
} cf__out_t;

struct cf_rpc_call_s {
  cf_rpc_server_t *srv;
  grpc_call *call;
  grpc_call_details details;
  grpc_metadata_array md;
  grpc_byte_buffer *recv_buf;
  int cancelled;                  /* from RECV_CLOSE_ON_SERVER */
  cf__tag_t t_new, t_recv, t_close, t_send;
  /* loop thread only: */
  int refs;                       /* close completion + final send completion */
  int ended;                      /* final status queued */
  int md_sent, send_busy;
  cf__out_t *out_head, *out_tail, *cur;
  grpc_slice status_slice;
  int has_status_slice;
  int method;                     /* index, -1 unknown */
  char path[128];
  struct timespec t0;
  void (*close_cb)(cf_rpc_call_t *, void *);
  void *close_arg;
  cf_rpc_call_t *prev_live, *next_live;
};

typedef struct {
  uint64_t calls;
  uint64_t ns_sum;
} cf__mstat_t;

struct cf_rpc_server_s {
  uv_loop_t *loop;
  cf_rpc_opts_t opts;
  grpc_server *server;
  grpc_completion_queue *cq;
  pthread_t cq_thread;
  int thread_started;
  uv_async_t async;
  pthread_mutex_t qlock;
  cf__tag_t *qhead, *qtail;
  cf__tag_t t_shutdown, t_cqdone;
  int draining, shutting, cq_shut; /* shutting is read by the CQ thread: atomics */
  char sock_path[108];
  cf_rpc_call_t *live;            /* calls handed to the loop and not yet destroyed */
  void (*done)(void *);
  void *done_arg;
  /* counters, updated with atomics */
  uint64_t calls_total, in_flight, status_total[CF_RPC__NSTATUS];
  cf__mstat_t *mstat;
  /* TLS on the TCP listener: the PEMs the next handshake should use, handed to gRPC's
   * certificate-config fetcher (called on gRPC's threads at every new connection) */
  pthread_mutex_t tls_lock;
  int tls_on, tls_mtls, tls_pending;
  char *tls_cert, *tls_key, *tls_ca;
};

static const char *const cf__status_names[CF_RPC__NSTATUS] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

const char *cf_rpc_status_name(int st) {
  return st >= 0 && st < CF_RPC__NSTATUS ? cf__status_names[st] : "?";
}

int cf_rpc_status_from_err(int e) {
  switch (e) {
    case CF_OK: return CF_RPC_OK;
    case CF_EINVAL: case CF_EFORMAT: case CF_ESHAPE: case CF_EDTYPE: case CF_ERANGE: case CF_EMISMATCH:
      return CF_RPC_INVALID_ARGUMENT;
    case CF_ENOTFOUND: case CF_ENOENT: return CF_RPC_NOT_FOUND;
    case CF_EEXIST: return CF_RPC_ALREADY_EXISTS;
    case CF_EACCES: return CF_RPC_PERMISSION_DENIED;
    case CF_ENOMEM: case CF_ENOSPC: return CF_RPC_RESOURCE_EXHAUSTED;
    case CF_EBUSY: case CF_EAGAIN: case CF_ESHUTDOWN: return CF_RPC_UNAVAILABLE;
    case CF_ECANCELED: return CF_RPC_CANCELLED;
    case CF_ETIMEDOUT: return CF_RPC_DEADLINE_EXCEEDED;
    case CF_EUNSUPPORTED: return CF_RPC_UNIMPLEMENTED;
    case CF_ECORRUPT: return CF_RPC_DATA_LOSS;
    default: return CF_RPC_INTERNAL;
  }
}

/* ---------------------------------------------------------------- CQ thread */
static void cf__post(cf_rpc_server_t *s, cf__tag_t *t) {
  pthread_mutex_lock(&s->qlock);
  t->next = NULL;
  if (s->qtail) s->qtail->next = t;
  else s->qhead = t;
  s->qtail = t;
  pthread_mutex_unlock(&s->qlock);
  uv_async_send(&s->async);
}

static void cf__request_one(cf_rpc_server_t *s) {
  cf_rpc_call_t *c = calloc(1, sizeof *c);
  if (!c) { CF_ERROR("rpc: out of memory posting a request; %s", "calls may stall"); return; }
  c->srv = s;
  c->method = -1;
  c->refs = 2; /* the close completion and the final send (either may come first) */
  grpc_call_details_init(&c->details);
  grpc_metadata_array_init(&c->md);
  c->t_new = (cf__tag_t){CF__T_NEW, 0, c, NULL};
  c->t_recv = (cf__tag_t){CF__T_RECV, 0, c, NULL};
  c->t_close = (cf__tag_t){CF__T_CLOSE, 0, c, NULL};
  c->t_send = (cf__tag_t){CF__T_SEND, 0, c, NULL};
  grpc_call_error e = grpc_server_request_call(s->server, &c->call, &c->details, &c->md, s->cq, s->cq, &c->t_new);
  if (e != GRPC_CALL_OK) {
    CF_ERROR("rpc: grpc_server_request_call failed: %d", (int)e);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c);
  }
}

static void cf__free_unstarted(cf_rpc_call_t *c) {
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  free(c);
}

/* A call arrived: keep the generic request posted, then issue its two receive batches. */
static void cf__on_new(cf_rpc_server_t *s, cf_rpc_call_t *c) {
  if (!__atomic_load_n(&s->shutting, __ATOMIC_ACQUIRE)) cf__request_one(s);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &c->recv_buf;
  if (grpc_call_start_batch(c->call, &op, 1, &c->t_recv, NULL) != GRPC_CALL_OK) {
    c->t_recv.ok = 0;
    cf__post(s, &c->t_recv);
  }
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->cancelled;
  if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
    c->t_close.ok = 0;
    cf__post(s, &c->t_close);
  }
}

static void *cf__cq_main(void *arg) {
  cf_rpc_server_t *s = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    cf__tag_t *t = ev.tag;
    (void)__atomic_load_n(&t->gen, __ATOMIC_ACQUIRE);
    t->ok = ev.success;
    if (t->kind == CF__T_NEW) {
      if (!ev.success) cf__free_unstarted(t->call); /* server shutting down: never started */
      else cf__on_new(s, t->call);
    } else {
      cf__post(s, t);
    }
  }
  cf__post(s, &s->t_cqdone);
  return NULL;
}

/* ---------------------------------------------------------------- loop thread */
static void cf__destroy(cf_rpc_call_t *c) {
  cf_rpc_server_t *s = c->srv;
  if (c->prev_live) c->prev_live->next_live = c->next_live;
  else if (s->live == c) s->live = c->next_live;
  if (c->next_live) c->next_live->prev_live = c->prev_live;
  while (c->out_head) {
    cf__out_t *o = c->out_head;
    c->out_head = o->next;
    if (o->msg) grpc_byte_buffer_destroy(o->msg);
    free(o->details);
    free(o);
  }
  if (c->recv_buf) grpc_byte_buffer_destroy(c->recv_buf);
  if (c->call) grpc_call_unref(c->call);
  grpc_call_details_destroy(&c->details);
  grpc_metadata_array_destroy(&c->md);
  free(c);
}

static void cf__unref(cf_rpc_call_t *c) {
  if (--c->refs == 0) cf__destroy(c);
}

static void cf__send_done(cf_rpc_call_t *c, int ok);

/* Start the next queued send batch if none is in flight. */
static void cf__pump(cf_rpc_call_t *c) {
  cf_rpc_server_t *s = c->srv;
  if (c->send_busy || !c->out_head) return;
  cf__out_t *o = c->out_head;
  c->out_head = o->next;
  if (!c->out_head) c->out_tail = NULL;
  c->cur = o;
  c->send_busy = 1;
  if (s->cq_shut) { cf__send_done(c, 0); return; } /* queue closed: nothing can be sent */
  grpc_op ops[3];
  int n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->md_sent) {
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->md_sent = 1;
  }
  if (o->msg) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = o->msg;
  }
  if (o->final) {
    c->status_slice = grpc_slice_from_copied_string(o->details ? o->details : "");
    c->has_status_slice = 1;
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = (grpc_status_code)o->status;
    ops[n++].data.send_status_from_server.status_details = &c->status_slice;
  }
  __atomic_add_fetch(&c->t_send.gen, 1, __ATOMIC_RELEASE);
  grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
  if (e != GRPC_CALL_OK) {
    CF_WARN("rpc: %s: start send batch failed: %d", c->path, (int)e);
    cf__send_done(c, 0);
  }
}

static void cf__send_done(cf_rpc_call_t *c, int ok) {
  cf__out_t *o = c->cur;
  c->cur = NULL;
  c->send_busy = 0;
  if (c->has_status_slice) { grpc_slice_unref(c->status_slice); c->has_status_slice = 0; }
  int final = o->final;
  if (o->msg) grpc_byte_buffer_destroy(o->msg);
  free(o->details);
  free(o);
  if (!ok) CF_DEBUG("rpc: %s: send failed (client gone)", c->path);
  if (final) cf__unref(c);
  else cf__pump(c);
}

static void cf__enqueue(cf_rpc_call_t *c, grpc_byte_buffer *msg, int final, int status, const char *details) {
  cf__out_t *o = calloc(1, sizeof *o);
  if (!o) {
    /* Out of memory for a 40-byte node: drop the message. A lost final leaves the call open
     * until the client's deadline or the shutdown's cancel_all_calls; nothing is corrupted. */
    if (msg) grpc_byte_buffer_destroy(msg);
    CF_ERROR("rpc: %s: out of memory queueing a %s", c->path, final ? "status" : "message");
    return;
  }
  o->msg = msg;
  o->final = final;
  o->status = status;
  o->details = details ? strdup(details) : NULL;
  if (c->out_tail) c->out_tail->next = o;
  else c->out_head = o;
  c->out_tail = o;
  cf__pump(c);
}

static grpc_byte_buffer *cf__pack(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return NULL;
  protobuf_c_message_pack(msg, buf);
  grpc_slice sl = grpc_slice_new(buf, n, free);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  return bb;
}

static void cf__end(cf_rpc_call_t *c, grpc_byte_buffer *msg, int status, const char *details) {
  cf_rpc_server_t *s = c->srv;
  if (c->ended) {
    if (msg) grpc_byte_buffer_destroy(msg);
    CF_ERROR("rpc: %s: ended twice (status %s)", c->path, cf_rpc_status_name(status));
    return;
  }
  c->ended = 1;
  if (status < 0 || status >= CF_RPC__NSTATUS) status = CF_RPC_UNKNOWN;
  __atomic_fetch_add(&s->status_total[status], 1, __ATOMIC_RELAXED);
  __atomic_fetch_sub(&s->in_flight, 1, __ATOMIC_RELAXED);
  if (c->method >= 0) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    uint64_t ns = (uint64_t)(t1.tv_sec - c->t0.tv_sec) * 1000000000ull + (uint64_t)(t1.tv_nsec - c->t0.tv_nsec);
    __atomic_fetch_add(&s->mstat[c->method].ns_sum, ns, __ATOMIC_RELAXED);
  }
  if (status != CF_RPC_OK)
    CF_DEBUG("rpc: %s -> %s: %s", c->path, cf_rpc_status_name(status), details ? details : "");
  cf__enqueue(c, msg, 1, status, details);
}

void cf_rpc_reply(cf_rpc_call_t *c, const ProtobufCMessage *msg) {
  grpc_byte_buffer *bb = cf__pack(msg);
  if (!bb) { cf__end(c, NULL, CF_RPC_RESOURCE_EXHAUSTED, "out of memory packing the reply"); return; }
  cf__end(c, bb, CF_RPC_OK, NULL);
}

void cf_rpc_send(cf_rpc_call_t *c, const ProtobufCMessage *msg) {
  if (c->ended) return;
  grpc_byte_buffer *bb = cf__pack(msg);
  if (bb) cf__enqueue(c, bb, 0, 0, NULL);
}

void cf_rpc_finish(cf_rpc_call_t *c, int status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cf__end(c, NULL, status, msg);
}

void cf_rpc_on_close(cf_rpc_call_t *c, void (*cb)(cf_rpc_call_t *, void *), void *arg) {
  c->close_cb = cb;
  c->close_arg = arg;
}

int cf_rpc_call_is_local(cf_rpc_call_t *c) {
  char *peer = grpc_call_get_peer(c->call); /* "unix:...", "ipv4:..." or "ipv6:..." */
  int local = peer && !strncmp(peer, "unix", 4);
  gpr_free(peer);
  return local;
}

/* The request arrived (or the call failed before it did): route it. */
static void cf__on_recv(cf_rpc_server_t *s, cf_rpc_call_t *c, int ok) {
  c->next_live = s->live;
  if (s->live) s->live->prev_live = c;
  s->live = c;
  clock_gettime(CLOCK_MONOTONIC, &c->t0);
  __atomic_fetch_add(&s->calls_total, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&s->in_flight, 1, __ATOMIC_RELAXED);
  size_t plen = GRPC_SLICE_LENGTH(c->details.method);
  if (plen >= sizeof c->path) plen = sizeof c->path - 1;
  memcpy(c->path, GRPC_SLICE_START_PTR(c->details.method), plen);
  c->path[plen] = 0;
  const cf_rpc_method_t *m = NULL;
  for (int i = 0; i < s->opts.n_methods; i++)
    if (!strcmp(s->opts.methods[i].path, c->path)) { m = &s->opts.methods[i]; c->method = i; break; }
  if (c->method >= 0) __atomic_fetch_add(&s->mstat[c->method].calls, 1, __ATOMIC_RELAXED);
  if (!m) { cf_rpc_finish(c, CF_RPC_UNIMPLEMENTED, "unknown method '%s'", c->path); return; }
  if ((s->draining || s->shutting) && !(m->flags & CF_RPC_DRAIN_OK)) {
    cf_rpc_finish(c, CF_RPC_UNAVAILABLE, "cacheflowd is draining (shutting down): retry on another daemon");
    return;
  }
  if (!ok || !c->recv_buf) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s: no request message received", c->path);
    return;
  }
  grpc_byte_buffer_reader rd;
  if (!grpc_byte_buffer_reader_init(&rd, c->recv_buf)) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s: cannot read the request (compressed?)", c->path);
    return;
  }
  grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  grpc_byte_buffer_destroy(c->recv_buf);
  c->recv_buf = NULL;
  ProtobufCMessage *req = protobuf_c_message_unpack(m->req_desc, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
  size_t nbytes = GRPC_SLICE_LENGTH(sl);
  grpc_slice_unref(sl);
  if (!req) {
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s: malformed request: %zu bytes are not a valid %s message",
                  c->path, nbytes, m->req_desc->name);
    return;
  }
  char why[512] = "";
  if (m->validate && m->validate(req, s->opts.user, why, sizeof why)) {
    protobuf_c_message_free_unpacked(req, NULL);
    cf_rpc_finish(c, CF_RPC_INVALID_ARGUMENT, "%s: %s", m->req_desc->short_name, why);
    return;
  }
  m->handler(c, req, s->opts.user);
}

static void cf__finish_shutdown(cf_rpc_server_t *s);

static void cf__on_async(uv_async_t *h) {
  cf_rpc_server_t *s = h->data;
  pthread_mutex_lock(&s->qlock);
  cf__tag_t *t = s->qhead;
  s->qhead = s->qtail = NULL;
  pthread_mutex_unlock(&s->qlock);
  while (t) {
    cf__tag_t *next = t->next;
    cf_rpc_call_t *c = t->call;
    switch (t->kind) {
      case CF__T_RECV: cf__on_recv(s, c, t->ok); break;
      case CF__T_CLOSE:
        if (!c->ended && c->close_cb) c->close_cb(c, c->close_arg);
        cf__unref(c);
        break;
      case CF__T_SEND: cf__send_done(c, t->ok); break;
      case CF__T_SHUTDOWN:
        /* Every call is done: no batch can start after this point except on calls we still
         * hold, and cf__pump refuses those once cq_shut is set. */
        s->cq_shut = 1;
        grpc_completion_queue_shutdown(s->cq);
        break;
      case CF__T_CQDONE: cf__finish_shutdown(s); return; /* s is freed */
    }
    t = next;
  }
}

/* ---------------------------------------------------------------- start / stop */
/* Refuse to steal the socket of a live daemon; remove a stale one left by a crash. */
static int cf__prepare_unix(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return 0;
  if (!S_ISSOCK(st.st_mode)) return cf_seterr(CF_EEXIST, "%s exists and is not a socket", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int live = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
  if (fd >= 0) close(fd);
  if (live) return cf_seterr(CF_EBUSY, "%s: another process is listening on this socket", path);
  if (unlink(path) != 0) return cf_seterr(CF_EIO, "%s: cannot remove stale socket: %s", path, strerror(errno));
  return 0;
}

/* ---------------------------------------------------------------- TLS */
static void cf__tls_clear(cf_rpc_server_t *s) {
  if (s->tls_key) memset(s->tls_key, 0, strlen(s->tls_key)); /* the key does not linger in freed memory */
  free(s->tls_cert);
  free(s->tls_key);
  free(s->tls_ca);
  s->tls_cert = s->tls_key = s->tls_ca = NULL;
}

/* Copy `t` as the certificates of the next handshake (under tls_lock). */
static int cf__tls_stage(cf_rpc_server_t *s, const cf_rpc_tls_t *t) {
  char *c = strdup(t->cert_pem), *k = strdup(t->key_pem), *a = t->client_ca_pem ? strdup(t->client_ca_pem) : NULL;
  if (!c || !k || (t->client_ca_pem && !a)) { free(c); free(k); free(a); return cf_seterr(CF_ENOMEM, "rpc: tls"); }
  pthread_mutex_lock(&s->tls_lock);
  cf__tls_clear(s);
  s->tls_cert = c;
  s->tls_key = k;
  s->tls_ca = a;
  s->tls_pending = 1;
  pthread_mutex_unlock(&s->tls_lock);
  return 0;
}

/* gRPC core's fetcher: runs on its threads once when the port is added and then at every new
 * connection; NEW hands it a config (gRPC owns and frees it), UNCHANGED keeps the current one. */
static grpc_ssl_certificate_config_reload_status cf__tls_fetch(void *user, grpc_ssl_server_certificate_config **cfg) {
  cf_rpc_server_t *s = user;
  grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
  pthread_mutex_lock(&s->tls_lock);
  if (s->tls_pending) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = s->tls_key, .cert_chain = s->tls_cert};
    /* Without mutual TLS there are no client CAs, but gRPC 1.51 asserts (and aborts) on a
     * fetched config with NULL roots; its own chain stands in: with
     * GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE no client certificate is asked for or checked. */
    *cfg = grpc_ssl_server_certificate_config_create(s->tls_ca ? s->tls_ca : s->tls_cert, &pair, 1); /* copies */
    s->tls_pending = 0;
    st = *cfg ? GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW : GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
  }
  pthread_mutex_unlock(&s->tls_lock);
  return st;
}

int cf_rpc_tls_update(cf_rpc_server_t *s, const cf_rpc_tls_t *t) {
  if (!s->tls_on) return cf_seterr(CF_EINVAL, "rpc: the TCP listener was started without TLS (restart to turn it on)");
  if ((t->client_ca_pem != NULL) != s->tls_mtls)
    return cf_seterr(CF_EINVAL, "rpc: client certificates %s at start-up: turning mutual TLS %s needs a restart",
                     s->tls_mtls ? "were required" : "were not asked", s->tls_mtls ? "off" : "on");
  return cf__tls_stage(s, t);
}

static int cf__add_port(cf_rpc_server_t *s, const char *addr, const cf_rpc_tls_t *tls) {
  grpc_server_credentials *cr;
  if (tls) {
    if (cf__tls_stage(s, tls)) return CF_ENOMEM;
    s->tls_on = 1;
    s->tls_mtls = tls->client_ca_pem != NULL;
    grpc_ssl_server_credentials_options *o = grpc_ssl_server_credentials_create_options_using_config_fetcher(
        s->tls_mtls ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        cf__tls_fetch, s);
    cr = grpc_ssl_server_credentials_create_with_options(o); /* takes `o` */
  } else {
    cr = grpc_insecure_server_credentials_create();
  }
  int port = cr ? grpc_server_add_http2_port(s->server, addr, cr) : 0;
  if (cr) grpc_server_credentials_release(cr);
  if (port == 0)
    return cf_seterr(CF_EIO, "%s: cannot bind (in use, bad address or no permission%s)", addr,
                     tls ? ", or gRPC refused the TLS certificates" : "");
  return 0;
}

int cf_rpc_start(cf_rpc_server_t **out, uv_loop_t *loop, const cf_rpc_opts_t *opts) {
  *out = NULL;
  if (strncmp(opts->listen, "unix:", 5) || strlen(opts->listen + 5) >= 108)
    return cf_seterr(CF_EINVAL, "listen '%s': expected unix:/path", opts->listen);
  cf_rpc_server_t *s = calloc(1, sizeof *s);
  if (!s) return cf_seterr(CF_ENOMEM, "rpc server");
  s->mstat = calloc(opts->n_methods ? opts->n_methods : 1, sizeof *s->mstat);
  if (!s->mstat) { free(s); return cf_seterr(CF_ENOMEM, "rpc server"); }
  s->loop = loop;
  s->opts = *opts;
  snprintf(s->sock_path, sizeof s->sock_path, "%s", opts->listen + 5);
  s->t_shutdown.kind = CF__T_SHUTDOWN;
  s->t_cqdone.kind = CF__T_CQDONE;
  pthread_mutex_init(&s->qlock, NULL);
  pthread_mutex_init(&s->tls_lock, NULL);
  int rc = cf__prepare_unix(s->sock_path);
  if (rc) goto fail_early;

  grpc_init();
  grpc_arg args[2];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = (int)opts->max_message_bytes;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[1].value.integer = (int)opts->max_message_bytes;
  grpc_channel_args ca = {2, args};
  s->server = grpc_server_create(&ca, NULL);
  s->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(s->server, s->cq, NULL);
  if ((rc = cf__add_port(s, opts->listen, NULL))) goto fail;
  if (opts->tcp_listen && *opts->tcp_listen && (rc = cf__add_port(s, opts->tcp_listen, opts->tls))) goto fail;
  s->opts.tls = NULL; /* the caller's strings are not kept: cf__tls_stage copied them */
  grpc_server_start(s->server);
  /* gRPC creates the socket with the umask's mode; engines of the `cacheflow` group may use it. */
  if (chmod(s->sock_path, 0660) != 0)
    CF_WARN("rpc: chmod 0660 %s: %s", s->sock_path, strerror(errno));
  uv_async_init(loop, &s->async, cf__on_async);
  s->async.data = s;
  for (int i = 0; i < CF__POSTED; i++) cf__request_one(s);
  if (pthread_create(&s->cq_thread, NULL, cf__cq_main, s) != 0) {
    rc = cf_seterr(CF_EINTERNAL, "rpc: cannot start the completion-queue thread");
    /* requests are posted: a full shutdown path is needed; keep it simple and fatal */
    return rc;
  }
  s->thread_started = 1;
  *out = s;
  return 0;
fail:
  grpc_server_destroy(s->server);
  grpc_completion_queue_shutdown(s->cq);
  while (grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {}
  grpc_completion_queue_destroy(s->cq);
  grpc_shutdown();
fail_early:
  pthread_mutex_destroy(&s->qlock);
  cf__tls_clear(s);
  pthread_mutex_destroy(&s->tls_lock);
  free(s->mstat);
  free(s);
  return rc;
}

void cf_rpc_drain(cf_rpc_server_t *s) { s->draining = 1; }

int cf_rpc_sending(const cf_rpc_server_t *s) {
  int n = 0;
  for (const cf_rpc_call_t *c = s->live; c; c = c->next_live) n += c->ended && (c->out_head || c->send_busy);
  return n;
}

void cf_rpc_shutdown(cf_rpc_server_t *s, void (*done)(void *), void *arg) {
  if (s->shutting) return;
  s->done = done;
  s->done_arg = arg;
  s->draining = 1;
  __atomic_store_n(&s->shutting, 1, __ATOMIC_RELEASE);
  for (cf_rpc_call_t *c = s->live; c; c = c->next_live)
    if (!c->ended) {
      CF_WARN("rpc: %s still open at shutdown: ending it with UNAVAILABLE", c->path);
      cf_rpc_finish(c, CF_RPC_UNAVAILABLE, "cacheflowd is shutting down");
    }
  __atomic_add_fetch(&s->t_shutdown.gen, 1, __ATOMIC_RELEASE); /* see cf__tag_t.gen */
  grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
  grpc_server_cancel_all_calls(s->server);
}

static void cf__on_async_closed(uv_handle_t *h) {
  cf_rpc_server_t *s = h->data;
  void (*done)(void *) = s->done;
  void *arg = s->done_arg;
  pthread_mutex_destroy(&s->qlock);
  cf__tls_clear(s);
  pthread_mutex_destroy(&s->tls_lock);
  free(s->mstat);
  free(s);
  if (done) done(arg);
}

static void cf__finish_shutdown(cf_rpc_server_t *s) {
  pthread_join(s->cq_thread, NULL);
  /* Calls still held were ended but their completions can no longer arrive. */
  while (s->live) {
    cf_rpc_call_t *c = s->live;
    c->refs = 1;
    cf__unref(c);
  }
  grpc_server_destroy(s->server);
  grpc_completion_queue_destroy(s->cq);
  grpc_shutdown();
  unlink(s->sock_path);
  uv_close((uv_handle_t *)&s->async, cf__on_async_closed);
}

void cf_rpc_stats(const cf_rpc_server_t *s, cf_rpc_stats_t *o) {
  o->calls_total = __atomic_load_n(&s->calls_total, __ATOMIC_RELAXED);
  o->calls_in_flight = __atomic_load_n(&s->in_flight, __ATOMIC_RELAXED);
  for (int i = 0; i < CF_RPC__NSTATUS; i++) o->status_total[i] = __atomic_load_n(&s->status_total[i], __ATOMIC_RELAXED);
}

void cf_rpc_method_stats(const cf_rpc_server_t *s, int i, uint64_t *calls, double *seconds) {
  *calls = __atomic_load_n(&s->mstat[i].calls, __ATOMIC_RELAXED);
  *seconds = __atomic_load_n(&s->mstat[i].ns_sum, __ATOMIC_RELAXED) / 1e9;
}
