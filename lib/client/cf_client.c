/* cf_client — blocking client calls over gRPC C core (one pluck completion queue per client). */
#include "client/cf_client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "util/cf_err.h"

struct cf_client_s {
  grpc_channel *ch;
  grpc_completion_queue *cq;
  int timeout_ms;
  int status;
  char detail[1024];
};

static const char *const cf__names[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

/* gRPC status -> the nearest CF_E* code. */
static int cf__err_of(int st) {
  switch (st) {
    case GRPC_STATUS_OK: return 0;
    case GRPC_STATUS_INVALID_ARGUMENT: case GRPC_STATUS_OUT_OF_RANGE: return CF_EINVAL;
    case GRPC_STATUS_NOT_FOUND: return CF_ENOTFOUND;
    case GRPC_STATUS_ALREADY_EXISTS: return CF_EEXIST;
    case GRPC_STATUS_PERMISSION_DENIED: case GRPC_STATUS_UNAUTHENTICATED: return CF_EACCES;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return CF_ENOSPC;
    case GRPC_STATUS_FAILED_PRECONDITION: case GRPC_STATUS_UNIMPLEMENTED: return CF_EUNSUPPORTED;
    case GRPC_STATUS_UNAVAILABLE: return CF_EAGAIN;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return CF_ETIMEDOUT;
    case GRPC_STATUS_CANCELLED: case GRPC_STATUS_ABORTED: return CF_ECANCELED;
    case GRPC_STATUS_DATA_LOSS: return CF_ECORRUPT;
    default: return CF_EPROTO;
  }
}

/* A PEM file as a NUL-terminated string (certificates are kilobytes: 4 MiB is a wrong file). */
static int cf__read_pem(const char *what, const char *path, char **out) {
  *out = NULL;
  if (!path) return 0;
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(CF_EIO, "client: %s %s: cannot open", what, path);
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) { fclose(f); return cf_seterr(CF_ENOMEM, "client: %s %s", what, path); }
    n += fread(buf + n, 1, cap - 1 - n, f);
    if (n < cap - 1 || feof(f) || ferror(f)) break;
    if (cap >= (4u << 20)) { free(buf); fclose(f); return cf_seterr(CF_EINVAL, "client: %s %s: larger than 4 MiB", what, path); }
    char *t = realloc(buf, cap *= 2);
    if (!t) free(buf);
    buf = t;
  }
  int err = ferror(f);
  fclose(f);
  if (err) { free(buf); return cf_seterr(CF_EIO, "client: %s %s: read error", what, path); }
  buf[n] = 0;
  *out = buf;
  return 0;
}

/* SSL channel credentials from the files of `t`. */
static int cf__tls_creds(const cf_client_tls_t *t, grpc_channel_credentials **out) {
  *out = NULL;
  if ((t->cert_file == NULL) != (t->key_file == NULL))
    return cf_seterr(CF_EINVAL, "client: TLS client certificate and key go together (got only the %s)",
                     t->cert_file ? "certificate" : "key");
  char *ca = NULL, *cert = NULL, *key = NULL;
  int rc = cf__read_pem("TLS CA", t->ca_file, &ca);
  if (!rc) rc = cf__read_pem("TLS certificate", t->cert_file, &cert);
  if (!rc) rc = cf__read_pem("TLS key", t->key_file, &key);
  if (!rc) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    *out = grpc_ssl_credentials_create(ca, cert ? &pair : NULL, NULL, NULL); /* copies the strings */
    if (!*out) rc = cf_seterr(CF_EINVAL, "client: gRPC refused the TLS credentials");
  }
  if (key) memset(key, 0, strlen(key));
  free(ca);
  free(cert);
  free(key);
  return rc;
}

int cf_client_connect(const char *addr, int timeout_ms, cf_client_t **out) {
  return cf_client_connect_tls(addr, timeout_ms, NULL, out);
}

