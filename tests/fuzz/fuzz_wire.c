/* libFuzzer target: the gRPC request surface. Arbitrary bytes go through protobuf-c unpacking
 * of each request type and the checks every handler runs (daemon/cf_reqcheck: the functions
 * cf_service's validators and handlers call), against an engine table in a realistic state.
 *
 * Input: byte 0 picks the starting state (bits 0-3: which of four baseline engines are
 * registered — dense NHD bf16, HND f16 with one-token blocks, a TP shard, vLLM's CPU f32
 * layout with V's own strides; bit 7: the store holds bf16 cells, so engines of other dtypes
 * are refused; bit 6: the daemon keeps no restore traces). Then records [kind][len lo][len hi]
 * [len bytes of a serialized request]: kind mod 12 = RegisterEngine, Unregister, Lookup, Save,
 * Restore, Admin.Evict, Admin.GetConfig, Health.Check (and Watch: the same request), Admin.Stats,
 * Admin.Trace, Admin.Flush, OfferWeights — every request of proto/. So one input registers an
 * engine, saves with it, offers weights as it, unregisters it and restores into it, as a client could.
 *
 * What must hold (else __builtin_trap, a crash the fuzzer reports):
 *   - a refusal always names what was wrong (a non-empty detail) with a real gRPC status;
 *   - an accepted registration has every layer once and buffers that hold the whole layout;
 *   - an accepted Save or Restore addresses only bytes inside the engine's registered buffers
 *     (every element of every block it names, through the strides registration accepted) and
 *     only tokens inside the model's vocabulary — what the data path then writes or reads;
 *   - an accepted OfferWeights names a registered engine and holds tensors of 1-3 dimensions,
 *     a known dtype, contiguous strides, tp_rank < tp_size, each inside its shm file (what
 *     cf_weights then maps and reads).
 *   - Admin.Trace finds a kept restore (daemon/cf_trace, two restores recorded per input) or
 *     says which id it lacks, and the record it copies out is whole;
 *   - Admin.Stats: the StatsResponse the handler builds, its MemoryStats (budgets, use, peaks)
 *     filled from the record's bytes, decodes to the same values, as a client reads it.
 * The engine table lives per input (libFuzzer needs an input to mean the same every run).
 *
 * tests/unit/test_fuzz_corpus.c includes this file and replays tests/fuzz/corpus/wire/ under
 * `make test` through cf_fuzz_wire_run (valid_* files: every record accepted; bad_*: at least
 * one refused). */
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cacheflow/v1/cacheflow.pb-c.h"
#include "cf_config.h"
#include "cf_model_info.h"
#include "cf_reqcheck.h"
#include "cf_rpc.h"
#include "cf_trace.h"
#include "grpc/health/v1/health.pb-c.h"
#include "ipc/cf_kvmap.h"
#include "util/cf_err.h"

#define CF_FW_ENGINES 8
#define CF_FW_LAYERS 2
#define CF_FW_HEADS 4
#define CF_FW_HEAD_DIM 8
#define CF_FW_VOCAB 32000
#define CF_FW_SHM_BYTES (4u << 20)
#define CF_FW_SHM "/tmp/cf-fuzz-wire.kv"

typedef struct {
  uint64_t id;
  uint32_t block_size, num_blocks;
  int heads, n_layers;
  size_t esz;
  uint64_t koff[CF_FW_LAYERS], voff[CF_FW_LAYERS];
  cf_kv_strides_t ks[CF_FW_LAYERS], vs[CF_FW_LAYERS];
  uint64_t fsize; /* the (one) shm file's size: every buffer of the baseline engines lives there */
  int shm;
} cf_fw_engine_t;

static cf_config_t g_cfg;
static cf_model_info_t g_model;
static char g_shm[256];
static cf_fw_engine_t g_eng[CF_FW_ENGINES];
static int g_n;
static uint64_t g_next_id;
static int g_kv_dtype;
static cf_trace_t *g_trace; /* per input: NULL when the input says no traces are kept */

/* Two restores recorded the way the executor records them (cf_trace_begin/end): ids 7 and 9,
 * 3 chunks of 16 tokens (the last partial), 2 plan ops, 2 executed steps. */
