/* cacheflowctl gen-model — write a deterministic random-weight Hugging Face checkpoint for demos
 * and tests: config.json as transformers 5.19 writes it for the family (lib/model/cf_hfwrite)
 * and model.safetensors (or --shards N files and an index), F32, BF16 or F16.
 * A preset (demo: llama 8 layers, hidden 512; tiny: llama 2 layers, hidden 64) gives the start;
 * the shape options change any of it: --arch, --layers, --hidden, --heads, --kv-heads,
 * --head-dim, --intermediate, --vocab, --max-pos, --window / --layer-types, --experts / --top-k /
 * --moe-intermediate / --norm-topk, --tie, --attention-bias, --mlp-bias, --rope-theta,
 * --rope-type/--rope-factor/--rope-low-freq/--rope-high-freq/--rope-orig-max-pos, --rms-eps.
 * Each also answers to its config.json key's name (--num-hidden-layers, --hidden-size,
 * --num-key-value-heads, --sliding-window, --num-experts-per-tok, --tie-word-embeddings, ...).
 * Combinations a family's config.json cannot express are refused naming them (cf_hfwrite_check).
 * Weights are N(0, 0.02) (the HF initializer_range), norms exactly 1 unless --norm-jitter; the
 * same options and seed give the same bytes on every machine, and transformers'
 * <Family>ForCausalLM.from_pretrained(DIR) loads the result (tests/engines/test_model_golden.py). */
#include <errno.h>
#include <limits.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/cf_ctl.h"
#include "model/cf_hfwrite.h"
#include "model/cf_model_synth.h"
#include "util/cf_err.h"

#define CMD "gen-model"
#define CF__USAGE                                                                                  \
  "--out DIR [--preset demo|tiny] [--seed S] [--dtype f32|bf16|f16] [--shards N] "                 \
  "[--arch llama|mistral|qwen2|qwen3|qwen3_moe|mixtral] [--layers N] [--hidden N] [--heads N] "    \
  "[--kv-heads N] [--head-dim N] [--intermediate N] [--vocab N] [--max-pos N] [--window N] "       \
  "[--layer-types full,sliding,...] [--experts N] [--top-k K] [--moe-intermediate N] "             \
  "[--norm-topk 0|1] [--tie 0|1] [--attention-bias 0|1] [--mlp-bias 0|1] [--rope-theta X] "        \
  "[--rope-type default|linear|llama3] [--rope-factor X] [--rope-low-freq X] [--rope-high-freq X] " \
  "[--rope-orig-max-pos N] [--rms-eps X] [--norm-jitter X]"

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

/* The option values as given; -1 / NAN / NULL: not given (the preset's or a derived value). */
typedef struct {
  const char *arch, *layer_types, *rope_type;
  long layers, hidden, heads, kv_heads, head_dim, inter, vocab, max_pos, window, experts, top_k,
      moe_inter, norm_topk, tie, attn_bias, mlp_bias, orig_max_pos, shards;
  double rope_theta, rope_factor, rope_low, rope_high, rms_eps, jitter;
} cf__shape_t;

static int cf__int_opt(const char *name, const char *v, long lo, long hi, long *out) {
  unsigned long long u;
  if (cf_ctl_parse_u64(v, (unsigned long long)hi, &u) || (long)u < lo)
    return cf_ctl_fail(CMD, "--%s '%s': expected an integer in %ld..%ld", name, v, lo, hi);
  *out = (long)u;
  return 0;
}

static int cf__num_opt(const char *name, const char *v, double *out) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (!*v || *end || errno || !isfinite(d) || d < 0)
    return cf_ctl_fail(CMD, "--%s '%s': expected a non-negative number", name, v);
  *out = d;
  return 0;
}

