/* cacheflowctl gen-model — write a deterministic random-weight Hugging Face llama checkpoint
 * (config.json in transformers 5.x style + model.safetensors, F32 or BF16) for demos and tests.
 * Weights are N(0, 0.02) (the HF initializer_range), norms exactly 1; the same preset and seed
 * give the same bytes on every machine. The tensor names are transformers' own, so
 * LlamaForCausalLM.from_pretrained(DIR) loads it too. */
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/cf_ctl.h"
#include "model/cf_model_synth.h"
#include "model/cf_safetensors.h"
#include "util/cf_err.h"

#define CMD "gen-model"

/* mkdir -p. Returns 0 or -1 with errno set. */
static int cf__mkdirs(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char c = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
      buf[i] = c;
    }
  }
  struct stat st;
  if (stat(path, &st) != 0) return -1;
  if (!S_ISDIR(st.st_mode)) { errno = ENOTDIR; return -1; }
  return 0;
}

static int cf__write_config(const char *path, const cf_model_config_t *c, int bf16, float std) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  fprintf(f,
          "{\n"
          "  \"architectures\": [\"LlamaForCausalLM\"],\n"
          "  \"attention_bias\": false,\n"
          "  \"attention_dropout\": 0.0,\n"
          "  \"bos_token_id\": 1,\n"
          "  \"dtype\": \"%s\",\n"
          "  \"eos_token_id\": 2,\n"
          "  \"head_dim\": %d,\n"
          "  \"hidden_act\": \"silu\",\n"
          "  \"hidden_size\": %d,\n"
          "  \"initializer_range\": %g,\n"
          "  \"intermediate_size\": %d,\n"
          "  \"max_position_embeddings\": %d,\n"
          "  \"mlp_bias\": false,\n"
          "  \"model_type\": \"llama\",\n"
          "  \"num_attention_heads\": %d,\n"
          "  \"num_hidden_layers\": %d,\n"
          "  \"num_key_value_heads\": %d,\n"
          "  \"pretraining_tp\": 1,\n"
          "  \"rms_norm_eps\": %g,\n"
          "  \"rope_parameters\": {\n"
          "    \"rope_theta\": %.1f,\n"
          "    \"rope_type\": \"default\"\n"
          "  },\n"
          "  \"tie_word_embeddings\": %s,\n"
          "  \"transformers_version\": \"5.0.0\",\n"
          "  \"use_cache\": true,\n"
          "  \"vocab_size\": %d\n"
          "}\n",
          bf16 ? "bfloat16" : "float32", c->head_dim, c->hidden, std, c->intermediate,
          c->max_pos, c->n_heads, c->n_layers, c->n_kv_heads, c->rms_eps, c->rope_theta,
          c->tie_embeddings ? "true" : "false", c->vocab);
  int bad = ferror(f);
  if (fclose(f) != 0 || bad) return -1;
  return 0;
}

static int cf__genmodel_main(int argc, char **argv) {
  const char *out = NULL, *preset = "demo", *dtype = "f32";
  unsigned long long seed = 0;
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'}, {"preset", required_argument, 0, 'p'},
      {"seed", required_argument, 0, 's'}, {"dtype", required_argument, 0, 'd'},
      {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
      case 'o': out = optarg; break;
      case 'p': preset = optarg; break;
      case 'd': dtype = optarg; break;
      case 's':
        if (cf_ctl_parse_u64(optarg, ULLONG_MAX, &seed))
          return cf_ctl_fail(CMD, "--seed '%s': must be a non-negative integer", optarg);
        break;
      default:
        return cf_ctl_fail(CMD, "unknown or incomplete option '%s' (usage: cacheflowctl "
                           "gen-model --out DIR [--preset demo|tiny] [--seed S] "
                           "[--dtype f32|bf16])", argv[optind - 1]);
    }
  }
  if (optind < argc) return cf_ctl_fail(CMD, "unexpected argument '%s'", argv[optind]);
  if (!out) return cf_ctl_fail(CMD, "--out DIR is required");
  int bf16;
  if (!strcmp(dtype, "f32") || !strcmp(dtype, "float32")) bf16 = 0;
  else if (!strcmp(dtype, "bf16") || !strcmp(dtype, "bfloat16")) bf16 = 1;
  else return cf_ctl_fail(CMD, "--dtype '%s': expected f32 or bf16", dtype);

  cf_model_config_t c;
  if (cf_synth_preset(preset, &c)) return cf_ctl_fail(CMD, "--preset: %s", cf_errmsg());
  c.dtype = bf16 ? CF_DT_BF16 : CF_DT_F32;
  cf_synth_opts_t o = {.seed = seed, .std = 0.02f, .norm_jitter = 0};
  cf_model_t *m = NULL;
  int rc = cf_model_synth(&c, &o, &m);
  if (rc) return cf_ctl_fail(CMD, "%s", cf_errmsg());

  int ret = 1, n = cf_model_hf_tensors(m, NULL, 0);
  cf_hf_tensor_t *t = calloc(n, sizeof *t);
  void **conv = calloc(n, sizeof *conv);
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  char path[4096];
  if (!t || !conv) { ret = cf_ctl_fail(CMD, "out of memory"); goto done; }
  if (cf__mkdirs(out)) { ret = cf_ctl_fail(CMD, "--out %s: %s", out, strerror(errno)); goto done; }
  cf_model_hf_tensors(m, t, n);
  rc = cf_st_writer_meta(&w, "format", "pt"); /* transformers refuses files without it */
  for (int i = 0; i < n && !rc; i++) {
    size_t numel = (size_t)t[i].shape[0] * (t[i].ndim == 2 ? (size_t)t[i].shape[1] : 1);
    const void *data = t[i].data;
    if (bf16) {
      if (!(conv[i] = malloc(numel * 2))) { rc = cf_seterr(CF_ENOMEM, "%s", t[i].name); break; }
      cf_f32_to_bf16(t[i].data, conv[i], numel);
      data = conv[i];
    }
    rc = cf_st_writer_add(&w, t[i].name, bf16 ? CF_DT_BF16 : CF_DT_F32, t[i].ndim, t[i].shape,
                          data);
  }
  snprintf(path, sizeof path, "%s/model.safetensors", out);
  if (!rc) rc = cf_st_writer_write(&w, path);
  if (rc) { ret = cf_ctl_fail(CMD, "%s: %s: %s", path, cf_strerror(rc), cf_errmsg()); goto done; }
  snprintf(path, sizeof path, "%s/config.json", out);
  if (cf__write_config(path, &c, bf16, o.std)) {
    ret = cf_ctl_fail(CMD, "%s: %s", path, strerror(errno));
    goto done;
  }
  printf("gen-model: %s preset (%d layers, hidden %d, %d/%d heads, vocab %d), seed %llu, %s "
         "-> %s\n", preset, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.vocab, seed,
         bf16 ? "BF16" : "F32", out);
  ret = 0;
done:
  cf_st_writer_close(&w);
  for (int i = 0; conv && i < n; i++) free(conv[i]);
  free(conv);
  free(t);
  cf_model_synth_free(m);
  return ret;
}

static const cf_ctl_cmd_t cf__genmodel_cmd = {
    .name = "gen-model",
    .usage = "--out DIR [--preset demo|tiny] [--seed S] [--dtype f32|bf16]",
    .help = "write a deterministic random-weight HF llama checkpoint (demo and tests)",
    .main = cf__genmodel_main,
};
CF_CTL_COMMAND(cf__genmodel_cmd)
