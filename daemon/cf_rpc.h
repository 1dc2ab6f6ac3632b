/* cf_rpc — cacheflowd's gRPC server. The ONLY module that includes gRPC C core headers.
 *
 * Threads: one completion-queue thread (CQ thread) runs grpc_completion_queue_next; it posts
 * the generic grpc_server_request_call (one is always outstanding, so every method — known or
 * not — arrives here and unknown ones get UNIMPLEMENTED) and issues each call's RECEIVE
 * batches (RECV_MESSAGE, RECV_CLOSE_ON_SERVER). Completions go to the libuv loop thread through
 * a uv_async queue. The loop thread unpacks the request (protobuf-c), validates it, runs the
 * handler and issues every SEND batch (initial metadata, messages, status). gRPC allows send and
 * receive batches to be started from different threads; each kind is owned by one thread, so
 * no call needs a lock.
 *
 * Handlers run on the loop thread and must not block. A handler owns `req` (free it with
 * protobuf_c_message_free_unpacked(req, NULL)) and must end the call exactly once, now or
 * later, with cf_rpc_reply() (unary) or cf_rpc_finish(); streams send with cf_rpc_send() first.
 */
#ifndef CF_RPC_H
#define CF_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <uv.h>

/* gRPC status codes (same numbers as grpc_status_code; redeclared so callers need no grpc header). */
enum {
  CF_RPC_OK = 0, CF_RPC_CANCELLED = 1, CF_RPC_UNKNOWN = 2, CF_RPC_INVALID_ARGUMENT = 3,
  CF_RPC_DEADLINE_EXCEEDED = 4, CF_RPC_NOT_FOUND = 5, CF_RPC_ALREADY_EXISTS = 6,
  CF_RPC_PERMISSION_DENIED = 7, CF_RPC_RESOURCE_EXHAUSTED = 8, CF_RPC_FAILED_PRECONDITION = 9,
  CF_RPC_ABORTED = 10, CF_RPC_OUT_OF_RANGE = 11, CF_RPC_UNIMPLEMENTED = 12, CF_RPC_INTERNAL = 13,
  CF_RPC_UNAVAILABLE = 14, CF_RPC_DATA_LOSS = 15, CF_RPC_UNAUTHENTICATED = 16, CF_RPC__NSTATUS = 17
};

typedef struct cf_rpc_server_s cf_rpc_server_t;
typedef struct cf_rpc_call_s cf_rpc_call_t;

/* Field checks that need no daemon state; 0 = ok, else fill `why` (-> INVALID_ARGUMENT). */
typedef int (*cf_rpc_validate_fn)(const ProtobufCMessage *req, void *user, char *why, size_t cap);
typedef void (*cf_rpc_handler_fn)(cf_rpc_call_t *call, ProtobufCMessage *req, void *user);

#define CF_RPC_DRAIN_OK 1 /* still served while draining (health, admin); others get UNAVAILABLE */

typedef struct {
  const char *path;                           /* "/cacheflow.v1.CacheFlow/Lookup" */
  const ProtobufCMessageDescriptor *req_desc;
  cf_rpc_validate_fn validate;                /* may be NULL */
  cf_rpc_handler_fn handler;
  int flags;
} cf_rpc_method_t;

/* TLS of the TCP listener: PEM strings (copied; the caller keeps its own). */
typedef struct {
  const char *cert_pem, *key_pem; /* the server's chain (leaf first) and its private key */
  const char *client_ca_pem;      /* NULL: no client certificate asked; else one is required
                                   * and must chain to these CAs (mutual TLS) */
} cf_rpc_tls_t;

typedef struct {
  const char *listen;         /* "unix:/path" */
  const char *tcp_listen;     /* "host:port" or "" / NULL */
  const cf_rpc_tls_t *tls;    /* TLS on tcp_listen; NULL = plaintext (the unix socket is always plaintext) */
  int64_t max_message_bytes;  /* receive and send cap; bigger gets RESOURCE_EXHAUSTED */
  const cf_rpc_method_t *methods;
  int n_methods;
  void *user;                 /* passed to validators and handlers */
} cf_rpc_opts_t;

/* Create the server, bind every address (unix socket chmod 0660; a live socket of another
 * daemon is never stolen) and start the CQ thread. `opts->methods` must outlive the server.
 * Returns 0, or CF_EIO/CF_EBUSY/CF_EINVAL with a detail naming the address. */
int cf_rpc_start(cf_rpc_server_t **out, uv_loop_t *loop, const cf_rpc_opts_t *opts);

/* Certificates for the TCP listener's next handshakes (SIGHUP rotation; connections already up
 * keep theirs). gRPC core asks for them through its certificate-config fetcher when the next
 * connection arrives. Whether a client certificate is required cannot change without a restart.
 * Returns 0, or CF_EINVAL (the server has no TLS listener, or client_ca_pem set/unset differs). */
int cf_rpc_tls_update(cf_rpc_server_t *s, const cf_rpc_tls_t *tls);

/* Enter drain mode: new calls of methods without CF_RPC_DRAIN_OK get UNAVAILABLE. */
void cf_rpc_drain(cf_rpc_server_t *s);

/* Calls whose final status is queued or being sent but not yet handed to the transport
 * (loop thread). Shutdown cancels every call, so the drain waits for this to reach 0 first:
 * otherwise a restore that just finished could lose its status to the cancel. */
int cf_rpc_sending(const cf_rpc_server_t *s);

/* Shut down (loop thread): every call not yet ended gets UNAVAILABLE (callers should have
 * ended theirs first), then grpc_server_shutdown_and_notify, grpc_server_cancel_all_calls; when
 * every completion has been handled, the CQ thread is joined, the server destroyed, the socket
 * file removed and done(arg) runs on the loop. The server is freed after done returns. */
void cf_rpc_shutdown(cf_rpc_server_t *s, void (*done)(void *arg), void *arg);

/* Replies: loop thread only. */
/* Send `msg` and status OK, ending the call. */
void cf_rpc_reply(cf_rpc_call_t *c, const ProtobufCMessage *msg);
/* Send one message of a server stream; the call stays open. Ignored after the call ended. */
void cf_rpc_send(cf_rpc_call_t *c, const ProtobufCMessage *msg);
/* End the call with `status` and a detail message (printf). */
void cf_rpc_finish(cf_rpc_call_t *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Run cb(c, arg) on the loop thread when the client side closes before the call ended
 * (so a stream can stop early). The call stays valid until it is ended with cf_rpc_finish. */
void cf_rpc_on_close(cf_rpc_call_t *c, void (*cb)(cf_rpc_call_t *c, void *arg), void *arg);

/* 1 when the call came over the unix socket (its peer runs on this host, in a process whose
 * pid means something here), 0 over TCP. */
int cf_rpc_call_is_local(cf_rpc_call_t *c);

/* Map a CF_E* code to the nearest gRPC status. */
int cf_rpc_status_from_err(int cf_err);
const char *cf_rpc_status_name(int status);

/* Counters for /metrics and Stats; safe to read from any thread. */
typedef struct {
  uint64_t calls_total, calls_in_flight;
  uint64_t status_total[CF_RPC__NSTATUS];
} cf_rpc_stats_t;
void cf_rpc_stats(const cf_rpc_server_t *s, cf_rpc_stats_t *out);
/* Per-method counters: calls and handler-to-end seconds (sum), for method index i. */
void cf_rpc_method_stats(const cf_rpc_server_t *s, int i, uint64_t *calls, double *seconds_sum);

#endif