/* Apply the shape options over the preset in *c. Returns 0 or 1 (reported). */
static int cf__apply(const cf__shape_t *s, cf_model_config_t *c) {
  if (s->arch) {
    int a = -1; /* the names are cf_arch_name's (lib/model) */
    for (int i = CF_ARCH_LLAMA; i <= CF_ARCH_MIXTRAL; i++) if (!strcmp(s->arch, cf_arch_name((cf_arch_t)i))) a = i;
    if (a < 0) return cf_ctl_fail(CMD, "--arch '%s': expected llama, mistral, qwen2, qwen3, qwen3_moe or mixtral", s->arch);
    c->arch = (cf_arch_t)a;
  }
  cf_arch_t A = c->arch;
  if (s->layers >= 0) c->n_layers = (int)s->layers;
  if (s->hidden >= 0) c->hidden = (int)s->hidden;
  if (s->heads >= 0) c->n_heads = (int)s->heads;
  if (s->kv_heads >= 0) c->n_kv_heads = (int)s->kv_heads;
  if (s->inter >= 0) c->intermediate = (int)s->inter;
  if (s->vocab >= 0) c->vocab = (int)s->vocab;
  if (s->max_pos >= 0) c->max_pos = (int)s->max_pos;
  if (s->head_dim >= 0) {
    if (A == CF_ARCH_QWEN2 || A == CF_ARCH_QWEN3_MOE)
      return cf_ctl_fail(CMD, "--head-dim: %s's config has no head_dim key (transformers uses "
                         "hidden_size / num_attention_heads); use llama, mistral, qwen3 or mixtral",
                         cf_arch_name(A));
    c->head_dim = (int)s->head_dim;
  } else {
    if (c->hidden % c->n_heads)
      return cf_ctl_fail(CMD, "--hidden %d is not a multiple of --heads %d (give --head-dim, where "
                         "the family has one)", c->hidden, c->n_heads);
    c->head_dim = c->hidden / c->n_heads;
  }
  if (c->n_heads % c->n_kv_heads)
    return cf_ctl_fail(CMD, "--heads %d is not a multiple of --kv-heads %d", c->n_heads, c->n_kv_heads);
  /* biases and q/k norm: what the family has */
  c->qk_norm = A == CF_ARCH_QWEN3 || A == CF_ARCH_QWEN3_MOE;
  c->qkv_bias = c->o_bias = c->mlp_bias = 0;
  if (A == CF_ARCH_QWEN2) {
    if (s->attn_bias >= 0)
      return cf_ctl_fail(CMD, "--attention-bias: qwen2's q/k/v projections always have biases and "
                         "o_proj never (no config key); use llama, qwen3 or qwen3_moe");
    c->qkv_bias = 1;
  } else if (s->attn_bias >= 0) {
    if (A != CF_ARCH_LLAMA && A != CF_ARCH_QWEN3 && A != CF_ARCH_QWEN3_MOE)
      return cf_ctl_fail(CMD, "--attention-bias: %s's attention has no biases (llama, qwen3, "
                         "qwen3_moe have attention_bias)", cf_arch_name(A));
    c->qkv_bias = c->o_bias = (int)s->attn_bias;
  }
  if (s->mlp_bias >= 0) {
    if (A != CF_ARCH_LLAMA && s->mlp_bias) return cf_ctl_fail(CMD, "--mlp-bias: only llama has mlp_bias");
    c->mlp_bias = (int)s->mlp_bias;
  }
  if (s->tie >= 0) c->tie_embeddings = (int)s->tie;
  /* experts */
  int moe = A == CF_ARCH_QWEN3_MOE || A == CF_ARCH_MIXTRAL;
  if (!moe && (s->experts >= 0 || s->top_k >= 0 || s->moe_inter >= 0 || s->norm_topk >= 0))
    return cf_ctl_fail(CMD, "--experts/--top-k/--moe-intermediate/--norm-topk: %s is dense "
                       "(experts: --arch qwen3_moe or mixtral)", cf_arch_name(A));
  if (moe) {
    c->n_experts = s->experts >= 0 ? (int)s->experts : 4;
    c->top_k = s->top_k >= 0 ? (int)s->top_k : 2;
    if (c->top_k > c->n_experts)
      return cf_ctl_fail(CMD, "--top-k %d exceeds --experts %d", c->top_k, c->n_experts);
    if (A == CF_ARCH_MIXTRAL) {
      if (s->moe_inter >= 0 || s->norm_topk == 0)
        return cf_ctl_fail(CMD, "--moe-intermediate/--norm-topk 0: mixtral's experts are "
                           "--intermediate wide and always renormalised");
      c->moe_intermediate = c->intermediate;
      c->norm_topk = 1;
    } else {
      c->moe_intermediate = s->moe_inter >= 0 ? (int)s->moe_inter : c->intermediate;
      c->norm_topk = s->norm_topk >= 0 ? (int)s->norm_topk : 1;
    }
    for (int l = 0; l < c->n_layers && l < CF_MODEL_MAX_LAYERS; l++) c->layer_moe[l] = 1;
  }
  /* windows */
  if (s->layer_types && A != CF_ARCH_QWEN2 && A != CF_ARCH_QWEN3)
    return cf_ctl_fail(CMD, "--layer-types: only qwen2 and qwen3 read layer_types (%s windows "
                       "every layer: give --window alone)", cf_arch_name(A));
  if (s->layer_types && s->window < 0)
    return cf_ctl_fail(CMD, "--layer-types needs --window N (the sliding layers' window)");
  if (s->window >= 0) {
    if (A == CF_ARCH_LLAMA)
      return cf_ctl_fail(CMD, "--window: llama has no sliding-window attention (use mistral, "
                         "mixtral, qwen2, qwen3 or qwen3_moe)");
    c->sliding_window = (int)s->window;
    for (int l = 0; l < c->n_layers && l < CF_MODEL_MAX_LAYERS; l++) c->layer_sliding[l] = 1;
    if (s->layer_types) {
      const char *p = s->layer_types;
      int l = 0;
      while (*p) {
        size_t n = strcspn(p, ",");
        int sl = n == 7 && !strncmp(p, "sliding", 7) ? 1 : n == 17 && !strncmp(p, "sliding_attention", 17) ? 1
               : n == 4 && !strncmp(p, "full", 4) ? 0 : n == 14 && !strncmp(p, "full_attention", 14) ? 0 : -1;
        if (sl < 0) return cf_ctl_fail(CMD, "--layer-types: entry %d '%.*s': expected full or sliding", l, (int)n, p);
        if (l < CF_MODEL_MAX_LAYERS) c->layer_sliding[l] = (uint8_t)sl;
        l++;
        p += n;
        if (*p == ',') p++;
      }
      if (l != c->n_layers)
        return cf_ctl_fail(CMD, "--layer-types has %d entries, the model %d layers", l, c->n_layers);
    }
  }
  /* RoPE */
  if (!isnan(s->rope_theta)) c->rope_theta = s->rope_theta;
  if (!isnan(s->rms_eps)) c->rms_eps = s->rms_eps;
  const char *rt = s->rope_type ? s->rope_type : "default";
  int scaled = !isnan(s->rope_factor) || !isnan(s->rope_low) || !isnan(s->rope_high) || s->orig_max_pos >= 0;
  if (!strcmp(rt, "default")) {
    if (scaled) return cf_ctl_fail(CMD, "--rope-factor/--rope-low-freq/--rope-high-freq/--rope-orig-max-pos need --rope-type linear or llama3");
    c->rope_kind = CF_ROPE_DEFAULT;
  } else if (!strcmp(rt, "linear")) {
    if (!isnan(s->rope_low) || !isnan(s->rope_high) || s->orig_max_pos >= 0)
      return cf_ctl_fail(CMD, "--rope-type linear takes --rope-factor only");
    c->rope_kind = CF_ROPE_LINEAR;
    c->rope_factor = isnan(s->rope_factor) ? 2.0 : s->rope_factor;
  } else if (!strcmp(rt, "llama3")) { /* Llama 3.1's values unless given */
    c->rope_kind = CF_ROPE_LLAMA3;
    c->rope_factor = isnan(s->rope_factor) ? 8.0 : s->rope_factor;
    c->rope_low_freq_factor = isnan(s->rope_low) ? 1.0 : s->rope_low;
    c->rope_high_freq_factor = isnan(s->rope_high) ? 4.0 : s->rope_high;
    c->rope_orig_max_pos = s->orig_max_pos >= 0 ? (int)s->orig_max_pos : 8192;
  } else {
    return cf_ctl_fail(CMD, "--rope-type '%s': expected default, linear or llama3", rt);
  }
  if (cf_hfwrite_check(c)) return cf_ctl_fail(CMD, "%s", cf_errmsg());
  return 0;
}