static void cf_fw_trace_seed(cf_trace_t *t) {
  for (uint64_t id = 7; id <= 9; id += 2) {
    cf_exec_trace_t *tr = cf_trace_begin(t);
    if (!tr) __builtin_trap();
    for (int i = 0; i < 2; i++) {
      tr->ev[i] = (cf_exec_tev_t){0};
      tr->ev[i].t1_ns = 1000 * (i + 1);
    }
    atomic_store(&tr->n, 2);
    int32_t h[3] = {2, 1, 0};
    uint8_t tiers[3] = {1, 2, 0};
    cf_plan_op_t ops[2];
    memset(ops, 0, sizeof ops);
    cf_exec_req_t r;
    memset(&r, 0, sizeof r);
    r.n_tokens = 40;
    r.chunk_tokens = 16;
    r.h = h;
    r.req_id = id;
    cf_restore_plan_t pl;
    memset(&pl, 0, sizeof pl);
    pl.ops = ops;
    pl.n_ops = 2;
    pl.tiers = tiers;
    cf_trace_end(t, tr, &r, &pl, CF_FW_LAYERS, 1);
  }
}

static void cf_fw_init(void) {
  static int done;
  if (done) return;
  done = 1;
  cf_config_defaults(&g_cfg);
  g_model = (cf_model_info_t){.n_layers = CF_FW_LAYERS, .n_kv_heads = CF_FW_HEADS, .head_dim = CF_FW_HEAD_DIM,
                              .vocab = CF_FW_VOCAB};
  for (int i = 0; i < 16; i++) g_model.fingerprint[i] = (uint8_t)(0xc0 + i);
  snprintf(g_model.dir, sizeof g_model.dir, "/fuzz/model");
  /* the engines' buffers: a sparse file the registration checks stat (nothing maps it). A fixed
   * name, so corpus inputs can register buffers there; left in place (parallel fuzz jobs share it). */
  snprintf(g_shm, sizeof g_shm, "%s", CF_FW_SHM);
  int fd = open(g_shm, O_RDWR | O_CREAT, 0600);
  if (fd < 0 || ftruncate(fd, CF_FW_SHM_BYTES) != 0) __builtin_trap();
  close(fd);
}

/* One baseline layout: strides of K (and V when vs is given) for the model's geometry. */
typedef struct {
  const char *name;
  int dtype;
  uint32_t block_size, num_blocks, head0, heads;
  uint64_t tp_group;
  cf_kv_strides_t k, v; /* v all zero: V = K's strides */
} cf_fw_base_t;

static const cf_fw_base_t g_base[4] = {
  /* NHD dense bf16: [block][token][head][dim] */
  {"nhd-bf16", CACHEFLOW__V1__DTYPE__DTYPE_BF16, 16, 64, 0, 4, 0, {16 * 64, 64, 16, 2}, {0, 0, 0, 0}},
  /* HND f16 with one-token blocks: [block][head][token][dim] */
  {"hnd-f16-bs1", CACHEFLOW__V1__DTYPE__DTYPE_F16, 1, 4096, 0, 4, 0, {64, 16, 16, 0}, {0, 0, 0, 0}},
  /* a TP rank holding KV heads 2..3 */
  {"tp-shard", CACHEFLOW__V1__DTYPE__DTYPE_BF16, 32, 16, 2, 2, 7, {32 * 32, 32, 16, 2}, {0, 0, 0, 0}},
  /* vLLM CPU f32: [block][head][2*head_dim row per token]: K dimension-major, V token-major */
  {"vllm-cpu-f32", CACHEFLOW__V1__DTYPE__DTYPE_F32, 16, 8, 0, 4, 0, {4 * 16 * 8 * 4, 4, 16 * 8 * 4, 16 * 4},
   {4 * 16 * 8 * 4, 8 * 4, 16 * 8 * 4, 4}},
};

