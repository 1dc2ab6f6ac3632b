/* cf_client — C client of cacheflowd (gRPC C core on the client side).
 *
 *   cf_client_t *c;
 *   if (cf_client_connect("unix:/run/cacheflow/cacheflowd.sock", 5000, &c)) { print cf_errmsg(); }
 *   cf_client_lookup(c, engine_id, tokens, n, &cached);
 *   cf_client_close(c);
 *
 * One cf_client_t is used by one thread at a time (each owns its completion queue); open one per
 * thread for concurrency — they may share nothing. Every call blocks until the daemon answers or
 * the per-call timeout passes. Errors: a negative CF_E* code; cf_errmsg() holds
 * "<GRPC_STATUS>: <the daemon's reason>" and cf_client_status() the exact gRPC status.
 * Messages are the protobuf-c types generated from proto/cacheflow/v1/cacheflow.proto.
 */
#ifndef CF_CLIENT_H
#define CF_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "cacheflow/v1/cacheflow.pb-c.h"

typedef struct cf_client_s cf_client_t;

/* Open a channel to `addr` ("unix:/path" or "host:port"); no I/O happens until the first call.
 * `timeout_ms` bounds each call (0 = 30 s). Returns 0 or CF_ENOMEM/CF_EINVAL. Free with
 * cf_client_close. */
int cf_client_connect(const char *addr, int timeout_ms, cf_client_t **out);

/* TLS to a daemon's tcp_listen with tls_cert_file set (the unix socket is always plaintext).
 * Files are PEM; each may be NULL. */
typedef struct {
  const char *ca_file;     /* CAs the daemon's certificate must chain to; NULL = gRPC's default roots */
  const char *cert_file;   /* client certificate (mutual TLS: daemons with tls_client_ca_file) ... */
  const char *key_file;    /* ... and its private key: both or neither */
  const char *server_name; /* name checked against the daemon's certificate; NULL = addr's host */
} cf_client_tls_t;
/* cf_client_connect over TLS (`tls` NULL = plaintext, as cf_client_connect). The files are read
 * now: CF_EIO/CF_EINVAL name a missing file or a cert without its key. A certificate the daemon
 * refuses (or one of the daemon's the client refuses) shows at the first call as UNAVAILABLE. */
int cf_client_connect_tls(const char *addr, int timeout_ms, const cf_client_tls_t *tls, cf_client_t **out);
void cf_client_close(cf_client_t *c);

/* gRPC status of the last call (0 = OK) and its detail string (valid until the next call). */
int cf_client_status(const cf_client_t *c);
const char *cf_client_detail(const cf_client_t *c);

/* Unary call of `method` ("/cacheflow.v1.Admin/Stats"). On success *resp is owned by the
 * caller: free with protobuf_c_message_free_unpacked(*resp, NULL). */
int cf_client_call(cf_client_t *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp);
/* Unary call with raw request bytes (tests send malformed ones); the reply is discarded. */
int cf_client_call_raw(cf_client_t *c, const char *method, const void *req, size_t len);

/* grpc.health.v1.Health/Check of the whole server: *serving = 1 SERVING, 0 otherwise. */
int cf_client_health(cf_client_t *c, int *serving);

/* RegisterEngine: LayerLayout carries K's four byte strides (dim_stride 0 = element size) and
 * optionally V's own (v_strides); kv_head_start/kv_head_count/tp_group register a TP shard. */
int cf_client_register(cf_client_t *c, const Cacheflow__V1__RegisterEngineRequest *req, uint64_t *engine_id);
int cf_client_unregister(cf_client_t *c, uint64_t engine_id);
/* Longest stored prefix of tokens[0..n) in tokens (*cached), optional per-tier split
 * (cpu, ssd; may be NULL). */
int cf_client_lookup(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, uint32_t *cached,
                     uint32_t *cpu_tokens, uint32_t *ssd_tokens);
/* A run of consecutive tokens in one tier (LookupResponse.runs): tier 0 none (a hole, or past
 * the last stored chunk), 1 CPU, 2 SSD, 3 remote. */
typedef struct {
  int tier;
  uint32_t tokens;
} cf_client_run_t;
/* Every stored chunk, not only the leading run: *stored (tokens of all stored chunks) and, when
 * runs is not NULL, the runs covering tokens[0..n) in order (*runs malloc'd, free() it; *n_runs). */
int cf_client_lookup_runs(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, uint32_t *stored,
                          cf_client_run_t **runs, size_t *n_runs);
int cf_client_save(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, const uint32_t *blocks,
                   size_t nblocks, uint32_t *saved, int *durable);
/* Save with flags: CF_CLIENT_SAVE_DURABLE replies only once the chunks are on the SSD tier
 * (FAILED_PRECONDITION without one). *pending (may be NULL): a TP shard's tokens held until the
 * group's other shards saved their heads (SaveResponse.pending_tokens). */
enum { CF_CLIENT_SAVE_DURABLE = 1 };
int cf_client_save2(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, const uint32_t *blocks,
                    size_t nblocks, unsigned flags, uint32_t *saved, uint32_t *pending, int *durable);

/* Restore: fill a Cacheflow__V1__RestoreRequest (present_tokens = k when the engine already
 * holds tokens [0, k): only [k, n) is written). Called for each streamed event (plan, layers
 * ready, final stats); return nonzero to cancel. */
typedef int (*cf_client_restore_cb)(void *arg, const Cacheflow__V1__RestoreEvent *ev);
/* Server-streaming Restore: returns 0 once the daemon ended the stream with OK. */
int cf_client_restore(cf_client_t *c, const Cacheflow__V1__RestoreRequest *req, cf_client_restore_cb cb, void *arg);

/* Admin. *out owned by the caller (…__free_unpacked(*out, NULL)). */
int cf_client_stats(cf_client_t *c, Cacheflow__V1__StatsResponse **out);
/* Admin.Flush: every chunk saved so far written through to SSD and fsynced (then durable).
 * *ssd_chunks (may be NULL): chunks on SSD afterwards. FAILED_PRECONDITION without an SSD tier. */
int cf_client_flush(cf_client_t *c, uint64_t *ssd_chunks);
int cf_client_evict(cf_client_t *c, int tier, uint64_t bytes, uint64_t *bytes_evicted, uint64_t *chunks_evicted);
int cf_client_get_config(cf_client_t *c, const char *name, Cacheflow__V1__GetConfigResponse **out);
/* Admin.Trace: restore restore_id's executed steps and plan (0: the latest traced restore). */
int cf_client_trace(cf_client_t *c, uint64_t restore_id, Cacheflow__V1__TraceResponse **out);

#endif

/* Convenience for CPU engines and tools: create (or reuse) the shared-memory file `shm_path`
 * sized for a standard paged layout — per layer K then V, each [num_blocks][block_size]
 * [kv_heads][head_dim] of `dtype` (a Cacheflow__V1__DType; DTYPE_UNSPECIFIED = the daemon's
 * kv_dtype from Stats) — ask the daemon for its model (Stats) and register it. *file_bytes receives the file size. Returns 0 or CF_E*. */
int cf_client_register_shm(cf_client_t *c, const char *shm_path, uint32_t block_size, uint32_t num_blocks, int dtype,
                           const char *name, uint64_t *engine_id, uint64_t *file_bytes);
