/* lib/model loader: safetensors reader/writer, config.json parsing, cf_model_load, fingerprint.
 * Broken inputs are real files written into cf_test_tmpdir(); every error path checks its
 * code and that the message names the file/key/tensor and expected vs found. */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_test.h"
#include "model/cf_hfconfig.h"
#include "model/cf_model.h"
#include "model/cf_safetensors.h"

/* ------------------------------------------------------------------ helpers */

static char *tpath(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, "%s/%s", cf_test_tmpdir(), name);
  return p;
}

static void write_bytes(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) { perror(path); abort(); }
  if (n) fwrite(p, 1, n, f);
  fclose(f);
}

static void write_text(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

/* A raw safetensors file: given header text and data byte count (data filled with 0x11). */
static void write_raw_st(const char *path, const char *header, size_t data_len, int64_t hl_override) {
  size_t hl = strlen(header);
  size_t n = 8 + hl + data_len;
  unsigned char *b = malloc(n);
  uint64_t L = hl_override >= 0 ? (uint64_t)hl_override : hl;
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(L >> (8 * i));
  memcpy(b + 8, header, hl);
  memset(b + 8 + hl, 0x11, data_len);
  write_bytes(path, b, n);
  free(b);
}

static void mkdir_p(const char *p) { mkdir(p, 0755); }

static const char *LLAMA_CFG =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":16,"
    "\"intermediate_size\":24,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
    "\"num_hidden_layers\":2,\"vocab_size\":40,\"rms_norm_eps\":1e-05,\"hidden_act\":\"silu\","
    "\"max_position_embeddings\":512,\"tie_word_embeddings\":false,\"dtype\":\"float32\","
    "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}}";

/* Deterministic value for element i of tensor `name`: multiples of 1/8 in [-1, 1], exact in
 * bf16 and f16, so converted loads can be compared bit-for-bit. */
static float tval(const char *name, size_t i) {
  unsigned h = 2166136261u;
  for (const char *c = name; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
  return (float)((int)((h + i * 7) % 17) - 8) / 8.0f;
}

typedef struct {
  cf_dtype_t dtype;         /* weight dtype */
  const char *skip;         /* tensor not written */
  const char *bad_shape;    /* tensor written with its first dim + 1 */
  const char *bad_dtype;    /* tensor written as I32 */
  const char *extra;        /* extra unrelated F32 tensor [3] */
  int shards;               /* 0/1: model.safetensors; >1: index + shards */
  int no_lm_head;
} model_opts_t;

typedef struct {
  char name[128];
  int ndim;
  int64_t shape[2];
} spec_t;

/* Lists every tensor the config needs (in the loader's naming). */
static int model_specs(const cf_model_config_t *c, spec_t *s, int no_lm_head) {
  int n = 0;
#define ADD(nd, d0, d1, ...)                                   \
  do {                                                         \
    snprintf(s[n].name, sizeof s[n].name, __VA_ARGS__);        \
    s[n].ndim = nd; s[n].shape[0] = d0; s[n].shape[1] = d1; n++; \
  } while (0)
  int64_t H = c->hidden, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim,
          I = c->intermediate;
  ADD(2, c->vocab, H, "model.embed_tokens.weight");
  ADD(1, H, 0, "model.norm.weight");
  if (!no_lm_head) ADD(2, c->vocab, H, "lm_head.weight");
  for (int l = 0; l < c->n_layers; l++) {
    ADD(1, H, 0, "model.layers.%d.input_layernorm.weight", l);
    ADD(1, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    ADD(2, q, H, "model.layers.%d.self_attn.q_proj.weight", l);
    ADD(2, kv, H, "model.layers.%d.self_attn.k_proj.weight", l);
    ADD(2, kv, H, "model.layers.%d.self_attn.v_proj.weight", l);
    ADD(2, H, q, "model.layers.%d.self_attn.o_proj.weight", l);
    ADD(2, I, H, "model.layers.%d.mlp.gate_proj.weight", l);
    ADD(2, I, H, "model.layers.%d.mlp.up_proj.weight", l);
    ADD(2, H, I, "model.layers.%d.mlp.down_proj.weight", l);
    if (c->qkv_bias) {
      ADD(1, q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
      ADD(1, kv, 0, "model.layers.%d.self_attn.k_proj.bias", l);
      ADD(1, kv, 0, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    if (c->o_bias) ADD(1, H, 0, "model.layers.%d.self_attn.o_proj.bias", l);
    if (c->qk_norm) {
      ADD(1, c->head_dim, 0, "model.layers.%d.self_attn.q_norm.weight", l);
      ADD(1, c->head_dim, 0, "model.layers.%d.self_attn.k_norm.weight", l);
    }
    if (c->mlp_bias) {
      ADD(1, I, 0, "model.layers.%d.mlp.gate_proj.bias", l);
      ADD(1, I, 0, "model.layers.%d.mlp.up_proj.bias", l);
      ADD(1, H, 0, "model.layers.%d.mlp.down_proj.bias", l);
    }
  }
#undef ADD
  return n;
}

/* Writes config.json and weights for `cfg_json` into dir (created). */
static void write_model(const char *dir, const char *cfg_json, const model_opts_t *o) {
  mkdir_p(dir);
  char path[600];
  snprintf(path, sizeof path, "%s/config.json", dir);
  write_text(path, cfg_json);
  cf_model_config_t c;
  if (cf_hfconfig_parse(cfg_json, strlen(cfg_json), "cfg", &c) != 0) {
    fprintf(stderr, "write_model: %s\n", cf_errmsg());
    abort();
  }
  static spec_t s[512];
  int n = model_specs(&c, s, o->no_lm_head);
  int shards = o->shards > 1 ? o->shards : 1;
  cf_st_writer_t w[8];
  void *bufs[512] = {0};
  FILE *idx = NULL;
  if (shards > 1) {
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    idx = fopen(path, "w");
    fprintf(idx, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
  }
  for (int k = 0; k < shards; k++) cf_st_writer_init(&w[k]);
  for (int i = 0; i < n; i++) {
    int k = i % shards;
    int64_t shape[2] = {s[i].shape[0], s[i].shape[1]};
    if (o->skip && strcmp(o->skip, s[i].name) == 0) continue;
    if (o->bad_shape && strcmp(o->bad_shape, s[i].name) == 0) shape[0]++;
    size_t numel = (size_t)shape[0] * (s[i].ndim == 2 ? (size_t)shape[1] : 1);
    cf_dtype_t dt = o->dtype;
    if (o->bad_dtype && strcmp(o->bad_dtype, s[i].name) == 0) dt = CF_DT_I32;
    float *f = malloc(numel * 4);
    for (size_t j = 0; j < numel; j++) f[j] = tval(s[i].name, j);
    void *b = f;
    if (dt == CF_DT_BF16) { b = malloc(numel * 2); cf_f32_to_bf16(f, b, numel); free(f); }
    else if (dt == CF_DT_F16) { b = malloc(numel * 2); cf_f32_to_f16(f, b, numel); free(f); }
    bufs[i] = b;
    CF_CHECK_OK(cf_st_writer_add(&w[k], s[i].name, dt, s[i].ndim, shape, b));
    if (idx) fprintf(idx, "%s\"%s\":\"model-%05d-of-%05d.safetensors\"", i ? "," : "", s[i].name, k + 1, shards);
  }
  if (o->extra) {
    static const float three[3] = {1, 2, 3};
    CF_CHECK_OK(cf_st_writer_add(&w[0], o->extra, CF_DT_F32, 1, (int64_t[]){3}, three));
  }
  if (idx) { fprintf(idx, "}}\n"); fclose(idx); }
  for (int k = 0; k < shards; k++) {
    if (shards > 1) snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, k + 1, shards);
    else snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CF_CHECK_OK(cf_st_writer_write(&w[k], path));
    cf_st_writer_close(&w[k]);
  }
  for (int i = 0; i < n; i++) free(bufs[i]);
}

/* Replaces the first occurrence of `from` in `s` by `to` (static buffer). */
static const char *subst(const char *s, const char *from, const char *to) {
  static char buf[4][4096];
  static int k;
  char *b = buf[k++ % 4];
  const char *p = strstr(s, from);
  if (!p) { fprintf(stderr, "subst: '%s' not found\n", from); abort(); }
  snprintf(b, 4096, "%.*s%s%s", (int)(p - s), s, to, p + strlen(from));
  return b;
}

static int parse_cfg(const char *json, cf_model_config_t *c) {
  return cf_hfconfig_parse(json, strlen(json), "x/config.json", c);
}

/* LLAMA_CFG turned into family `mt` (model_type and architectures both rewritten). */
static const char *as_family(const char *mt, const char *cls, const char *extra) {
  char to[512];
  snprintf(to, sizeof to, "\"model_type\":\"%s\"%s", mt, extra);
  return subst(subst(LLAMA_CFG, "LlamaForCausalLM", cls), "\"model_type\":\"llama\"", to);
}

/* ------------------------------------------------------------------ public fixture */

CF_TEST(loads_public_llama_gqa_fixture) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/public-llama-gqa", cf_test_fixtures());
  if (access(dir, R_OK) != 0) CF_SKIP("fixture public-llama-gqa not present");
  cf_model_t *m;
  CF_CHECK_OK(cf_model_load(dir, &m));
  if (!m) return;
  const cf_model_config_t *c = &m->cfg;
  CF_CHECK_EQ(c->arch, CF_ARCH_LLAMA);
  CF_CHECK_EQ(c->n_layers, 2);
  CF_CHECK_EQ(c->hidden, 96);
  CF_CHECK_EQ(c->n_heads, 6);
  CF_CHECK_EQ(c->n_kv_heads, 2);
  CF_CHECK_EQ(c->head_dim, 16);
  CF_CHECK_EQ(c->intermediate, 256);
  CF_CHECK_EQ(c->vocab, 300);
  CF_CHECK_NEAR(c->rms_eps, 1e-5, 0);
  CF_CHECK_NEAR(c->rope_theta, 10000.0, 0);
  CF_CHECK_EQ(c->rope_kind, CF_ROPE_DEFAULT);
  CF_CHECK_EQ(c->dtype, CF_DT_F32);
  CF_CHECK_EQ(c->tie_embeddings, 0);
  CF_CHECK_EQ(cf_model_kv_row_floats(c), 32);
  CF_CHECK(m->embed && m->final_norm && m->lm_head && m->lm_head != m->embed);
  for (int l = 0; l < 2; l++) {
    const cf_layer_weights_t *w = &m->layers[l];
    CF_CHECK(w->attn_norm && w->wq && w->wk && w->wv && w->wo && w->mlp_norm && w->w_gate &&
             w->w_up && w->w_down);
    CF_CHECK(!w->bq && !w->bk && !w->bv && !w->bo && !w->q_norm && !w->k_norm && !w->b_gate);
  }
  /* The F32 weights are the file's bytes, used in place. */
  char path[600];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  cf_st_file_t f;
  CF_CHECK_OK(cf_st_open(path, &f));
  const cf_st_tensor_t *t = cf_st_find(&f, "model.layers.1.self_attn.k_proj.weight");
  CF_CHECK(t != NULL);
  if (t) {
    CF_CHECK_EQ(t->ndim, 2);
    CF_CHECK_EQ(t->shape[0], 32);
    CF_CHECK(memcmp(t->data, m->layers[1].wk, 32 * 96 * 4) == 0);
    const cf_st_tensor_t *raw = cf_model_find_tensor(m, "model.layers.1.self_attn.k_proj.weight");
    CF_CHECK(raw && raw->dtype == CF_DT_F32 && raw->numel == 32 * 96 && (const float *)raw->data == m->layers[1].wk);
    CF_CHECK(cf_model_find_tensor(m, "model.layers.2.self_attn.k_proj.weight") == NULL);
  }
  cf_st_close(&f);
  char hex[33];
  cf_model_fingerprint_hex(m->fingerprint, hex);
  CF_CHECK_EQ(strlen(hex), 32);
  CF_CHECK(strspn(hex, "0123456789abcdef") == 32);
  cf_model_free(m);
}

/* ------------------------------------------------------------------ safetensors */

CF_TEST(st_writer_roundtrip) {
  const char *p = tpath("rt.safetensors");
  float a[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
  int32_t ids[5] = {1, 2, 3, -4, 5};
  uint16_t h[2] = {0x3f80, 0xc000};
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  CF_CHECK_OK(cf_st_writer_meta(&w, "format", "pt"));
  CF_CHECK_OK(cf_st_writer_add(&w, "b.weights", CF_DT_F32, 2, (int64_t[]){2, 3}, a));
  CF_CHECK_OK(cf_st_writer_add(&w, "a\"quoted\"", CF_DT_I32, 1, (int64_t[]){5}, ids));
  CF_CHECK_OK(cf_st_writer_add(&w, "c", CF_DT_BF16, 1, (int64_t[]){2}, h));
  CF_CHECK_OK(cf_st_writer_add(&w, "empty", CF_DT_F32, 2, (int64_t[]){0, 4}, NULL));
  CF_CHECK_OK(cf_st_writer_add(&w, "scalar", CF_DT_F32, 0, NULL, a));
  CF_CHECK_ERR(cf_st_writer_add(&w, "c", CF_DT_F32, 1, (int64_t[]){1}, a), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "'c' added twice");
  CF_CHECK_ERR(cf_st_writer_add(&w, "__metadata__", CF_DT_F32, 1, (int64_t[]){1}, a), CF_EINVAL);
  CF_CHECK_ERR(cf_st_writer_add(&w, "neg", CF_DT_F32, 1, (int64_t[]){-1}, a), CF_EINVAL);
  CF_CHECK_OK(cf_st_writer_write(&w, p));
  cf_st_writer_close(&w);
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
  CF_CHECK(access(tmp, F_OK) != 0); /* renamed away */

  cf_st_file_t f;
  CF_CHECK_OK(cf_st_open(p, &f));
  CF_CHECK_EQ(f.n_tensors, 5);
  CF_CHECK_EQ((uintptr_t)f.data % 8, 0); /* header padded: data section 8-aligned */
  const cf_st_tensor_t *t = cf_st_find(&f, "b.weights");
  CF_CHECK(t && t->dtype == CF_DT_F32 && t->ndim == 2 && t->shape[1] == 3 && t->numel == 6);
  if (t) CF_CHECK(memcmp(t->data, a, sizeof a) == 0);
  t = cf_st_find(&f, "a\"quoted\"");
  CF_CHECK(t && t->dtype == CF_DT_I32 && memcmp(t->data, ids, sizeof ids) == 0);
  t = cf_st_find(&f, "c");
  float hf[2];
  if (t) { cf_bf16_to_f32(t->data, hf, 2); CF_CHECK(hf[0] == 1.0f && hf[1] == -2.0f); }
  t = cf_st_find(&f, "empty");
  CF_CHECK(t && t->numel == 0 && t->begin == t->end);
  t = cf_st_find(&f, "scalar");
  CF_CHECK(t && t->ndim == 0 && t->numel == 1 && *(const float *)t->data == 1.0f);
  CF_CHECK(cf_st_find(&f, "nope") == NULL);
  CF_CHECK(cf_st_find(&f, "__metadata__") == NULL);
  cf_st_close(&f);
  cf_st_close(&f); /* idempotent */

  /* A writer into a missing directory fails cleanly. */
  cf_st_writer_init(&w);
  CF_CHECK_OK(cf_st_writer_add(&w, "x", CF_DT_F32, 1, (int64_t[]){1}, a));
  CF_CHECK_ERR(cf_st_writer_write(&w, tpath("no/such/dir.safetensors")), CF_ENOENT);
  cf_st_writer_close(&w);
}

CF_TEST(st_rejects_broken_files) {
  cf_st_file_t f;
  const char *p;

  p = tpath("missing.safetensors");
  CF_CHECK_ERR(cf_st_open(p, &f), CF_ENOENT);
  CF_CHECK_CONTAINS(cf_errmsg(), "missing.safetensors");

  p = tpath("short.safetensors");
  write_bytes(p, "abc", 3);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "short.safetensors: file is 3 bytes");

  p = tpath("hlen.safetensors");
  write_raw_st(p, "{}", 0, 1000);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "hlen.safetensors: header length 1000 runs past the end of the file (2 bytes");

  p = tpath("json.safetensors");
  write_raw_st(p, "{\"a\": {\"dtype\": \"F32\",}", 0, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "json.safetensors: safetensors header: JSON line 1 col");

  p = tpath("notobj.safetensors");
  write_raw_st(p, "[1]", 0, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "expected a JSON object, found array");

  p = tpath("trunc.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,64]}}", 40, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "trunc.safetensors: tensor 'w': data ends at byte 64 of the data "
                                 "section, but the file holds only 40 data bytes (truncated file?)");

  p = tpath("overlap.safetensors");
  write_raw_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", 24, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "overlap.safetensors: tensors 'a' [0, 16) and 'b' [8, 24) overlap");

  p = tpath("span.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'w': data_offsets [0, 24] span 24 bytes, but shape [2, 3] x BF16 needs 12");

  p = tpath("dtype.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EDTYPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "dtype.safetensors: tensor 'w': unknown dtype 'Q4_K'");

  p = tpath("dup.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                  "\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'w' appears twice");

  p = tpath("neg.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'w': shape[0]: expected a non-negative integer");

  p = tpath("offs.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2]}}", 2, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'data_offsets': expected [begin, end]");

  p = tpath("meta.safetensors");
  write_raw_st(p, "{\"__metadata__\":[1]}", 0, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "'__metadata__': expected an object, found array");

  /* A shape whose element count overflows 64 bits. */
  p = tpath("ovf.safetensors");
  write_raw_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, -1);
  CF_CHECK_ERR(cf_st_open(p, &f), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'w': shape overflows 64 bits");

  /* Valid: metadata skipped, empty tensors may share offsets, data after the last tensor ok. */
  p = tpath("ok.safetensors");
  write_raw_st(p, "{\"__metadata__\":{\"format\":\"pt\"},\"e\":{\"dtype\":\"F32\",\"shape\":[0],"
                  "\"data_offsets\":[4,4]},\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}  ", 12, -1);
  CF_CHECK_OK(cf_st_open(p, &f));
  CF_CHECK_EQ(f.n_tensors, 2);
  cf_st_close(&f);
}

/* ------------------------------------------------------------------ config.json */

CF_TEST(config_llama_4x_and_5x_keys_agree) {
  const char *v5 =
      "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
      "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_hidden_layers\":3,"
      "\"vocab_size\":100,\"rms_norm_eps\":1e-6,\"dtype\":\"bfloat16\",\"rope_parameters\":"
      "{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":8.0,\"low_freq_factor\":1.0,"
      "\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}}";
  const char *v4 =
      "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
      "\"intermediate_size\":128,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
      "\"num_hidden_layers\":3,\"vocab_size\":100,\"rms_norm_eps\":1e-6,"
      "\"torch_dtype\":\"bfloat16\",\"rope_theta\":500000.0,\"rope_scaling\":{\"type\":\"llama3\","
      "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
      "\"original_max_position_embeddings\":8192}}";
  cf_model_config_t a, b;
  CF_CHECK_OK(parse_cfg(v5, &a));
  CF_CHECK_OK(parse_cfg(v4, &b));
  CF_CHECK_EQ(a.rope_kind, CF_ROPE_LLAMA3);
  CF_CHECK_NEAR(a.rope_theta, 500000.0, 0);
  CF_CHECK_NEAR(a.rope_factor, 8.0, 0);
  CF_CHECK_NEAR(a.rope_low_freq_factor, 1.0, 0);
  CF_CHECK_NEAR(a.rope_high_freq_factor, 4.0, 0);
  CF_CHECK_EQ(a.rope_orig_max_pos, 8192);
  CF_CHECK_EQ(a.dtype, CF_DT_BF16);
  CF_CHECK_EQ(a.head_dim, 16); /* default hidden / heads */
  CF_CHECK_EQ(a.max_pos, 2048); /* llama default */
  CF_CHECK(memcmp(&a, &b, sizeof a) == 0);
  /* rope_scaling with rope_type, and theta only at top level in a 4.x file. */
  CF_CHECK_OK(parse_cfg(subst(v4, "\"type\"", "\"rope_type\""), &b));
  CF_CHECK(memcmp(&a, &b, sizeof a) == 0);
  /* No rope section at all: default rope, theta 10000. */
  CF_CHECK_OK(parse_cfg(LLAMA_CFG, &a));
  CF_CHECK_EQ(a.rope_kind, CF_ROPE_DEFAULT);
  CF_CHECK_NEAR(a.rope_theta, 10000.0, 0);
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, ",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}", ",\"rope_scaling\":null"), &b));
  CF_CHECK(memcmp(&a, &b, sizeof a) == 0);
}

CF_TEST(config_families) {
  cf_model_config_t c;
  const char *base =
      "{\"model_type\":\"MT\",\"hidden_size\":64,\"intermediate_size\":128,"
      "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_hidden_layers\":1,"
      "\"vocab_size\":100,\"sliding_window\":null EXTRA}";
  CF_CHECK_OK(parse_cfg(subst(subst(base, "MT", "qwen2"), " EXTRA", ",\"use_sliding_window\":false"), &c));
  CF_CHECK(c.arch == CF_ARCH_QWEN2 && c.qkv_bias == 1 && c.o_bias == 0 && c.qk_norm == 0 && c.head_dim == 16);
  CF_CHECK_NEAR(c.rms_eps, 1e-6, 0);
  CF_CHECK_OK(parse_cfg(subst(subst(base, "MT", "qwen3"), " EXTRA", ""), &c));
  CF_CHECK(c.arch == CF_ARCH_QWEN3 && c.qkv_bias == 0 && c.qk_norm == 1 && c.head_dim == 128);
  CF_CHECK_OK(parse_cfg(subst(subst(base, "MT", "qwen3"), " EXTRA", ",\"head_dim\":24,\"attention_bias\":true"), &c));
  CF_CHECK(c.head_dim == 24 && c.qkv_bias == 1 && c.o_bias == 1);
  CF_CHECK_OK(parse_cfg(subst(subst(base, "MT", "mistral"), " EXTRA", ",\"head_dim\":null,\"attention_bias\":true"), &c));
  CF_CHECK(c.arch == CF_ARCH_MISTRAL && c.qkv_bias == 0 && c.head_dim == 16);
  CF_CHECK_OK(parse_cfg(subst(subst(base, "MT", "llama"), " EXTRA", ",\"attention_bias\":true,\"mlp_bias\":true,\"tie_word_embeddings\":true"), &c));
  CF_CHECK(c.qkv_bias == 1 && c.o_bias == 1 && c.mlp_bias == 1 && c.tie_embeddings == 1);
  /* model_type absent: architectures decides. */
  CF_CHECK_OK(parse_cfg(subst(subst(base, "\"model_type\":\"MT\"", "\"architectures\":[\"Qwen2ForCausalLM\"]"), " EXTRA", ""), &c));
  CF_CHECK_EQ(c.arch, CF_ARCH_QWEN2);
}

/* linear / yarn rope parameters and the defaults transformers 5 applies to them. */
CF_TEST(config_rope_linear_yarn) {
  cf_model_config_t c;
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"linear\",\"factor\":4"), &c));
  CF_CHECK(c.rope_kind == CF_ROPE_LINEAR && c.rope_factor == 4);
  /* yarn: beta 32/1, truncate, attention factor 0.1 ln(factor) + 1, original max positions
   * from max_position_embeddings when the rope parameters have none */
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"yarn\",\"factor\":4"), &c));
  CF_CHECK(c.rope_kind == CF_ROPE_YARN && c.rope_factor == 4 && c.rope_beta_fast == 32 &&
           c.rope_beta_slow == 1 && c.rope_truncate == 1 && c.rope_orig_max_pos == c.max_pos);
  CF_CHECK_NEAR(c.rope_attn_factor, 0.1 * log(4.0) + 1, 1e-12);
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"yarn\",\"factor\":4,"
                              "\"mscale\":1,\"mscale_all_dim\":0.5,\"beta_fast\":0,\"truncate\":false,"
                              "\"original_max_position_embeddings\":64"), &c));
  CF_CHECK(c.rope_beta_fast == 32 && c.rope_truncate == 0 && c.rope_orig_max_pos == 64);
  CF_CHECK_NEAR(c.rope_attn_factor, (0.1 * log(4.0) + 1) / (0.05 * log(4.0) + 1), 1e-12);
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"yarn\",\"factor\":4,\"attention_factor\":0.75"), &c));
  CF_CHECK_NEAR(c.rope_attn_factor, 0.75, 0);
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"yarn\",\"factor\":4,\"truncate\":null"), &c));
  CF_CHECK_EQ(c.rope_truncate, 0); /* transformers tests `if truncate:` */
  /* a top-level original_max_position_embeddings wins (transformers' standardize_rope_params) */
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"llama3\",\"factor\":8,"
                              "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":64},"
                              "\"original_max_position_embeddings\":32,\"x\":{\"y\":0"), &c));
  CF_CHECK_EQ(c.rope_orig_max_pos, 32);
}