/* A real RegisterEngineRequest for a baseline layout, serialized (as a client sends it). */
static size_t cf_fw_pack_base(const cf_fw_base_t *b, uint8_t *out, size_t cap) {
  Cacheflow__V1__LayerLayout L[CF_FW_LAYERS], *Lp[CF_FW_LAYERS];
  Cacheflow__V1__KvBuffer kb[CF_FW_LAYERS], vb[CF_FW_LAYERS];
  Cacheflow__V1__KvStrides vs = CACHEFLOW__V1__KV_STRIDES__INIT;
  vs.block_stride = b->v.block; vs.token_stride = b->v.token;
  vs.head_stride = b->v.head; vs.dim_stride = b->v.dim;
  uint64_t plane = 1u << 18; /* 256 KiB apart: every baseline plane fits */
  for (int l = 0; l < CF_FW_LAYERS; l++) {
    cacheflow__v1__layer_layout__init(&L[l]);
    cacheflow__v1__kv_buffer__init(&kb[l]);
    cacheflow__v1__kv_buffer__init(&vb[l]);
    kb[l].location_case = vb[l].location_case = CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH;
    kb[l].shm_path = vb[l].shm_path = g_shm;
    kb[l].offset = (uint64_t)(2 * l) * plane;
    vb[l].offset = (uint64_t)(2 * l + 1) * plane;
    L[l].layer = (uint32_t)(CF_FW_LAYERS - 1 - l); /* any order */
    L[l].k = &kb[l];
    L[l].v = &vb[l];
    L[l].block_size = b->block_size;
    L[l].num_blocks = b->num_blocks;
    L[l].block_stride = b->k.block;
    L[l].token_stride = b->k.token;
    L[l].head_stride = b->k.head;
    L[l].dim_stride = b->k.dim;
    L[l].dtype = b->dtype;
    L[l].num_kv_heads = b->heads;
    L[l].head_dim = CF_FW_HEAD_DIM;
    if (b->v.block) L[l].v_strides = &vs;
    Lp[l] = &L[l];
  }
  Cacheflow__V1__RegisterEngineRequest r = CACHEFLOW__V1__REGISTER_ENGINE_REQUEST__INIT;
  r.model_fingerprint.data = g_model.fingerprint;
  r.model_fingerprint.len = 16;
  r.n_layers = CF_FW_LAYERS;
  r.layers = Lp;
  r.name = (char *)b->name;
  r.kv_head_start = b->head0;
  r.kv_head_count = b->heads == CF_FW_HEADS ? 0 : b->heads;
  r.tp_group = b->tp_group;
  size_t n = cacheflow__v1__register_engine_request__get_packed_size(&r);
  if (n > cap) __builtin_trap();
  return cacheflow__v1__register_engine_request__pack(&r, out);
}

/* A refusal: a real status and a detail. */
static void cf_fw_refused(int st, const char *why, int *refused, char *first, size_t cap) {
  if (st <= 0 || st >= CF_RPC__NSTATUS || !why[0]) __builtin_trap();
  if ((*refused)++ == 0 && first) snprintf(first, cap, "%s", why);
}

static cf_fw_engine_t *cf_fw_find(uint64_t id) {
  for (int i = 0; i < g_n; i++)
    if (g_eng[i].id == id && id) return &g_eng[i];
  return NULL;
}

static uint64_t cf_fw_last_byte(const cf_fw_engine_t *e, cf_kv_strides_t s, uint32_t blk) {
  return blk * s.block + (uint64_t)(e->block_size - 1) * s.token +
         (uint64_t)(e->heads - 1) * s.head + (uint64_t)(CF_FW_HEAD_DIM - 1) * s.dim + e->esz;
}

/* Every element of every named block lies inside the engine's buffers. */
static void cf_fw_blocks_inside(const cf_fw_engine_t *e, const uint32_t *b, size_t nb) {
  for (size_t i = 0; i < nb; i++) {
    if (b[i] >= e->num_blocks) __builtin_trap();
    if (!e->shm) continue;
    for (int l = 0; l < e->n_layers; l++)
      if (e->koff[l] + cf_fw_last_byte(e, e->ks[l], b[i]) > e->fsize ||
          e->voff[l] + cf_fw_last_byte(e, e->vs[l], b[i]) > e->fsize)
        __builtin_trap();
  }
}

static void cf_fw_tokens_inside(const uint32_t *t, size_t n) {
  if (n == 0 || n > (size_t)g_cfg.max_request_tokens) __builtin_trap();
  for (size_t i = 0; i < n; i++)
    if (t[i] >= CF_FW_VOCAB) __builtin_trap();
}

