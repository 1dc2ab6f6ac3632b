/* lib/model cf_borrow: an "engine" lays the served model's weights out in vLLM's fused layout
 * (qkv_proj, gate_up_proj) in a shared file; the "daemon" maps the file separately, checks the
 * tensors against the checkpoint and runs the CPU backend on views into its mapping: the KV is
 * bit-identical to the daemon's own weights', and no weight is copied. Unfused names resolve too;
 * wrong shapes, missing tensors, another model's weights, bf16 tensors and tensor-parallel
 * shards (checked slice by slice, swapped ranks caught) get the errors the header promises. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cf_test.h"
#include "util/cf_assert.h"
#include "model/cf_backend.h"
#include "model/cf_borrow.h"
#include "model/cf_model_synth.h"
#include "model/cf_safetensors.h"

typedef struct {
  cf_borrow_tensor_t t[256];
  char names[256][96];
  size_t off[256];
  int n;
  uint8_t *buf;
  size_t len, cap;
} eng_t;

/* Append tensor `name` [r][k] of dtype dt made of the row blocks (src, rows) given, each row of
 * src taken from column k0 on with `k` columns out of src's kk. */
static void put(eng_t *e, const char *name, cf_dtype_t dt, int tp_rank, int tp_size, int64_t k,
                int nblk, const float *const *src, const int64_t *rows, int64_t kk, int64_t k0, int ndim) {
  int64_t r = 0;
  for (int b = 0; b < nblk; b++) r += rows[b];
  size_t es = cf_dtype_size(dt), bytes = (size_t)(r * k) * es;
  CF_ASSERT(e->len + bytes <= e->cap && e->n < 256);
  uint8_t *dst = e->buf + e->len;
  for (int b = 0, row = 0; b < nblk; b++)
    for (int64_t i = 0; i < rows[b]; i++, row++)
      cf_dtype_from_f32(dt, src[b] + i * kk + k0, dst + (size_t)row * k * es, (size_t)k);
  snprintf(e->names[e->n], sizeof e->names[0], "%s", name);
  e->t[e->n] = (cf_borrow_tensor_t){.name = e->names[e->n], .ndim = ndim, .shape = {r, ndim > 1 ? k : 0},
                                    .dtype = dt, .tp_rank = tp_rank, .tp_size = tp_size};
  e->off[e->n++] = e->len;
  e->len += (bytes + 63) / 64 * 64;
}

/* Layer l's router and experts (MoE): vLLM's FusedMoE w13_weight [E][2I/tp][H] (each expert's
 * gate rows, then up) and w2_weight [E][H][I/tp] (3-D), or transformers' per-expert names. */
static void lay_out_moe(eng_t *e, const cf_model_t *m, int l, cf_dtype_t dt, int fused, int tp) {
  const cf_model_config_t *c = &m->cfg;
  const cf_layer_weights_t *w = &m->layers[l];
  int64_t H = c->hidden, I = c->moe_intermediate, E = c->n_experts, hrows[1] = {H}, er[1] = {E}, ir[1] = {I};
  char nm[96];
  snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate.weight", l);
  put(e, nm, dt, 0, 1, H, 1, &w->router, er, H, 0, 2);
  for (int r = 0; r < tp && fused; r++) {
    int64_t i0 = r * I / tp, rows[128];
    const float *src[128];
    CF_ASSERT(2 * E <= 128);
    for (int x = 0; x < E; x++) {
      src[2 * x] = w->e_gate[x] + i0 * H; src[2 * x + 1] = w->e_up[x] + i0 * H;
      rows[2 * x] = rows[2 * x + 1] = I / tp;
    }
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.w13_weight", l);
    put(e, nm, dt, r, tp, H, (int)(2 * E), src, rows, H, 0, 3);
    e->t[e->n - 1].shape[0] = E; e->t[e->n - 1].shape[1] = 2 * I / tp; e->t[e->n - 1].shape[2] = H;
    for (int x = 0; x < E; x++) { src[x] = w->e_down[x]; rows[x] = H; }
    snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.w2_weight", l);
    put(e, nm, dt, r, tp, I / tp, (int)E, src, rows, I, i0, 3);
    e->t[e->n - 1].shape[0] = E; e->t[e->n - 1].shape[1] = H; e->t[e->n - 1].shape[2] = I / tp;
  }
  for (int x = 0; x < E && !fused; x++) {
    const char *pn[3] = {"gate_proj", "up_proj", "down_proj"};
    const float *ps[3] = {w->e_gate[x], w->e_up[x], w->e_down[x]};
    for (int p = 0; p < 3; p++) {
      snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.%d.%s.weight", l, x, pn[p]);
      put(e, nm, dt, 0, 1, p < 2 ? H : I, 1, &ps[p], p < 2 ? ir : hrows, p < 2 ? H : I, 0, 2);
    }
  }
}

