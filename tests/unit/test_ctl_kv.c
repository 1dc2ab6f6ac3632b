/* cacheflowctl kv / kv-compare / gen-model, run as real processes: golden KV through the CLI,
 * every option giving the same output, token file formats, and one-line errors on bad input.
 * Needs the built binary: $BUILD/cacheflowctl (tests/run.sh exports BUILD, cwd = repo root). */
#include "cf_test.h"
#include "model/cf_kv.h"
#include "model/cf_model.h"
#include "model/cf_safetensors.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *ctl(void) {
  static char p[512];
  const char *b = getenv("BUILD");
  snprintf(p, sizeof p, "%s/cacheflowctl", b ? b : "build");
  return p;
}

static char *tpath(const char *name) {
  static char buf[64][512]; /* a ring: callers hold up to ~20 paths at once */
  static int k;
  char *p = buf[k++ % 64];
  snprintf(p, 512, "%s/%s", cf_test_tmpdir(), name);
  return p;
}

/* Run `cacheflowctl <args>`; stderr into err[] (NUL-terminated). Returns the exit status. */
static int run(char *err, size_t errlen, const char *fmt, ...) {
  char args[2048], cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  char ef[600];
  snprintf(ef, sizeof ef, "%s/stderr.txt", cf_test_tmpdir());
  snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>%s", ctl(), args, ef);
  int st = system(cmd);
  if (err) {
    err[0] = 0;
    FILE *f = fopen(ef, "r");
    if (f) {
      size_t n = fread(err, 1, errlen - 1, f);
      err[n] = 0;
      fclose(f);
    }
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static void write_text(const char *path, const char *s) {
  FILE *f = fopen(path, "w");
  fputs(s, f);
  fclose(f);
}

static double compare(const char *a, const char *ref) {
  cf_kv_t x, r;
  double e = INFINITY;
  if (cf_kv_load(a, &x, NULL)) { cf_test_fail(__FILE__, __LINE__, "%s", cf_errmsg()); return e; }
  if (cf_kv_load(ref, &r, NULL)) { cf_test_fail(__FILE__, __LINE__, "%s", cf_errmsg()); cf_kv_free(&x); return e; }
  CF_CHECK_OK(cf_kv_max_rel_err(&x, &r, &e, NULL, NULL));
  cf_kv_free(&x);
  cf_kv_free(&r);
  return e;
}

static int have_ctl(void) { return access(ctl(), X_OK) == 0; }

CF_TEST(ctl_kv_golden_public_llama_gqa) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  char dir[512], ref[600];
  snprintf(dir, sizeof dir, "%s/public-llama-gqa", cf_test_fixtures());
  snprintf(ref, sizeof ref, "%s/kv.safetensors", dir);
  if (access(ref, R_OK) != 0) CF_SKIP("fixture public-llama-gqa not present");
  const char *opts[] = {"", "--chunk 1", "--chunk 7", "--chunk 64", "--backend cpu --threads 1",
                        "--staircase 2,0,1,2,1,0,2,1,1,0,2,2,1,0,1 --chunk 10"};
  for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
    char err[1024];
    int rc = run(err, sizeof err, "kv --model %s --tokens %s --out %s %s", dir, ref,
                 tpath("out.safetensors"), opts[i]);
    CF_CHECK_MSG(rc == 0, "kv %s: exit %d: %s", opts[i], rc, err);
    double e = compare(tpath("out.safetensors"), ref);
    CF_CHECK_MSG(e <= 1e-4, "kv %s: max rel err %.3g vs transformers", opts[i], e);
  }
  /* kv-compare agrees and enforces --tol */
  CF_CHECK_EQ(run(NULL, 0, "kv-compare %s %s --tol 1e-4", tpath("out.safetensors"), ref), 0);
  char err[1024];
  CF_CHECK_EQ(run(err, sizeof err, "kv-compare %s %s --tol 0", ref, tpath("out.safetensors")) != 0, 1);
}

/* `cacheflowctl kv` (whole and --chunk 7) on every transformers-made checkpoint under
 * tests/fixtures/ against its kv.safetensors: the command the held-out checks run. */
