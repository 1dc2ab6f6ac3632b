/* cf-refengine — a reference inference engine on the CPU backend that uses cacheflowd.
 *
 * It owns a paged KV buffer in shared memory (lib/ipc, the vLLM layout), registers it with the
 * daemon, and plays a multi-turn conversation:
 *   turn 0: prefill the first prompt itself, Save it through the daemon (block ids);
 *   turn k: drop its KV (zero the blocks), Restore the conversation so far through the daemon
 *           into fresh blocks, and, as the readiness counter says each layer is complete, prefill
 *           that layer of the new tokens; then the first-token logits. TTFT = Restore request to
 *           logits. The new turn is then saved too. The same turn prefilled from scratch (no
 *           cache) is the baseline, and its logits must agree with the restored path.
 * With --concurrent K it then restores the same conversation K times at once (K client threads,
 * K block sets) to measure TTFT under a batch.
 *
 * --verify compares every restored cell: a cell is "exact" (bit-identical to the bytes the engine
 * saved: loaded) or "close" (within the KV dtype's tolerance of an fp32 prefill from scratch:
 * recomputed); "bad" cells fail the run.
 * --kv-dtype f32|bf16|f16 (default: the daemon's kv_dtype, from Stats): the element type of the
 * engine's KV blocks (another than the daemon's is refused at RegisterEngine). The engine
 * computes in fp32 and rounds its own KV into the blocks.
 * Output: one JSON object per restore on stdout; exit 0 when every restore succeeded and verified.
 *
 * --present K: like vLLM's own prefix cache, the engine keeps the KV of the first K tokens in its
 * fresh blocks (the bytes it saved) and restores only [K, prefix) (RestoreRequest.present_tokens);
 * --verify then also checks those K tokens' rows were not touched (exact).
 * --durable: saves ask for durability (cf_client_save2, CF_CLIENT_SAVE_DURABLE); "durable" in the
 * prefill line is what the daemon answered.
 *
 *   cf-refengine --daemon unix:/run/cacheflow.sock --model DIR [--prefix 512] [--new 32] [--turns 3]
 *                [--policy optimal] [--block 16] [--concurrent 0] [--shm-dir /dev/shm] [--verify]
 *                [--seed 1] [--threads 1] [--unregister-mid-restore] [--kv-dtype f32|bf16|f16]
 *                [--present K] [--durable] [--no-save-first] [--no-save-turns] [--evict-before-save]
 * --no-save-first: another engine (on another node, same model, seed and threads) saved turn 0
 * through its own daemon sharing a remote tier with ours: prefill it here only as the reference
 * (the CPU backend is deterministic, so our bytes equal the ones it saved) and do not Save it, so
 * turn 1 restores what the other node stored.
 * --evict-before-save: before each turn's Save (from the blocks the turn's Restore wrote), evict
 * the whole store (Admin.Evict, every tier), so that Save is what stores the turn's chunks; a
 * "turn_save" line then says what it saved and what a Lookup finds.
 * --no-save-turns: turns are not saved after their restore (the store keeps what it held: a test
 * that made holes in it restores them with every policy; what the daemon holds locally afterwards
 * is only what it stored itself, e.g. its promotions of remote hits).
 * --shared N --shared-seed S: the conversation's first N tokens are drawn from seed S instead of
 * --seed (the rest from --seed as without it), so engines with the same S and N share an N-token
 * prefix (a system prompt, a document) and nothing after it: the eviction evaluation's traces
 * (tests/bench/eval_evict_daemon.py).
 * --reuse-prefill (f32 KV, turn 1): the turn-0 prefill is the fp32 prefill from scratch of the
 * prompt that --verify and the baseline need, so it serves as both: the reference for recomputed
 * cells is its KV (the bytes saved: shadow), and the baseline prefills only the new tokens over a
 * copy of it. One prefill of the prompt instead of three, for long prompts on the CPU backend
 * (the eviction evaluation's long trace); other dtypes and later turns take the full path. The
 * session line's "reference" says which one a restore was verified against: "prefill" (reused)
 * or "scratch". tests/integration/refengine_reuse_corrupt.sh: a wrong cell still fails the run.
 * The prefill line reports Lookup's leading run (lookup_cached, per tier) and every stored chunk
 * (lookup_stored, lookup_runs: "tier:tokens ..." with tier none/cpu/ssd/remote); a restore line
 * PlanSummary.hole_chunks (stored nowhere, computed at every layer).
 */
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client/cf_client.h"
#include "ipc/cf_kvmap.h"
#include "ipc/cf_ready.h"
#include "model/cf_backend.h"
#include "model/cf_kv.h"
#include "model/cf_logits.h"
#include "model/cf_model.h"
#include "util/cf_err.h"

typedef struct {
  const char *daemon, *model_dir, *shm_dir, *policy;
  int prefix, new_tokens, turns, block, concurrent, verify, threads, unreg_mid, present, durable, no_save_first, no_save_turns;
  int evict_turns;            /* --evict-before-save: drop the whole store before each turn's Save */
  int reuse_prefill;          /* --reuse-prefill: the turn-0 prefill is the reference and the baseline's prefix */
  int shared;                 /* --shared: the first `shared` tokens come from shared_seed */
  unsigned long long shared_seed;
  cf_dtype_t kv_dtype;
  unsigned long long seed;
} opts_t;

typedef struct {
  opts_t o;
  cf_model_t *m;
  cf_backend_t *be;
  cf_kvmap_t kv;
  cf_ready_t ready;
  uint64_t engine_id;
  int L, row, hidden, seq_blocks, n_seqs;
  int32_t *conv;      /* the whole conversation's tokens */
  int conv_len;
  /* what the store holds: the KV as it was in our blocks when first saved (a chunk saved twice
   * keeps its first bytes), the reference that loaded cells must match bit for bit */
  uint8_t **shadow_k, **shadow_v;  /* [L][conv_len * row] elements of the KV dtype */
  int shadow_upto;
  int chunk;                       /* the daemon's chunk_tokens (GetConfig) */
  size_t es;                       /* bytes per KV element */
  char shm_path[512];
} engine_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int die(const char *what, int rc) {
  fprintf(stderr, "cf-refengine: %s: %s: %s\n", what, cf_strerror(rc), cf_errmsg());
  return 1;
}

