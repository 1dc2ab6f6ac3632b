/* cf_hfwrite — see cf_hfwrite.h. */
#include "model/cf_hfwrite.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cf_hfconfig.h"
#include "model/cf_model_synth.h"
#include "model/cf_safetensors.h"
#include "util/cf_err.h"

static int cf__is_moe(cf_arch_t a) { return a == CF_ARCH_QWEN3_MOE || a == CF_ARCH_MIXTRAL; }
/* families whose config class has a head_dim key (qwen2 and qwen3_moe take hidden / heads) */
static int cf__has_head_dim(cf_arch_t a) { return a != CF_ARCH_QWEN2 && a != CF_ARCH_QWEN3_MOE; }
/* families with attention_bias (q/k/v and o together) */
static int cf__has_attn_bias(cf_arch_t a) {
  return a == CF_ARCH_LLAMA || a == CF_ARCH_QWEN3 || a == CF_ARCH_QWEN3_MOE;
}

int cf_hfwrite_check(const cf_model_config_t *c) {
  const char *fam = cf_arch_name(c->arch);
  if ((unsigned)c->arch > CF_ARCH_MIXTRAL) return cf_seterr(CF_EINVAL, "arch %d: unknown", (int)c->arch);
  if (c->n_layers < 1 || c->n_layers > CF_MODEL_MAX_LAYERS)
    return cf_seterr(CF_EINVAL, "num_hidden_layers %d: expected 1..%d", c->n_layers, CF_MODEL_MAX_LAYERS);
  if (c->hidden < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->intermediate < 1 || c->vocab < 1 ||
      c->max_pos < 1)
    return cf_seterr(CF_EINVAL, "hidden_size %d, num_attention_heads %d, num_key_value_heads %d, "
                     "intermediate_size %d, vocab_size %d, max_position_embeddings %d: each must "
                     "be >= 1", c->hidden, c->n_heads, c->n_kv_heads, c->intermediate, c->vocab, c->max_pos);
  if (c->n_heads % c->n_kv_heads)
    return cf_seterr(CF_EINVAL, "num_attention_heads %d is not a multiple of num_key_value_heads %d",
                     c->n_heads, c->n_kv_heads);
  if (c->head_dim < 2 || c->head_dim % 2)
    return cf_seterr(CF_EINVAL, "head_dim %d: must be even and >= 2 (RoPE rotates pairs)", c->head_dim);
  if (!cf__has_head_dim(c->arch) && (long)c->head_dim * c->n_heads != c->hidden)
    return cf_seterr(CF_EINVAL, "head_dim %d: %s's config has no head_dim key, transformers uses "
                     "hidden_size / num_attention_heads = %d / %d", c->head_dim, fam, c->hidden, c->n_heads);
  int any = 0, all = 1;
  for (int l = 0; l < c->n_layers; l++) { any |= c->layer_sliding[l]; all &= c->layer_sliding[l] != 0; }
  if (c->sliding_window < 0 || (any && c->sliding_window < 1))
    return cf_seterr(CF_EINVAL, "sliding_window %d: a window needs a positive number of keys", c->sliding_window);
  if (c->sliding_window && !any)
    return cf_seterr(CF_EINVAL, "sliding_window %d: no layer is a sliding_attention layer", c->sliding_window);
  if (any && c->arch == CF_ARCH_LLAMA)
    return cf_seterr(CF_EINVAL, "sliding_window: llama has no sliding-window attention "
                     "(mistral, mixtral, qwen2, qwen3 and qwen3_moe do)");
  if (any && !all && c->arch != CF_ARCH_QWEN2 && c->arch != CF_ARCH_QWEN3)
    return cf_seterr(CF_EINVAL, "layer_types: %s windows every layer or none (only qwen2 and "
                     "qwen3 read layer_types)", fam);
  if (cf__is_moe(c->arch)) {
    if (c->n_experts < 1 || c->top_k < 1 || c->top_k > c->n_experts || c->moe_intermediate < 1)
      return cf_seterr(CF_EINVAL, "%s: num_local_experts %d, num_experts_per_tok %d, expert width "
                       "%d: need >= 1 expert, 1 <= top-k <= experts, width >= 1", fam,
                       c->n_experts, c->top_k, c->moe_intermediate);
    if (c->arch == CF_ARCH_MIXTRAL && (c->moe_intermediate != c->intermediate || !c->norm_topk))
      return cf_seterr(CF_EINVAL, "mixtral: experts are intermediate_size wide (%d, not %d) and "
                       "their weights always renormalised", c->intermediate, c->moe_intermediate);
    for (int l = 0; l < c->n_layers; l++)
      if (!c->layer_moe[l])
        return cf_seterr(CF_EINVAL, "%s: layer %d is dense; gen-model writes every layer sparse", fam, l);
  } else if (c->n_experts || c->top_k) {
    return cf_seterr(CF_EINVAL, "num_local_experts %d: %s is dense (experts: qwen3_moe, mixtral)",
                     c->n_experts, fam);
  }
  if (c->arch == CF_ARCH_QWEN2 && (!c->qkv_bias || c->o_bias))
    return cf_seterr(CF_EINVAL, "qwen2: q/k/v projections always have biases and o_proj never "
                     "(transformers' Qwen2Attention); there is no key to change that");
  if (!cf__has_attn_bias(c->arch) && c->arch != CF_ARCH_QWEN2 && (c->qkv_bias || c->o_bias))
    return cf_seterr(CF_EINVAL, "attention_bias: %s's attention has no biases (llama, qwen3, "
                     "qwen3_moe have attention_bias; qwen2 always has q/k/v biases)", fam);
  if (cf__has_attn_bias(c->arch) && c->qkv_bias != c->o_bias)
    return cf_seterr(CF_EINVAL, "attention_bias: %s biases q, k, v and o together", fam);
  if (c->mlp_bias && c->arch != CF_ARCH_LLAMA)
    return cf_seterr(CF_EINVAL, "mlp_bias: only llama has MLP biases");
  if (c->qk_norm != (c->arch == CF_ARCH_QWEN3 || c->arch == CF_ARCH_QWEN3_MOE))
    return cf_seterr(CF_EINVAL, "q/k norm: qwen3 and qwen3_moe always have it, the others never");
  if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
    return cf_seterr(CF_EINVAL, "rope_theta %g: must be positive", c->rope_theta);
  if (!(c->rms_eps > 0)) return cf_seterr(CF_EINVAL, "rms_norm_eps %g: must be positive", c->rms_eps);
  switch (c->rope_kind) {
  case CF_ROPE_DEFAULT: break;
  case CF_ROPE_LINEAR:
    if (!(c->rope_factor > 0)) return cf_seterr(CF_EINVAL, "rope_parameters.factor %g: must be positive", c->rope_factor);
    break;
  case CF_ROPE_LLAMA3:
    if (!(c->rope_factor >= 1) || !(c->rope_low_freq_factor > 0) ||
        !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_orig_max_pos < 1)
      return cf_seterr(CF_EINVAL, "rope_parameters (llama3): factor %g must be >= 1, "
                       "0 < low_freq_factor %g < high_freq_factor %g, "
                       "original_max_position_embeddings %d >= 1", c->rope_factor,
                       c->rope_low_freq_factor, c->rope_high_freq_factor, c->rope_orig_max_pos);
    break;
  default:
    return cf_seterr(CF_EINVAL, "rope_type: gen-model writes default, linear or llama3");
  }
  if (c->dtype != CF_DT_F32 && c->dtype != CF_DT_BF16 && c->dtype != CF_DT_F16)
    return cf_seterr(CF_EINVAL, "dtype: expected float32, bfloat16 or float16");
  return 0;
}