static int cf_fw_register(const uint8_t *p, size_t n, int *refused, char *first, size_t cap) {
  char why[512] = "";
  Cacheflow__V1__RegisterEngineRequest *r = cacheflow__v1__register_engine_request__unpack(NULL, n, p);
  if (!r) { cf_fw_refused(CF_RPC_INVALID_ARGUMENT, "malformed RegisterEngineRequest", refused, first, cap); return -1; }
  int heads = 0, st = 0;
  if (cf_reqcheck_register_fields(&g_cfg, r, why, sizeof why)) st = CF_RPC_INVALID_ARGUMENT;
  else st = cf_reqcheck_register_model(&g_cfg, &g_model, g_kv_dtype, r, &heads, why, sizeof why);
  if (!st && g_n == CF_FW_ENGINES) { st = CF_RPC_RESOURCE_EXHAUSTED; snprintf(why, sizeof why, "engine table full"); }
  if (st) {
    cf_fw_refused(st, why, refused, first, cap);
    cacheflow__v1__register_engine_request__free_unpacked(r, NULL);
    return -1;
  }
  /* accepted: what cf_service would store, checked for what the data path relies on */
  cf_fw_engine_t *e = &g_eng[g_n++];
  memset(e, 0, sizeof *e);
  e->id = ++g_next_id;
  e->n_layers = (int)r->n_layers;
  e->block_size = r->layers[0]->block_size;
  e->num_blocks = r->layers[0]->num_blocks;
  e->heads = heads;
  e->esz = cf_reqcheck_dtype_size(r->layers[0]->dtype);
  if (!e->esz || e->n_layers != CF_FW_LAYERS || heads < 1 || heads > CF_FW_HEADS ||
      r->kv_head_start + (uint32_t)heads > CF_FW_HEADS || e->block_size < 1 ||
      e->block_size > CF_REQCHECK_MAX_BLOCK_SIZE)
    __builtin_trap();
  if (g_kv_dtype && (int)r->layers[0]->dtype != g_kv_dtype) __builtin_trap();
  uint8_t seen[CF_FW_LAYERS] = {0};
  e->shm = r->layers[0]->k->location_case == CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH;
  e->fsize = UINT64_MAX;
  for (size_t i = 0; i < r->n_layers; i++) {
    const Cacheflow__V1__LayerLayout *L = r->layers[i];
    if (L->layer >= CF_FW_LAYERS || seen[L->layer]++) __builtin_trap();
    if (L->block_size != e->block_size || L->num_blocks != e->num_blocks) __builtin_trap();
    e->ks[L->layer] = (cf_kv_strides_t){L->block_stride, L->token_stride, L->head_stride,
                                        L->dim_stride ? L->dim_stride : e->esz};
    e->vs[L->layer] = L->v_strides ? (cf_kv_strides_t){L->v_strides->block_stride, L->v_strides->token_stride,
                                                       L->v_strides->head_stride,
                                                       L->v_strides->dim_stride ? L->v_strides->dim_stride : e->esz}
                                   : e->ks[L->layer];
    e->koff[L->layer] = L->k->offset;
    e->voff[L->layer] = L->v->offset;
    if (e->shm) {
      for (int kv = 0; kv < 2; kv++) {
        struct stat sb;
        const char *path = kv ? L->v->shm_path : L->k->shm_path;
        if (stat(path, &sb) != 0) __builtin_trap();
        if ((uint64_t)sb.st_size < e->fsize) e->fsize = (uint64_t)sb.st_size; /* the smallest bounds all */
      }
    }
  }
  /* the data path's bound: the last block's last element of every plane is inside its file */
  if (e->shm) cf_fw_blocks_inside(e, &(uint32_t){e->num_blocks - 1}, 1);
  cacheflow__v1__register_engine_request__free_unpacked(r, NULL);
  return 0;
}