/* The engine's tensors for model m: fused (vLLM) or unfused names, split over tp shards. */
static void lay_out(eng_t *e, const cf_model_t *m, cf_dtype_t dt, int fused, int tp) {
  const cf_model_config_t *c = &m->cfg;
  int64_t H = c->hidden, hd = c->head_dim, nq = (int64_t)c->n_heads * hd, nkv = (int64_t)c->n_kv_heads * hd, I = c->intermediate;
  char nm[96];
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    for (int r = 0; r < tp; r++) {
      int64_t q0 = r * nq / tp, k0 = r * nkv / tp, i0 = r * I / tp;
      if (fused) {
        const float *s[3] = {w->wq + q0 * H, w->wk + k0 * H, w->wv + k0 * H};
        int64_t rows[3] = {nq / tp, nkv / tp, nkv / tp};
        snprintf(nm, sizeof nm, "model.layers.%d.self_attn.qkv_proj.weight", l);
        put(e, nm, dt, r, tp, H, 3, s, rows, H, 0, 2);
        const float *g[2] = {w->w_gate + i0 * H, w->w_up + i0 * H};
        int64_t gr[2] = {I / tp, I / tp};
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.gate_up_proj.weight", l);
        if (!c->layer_moe[l]) put(e, nm, dt, r, tp, H, 2, g, gr, H, 0, 2); /* MoE: lay_out_moe */
      } else {
        const char *pn[5] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"};
        const float *ps[5] = {w->wq + q0 * H, w->wk + k0 * H, w->wv + k0 * H, w->w_gate + i0 * H, w->w_up + i0 * H};
        int64_t pr[5] = {nq / tp, nkv / tp, nkv / tp, I / tp, I / tp};
        for (int p = 0; p < (c->layer_moe[l] ? 3 : 5); p++) {
          snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", l, pn[p]);
          put(e, nm, dt, r, tp, H, 1, &ps[p], &pr[p], H, 0, 2);
        }
      }
      /* row-parallel: a shard holds its columns */
      int64_t hrows[1] = {H};
      snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", l);
      put(e, nm, dt, r, tp, nq / tp, 1, &w->wo, hrows, nq, q0, 2);
      if (c->layer_moe[l]) continue;
      snprintf(nm, sizeof nm, "model.layers.%d.mlp.down_proj.weight", l);
      put(e, nm, dt, r, tp, I / tp, 1, &w->w_down, hrows, I, i0, 2);
    }
    if (c->layer_moe[l]) lay_out_moe(e, m, l, dt, fused, tp);
    int64_t hd1[1] = {hd};
    if (w->q_norm) {
      snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_norm.weight", l);
      put(e, nm, dt, 0, 1, 1, 1, &w->q_norm, hd1, 1, 0, 1);
    }
    if (w->k_norm) {
      snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_norm.weight", l);
      put(e, nm, dt, 0, 1, 1, 1, &w->k_norm, hd1, 1, 0, 1);
    }
    int64_t one[1] = {H};
    snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
    put(e, nm, dt, 0, 1, 1, 1, &w->attn_norm, one, 1, 0, 1);
    snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
    put(e, nm, dt, 0, 1, 1, 1, &w->mlp_norm, one, 1, 0, 1);
  }
  int64_t v[1] = {c->vocab}, h1[1] = {H};
  put(e, "model.embed_tokens.weight", dt, 0, 1, H, 1, &m->embed, v, H, 0, 2);
  put(e, "model.norm.weight", dt, 0, 1, 1, 1, &m->final_norm, h1, 1, 0, 1);
  if (m->lm_head && m->lm_head != m->embed) put(e, "lm_head.weight", dt, 0, 1, H, 1, &m->lm_head, v, H, 0, 2);
}