/* ---------------------------------------------------------------- config.json */

typedef struct { char key[40]; char *val; } cf__kv_t;
typedef struct { cf__kv_t e[64]; int n; int oom; } cf__obj_t;

static void cf__put(cf__obj_t *o, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void cf__put(cf__obj_t *o, const char *key, const char *fmt, ...) {
  if (o->n >= (int)(sizeof o->e / sizeof o->e[0])) { o->oom = 1; return; }
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *v = malloc((size_t)n + 1);
  if (v) vsnprintf(v, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  if (!v) { o->oom = 1; return; }
  snprintf(o->e[o->n].key, sizeof o->e[0].key, "%s", key);
  o->e[o->n++].val = v;
}

static int cf__cmpkey(const void *a, const void *b) {
  return strcmp(((const cf__kv_t *)a)->key, ((const cf__kv_t *)b)->key);
}

/* A double as Python's json writes it (float.__repr__): the fewest significant digits that
 * read back as the same value, positional for exponents -4..15 with ".0" on integral values
 * (10000.0, 0.02), else d.ddde-XX (1e-05). */
static void cf__num(double v, char out[40]) {
  int p = 1;
  for (; p < 17; p++) {
    snprintf(out, 40, "%.*e", p - 1, v);
    if (strtod(out, NULL) == v) break;
  }
  int x = atoi(strchr(out, 'e') + 1);
  if (x < -4 || x >= 16) { snprintf(out, 40, "%.*e", p - 1, v); return; }
  int dec = p - 1 - x;
  snprintf(out, 40, "%.*f", dec > 0 ? dec : 0, v);
  if (dec <= 0) strcat(out, ".0");
}

static const char *cf__bool(int b) { return b ? "true" : "false"; }

static const char *cf__dtype_name(cf_dtype_t d) {
  return d == CF_DT_BF16 ? "bfloat16" : d == CF_DT_F16 ? "float16" : "float32";
}

/* "[\n    \"full_attention\",\n ...  ]" as json.dumps(indent=2) nests it one level down */
static char *cf__layer_types(const cf_model_config_t *c) {
  size_t cap = (size_t)c->n_layers * 32 + 16, at = 0;
  char *s = malloc(cap);
  if (!s) return NULL;
  at += (size_t)snprintf(s + at, cap - at, "[");
  for (int l = 0; l < c->n_layers; l++)
    at += (size_t)snprintf(s + at, cap - at, "%s\n    \"%s\"", l ? "," : "",
                           c->layer_sliding[l] ? "sliding_attention" : "full_attention");
  snprintf(s + at, cap - at, "\n  ]");
  return s;
}

int cf_hfwrite_config(const char *dir, const cf_model_config_t *c, cf_dtype_t dtype, double std) {
  int rc = cf_hfwrite_check(c);
  if (rc) return rc;
  cf__obj_t o = {.n = 0};
  char a[40], b[40], d[40], e[40];
  cf_arch_t A = c->arch;
  int any_sw = c->sliding_window > 0;
  /* keys every family's config writes */
  cf__put(&o, "architectures", "[\n    \"%sForCausalLM\"\n  ]", cf_hfconfig_class_prefix(A));
  cf__put(&o, "attention_dropout", "0.0");
  /* llama, mistral and mixtral default bos/eos 1/2; the qwen classes None */
  int ids = A == CF_ARCH_LLAMA || A == CF_ARCH_MISTRAL || A == CF_ARCH_MIXTRAL;
  cf__put(&o, "bos_token_id", ids ? "1" : "null");
  cf__put(&o, "eos_token_id", ids ? "2" : "null");
  cf__put(&o, "dtype", "\"%s\"", cf__dtype_name(dtype));
  cf__put(&o, "hidden_act", "\"silu\"");
  cf__put(&o, "hidden_size", "%d", c->hidden);
  cf__num(std, a);
  cf__put(&o, "initializer_range", "%s", a);
  cf__put(&o, "intermediate_size", "%d", c->intermediate);
  cf__put(&o, "max_position_embeddings", "%d", c->max_pos);
  cf__put(&o, "model_type", "\"%s\"", cf_arch_name(A));
  cf__put(&o, "num_attention_heads", "%d", c->n_heads);
  cf__put(&o, "num_hidden_layers", "%d", c->n_layers);
  cf__put(&o, "num_key_value_heads", "%d", c->n_kv_heads);
  cf__put(&o, "pad_token_id", "null");
  cf__num(c->rms_eps, a);
  cf__put(&o, "rms_norm_eps", "%s", a);
  cf__num(c->rope_theta, a);
  if (c->rope_kind == CF_ROPE_LLAMA3) {
    cf__num(c->rope_factor, b); cf__num(c->rope_high_freq_factor, d); cf__num(c->rope_low_freq_factor, e);
    cf__put(&o, "rope_parameters", "{\n    \"factor\": %s,\n    \"high_freq_factor\": %s,\n"
            "    \"low_freq_factor\": %s,\n    \"original_max_position_embeddings\": %d,\n"
            "    \"rope_theta\": %s,\n    \"rope_type\": \"llama3\"\n  }", b, d, e,
            c->rope_orig_max_pos, a);
  } else if (c->rope_kind == CF_ROPE_LINEAR) {
    cf__num(c->rope_factor, b);
    cf__put(&o, "rope_parameters", "{\n    \"factor\": %s,\n    \"rope_theta\": %s,\n"
            "    \"rope_type\": \"linear\"\n  }", b, a);
  } else {
    cf__put(&o, "rope_parameters", "{\n    \"rope_theta\": %s,\n    \"rope_type\": \"default\"\n  }", a);
  }
  cf__put(&o, "tie_word_embeddings", "%s", cf__bool(c->tie_embeddings));
  cf__put(&o, "transformers_version", "\"5.19.0\"");
  cf__put(&o, "use_cache", "true");
  cf__put(&o, "vocab_size", "%d", c->vocab);
  /* per family, as its config class writes them */
  if (cf__has_attn_bias(A)) cf__put(&o, "attention_bias", "%s", cf__bool(c->o_bias));
  if (A == CF_ARCH_LLAMA) {
    cf__put(&o, "mlp_bias", "%s", cf__bool(c->mlp_bias));
    cf__put(&o, "pretraining_tp", "1");
  }
  if (cf__has_head_dim(A)) cf__put(&o, "head_dim", "%d", c->head_dim);
  if (A == CF_ARCH_MISTRAL || A == CF_ARCH_MIXTRAL || A == CF_ARCH_QWEN2 || A == CF_ARCH_QWEN3 ||
      A == CF_ARCH_QWEN3_MOE) {
    if (any_sw) cf__put(&o, "sliding_window", "%d", c->sliding_window);
    else cf__put(&o, "sliding_window", "null");
  }
  if (A == CF_ARCH_QWEN2 || A == CF_ARCH_QWEN3 || A == CF_ARCH_QWEN3_MOE)
    cf__put(&o, "use_sliding_window", "%s", cf__bool(any_sw));
  if (A == CF_ARCH_QWEN2 || A == CF_ARCH_QWEN3) {
    /* layer_types says which layers slide; max_window_layers (read only without layer_types)
     * is written consistent with it where it can be: the first sliding layer */
    int first = c->n_layers;
    for (int l = c->n_layers - 1; l >= 0; l--) if (c->layer_sliding[l] && any_sw) first = l;
    cf_model_config_t t = *c;
    if (!any_sw) memset(t.layer_sliding, 0, sizeof t.layer_sliding);
    char *lt = cf__layer_types(&t);
    if (!lt) o.oom = 1;
    else { cf__put(&o, "layer_types", "%s", lt); free(lt); }
    cf__put(&o, "max_window_layers", "%d", first);
  }
  if (cf__is_moe(A)) {
    cf__put(&o, "num_experts_per_tok", "%d", c->top_k);
    cf__put(&o, "num_local_experts", "%d", c->n_experts);
    cf__put(&o, "output_router_logits", "false");
    cf__put(&o, "router_aux_loss_coef", "0.001");
  }
  if (A == CF_ARCH_MIXTRAL) cf__put(&o, "router_jitter_noise", "0.0");
  if (A == CF_ARCH_QWEN3_MOE) {
    cf__put(&o, "decoder_sparse_step", "1");
    cf__put(&o, "mlp_only_layers", "[]");
    cf__put(&o, "moe_intermediate_size", "%d", c->moe_intermediate);
    cf__put(&o, "norm_topk_prob", "%s", cf__bool(c->norm_topk));
  }
  rc = 0;
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (o.oom) rc = cf_seterr(CF_ENOMEM, "%s", path);
  FILE *f = rc ? NULL : fopen(path, "w");
  if (!rc && !f) rc = cf_seterr(CF_EIO, "%s: %s", path, strerror(errno));
  if (f) {
    qsort(o.e, (size_t)o.n, sizeof o.e[0], cf__cmpkey); /* json.dumps(sort_keys=True) */
    fputs("{\n", f);
    for (int i = 0; i < o.n; i++) fprintf(f, "  \"%s\": %s%s\n", o.e[i].key, o.e[i].val, i + 1 < o.n ? "," : "");
    fputs("}\n", f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) rc = cf_seterr(CF_EIO, "%s: %s", path, strerror(errno ? errno : EIO));
  }
  for (int i = 0; i < o.n; i++) free(o.e[i].val);
  return rc;
}

/* ---------------------------------------------------------------- weights */

static int cf__write_shard(const char *path, const cf_hf_tensor_t *t, int n, cf_dtype_t dtype) {
  cf_st_writer_t w;
  cf_st_writer_init(&w);
  void **conv = calloc((size_t)n + 1, sizeof *conv);
  int rc = conv ? cf_st_writer_meta(&w, "format", "pt") /* transformers refuses files without it */
                : cf_seterr(CF_ENOMEM, "%s", path);
  for (int i = 0; i < n && !rc; i++) {
    size_t numel = (size_t)t[i].shape[0] * (t[i].ndim == 2 ? (size_t)t[i].shape[1] : 1);
    const void *data = t[i].data;
    if (dtype != CF_DT_F32) {
      if (!(conv[i] = malloc(numel * 2))) { rc = cf_seterr(CF_ENOMEM, "%s", t[i].name); break; }
      if (dtype == CF_DT_BF16) cf_f32_to_bf16(t[i].data, conv[i], numel);
      else cf_f32_to_f16(t[i].data, conv[i], numel);
      data = conv[i];
    }
    rc = cf_st_writer_add(&w, t[i].name, dtype, t[i].ndim, t[i].shape, data);
  }
  if (!rc) rc = cf_st_writer_write(&w, path);
  if (rc) rc = cf_err_prefix(rc, "%s: ", path);
  cf_st_writer_close(&w);
  for (int i = 0; conv && i < n; i++) free(conv[i]);
  free(conv);
  return rc;
}

static int cf__cmpname(const void *a, const void *b) {
  return strcmp((*(const cf_hf_tensor_t *const *)a)->name, (*(const cf_hf_tensor_t *const *)b)->name);
}

int cf_hfwrite_weights(const char *dir, const cf_model_t *m, cf_dtype_t dtype, int shards) {
  int n = cf_model_hf_tensors(m, NULL, 0);
  if (shards < 1 || shards > n)
    return cf_seterr(CF_EINVAL, "shards %d: expected 1..%d (the model has %d tensors)", shards, n, n);
  if (dtype != CF_DT_F32 && dtype != CF_DT_BF16 && dtype != CF_DT_F16)
    return cf_seterr(CF_EINVAL, "dtype %s: expected F32, BF16 or F16", cf_dtype_name(dtype));
  cf_hf_tensor_t *t = calloc((size_t)n, sizeof *t);
  int *shard_of = calloc((size_t)n, sizeof *shard_of);
  const cf_hf_tensor_t **sorted = calloc((size_t)n, sizeof *sorted);
  if (!t || !shard_of || !sorted) { free(t); free(shard_of); free(sorted); return cf_seterr(CF_ENOMEM, "%d tensors", n); }
  cf_model_hf_tensors(m, t, n);
  size_t es = dtype == CF_DT_F32 ? 4 : 2, total = 0, done = 0;
  for (int i = 0; i < n; i++) total += (size_t)t[i].shape[0] * (t[i].ndim == 2 ? (size_t)t[i].shape[1] : 1) * es;
  /* tensors in order; shard k ends once it reaches (k+1)/N of the bytes, keeping one tensor
   * at least for each later shard */
  int k = 0;
  for (int i = 0; i < n; i++) {
    shard_of[i] = k;
    done += (size_t)t[i].shape[0] * (t[i].ndim == 2 ? (size_t)t[i].shape[1] : 1) * es;
    if (k + 1 < shards && (done * (size_t)shards >= total * (size_t)(k + 1) || n - 1 - i <= shards - 1 - k)) k++;
  }
  char path[4096];
  int rc = 0, first = 0;
  for (int s = 0; s < shards && !rc; s++) {
    int cnt = 0;
    while (first + cnt < n && shard_of[first + cnt] == s) cnt++;
    if (shards == 1) snprintf(path, sizeof path, "%s/model.safetensors", dir);
    else snprintf(path, sizeof path, "%s/model-%05d-of-%05d.safetensors", dir, s + 1, shards);
    rc = cf__write_shard(path, t + first, cnt, dtype);
    first += cnt;
  }
  if (!rc && shards > 1) { /* the index, weight_map sorted as transformers writes it */
    for (int i = 0; i < n; i++) sorted[i] = &t[i];
    qsort(sorted, (size_t)n, sizeof *sorted, cf__cmpname);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) rc = cf_seterr(CF_EIO, "%s: %s", path, strerror(errno));
    else {
      fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %zu\n  },\n  \"weight_map\": {\n", total);
      for (int i = 0; i < n; i++)
        fprintf(f, "    \"%s\": \"model-%05d-of-%05d.safetensors\"%s\n", sorted[i]->name,
                shard_of[sorted[i] - t] + 1, shards, i + 1 < n ? "," : "");
      fputs("  }\n}\n", f);
      int bad = ferror(f);
      if (fclose(f) != 0 || bad) rc = cf_seterr(CF_EIO, "%s: %s", path, strerror(errno ? errno : EIO));
    }
  }
  free(t); free(shard_of); free(sorted);
  return rc;
}