CF_TEST(config_errors_name_the_key) {
  cf_model_config_t c;
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"model_type\":\"llama\"", "\"model_type\":\"gpt_neox\""), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: model_type 'gpt_neox' is not supported (supported: llama, mistral, qwen2, qwen3, qwen3_moe, mixtral)");
  CF_CHECK_ERR(parse_cfg(subst(subst(LLAMA_CFG, "\"model_type\":\"llama\",", ""), "LlamaForCausalLM", "FalconForCausalLM"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "architecture 'FalconForCausalLM' is not supported");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "LlamaForCausalLM", "MistralForCausalLM"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "architectures[0] 'MistralForCausalLM' does not match model_type 'llama'");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"longrope\""), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: rope_parameters.rope_type 'longrope' is not supported (supported: default, linear, llama3, yarn)");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"yarn\""), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: required key 'rope_parameters.factor' is missing");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_parameters\":{\"rope_type\":\"default\",", "\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2.0,"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "rope_scaling.type 'dynamic' is not supported: its frequencies change with the length");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"llama3\",\"factor\":8.0"), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "required key 'rope_parameters.low_freq_factor' is missing");
  CF_CHECK_ERR(parse_cfg(as_family("qwen2", "Qwen2ForCausalLM", ",\"layer_types\":[\"full_attention\",\"sliding_attention\"]"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer_types names sliding_attention layers but use_sliding_window is not true");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"silu\"", "\"gelu\""), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "hidden_act 'gelu' is not supported");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"num_key_value_heads\":2", "\"num_key_value_heads\":3"), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"hidden_size\":16,", ""), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: required key 'hidden_size' is missing");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"hidden_size\":16", "\"hidden_size\":\"16\""), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: key 'hidden_size': expected number, found string");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"hidden_size\":16", "\"hidden_size\":0"), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'hidden_size': expected 1..131072, found 0");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"float32\"", "\"int8\""), &c), CF_EDTYPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'dtype': 'int8' is not supported");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_theta\":10000.0", "\"rope_theta\":-1"), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'rope_parameters.rope_theta': expected a positive number, found -1");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"default\",\"partial_rotary_factor\":0.5"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "partial_rotary_factor 0.5");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"rope_parameters\":{", "\"rope_parameters\":{\"full_attention\":{\"rope_type\":\"default\"},"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "rope_parameters.full_attention: per-layer-type rope parameters are not supported");
  CF_CHECK_ERR(parse_cfg("{\"model_type\": ", &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "x/config.json: JSON line 1 col");
  CF_CHECK_ERR(parse_cfg("[]", &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "expected a JSON object, found array");
}

/* Sliding windows and mixtures of experts: what transformers 5 decides per layer. */
CF_TEST(config_windows_and_experts) {
  cf_model_config_t c;
  /* mistral: sliding_window set or absent (MistralConfig's default 4096) windows every layer */
  CF_CHECK_OK(parse_cfg(as_family("mistral", "MistralForCausalLM", ",\"sliding_window\":32"), &c));
  CF_CHECK(c.sliding_window == 32 && c.layer_sliding[0] && c.layer_sliding[1]);
  CF_CHECK_EQ(cf_model_layer_window(&c, 1), 32);
  CF_CHECK_OK(parse_cfg(as_family("mistral", "MistralForCausalLM", ""), &c));
  CF_CHECK_EQ(c.sliding_window, 4096);
  CF_CHECK_OK(parse_cfg(as_family("mistral", "MistralForCausalLM", ",\"sliding_window\":null"), &c));
  CF_CHECK(c.sliding_window == 0 && !c.layer_sliding[0] && cf_model_layer_window(&c, 0) == 0);
  CF_CHECK_ERR(parse_cfg(as_family("mistral", "MistralForCausalLM", ",\"sliding_window\":8,\"layer_types\":[\"full_attention\",\"sliding_attention\"]"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "transformers' mistral reads no layer_types");
  CF_CHECK_ERR(parse_cfg(as_family("mistral", "MistralForCausalLM", ",\"sliding_window\":0"), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'sliding_window': expected a positive integer or null, found number 0");
  CF_CHECK_ERR(parse_cfg(as_family("mistral", "MistralForCausalLM", ",\"sliding_window\":\"32\""), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'sliding_window': expected a positive integer or null, found string");
  /* qwen2/qwen3: use_sliding_window + layer_types, or max_window_layers */
  CF_CHECK_OK(parse_cfg(as_family("qwen2", "Qwen2ForCausalLM", ",\"use_sliding_window\":true,\"sliding_window\":8,\"max_window_layers\":1"), &c));
  CF_CHECK(c.sliding_window == 8 && !c.layer_sliding[0] && c.layer_sliding[1]);
  CF_CHECK_OK(parse_cfg(as_family("qwen3", "Qwen3ForCausalLM", ",\"use_sliding_window\":true,\"sliding_window\":8,\"layer_types\":[\"sliding_attention\",\"full_attention\"]"), &c));
  CF_CHECK(c.sliding_window == 8 && c.layer_sliding[0] && !c.layer_sliding[1]);
  CF_CHECK_EQ(cf_model_layer_window(&c, 0), 8);
  CF_CHECK_EQ(cf_model_layer_window(&c, 1), 0);
  /* no layer below max_window_layers (28 by default) slides: no window at all */
  CF_CHECK_OK(parse_cfg(as_family("qwen2", "Qwen2ForCausalLM", ",\"use_sliding_window\":true"), &c));
  CF_CHECK_EQ(c.sliding_window, 0);
  CF_CHECK_ERR(parse_cfg(as_family("qwen3", "Qwen3ForCausalLM", ",\"layer_types\":[\"full_attention\",\"chunked_attention\"]"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer_types[1] is 'chunked_attention' (supported: full_attention, sliding_attention)");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3", "Qwen3ForCausalLM", ",\"layer_types\":[\"full_attention\"]"), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer_types has 1 entries, num_hidden_layers is 2");
  /* qwen3_moe */
  const char *moe = ",\"num_experts\":4,\"num_experts_per_tok\":2,\"moe_intermediate_size\":8,"
                    "\"norm_topk_prob\":true,\"decoder_sparse_step\":1,\"mlp_only_layers\":[]";
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", moe), &c));
  CF_CHECK(c.arch == CF_ARCH_QWEN3_MOE && c.qk_norm && c.n_experts == 4 && c.top_k == 2 &&
           c.moe_intermediate == 8 && c.norm_topk == 1 && c.layer_moe[0] && c.layer_moe[1]);
  CF_CHECK_STR(cf_arch_name(c.arch), "qwen3_moe");
  /* 5.x spelling num_local_experts; dense layers by mlp_only_layers and decoder_sparse_step */
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(subst(moe, "num_experts\"", "num_local_experts\""), "[]", "[1]")), &c));
  CF_CHECK(c.n_experts == 4 && c.layer_moe[0] && !c.layer_moe[1]);
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"decoder_sparse_step\":1", "\"decoder_sparse_step\":2")), &c));
  CF_CHECK(!c.layer_moe[0] && c.layer_moe[1]);
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\":true,", "")), &c), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'norm_topk_prob': expected true or false");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "[]", "[2]")), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "mlp_only_layers[0]: expected a layer index in [0, 2)");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"num_experts_per_tok\":2", "\"num_experts_per_tok\":5")), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'num_experts_per_tok': expected 1..4, found 5");
  /* qwen3_moe windows (transformers 5): use_sliding_window windows every layer, whatever
   * max_window_layers says; sliding_window absent means 4096, null means none; a layer_types
   * that mixes kinds is refused (the model reads none), one naming only sliding layers is not. */
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"sliding_window\":8,\"max_window_layers\":1,\"norm_topk_prob\"")), &c));
  CF_CHECK(c.sliding_window == 8 && c.layer_sliding[0] && c.layer_sliding[1] && c.n_experts == 4);
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"norm_topk_prob\"")), &c));
  CF_CHECK_EQ(c.sliding_window, 4096);
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"sliding_window\":null,\"norm_topk_prob\"")), &c));
  CF_CHECK(c.sliding_window == 0 && !c.layer_sliding[0]);
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":false,\"sliding_window\":8,\"norm_topk_prob\"")), &c));
  CF_CHECK(c.sliding_window == 0 && !c.layer_sliding[1]);
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"sliding_window\":8,\"layer_types\":[\"sliding_attention\",\"sliding_attention\"],\"norm_topk_prob\"")), &c));
  CF_CHECK(c.sliding_window == 8 && c.layer_sliding[0] && c.layer_sliding[1]);
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"sliding_window\":8,\"layer_types\":[\"full_attention\",\"sliding_attention\"],\"norm_topk_prob\"")), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer_types mixes full and sliding attention, but transformers' qwen3_moe reads no layer_types");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"layer_types\":[\"full_attention\",\"sliding_attention\"],\"norm_topk_prob\"")), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "layer_types names sliding_attention layers: sliding-window attention is not supported for qwen3_moe");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", subst(moe, "\"norm_topk_prob\"", "\"use_sliding_window\":true,\"sliding_window\":0,\"norm_topk_prob\"")), &c), CF_ERANGE);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'sliding_window': expected a positive integer or null, found number 0");
  CF_CHECK_ERR(parse_cfg(as_family("qwen3", "Qwen3MoeForCausalLM", ""), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "does not match model_type 'qwen3'");
  /* mixtral: experts of intermediate_size, every layer sparse, always renormalised */
  CF_CHECK_OK(parse_cfg(as_family("mixtral", "MixtralForCausalLM", ",\"num_local_experts\":4,\"num_experts_per_tok\":2,\"sliding_window\":null"), &c));
  CF_CHECK(c.arch == CF_ARCH_MIXTRAL && c.n_experts == 4 && c.top_k == 2 && c.norm_topk == 1 &&
           c.moe_intermediate == 24 && c.layer_moe[0] && c.layer_moe[1] && c.sliding_window == 0);
  CF_CHECK_OK(parse_cfg(as_family("mixtral", "MixtralForCausalLM", ",\"num_local_experts\":4,\"sliding_window\":16"), &c));
  CF_CHECK(c.sliding_window == 16 && c.layer_sliding[1]);
  /* variants refused by name */
  CF_CHECK_ERR(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", ",\"shared_expert_intermediate_size\":64"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'shared_expert_intermediate_size' is set: shared experts are not supported");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"silu\"", "\"silu\",\"final_logit_softcapping\":30.0"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "key 'final_logit_softcapping' is set: logit soft-capping is not supported");
  CF_CHECK_ERR(parse_cfg(subst(LLAMA_CFG, "\"silu\"", "\"silu\",\"use_attention_sinks\":true"), &c), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "attention sinks are not supported");
  CF_CHECK_OK(parse_cfg(subst(LLAMA_CFG, "\"silu\"", "\"silu\",\"attn_logit_softcapping\":null"), &c));
}