/* The engine writes its tensors into a file; the daemon maps it on its own and points at it. */
static uint8_t *publish(eng_t *e, const char *name, size_t *maplen) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", cf_test_tmpdir(), name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CF_ASSERT(fd >= 0 && write(fd, e->buf, e->len) == (ssize_t)e->len);
  close(fd);
  fd = open(path, O_RDONLY);
  uint8_t *map = mmap(NULL, e->len, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  CF_ASSERT(map != MAP_FAILED);
  for (int i = 0; i < e->n; i++) e->t[i].data = map + e->off[i];
  *maplen = e->len;
  return map;
}

static cf_model_t *synth(uint64_t seed) {
  cf_model_config_t mc;
  CF_ASSERT(cf_synth_preset("tiny", &mc) == 0);
  mc.n_layers = 3;
  cf_synth_opts_t so = {.seed = seed, .std = 0.05f, .norm_jitter = 0.1f};
  cf_model_t *m;
  CF_ASSERT(cf_model_synth(&mc, &so, &m) == 0);
  return m;
}

static eng_t *eng_new(void) {
  eng_t *e = calloc(1, sizeof *e);
  e->cap = 8 << 20;
  e->buf = malloc(e->cap);
  return e;
}
static void eng_free(eng_t *e) { free(e->buf); free(e); }

/* KV of T tokens through every layer on the CPU backend over model m. */
static void kv_of(const cf_model_t *m, int T, float *out) {
  cf_backend_t *be;
  CF_ASSERT(cf_backend_cpu_create(m, 1, &be) == 0);
  const cf_model_config_t *c = &m->cfg;
  size_t row = (size_t)c->n_kv_heads * c->head_dim, per = (size_t)T * row;
  int32_t *tok = malloc(sizeof(int32_t) * T);
  for (int t = 0; t < T; t++) tok[t] = (t * 37 + 5) % c->vocab;
  float *k[8], *v[8];
  for (int l = 0; l < c->n_layers; l++) { k[l] = out + 2 * l * per; v[l] = k[l] + per; }
  cf_fwd_args_t a = {.l0 = 0, .l1 = c->n_layers, .t0 = 0, .t1 = T, .tokens = tok, .k = k, .v = v};
  CF_ASSERT(cf_backend_forward(be, &a) == 0);
  free(tok);
  cf_backend_free(be);
}

CF_TEST(borrow_fused_layout_views_give_the_same_kv) {
  cf_model_t *m = synth(3);
  for (int fused = 1; fused >= 0; fused--) {
    eng_t *e = eng_new();
    lay_out(e, m, CF_DT_F32, fused, 1);
    size_t len;
    uint8_t *map = publish(e, fused ? "w_fused" : "w_unfused", &len);
    cf_model_t *b;
    cf_borrow_report_t rep;
    int rc = cf_borrow_model(m, e->t, e->n, 16, &b, &rep);
    CF_CHECK_MSG(rc == 0, "%s", cf_errmsg());
    if (!rc) {
      CF_CHECK_EQ(rep.tensors_used, e->n);
      CF_CHECK_GT(rep.elements_checked, 16 * rep.weights);
      /* views into the daemon's mapping: nothing copied */
      const float *ptrs[] = {b->layers[0].wq, b->layers[1].wk, b->layers[2].wv, b->layers[2].w_up, b->layers[0].wo, b->embed};
      for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        CF_CHECK((const uint8_t *)ptrs[i] >= map && (const uint8_t *)ptrs[i] < map + len);
      int T = 40;
      size_t n = 2 * (size_t)m->cfg.n_layers * T * m->cfg.n_kv_heads * m->cfg.head_dim;
      float *k1 = malloc(n * 4), *k2 = malloc(n * 4);
      kv_of(m, T, k1);
      kv_of(b, T, k2);
      CF_CHECK(!memcmp(k1, k2, n * 4)); /* bit for bit */
      free(k1); free(k2);
      printf("    %s: %d weights from %d tensors, %lld elements checked, %lld bytes viewed in place\n",
             fused ? "fused (vLLM)" : "unfused", rep.weights, rep.tensors_used, (long long)rep.elements_checked,
             (long long)rep.bytes_viewed);
      cf_borrow_free(b);
    }
    munmap(map, len);
    eng_free(e);
  }
  cf_model_synth_free(m);
}