static int cf__genmodel_main(int argc, char **argv) {
  const char *out = NULL, *preset = "demo", *dtype = "f32";
  unsigned long long seed = 0;
  cf__shape_t s = {.layers = -1, .hidden = -1, .heads = -1, .kv_heads = -1, .head_dim = -1,
                   .inter = -1, .vocab = -1, .max_pos = -1, .window = -1, .experts = -1,
                   .top_k = -1, .moe_inter = -1, .norm_topk = -1, .tie = -1, .attn_bias = -1,
                   .mlp_bias = -1, .orig_max_pos = -1, .shards = 1, .rope_theta = NAN,
                   .rope_factor = NAN, .rope_low = NAN, .rope_high = NAN, .rms_eps = NAN, .jitter = 0};
  enum { O_ARCH = 256, O_LAYERS, O_HIDDEN, O_HEADS, O_KVH, O_HD, O_INTER, O_VOCAB, O_MAXPOS,
         O_WIN, O_LT, O_EXP, O_TOPK, O_MOEI, O_NTOPK, O_TIE, O_ABIAS, O_MBIAS, O_THETA, O_RTYPE,
         O_RFAC, O_RLOW, O_RHIGH, O_ROMP, O_EPS, O_JIT, O_SHARDS };
  static const struct option opts[] = {
      {"out", required_argument, 0, 'o'}, {"preset", required_argument, 0, 'p'},
      {"seed", required_argument, 0, 's'}, {"dtype", required_argument, 0, 'd'},
      {"arch", 1, 0, O_ARCH}, {"layers", 1, 0, O_LAYERS}, {"hidden", 1, 0, O_HIDDEN},
      {"heads", 1, 0, O_HEADS}, {"kv-heads", 1, 0, O_KVH}, {"head-dim", 1, 0, O_HD},
      {"intermediate", 1, 0, O_INTER}, {"vocab", 1, 0, O_VOCAB}, {"max-pos", 1, 0, O_MAXPOS},
      {"window", 1, 0, O_WIN}, {"layer-types", 1, 0, O_LT}, {"experts", 1, 0, O_EXP},
      {"top-k", 1, 0, O_TOPK}, {"moe-intermediate", 1, 0, O_MOEI}, {"norm-topk", 1, 0, O_NTOPK},
      {"tie", 1, 0, O_TIE}, {"attention-bias", 1, 0, O_ABIAS}, {"mlp-bias", 1, 0, O_MBIAS},
      {"rope-theta", 1, 0, O_THETA}, {"rope-type", 1, 0, O_RTYPE}, {"rope-factor", 1, 0, O_RFAC},
      {"rope-low-freq", 1, 0, O_RLOW}, {"rope-high-freq", 1, 0, O_RHIGH},
      {"rope-orig-max-pos", 1, 0, O_ROMP}, {"rms-eps", 1, 0, O_EPS}, {"norm-jitter", 1, 0, O_JIT},
      {"shards", 1, 0, O_SHARDS},
      /* the config.json keys' own names, as aliases */
      {"model-type", 1, 0, O_ARCH}, {"num-hidden-layers", 1, 0, O_LAYERS},
      {"hidden-size", 1, 0, O_HIDDEN}, {"num-attention-heads", 1, 0, O_HEADS},
      {"num-key-value-heads", 1, 0, O_KVH}, {"intermediate-size", 1, 0, O_INTER},
      {"vocab-size", 1, 0, O_VOCAB}, {"max-position-embeddings", 1, 0, O_MAXPOS},
      {"sliding-window", 1, 0, O_WIN}, {"num-experts", 1, 0, O_EXP},
      {"num-local-experts", 1, 0, O_EXP}, {"num-experts-per-tok", 1, 0, O_TOPK},
      {"moe-intermediate-size", 1, 0, O_MOEI}, {"norm-topk-prob", 1, 0, O_NTOPK},
      {"tie-word-embeddings", 1, 0, O_TIE}, {"rms-norm-eps", 1, 0, O_EPS},
      {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int ch, bad = 0;
  while (!bad && (ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    const char *v = optarg;
    switch (ch) {
      case 'o': out = v; break;
      case 'p': preset = v; break;
      case 'd': dtype = v; break;
      case 's':
        if (cf_ctl_parse_u64(v, ULLONG_MAX, &seed))
          return cf_ctl_fail(CMD, "--seed '%s': must be a non-negative integer", v);
        break;
      case O_ARCH: s.arch = v; break;
      case O_LAYERS: bad = cf__int_opt("layers", v, 1, CF_MODEL_MAX_LAYERS, &s.layers); break;
      case O_HIDDEN: bad = cf__int_opt("hidden", v, 1, 1 << 17, &s.hidden); break;
      case O_HEADS: bad = cf__int_opt("heads", v, 1, 4096, &s.heads); break;
      case O_KVH: bad = cf__int_opt("kv-heads", v, 1, 4096, &s.kv_heads); break;
      case O_HD: bad = cf__int_opt("head-dim", v, 2, 1024, &s.head_dim); break;
      case O_INTER: bad = cf__int_opt("intermediate", v, 1, 1 << 20, &s.inter); break;
      case O_VOCAB: bad = cf__int_opt("vocab", v, 1, 1 << 22, &s.vocab); break;
      case O_MAXPOS: bad = cf__int_opt("max-pos", v, 1, 1 << 30, &s.max_pos); break;
      case O_WIN: bad = cf__int_opt("window", v, 1, 1 << 30, &s.window); break;
      case O_LT: s.layer_types = v; break;
      case O_EXP: bad = cf__int_opt("experts", v, 1, 1 << 16, &s.experts); break;
      case O_TOPK: bad = cf__int_opt("top-k", v, 1, 1 << 16, &s.top_k); break;
      case O_MOEI: bad = cf__int_opt("moe-intermediate", v, 1, 1 << 20, &s.moe_inter); break;
      case O_NTOPK: bad = cf__int_opt("norm-topk", v, 0, 1, &s.norm_topk); break;
      case O_TIE: bad = cf__int_opt("tie", v, 0, 1, &s.tie); break;
      case O_ABIAS: bad = cf__int_opt("attention-bias", v, 0, 1, &s.attn_bias); break;
      case O_MBIAS: bad = cf__int_opt("mlp-bias", v, 0, 1, &s.mlp_bias); break;
      case O_THETA: bad = cf__num_opt("rope-theta", v, &s.rope_theta); break;
      case O_RTYPE: s.rope_type = v; break;
      case O_RFAC: bad = cf__num_opt("rope-factor", v, &s.rope_factor); break;
      case O_RLOW: bad = cf__num_opt("rope-low-freq", v, &s.rope_low); break;
      case O_RHIGH: bad = cf__num_opt("rope-high-freq", v, &s.rope_high); break;
      case O_ROMP: bad = cf__int_opt("rope-orig-max-pos", v, 1, 1 << 30, &s.orig_max_pos); break;
      case O_EPS: bad = cf__num_opt("rms-eps", v, &s.rms_eps); break;
      case O_JIT: bad = cf__num_opt("norm-jitter", v, &s.jitter); break;
      case O_SHARDS: bad = cf__int_opt("shards", v, 1, 99999, &s.shards); break;
      default:
        return cf_ctl_fail(CMD, "unknown or incomplete option '%s' (usage: cacheflowctl "
                           "gen-model " CF__USAGE ")", argv[optind - 1]);
    }
  }
  if (bad) return 1;
  if (optind < argc) return cf_ctl_fail(CMD, "unexpected argument '%s'", argv[optind]);
  if (!out) return cf_ctl_fail(CMD, "--out DIR is required");
  cf_dtype_t dt;
  if (!strcmp(dtype, "f32") || !strcmp(dtype, "float32")) dt = CF_DT_F32;
  else if (!strcmp(dtype, "bf16") || !strcmp(dtype, "bfloat16")) dt = CF_DT_BF16;
  else if (!strcmp(dtype, "f16") || !strcmp(dtype, "float16")) dt = CF_DT_F16;
  else return cf_ctl_fail(CMD, "--dtype '%s': expected f32, bf16 or f16", dtype);

  cf_model_config_t c;
  if (cf_synth_preset(preset, &c)) return cf_ctl_fail(CMD, "--preset: %s", cf_errmsg());
  if (cf__apply(&s, &c)) return 1;
  c.dtype = dt;
  cf_synth_opts_t o = {.seed = seed, .std = 0.02f, .norm_jitter = (float)s.jitter};
  cf_model_t *m = NULL;
  if (cf_model_synth(&c, &o, &m)) return cf_ctl_fail(CMD, "%s", cf_errmsg());
  int ret = 0;
  if (cf__mkdirs(out)) ret = cf_ctl_fail(CMD, "--out %s: %s", out, strerror(errno));
  else if (cf_hfwrite_weights(out, m, dt, (int)s.shards) || cf_hfwrite_config(out, &c, dt, 0.02))
    ret = cf_ctl_fail(CMD, "%s", cf_errmsg());
  else
    printf("gen-model: %s %s (%d layers, hidden %d, %d/%d heads of %d, vocab %d%s), seed %llu, "
           "%s, %ld shard%s -> %s\n", preset, cf_arch_name(c.arch), c.n_layers, c.hidden,
           c.n_heads, c.n_kv_heads, c.head_dim, c.vocab, c.n_experts ? ", experts" : "", seed,
           cf_dtype_name(dt), s.shards, s.shards == 1 ? "" : "s", out);
  cf_model_synth_free(m);
  return ret;
}

static const cf_ctl_cmd_t cf__genmodel_cmd = {
    .name = "gen-model",
    .usage = CF__USAGE,
    .help = "write a deterministic random-weight HF checkpoint of any supported family and shape (demo and tests)",
    .main = cf__genmodel_main,
};
CF_CTL_COMMAND(cf__genmodel_cmd)