CF_TEST(ctl_kv_golden_every_fixture_checkpoint) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  DIR *d = opendir("tests/fixtures");
  if (!d) CF_SKIP("tests/fixtures not present (run from the repository root)");
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) {
    char dir[600], ref[700], err[1024];
    snprintf(dir, sizeof dir, "tests/fixtures/%.255s", e->d_name);
    snprintf(ref, sizeof ref, "%s/kv.safetensors", dir);
    if (e->d_name[0] == '.' || access(ref, R_OK) != 0) continue;
    for (int chunk = 0; chunk <= 7; chunk += 7) {
      char opt[32] = "";
      if (chunk) snprintf(opt, sizeof opt, "--chunk %d", chunk);
      int rc = run(err, sizeof err, "kv --model %s --tokens %s --out %s %s", dir, ref,
                   tpath("fx.safetensors"), opt);
      CF_CHECK_MSG(rc == 0, "%s %s: exit %d: %s", dir, opt, rc, err);
      double er = compare(tpath("fx.safetensors"), ref);
      CF_CHECK_MSG(er <= 1e-4, "%s %s: max rel err %.3g vs transformers", dir, opt, er);
    }
    n++;
  }
  closedir(d);
  if (!n) CF_SKIP("no checkpoints with kv.safetensors under tests/fixtures");
}

/* A generated checkpoint: text, comma-separated and I64 safetensors tokens give the same KV;
 * chunks and staircases of a T that no chunk divides give the whole's KV. */
CF_TEST(ctl_kv_options_agree_on_generated_model) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  char err[1024];
  const char *md = tpath("tiny");
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --seed 9", md), 0);
  int T = 203;
  int64_t ids[203];
  char text[4096] = "", *p = text;
  for (int i = 0; i < T; i++) {
    ids[i] = (int64_t)(cf_test_rand() % 256);
    p += sprintf(p, "%s%lld%s", i ? "" : "[", (long long)ids[i],
                 i == T - 1 ? "]\n" : i % 3 == 0 ? ", " : i % 3 == 1 ? "\n" : " ");
  }
  write_text(tpath("tok.txt"), text);
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  int64_t shape[1] = {T};
  CF_CHECK_OK(cf_st_writer_add(&w, "tokens", CF_DT_I64, 1, shape, ids));
  CF_CHECK_OK(cf_st_writer_write(&w, tpath("tok64.safetensors")));
  cf_st_writer_close(&w);

  CF_CHECK_EQ(run(err, sizeof err, "kv --model %s --tokens %s --out %s", md, tpath("tok.txt"),
                  tpath("whole.safetensors")), 0);
  const char *variants[] = {"--tokens TOK64", "--chunk 1", "--chunk 50", "--chunk 202",
                            "--staircase 2,0,1,2,0,1,1,2,0,2,1,0,1 --chunk 16",
                            "--staircase 0,0,0,0,0,0,0,0,0,0,0,0,0 --chunk 16",
                            "--staircase 1 --chunk 300"};
  for (size_t i = 0; i < sizeof variants / sizeof *variants; i++) {
    const char *tok = !strncmp(variants[i], "--tokens", 8) ? tpath("tok64.safetensors") : tpath("tok.txt");
    const char *extra = !strncmp(variants[i], "--tokens", 8) ? "" : variants[i];
    int rc = run(err, sizeof err, "kv --model %s --tokens %s --out %s %s", md, tok,
                 tpath("v.safetensors"), extra);
    CF_CHECK_MSG(rc == 0, "%s: exit %d: %s", variants[i], rc, err);
    double e = compare(tpath("v.safetensors"), tpath("whole.safetensors"));
    CF_CHECK_MSG(e <= 1e-5, "%s: max rel err %.3g vs whole", variants[i], e);
  }
  /* the output carries the tokens it was computed from */
  cf_kv_t kv;
  int32_t *tk = NULL;
  CF_CHECK_OK(cf_kv_load(tpath("whole.safetensors"), &kv, &tk));
  CF_CHECK_EQ(kv.T, T);
  CF_CHECK_EQ(kv.n_layers, 2);
  CF_CHECK(tk && tk[5] == ids[5] && tk[T - 1] == ids[T - 1]);
  free(tk);
  cf_kv_free(&kv);
}