int cf_client_connect_tls(const char *addr, int timeout_ms, const cf_client_tls_t *tls, cf_client_t **out) {
  *out = NULL;
  if (!addr || !*addr) return cf_seterr(CF_EINVAL, "client: empty address");
  grpc_init();
  grpc_channel_credentials *cr = NULL;
  int rc = tls ? cf__tls_creds(tls, &cr) : 0;
  if (rc) { grpc_shutdown(); return rc; }
  if (!cr) cr = grpc_insecure_credentials_create();
  cf_client_t *c = calloc(1, sizeof *c);
  if (!c) { grpc_channel_credentials_release(cr); grpc_shutdown(); return cf_seterr(CF_ENOMEM, "client"); }
  grpc_arg args[3];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[0].value.integer = 64 << 20;
  /* A private subchannel per client: 64 threads x 1 client each stay independent connections. */
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[1].value.integer = 1;
  size_t nargs = 2;
  if (tls && tls->server_name) {
    args[2].type = GRPC_ARG_STRING;
    args[2].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
    args[2].value.string = (char *)tls->server_name;
    nargs = 3;
  }
  grpc_channel_args ca = {nargs, args};
  c->ch = grpc_channel_create(addr, cr, &ca);
  grpc_channel_credentials_release(cr);
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
  if (!c->ch || !c->cq) { cf_client_close(c); return cf_seterr(CF_ENOMEM, "client: %s", addr); }
  *out = c;
  return 0;
}

void cf_client_close(cf_client_t *c) {
  if (!c) return;
  if (c->ch) grpc_channel_destroy(c->ch);
  if (c->cq) {
    grpc_completion_queue_shutdown(c->cq);
    grpc_completion_queue_destroy(c->cq);
  }
  free(c);
  grpc_shutdown();
}

int cf_client_status(const cf_client_t *c) { return c->status; }
const char *cf_client_detail(const cf_client_t *c) { return c->detail; }

static grpc_call *cf__new_call(cf_client_t *c, const char *method) {
  grpc_slice m = grpc_slice_from_copied_string(method);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(c->timeout_ms, GPR_TIMESPAN));
  grpc_call *call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m, NULL, dl, NULL);
  grpc_slice_unref(m);
  return call;
}