CF_TEST(borrow_refuses_what_does_not_match) {
  cf_model_t *m = synth(3), *other = synth(4);
  eng_t *e = eng_new();
  lay_out(e, m, CF_DT_F32, 1, 1);
  size_t len;
  uint8_t *map = publish(e, "w_neg", &len);
  cf_borrow_report_t rep;
  /* a wrong shape */
  e->t[0].shape[0]--;
  CF_CHECK_EQ(cf_borrow_check(m, e->t, e->n, 8, &rep), CF_ESHAPE);
  CF_CHECK_MSG(strstr(cf_errmsg(), "qkv_proj") != NULL, "%s", cf_errmsg());
  e->t[0].shape[0]++;
  /* a missing tensor */
  e->t[1].name = "model.layers.0.mlp.something_else";
  CF_CHECK_EQ(cf_borrow_check(m, e->t, e->n, 8, &rep), CF_ENOTFOUND);
  CF_CHECK_MSG(strstr(cf_errmsg(), "gate_up_proj") || strstr(cf_errmsg(), "gate_proj"), "%s", cf_errmsg());
  e->t[1].name = e->names[1];
  CF_CHECK_OK(cf_borrow_check(m, e->t, e->n, 8, &rep));
  /* another model's weights (same shapes) */
  CF_CHECK_EQ(cf_borrow_check(other, e->t, e->n, 8, &rep), CF_EMISMATCH);
  CF_CHECK_MSG(strstr(cf_errmsg(), "not the served model"), "%s", cf_errmsg());
  printf("    %s\n", cf_errmsg());
  munmap(map, len);
  eng_free(e);
  /* bf16 tensors: checked (the checkpoint rounded to bf16), not viewed by the fp32 backend */
  e = eng_new();
  lay_out(e, m, CF_DT_BF16, 1, 1);
  map = publish(e, "w_bf16", &len);
  CF_CHECK_OK(cf_borrow_check(m, e->t, e->n, 16, &rep));
  cf_model_t *b = NULL;
  CF_CHECK_EQ(cf_borrow_model(m, e->t, e->n, 16, &b, &rep), CF_EUNSUPPORTED);
  CF_CHECK(b == NULL);
  munmap(map, len);
  eng_free(e);
  cf_model_synth_free(m);
  cf_model_synth_free(other);
}

/* Two tensor-parallel shards: q, k and v each split by heads inside the fused tensor, gate and up
 * by rows, o_proj and down_proj by columns; every sampled element found in its shard. Swapping
 * the ranks of one tensor is caught. */
/* m's weights as two bf16 TP shards: every shard checked; then the ranks of tensor `swap` swapped:
 * CF_EMISMATCH naming it. */