CF_TEST(ctl_gen_model_is_deterministic) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  char err[1024];
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --seed 4", tpath("g1")), 0);
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --seed 4", tpath("g2")), 0);
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --seed 5 --dtype bf16",
                  tpath("g3/nested")), 0);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cmp -s %s/model.safetensors %s/model.safetensors", tpath("g1"), tpath("g2"));
  CF_CHECK_EQ(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "cmp -s %s/config.json %s/config.json", tpath("g1"), tpath("g2"));
  CF_CHECK_EQ(system(cmd), 0);
  cf_model_t *m;
  CF_CHECK_OK(cf_model_load(tpath("g3/nested"), &m));
  if (m) {
    CF_CHECK_EQ(m->cfg.dtype, CF_DT_BF16);
    CF_CHECK_EQ(m->cfg.n_layers, 2);
    CF_CHECK_EQ(m->cfg.n_kv_heads, 2);
    CF_CHECK(m->layers[0].attn_norm[0] == 1.0f);
    cf_model_free(m);
  }
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset huge", tpath("g4")), 1);
  CF_CHECK_CONTAINS(err, "cacheflowctl gen-model: --preset: preset 'huge'");
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --dtype f8", tpath("g4")), 1);
  CF_CHECK_CONTAINS(err, "--dtype 'f8'");
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --preset tiny"), 1);
  CF_CHECK_CONTAINS(err, "--out DIR is required");
}

/* gen-model's shape options: the checkpoint loads back (cf_model_load, the daemon's loader) with
 * the shape asked for, sharded or not, in every dtype; a combination the family's config.json
 * cannot express fails with one line naming it, and nothing is half-written as a model. */