/* main's fatal errors: exit(1) from here rather than return from main, the same exit, but main's
 * buffers are still on its stack when LeakSanitizer looks at exit; returned, they were reported
 * as leaks under `make asan` (42 blocks, 1.2 MB) and, with its abort_on_error, the engine died of
 * SIGABRT (134) instead of exiting 1: what the fault tests whose engine is expected to fail saw
 * (store_faults, store_dir_faults). */
static int fatal(const char *what, int rc) {
  die(what, rc);
  exit(1);
}

static int policy_value(const char *name) {
  const char *names[] = {"default", "recompute", "load", "cake", "layerwise", "cacheflow", "optimal"};
  for (int i = 0; i < 7; i++) if (!strcmp(name, names[i])) return i;
  return -1;
}

/* Block table of sequence `seq`: a stride through the pool so sequences interleave. */
static void seq_blocks(const engine_t *e, int seq, int32_t *out, int n) {
  for (int i = 0; i < n; i++) out[i] = (int32_t)(i * e->n_seqs + seq);
}

/* ---------------------------------------------------------------- register */
static int register_engine(engine_t *e, cf_client_t *c) {
  Cacheflow__V1__StatsResponse *st;
  int rc = cf_client_stats(c, &st);
  if (rc) return rc;
  if (st->model_layers != (uint32_t)e->L || st->model_fingerprint.len != 16) {
    rc = cf_seterr(CF_EMISMATCH, "daemon serves a %u-layer model, the engine has %d", st->model_layers, e->L);
    cacheflow__v1__stats_response__free_unpacked(st, NULL);
    return rc;
  }
  Cacheflow__V1__GetConfigResponse *gc;
  if ((rc = cf_client_get_config(c, "chunk_tokens", &gc))) { cacheflow__v1__stats_response__free_unpacked(st, NULL); return rc; }
  e->chunk = gc->n_entries == 1 ? atoi(gc->entries[0]->value) : 0;
  cacheflow__v1__get_config_response__free_unpacked(gc, NULL);
  if (e->chunk <= 0) {
    cacheflow__v1__stats_response__free_unpacked(st, NULL);
    return cf_seterr(CF_EPROTO, "daemon reported no chunk_tokens");
  }
  Cacheflow__V1__LayerLayout *lay = calloc((size_t)e->L, sizeof *lay), **lp = calloc((size_t)e->L, sizeof *lp);
  Cacheflow__V1__KvBuffer *kb = calloc((size_t)e->L * 2, sizeof *kb);
  for (int l = 0; l < e->L; l++) {
    uint64_t ko, vo;
    cf_kvmap_file_offsets(&e->kv.layout, l, &ko, &vo);
    cacheflow__v1__layer_layout__init(&lay[l]);
    for (int j = 0; j < 2; j++) {
      cacheflow__v1__kv_buffer__init(&kb[2 * l + j]);
      kb[2 * l + j].location_case = CACHEFLOW__V1__KV_BUFFER__LOCATION_SHM_PATH;
      kb[2 * l + j].shm_path = e->shm_path;
      kb[2 * l + j].offset = j ? vo : ko;
    }
    lay[l].layer = (uint32_t)l;
    lay[l].k = &kb[2 * l];
    lay[l].v = &kb[2 * l + 1];
    lay[l].block_size = (uint32_t)e->kv.layout.block_size;
    lay[l].num_blocks = (uint32_t)e->kv.layout.num_blocks;
    lay[l].block_stride = e->kv.layout.block_stride;
    lay[l].token_stride = e->kv.layout.token_stride;
    lay[l].head_stride = e->kv.layout.head_stride;
    lay[l].dtype = e->o.kv_dtype == CF_DT_BF16 ? CACHEFLOW__V1__DTYPE__DTYPE_BF16
                 : e->o.kv_dtype == CF_DT_F16 ? CACHEFLOW__V1__DTYPE__DTYPE_F16 : CACHEFLOW__V1__DTYPE__DTYPE_F32;
    lay[l].num_kv_heads = (uint32_t)e->kv.layout.n_kv_heads;
    lay[l].head_dim = (uint32_t)e->kv.layout.head_dim;
    lp[l] = &lay[l];
  }
  Cacheflow__V1__RegisterEngineRequest req = CACHEFLOW__V1__REGISTER_ENGINE_REQUEST__INIT;
  req.model_fingerprint = st->model_fingerprint;
  req.n_layers = (size_t)e->L;
  req.layers = lp;
  req.name = (char *)"cf-refengine";
  req.pid = (uint32_t)getpid(); /* the daemon unregisters us if we die without Unregister */
  Cacheflow__V1__RegisterEngineResponse *resp = NULL;
  rc = cf_client_call(c, "/cacheflow.v1.CacheFlow/RegisterEngine", &req.base,
                      &cacheflow__v1__register_engine_response__descriptor, (ProtobufCMessage **)&resp);
  if (!rc) {
    e->engine_id = resp->engine_id;
    if (!resp->readiness_shm_path[0]) rc = cf_seterr(CF_EPROTO, "daemon returned no readiness counter file");
    else rc = cf_ready_open(&e->ready, resp->readiness_shm_path);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
  }
  free(lay); free(lp); free(kb);
  cacheflow__v1__stats_response__free_unpacked(st, NULL);
  return rc;
}

/* ---------------------------------------------------------------- local prefill */
/* Prefill tokens [t0, t1) of the conversation layer by layer on the engine's own backend,
 * attending over the prefix KV held in the paged blocks of `blocks`; write the new KV into the
 * blocks. Before layer l it waits for readiness slot `slot` >= l+1 (slot < 0: no wait).
 * Returns the first token (argmax of the logits) or a negative CF_E*. */