/* ------------------------------------------------------------------ cf_model_load */

CF_TEST(model_load_errors_name_file_and_tensor) {
  cf_model_t *m = (cf_model_t *)1;
  const char *d = tpath("nodir");
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ENOENT);
  CF_CHECK_CONTAINS(cf_errmsg(), "nodir/config.json: No such file");
  CF_CHECK(m == NULL);

  d = tpath("noweights");
  mkdir_p(d);
  char p[600];
  snprintf(p, sizeof p, "%s/config.json", d);
  write_text(p, LLAMA_CFG);
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ENOENT);
  CF_CHECK_CONTAINS(cf_errmsg(), "noweights: no model.safetensors and no model.safetensors.index.json");

  d = tpath("badcfg");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  snprintf(p, sizeof p, "%s/config.json", d);
  write_text(p, subst(LLAMA_CFG, "\"rope_type\":\"default\"", "\"rope_type\":\"longrope\""));
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EUNSUPPORTED);
  CF_CHECK_CONTAINS(cf_errmsg(), "badcfg/config.json: rope_parameters.rope_type 'longrope' is not supported");

  d = tpath("shape");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .bad_shape = "model.layers.1.self_attn.k_proj.weight"});
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ESHAPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "shape/model.safetensors: tensor 'model.layers.1.self_attn.k_proj.weight': shape [9, 16], expected [8, 16]");

  d = tpath("dtype");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .bad_dtype = "model.norm.weight"});
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EDTYPE);
  CF_CHECK_CONTAINS(cf_errmsg(), "dtype/model.safetensors: tensor 'model.norm.weight': dtype I32, expected F32, BF16 or F16");

  d = tpath("missing");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .skip = "model.layers.0.mlp.up_proj.weight"});
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ENOTFOUND);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'model.layers.0.mlp.up_proj.weight' is missing from ");
  CF_CHECK_CONTAINS(cf_errmsg(), "missing/model.safetensors");

  /* A qwen2 checkpoint without its q bias. */
  const char *q2 = subst(LLAMA_CFG, "\"model_type\":\"llama\"", "\"model_type\":\"qwen2\"");
  q2 = subst(q2, "LlamaForCausalLM", "Qwen2ForCausalLM");
  d = tpath("q2nobias");
  write_model(d, q2, &(model_opts_t){.dtype = CF_DT_F32, .skip = "model.layers.1.self_attn.q_proj.bias"});
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ENOTFOUND);
  CF_CHECK_CONTAINS(cf_errmsg(), "tensor 'model.layers.1.self_attn.q_proj.bias' is missing");

  /* Truncated weights file: cut the last 100 bytes. */
  d = tpath("trunc");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  snprintf(p, sizeof p, "%s/model.safetensors", d);
  struct stat st;
  stat(p, &st);
  CF_CHECK_EQ(truncate(p, st.st_size - 100), 0);
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "trunc/model.safetensors: tensor '");
  CF_CHECK_CONTAINS(cf_errmsg(), "(truncated file?)");
}