/* Run one batch and wait for it. Returns 1 if the batch succeeded. */
static int cf__run(cf_client_t *c, grpc_call *call, const grpc_op *ops, size_t n) {
  int tag;
  if (grpc_call_start_batch(call, ops, n, &tag, NULL) != GRPC_CALL_OK) return 0;
  grpc_event ev = grpc_completion_queue_pluck(c->cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static int cf__set_status(cf_client_t *c, const char *method, grpc_status_code st, grpc_slice details) {
  c->status = (int)st;
  size_t n = GRPC_SLICE_LENGTH(details);
  if (n >= sizeof c->detail) n = sizeof c->detail - 1;
  memcpy(c->detail, GRPC_SLICE_START_PTR(details), n);
  c->detail[n] = 0;
  if (st == GRPC_STATUS_OK) return 0;
  return cf_seterr(cf__err_of(st), "%s: %s: %s", method, (unsigned)st < 17 ? cf__names[st] : "?", c->detail);
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

static ProtobufCMessage *cf__unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d) {
  grpc_byte_buffer_reader rd;
  if (!grpc_byte_buffer_reader_init(&rd, bb)) return NULL;
  grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
  grpc_slice_unref(sl);
  return m;
}

/* The client's half of a call: initial metadata, the one request message, half-close. */
static void cf__request_ops(grpc_op ops[3], grpc_byte_buffer *req) {
  memset(ops, 0, 3 * sizeof *ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = req;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
}

/* The unary exchange with a ready request buffer (consumed). */
static int cf__unary(cf_client_t *c, const char *method, grpc_byte_buffer *req,
                     const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp) {
  if (resp) *resp = NULL;
  c->status = GRPC_STATUS_UNKNOWN;
  c->detail[0] = 0;
  grpc_call *call = cf__new_call(c, method);
  if (!call) { grpc_byte_buffer_destroy(req); return cf_seterr(CF_EINTERNAL, "%s: cannot create call", method); }
  grpc_metadata_array md_in, trailing;
  grpc_metadata_array_init(&md_in);
  grpc_metadata_array_init(&trailing);
  grpc_byte_buffer *rbuf = NULL;
  grpc_status_code st = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  cf__request_ops(ops, req);
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_in;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &rbuf;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
  ops[5].data.recv_status_on_client.status = &st;
  ops[5].data.recv_status_on_client.status_details = &details;
  int rc;
  if (!cf__run(c, call, ops, 6)) rc = cf_seterr(CF_EPROTO, "%s: call failed", method);
  else rc = cf__set_status(c, method, st, details);
  if (!rc && resp_desc && resp) {
    if (!rbuf || !(*resp = cf__unpack(rbuf, resp_desc)))
      rc = cf_seterr(CF_EPROTO, "%s: reply is not a valid %s", method, resp_desc->name);
  }
  if (rbuf) grpc_byte_buffer_destroy(rbuf);
  grpc_byte_buffer_destroy(req);
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&md_in);
  grpc_metadata_array_destroy(&trailing);
  grpc_call_unref(call);
  return rc;
}

int cf_client_call(cf_client_t *c, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp) {
  grpc_byte_buffer *bb = cf__pack(req);
  if (!bb) return cf_seterr(CF_ENOMEM, "%s: packing the request", method);
  return cf__unary(c, method, bb, resp_desc, resp);
}

int cf_client_call_raw(cf_client_t *c, const char *method, const void *req, size_t len) {
  grpc_slice sl = grpc_slice_from_copied_buffer(req, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  return cf__unary(c, method, bb, NULL, NULL);
}

int cf_client_health(cf_client_t *c, int *serving) {
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT; /* service "" = the server */
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/grpc.health.v1.Health/Check", &req.base, &grpc__health__v1__health_check_response__descriptor, &m);
  if (rc) return rc;
  *serving = ((Grpc__Health__V1__HealthCheckResponse *)m)->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_register(cf_client_t *c, const Cacheflow__V1__RegisterEngineRequest *req, uint64_t *engine_id) {
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/cacheflow.v1.CacheFlow/RegisterEngine", &req->base,
                          &cacheflow__v1__register_engine_response__descriptor, &m);
  if (rc) return rc;
  *engine_id = ((Cacheflow__V1__RegisterEngineResponse *)m)->engine_id;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_unregister(cf_client_t *c, uint64_t engine_id) {
  Cacheflow__V1__UnregisterRequest req = CACHEFLOW__V1__UNREGISTER_REQUEST__INIT;
  req.engine_id = engine_id;
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/cacheflow.v1.CacheFlow/Unregister", &req.base, &cacheflow__v1__unregister_response__descriptor, &m);
  if (!rc) protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Lookup's response (free with protobuf_c_message_free_unpacked). */
static int cf__lookup_call(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, ProtobufCMessage **m) {
  Cacheflow__V1__LookupRequest req = CACHEFLOW__V1__LOOKUP_REQUEST__INIT;
  req.engine_id = engine_id;
  req.token_ids = (uint32_t *)tokens;
  req.n_token_ids = n;
  return cf_client_call(c, "/cacheflow.v1.CacheFlow/Lookup", &req.base, &cacheflow__v1__lookup_response__descriptor, m);
}

int cf_client_lookup_runs(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, uint32_t *stored,
                          cf_client_run_t **runs, size_t *n_runs) {
  ProtobufCMessage *m;
  int rc = cf__lookup_call(c, engine_id, tokens, n, &m);
  if (rc) return rc;
  Cacheflow__V1__LookupResponse *r = (void *)m;
  *stored = r->stored_tokens;
  if (runs) {
    *n_runs = r->n_runs;
    *runs = malloc((r->n_runs ? r->n_runs : 1) * sizeof **runs);
    if (!*runs) rc = cf_seterr(CF_ENOMEM, "lookup: %zu runs", r->n_runs);
    for (size_t i = 0; !rc && i < r->n_runs; i++) (*runs)[i] = (cf_client_run_t){(int)r->runs[i]->tier, r->runs[i]->tokens};
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

int cf_client_lookup(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, uint32_t *cached,
                     uint32_t *cpu_tokens, uint32_t *ssd_tokens) {
  ProtobufCMessage *m;
  int rc = cf__lookup_call(c, engine_id, tokens, n, &m);
  if (rc) return rc;
  Cacheflow__V1__LookupResponse *r = (void *)m;
  *cached = r->cached_tokens;
  if (cpu_tokens) *cpu_tokens = 0;
  if (ssd_tokens) *ssd_tokens = 0;
  for (size_t i = 0; i < r->n_per_tier; i++) {
    if (r->per_tier[i]->tier == CACHEFLOW__V1__TIER__TIER_CPU && cpu_tokens) *cpu_tokens = r->per_tier[i]->tokens;
    if (r->per_tier[i]->tier == CACHEFLOW__V1__TIER__TIER_SSD && ssd_tokens) *ssd_tokens = r->per_tier[i]->tokens;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_save2(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, const uint32_t *blocks,
                    size_t nblocks, unsigned flags, uint32_t *saved, uint32_t *pending, int *durable) {
  Cacheflow__V1__SaveRequest req = CACHEFLOW__V1__SAVE_REQUEST__INIT;
  req.engine_id = engine_id;
  req.token_ids = (uint32_t *)tokens;
  req.n_token_ids = n;
  req.block_ids = (uint32_t *)blocks;
  req.n_block_ids = nblocks;
  req.durable = (flags & CF_CLIENT_SAVE_DURABLE) != 0;
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/cacheflow.v1.CacheFlow/Save", &req.base, &cacheflow__v1__save_response__descriptor, &m);
  if (rc) return rc;
  const Cacheflow__V1__SaveResponse *r = (const Cacheflow__V1__SaveResponse *)m;
  if (saved) *saved = r->saved_tokens;
  if (pending) *pending = r->pending_tokens;
  if (durable) *durable = r->durable;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_save(cf_client_t *c, uint64_t engine_id, const uint32_t *tokens, size_t n, const uint32_t *blocks,
                   size_t nblocks, uint32_t *saved, int *durable) {
  return cf_client_save2(c, engine_id, tokens, n, blocks, nblocks, 0, saved, NULL, durable);
}

int cf_client_restore(cf_client_t *c, const Cacheflow__V1__RestoreRequest *req, cf_client_restore_cb cb, void *arg) {
  const char *method = "/cacheflow.v1.CacheFlow/Restore";
  c->status = GRPC_STATUS_UNKNOWN;
  c->detail[0] = 0;
  grpc_byte_buffer *bb = cf__pack(&req->base);
  if (!bb) return cf_seterr(CF_ENOMEM, "%s: packing the request", method);
  grpc_call *call = cf__new_call(c, method);
  if (!call) { grpc_byte_buffer_destroy(bb); return cf_seterr(CF_EINTERNAL, "%s: cannot create call", method); }
  grpc_metadata_array md_in, trailing;
  grpc_metadata_array_init(&md_in);
  grpc_metadata_array_init(&trailing);
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  cf__request_ops(ops, bb);
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_in;
  int rc = 0;
  if (cf__run(c, call, ops, 4)) {
    for (;;) { /* one RECV_MESSAGE batch per event until the stream ends */
      grpc_byte_buffer *rbuf = NULL;
      grpc_op rop;
      memset(&rop, 0, sizeof rop);
      rop.op = GRPC_OP_RECV_MESSAGE;
      rop.data.recv_message.recv_message = &rbuf;
      if (!cf__run(c, call, &rop, 1) || !rbuf) break;
      ProtobufCMessage *ev = cf__unpack(rbuf, &cacheflow__v1__restore_event__descriptor);
      grpc_byte_buffer_destroy(rbuf);
      if (!ev) { rc = cf_seterr(CF_EPROTO, "%s: stream carried a malformed RestoreEvent", method); grpc_call_cancel(call, NULL); break; }
      int stop = cb ? cb(arg, (Cacheflow__V1__RestoreEvent *)ev) : 0;
      protobuf_c_message_free_unpacked(ev, NULL);
      if (stop) { grpc_call_cancel(call, NULL); break; }
    }
  }
  grpc_status_code st = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op sop;
  memset(&sop, 0, sizeof sop);
  sop.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  sop.data.recv_status_on_client.trailing_metadata = &trailing;
  sop.data.recv_status_on_client.status = &st;
  sop.data.recv_status_on_client.status_details = &details;
  if (!cf__run(c, call, &sop, 1)) { if (!rc) rc = cf_seterr(CF_EPROTO, "%s: no status", method); }
  else { int rs = cf__set_status(c, method, st, details); if (!rc) rc = rs; }
  grpc_slice_unref(details);
  grpc_byte_buffer_destroy(bb);
  grpc_metadata_array_destroy(&md_in);
  grpc_metadata_array_destroy(&trailing);
  grpc_call_unref(call);
  return rc;
}

int cf_client_stats(cf_client_t *c, Cacheflow__V1__StatsResponse **out) {
  Cacheflow__V1__StatsRequest req = CACHEFLOW__V1__STATS_REQUEST__INIT;
  return cf_client_call(c, "/cacheflow.v1.Admin/Stats", &req.base, &cacheflow__v1__stats_response__descriptor,
                        (ProtobufCMessage **)out);
}

int cf_client_trace(cf_client_t *c, uint64_t restore_id, Cacheflow__V1__TraceResponse **out) {
  Cacheflow__V1__TraceRequest req = CACHEFLOW__V1__TRACE_REQUEST__INIT;
  req.restore_id = restore_id;
  return cf_client_call(c, "/cacheflow.v1.Admin/Trace", &req.base, &cacheflow__v1__trace_response__descriptor,
                        (ProtobufCMessage **)out);
}

int cf_client_flush(cf_client_t *c, uint64_t *ssd_chunks) {
  Cacheflow__V1__FlushRequest req = CACHEFLOW__V1__FLUSH_REQUEST__INIT;
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/cacheflow.v1.Admin/Flush", &req.base, &cacheflow__v1__flush_response__descriptor, &m);
  if (rc) return rc;
  if (ssd_chunks) *ssd_chunks = ((Cacheflow__V1__FlushResponse *)m)->ssd_chunks;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_evict(cf_client_t *c, int tier, uint64_t bytes, uint64_t *bytes_evicted, uint64_t *chunks_evicted) {
  Cacheflow__V1__EvictRequest req = CACHEFLOW__V1__EVICT_REQUEST__INIT;
  req.tier = tier;
  req.bytes = bytes;
  ProtobufCMessage *m;
  int rc = cf_client_call(c, "/cacheflow.v1.Admin/Evict", &req.base, &cacheflow__v1__evict_response__descriptor, &m);
  if (rc) return rc;
  if (bytes_evicted) *bytes_evicted = ((Cacheflow__V1__EvictResponse *)m)->bytes_evicted;
  if (chunks_evicted) *chunks_evicted = ((Cacheflow__V1__EvictResponse *)m)->chunks_evicted;
  protobuf_c_message_free_unpacked(m, NULL);
  return 0;
}

int cf_client_get_config(cf_client_t *c, const char *name, Cacheflow__V1__GetConfigResponse **out) {
  Cacheflow__V1__GetConfigRequest req = CACHEFLOW__V1__GET_CONFIG_REQUEST__INIT;
  req.name = (char *)(name ? name : "");
  return cf_client_call(c, "/cacheflow.v1.Admin/GetConfig", &req.base, &cacheflow__v1__get_config_response__descriptor,
                        (ProtobufCMessage **)out);
}

int cf_client_register_shm(cf_client_t *c, const char *shm_path, uint32_t block_size, uint32_t num_blocks, int dtype,
                           const char *name, uint64_t *engine_id, uint64_t *file_bytes) {
  Cacheflow__V1__StatsResponse *st;
  int rc = cf_client_stats(c, &st);
  if (rc) return rc;
  if (st->model_layers == 0 || st->model_fingerprint.len != 16) {
    cacheflow__v1__stats_response__free_unpacked(st, NULL);
    return cf_seterr(CF_EUNSUPPORTED, "daemon serves no model");
  }
  /* unspecified: the daemon's kv_dtype (the only one it accepts), F32 from a daemon that names none */
  if (dtype == CACHEFLOW__V1__DTYPE__DTYPE_UNSPECIFIED)
    dtype = st->kv_dtype ? (int)st->kv_dtype : CACHEFLOW__V1__DTYPE__DTYPE_F32;
  size_t esz = dtype == CACHEFLOW__V1__DTYPE__DTYPE_F32 ? 4 : 2;
  uint32_t L = st->model_layers;
  uint64_t head = (uint64_t)st->model_head_dim * esz, tok = head * st->model_kv_heads, blk = tok * block_size;
  uint64_t buf = blk * num_blocks, total = buf * 2 * L;
  FILE *f = fopen(shm_path, "a");
  int ok = f && ftruncate(fileno(f), (off_t)total) == 0;
  if (f) fclose(f);
  if (!ok) { cacheflow__v1__stats_response__free_unpacked(st, NULL); return cf_seterr(CF_EIO, "%s: cannot size to %llu bytes", shm_path, (unsigned long long)total); }
  Cacheflow__V1__LayerLayout *lay = calloc(L, sizeof *lay), **lp = calloc(L, sizeof *lp);
  Cacheflow__V1__KvBuffer *kv = calloc(2 * L, sizeof *kv);
  if (!lay || !lp || !kv) { free(lay); free(lp); free(kv); cacheflow__v1__stats_response__free_unpacked(st, NULL); return cf_seterr(CF_ENOMEM, "register"); }
  for (uint32_t l = 0; l < L; l++) {
    cacheflow__v1__layer_layout__init(&lay[l]);
    for (int j = 0; j < 2; j++) {
      Cacheflow__V1__KvBuffer *b = &kv[2 * l + j];
      cacheflow__v1__kv_buffer__init(b);
      b->location_case = CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH;
      b->shm_path = (char *)shm_path;
      b->offset = buf * (2 * l + j);
    }
    lay[l].layer = l;
    lay[l].k = &kv[2 * l];
    lay[l].v = &kv[2 * l + 1];
    lay[l].block_size = block_size;
    lay[l].num_blocks = num_blocks;
    lay[l].block_stride = blk;
    lay[l].token_stride = tok;
    lay[l].head_stride = head;
    lay[l].dtype = dtype;
    lay[l].num_kv_heads = st->model_kv_heads;
    lay[l].head_dim = st->model_head_dim;
    lp[l] = &lay[l];
  }
  Cacheflow__V1__RegisterEngineRequest req = CACHEFLOW__V1__REGISTER_ENGINE_REQUEST__INIT;
  req.model_fingerprint = st->model_fingerprint;
  req.n_layers = L;
  req.layers = lp;
  req.name = (char *)(name ? name : "");
  rc = cf_client_register(c, &req, engine_id);
  if (file_bytes) *file_bytes = total;
  free(lay); free(lp); free(kv);
  cacheflow__v1__stats_response__free_unpacked(st, NULL);
  return rc;
}
