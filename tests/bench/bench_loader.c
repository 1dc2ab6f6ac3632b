/* bench_loader — how fast cf_model_load makes weights usable, as ratios to memcpy measured in
 * the same run.
 *
 * Writes one llama checkpoint (hidden 512, 4 layers, vocab 8000: ~19M parameters) in F32 and
 * in BF16 into $TMPDIR, then (page cache warm, best of 3):
 *   memcpy   copy of the F32 weight bytes (the baseline)
 *   f32      cf_model_load + reading every weight once (zero-copy mapping: page faults only)
 *   bf16     cf_model_load, which widens every weight into owned fp32 buffers
 * and prints GB/s of fp32 weights made available and the ratio to memcpy.
 *   usage: bench_loader [layers]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "model/cf_model.h"
#include "model/cf_safetensors.h"
#include "util/cf_err.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
  char name[96];
  int64_t d0, d1;
} spec_t;

static int write_ckpt(const char *dir, int layers, cf_dtype_t dt, const float *src) {
  const int H = 512, I = 1408, V = 8000, KV = 128;
  mkdir(dir, 0755);
  char p[512];
  snprintf(p, sizeof p, "%s/config.json", dir);
  FILE *f = fopen(p, "w");
  if (!f) return -1;
  fprintf(f, "{\"model_type\":\"llama\",\"hidden_size\":%d,\"intermediate_size\":%d,"
             "\"num_attention_heads\":8,\"num_key_value_heads\":2,\"num_hidden_layers\":%d,"
             "\"vocab_size\":%d,\"dtype\":\"%s\"}", H, I, layers, V,
          dt == CF_DT_F32 ? "float32" : "bfloat16");
  fclose(f);
  spec_t s[16 * 64];
  int n = 0;
#define ADD(a, b, ...) do { snprintf(s[n].name, sizeof s[n].name, __VA_ARGS__); s[n].d0 = a; s[n].d1 = b; n++; } while (0)
  ADD(V, H, "model.embed_tokens.weight");
  ADD(V, H, "lm_head.weight");
  ADD(H, 0, "model.norm.weight");
  for (int l = 0; l < layers; l++) {
    ADD(H, 0, "model.layers.%d.input_layernorm.weight", l);
    ADD(H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    ADD(H, H, "model.layers.%d.self_attn.q_proj.weight", l);
    ADD(KV, H, "model.layers.%d.self_attn.k_proj.weight", l);
    ADD(KV, H, "model.layers.%d.self_attn.v_proj.weight", l);
    ADD(H, H, "model.layers.%d.self_attn.o_proj.weight", l);
    ADD(I, H, "model.layers.%d.mlp.gate_proj.weight", l);
    ADD(I, H, "model.layers.%d.mlp.up_proj.weight", l);
    ADD(H, I, "model.layers.%d.mlp.down_proj.weight", l);
  }
#undef ADD
  size_t maxn = (size_t)V * H;
  void *bf = dt == CF_DT_BF16 ? malloc(maxn * 2 * (size_t)n) : NULL;
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    size_t numel = (size_t)s[i].d0 * (s[i].d1 ? (size_t)s[i].d1 : 1);
    const void *data = src;
    if (bf) { cf_f32_to_bf16(src, (char *)bf + off, numel); data = (char *)bf + off; off += numel * 2; }
    int64_t shape[2] = {s[i].d0, s[i].d1};
    if (cf_st_writer_add(&w, s[i].name, dt, s[i].d1 ? 2 : 1, shape, data)) return -1;
  }
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  int rc = cf_st_writer_write(&w, p);
  cf_st_writer_close(&w);
  free(bf);
  return rc;
}

/* Reads every weight once (forces the mapping's pages in) and returns a checksum. */
static double touch(const cf_model_t *m) {
  const cf_model_config_t *c = &m->cfg;
  size_t H = (size_t)c->hidden, q = (size_t)c->n_heads * c->head_dim,
         kv = (size_t)c->n_kv_heads * c->head_dim, I = (size_t)c->intermediate;
  double s = 0;
#define SUM(p, n) do { for (size_t j = 0; j < (n); j += 16) s += (p)[j]; } while (0)
  SUM(m->embed, (size_t)c->vocab * H);
  SUM(m->lm_head, (size_t)c->vocab * H);
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    SUM(w->wq, q * H); SUM(w->wk, kv * H); SUM(w->wv, kv * H); SUM(w->wo, H * q);
    SUM(w->w_gate, I * H); SUM(w->w_up, I * H); SUM(w->w_down, H * I);
  }
