/* kt_borrow — the cuda backend on an engine's weights (issue 18), across two real processes.
 *
 * engine  (this binary, --engine DIR) makes the test model's weights as vLLM holds them on a GPU:
 *         bf16, fused model.layers.N.self_attn.qkv_proj / mlp.gate_up_proj, o_proj, down_proj,
 *         norms, embedding, in one cudaMalloc; exports it with CUDA IPC (cf_gpu_ipc_export) into
 *         DIR/handle and waits to be killed.
 * daemon  (the parent) computes KV with the cuda backend's own copy, opens the handle
 *         (cf_gpu_ipc_open), checks the tensors against the checkpoint through device copies of
 *         sampled elements (cf_borrow_device), points the backend at them (cf_backend_cuda_borrow):
 *         the device memory it frees shows in cudaMemGetInfo and cf_backend_cuda_device_bytes, and
 *         the KV computed on the engine's tensors equals the own copy's bit for bit; back on its
 *         own copy (cf_backend_cuda_unborrow) the KV is the same again; an element the engine's
 *         memory holds changed is refused (CF_EMISMATCH).
 * Written and compiled; not yet run on a GPU. Without a GPU it prints a skip line. Ends with
 * "N passed, N failed[, N skipped]".
 */
#include <cuda_runtime_api.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpu/cf_gpu.h"
#include "gpu/cf_gpu_kv.h"
#include "model/cf_backend.h"
#include "model/cf_borrow.h"
#include "model/cf_model_synth.h"
#include "util/cf_dtype.h"
#include "util/cf_err.h"

static int g_pass, g_fail, g_skip;
static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void check(int ok, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf(ok ? "ok   " : "FAIL ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  ok ? g_pass++ : g_fail++;
}
static int finish(void) {
  printf("%d passed, %d failed%s\n", g_pass, g_fail, g_skip ? ", 1 skipped" : "");
  return g_fail ? 1 : 0;
}

static cf_model_t *model(void) {
  cf_model_config_t mc;
  if (cf_synth_preset("tiny", &mc)) return NULL;
  mc.n_layers = 3;
  mc.qkv_bias = mc.o_bias = mc.mlp_bias = 0;
  cf_synth_opts_t so = {.seed = 11, .std = 0.05f, .norm_jitter = 0.1f};
  cf_model_t *m;
  return cf_model_synth(&mc, &so, &m) ? NULL : m;
}

#define MAXT 64
typedef struct {
  cf_borrow_tensor_t t[MAXT];
  char names[MAXT][96];
  size_t off[MAXT];
  int n;
  size_t len;
} lay_t;

/* One tensor of rows blocks (src, rows, each row k columns from k0 of kk); host == NULL: layout only. */
static void put(lay_t *L, uint8_t *host, const char *name, int nblk, const float *const *src, const int64_t *rows,
                int64_t k, int64_t kk, int ndim) {
  int64_t r = 0;
  for (int b = 0; b < nblk; b++) r += rows[b];
  if (host)
    for (int b = 0, row = 0; b < nblk; b++)
      for (int64_t i = 0; i < rows[b]; i++, row++)
        cf_dtype_from_f32(CF_DT_BF16, src[b] + i * kk, host + L->len + (size_t)row * k * 2, (size_t)k);
  snprintf(L->names[L->n], sizeof L->names[0], "%s", name);
  L->t[L->n] = (cf_borrow_tensor_t){.name = L->names[L->n], .ndim = ndim, .shape = {r, ndim > 1 ? k : 0},
                                    .dtype = CF_DT_BF16, .tp_rank = 0, .tp_size = 1};
  L->off[L->n++] = L->len;
  L->len += ((size_t)(r * k) * 2 + 255) / 256 * 256;
}

static void lay_out(lay_t *L, const cf_model_t *m, uint8_t *host) {
  const cf_model_config_t *c = &m->cfg;
  int64_t H = c->hidden, hd = c->head_dim, nq = (int64_t)c->n_heads * hd, nkv = (int64_t)c->n_kv_heads * hd, I = c->intermediate;
  char nm[96];
  memset(L, 0, sizeof *L);
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    const float *qkv[3] = {w->wq, w->wk, w->wv}, *gu[2] = {w->w_gate, w->w_up};
    int64_t rq[3] = {nq, nkv, nkv}, rg[2] = {I, I}, rh[1] = {H};
    snprintf(nm, sizeof nm, "model.layers.%d.self_attn.qkv_proj.weight", l);
    put(L, host, nm, 3, qkv, rq, H, H, 2);
    snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l);
    put(L, host, nm, 1, &w->wo, rh, nq, nq, 2);
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_up_proj.weight", l);
    put(L, host, nm, 2, gu, rg, H, H, 2);
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
    put(L, host, nm, 1, &w->w_down, rh, I, I, 2);
    snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
    put(L, host, nm, 1, &w->attn_norm, rh, 1, 1, 1);
    snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
    put(L, host, nm, 1, &w->mlp_norm, rh, 1, 1, 1);
  }
  int64_t rv[1] = {c->vocab}, rh[1] = {H};
  put(L, host, "model.embed_tokens.weight", 1, &m->embed, rv, H, H, 2);
  put(L, host, "model.norm.weight", 1, &m->final_norm, rh, 1, 1, 1);
  if (m->lm_head && m->lm_head != m->embed) put(L, host, "lm_head.weight", 1, &m->lm_head, rv, H, H, 2);
}