CF_TEST(model_loads_families_and_ties) {
  cf_model_t *m;
  /* qwen3 with q/k norms and head_dim != hidden/heads. */
  const char *q3 = subst(LLAMA_CFG, "\"model_type\":\"llama\"", "\"model_type\":\"qwen3\",\"head_dim\":8");
  q3 = subst(q3, "LlamaForCausalLM", "Qwen3ForCausalLM");
  const char *d = tpath("qwen3");
  write_model(d, q3, &(model_opts_t){.dtype = CF_DT_F32});
  CF_CHECK_OK(cf_model_load(d, &m));
  if (m) {
    CF_CHECK(m->cfg.head_dim == 8 && m->layers[1].q_norm && m->layers[1].k_norm && !m->layers[1].bq);
    CF_CHECK(m->layers[1].q_norm[3] == tval("model.layers.1.self_attn.q_norm.weight", 3));
    cf_model_free(m);
  }
  /* qwen2 biases. */
  const char *q2 = subst(LLAMA_CFG, "\"model_type\":\"llama\"", "\"model_type\":\"qwen2\"");
  q2 = subst(q2, "LlamaForCausalLM", "Qwen2ForCausalLM");
  d = tpath("qwen2");
  write_model(d, q2, &(model_opts_t){.dtype = CF_DT_F32});
  CF_CHECK_OK(cf_model_load(d, &m));
  if (m) {
    CF_CHECK(m->layers[0].bq && m->layers[0].bk && m->layers[0].bv && !m->layers[0].bo);
    CF_CHECK(m->layers[0].bk[5] == tval("model.layers.0.self_attn.k_proj.bias", 5));
    cf_model_free(m);
  }
  /* Tied embeddings with lm_head absent. */
  d = tpath("tied");
  write_model(d, subst(LLAMA_CFG, "\"tie_word_embeddings\":false", "\"tie_word_embeddings\":true"),
              &(model_opts_t){.dtype = CF_DT_F32, .no_lm_head = 1});
  CF_CHECK_OK(cf_model_load(d, &m));
  if (m) { CF_CHECK(m->lm_head == m->embed); cf_model_free(m); }
  /* Untied with lm_head absent: loads, lm_head NULL (the KV does not need it). */
  d = tpath("nohead");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .no_lm_head = 1});
  CF_CHECK_OK(cf_model_load(d, &m));
  if (m) { CF_CHECK(m->lm_head == NULL); cf_model_free(m); }
}