static int prefill_layers(engine_t *e, const int32_t *blocks, int t0, int t1, int slot, float *logits) {
  int n = t1 - t0;
  size_t rows = (size_t)t1;
  float *k = malloc(rows * e->row * sizeof(float)), *v = malloc(rows * e->row * sizeof(float));
  float *h0 = malloc((size_t)n * e->hidden * sizeof(float)), *h1 = malloc((size_t)n * e->hidden * sizeof(float));
  int rc = 0;
  if (!k || !v || !h0 || !h1) { rc = cf_seterr(CF_ENOMEM, "prefill of %d tokens", n); goto out; }
  for (int l = 0; l < e->L && !rc; l++) {
    if (slot >= 0 && (rc = cf_ready_wait(&e->ready, slot, (uint64_t)l + 1, 60000000000LL, NULL))) break;
    if (t0) cf_kvmap_gather_f32(&e->kv, l, blocks, 0, t0, k, v);
    /* the blocks were filled with NaN before the restore: none may remain in a ready layer, but
     * for a windowed layer's rows before the new tokens' window (skipped: never read, the
     * attention's key blocks start at the window) */
    int W = cf_model_layer_window(&e->m->cfg, l);
    size_t from = W > 0 && t0 - W + 1 > 0 ? (size_t)(t0 - W + 1) : 0;
    if (slot >= 0)
      for (size_t i = from * e->row; i < (size_t)t0 * e->row; i++)
        if (isnan(k[i]) || isnan(v[i])) {
          rc = cf_seterr(CF_EINTERNAL, "layer %d announced ready but token %zu was never written", l, i / e->row);
          goto out;
        }
    float *kk[1] = {k}, *vv[1] = {v};
    cf_fwd_args_t a = {.l0 = l, .l1 = l + 1, .t0 = t0, .t1 = t1, .tokens = e->conv + t0, .hidden_in = h0,
                       .k = kk, .v = vv, .hidden_out = h1};
    if ((rc = cf_backend_forward(e->be, &a))) break;
    cf_kvmap_scatter_f32(&e->kv, l, blocks, t0, t1, k + (size_t)t0 * e->row, v + (size_t)t0 * e->row);
    float *t = h0; h0 = h1; h1 = t;
  }
  if (!rc) rc = cf_logits_last(e->m, h0 + (size_t)(n - 1) * e->hidden, logits);
out:
  free(k); free(v); free(h0); free(h1);
  return rc;
}

static void zero_blocks(engine_t *e, const int32_t *blocks, int nb) {
  for (int l = 0; l < e->L; l++)
    for (int i = 0; i < nb; i++)
      for (int kv = 0; kv < 2; kv++)
        memset(cf_kvmap_row(&e->kv, l, kv, blocks[i], 0), 0xff, e->kv.layout.block_stride); /* NaN pattern */
}

/* After a Save of tokens [0, saved) from `blocks`: remember the newly stored rows. A partial
 * last chunk is stored under its own key, so the full chunk that later covers it is stored anew
 * with the bytes the blocks hold then: re-read from that chunk's start. */
static void shadow_saved(engine_t *e, const int32_t *blocks, int saved) {
  if (saved <= e->shadow_upto) return;
  int t0 = e->shadow_upto / e->chunk * e->chunk;
  for (int l = 0; l < e->L; l++) /* the blocks' bytes, as the daemon stored them */
    cf_kvmap_gather(&e->kv, l, blocks, t0, saved, e->shadow_k[l] + (size_t)t0 * e->row * e->es,
                    e->shadow_v[l] + (size_t)t0 * e->row * e->es);
  e->shadow_upto = saved;
}

/* The fp32 reference for recomputed cells: the prefix prefilled from scratch (loaded cells are
 * checked against the saved bytes, e->shadow_*). */
static int reference_kv(engine_t *e, int prefix, cf_kv_t *ref) {
  int rc = cf_kv_init(ref, &e->m->cfg, prefix);
  if (!rc) rc = cf_kv_compute(e->be, e->conv, 0, ref);
  return rc;
}

/* --reuse-prefill: the reference from the turn-0 prefill's bytes (f32 KV: shadow rows are fp32). */
static int shadow_kv(engine_t *e, int prefix, cf_kv_t *ref) {
  int rc = cf_kv_init(ref, &e->m->cfg, prefix);
  for (int l = 0; l < e->L && !rc; l++) {
    memcpy(ref->k[l], e->shadow_k[l], sizeof(float) * e->row * (size_t)prefix);
    memcpy(ref->v[l], e->shadow_v[l], sizeof(float) * e->row * (size_t)prefix);
  }
  return rc;
}

/* --reuse-prefill: rows [0, n) of the turn-0 prefill (the shadow, shadow_upto >= n) into blocks. */
static void shadow_to_blocks(engine_t *e, const int32_t *blocks, int n) {
  for (int l = 0; l < e->L; l++) cf_kvmap_scatter(&e->kv, l, blocks, 0, n, e->shadow_k[l], e->shadow_v[l]);
}

/* How far a recomputed value may be from the fp32 reference: |x - ref| <= atol + rtol * |ref|.
 * f32: the CPU backend's chunking noise. bf16/f16: the rounding of the cell itself (half an ulp:
 * 2^-9 / 2^-12 relative) plus what the rounded prefix cells it attends over move it by, a few
 * ulps; the absolute part covers values near zero (as a fraction of the layer's largest). */
static void kv_tolerance(cf_dtype_t t, float *rtol, float *atol) {
  if (t == CF_DT_BF16) { *rtol = 1.0f / 64; *atol = 1.0f / 128; }
  else if (t == CF_DT_F16) { *rtol = 1.0f / 512; *atol = 1.0f / 1024; }
  else { *rtol = 0; *atol = 1e-4f; }
}

/* ---------------------------------------------------------------- one restore */
typedef struct {
  engine_t *e;
  cf_client_t *c;
  int prefix, seq;
  pthread_barrier_t *start;   /* concurrent mode: every restore's request leaves together */
  int32_t blocks[65536];
  /* from the stream */
  atomic_int slot;            /* -1 until the plan arrives, -2 if the stream ended without one */
  Cacheflow__V1__RestoreStats stats;
  int policy_used;
  uint32_t present_chunks;    /* PlanSummary.present_chunks */
  uint32_t hole_chunks;       /* PlanSummary.hole_chunks */
  uint64_t plan_skipped;      /* PlanSummary.cells_skipped (chunk-sized cells) */
  uint64_t restore_id, plan_load, plan_compute; /* PlanSummary.restore_id, its cells loaded / computed */
  int rc;
  char detail[512];
  double t_start, t_all_layers, t_ttft, t_stream_end;
  int token;
  int verify_exact, verify_close, verify_bad;
  int verify_untouched;       /* block-sized cells still holding the NaN pattern: allowed only at a
                                 windowed layer, before the next token's window (skipped cells) */
  double max_rel_err;         /* recomputed cells: max |x - ref| / max |ref| of the layer */
  int ref_reused;             /* --reuse-prefill took effect: the reference was the turn-0 prefill */
  int layers_last, layers_events, layers_out_of_order; /* LayersReady events: strictly increasing */
  pthread_mutex_t mu;
  pthread_cond_t cv;
} restore_t;