/* Lookup / Save / Restore: the handlers' front half (engine, tokens), then blocks and fields. */
static int cf_fw_tokreq(int kind, const uint8_t *p, size_t n, int *refused, char *first, size_t cap) {
  char why[512] = "";
  ProtobufCMessage *m = NULL;
  uint64_t id = 0;
  const uint32_t *tok = NULL, *blk = NULL;
  size_t ntok = 0, nblk = 0;
  if (kind == 2) {
    Cacheflow__V1__LookupRequest *r = cacheflow__v1__lookup_request__unpack(NULL, n, p);
    if (r) { m = &r->base; id = r->engine_id; tok = r->token_ids; ntok = r->n_token_ids; }
  } else if (kind == 3) {
    Cacheflow__V1__SaveRequest *r = cacheflow__v1__save_request__unpack(NULL, n, p);
    if (r) { m = &r->base; id = r->engine_id; tok = r->token_ids; ntok = r->n_token_ids; blk = r->block_ids; nblk = r->n_block_ids; }
  } else {
    Cacheflow__V1__RestoreRequest *r = cacheflow__v1__restore_request__unpack(NULL, n, p);
    if (r) { m = &r->base; id = r->engine_id; tok = r->token_ids; ntok = r->n_token_ids; blk = r->block_ids; nblk = r->n_block_ids; }
  }
  if (!m) { cf_fw_refused(CF_RPC_INVALID_ARGUMENT, "malformed request", refused, first, cap); return -1; }
  int st = 0;
  cf_fw_engine_t *e = NULL;
  /* the order of cf_rpc then cf_service: validator, engine, tokens, blocks */
  if (kind == 4 && cf_reqcheck_restore_fields((const Cacheflow__V1__RestoreRequest *)m, why, sizeof why)) st = CF_RPC_INVALID_ARGUMENT;
  else if (!(e = cf_fw_find(id))) { st = CF_RPC_NOT_FOUND; snprintf(why, sizeof why, "engine_id %llu is not registered", (unsigned long long)id); }
  else if (cf_reqcheck_tokens(&g_cfg, &g_model, tok, ntok, why, sizeof why)) st = CF_RPC_INVALID_ARGUMENT;
  else if (kind != 2 && cf_reqcheck_blocks(e->block_size, e->num_blocks, ntok, blk, nblk, why, sizeof why)) st = CF_RPC_INVALID_ARGUMENT;
  if (st) {
    cf_fw_refused(st, why, refused, first, cap);
  } else {
    cf_fw_tokens_inside(tok, ntok);
    if (kind != 2) {
      if (nblk != (ntok + e->block_size - 1) / e->block_size) __builtin_trap();
      cf_fw_blocks_inside(e, blk, nblk);
    }
    if (kind == 4) {
      const Cacheflow__V1__RestoreRequest *r = (const void *)m;
      if (r->present_tokens && r->present_tokens >= ntok) __builtin_trap();
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return st ? -1 : 0;
}

static int cf_fw_unregister(const uint8_t *p, size_t n, int *refused, char *first, size_t cap) {
  Cacheflow__V1__UnregisterRequest *r = cacheflow__v1__unregister_request__unpack(NULL, n, p);
  if (!r) { cf_fw_refused(CF_RPC_INVALID_ARGUMENT, "malformed UnregisterRequest", refused, first, cap); return -1; }
  cf_fw_engine_t *e = cf_fw_find(r->engine_id);
  int rc = 0;
  if (!e) {
    char why[64];
    snprintf(why, sizeof why, "engine_id %llu is not registered", (unsigned long long)r->engine_id);
    cf_fw_refused(CF_RPC_NOT_FOUND, why, refused, first, cap);
    rc = -1;
  } else {
    *e = g_eng[--g_n]; /* ids never repeat: a later request with this id is NOT_FOUND */
  }
  cacheflow__v1__unregister_request__free_unpacked(r, NULL);
  return rc;
}

/* OfferWeights: the validator, the engine, then the model and files (cf_service's order). */
static int cf_fw_offer(const uint8_t *p, size_t n, int *refused, char *first, size_t cap) {
  char why[512] = "";
  Cacheflow__V1__OfferWeightsRequest *r = cacheflow__v1__offer_weights_request__unpack(NULL, n, p);
  if (!r) { cf_fw_refused(CF_RPC_INVALID_ARGUMENT, "malformed OfferWeightsRequest", refused, first, cap); return -1; }
  int st = 0;
  if (cf_reqcheck_offer_fields(r, why, sizeof why)) st = CF_RPC_INVALID_ARGUMENT;
  else if (!cf_fw_find(r->engine_id)) { st = CF_RPC_NOT_FOUND; snprintf(why, sizeof why, "engine_id %llu is not registered", (unsigned long long)r->engine_id); }
  else st = cf_reqcheck_offer_model(&g_model, r, why, sizeof why);
  if (st) {
    cf_fw_refused(st, why, refused, first, cap);
  } else {
    if (!r->n_tensors || memcmp(r->model_fingerprint.data, g_model.fingerprint, 16)) __builtin_trap();
    for (size_t i = 0; i < r->n_tensors; i++) {
      const Cacheflow__V1__WeightTensor *q = r->tensors[i];
      size_t esz = cf_reqcheck_dtype_size(q->dtype);
      if (!esz || q->n_shape < 1 || q->n_shape > 3 || !q->name[0]) __builtin_trap();
      if (q->tp_rank >= (q->tp_size ? q->tp_size : 1)) __builtin_trap();
      uint64_t el = 1;
      for (size_t d = 0; d < q->n_shape; d++) el *= q->shape[d];
      if (q->n_strides && q->strides[q->n_shape - 1] != esz && q->shape[q->n_shape - 1] != 1) __builtin_trap();
      if (q->location_case == CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_SHM_PATH) {
        struct stat sb;
        if (stat(q->shm_path, &sb) != 0 || (uint64_t)sb.st_size < q->offset + el * esz) __builtin_trap();
      } else if (q->location_case != CACHEFLOW__V1__WEIGHT_TENSOR__LOCATION_CUDA_IPC || q->cuda_ipc->ipc_handle.len != 64) {
        __builtin_trap();
      }
    }
  }
  cacheflow__v1__offer_weights_request__free_unpacked(r, NULL);
  return st ? -1 : 0;
}

/* Admin.Trace: what cf_trace_rpc does before it builds the response (cf_trace_get). */
static int cf_fw_trace(const Cacheflow__V1__TraceRequest *r, int *refused, char *first, size_t cap) {
  if (!g_trace) {
    cf_fw_refused(CF_RPC_FAILED_PRECONDITION, "this cacheflowd keeps no restore traces", refused, first, cap);
    return -1;
  }
  cf_trace_rec_t rec;
  int rc = cf_trace_get(g_trace, r->restore_id, &rec);
  if (rc == CF_ENOTFOUND) {
    char id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)r->restore_id);
    /* the refusal names the id it lacks (or that nothing was traced) */
    if (r->restore_id ? !strstr(cf_errmsg(), id) : !*cf_errmsg()) __builtin_trap();
    cf_fw_refused(CF_RPC_NOT_FOUND, cf_errmsg(), refused, first, cap);
    return -1;
  }
  if (rc) __builtin_trap();
  /* the kept record: the id asked for (0: the latest), its arrays whole */
  if ((r->restore_id && rec.id != r->restore_id) || (!r->restore_id && rec.id != 9) || rec.n_chunks != 3 ||
      !rec.h || !rec.tiers || rec.n_plan_ops != 2 || rec.n_ev != 2 || rec.h[0] != 2 || rec.tiers[1] != 2)
    __builtin_trap();
  cf_trace_rec_free(&rec);
  return 0;
}