CF_TEST(ctl_gen_model_shapes) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  char err[2048];
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --arch qwen3 --layers 3 --heads 4 "
                  "--kv-heads 1 --head-dim 24 --window 5 --layer-types full,sliding,sliding --dtype f16 "
                  "--shards 3 --tie 1 --rope-type llama3 --rope-factor 8 --rope-orig-max-pos 64 --max-pos 256",
                  tpath("s1")), 0);
  cf_model_t *m = NULL;
  CF_CHECK_OK(cf_model_load(tpath("s1"), &m));
  if (m) {
    const cf_model_config_t *c = &m->cfg;
    CF_CHECK_EQ(c->arch, CF_ARCH_QWEN3);
    CF_CHECK_EQ(c->n_layers, 3);
    CF_CHECK_EQ(c->n_kv_heads, 1);
    CF_CHECK_EQ(c->head_dim, 24);
    CF_CHECK_EQ(c->dtype, CF_DT_F16);
    CF_CHECK_EQ(c->sliding_window, 5);
    CF_CHECK(!c->layer_sliding[0] && c->layer_sliding[1] && c->layer_sliding[2]);
    CF_CHECK(c->tie_embeddings && c->qk_norm && !c->qkv_bias);
    CF_CHECK_EQ(c->rope_kind, CF_ROPE_LLAMA3);
    CF_CHECK_EQ(c->rope_orig_max_pos, 64);
    CF_CHECK_EQ(c->max_pos, 256);
    cf_model_free(m);
  }
  CF_CHECK(access(tpath("s1/model.safetensors.index.json"), F_OK) == 0);
  CF_CHECK(access(tpath("s1/model-00003-of-00003.safetensors"), F_OK) == 0);
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --arch mixtral --experts 3 --top-k 3 "
                  "--layers 1", tpath("s2")), 0);
  CF_CHECK_OK(cf_model_load(tpath("s2"), &m));
  if (m) {
    CF_CHECK(m->cfg.n_experts == 3 && m->cfg.top_k == 3 && m->cfg.layer_moe[0] && m->cfg.norm_topk);
    cf_model_free(m);
  }
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --arch qwen2 --heads 8 --kv-heads 8",
                  tpath("s3")), 0);
  CF_CHECK_OK(cf_model_load(tpath("s3"), &m));
  if (m) { CF_CHECK(m->cfg.qkv_bias && !m->cfg.o_bias && m->cfg.head_dim == 8); cf_model_free(m); }
  /* the config.json keys' names as aliases */
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny --model-type mixtral --num-hidden-layers 3 "
                  "--num-local-experts 2 --num-experts-per-tok 1 --sliding-window 9 --num-key-value-heads 1",
                  tpath("s4")), 0);
  CF_CHECK_OK(cf_model_load(tpath("s4"), &m));
  if (m) {
    CF_CHECK(m->cfg.arch == CF_ARCH_MIXTRAL && m->cfg.n_layers == 3 && m->cfg.n_experts == 2 && m->cfg.top_k == 1 &&
             m->cfg.sliding_window == 9 && m->cfg.n_kv_heads == 1);
    cf_model_free(m);
  }
  static const struct { const char *args, *msg; } bad[] = {
      {"--arch gpt2", "--arch 'gpt2'"},
      {"--heads 4 --kv-heads 3", "--heads 4 is not a multiple of --kv-heads 3"},
      {"--hidden 60 --heads 8", "--hidden 60 is not a multiple of --heads 8"},
      {"--arch qwen2 --head-dim 24", "qwen2's config has no head_dim key"},
      {"--arch qwen3_moe --head-dim 24", "qwen3_moe's config has no head_dim key"},
      {"--head-dim 7", "head_dim 7: must be even"},
      {"--window 8", "llama has no sliding-window attention"},
      {"--arch mistral --layers 2 --window 8 --layer-types full,sliding", "only qwen2 and qwen3 read layer_types"},
      {"--arch qwen3 --layers 2 --layer-types full,sliding", "--layer-types needs --window"},
      {"--arch qwen3 --layers 3 --window 4 --layer-types full,sliding", "--layer-types has 2 entries, the model 3"},
      {"--arch qwen3 --layers 2 --window 4 --layer-types full,local", "entry 1 'local'"},
      {"--experts 4", "llama is dense"},
      {"--arch qwen3_moe --experts 2 --top-k 3", "--top-k 3 exceeds --experts 2"},
      {"--arch mixtral --moe-intermediate 8", "mixtral's experts are --intermediate wide"},
      {"--arch qwen2 --attention-bias 1", "qwen2's q/k/v projections always have biases"},
      {"--arch mistral --attention-bias 1", "mistral's attention has no biases"},
      {"--arch qwen3 --mlp-bias 1", "only llama has mlp_bias"},
      {"--rope-factor 2", "need --rope-type linear or llama3"},
      {"--rope-type yarn", "--rope-type 'yarn'"},
      {"--rope-type llama3 --rope-low-freq 4 --rope-high-freq 2", "low_freq_factor 4 < high_freq_factor 2"},
      {"--rope-type llama3 --rope-factor 0.5", "factor 0.5 must be >= 1"},
      {"--rope-theta 0", "rope_theta 0: must be positive"},
      {"--shards 0", "--shards '0'"},
      {"--shards 500", "shards 500: expected 1..21 (the model has 21 tensors)"},
      {"--layers 0", "--layers '0'"},
      {"--dtype f8", "--dtype 'f8': expected f32, bf16 or f16"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = run(err, sizeof err, "gen-model --out %s --preset tiny %s", tpath("bad"), bad[i].args);
    if (rc != 1 || !strstr(err, bad[i].msg) || lines(err) != 1)
      CF_CHECK_MSG(0, "gen-model %s: exit %d, want 1 and one line with '%s'; got: %s", bad[i].args, rc, bad[i].msg, err);
  }
  CF_CHECK(access(tpath("bad/config.json"), F_OK) != 0); /* refused before anything is written */
}