static int on_event(void *arg, const Cacheflow__V1__RestoreEvent *ev) {
  restore_t *r = arg;
  if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN) {
    pthread_mutex_lock(&r->mu);
    r->policy_used = ev->plan->policy;
    r->present_chunks = ev->plan->present_chunks;
    r->hole_chunks = ev->plan->hole_chunks;
    r->plan_skipped = ev->plan->cells_skipped;
    r->restore_id = ev->plan->restore_id;
    r->plan_load = ev->plan->cells_load_cpu + ev->plan->cells_load_ssd + ev->plan->cells_load_remote;
    r->plan_compute = ev->plan->cells_compute;
    atomic_store(&r->slot, ev->plan->readiness_slot == UINT32_MAX ? -3 : (int)ev->plan->readiness_slot);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
  } else if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS) {
    int n = (int)ev->layers->layers_ready;
    if (n <= r->layers_last || n > r->e->L) r->layers_out_of_order++;
    r->layers_last = n;
    r->layers_events++;
    if (n == r->e->L) r->t_all_layers = now_s();
  } else if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_DONE) {
    r->stats = *ev->done;
  }
  return 0;
}

static void *stream_thread(void *arg) {
  restore_t *r = arg;
  engine_t *e = r->e;
  uint32_t *tok = malloc(sizeof(uint32_t) * r->prefix), *blk = malloc(sizeof(uint32_t) * 65536);
  int nb = (r->prefix + e->o.block - 1) / e->o.block;
  for (int i = 0; i < r->prefix; i++) tok[i] = (uint32_t)e->conv[i];
  for (int i = 0; i < nb; i++) blk[i] = (uint32_t)r->blocks[i];
  Cacheflow__V1__RestoreRequest req = CACHEFLOW__V1__RESTORE_REQUEST__INIT;
  req.engine_id = e->engine_id;
  req.token_ids = tok;
  req.n_token_ids = (size_t)r->prefix;
  req.block_ids = blk;
  req.n_block_ids = (size_t)nb;
  req.policy = (Cacheflow__V1__Policy)policy_value(e->o.policy);
  req.present_tokens = e->o.present < r->prefix ? (uint32_t)e->o.present : 0;
  r->rc = cf_client_restore(r->c, &req, on_event, r);
  if (r->rc) snprintf(r->detail, sizeof r->detail, "%s", cf_errmsg());
  r->t_stream_end = now_s();
  pthread_mutex_lock(&r->mu);
  if (atomic_load(&r->slot) == -1) atomic_store(&r->slot, -2);
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
  free(tok); free(blk);
  return NULL;
}

/* Compare the restored prefix cells with what the engine saved (bit for bit) and with the fp32
 * prefill from scratch (ref, within the dtype's tolerance). */
static void verify_cells(restore_t *r, const cf_kv_t *ref) {
  engine_t *e = r->e;
  size_t n = (size_t)e->row * r->prefix;
  float *k = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
  uint8_t *rk = malloc(e->es * n), *rv = malloc(e->es * n);
  float rtol, atol;
  kv_tolerance(e->o.kv_dtype, &rtol, &atol);
  int cell = e->o.block; /* verify per block-sized cell: exact or close */
  for (int l = 0; l < e->L; l++) {
    cf_kvmap_gather_f32(&e->kv, l, r->blocks, 0, r->prefix, k, v);
    cf_kvmap_gather(&e->kv, l, r->blocks, 0, r->prefix, rk, rv);
    float mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmaxf(mx, fmaxf(fabsf(ref->k[l][i]), fabsf(ref->v[l][i])));
    if (e->o.kv_dtype == CF_DT_F32) mx = 1; /* f32: absolute 1e-4, as before */
    for (int t0 = 0; t0 < r->prefix; t0 += cell) {
      int t1 = t0 + cell < r->prefix ? t0 + cell : r->prefix, close = 1;
      size_t a = (size_t)t0 * e->row, b = (size_t)t1 * e->row;
      int W = cf_model_layer_window(&e->m->cfg, l), untouched = 1;
      for (size_t i = a * e->es; i < b * e->es && untouched; i++) untouched = rk[i] == 0xff && rv[i] == 0xff;
      if (untouched) { /* never written: a skipped cell, or a bug */
        if (W > 0 && t1 <= r->prefix - W + 1) r->verify_untouched++;
        else r->verify_bad++;
        if (getenv("CF_REFENGINE_DEBUG"))
          fprintf(stderr, "verify: prefix %d layer %d tokens [%d, %d) untouched (window %d)\n", r->prefix, l, t0, t1, W);
        continue;
      }
      /* a block across a chunk boundary (chunk_tokens not a multiple of the block size, or the
       * engine's present_tokens ending mid-block) may hold rows of a skipped chunk next to written
       * ones: a never-written row is allowed where a whole block would be (before the window);
       * the written rows are verified, row by row */
      int exact = t1 <= e->shadow_upto, row_bad = 0;
      double err = 0;
      size_t rowb = (size_t)e->row * e->es;
      for (int t = t0; t < t1; t++) {
        size_t ra = (size_t)t * e->row;
        int nan_row = 1;
        for (size_t i = ra * e->es; i < ra * e->es + rowb && nan_row; i++) nan_row = rk[i] == 0xff && rv[i] == 0xff;
        if (nan_row) {
          if (!(W > 0 && t + 1 <= r->prefix - W + 1)) row_bad = 1;
          continue;
        }
        if (exact && (memcmp(rk + ra * e->es, e->shadow_k[l] + ra * e->es, rowb) ||
                      memcmp(rv + ra * e->es, e->shadow_v[l] + ra * e->es, rowb)))
          exact = 0;
        for (size_t i = ra; i < ra + (size_t)e->row; i++) {
          float dk = fabsf(k[i] - ref->k[l][i]), dv = fabsf(v[i] - ref->v[l][i]);
          if (!(dk <= atol * mx + rtol * fabsf(ref->k[l][i]) && dv <= atol * mx + rtol * fabsf(ref->v[l][i]))) close = 0;
          err = fmax(err, fmax(dk, dv) / (mx > 0 ? mx : 1));
        }
      }
      if (row_bad) exact = close = 0;
      if (getenv("CF_REFENGINE_DEBUG") && !exact)
        fprintf(stderr, "verify: prefix %d layer %d tokens [%d, %d) %s (max err / max|ref| %.3g)\n", r->prefix, l, t0,
                t1, close ? "close" : "bad", err);
      if (exact) r->verify_exact++;
      else if (close) { r->verify_close++; if (err > r->max_rel_err) r->max_rel_err = err; }
      else r->verify_bad++;
    }
  }
  free(k); free(v); free(rk); free(rv);
}