/* Compares every weight of two models bit for bit. */
static void check_same_weights(const cf_model_t *a, const cf_model_t *b) {
  const cf_model_config_t *c = &a->cfg;
  size_t H = (size_t)c->hidden, q = (size_t)c->n_heads * c->head_dim,
         kv = (size_t)c->n_kv_heads * c->head_dim, I = (size_t)c->intermediate;
  CF_CHECK(memcmp(a->embed, b->embed, (size_t)c->vocab * H * 4) == 0);
  CF_CHECK(memcmp(a->final_norm, b->final_norm, H * 4) == 0);
  CF_CHECK(memcmp(a->lm_head, b->lm_head, (size_t)c->vocab * H * 4) == 0);
  for (int l = 0; l < c->n_layers; l++) {
    const cf_layer_weights_t *x = &a->layers[l], *y = &b->layers[l];
    CF_CHECK(memcmp(x->wq, y->wq, q * H * 4) == 0);
    CF_CHECK(memcmp(x->wk, y->wk, kv * H * 4) == 0);
    CF_CHECK(memcmp(x->wv, y->wv, kv * H * 4) == 0);
    CF_CHECK(memcmp(x->wo, y->wo, H * q * 4) == 0);
    CF_CHECK(memcmp(x->w_gate, y->w_gate, I * H * 4) == 0);
    CF_CHECK(memcmp(x->w_up, y->w_up, I * H * 4) == 0);
    CF_CHECK(memcmp(x->w_down, y->w_down, H * I * 4) == 0);
    CF_CHECK(memcmp(x->attn_norm, y->attn_norm, H * 4) == 0);
    CF_CHECK(memcmp(x->mlp_norm, y->mlp_norm, H * 4) == 0);
  }
}