/* Admin.Stats: the response's MemoryStats from the record's bytes (any values), packed as the
 * handler packs it and unpacked as a client does: the same numbers come out. */
static void cf_fw_stats_memory(const uint8_t *p, size_t n) {
  uint64_t v[8] = {0};
  memcpy(v, p, n < sizeof v ? n : sizeof v);
  Cacheflow__V1__MemoryStats mem = CACHEFLOW__V1__MEMORY_STATS__INIT;
  mem.host_budget_bytes = v[0];
  mem.host_used_bytes = v[1];
  mem.host_peak_bytes = v[2];
  mem.gpu_budget_bytes = v[3];
  mem.gpu_used_bytes = v[4];
  mem.gpu_peak_bytes = v[5];
  mem.waits = v[6];
  mem.refusals = v[7];
  Cacheflow__V1__StatsResponse resp = CACHEFLOW__V1__STATS_RESPONSE__INIT;
  resp.memory = &mem;
  resp.model_dir = g_model.dir;
  uint8_t buf[512];
  size_t len = cacheflow__v1__stats_response__get_packed_size(&resp);
  if (len > sizeof buf) __builtin_trap();
  cacheflow__v1__stats_response__pack(&resp, buf);
  Cacheflow__V1__StatsResponse *back = cacheflow__v1__stats_response__unpack(NULL, len, buf);
  if (!back || !back->memory) __builtin_trap();
  const Cacheflow__V1__MemoryStats *m = back->memory;
  if (m->host_budget_bytes != v[0] || m->host_used_bytes != v[1] || m->host_peak_bytes != v[2] ||
      m->gpu_budget_bytes != v[3] || m->gpu_used_bytes != v[4] || m->gpu_peak_bytes != v[5] || m->waits != v[6] ||
      m->refusals != v[7])
    __builtin_trap();
  cacheflow__v1__stats_response__free_unpacked(back, NULL);
}