/* Every bad input: non-zero exit and exactly one line "cacheflowctl kv: <reason>". */
CF_TEST(ctl_kv_bad_inputs_fail_with_one_line) {
  if (!have_ctl()) CF_SKIP("cacheflowctl not built");
  char err[2048];
  const char *md = tpath("m");
  CF_CHECK_EQ(run(err, sizeof err, "gen-model --out %s --preset tiny", md), 0);
  write_text(tpath("ok.txt"), "1 2 3 4 5 6 7 8 9 10");
  write_text(tpath("word.txt"), "1 2 three 4");
  write_text(tpath("big.txt"), "1 2 3 4\n5 256 7");
  write_text(tpath("neg.txt"), "1,-2");
  write_text(tpath("empty.txt"), " \n, \n");
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  float fl[3] = {1, 2, 3};
  int64_t sh[1] = {3};
  CF_CHECK_OK(cf_st_writer_add(&w, "ids", CF_DT_F32, 1, sh, fl));
  CF_CHECK_OK(cf_st_writer_write(&w, tpath("notokens.safetensors")));
  cf_st_writer_close(&w);
  cf_st_writer_init(&w);
  CF_CHECK_OK(cf_st_writer_add(&w, "tokens", CF_DT_F32, 1, sh, fl));
  CF_CHECK_OK(cf_st_writer_write(&w, tpath("ftokens.safetensors")));
  cf_st_writer_close(&w);
  const char *ok = tpath("ok.txt"), *out = tpath("o.safetensors");
  struct { char args[1024]; const char *want; } cases[16];
  int n = 0;
#define CASE(want_, ...) do { snprintf(cases[n].args, sizeof cases[n].args, __VA_ARGS__); cases[n++].want = want_; } while (0)
  CASE("no such file", "kv --model %s --tokens %s --out %s", tpath("nomodel"), ok, out);
  CASE("'three' is not an integer", "kv --model %s --tokens %s --out %s", md, tpath("word.txt"), out);
  CASE("token id 256 at position 5 outside [0, 256)", "kv --model %s --tokens %s --out %s", md, tpath("big.txt"), out);
  CASE("token id -2 at position 1", "kv --model %s --tokens %s --out %s", md, tpath("neg.txt"), out);
  CASE("no tokens", "kv --model %s --tokens %s --out %s", md, tpath("empty.txt"), out);
  CASE("missing.txt: No such file", "kv --model %s --tokens %s --out %s", md, tpath("missing.txt"), out);
  CASE("no tensor 'tokens'", "kv --model %s --tokens %s --out %s", md, tpath("notokens.safetensors"), out);
  CASE("dtype F32, expected I32 or I64", "kv --model %s --tokens %s --out %s", md, tpath("ftokens.safetensors"), out);
  CASE("--staircase has 2 heights, expected 3", "kv --model %s --tokens %s --out %s --chunk 4 --staircase 1,2", md, ok, out);
  CASE("height 3 of chunk 1 exceeds the model's 2 layers", "kv --model %s --tokens %s --out %s --chunk 4 --staircase 1,3,0", md, ok, out);
  CASE("entry 1 is not a non-negative integer", "kv --model %s --tokens %s --out %s --staircase 1,x", md, ok, out);
  CASE("--chunk '0': must be a positive integer", "kv --model %s --tokens %s --out %s --chunk 0", md, ok, out);
  CASE("--chunk '-3'", "kv --model %s --tokens %s --out %s --chunk -3", md, ok, out);
  CASE("--out FILE is required", "kv --model %s --tokens %s", md, ok);
  CASE("--backend 'tpu'", "kv --model %s --tokens %s --out %s --backend tpu", md, ok, out);
  CASE("write", "kv --model %s --tokens %s --out %s/nodir/o.safetensors", md, ok, tpath("x"));
#undef CASE
  for (int i = 0; i < n; i++) {
    int rc = run(err, sizeof err, "%s", cases[i].args);
    CF_CHECK_MSG(rc != 0, "case %d (%s): exit 0", i, cases[i].want);
    CF_CHECK_MSG(!strncmp(err, "cacheflowctl kv: ", 17), "case %d: stderr '%s'", i, err);
    CF_CHECK_MSG(lines(err) == 1, "case %d: %d lines: '%s'", i, lines(err), err);
    CF_CHECK_MSG(strstr(err, cases[i].want) != NULL, "case %d: '%s' lacks '%s'", i, err, cases[i].want);
  }
  /* --backend cuda on a machine without a GPU: a clear error, not a crash */
  int rc = run(err, sizeof err, "kv --model %s --tokens %s --out %s --backend cuda", md, ok, out);
  if (rc != 0) {
    CF_CHECK_CONTAINS(err, "cacheflowctl kv: backend cuda");
    CF_CHECK_EQ(lines(err), 1);
  }
  CF_CHECK_EQ(run(err, sizeof err, "kv --model %s --tokens %s --out %s", md, ok, out), 0);
}