/* Restore conv[0..prefix) into sequence `seq`, prefill conv[prefix..prefix+new) as layers become
 * ready, take the first token. */
static void run_restore(restore_t *r, int new_tokens, float *logits) {
  engine_t *e = r->e;
  int T = r->prefix + new_tokens, nb = (T + e->o.block - 1) / e->o.block;
  seq_blocks(e, r->seq, r->blocks, nb);
  zero_blocks(e, r->blocks, nb);
  /* --present: the engine's own prefix cache holds [0, K): the bytes it computed and saved */
  int K = e->o.present < r->prefix ? e->o.present : 0;
  for (int l = 0; l < e->L && K; l++)
    cf_kvmap_scatter(&e->kv, l, r->blocks, 0, K, e->shadow_k[l], e->shadow_v[l]);
  /* the K concurrent restores send their requests at the same moment (after each one's own
   * setup), so they reach the daemon within one batch window, as a real batch would */
  if (r->start) pthread_barrier_wait(r->start);
  atomic_init(&r->slot, -1);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  r->t_start = now_s();
  pthread_t th;
  pthread_create(&th, NULL, stream_thread, r);
  pthread_mutex_lock(&r->mu);
  while (atomic_load(&r->slot) == -1) pthread_cond_wait(&r->cv, &r->mu);
  pthread_mutex_unlock(&r->mu);
  int slot = atomic_load(&r->slot);
  int prefill_rc = 0;
  char prefill_err[sizeof r->detail];
  if (slot >= 0 || slot == -3) {
    if (e->o.unreg_mid) { /* the engine goes away while the daemon restores into it */
      cf_client_t *c2;
      if (!cf_client_connect(e->o.daemon, 10000, &c2)) { cf_client_unregister(c2, e->engine_id); cf_client_close(c2); }
    }
    if (slot == -3) { pthread_join(th, NULL); slot = -1; th = 0; } /* no counter: wait for the stream */
    int tok = prefill_layers(e, r->blocks, r->prefix, T, slot, logits);
    if (tok >= 0) { r->token = tok; r->t_ttft = now_s(); }
    else { prefill_rc = tok; snprintf(prefill_err, sizeof prefill_err, "engine prefill: %s", cf_errmsg()); }
  }
  if (th) pthread_join(th, NULL);
  /* the stream thread sets r->rc and r->detail: read them only after it is joined (make tsan) */
  if (prefill_rc && !r->rc) { r->rc = prefill_rc; snprintf(r->detail, sizeof r->detail, "%s", prefill_err); }
}

static void print_result(const engine_t *e, const restore_t *r, const char *mode, int turn, int new_tokens,
                         double baseline_ms, int logits_ok) {
  const Cacheflow__V1__RestoreStats *s = &r->stats;
  printf("{\"mode\":\"%s\",\"turn\":%d,\"policy\":\"%s\",\"prefix\":%d,\"new\":%d,\"ok\":%s,\"status\":\"%s\","
         "\"ttft_ms\":%.3f,\"restore_ms\":%.3f,\"daemon_us\":%.1f,\"predicted_us\":%.1f,\"bound_us\":%.1f,"
         "\"ratio_to_bound\":%.3f,\"cells_cpu\":%llu,\"cells_ssd\":%llu,\"cells_remote\":%llu,\"cells_computed\":%llu,\"fallback\":%llu,"
         "\"baseline_ms\":%.3f,\"token\":%d,\"logits_match\":%d,\"exact\":%d,\"close\":%d,\"bad\":%d,"
         "\"layer_events\":%d,\"layers_in_order\":%d,\"kv_dtype\":\"%s\",\"max_rel_err\":%.3g,"
         "\"present\":%d,\"present_chunks\":%u,\"restore_id\":%llu,\"plan_load\":%llu,\"plan_compute\":%llu,"
         "\"untouched\":%d,\"skipped\":%llu,\"hole_chunks\":%u,\"reference\":\"%s\"}\n",
         mode, turn, e->o.policy, r->prefix, new_tokens, r->rc ? "false" : "true", r->rc ? r->detail : "",
         r->t_ttft > 0 ? (r->t_ttft - r->t_start) * 1e3 : -1.0,
         r->t_all_layers > 0 ? (r->t_all_layers - r->t_start) * 1e3 : -1.0, s->time_us, s->predicted_us,
         s->bound_us, s->ratio_to_bound, (unsigned long long)s->cells_loaded_cpu,
         (unsigned long long)s->cells_loaded_ssd, (unsigned long long)s->cells_loaded_remote,
         (unsigned long long)s->cells_computed,
         (unsigned long long)s->cells_recomputed_fallback, baseline_ms, r->token, logits_ok, r->verify_exact,
         r->verify_close, r->verify_bad, r->layers_events,
         !r->layers_out_of_order && (r->rc || r->layers_last == e->L), cf_dtype_name(e->o.kv_dtype), r->max_rel_err,
         e->o.present < r->prefix ? e->o.present : 0, r->present_chunks, (unsigned long long)r->restore_id,
         (unsigned long long)r->plan_load, (unsigned long long)r->plan_compute, r->verify_untouched,
         (unsigned long long)r->plan_skipped, r->hole_chunks, r->ref_reused ? "prefill" : "scratch");
  fflush(stdout);
}