#undef SUM
  return s;
}

int main(int argc, char **argv) {
  int layers = argc > 1 ? atoi(argv[1]) : 4;
  if (layers < 1 || layers > 64) { fprintf(stderr, "layers 1..64\n"); return 2; }
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char base[256], d32[300], dbf[300];
  snprintf(base, sizeof base, "%s/cfbench_loader.%d", tmp, (int)getpid());
  mkdir(base, 0755);
  snprintf(d32, sizeof d32, "%s/f32", base);
  snprintf(dbf, sizeof dbf, "%s/bf16", base);
  size_t maxn = (size_t)8000 * 512;
  float *src = malloc(maxn * 4);
  for (size_t i = 0; i < maxn; i++) src[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
  if (write_ckpt(d32, layers, CF_DT_F32, src) || write_ckpt(dbf, layers, CF_DT_BF16, src)) {
    fprintf(stderr, "bench_loader: writing checkpoints: %s\n", cf_errmsg());
    return 1;
  }
  /* Bytes of fp32 weights the loader makes available (norms are negligible). */
  size_t params = 2 * maxn + (size_t)layers * (2 * 512 * 512 + 2 * 128 * 512 + 3 * 1408 * 512);
  size_t bytes = params * 4;
  char *a = malloc(bytes), *b = malloc(bytes);
  memset(a, 1, bytes);
  memset(b, 2, bytes);
  double best_mc = 1e9, best32 = 1e9, bestbf = 1e9, sink = 0;
  for (int r = 0; r < 3; r++) {
    double t0 = now();
    memcpy(b, a, bytes);
    double t1 = now();
    if (t1 - t0 < best_mc) best_mc = t1 - t0;
    sink += b[r];
    cf_model_t *m;
    t0 = now();
    if (cf_model_load(d32, &m)) { fprintf(stderr, "%s\n", cf_errmsg()); return 1; }
    sink += touch(m);
    t1 = now();
    cf_model_free(m);
    if (t1 - t0 < best32) best32 = t1 - t0;
    t0 = now();
    if (cf_model_load(dbf, &m)) { fprintf(stderr, "%s\n", cf_errmsg()); return 1; }
    t1 = now();
    sink += touch(m);
    cf_model_free(m);
    if (t1 - t0 < bestbf) bestbf = t1 - t0;
  }
  double gb = bytes / 1e9;
  printf("bench_loader: %d layers, %.1f M parameters, %.0f MB as fp32 (checksum %g)\n", layers,
         params / 1e6, bytes / 1e6, sink);
  printf("%-34s %8s %9s %8s\n", "what", "ms", "GB/s", "ratio");
  printf("%-34s %8.2f %9.2f %8.2f\n", "memcpy (baseline)", best_mc * 1e3, gb / best_mc, 1.0);
  printf("%-34s %8.2f %9.2f %8.2f\n", "load F32 + read all (zero-copy)", best32 * 1e3, gb / best32, best_mc / best32);
  printf("%-34s %8.2f %9.2f %8.2f\n", "load BF16 (widen to fp32)", bestbf * 1e3, gb / bestbf, best_mc / bestbf);
  free(a);
  free(b);
  free(src);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
  return system(cmd) == 0 ? 0 : 1;
}