CF_TEST(model_bf16_f16_convert_exactly) {
  cf_model_t *f32 = NULL, *bf = NULL, *h = NULL;
  write_model(tpath("m32"), LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  write_model(tpath("mbf"), subst(LLAMA_CFG, "\"float32\"", "\"bfloat16\""), &(model_opts_t){.dtype = CF_DT_BF16});
  write_model(tpath("mh"), subst(LLAMA_CFG, "\"float32\"", "\"float16\""), &(model_opts_t){.dtype = CF_DT_F16});
  CF_CHECK_OK(cf_model_load(tpath("m32"), &f32));
  CF_CHECK_OK(cf_model_load(tpath("mbf"), &bf));
  CF_CHECK_OK(cf_model_load(tpath("mh"), &h));
  if (f32 && bf && h) {
    CF_CHECK_EQ(bf->cfg.dtype, CF_DT_BF16);
    CF_CHECK_EQ(h->cfg.dtype, CF_DT_F16);
    check_same_weights(f32, bf);
    check_same_weights(f32, h);
    CF_CHECK_EQ((uintptr_t)bf->layers[0].wq % 64, 0); /* converted buffers are aligned */
    CF_CHECK(memcmp(f32->fingerprint, bf->fingerprint, 16) != 0);
  }
  cf_model_free(f32);
  cf_model_free(bf);
  cf_model_free(h);
}

CF_TEST(dtype_conversions_exact) {
  /* Every f16/bf16 bit pattern widens exactly and narrows back to itself (NaNs stay NaN).
   * Converted as one array (the SIMD paths) and one by one (the scalar tails). */
  static uint16_t all[65536], back[65536];
  static float wide[65536];
  for (uint32_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
  for (int bf = 0; bf < 2; bf++) {
    if (bf) cf_bf16_to_f32(all, wide, 65536);
    else cf_f16_to_f32(all, wide, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
      float one;
      if (bf) cf_bf16_to_f32(&all[i], &one, 1);
      else cf_f16_to_f32(&all[i], &one, 1);
      CF_CHECK_MSG(memcmp(&one, &wide[i], 4) == 0, "%s %04x: array and scalar paths differ", bf ? "bf16" : "f16", i);
    }
    if (bf) cf_f32_to_bf16(wide, back, 65536);
    else cf_f32_to_f16(wide, back, 65536);
    size_t bad = 0;
    for (uint32_t i = 0; i < 65536; i++) {
      uint16_t x = all[i], y = back[i];
      int nan = bf ? ((x & 0x7f80) == 0x7f80 && (x & 0x7f)) : ((x & 0x7c00) == 0x7c00 && (x & 0x3ff));
      if (nan) bad += !isnan(wide[i]) || !(bf ? ((y & 0x7f80) == 0x7f80 && (y & 0x7f)) : ((y & 0x7c00) == 0x7c00 && (y & 0x3ff)));
      else bad += x != y;
    }
    CF_CHECK_MSG(bad == 0, "%s: %zu patterns do not round-trip", bf ? "bf16" : "f16", bad);
  }
  struct { uint16_t h; float f; } known[] = {
      {0x3c00, 1.0f}, {0xc000, -2.0f}, {0x7bff, 65504.0f}, {0x0001, 5.9604644775390625e-08f},
      {0x0400, 6.103515625e-05f}, {0x03ff, 6.097555160522461e-05f}, {0x7c00, INFINITY}, {0x8000, -0.0f}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    float f;
    cf_f16_to_f32(&known[i].h, &f, 1);
    CF_CHECK_MSG(f == known[i].f && signbit(f) == signbit(known[i].f), "f16 %04x gave %.10g", known[i].h, f);
  }
  /* Rounding: nearest, ties to even. */
  float v[] = {1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 65520.0f, 1e-9f, 1.0f + 1.0f / 256};
  uint16_t hv[5], bv[5];
  cf_f32_to_f16(v, hv, 5);
  cf_f32_to_bf16(v, bv, 5);
  CF_CHECK_EQ(hv[0], 0x3c00); /* tie -> even */
  CF_CHECK_EQ(hv[1], 0x3c02);
  CF_CHECK_EQ(hv[2], 0x7c00); /* overflow -> inf */
  CF_CHECK_EQ(hv[3], 0x0000);
  CF_CHECK_EQ(bv[4], 0x3f80); /* 1 + 2^-8 is a bf16 tie -> even (1.0) */
}

CF_TEST(sharded_load_equals_single_file) {
  cf_model_t *one = NULL, *sh = NULL;
  write_model(tpath("single"), LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  write_model(tpath("sharded"), LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .shards = 3});
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", tpath("sharded"));
  CF_CHECK(access(p, F_OK) != 0);
  CF_CHECK_OK(cf_model_load(tpath("single"), &one));
  CF_CHECK_OK(cf_model_load(tpath("sharded"), &sh));
  if (one && sh) {
    check_same_weights(one, sh);
    CF_CHECK(memcmp(one->fingerprint, sh->fingerprint, 16) == 0);
  }
  cf_model_free(one);
  cf_model_free(sh);

  /* A shard the index names is missing. */
  const char *d = tpath("shard_missing");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .shards = 2});
  snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", d);
  unlink(p);
  cf_model_t *m = NULL;
  CF_CHECK_ERR(cf_model_load(d, &m), CF_ENOENT);
  CF_CHECK_CONTAINS(cf_errmsg(), "shard named by ");
  CF_CHECK_CONTAINS(cf_errmsg(), "model-00002-of-00002.safetensors: No such file");

  /* The index puts a tensor in the wrong shard. */
  d = tpath("shard_wrong");
  write_model(d, LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .shards = 2});
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
  write_text(p, "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\","
                "\"model.embed_tokens.weight\":\"model-00002-of-00002.safetensors\"}}");
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "weight_map puts tensor 'model.norm.weight' in ");

  write_text(p, "{\"weight_map\":{\"model.norm.weight\":\"../model-00001-of-00002.safetensors\"}}");
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "weight_map['model.norm.weight']: expected a file name in the checkpoint directory");
  write_text(p, "{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\",");
  CF_CHECK_ERR(cf_model_load(d, &m), CF_EFORMAT);
  CF_CHECK_CONTAINS(cf_errmsg(), "model.safetensors.index.json: JSON line 1");
}

/* The weights digest: the same bytes give the same digest, another value in a tensor another;
 * a directory with no *.safetensors file is refused naming it (it used to digest nothing, passing
 * NULL to qsort: UBSan under `make asan`). */
CF_TEST(weights_digest_values_and_empty_dir) {
  uint8_t a[16], b[16], c[16];
  write_model(tpath("wd_a"), LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  write_model(tpath("wd_b"), LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32});
  CF_CHECK_OK(cf_model_weights_digest(tpath("wd_a"), a));
  CF_CHECK_OK(cf_model_weights_digest(tpath("wd_b"), b));
  CF_CHECK(memcmp(a, b, 16) == 0);
  char p[600];
  snprintf(p, sizeof p, "%s/model.safetensors", tpath("wd_b"));
  FILE *f = fopen(p, "r+b");
  CF_CHECK(f != NULL);
  if (f) {
    fseek(f, -3, SEEK_END); /* the last tensor's last bytes: a value, not the header */
    int ch = fgetc(f);
    fseek(f, -3, SEEK_END);
    fputc(ch ^ 0x5a, f);
    fclose(f);
  }
  CF_CHECK_OK(cf_model_weights_digest(tpath("wd_b"), c));
  CF_CHECK(memcmp(a, c, 16) != 0);
  const char *d = tpath("wd_empty");
  mkdir(d, 0700);
  memset(c, 0x77, 16);
  CF_CHECK_ERR(cf_model_weights_digest(d, c), CF_ENOENT);
  CF_CHECK_CONTAINS(cf_errmsg(), "wd_empty: no *.safetensors file to digest");
  static const uint8_t zero[16];
  CF_CHECK(memcmp(c, zero, 16) == 0);
}

/* ------------------------------------------------------------------ fingerprint */

static void fp_of(const char *name, const char *cfg, const model_opts_t *o, uint8_t out[16]) {
  cf_model_t *m = NULL;
  const char *d = tpath(name);
  write_model(d, cfg, o);
  int rc = cf_model_load(d, &m);
  CF_CHECK_MSG(rc == 0, "%s: %s", name, cf_errmsg());
  if (m) memcpy(out, m->fingerprint, 16);
  else memset(out, 0, 16);
  cf_model_free(m);
}