static void tp2_checked_and_swap_caught(const cf_model_t *m, const char *swap) {
  eng_t *e = eng_new();
  lay_out(e, m, CF_DT_BF16, 1, 2);
  size_t len;
  uint8_t *map = publish(e, "w_tp", &len);
  cf_borrow_report_t rep;
  int rc = cf_borrow_check(m, e->t, e->n, 64, &rep);
  CF_CHECK_MSG(rc == 0, "%s", cf_errmsg());
  CF_CHECK_EQ(rep.tensors_used, e->n);
  for (int i = 0; i < e->n; i++)
    if (!strcmp(e->t[i].name, swap)) e->t[i].tp_rank ^= 1;
  CF_CHECK_EQ(cf_borrow_check(m, e->t, e->n, 64, &rep), CF_EMISMATCH);
  CF_CHECK_MSG(strstr(cf_errmsg(), swap), "%s", cf_errmsg());
  munmap(map, len);
  eng_free(e);
}

CF_TEST(borrow_tensor_parallel_shards_are_checked) {
  cf_model_t *m = synth(5);
  tp2_checked_and_swap_caught(m, "model.layers.1.self_attn.qkv_proj.weight");
  cf_model_synth_free(m);
}

/* A daemon that computes on borrowed weights drops its own copy and reloads it when the engine
 * leaves (daemon/cf_weights): cf_model_release_weights frees every weight (pointers NULL, bytes
 * reported), cf_model_reload_weights brings them back from the checkpoint (same fingerprint, KV
 * bit-identical to before); a checkpoint replaced on disk meanwhile is refused (CF_EMISMATCH). */
CF_TEST(borrow_own_copy_released_and_reloaded) {
  char src[512], dir[600], cmd[2400];
  snprintf(src, sizeof src, "%s/public-llama-gqa", cf_test_fixtures());
  snprintf(dir, sizeof dir, "%s/ck", cf_test_tmpdir());
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", dir, src, dir);
  CF_ASSERT(system(cmd) == 0);
  cf_model_t *m;
  CF_ASSERT(cf_model_load(dir, &m) == 0);
  uint8_t fp[16];
  memcpy(fp, m->fingerprint, 16);
  int T = 24;
  size_t n = 2 * (size_t)m->cfg.n_layers * T * m->cfg.n_kv_heads * m->cfg.head_dim;
  float *k1 = malloc(n * 4), *k2 = malloc(n * 4);
  kv_of(m, T, k1);
  size_t bytes = cf_model_weight_bytes(m);
  CF_CHECK_GT(bytes, 0);
  CF_CHECK_EQ(cf_model_release_weights(m), bytes);
  CF_CHECK_EQ(cf_model_weight_bytes(m), 0);
  CF_CHECK(m->layers == NULL && m->embed == NULL && m->final_norm == NULL);
  CF_CHECK(cf_model_find_tensor(m, "model.embed_tokens.weight") == NULL);
  CF_CHECK_OK(cf_model_reload_weights(m));
  CF_CHECK_EQ(cf_model_weight_bytes(m), bytes);
  CF_CHECK(!memcmp(m->fingerprint, fp, 16));
  kv_of(m, T, k2);
  CF_CHECK(!memcmp(k1, k2, n * 4));
  CF_CHECK_OK(cf_model_reload_weights(m)); /* holding them: nothing to do */
  /* the checkpoint changes on disk while released: not the model this process serves */
  cf_model_release_weights(m);
  snprintf(cmd, sizeof cmd, "cp '%s/public-mistral-window/config.json' '%s/public-mistral-window/model.safetensors' '%s/'",
           cf_test_fixtures(), cf_test_fixtures(), dir);
  CF_ASSERT(system(cmd) == 0);
  CF_CHECK_EQ(cf_model_reload_weights(m), CF_EMISMATCH);
  CF_CHECK_MSG(strstr(cf_errmsg(), "fingerprint changed") != NULL, "%s", cf_errmsg());
  CF_CHECK_EQ(cf_model_weight_bytes(m), 0);
  free(k1);
  free(k2);
  cf_model_free(m);
}

/* cf_borrow_device (the CUDA backend's borrowed weights) with host memory standing in for the
 * device: every sampled element goes through fetch, the fused bf16 tensors resolve to their own
 * addresses (wqkv, wo, wgu, wdown, embed); a corrupted element is caught through fetch; unfused
 * or fp32 tensors are checked but refused (CF_EUNSUPPORTED). The device copies themselves run
 * only on a GPU (tests/device). */
