/* cf-gpuengine — a minimal GPU inference engine for the end-to-end check of cacheflowd's GPU
 * executor (gpu_executor = on, backend = cuda): its paged KV lives in device memory and reaches
 * the daemon as CUDA IPC handles over gRPC.
 *
 *   cf-gpuengine --daemon unix:SOCK --model DIR [--prefix 1000] [--block 16] [--seed 1]
 *
 * 1. computes the prefix's KV with the CPU backend (fp32), rounds it to bf16 and writes it into
 *    its device blocks (vLLM layout, one cudaMalloc for every layer; a shuffled block table);
 * 2. registers the blocks (cudaIpcGetMemHandle + offsets, its GPU's UUID) and Saves the prefix;
 * 3. for every policy: poisons the blocks, Restores the prefix into another block set, waits for
 *    the stream to end, copies the blocks back and checks every cell: "exact" (the saved bytes:
 *    loaded) or "close" (relative L2 <= 2e-2 of the fp32 KV: recomputed on the GPU); any "bad"
 *    cell, poison, a layer event out of order or a failed restore fails the run.
 * Prints "RESULT e2e_<policy> ..." lines and "N passed, N failed". UNVERIFIED until a device
 * session runs it (tests/device/run.sh step gpuexec-e2e).
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cf_client.h"
#include "gpu/cf_gpu.h"
#include "gpu/cf_gpu_kv.h"
#include "ipc/cf_ready.h"
#include "model/cf_backend.h"
#include "model/cf_model.h"
#include "util/cf_err.h"

static int g_pass, g_fail;
static void check(int ok, const char *what, const char *detail) {
  printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what, detail ? ": " : "", detail ? detail : "");
  fflush(stdout);
  if (ok) g_pass++;
  else g_fail++;
}
static int finish(void) {
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail ? 1 : 0;
}

#if !(defined(CF_HAVE_CUDA) && CF_HAVE_CUDA)
int main(void) {
  printf("skip: built without CUDA\n0 passed, 0 failed, 1 skipped\n");
  return 0;
}
#else
#include <cuda_runtime_api.h>

#define DIE(...) do { char b_[512]; snprintf(b_, sizeof b_, __VA_ARGS__); check(0, "setup", b_); return finish(); } while (0)

typedef struct {
  int last_layers, order_ok, done, err, slot;
  double t_done;
} rstate_t;

static int on_event(void *arg, const Cacheflow__V1__RestoreEvent *ev) {
  rstate_t *s = arg;
  if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN) {
    s->slot = (int)ev->plan->readiness_slot;
  } else if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS) {
    if ((int)ev->layers->layers_ready <= s->last_layers) s->order_ok = 0;
    s->last_layers = (int)ev->layers->layers_ready;
  } else if (ev->event_case == CACHEFLOW__V1__RESTORE_EVENT__EVENT_DONE) {
    s->done = 1;
  }
  return 0;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *addr = NULL, *model_dir = NULL;
  int T = 1000, bs = 16;
  unsigned long long seed = 1;
  static struct option lo[] = {{"daemon", 1, 0, 'd'}, {"model", 1, 0, 'm'}, {"prefix", 1, 0, 'p'},
                               {"block", 1, 0, 'b'}, {"seed", 1, 0, 's'}, {0, 0, 0, 0}};
  for (int o; (o = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
    if (o == 'd') addr = optarg;
    else if (o == 'm') model_dir = optarg;
    else if (o == 'p') T = atoi(optarg);
    else if (o == 'b') bs = atoi(optarg);
    else if (o == 's') seed = strtoull(optarg, NULL, 10);
    else { fprintf(stderr, "usage: cf-gpuengine --daemon ADDR --model DIR [--prefix N] [--block N] [--seed N]\n"); return 2; }
  }
  if (!addr || !model_dir || T < 1 || bs < 1) { fprintf(stderr, "cf-gpuengine: --daemon and --model required\n"); return 2; }
  cf_model_t *m = NULL;
  cf_backend_t *be = NULL;
  int rc = cf_model_load(model_dir, &m);
  if (!rc) rc = cf_backend_cpu_create(m, 8, &be);
  if (rc) DIE("model %s: %s", model_dir, cf_errmsg());
  const cf_model_config_t *mc = &m->cfg;
  int L = mc->n_layers;
  size_t row = (size_t)mc->n_kv_heads * mc->head_dim;
  /* tokens and the reference KV (fp32) */
  int32_t *tok = malloc(sizeof(int32_t) * T);
  uint32_t *utok = malloc(sizeof(uint32_t) * T);
  for (int t = 0; t < T; t++) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    tok[t] = (int32_t)((seed >> 33) % (unsigned long long)mc->vocab);
    utok[t] = (uint32_t)tok[t];
  }
  float *rk = malloc(sizeof(float) * L * T * row), *rv = malloc(sizeof(float) * L * T * row);
  float **kp = malloc(sizeof(float *) * L), **vp = malloc(sizeof(float *) * L);
  for (int l = 0; l < L; l++) { kp[l] = rk + (size_t)l * T * row; vp[l] = rv + (size_t)l * T * row; }
  cf_fwd_args_t fa = {.l0 = 0, .l1 = L, .t0 = 0, .t1 = T, .tokens = tok, .k = kp, .v = vp};
  if ((rc = cf_backend_forward(be, &fa))) DIE("reference prefill: %s", cf_errmsg());
  /* device blocks: two block sets of nb blocks in a pool of 2*nb+3, vLLM layout per layer */
  int nb = (T + bs - 1) / bs, pool = 2 * nb + 3;
  size_t blk = (size_t)bs * row * 2, plane = blk * pool, total = plane * 2 * L;
  uint8_t *dbuf = NULL;
  if (cudaMalloc((void **)&dbuf, total) != cudaSuccess) DIE("cudaMalloc %zu bytes", total);
  uint32_t *blocks_save = malloc(sizeof(uint32_t) * nb), *blocks_rest = malloc(sizeof(uint32_t) * nb);
  int *perm = malloc(sizeof(int) * pool);
  for (int i = 0; i < pool; i++) perm[i] = i;
  for (int i = pool - 1; i > 0; i--) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    int j = (int)((seed >> 33) % (unsigned long long)(i + 1)), x = perm[i]; perm[i] = perm[j]; perm[j] = x;
  }
  for (int i = 0; i < nb; i++) { blocks_save[i] = (uint32_t)perm[i]; blocks_rest[i] = (uint32_t)perm[nb + i]; }
  /* host image of the blocks: the prefix's bf16 KV in the save blocks, poison elsewhere */
  uint16_t *img = malloc(total);
  memset(img, 0xff, total);
  for (int l = 0; l < L; l++)
    for (int t = 0; t < T; t++) {
      size_t off = (plane * 2 * l + (size_t)blocks_save[t / bs] * blk + (size_t)(t % bs) * row * 2) / 2;
      cf_dtype_from_f32(CF_DT_BF16, kp[l] + (size_t)t * row, img + off, row);
      cf_dtype_from_f32(CF_DT_BF16, vp[l] + (size_t)t * row, img + off + plane / 2, row);
    }
  /* synchronised: the daemon (another process, no stream order with ours) reads these blocks at
   * Save, and a pageable cudaMemcpy may return before its DMA lands */
  if (cudaMemcpy(dbuf, img, total, cudaMemcpyHostToDevice) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess)
    DIE("upload");
  /* register over gRPC with CUDA IPC handles */
  cf_client_t *c = NULL;
  if ((rc = cf_client_connect(addr, 10000, &c))) DIE("connect %s: %s", addr, cf_errmsg());
  Cacheflow__V1__StatsResponse *st = NULL;
  if ((rc = cf_client_stats(c, &st))) DIE("stats: %s", cf_errmsg());
  cf_gpu_ipc_handle_t h;
  uint64_t base_off = 0;
  uint8_t uuid[CF_GPU_UUID_BYTES];
  char us[48];
  if ((rc = cf_gpu_ipc_export(dbuf, &h, &base_off)) || (rc = cf_gpu_device_uuid(0, uuid))) DIE("IPC export / UUID: %s", cf_errmsg());
  cf_gpu_uuid_str(uuid, us);
  Cacheflow__V1__LayerLayout *lay = calloc(L, sizeof *lay), **lp = calloc(L, sizeof *lp);
  Cacheflow__V1__KvBuffer *kvb = calloc(2 * L, sizeof *kvb);
  Cacheflow__V1__CudaIpcBuffer *ipc = calloc(2 * L, sizeof *ipc);
  for (int l = 0; l < L; l++) {
    cacheflow__v1__layer_layout__init(&lay[l]);
    for (int j = 0; j < 2; j++) {
      Cacheflow__V1__KvBuffer *b = &kvb[2 * l + j];
      cacheflow__v1__kv_buffer__init(b);
      cacheflow__v1__cuda_ipc_buffer__init(&ipc[2 * l + j]);
      ipc[2 * l + j].ipc_handle.data = h.b;
      ipc[2 * l + j].ipc_handle.len = CF_GPU_IPC_HANDLE_BYTES;
      ipc[2 * l + j].gpu_uuid = us;
      b->location_case = CACHEFLOW__V1__KV_BUFFER__LOCATION_CUDA_IPC;
      b->cuda_ipc = &ipc[2 * l + j];
      b->offset = base_off + plane * (2 * l + j);
    }
    lay[l].layer = (uint32_t)l;
    lay[l].k = &kvb[2 * l];
    lay[l].v = &kvb[2 * l + 1];
    lay[l].block_size = (uint32_t)bs;
    lay[l].num_blocks = (uint32_t)pool;
    lay[l].block_stride = blk;
    lay[l].token_stride = row * 2;
    lay[l].head_stride = (uint64_t)mc->head_dim * 2;
    lay[l].dtype = CACHEFLOW__V1__DTYPE__DTYPE_BF16;
    lay[l].num_kv_heads = (uint32_t)mc->n_kv_heads;
    lay[l].head_dim = (uint32_t)mc->head_dim;
    lp[l] = &lay[l];
  }
  Cacheflow__V1__RegisterEngineRequest req = CACHEFLOW__V1__REGISTER_ENGINE_REQUEST__INIT;
  req.model_fingerprint = st->model_fingerprint;
  req.n_layers = (size_t)L;
  req.layers = lp;
  req.name = "cf-gpuengine";
  int chunk = 256; /* the daemon's chunk_tokens: cells are classified per stored chunk */
  Cacheflow__V1__GetConfigResponse *gc = NULL;
  if (!cf_client_get_config(c, "chunk_tokens", &gc) && gc->n_entries == 1) chunk = atoi(gc->entries[0]->value);
  if (gc) cacheflow__v1__get_config_response__free_unpacked(gc, NULL);
  if (chunk < 1) DIE("chunk_tokens from GetConfig: %d", chunk);
  uint64_t eng = 0;
  ProtobufCMessage *resp = NULL;
  rc = cf_client_call(c, "/cacheflow.v1.CacheFlow/RegisterEngine", &req.base,
                      &cacheflow__v1__register_engine_response__descriptor, &resp);
  check(rc == 0, "RegisterEngine with CUDA IPC buffers", rc ? cf_errmsg() : NULL);
  if (rc) return finish();
  eng = ((Cacheflow__V1__RegisterEngineResponse *)resp)->engine_id;
  /* the readiness file: the daemon's GPU writes each restore's per-layer gate into it */
  cf_ready_t rdy;
  memset(&rdy, 0, sizeof rdy);
  const char *rpath = ((Cacheflow__V1__RegisterEngineResponse *)resp)->readiness_shm_path;
  rc = rpath && rpath[0] ? cf_ready_open(&rdy, rpath) : CF_ENOENT;
  check(rc == 0, "readiness file from RegisterEngine opens", rpath);
  protobuf_c_message_free_unpacked(resp, NULL);
  uint32_t saved = 0;
  int durable = 0;
  rc = cf_client_save(c, eng, utok, (size_t)T, blocks_save, (size_t)nb, &saved, &durable);
  char d[256];
  snprintf(d, sizeof d, "%u of %d tokens saved%s%s", saved, T, rc ? ": " : "", rc ? cf_errmsg() : "");
  check(rc == 0 && (int)saved == T, "Save (device blocks -> store, D2H)", d);
  /* every policy: restore into the other block set and check every cell */
  static const char *pol_name[] = {"", "recompute", "load", "cake", "layerwise", "cacheflow", "optimal"};
  size_t cell_max = row * (size_t)T;
  uint16_t *gk = malloc(cell_max * 2), *gv = malloc(cell_max * 2);
  float *fk = malloc(cell_max * 4), *fv = malloc(cell_max * 4);
  /* every policy from the CPU tier (pinned), then load and optimal with the CPU tier evicted: the
   * cells come from the SSD tier through pinned read buffers */
  static const int runs[][2] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}, {6, 0}, {2, 1}, {6, 1}};
  for (int ri = 0; ri < (int)(sizeof runs / sizeof runs[0]); ri++) {
    int pol = runs[ri][0], ssd = runs[ri][1];
    if (ssd && ri && !runs[ri - 1][1]) {
      uint64_t eb = 0, ec = 0;
      rc = cf_client_evict(c, CACHEFLOW__V1__TIER__TIER_CPU, 0, &eb, &ec);
      snprintf(d, sizeof d, "%llu chunks, %llu bytes%s%s", (unsigned long long)ec, (unsigned long long)eb,
               rc ? ": " : "", rc ? cf_errmsg() : "");
      check(rc == 0 && ec > 0, "Evict the CPU tier (restores then read the SSD tier)", d);
    }
    /* cudaMemset is asynchronous: without the sync the poison could land after the daemon's
     * restore writes (another process) and read as restore failures */
    if (cudaMemset(dbuf, 0xff, total) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) DIE("poison");
    Cacheflow__V1__RestoreRequest rr = CACHEFLOW__V1__RESTORE_REQUEST__INIT;
    rr.engine_id = eng;
    rr.n_token_ids = (size_t)T;
    rr.token_ids = utok;
    rr.n_block_ids = (size_t)nb;
    rr.block_ids = blocks_rest;
    rr.policy = (Cacheflow__V1__Policy)pol;
    rstate_t s = {.last_layers = 0, .order_ok = 1, .slot = -1};
    double t0 = now_s();
    rc = cf_client_restore(c, &rr, on_event, &s);
    double dt = now_s() - t0;
    snprintf(d, sizeof d, "%s (%.1f ms)", rc ? cf_errmsg() : "stream OK", dt * 1e3);
    char what[64];
    snprintf(what, sizeof what, "%s%s: Restore", ssd ? "ssd-" : "", pol_name[pol]);
    check(rc == 0 && s.done && s.order_ok && s.last_layers == L, what, d);
    if (rdy.slots && s.slot >= 0 && s.slot < rdy.n_slots) { /* the GPU-written gate reached L */
      uint64_t layers = 0;
      int wr = cf_ready_wait(&rdy, s.slot, (uint64_t)L, 5000000000LL, &layers);
      uint64_t gate = atomic_load(&rdy.slots[s.slot].gate);
      snprintf(d, sizeof d, "slot %d: layers %llu, gate %llu (want %d)", s.slot, (unsigned long long)layers,
               (unsigned long long)gate, L);
      snprintf(what, sizeof what, "%s%s: readiness counter and GPU gate", ssd ? "ssd-" : "", pol_name[pol]);
      check(wr == 0 && gate == (uint64_t)L, what, d);
    }
    if (cudaMemcpy(img, dbuf, total, cudaMemcpyDeviceToHost) != cudaSuccess) DIE("download");
    int exact = 0, close_ = 0, bad = 0, poison = 0;
    for (int l = 0; l < L; l++)
      for (int t = 0; t < T; t++) {
        size_t off = (plane * 2 * l + (size_t)blocks_rest[t / bs] * blk + (size_t)(t % bs) * row * 2) / 2;
        memcpy(gk + (size_t)t * row, img + off, row * 2);
        memcpy(gv + (size_t)t * row, img + off + plane / 2, row * 2);
      }
    /* per stored chunk of C tokens (the daemon's chunk_tokens) and layer */
    int C = chunk;
    for (int l = 0; l < L; l++)
      for (int t0c = 0; t0c < T; t0c += C) {
        int n = (t0c + C < T ? C : T - t0c) * (int)row;
        const uint16_t *ak = gk + (size_t)t0c * row, *av = gv + (size_t)t0c * row;
        for (int i = 0; i < n; i++) poison += ak[i] == 0xffff || av[i] == 0xffff;
        /* the saved bytes: the bf16 rounding of the reference */
        uint16_t *sk = malloc((size_t)n * 2), *sv = malloc((size_t)n * 2);
        cf_dtype_from_f32(CF_DT_BF16, kp[l] + (size_t)t0c * row, sk, (size_t)n);
        cf_dtype_from_f32(CF_DT_BF16, vp[l] + (size_t)t0c * row, sv, (size_t)n);
        if (!memcmp(ak, sk, (size_t)n * 2) && !memcmp(av, sv, (size_t)n * 2)) exact++;
        else {
          cf_dtype_to_f32(CF_DT_BF16, ak, fk, (size_t)n);
          cf_dtype_to_f32(CF_DT_BF16, av, fv, (size_t)n);
          double num = 0, den = 0;
          for (int i = 0; i < n; i++) {
            double a = fk[i] - kp[l][(size_t)t0c * row + i], b = fv[i] - vp[l][(size_t)t0c * row + i];
            num += a * a + b * b;
            den += (double)kp[l][(size_t)t0c * row + i] * kp[l][(size_t)t0c * row + i] +
                   (double)vp[l][(size_t)t0c * row + i] * vp[l][(size_t)t0c * row + i];
          }
          if (sqrt(num / (den > 0 ? den : 1)) <= 2e-2) close_++;
          else bad++;
        }
        free(sk); free(sv);
      }
    snprintf(d, sizeof d, "%d exact (loaded), %d close (recomputed), %d bad, %d poisoned elements", exact, close_, bad, poison);
    snprintf(what, sizeof what, "%s%s: restored bytes", ssd ? "ssd-" : "", pol_name[pol]);
    check(bad == 0 && poison == 0, what, d);
    printf("RESULT e2e_%s%s tokens=%d ms=%.2f exact=%d close=%d bad=%d\n", ssd ? "ssd-" : "", pol_name[pol], T, dt * 1e3,
           exact, close_, bad);
  }
  cf_ready_close(&rdy);
  cf_client_unregister(c, eng);
  cacheflow__v1__stats_response__free_unpacked(st, NULL);
  cf_client_close(c);
  cudaFree(dbuf);
  return finish();
}
#endif