CF_TEST(fingerprint_tracks_relevant_values_only) {
  const model_opts_t f32 = {.dtype = CF_DT_F32};
  uint8_t base[16], x[16];
  fp_of("fp_base", LLAMA_CFG, &f32, base);
  /* Relevant config changes (each keeps the checkpoint loadable). */
  static const char *const rel[][2] = {
      {"\"rms_norm_eps\":1e-05", "\"rms_norm_eps\":1e-06"},
      {"\"rope_theta\":10000.0", "\"rope_theta\":500000.0"},
      {"\"rope_type\":\"default\"", "\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":64"},
      {"\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"attention_bias\":true"},
      {"\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"mlp_bias\":true"},
      {"\"tie_word_embeddings\":false", "\"tie_word_embeddings\":true"},
      {"\"dtype\":\"float32\"", "\"dtype\":\"bfloat16\""},
      {"\"num_hidden_layers\":2", "\"num_hidden_layers\":1"},
      {"\"intermediate_size\":24", "\"intermediate_size\":32"},
      {"\"num_key_value_heads\":2", "\"num_key_value_heads\":4"},
      {"\"vocab_size\":40", "\"vocab_size\":41"},
      {"\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"head_dim\":8"},
      {"\"model_type\":\"llama\",", "\"model_type\":\"mistral\",\"sliding_window\":null,"},
  };
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    char nm[32];
    snprintf(nm, sizeof nm, "fp_rel%zu", i);
    const char *cfg = subst(LLAMA_CFG, rel[i][0], rel[i][1]);
    if (strstr(cfg, "mistral")) cfg = subst(cfg, "LlamaForCausalLM", "MistralForCausalLM");
    fp_of(nm, cfg, &f32, x);
    CF_CHECK_MSG(memcmp(base, x, 16) != 0, "fingerprint unchanged by %s", rel[i][1]);
  }
  /* rope llama3 parameters each count. */
  static char l3[4096]; /* own copy: subst() recycles its buffers */
  snprintf(l3, sizeof l3, "%s", subst(LLAMA_CFG, rel[2][0], rel[2][1]));
  uint8_t l3fp[16];
  fp_of("fp_l3", l3, &f32, l3fp);
  static const char *const l3rel[][2] = {
      {"\"factor\":8.0", "\"factor\":4.0"}, {"\"low_freq_factor\":1.0", "\"low_freq_factor\":2.0"},
      {"\"high_freq_factor\":4.0", "\"high_freq_factor\":3.0"},
      {"\"original_max_position_embeddings\":64", "\"original_max_position_embeddings\":128"}};
  for (size_t i = 0; i < 4; i++) {
    char nm[32];
    snprintf(nm, sizeof nm, "fp_l3_%zu", i);
    fp_of(nm, subst(l3, l3rel[i][0], l3rel[i][1]), &f32, x);
    CF_CHECK_MSG(memcmp(l3fp, x, 16) != 0, "fingerprint unchanged by %s", l3rel[i][1]);
  }
  /* Irrelevant keys leave it alone; so do 4.x-vs-5.x spellings of the same values. */
  static const char *const irr[][2] = {
      {"\"max_position_embeddings\":512", "\"max_position_embeddings\":4096"},
      {"\"model_type\":\"llama\"", "\"model_type\":\"llama\",\"bos_token_id\":1,\"transformers_version\":\"4.57.0\",\"use_cache\":false"},
      {",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}", ",\"rope_theta\":10000,\"rope_scaling\":null"},
      {"\"dtype\":\"float32\"", "\"torch_dtype\":\"float32\""},
  };
  for (size_t i = 0; i < sizeof irr / sizeof irr[0]; i++) {
    char nm[32];
    snprintf(nm, sizeof nm, "fp_irr%zu", i);
    fp_of(nm, subst(LLAMA_CFG, irr[i][0], irr[i][1]), &f32, x);
    CF_CHECK_MSG(memcmp(base, x, 16) == 0, "fingerprint changed by %s", irr[i][1]);
  }
  /* Tensor headers: an extra tensor, or another dtype, changes it; same headers with other
   * byte values do not (values are not hashed). */
  fp_of("fp_extra", LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F32, .extra = "model.rotary.inv_freq"}, x);
  CF_CHECK(memcmp(base, x, 16) != 0);
  fp_of("fp_f16", LLAMA_CFG, &(model_opts_t){.dtype = CF_DT_F16}, x);
  CF_CHECK(memcmp(base, x, 16) != 0);
  fp_of("fp_again", LLAMA_CFG, &f32, x);
  CF_CHECK(memcmp(base, x, 16) == 0);

  /* The primitive itself: name boundaries and shapes matter. */
  cf_model_config_t c;
  CF_CHECK_OK(parse_cfg(LLAMA_CFG, &c));
  const char *n1[] = {"ab", "c"}, *n2[] = {"a", "bc"};
  cf_dtype_t dt[] = {CF_DT_F32, CF_DT_F32};
  int nd[] = {1, 1};
  int64_t s1[] = {4}, s2[] = {5};
  const int64_t *sh[] = {s1, s1}, *sh2[] = {s1, s2};
  uint8_t a[16], b[16];
  cf_model_fingerprint(&c, 2, n1, dt, nd, sh, a);
  cf_model_fingerprint(&c, 2, n2, dt, nd, sh, b);
  CF_CHECK(memcmp(a, b, 16) != 0);
  cf_model_fingerprint(&c, 2, n1, dt, nd, sh2, b);
  CF_CHECK(memcmp(a, b, 16) != 0);
  char hex[33];
  uint8_t z[16] = {0x01, 0xab, [15] = 0xff};
  CF_CHECK_STR(cf_model_fingerprint_hex(z, hex), "01ab00000000000000000000000000ff");
}

/* ------------------------------------------------------------------ held-out fixtures */

/* The transformers-made checkpoints in tests/fixtures (see its README) load with the config
 * values make_fixtures.py gave them, and each weight file's values come through unchanged. */
CF_TEST(loads_transformers_fixtures) {
  static const struct {
    const char *name;
    cf_arch_t arch;
    int layers, hidden, heads, kv, hd, vocab;
    cf_dtype_t dtype;
    cf_rope_kind_t rope;
    int qkv_bias, o_bias, mlp_bias, qk_norm, tie;
  } fx[] = {
      {"llama3-bf16", CF_ARCH_LLAMA, 3, 64, 4, 2, 16, 256, CF_DT_BF16, CF_ROPE_LLAMA3, 0, 0, 0, 0, 1},
      {"qwen2-bias", CF_ARCH_QWEN2, 2, 48, 6, 2, 8, 200, CF_DT_F32, CF_ROPE_DEFAULT, 1, 0, 0, 0, 0},
      {"qwen3-qknorm", CF_ARCH_QWEN3, 2, 64, 4, 2, 24, 160, CF_DT_F16, CF_ROPE_DEFAULT, 0, 0, 0, 1, 0},
      {"mistral-nowindow", CF_ARCH_MISTRAL, 2, 64, 8, 2, 8, 128, CF_DT_F32, CF_ROPE_DEFAULT, 0, 0, 0, 0, 0},
      {"llama-sharded", CF_ARCH_LLAMA, 2, 32, 4, 1, 8, 128, CF_DT_F32, CF_ROPE_DEFAULT, 0, 0, 0, 0, 0},
      {"llama-v4config", CF_ARCH_LLAMA, 2, 48, 3, 3, 16, 150, CF_DT_F32, CF_ROPE_LLAMA3, 1, 1, 1, 0, 0},
  };
  for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fixtures/%s", fx[i].name);
    cf_model_t *m = NULL;
    int rc = cf_model_load(dir, &m);
    CF_CHECK_MSG(rc == 0, "%s: %s: %s", dir, cf_strerror(rc), cf_errmsg());
    if (!m) continue;
    const cf_model_config_t *c = &m->cfg;
    CF_CHECK_MSG(c->arch == fx[i].arch && c->n_layers == fx[i].layers && c->hidden == fx[i].hidden &&
                 c->n_heads == fx[i].heads && c->n_kv_heads == fx[i].kv && c->head_dim == fx[i].hd &&
                 c->vocab == fx[i].vocab && c->dtype == fx[i].dtype && c->rope_kind == fx[i].rope &&
                 c->qkv_bias == fx[i].qkv_bias && c->o_bias == fx[i].o_bias &&
                 c->mlp_bias == fx[i].mlp_bias && c->qk_norm == fx[i].qk_norm &&
                 c->tie_embeddings == fx[i].tie, "%s: config values differ", fx[i].name);
    CF_CHECK_MSG(!fx[i].tie || m->lm_head == m->embed, "%s: tied lm_head", fx[i].name);
    CF_CHECK_MSG(fx[i].tie || (m->lm_head && m->lm_head != m->embed), "%s: lm_head", fx[i].name);
    const cf_layer_weights_t *w = &m->layers[fx[i].layers - 1];
    CF_CHECK_MSG(!fx[i].qkv_bias == !w->bq && !fx[i].o_bias == !w->bo && !fx[i].mlp_bias == !w->b_down &&
                 !fx[i].qk_norm == !w->k_norm, "%s: optional weights", fx[i].name);
    /* kv.safetensors has the layout the golden test expects. */
    char kvp[300];
    snprintf(kvp, sizeof kvp, "%s/kv.safetensors", dir);
    cf_st_file_t kv;
    CF_CHECK_OK(cf_st_open(kvp, &kv));
    const cf_st_tensor_t *tok = cf_st_find(&kv, "tokens"), *k0 = cf_st_find(&kv, "layers.0.k");
    CF_CHECK(tok && tok->dtype == CF_DT_I32 && tok->ndim == 1);
    CF_CHECK(k0 && k0->dtype == CF_DT_F32 && k0->ndim == 3 && tok && k0->shape[0] == tok->shape[0] &&
             k0->shape[1] == fx[i].kv && k0->shape[2] == fx[i].hd);
    cf_st_close(&kv);
    cf_model_free(m);
  }
  /* Widened BF16 weights equal the file's bf16 values exactly. */
  cf_st_file_t f;
  CF_CHECK_OK(cf_st_open("tests/fixtures/llama3-bf16/model.safetensors", &f));
  cf_model_t *m = NULL;
  CF_CHECK_OK(cf_model_load("tests/fixtures/llama3-bf16", &m));
  const cf_st_tensor_t *t = cf_st_find(&f, "model.layers.2.mlp.down_proj.weight");
  if (m && t) {
    CF_CHECK_EQ(t->dtype, CF_DT_BF16);
    size_t bad = 0;
    for (size_t j = 0; j < t->numel; j++) {
      uint16_t h;
      memcpy(&h, (const char *)t->data + 2 * j, 2);
      uint32_t u = (uint32_t)h << 16;
      float v;
      memcpy(&v, &u, 4);
      bad += v != m->layers[2].w_down[j];
    }
    CF_CHECK_EQ(bad, 0);
  }
  cf_model_free(m);
  cf_st_close(&f);
}