static int fetch_calls;
static int host_fetch(void *ctx, const void *src, void *dst, size_t bytes) {
  (void)ctx;
  fetch_calls++;
  memcpy(dst, src, bytes);
  return 0;
}

CF_TEST(borrow_device_resolves_fused_bf16) {
  cf_model_t *m = synth(7);
  eng_t *e = eng_new();
  lay_out(e, m, CF_DT_BF16, 1, 1);
  size_t len;
  uint8_t *map = publish(e, "w_dev", &len);
  cf_borrow_dev_t d;
  cf_borrow_report_t rep;
  fetch_calls = 0;
  int rc = cf_borrow_device(m, e->t, e->n, 16, host_fetch, NULL, &d, &rep);
  CF_CHECK_MSG(rc == 0, "%s", cf_errmsg());
  CF_CHECK_EQ(fetch_calls, rep.elements_checked);
  if (!rc) {
    for (int i = 0; i < e->n; i++) {
      const char *nm = e->t[i].name;
      int l = -1;
      sscanf(nm, "model.layers.%d.", &l);
      if (strstr(nm, "qkv_proj")) CF_CHECK(d.layers[l].wqkv == e->t[i].data);
      if (strstr(nm, "o_proj")) CF_CHECK(d.layers[l].wo == e->t[i].data);
      if (strstr(nm, "gate_up_proj")) CF_CHECK(d.layers[l].wgu == e->t[i].data);
      if (strstr(nm, "down_proj")) CF_CHECK(d.layers[l].wdown == e->t[i].data);
      if (!strcmp(nm, "model.embed_tokens.weight")) CF_CHECK(d.embed == e->t[i].data);
    }
    cf_borrow_device_free(&d);
  }
  munmap(map, len);
  /* a changed element, read through fetch */
  ((uint16_t *)(e->buf + e->off[0]))[0] ^= 0x4000;
  map = publish(e, "w_dev_bad", &len);
  CF_CHECK_EQ(cf_borrow_device(m, e->t, e->n, 16, host_fetch, NULL, &d, &rep), CF_EMISMATCH);
  munmap(map, len);
  eng_free(e);
  /* unfused names: checked, not usable by the cuda backend */
  e = eng_new();
  lay_out(e, m, CF_DT_BF16, 0, 1);
  map = publish(e, "w_dev_unfused", &len);
  CF_CHECK_EQ(cf_borrow_device(m, e->t, e->n, 16, host_fetch, NULL, &d, &rep), CF_EUNSUPPORTED);
  CF_CHECK_MSG(strstr(cf_errmsg(), "fused") != NULL, "%s", cf_errmsg());
  munmap(map, len);
  eng_free(e);
  cf_model_synth_free(m);
}

/* Mixture of experts (qwen3-moe fixture, transformers' checkpoint): vLLM's FusedMoE tensors
 * (router, w13_weight [E][2I][H], w2_weight [E][H][I]) and the per-expert names resolve; the CPU
 * backend on views into the engine's file gives KV bit-identical to its own weights'. A wrong
 * expert count, one changed element of expert 5's up rows, and swapped TP shards of w2 are
 * caught naming the tensor; the cuda backend refuses borrowed experts (checked, not used). */