static int engine(const char *dir) {
  cf_model_t *m = model();
  lay_t L;
  if (!m) return 2;
  lay_out(&L, m, NULL);
  uint8_t *host = calloc(1, L.len);
  lay_out(&L, m, host);
  void *dev = NULL;
  if (cudaSetDevice(0) != cudaSuccess || cudaMalloc(&dev, L.len) != cudaSuccess ||
      cudaMemcpy(dev, host, L.len, cudaMemcpyHostToDevice) != cudaSuccess)
    return 3;
  cf_gpu_ipc_handle_t h;
  uint64_t off = 0;
  if (cf_gpu_ipc_export(dev, &h, &off)) { fprintf(stderr, "engine: %s\n", cf_errmsg()); return 4; }
  char path[512], tmp[600];
  snprintf(path, sizeof path, "%s/handle", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f || fwrite(h.b, 1, sizeof h.b, f) != sizeof h.b || fwrite(&off, sizeof off, 1, f) != 1 || fclose(f)) return 5;
  rename(tmp, path);
  for (int i = 0; i < 600; i++) sleep(1); /* the daemon side kills it */
  return 0;
}

/* KV of T tokens through every layer (the host API of the cuda backend). */
static void kv_of(cf_backend_t *be, int T, float *out) {
  const cf_model_config_t *c = &be->model->cfg;
  size_t per = (size_t)T * c->n_kv_heads * c->head_dim;
  int32_t tok[64];
  for (int t = 0; t < T; t++) tok[t] = (t * 37 + 5) % c->vocab;
  float *k[8], *v[8];
  for (int l = 0; l < c->n_layers; l++) { k[l] = out + 2 * l * per; v[l] = k[l] + per; }
  cf_fwd_args_t a = {.l0 = 0, .l1 = c->n_layers, .t0 = 0, .t1 = T, .tokens = tok, .k = k, .v = v};
  int rc = cf_backend_forward(be, &a);
  if (rc) printf("forward: %s\n", cf_errmsg());
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 3 && !strcmp(argv[1], "--engine")) return engine(argv[2]);
  if (cf_backend_cuda_devices() <= 0) {
    printf("skip: no CUDA GPU on this machine\n");
    g_skip++;
    return finish();
  }
  char dir[] = "/tmp/kt_borrow.XXXXXX";
  if (!mkdtemp(dir)) { check(0, "mkdtemp"); return finish(); }
  fflush(stdout);
  pid_t e = fork();
  if (e == 0) { execl("/proc/self/exe", argv[0], "--engine", dir, (char *)NULL); _exit(127); }
  cf_model_t *m = model();
  cf_backend_t *be = NULL;
  int rc = m ? cf_backend_cuda_create(m, 0, &be) : CF_ENOMEM;
  check(rc == 0, "cuda backend on the test model: %s", rc ? cf_errmsg() : "ok");
  char path[512];
  snprintf(path, sizeof path, "%s/handle", dir);
  struct stat sb;
  for (int i = 0; i < 600 && stat(path, &sb) != 0; i++) usleep(100000);
  cf_gpu_ipc_handle_t h;
  uint64_t off = 0;
  FILE *f = fopen(path, "rb");
  int got = f && fread(h.b, 1, sizeof h.b, f) == sizeof h.b && fread(&off, sizeof off, 1, f) == 1;
  if (f) fclose(f);
  check(got, "the engine exported its weights with CUDA IPC");
  if (rc || !got) goto out;
  int T = 40;
  size_t n = 2 * (size_t)m->cfg.n_layers * T * m->cfg.n_kv_heads * m->cfg.head_dim;
  float *k_own = calloc(n, 4), *k_b = calloc(n, 4), *k_back = calloc(n, 4);
  kv_of(be, T, k_own);
  void *base = NULL;
  uint64_t bytes = 0;
  rc = cf_gpu_ipc_open(&h, &base, &bytes);
  check(rc == 0, "the daemon opens the engine's allocation (%llu bytes): %s", (unsigned long long)bytes, rc ? cf_errmsg() : "ok");
  if (rc) goto out;
  lay_t L;
  lay_out(&L, m, NULL);
  for (int i = 0; i < L.n; i++) L.t[i].data = (uint8_t *)base + off + L.off[i];
  cf_borrow_dev_t dev;
  cf_borrow_report_t rep;
  rc = cf_borrow_device(m, L.t, L.n, 64, cf_gpu_copy_to_host, NULL, &dev, &rep);
  check(rc == 0, "cf_borrow_device: %d weights, %lld elements checked through device copies: %s", rep.weights,
        (long long)rep.elements_checked, rc ? cf_errmsg() : "ok");
  if (rc) goto out;
  size_t free0, free1, tot, released = 0, held0 = cf_backend_cuda_device_bytes(be);
  cudaMemGetInfo(&free0, &tot);
  rc = cf_backend_cuda_borrow(be, &dev, &released);
  cudaMemGetInfo(&free1, &tot);
  check(rc == 0 && released > 0 && free1 >= free0 + released / 2 && cf_backend_cuda_device_bytes(be) + released == held0,
        "borrowed: %zu bytes of its own copy freed (cudaMemGetInfo free %zu -> %zu; held %zu -> %zu)", released, free0,
        free1, held0, cf_backend_cuda_device_bytes(be));
  kv_of(be, T, k_b);
  check(!memcmp(k_own, k_b, n * 4), "KV on the engine's tensors == KV on the own copy (bit for bit)");
  rc = cf_backend_cuda_unborrow(be);
  kv_of(be, T, k_back);
  check(rc == 0 && !memcmp(k_own, k_back, n * 4) && cf_backend_cuda_device_bytes(be) == held0,
        "back on its own copy: same KV, device bytes back (%zu)", cf_backend_cuda_device_bytes(be));
  cf_borrow_device_free(&dev);
  uint16_t poke = 0x3f80; /* 1.0 in bf16, where the checkpoint has a small random value */
  cudaMemcpy((uint8_t *)base + off + L.off[0], &poke, 2, cudaMemcpyHostToDevice);
  rc = cf_borrow_device(m, L.t, L.n, 64, cf_gpu_copy_to_host, NULL, &dev, &rep);
  check(rc == CF_EMISMATCH, "a changed element of qkv_proj in the engine's memory: CF_EMISMATCH (%s)", cf_errmsg());
  cf_gpu_ipc_close(base);
  free(k_own); free(k_b); free(k_back);
out:
  kill(e, SIGKILL);
  waitpid(e, NULL, 0);
  cf_backend_free(be);
  cf_model_synth_free(m);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd)) { /* harmless */ }
  return finish();
}