/* The new values that change the KV are in the fingerprint (experts, top_k, their width,
 * renormalisation, the window, each layer's kinds); a dense windowless model hashes exactly as
 * before they existed (its v1 serialisation has none of them). */
CF_TEST(fingerprint_covers_experts_and_windows) {
  cf_model_config_t base;
  CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM",
                                  ",\"num_experts\":4,\"num_experts_per_tok\":2,"
                                  "\"moe_intermediate_size\":8,\"norm_topk_prob\":true"), &base));
  const char *names[] = {"a"};
  cf_dtype_t dts[] = {CF_DT_F32};
  int nd[] = {1};
  int64_t sh0[] = {3};
  const int64_t *shs[] = {sh0};
  uint8_t f0[16], f1[16];
  cf_model_fingerprint(&base, 1, names, dts, nd, shs, f0);
  for (int v = 0; v < 7; v++) {
    cf_model_config_t c = base;
    switch (v) {
      case 0: c.n_experts = 5; break;
      case 1: c.top_k = 3; break;
      case 2: c.moe_intermediate = 9; break;
      case 3: c.norm_topk = 0; break;
      case 4: c.layer_moe[1] = 0; break;
      case 5: c.sliding_window = 16; c.layer_sliding[0] = 1; break;
      case 6: c.sliding_window = 16; c.layer_sliding[1] = 1; break;
    }
    cf_model_fingerprint(&c, 1, names, dts, nd, shs, f1);
    CF_CHECK_MSG(memcmp(f0, f1, 16) != 0, "variant %d: same fingerprint", v);
  }
  /* windows on different layers differ from each other too */
  cf_model_config_t a = base, b = base;
  a.sliding_window = b.sliding_window = 16;
  a.layer_sliding[0] = 1;
  b.layer_sliding[1] = 1;
  cf_model_fingerprint(&a, 1, names, dts, nd, shs, f0);
  cf_model_fingerprint(&b, 1, names, dts, nd, shs, f1);
  CF_CHECK(memcmp(f0, f1, 16) != 0);
  /* qwen3_moe's window keys, as parsed: use_sliding_window on/off and the window size each
   * change the fingerprint; max_window_layers (not read by transformers 5) does not. */
  const char *wcfg[] = {
      ",\"use_sliding_window\":false,\"sliding_window\":8",
      ",\"use_sliding_window\":true,\"sliding_window\":8",
      ",\"use_sliding_window\":true,\"sliding_window\":9",
      ",\"use_sliding_window\":true,\"sliding_window\":9,\"max_window_layers\":1"};
  uint8_t fw[4][16];
  for (int i = 0; i < 4; i++) {
    char buf[400];
    snprintf(buf, sizeof buf, ",\"num_experts\":4,\"num_experts_per_tok\":2,"
             "\"moe_intermediate_size\":8,\"norm_topk_prob\":true%s", wcfg[i]);
    cf_model_config_t q;
    CF_CHECK_OK(parse_cfg(as_family("qwen3_moe", "Qwen3MoeForCausalLM", buf), &q));
    cf_model_fingerprint(&q, 1, names, dts, nd, shs, fw[i]);
  }
  cf_model_fingerprint(&base, 1, names, dts, nd, shs, f0);
  CF_CHECK(memcmp(fw[0], f0, 16) == 0); /* window off = the windowless base */
  CF_CHECK(memcmp(fw[0], fw[1], 16) != 0 && memcmp(fw[1], fw[2], 16) != 0);
  CF_CHECK(memcmp(fw[2], fw[3], 16) == 0);
  /* dense, no window: the per-layer arrays are not hashed (v1 unchanged) */
  cf_model_config_t d;
  CF_CHECK_OK(parse_cfg(LLAMA_CFG, &d));
  cf_model_fingerprint(&d, 1, names, dts, nd, shs, f0);
  d.layer_moe[5] = d.layer_sliding[7] = 1; /* no experts, no window: ignored */
  cf_model_fingerprint(&d, 1, names, dts, nd, shs, f1);
  CF_CHECK(memcmp(f0, f1, 16) == 0);
}

/* The MoE / window checkpoints transformers 5.19 wrote (tests/fixtures/mixtral-window,
 * qwen3moe-dense): config values as made, experts bound to the right tensors (mixtral's
 * block_sparse_moe w1 = gate, w3 = up, w2 = down, widened from BF16 exactly). */
CF_TEST(loads_moe_and_window_fixtures) {
  cf_model_t *m = NULL;
  if (access("tests/fixtures/mixtral-window/config.json", R_OK) != 0)
    CF_SKIP("tests/fixtures not present (run from the repository root)");
  CF_CHECK_OK(cf_model_load("tests/fixtures/mixtral-window", &m));
  if (m) {
    const cf_model_config_t *c = &m->cfg;
    CF_CHECK(c->arch == CF_ARCH_MIXTRAL && c->n_experts == 4 && c->top_k == 2 &&
             c->moe_intermediate == 48 && c->norm_topk == 1 && c->sliding_window == 24 &&
             c->layer_moe[0] && c->layer_moe[1] && c->layer_sliding[0] && c->layer_sliding[1] &&
             c->dtype == CF_DT_BF16 && c->head_dim == 16);
    cf_st_file_t f;
    CF_CHECK_OK(cf_st_open("tests/fixtures/mixtral-window/model.safetensors", &f));
    static const struct { const char *name; int which; } ex[] = {
        {"model.layers.1.block_sparse_moe.experts.3.w1.weight", 0},
        {"model.layers.1.block_sparse_moe.experts.3.w3.weight", 1},
        {"model.layers.1.block_sparse_moe.experts.3.w2.weight", 2}};
    for (int i = 0; i < 3; i++) {
      const cf_st_tensor_t *t = cf_st_find(&f, ex[i].name);
      const float *w = ex[i].which == 0 ? m->layers[1].e_gate[3]
                       : ex[i].which == 1 ? m->layers[1].e_up[3] : m->layers[1].e_down[3];
      CF_CHECK_MSG(t && t->dtype == CF_DT_BF16 && t->numel == 48 * 64, "%s", ex[i].name);
      size_t bad = 0;
      for (size_t j = 0; t && j < t->numel; j++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * j, 2);
        uint32_t u = (uint32_t)h << 16;
        float v;
        memcpy(&v, &u, 4);
        bad += v != w[j];
      }
      CF_CHECK_MSG(bad == 0, "%s: %zu values differ", ex[i].name, bad);
    }
    cf_st_close(&f);
    cf_model_free(m);
  }
  m = NULL;
  CF_CHECK_OK(cf_model_load("tests/fixtures/qwen3moe-dense", &m));
  if (m) {
    const cf_model_config_t *c = &m->cfg;
    CF_CHECK(c->arch == CF_ARCH_QWEN3_MOE && c->n_experts == 6 && c->top_k == 3 &&
             c->moe_intermediate == 24 && c->norm_topk == 0 && c->intermediate == 64 &&
             c->layer_moe[0] && !c->layer_moe[1] && c->layer_moe[2] && c->sliding_window == 0);
    CF_CHECK(m->layers[1].w_gate && !m->layers[1].router && m->layers[2].router &&
             !m->layers[2].w_gate && m->layers[0].e_down[5]);
    cf_model_free(m);
  }
  /* qwen3_moe with use_sliding_window: every layer windowed though max_window_layers is 2
   * (transformers 5 reads no max_window_layers for qwen3_moe), dense layers 0 and 2. */
  m = NULL;
  CF_CHECK_OK(cf_model_load("tests/fixtures/qwen3moe-window", &m));
  if (m) {
    const cf_model_config_t *c = &m->cfg;
    CF_CHECK(c->arch == CF_ARCH_QWEN3_MOE && c->n_experts == 5 && c->top_k == 2 &&
             c->moe_intermediate == 32 && c->norm_topk == 1 && c->intermediate == 80 &&
             !c->layer_moe[0] && c->layer_moe[1] && !c->layer_moe[2] && c->layer_moe[3] &&
             c->sliding_window == 20 && c->dtype == CF_DT_BF16);
    for (int l = 0; l < 4; l++) CF_CHECK_MSG(cf_model_layer_window(c, l) == 20, "layer %d", l);
    cf_model_free(m);
  }
}