static void *concurrent_worker(void *arg) {
  restore_t *r = arg;
  float *logits = malloc(sizeof(float) * r->e->m->cfg.vocab);
  run_restore(r, r->e->o.new_tokens, logits);
  free(logits);
  return NULL;
}

int main(int argc, char **argv) {
  engine_t e;
  memset(&e, 0, sizeof e);
  opts_t *o = &e.o;
  *o = (opts_t){.shm_dir = "/dev/shm", .policy = "optimal", .prefix = 512, .new_tokens = 32, .turns = 3,
                .block = 16, .threads = 1, .seed = 1, .kv_dtype = CF_DT__COUNT /* the daemon's */};
  static struct option lo[] = {{"daemon", 1, 0, 'd'}, {"model", 1, 0, 'm'}, {"prefix", 1, 0, 'p'}, {"new", 1, 0, 'n'},
                               {"turns", 1, 0, 't'}, {"policy", 1, 0, 'P'}, {"block", 1, 0, 'b'},
                               {"concurrent", 1, 0, 'c'}, {"shm-dir", 1, 0, 's'}, {"verify", 0, 0, 'v'},
                               {"seed", 1, 0, 'S'}, {"threads", 1, 0, 'T'}, {"unregister-mid-restore", 0, 0, 'U'},
                               {"kv-dtype", 1, 0, 'K'}, {"present", 1, 0, 'k'}, {"durable", 0, 0, 'D'},
                               {"no-save-first", 0, 0, 'N'}, {"no-save-turns", 0, 0, 'X'},
                               {"evict-before-save", 0, 0, 'E'}, {"shared", 1, 0, 'H'},
                               {"shared-seed", 1, 0, 'h'}, {"reuse-prefill", 0, 0, 'R'}, {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    switch (ch) {
      case 'd': o->daemon = optarg; break;
      case 'm': o->model_dir = optarg; break;
      case 'p': o->prefix = atoi(optarg); break;
      case 'n': o->new_tokens = atoi(optarg); break;
      case 't': o->turns = atoi(optarg); break;
      case 'P': o->policy = optarg; break;
      case 'b': o->block = atoi(optarg); break;
      case 'c': o->concurrent = atoi(optarg); break;
      case 's': o->shm_dir = optarg; break;
      case 'v': o->verify = 1; break;
      case 'S': o->seed = strtoull(optarg, NULL, 10); break;
      case 'T': o->threads = atoi(optarg); break;
      case 'U': o->unreg_mid = 1; break;
      case 'k': o->present = atoi(optarg); break;
      case 'D': o->durable = 1; break;
      case 'K':
        o->kv_dtype = !strcmp(optarg, "f32") ? CF_DT_F32 : !strcmp(optarg, "bf16") ? CF_DT_BF16
                    : !strcmp(optarg, "f16") ? CF_DT_F16 : CF_DT_I8;
        if (o->kv_dtype == CF_DT_I8) { fprintf(stderr, "cf-refengine: --kv-dtype '%s': expected f32, bf16 or f16\n", optarg); return 2; }
        break;
      case 'N': o->no_save_first = 1; break;
      case 'X': o->no_save_turns = 1; break;
      case 'E': o->evict_turns = 1; break;
      case 'H': o->shared = atoi(optarg); break;
      case 'h': o->shared_seed = strtoull(optarg, NULL, 10); break;
      case 'R': o->reuse_prefill = 1; break;
      default: fprintf(stderr, "usage: see the comment at the top of tests/engine/cf_refengine.c\n"); return 2;
    }
  }
  if (!o->daemon || !o->model_dir || o->prefix < 1 || o->new_tokens < 1 || o->turns < 0 || o->block < 1 ||
      o->concurrent < 0 || o->concurrent > 64 || policy_value(o->policy) < 0 || o->present < 0 || o->present > o->prefix || o->shared < 0) {
    fprintf(stderr, "cf-refengine: need --daemon and --model; --prefix/--new/--block >= 1, --turns >= 0 (0: prefill and save only); --concurrent 0..64; "
                    "--shared >= 0; --policy default|recompute|load|cake|layerwise|cacheflow|optimal\n");
    return 2;
  }
  int rc = cf_model_load(o->model_dir, &e.m);
  if (rc) return fatal("model", rc);
  if ((rc = cf_backend_cpu_create(e.m, o->threads, &e.be))) return fatal("backend", rc);
  e.L = e.m->cfg.n_layers;
  e.row = e.m->cfg.n_kv_heads * e.m->cfg.head_dim;
  e.hidden = e.m->cfg.hidden;
  /* the conversation: a random first prompt, then `new` tokens per turn */
  e.conv_len = o->prefix + o->new_tokens * (o->turns + 1);
  e.conv = malloc(sizeof(int32_t) * e.conv_len);
  unsigned long long s = o->seed * 0x9e3779b97f4a7c15ULL + 1, sh = o->shared_seed * 0x9e3779b97f4a7c15ULL + 1;
  for (int i = 0; i < e.conv_len; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    sh = sh * 6364136223846793005ULL + 1442695040888963407ULL; /* token i of the shared prefix */
    e.conv[i] = (int32_t)(((i < o->shared ? sh : s) >> 33) % (unsigned long long)e.m->cfg.vocab);
  }
  e.n_seqs = 2 + o->concurrent;
  cf_client_t *c;
  if ((rc = cf_client_connect(o->daemon, 120000, &c))) return fatal("connect", rc);
  if (o->kv_dtype == CF_DT__COUNT) { /* no --kv-dtype: the daemon's */
    Cacheflow__V1__StatsResponse *st;
    if ((rc = cf_client_stats(c, &st))) return fatal("stats", rc);
    o->kv_dtype = st->kv_dtype == CACHEFLOW__V1__DTYPE__DTYPE_BF16 ? CF_DT_BF16
                : st->kv_dtype == CACHEFLOW__V1__DTYPE__DTYPE_F16 ? CF_DT_F16 : CF_DT_F32;
    cacheflow__v1__stats_response__free_unpacked(st, NULL);
  }
  e.es = cf_kv_elem_size(o->kv_dtype);
  e.shadow_k = calloc((size_t)e.L, sizeof(uint8_t *));
  e.shadow_v = calloc((size_t)e.L, sizeof(uint8_t *));
  for (int l = 0; l < e.L; l++) {
    e.shadow_k[l] = calloc((size_t)e.conv_len * e.row, e.es);
    e.shadow_v[l] = calloc((size_t)e.conv_len * e.row, e.es);
  }
  e.seq_blocks = (e.conv_len + o->block - 1) / o->block;
  if (e.seq_blocks > 65536) { fprintf(stderr, "cf-refengine: conversation too long\n"); return 2; }
  cf_kv_layout_t lay;
  if ((rc = cf_kv_layout_init(&lay, e.L, e.seq_blocks * e.n_seqs, o->block, e.m->cfg.n_kv_heads, e.m->cfg.head_dim,
                              o->kv_dtype)))
    return fatal("layout", rc);
  snprintf(e.shm_path, sizeof e.shm_path, "%s/cf-refengine-%d", o->shm_dir, (int)getpid());
  if ((rc = cf_kvmap_create(&e.kv, e.shm_path, &lay))) return fatal("kv buffer", rc);
  if ((rc = register_engine(&e, c))) { cf_kvmap_close(&e.kv); return fatal("register", rc); }
  float *logits = malloc(sizeof(float) * e.m->cfg.vocab), *logits_ref = malloc(sizeof(float) * e.m->cfg.vocab);
  int failures = 0;

  /* turn 0: prefill the first prompt ourselves and save it */
  static int32_t blocks0[65536];
  int P = o->prefix;
  seq_blocks(&e, 0, blocks0, (P + o->block - 1) / o->block);
  double t = now_s();
  if ((rc = prefill_layers(&e, blocks0, 0, P, -1, logits)) < 0) return fatal("prefill", rc);
  double first_ms = (now_s() - t) * 1e3;
  uint32_t *tok32 = malloc(sizeof(uint32_t) * e.conv_len), *blk32 = malloc(sizeof(uint32_t) * 65536);
  uint32_t saved = 0;
  int durable = 0;
  for (int i = 0; i < e.conv_len; i++) tok32[i] = (uint32_t)e.conv[i];
  for (int i = 0; i < e.seq_blocks; i++) blk32[i] = (uint32_t)blocks0[i];
  unsigned sflags = o->durable ? CF_CLIENT_SAVE_DURABLE : 0;
  if (o->no_save_first) saved = (uint32_t)P; /* the other node saved these very bytes */
  else if ((rc = cf_client_save2(c, e.engine_id, tok32, (size_t)P, blk32, (size_t)(P + o->block - 1) / o->block, sflags,
                                 &saved, NULL, &durable)))
    return fatal("save", rc);
  shadow_saved(&e, blocks0, (int)saved);
  uint32_t cached = 0, on_cpu = 0, on_ssd = 0, stored = 0;
  cf_client_run_t *runs = NULL;
  size_t nruns = 0;
  if ((rc = cf_client_lookup(c, e.engine_id, tok32, (size_t)e.conv_len, &cached, &on_cpu, &on_ssd)) ||
      (rc = cf_client_lookup_runs(c, e.engine_id, tok32, (size_t)e.conv_len, &stored, &runs, &nruns)))
    return fatal("lookup", rc);
  char runstr[1024] = "";
  for (size_t i = 0, at = 0; i < nruns && at < sizeof runstr - 32; i++) {
    static const char *const tn[] = {"none", "cpu", "ssd", "remote"};
    at += (size_t)snprintf(runstr + at, sizeof runstr - at, "%s%s:%u", i ? " " : "",
                           runs[i].tier >= 0 && runs[i].tier < 4 ? tn[runs[i].tier] : "?", runs[i].tokens);
  }
  free(runs);
  printf("{\"mode\":\"prefill\",\"turn\":0,\"prefix\":%d,\"prefill_ms\":%.3f,\"saved_tokens\":%u,"
         "\"lookup_cached\":%u,\"lookup_cpu\":%u,\"lookup_ssd\":%u,\"lookup_remote\":%u,\"durable\":%d,"
         "\"lookup_stored\":%u,\"lookup_runs\":\"%s\"}\n", P, first_ms,
         saved, cached, on_cpu, on_ssd, cached - on_cpu - on_ssd, durable, stored, runstr);

  for (int turn = 1; turn <= o->turns; turn++) {
    int prefix = P;
    /* baseline: the same turn prefilled from scratch, no cache (its logits are the reference) */
    static int32_t blocks1[65536];
    seq_blocks(&e, 1, blocks1, (prefix + o->new_tokens + o->block - 1) / o->block);
    /* --reuse-prefill: the shadow holds the turn-0 prefill's KV of the whole prompt */
    int reuse = o->reuse_prefill && turn == 1 && o->kv_dtype == CF_DT_F32 && e.shadow_upto >= prefix;
    t = now_s();
    if (reuse) shadow_to_blocks(&e, blocks1, prefix);
    int ref_tok = prefill_layers(&e, blocks1, reuse ? prefix : 0, prefix + o->new_tokens, -1, logits_ref);
    double baseline_ms = (now_s() - t) * 1e3;
    if (ref_tok < 0) return fatal("baseline prefill", ref_tok);
    cf_kv_t ref = {0};
    if (o->verify && (rc = reuse ? shadow_kv(&e, prefix, &ref) : reference_kv(&e, prefix, &ref)))
      return fatal("reference", rc);
    restore_t *r = calloc(1, sizeof *r);
    r->e = &e; r->c = c; r->prefix = prefix; r->seq = 0; r->ref_reused = reuse;
    run_restore(r, o->new_tokens, logits);
    int logits_ok = 0;
    if (!r->rc) {
      float md = 0;
      for (int i = 0; i < e.m->cfg.vocab; i++) md = fmaxf(md, fabsf(logits[i] - logits_ref[i]));
      /* f32: the same token and logits within 1e-3. bf16/f16: the restored prefix KV is rounded,
       * the scratch baseline is fp32, so logits agree within the dtype's tolerance (relative to
       * the largest logit) and the token is the reference's or one within that tolerance of it */
      float rtol, atol, lmax = 0;
      kv_tolerance(o->kv_dtype, &rtol, &atol);
      for (int i = 0; i < e.m->cfg.vocab; i++) lmax = fmaxf(lmax, fabsf(logits_ref[i]));
      float ltol = o->kv_dtype == CF_DT_F32 ? 1e-3f : atol * lmax;
      logits_ok = md <= ltol && (r->token == ref_tok || (o->kv_dtype != CF_DT_F32 &&
                                                          logits_ref[r->token] >= logits_ref[ref_tok] - 2 * ltol));
      if (getenv("CF_REFENGINE_DEBUG"))
        fprintf(stderr, "logits: max |diff| %.3g (tolerance %.3g, max |logit| %.3g), token %d vs %d\n", md, ltol, lmax,
                r->token, ref_tok);
      if (o->verify) verify_cells(r, &ref);
    }
    print_result(&e, r, "session", turn, o->new_tokens, baseline_ms, logits_ok);
    if (r->rc || !logits_ok || r->verify_bad || r->layers_out_of_order) failures++;
    if (o->unreg_mid) { cf_kv_free(&ref); free(r); break; }
    /* the turn's tokens are now in sequence 0's blocks: save prefix + new for the next turn */
    int T = prefix + o->new_tokens;
    if (o->no_save_turns) {
      P = T;
      cf_kv_free(&ref);
      free(r);
      continue;
    }
    for (int i = 0; i < (T + o->block - 1) / o->block; i++) blk32[i] = (uint32_t)r->blocks[i];
    uint64_t ev_bytes = 0, ev_chunks = 0;
    if (o->evict_turns && (rc = cf_client_evict(c, 0, UINT64_MAX, &ev_bytes, &ev_chunks))) return fatal("evict", rc);
    if ((rc = cf_client_save2(c, e.engine_id, tok32, (size_t)T, blk32, (size_t)(T + o->block - 1) / o->block, sflags,
                              &saved, NULL, &durable)))
      return fatal("save", rc);
    if (o->evict_turns) { /* what the store holds of this turn now: the Save's chunks, holes left out */
      cached = on_cpu = on_ssd = 0;
      if ((rc = cf_client_lookup(c, e.engine_id, tok32, (size_t)T, &cached, &on_cpu, &on_ssd))) return fatal("lookup", rc);
      printf("{\"mode\":\"turn_save\",\"turn\":%d,\"tokens\":%d,\"evicted_chunks\":%llu,\"saved_tokens\":%u,"
             "\"lookup_cached\":%u}\n", turn, T, (unsigned long long)ev_chunks, saved, cached);
    }
    shadow_saved(&e, r->blocks, (int)saved);
    P = T;
    cf_kv_free(&ref);
    free(r);
  }

  if (o->evict_turns && !o->unreg_mid) {
    /* sequence 0's blocks (the ones the last turn's Restore wrote, skipped cells and all) reused
     * for other tokens: a prompt with another first token, prefilled here and saved after an
     * evict, is stored whole (its chunk keys are not the skipped chunks') */
    int32_t keep0 = e.conv[0];
    e.conv[0] = (int32_t)((e.conv[0] + 1) % e.m->cfg.vocab);
    uint32_t rtok[65536], rblk[4096];
    static int32_t rb[4096];
    int n = P, nb = (n + o->block - 1) / o->block;
    seq_blocks(&e, 0, rb, nb);
    int tk = prefill_layers(&e, rb, 0, n, -1, logits);
    if (tk < 0) return fatal("reuse prefill", tk);
    for (int i = 0; i < n; i++) rtok[i] = (uint32_t)e.conv[i];
    for (int i = 0; i < nb; i++) rblk[i] = (uint32_t)rb[i];
    uint64_t eb = 0, ec = 0;
    uint32_t rsaved = 0;
    cached = on_cpu = on_ssd = 0;
    if ((rc = cf_client_evict(c, 0, UINT64_MAX, &eb, &ec))) return fatal("evict", rc);
    if ((rc = cf_client_save2(c, e.engine_id, rtok, (size_t)n, rblk, (size_t)nb, 0, &rsaved, NULL, &durable)))
      return fatal("reuse save", rc);
    if ((rc = cf_client_lookup(c, e.engine_id, rtok, (size_t)n, &cached, &on_cpu, &on_ssd))) return fatal("lookup", rc);
    printf("{\"mode\":\"reuse_save\",\"tokens\":%d,\"saved_tokens\":%u,\"lookup_cached\":%u}\n", n, rsaved, cached);
    e.conv[0] = keep0;
  }

  if (o->concurrent > 0 && !o->unreg_mid) {
    restore_t **rs = calloc((size_t)o->concurrent, sizeof *rs);
    pthread_t *th = calloc((size_t)o->concurrent, sizeof *th);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)o->concurrent);
    for (int i = 0; i < o->concurrent; i++) {
      rs[i] = calloc(1, sizeof **rs);
      rs[i]->e = &e; rs[i]->prefix = P; rs[i]->seq = 2 + i; rs[i]->start = &start;
      if ((rc = cf_client_connect(o->daemon, 120000, &rs[i]->c))) return fatal("connect", rc);
    }
    for (int i = 0; i < o->concurrent; i++) pthread_create(&th[i], NULL, concurrent_worker, rs[i]);
    for (int i = 0; i < o->concurrent; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    cf_kv_t ref = {0};
    if (o->verify && (rc = reference_kv(&e, P, &ref))) return fatal("reference", rc);
    for (int i = 0; i < o->concurrent; i++) {
      if (o->verify && !rs[i]->rc) verify_cells(rs[i], &ref);
      print_result(&e, rs[i], "concurrent", i, o->new_tokens, 0, 1);
      if (rs[i]->rc || rs[i]->verify_bad || rs[i]->layers_out_of_order) failures++;
      cf_client_close(rs[i]->c);
      free(rs[i]);
    }
    free(rs); free(th);
    cf_kv_free(&ref);
  }
  if (!o->unreg_mid && (rc = cf_client_unregister(c, e.engine_id))) { die("unregister", rc); failures++; }
  cf_client_close(c);
  cf_ready_close(&e.ready);
  cf_kvmap_close(&e.kv);
  cf_backend_free(e.be);
  cf_model_free(e.m);
  for (int l = 0; l < e.L; l++) { free(e.shadow_k[l]); free(e.shadow_v[l]); }
  free(e.shadow_k); free(e.shadow_v);
  free(e.conv); free(logits); free(logits_ref); free(tok32); free(blk32);
  return failures ? 1 : 0;
}