CF_TEST(borrow_moe_fused_experts_give_the_same_kv) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/public-qwen3-moe", cf_test_fixtures());
  cf_model_t *m;
  CF_ASSERT(cf_model_load(dir, &m) == 0);
  const cf_model_config_t *c = &m->cfg;
  CF_ASSERT(c->n_experts == 8 && c->layer_moe[0] && c->layer_moe[1]);
  int T = 33;
  size_t n = 2 * (size_t)c->n_layers * T * c->n_kv_heads * c->head_dim;
  float *k1 = malloc(n * 4), *k2 = malloc(n * 4);
  kv_of(m, T, k1);
  for (int fused = 1; fused >= 0; fused--) {
    eng_t *e = eng_new();
    lay_out(e, m, CF_DT_F32, fused, 1);
    size_t len;
    uint8_t *map = publish(e, fused ? "moe_fused" : "moe_unfused", &len);
    cf_model_t *b = NULL;
    cf_borrow_report_t rep;
    int rc = cf_borrow_model(m, e->t, e->n, 16, &b, &rep);
    CF_CHECK_MSG(rc == 0, "%s", cf_errmsg());
    if (!rc) {
      CF_CHECK_EQ(rep.tensors_used, e->n);
      CF_CHECK_EQ(rep.weights, 2 * (8 + 1 + 3 * 8) + 3); /* per layer: 8 attention/norms, router, 3 x 8 experts */
      const float *ptrs[] = {b->layers[0].router, b->layers[1].e_gate[7], b->layers[1].e_up[3], b->layers[0].e_down[5]};
      for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
        CF_CHECK(ptrs[i] && (const uint8_t *)ptrs[i] >= map && (const uint8_t *)ptrs[i] < map + len);
      kv_of(b, T, k2);
      CF_CHECK(!memcmp(k1, k2, n * 4)); /* bit for bit */
      printf("    MoE %s: %d weights from %d tensors, %lld elements checked, %lld bytes viewed in place\n",
             fused ? "fused (vLLM FusedMoE)" : "per expert", rep.weights, rep.tensors_used,
             (long long)rep.elements_checked, (long long)rep.bytes_viewed);
      cf_borrow_free(b);
    }
    if (fused) { /* map still holds the tensors */
      int w13 = -1;
      for (int i = 0; i < e->n; i++)
        if (!strcmp(e->t[i].name, "model.layers.1.mlp.experts.w13_weight")) w13 = i;
      CF_ASSERT(w13 >= 0);
      e->t[w13].shape[0] = 4; e->t[w13].shape[1] *= 2; /* same bytes, another expert count */
      CF_CHECK_EQ(cf_borrow_check(m, e->t, e->n, 16, &rep), CF_ESHAPE);
      CF_CHECK_MSG(strstr(cf_errmsg(), "w13_weight") && strstr(cf_errmsg(), "[8, 64, 64]"), "%s", cf_errmsg());
      e->t[w13].shape[0] = 8; e->t[w13].shape[1] /= 2;
      munmap(map, len);
      /* expert 5's up rows (row 7, column 9): one element changed; the check samples every
       * element of each 32 x 64 part (2048 positions, drawn 16384 times) so it is hit */
      float *x = (float *)(e->buf + e->off[w13]) + (5 * 64 + 32 + 7) * 64 + 9;
      *x += 0.25f;
      map = publish(e, "moe_bad", &len);
      CF_CHECK_EQ(cf_borrow_check(m, e->t, e->n, 32 * 64 * 8, &rep), CF_EMISMATCH);
      CF_CHECK_MSG(strstr(cf_errmsg(), "layers.1.mlp.experts.w13_weight"), "%s", cf_errmsg());
      munmap(map, len);
      /* the cuda backend: checked, experts not read from the engine */
      eng_t *d = eng_new();
      lay_out(d, m, CF_DT_BF16, 1, 1);
      map = publish(d, "moe_dev", &len);
      cf_borrow_dev_t dv;
      CF_CHECK_EQ(cf_borrow_device(m, d->t, d->n, 8, host_fetch, NULL, &dv, &rep), CF_EUNSUPPORTED);
      CF_CHECK_MSG(strstr(cf_errmsg(), "MoE"), "%s", cf_errmsg());
      CF_CHECK_GT(rep.weights, 0);
      munmap(map, len);
      eng_free(d);
    } else {
      munmap(map, len);
    }
    eng_free(e);
  }
  /* two TP shards (bf16): w13 split by rows of each expert, w2 by columns; swapped ranks caught */
  tp2_checked_and_swap_caught(m, "model.layers.0.mlp.experts.w2_weight");
  free(k1);
  free(k2);
  cf_model_free(m);
}