/* Admin and health requests: unpacking, and the checks their handlers make. */
static int cf_fw_admin(int kind, const uint8_t *p, size_t n, int *refused, char *first, size_t cap) {
  char why[256] = "";
  static const ProtobufCMessageDescriptor *desc[] = {
    &cacheflow__v1__evict_request__descriptor, &cacheflow__v1__get_config_request__descriptor,
    &grpc__health__v1__health_check_request__descriptor, &cacheflow__v1__stats_request__descriptor,
    &cacheflow__v1__trace_request__descriptor, &cacheflow__v1__flush_request__descriptor};
  ProtobufCMessage *m = protobuf_c_message_unpack(desc[kind - 5], NULL, n, p);
  if (!m) { cf_fw_refused(CF_RPC_INVALID_ARGUMENT, "malformed request", refused, first, cap); return -1; }
  int rc = 0;
  if (kind == 5 && cf_reqcheck_evict((const Cacheflow__V1__EvictRequest *)m, why, sizeof why)) {
    cf_fw_refused(CF_RPC_INVALID_ARGUMENT, why, refused, first, cap);
    rc = -1;
  } else if (kind == 5) {
    const Cacheflow__V1__EvictRequest *r = (const void *)m;
    if ((int)r->tier < 0 || (int)r->tier > CACHEFLOW__V1__TIER__TIER_SSD) __builtin_trap();
  } else if (kind == 6 || kind == 7) {
    /* strings are NUL-terminated whatever the bytes were */
    const char *s = kind == 6 ? ((const Cacheflow__V1__GetConfigRequest *)m)->name
                              : ((const Grpc__Health__V1__HealthCheckRequest *)m)->service;
    if (!s || strlen(s) > n) __builtin_trap();
  } else if (kind == 8) {
    cf_fw_stats_memory(p, n);
  } else if (kind == 9) {
    rc = cf_fw_trace((const Cacheflow__V1__TraceRequest *)m, refused, first, cap);
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return rc;
}

/* Run one input; *refused counts refused records, first (may be NULL) gets the first detail. */
int cf_fuzz_wire_run(const uint8_t *data, size_t size, int *refused, char *first, size_t cap);
int cf_fuzz_wire_run(const uint8_t *data, size_t size, int *refused, char *first, size_t cap) {
  cf_fw_init();
  *refused = 0;
  if (first && cap) first[0] = 0;
  if (size < 1) return 0;
  g_n = 0;
  g_next_id = 0x5eed0000ull;
  g_kv_dtype = data[0] & 0x80 ? CACHEFLOW__V1__DTYPE__DTYPE_BF16 : 0;
  cf_trace_free(g_trace);
  g_trace = NULL;
  if (!(data[0] & 0x40)) {
    if (cf_trace_init(&g_trace, 2, 4)) __builtin_trap();
    cf_fw_trace_seed(g_trace);
  }
  int base_refused = 0;
  for (int b = 0; b < 4; b++) {
    if (!(data[0] & (1 << b))) continue;
    uint8_t buf[4096];
    size_t n = cf_fw_pack_base(&g_base[b], buf, sizeof buf);
    int was = base_refused;
    cf_fw_register(buf, n, &base_refused, NULL, 0);
    /* a baseline layout is refused only for the store's dtype */
    if (base_refused != was && !(g_kv_dtype && g_base[b].dtype != g_kv_dtype)) __builtin_trap();
  }
  int records = 0;
  for (size_t off = 1; off + 3 <= size; records++) {
    int kind = data[off] % 12;
    size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
    off += 3;
    if (len > size - off) len = size - off;
    const uint8_t *p = data + off;
    off += len;
    switch (kind) {
      case 0: cf_fw_register(p, len, refused, first, cap); break;
      case 1: cf_fw_unregister(p, len, refused, first, cap); break;
      case 2: case 3: case 4: cf_fw_tokreq(kind, p, len, refused, first, cap); break;
      case 11: cf_fw_offer(p, len, refused, first, cap); break;
      default: cf_fw_admin(kind, p, len, refused, first, cap); break;
    }
  }
  return records;
}

#ifndef CF_FUZZ_WIRE_NO_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int refused;
  cf_fuzz_wire_run(data, size, &refused, NULL, 0);
  return 0;
}
#endif
