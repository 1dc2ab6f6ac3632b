/* cf_hfconfig — see cf_hfconfig.h. Defaults follow transformers' configuration_<family>.py. */
#include "model/cf_hfconfig.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util/cf_err.h"
#include "util/cf_json.h"

/* Defaults of keys config.json may leave out: the values of transformers 5's config classes
 * (configuration_<family>.py), which differ between families. */
typedef struct {
  const char *model_type, *class_prefix;
  cf_arch_t arch;
  int default_head_dim;  /* 0: hidden / n_heads */
  int default_max_pos;
  int default_kv_heads;  /* 0: num_attention_heads */
  double default_rms_eps, default_rope_theta;
} cf__family_t;

static const cf__family_t cf__families[] = {
    {"llama", "Llama", CF_ARCH_LLAMA, 0, 2048, 0, 1e-6, 10000.0},
    {"mistral", "Mistral", CF_ARCH_MISTRAL, 0, 4096 * 32, 8, 1e-6, 10000.0},
    {"qwen2", "Qwen2", CF_ARCH_QWEN2, 0, 32768, 32, 1e-6, 10000.0},
    {"qwen3", "Qwen3", CF_ARCH_QWEN3, 128, 32768, 32, 1e-6, 10000.0},
    /* Qwen3MoeConfig has no head_dim: the attention uses hidden / heads when the key is absent */
    {"qwen3_moe", "Qwen3Moe", CF_ARCH_QWEN3_MOE, 0, 32768, 4, 1e-6, 10000.0},
    {"mixtral", "Mixtral", CF_ARCH_MIXTRAL, 0, 4096 * 32, 8, 1e-5, 1000000.0},
};
#define CF__NFAM (sizeof cf__families / sizeof cf__families[0])

const char *cf_hfconfig_class_prefix(cf_arch_t a) {
  for (size_t i = 0; i < CF__NFAM; i++)
    if (cf__families[i].arch == a) return cf__families[i].class_prefix;
  return "?";
}

/* Integer key: absent/null → dflt when !required; bounds lo..hi inclusive. */
static int cf__int(const cf_json_t *o, const char *file, const char *key, int required,
                   int64_t dflt, int64_t lo, int64_t hi, int *out) {
  int64_t v;
  int rc = cf_json_get_i64(o, key, &v);
  if (rc == CF_ENOTFOUND) {
    if (required) return cf_seterr(CF_EFORMAT, "%s: required key '%s' is missing", file, key);
    v = dflt;
  } else if (rc) {
    return cf_err_prefix(rc, "%s: ", file);
  }
  if (v < lo || v > hi)
    return cf_seterr(CF_ERANGE, "%s: key '%s': expected %lld..%lld, found %lld", file, key,
                     (long long)lo, (long long)hi, (long long)v);
  *out = (int)v;
  return 0;
}

/* Positive finite float key (absent/null → dflt; a NaN dflt makes it required). `where`
 * prefixes the key in messages. */
static int cf__pos(const cf_json_t *o, const char *file, const char *where, const char *key,
                   double dflt, double *out) {
  double v;
  int rc = cf_json_get_f64(o, key, &v);
  if (rc == CF_ENOTFOUND) {
    if (isnan(dflt)) return cf_seterr(CF_EFORMAT, "%s: required key '%s%s' is missing", file, where, key);
    v = dflt;
  } else if (rc) {
    return cf_seterr(rc, "%s: key '%s%s': expected a number", file, where, key);
  }
  if (!isfinite(v) || v <= 0)
    return cf_seterr(CF_ERANGE, "%s: key '%s%s': expected a positive number, found %g", file,
                     where, key, v);
  *out = v;
  return 0;
}

static int cf__bool(const cf_json_t *o, const char *file, const char *key, int dflt, int *out) {
  int rc = cf_json_get_bool(o, key, out);
  if (rc == CF_ENOTFOUND) { *out = dflt; return 0; }
  return rc ? cf_err_prefix(rc, "%s: ", file) : 0;
}

static int cf__family(const cf_json_t *root, const char *file, const cf__family_t **out) {
  const cf_json_t *mt = cf_json_get(root, "model_type"), *ar = cf_json_get(root, "architectures");
  const cf_json_t *a0 = cf_json_at(ar, 0);
  if (ar && ar->type != CF_JSON_NULL && (ar->type != CF_JSON_ARR || (a0 && a0->type != CF_JSON_STR)))
    return cf_seterr(CF_EFORMAT, "%s: key 'architectures': expected an array of strings", file);
  if (mt && mt->type != CF_JSON_NULL) {
    if (mt->type != CF_JSON_STR)
      return cf_seterr(CF_EFORMAT, "%s: key 'model_type': expected string, found %s", file,
                       cf_json_type_name(mt->type));
    for (size_t i = 0; i < CF__NFAM; i++)
      if (strcmp(mt->str, cf__families[i].model_type) == 0) {
        const char *p = cf__families[i].class_prefix;
        /* "Qwen2..." must not pass for qwen3 nor "Qwen2Moe..." for qwen2: the prefix must be
         * followed by "For" or "Model". */
        if (a0 && (strncmp(a0->str, p, strlen(p)) != 0 ||
                   (strncmp(a0->str + strlen(p), "For", 3) != 0 &&
                    strncmp(a0->str + strlen(p), "Model", 5) != 0)))
          return cf_seterr(CF_EUNSUPPORTED, "%s: architectures[0] '%.64s' does not match "
                           "model_type '%s' (expected %s...)", file, a0->str, mt->str, p);
        *out = &cf__families[i];
        return 0;
      }
    return cf_seterr(CF_EUNSUPPORTED, "%s: model_type '%.64s' is not supported (supported: "
                     "llama, mistral, qwen2, qwen3, qwen3_moe, mixtral)", file, mt->str);
  }
  if (!a0)
    return cf_seterr(CF_EFORMAT, "%s: neither 'model_type' nor 'architectures' is set", file);
  for (size_t i = 0; i < CF__NFAM; i++) {
    const char *p = cf__families[i].class_prefix;
    if (strncmp(a0->str, p, strlen(p)) == 0 && strcmp(a0->str + strlen(p), "ForCausalLM") == 0) {
      *out = &cf__families[i];
      return 0;
    }
  }
  return cf_seterr(CF_EUNSUPPORTED, "%s: architecture '%.64s' is not supported (supported: "
                   "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, "
                   "Qwen3MoeForCausalLM, MixtralForCausalLM)",
                   file, a0->str);
}

/* original_max_position_embeddings of llama3 / yarn: as transformers 5's
 * standardize_rope_params, a top-level key wins, then the rope parameters' own, then
 * max_position_embeddings. */
static int cf__orig_max_pos(const cf_json_t *root, const cf_json_t *rp, const char *file,
                            const char *where, cf_model_config_t *c) {
  const char *k = "original_max_position_embeddings";
  const cf_json_t *top = cf_json_get(root, k);
  const cf_json_t *src = top && top->type != CF_JSON_NULL ? root : rp;
  const char *w = src == root ? "" : where;
  double omp = c->max_pos;
  int rc = cf__pos(src, file, w, k, omp, &omp);
  if (rc) return rc;
  if (omp != floor(omp) || omp > 1e9)
    return cf_seterr(CF_ERANGE, "%s: key '%s%s': expected an integer, found %g", file, w, k, omp);
  c->rope_orig_max_pos = (int)omp;
  return 0;
}

static int cf__rope_llama3(const cf_json_t *rp, const char *file, const char *where,
                           cf_model_config_t *c) {
  int rc;
  if ((rc = cf__pos(rp, file, where, "low_freq_factor", NAN, &c->rope_low_freq_factor)) ||
      (rc = cf__pos(rp, file, where, "high_freq_factor", NAN, &c->rope_high_freq_factor)))
    return rc; /* NaN default: required */
  if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
    return cf_seterr(CF_ERANGE, "%s: %shigh_freq_factor %g must exceed low_freq_factor %g", file,
                     where, c->rope_high_freq_factor, c->rope_low_freq_factor);
  return 0;
}

/* A number that may be absent or null (*out untouched then); `set` tells which. */
static int cf__opt_num(const cf_json_t *o, const char *file, const char *where, const char *key,
                       double *out, int *set) {
  *set = 0;
  int rc = cf_json_get_f64(o, key, out);
  if (rc == CF_ENOTFOUND) return 0;
  if (rc || !isfinite(*out))
    return cf_seterr(rc ? rc : CF_ERANGE, "%s: key '%s%s': expected a number", file, where, key);
  *set = 1;
  return 0;
}

/* yarn, as transformers 5's _compute_yarn_parameters: beta_fast / beta_slow default 32 / 1
 * (also when 0: it reads them with `or`), truncate default true (null: false), attention_factor
 * when absent 0.1·ln(factor)+1 or, with both mscale and mscale_all_dim non-zero, the ratio of
 * that form for each. */
static int cf__rope_yarn(const cf_json_t *rp, const char *file, const char *where,
                         cf_model_config_t *c) {
  double af = 0, ms = 0, msa = 0, bf = 0, bs = 0;
  int has_af, has_ms, has_msa, has_bf, has_bs, rc;
  if ((rc = cf__opt_num(rp, file, where, "attention_factor", &af, &has_af)) ||
      (rc = cf__opt_num(rp, file, where, "mscale", &ms, &has_ms)) ||
      (rc = cf__opt_num(rp, file, where, "mscale_all_dim", &msa, &has_msa)) ||
      (rc = cf__opt_num(rp, file, where, "beta_fast", &bf, &has_bf)) ||
      (rc = cf__opt_num(rp, file, where, "beta_slow", &bs, &has_bs)) ||
      (rc = cf__bool(rp, file, "truncate", 1, &c->rope_truncate)))
    return rc;
  const cf_json_t *tr = cf_json_get(rp, "truncate");
  if (tr && tr->type == CF_JSON_NULL) c->rope_truncate = 0; /* transformers: `if None` is false */
  c->rope_beta_fast = has_bf && bf != 0 ? bf : 32;
  c->rope_beta_slow = has_bs && bs != 0 ? bs : 1;
  if (!(c->rope_beta_fast > 0 && c->rope_beta_slow > 0))
    return cf_seterr(CF_ERANGE, "%s: %sbeta_fast %g / beta_slow %g: expected positive numbers",
                     file, where, c->rope_beta_fast, c->rope_beta_slow);
  double f = c->rope_factor;
#define CF__MSCALE(m) (f <= 1 ? 1.0 : 0.1 * (m) * log(f) + 1.0)
  if (has_af) c->rope_attn_factor = af;
  else if (has_ms && has_msa && ms != 0 && msa != 0)
    c->rope_attn_factor = CF__MSCALE(ms) / CF__MSCALE(msa);
  else c->rope_attn_factor = CF__MSCALE(1.0);
#undef CF__MSCALE
  if (!(c->rope_attn_factor > 0) || !isfinite(c->rope_attn_factor))
    return cf_seterr(CF_ERANGE, "%s: %sattention_factor %g: expected a positive number", file,
                     where, c->rope_attn_factor);
  return 0;
}

/* RoPE: 5.x rope_parameters, else 4.x rope_scaling + top-level rope_theta. */
static int cf__rope(const cf_json_t *root, const char *file, const cf__family_t *fam,
                    cf_model_config_t *c) {
  const char *rk = "rope_parameters";
  const cf_json_t *rp = cf_json_get(root, rk);
  if (!rp || rp->type == CF_JSON_NULL) { rk = "rope_scaling"; rp = cf_json_get(root, rk); }
  if (rp && rp->type == CF_JSON_NULL) rp = NULL;
  if (rp && rp->type != CF_JSON_OBJ)
    return cf_seterr(CF_EFORMAT, "%s: key '%s': expected an object, found %s", file, rk,
                     cf_json_type_name(rp->type));
  /* transformers 5 nests rope parameters per attention kind for some families
   * ({"full_attention": {...}, "sliding_attention": {...}}); none of ours does, and reading
   * such a file as flat would silently use the wrong rope. */
  for (const cf_json_t *e = rp ? rp->child : NULL; e; e = e->next)
    if (e->type == CF_JSON_OBJ)
      return cf_seterr(CF_EUNSUPPORTED, "%s: %s.%s: per-layer-type rope parameters are not "
                       "supported", file, rk, e->key);
  int rc;
  char where[40];
  snprintf(where, sizeof where, "%s.", rk);
  double theta;
  if ((rc = cf__pos(root, file, "", "rope_theta", fam->default_rope_theta, &theta))) return rc;
  if (rp && (rc = cf__pos(rp, file, where, "rope_theta", theta, &theta))) return rc;
  c->rope_theta = theta;
  c->rope_kind = CF_ROPE_DEFAULT;
  c->rope_factor = 1.0;
  c->rope_low_freq_factor = c->rope_high_freq_factor = 0.0;
  c->rope_orig_max_pos = 0;
  c->rope_attn_factor = 1.0;
  c->rope_beta_fast = c->rope_beta_slow = 0;
  c->rope_truncate = 0;
  /* partial rotary (rotating only part of each head) changes the math: refuse. */
  double prf;
  const cf_json_t *srcs[2] = {root, rp};
  for (int i = 0; i < 2; i++) {
    if (!srcs[i] || cf_json_get_f64(srcs[i], "partial_rotary_factor", &prf) != 0) continue;
    if (prf != 1.0)
      return cf_seterr(CF_EUNSUPPORTED, "%s: partial_rotary_factor %g is not supported "
                       "(only 1.0)", file, prf);
  }
  if (!rp) return 0;
  const char *type = NULL, *tk = "rope_type";
  const cf_json_t *tv = cf_json_get(rp, tk);
  if (!tv || tv->type == CF_JSON_NULL) { tk = "type"; tv = cf_json_get(rp, tk); }
  if (tv && tv->type != CF_JSON_NULL) {
    if (tv->type != CF_JSON_STR)
      return cf_seterr(CF_EFORMAT, "%s: key '%s.%s': expected string, found %s", file, rk, tk,
                       cf_json_type_name(tv->type));
    type = tv->str;
  }
  if (!type || strcmp(type, "default") == 0) return 0;
  if (strcmp(type, "dynamic") == 0)
    return cf_seterr(CF_EUNSUPPORTED, "%s: %s.%s 'dynamic' is not supported: its frequencies "
                     "change with the length of the sequence a token is computed with, so a "
                     "prefix's KV is not a function of the prefix", file, rk, tk);
  if (strcmp(type, "linear") == 0) {
    c->rope_kind = CF_ROPE_LINEAR;
    return cf__pos(rp, file, where, "factor", NAN, &c->rope_factor);
  }
  if (strcmp(type, "llama3") == 0) c->rope_kind = CF_ROPE_LLAMA3;
  else if (strcmp(type, "yarn") == 0) c->rope_kind = CF_ROPE_YARN;
  else
    return cf_seterr(CF_EUNSUPPORTED, "%s: %s.%s '%.32s' is not supported (supported: default, "
                     "linear, llama3, yarn)", file, rk, tk, type);
  if ((rc = cf__pos(rp, file, where, "factor", NAN, &c->rope_factor)) ||
      (rc = cf__orig_max_pos(root, rp, file, where, c)))
    return rc;
  return c->rope_kind == CF_ROPE_LLAMA3 ? cf__rope_llama3(rp, file, where, c)
                                        : cf__rope_yarn(rp, file, where, c);
}

static int cf__dtype(const cf_json_t *root, const char *file, cf_model_config_t *c) {
  const char *key = "dtype";
  const cf_json_t *v = cf_json_get(root, key);
  if (!v || v->type == CF_JSON_NULL) { key = "torch_dtype"; v = cf_json_get(root, key); }
  c->dtype = CF_DT_F32;
  if (!v || v->type == CF_JSON_NULL) return 0;
  if (v->type != CF_JSON_STR)
    return cf_seterr(CF_EFORMAT, "%s: key '%s': expected string, found %s", file, key,
                     cf_json_type_name(v->type));
  static const struct { const char *n; cf_dtype_t t; } m[] = {
      {"float32", CF_DT_F32}, {"bfloat16", CF_DT_BF16}, {"float16", CF_DT_F16},
      {"torch.float32", CF_DT_F32}, {"torch.bfloat16", CF_DT_BF16}, {"torch.float16", CF_DT_F16}};
  for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
    if (strcmp(v->str, m[i].n) == 0) { c->dtype = m[i].t; return 0; }
  return cf_seterr(CF_EDTYPE, "%s: key '%s': '%.32s' is not supported (expected float32, "
                   "bfloat16 or float16)", file, key, v->str);
}

/* Positive integer window from key 'sliding_window' (sw non-null). */
static int cf__window_value(const cf_json_t *sw, const char *file, int *out) {
  if (sw->type != CF_JSON_NUM)
    return cf_seterr(CF_EFORMAT, "%s: key 'sliding_window': expected a positive integer or null, "
                     "found %s", file, cf_json_type_name(sw->type));
  if (sw->num != floor(sw->num) || sw->num < 1 || sw->num > 1e9)
    return cf_seterr(CF_ERANGE, "%s: key 'sliding_window': expected a positive integer or null, "
                     "found number %g", file, sw->num);
  *out = (int)sw->num;
  return 0;
}

/* Sliding-window attention, as transformers 5 decides it per layer:
 *  - mistral / mixtral: every layer attends (t - sliding_window, t] when sliding_window is set;
 *    absent means the config class default (mistral 4096, mixtral none). Their modeling code
 *    reads no layer_types, so a layer_types list that is not all sliding is refused as
 *    ambiguous.
 *  - qwen2 / qwen3: sliding_window counts only when use_sliding_window is true; the sliding
 *    layers are those layer_types names "sliding_attention", or when layer_types is absent
 *    those with index >= max_window_layers (default 28).
 *  - qwen3_moe: sliding_window counts only when use_sliding_window is true, and then applies
 *    to every layer (max_window_layers and layer_types are not read by transformers 5).
 *  - llama: no sliding layers (a window asked for is refused, naming the key). */
static int cf__sliding_layers(const cf_json_t *root, const char *file, cf_model_config_t *c);

/* A window that no layer uses is dropped, so it cannot change the fingerprint. */
static int cf__sliding(const cf_json_t *root, const char *file, cf_model_config_t *c) {
  int rc = cf__sliding_layers(root, file, c), any = 0;
  for (int l = 0; l < c->n_layers; l++) any |= c->layer_sliding[l];
  if (!rc && (!any || !c->sliding_window)) {
    c->sliding_window = 0;
    memset(c->layer_sliding, 0, sizeof c->layer_sliding);
  }
  return rc;
}

static int cf__sliding_layers(const cf_json_t *root, const char *file, cf_model_config_t *c) {
  const cf_json_t *sw = cf_json_get(root, "sliding_window");
  const cf_json_t *lt = cf_json_get(root, "layer_types");
  if (lt && lt->type == CF_JSON_NULL) lt = NULL;
  if (lt) {
    int i = 0;
    if (lt->type != CF_JSON_ARR)
      return cf_seterr(CF_EFORMAT, "%s: key 'layer_types': expected an array, found %s", file,
                       cf_json_type_name(lt->type));
    for (const cf_json_t *e = lt->child; e; e = e->next, i++) {
      if (e->type != CF_JSON_STR ||
          (strcmp(e->str, "full_attention") != 0 && strcmp(e->str, "sliding_attention") != 0))
        return cf_seterr(CF_EUNSUPPORTED, "%s: layer_types[%d] is '%.32s' (supported: "
                         "full_attention, sliding_attention)", file, i,
                         e->type == CF_JSON_STR ? e->str : cf_json_type_name(e->type));
      if (i < c->n_layers) c->layer_sliding[i] = e->str[0] == 's';
    }
    if (i != c->n_layers)
      return cf_seterr(CF_ERANGE, "%s: layer_types has %d entries, num_hidden_layers is %d",
                       file, i, c->n_layers);
  }
  int any = 0, all = 1, rc;
  for (int l = 0; l < c->n_layers; l++) {
    any |= c->layer_sliding[l];
    all &= c->layer_sliding[l];
  }
  c->sliding_window = 0;
  if (c->arch == CF_ARCH_MISTRAL || c->arch == CF_ARCH_MIXTRAL) {
    if (!sw) {
      if (c->arch == CF_ARCH_MISTRAL) c->sliding_window = 4096; /* MistralConfig's default */
    } else if (sw->type != CF_JSON_NULL && (rc = cf__window_value(sw, file, &c->sliding_window))) {
      return rc;
    }
    if (lt && !all && c->sliding_window)
      return cf_seterr(CF_EUNSUPPORTED, "%s: layer_types mixes full and sliding attention, but "
                       "transformers' %s reads no layer_types (it windows every layer)", file,
                       cf_arch_name(c->arch));
    for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = c->sliding_window > 0;
    return 0;
  }
  if (c->arch == CF_ARCH_QWEN2 || c->arch == CF_ARCH_QWEN3) {
    int use;
    if ((rc = cf__bool(root, file, "use_sliding_window", 0, &use))) return rc;
    if (use && sw && sw->type == CF_JSON_NULL) use = 0;
    if (use) {
      if (!sw) c->sliding_window = 4096; /* the config class default */
      else if ((rc = cf__window_value(sw, file, &c->sliding_window))) return rc;
      if (!lt) {
        int mwl;
        if ((rc = cf__int(root, file, "max_window_layers", 0, 28, 0, 1 << 20, &mwl))) return rc;
        for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = l >= mwl;
      }
      return 0;
    }
    /* No window: transformers builds a sliding mask with no window size for a sliding layer;
     * too odd to reproduce on faith. */
    if (any)
      return cf_seterr(CF_EUNSUPPORTED, "%s: layer_types names sliding_attention layers but "
                       "use_sliding_window is not true (no window size applies)", file);
    return 0;
  }
  if (c->arch == CF_ARCH_QWEN3_MOE) {
    /* Qwen3MoeConfig (5.x) keeps sliding_window only when use_sliding_window is true, and the
     * model then builds one sliding mask for every layer: it reads neither max_window_layers
     * nor layer_types. (4.x windowed layers >= max_window_layers under flash attention only,
     * while its eager mask windowed every layer; we follow 5.x, which is what vLLM's venv has.) */
    int use;
    if ((rc = cf__bool(root, file, "use_sliding_window", 0, &use))) return rc;
    if (use && sw && sw->type == CF_JSON_NULL) use = 0;
    if (use) {
      if (!sw) c->sliding_window = 4096; /* the config class default */
      else if ((rc = cf__window_value(sw, file, &c->sliding_window))) return rc;
      if (lt && !all)
        return cf_seterr(CF_EUNSUPPORTED, "%s: layer_types mixes full and sliding attention, "
                         "but transformers' qwen3_moe reads no layer_types (with "
                         "use_sliding_window it windows every layer)", file);
      for (int l = 0; l < c->n_layers; l++) c->layer_sliding[l] = 1;
      return 0;
    }
  }
  if (any)
    return cf_seterr(CF_EUNSUPPORTED, "%s: layer_types names sliding_attention layers: "
                     "sliding-window attention is not supported for %s", file,
                     cf_arch_name(c->arch));
  return 0;
}

/* Refuses keys of variants whose math the engine does not reproduce. */
static int cf__unsupported_keys(const cf_json_t *root, const char *file) {
  static const char *const nonzero[] = {"shared_expert_intermediate_size", "n_shared_experts",
                                        "num_shared_experts", "attn_logit_softcapping",
                                        "final_logit_softcapping", "attention_sink_size"};
  for (size_t i = 0; i < sizeof nonzero / sizeof nonzero[0]; i++) {
    const cf_json_t *v = cf_json_get(root, nonzero[i]);
    if (!v || v->type == CF_JSON_NULL || (v->type == CF_JSON_NUM && v->num == 0) ||
        (v->type == CF_JSON_BOOL && !v->boolean))
      continue;
    return cf_seterr(CF_EUNSUPPORTED, "%s: key '%s' is set: %s not supported", file,
                     nonzero[i], i < 3 ? "shared experts are" : i < 5 ? "logit soft-capping is"
                     : "attention sinks are");
  }
  const cf_json_t *sinks = cf_json_get(root, "use_attention_sinks");
  if (sinks && sinks->type == CF_JSON_BOOL && sinks->boolean)
    return cf_seterr(CF_EUNSUPPORTED, "%s: key 'use_attention_sinks' is true: attention sinks "
                     "are not supported", file);
  return 0;
}

/* Mixture of experts: qwen3_moe (num_experts | num_local_experts, num_experts_per_tok,
 * moe_intermediate_size, norm_topk_prob, decoder_sparse_step, mlp_only_layers) and mixtral
 * (num_local_experts, num_experts_per_tok; experts of intermediate_size; every layer sparse;
 * top-k weights always renormalised). */
static int cf__moe(const cf_json_t *root, const char *file, cf_model_config_t *c) {
  int rc;
  if (c->arch == CF_ARCH_MIXTRAL) {
    if ((rc = cf__int(root, file, "num_local_experts", 0, 8, 1, 1 << 16, &c->n_experts)) ||
        (rc = cf__int(root, file, "num_experts_per_tok", 0, 2, 1, c->n_experts, &c->top_k)))
      return rc;
    c->moe_intermediate = c->intermediate;
    c->norm_topk = 1;
    for (int l = 0; l < c->n_layers; l++) c->layer_moe[l] = 1;
    return 0;
  }
  if (c->arch != CF_ARCH_QWEN3_MOE) return 0;
  const char *ek = cf_json_get(root, "num_experts") ? "num_experts" : "num_local_experts";
  int step;
  if ((rc = cf__int(root, file, ek, 0, 128, 0, 1 << 16, &c->n_experts)) ||
      (rc = cf__int(root, file, "num_experts_per_tok", 0, 8, 1, c->n_experts ? c->n_experts : 1,
                    &c->top_k)) ||
      (rc = cf__int(root, file, "moe_intermediate_size", 0, 768, 1, 1 << 20,
                    &c->moe_intermediate)) ||
      (rc = cf__int(root, file, "decoder_sparse_step", 0, 1, 1, 1 << 20, &step)))
    return rc;
  /* transformers 4.x defaults norm_topk_prob to false; a missing key is refused rather than
   * guessed, since the two choices give different KV after the first MoE layer. */
  const cf_json_t *nt = cf_json_get(root, "norm_topk_prob");
  if (!nt || nt->type != CF_JSON_BOOL)
    return cf_seterr(CF_EFORMAT, "%s: key 'norm_topk_prob': expected true or false, found %s",
                     file, nt ? cf_json_type_name(nt->type) : "nothing");
  c->norm_topk = nt->boolean;
  for (int l = 0; l < c->n_layers; l++)
    c->layer_moe[l] = c->n_experts > 0 && (l + 1) % step == 0;
  const cf_json_t *mo = cf_json_get(root, "mlp_only_layers");
  if (mo && mo->type != CF_JSON_NULL) {
    if (mo->type != CF_JSON_ARR)
      return cf_seterr(CF_EFORMAT, "%s: key 'mlp_only_layers': expected an array, found %s",
                       file, cf_json_type_name(mo->type));
    int i = 0;
    for (const cf_json_t *e = mo->child; e; e = e->next, i++) {
      if (e->type != CF_JSON_NUM || e->num != floor(e->num) || e->num < 0 ||
          e->num >= c->n_layers)
        return cf_seterr(CF_ERANGE, "%s: mlp_only_layers[%d]: expected a layer index in "
                         "[0, %d)", file, i, c->n_layers);
      c->layer_moe[(int)e->num] = 0;
    }
  }
  int any = 0;
  for (int l = 0; l < c->n_layers; l++) any |= c->layer_moe[l];
  if (!any) c->n_experts = c->top_k = c->moe_intermediate = c->norm_topk = 0; /* all dense */
  return 0;
}

static int cf__parse_root(const cf_json_t *root, const char *file, cf_model_config_t *c) {
  if (root->type != CF_JSON_OBJ)
    return cf_seterr(CF_EFORMAT, "%s: expected a JSON object, found %s", file,
                     cf_json_type_name(root->type));
  memset(c, 0, sizeof *c);
  const cf__family_t *fam = NULL;
  int rc = cf__family(root, file, &fam);
  if (rc) return rc;
  c->arch = fam->arch;
  if ((rc = cf__int(root, file, "num_hidden_layers", 1, 0, 1, CF_MODEL_MAX_LAYERS, &c->n_layers)) ||
      (rc = cf__int(root, file, "hidden_size", 1, 0, 1, 1 << 17, &c->hidden)) ||
      (rc = cf__int(root, file, "num_attention_heads", 1, 0, 1, 4096, &c->n_heads)) ||
      (rc = cf__int(root, file, "num_key_value_heads", 0,
                    fam->default_kv_heads ? fam->default_kv_heads : c->n_heads, 1, c->n_heads,
                    &c->n_kv_heads)) ||
      (rc = cf__int(root, file, "intermediate_size", 1, 0, 1, 1 << 20, &c->intermediate)) ||
      (rc = cf__int(root, file, "vocab_size", 1, 0, 1, 1 << 22, &c->vocab)) ||
      (rc = cf__int(root, file, "max_position_embeddings", 0, fam->default_max_pos, 1, 1 << 30,
                    &c->max_pos)))
    return rc;
  if (c->n_heads % c->n_kv_heads != 0)
    return cf_seterr(CF_ERANGE, "%s: num_attention_heads %d is not a multiple of "
                     "num_key_value_heads %d", file, c->n_heads, c->n_kv_heads);
  int dflt_hd = fam->default_head_dim ? fam->default_head_dim : c->hidden / c->n_heads;
  if ((rc = cf__int(root, file, "head_dim", 0, dflt_hd, 2, 1024, &c->head_dim))) return rc;
  if (c->head_dim % 2)
    return cf_seterr(CF_ERANGE, "%s: head_dim %d is odd (RoPE rotates pairs)", file, c->head_dim);
  if ((int64_t)c->n_heads * c->head_dim > (1 << 20))
    return cf_seterr(CF_ERANGE, "%s: num_attention_heads x head_dim = %lld exceeds %d", file,
                     (long long)c->n_heads * c->head_dim, 1 << 20);
  if ((rc = cf__pos(root, file, "", "rms_norm_eps", fam->default_rms_eps, &c->rms_eps))) return rc;

  const char *act = "silu";
  rc = cf_json_get_str(root, "hidden_act", &act);
  if (rc && rc != CF_ENOTFOUND) return cf_err_prefix(rc, "%s: ", file);
  /* transformers maps "swish" to torch's SiLU: the same function */
  if (strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
    return cf_seterr(CF_EUNSUPPORTED, "%s: hidden_act '%.32s' is not supported (only silu, "
                     "or its alias swish)", file, act);

  int attn_bias = 0, mlp_bias = 0;
  if ((rc = cf__bool(root, file, "tie_word_embeddings", 0, &c->tie_embeddings))) return rc;
  switch (c->arch) {
  case CF_ARCH_LLAMA:
    if ((rc = cf__bool(root, file, "attention_bias", 0, &attn_bias)) ||
        (rc = cf__bool(root, file, "mlp_bias", 0, &mlp_bias)))
      return rc;
    c->qkv_bias = c->o_bias = attn_bias;
    c->mlp_bias = mlp_bias;
    break;
  case CF_ARCH_MISTRAL: /* MistralAttention/MLP have no biases whatever the config says */
    break;
  case CF_ARCH_QWEN2: /* q/k/v always biased, o_proj never */
    c->qkv_bias = 1;
    break;
  case CF_ARCH_QWEN3:
  case CF_ARCH_QWEN3_MOE:
    if ((rc = cf__bool(root, file, "attention_bias", 0, &attn_bias))) return rc;
    c->qkv_bias = c->o_bias = attn_bias;
    c->qk_norm = 1;
    break;
  case CF_ARCH_MIXTRAL: /* no biases, like mistral */
    break;
  }
  if ((rc = cf__unsupported_keys(root, file)) || (rc = cf__moe(root, file, c)) ||
      (rc = cf__sliding(root, file, c)) || (rc = cf__rope(root, file, fam, c)) ||
      (rc = cf__dtype(root, file, c)))
    return rc;
  return 0;
}

int cf_hfconfig_parse(const char *json, size_t len, const char *file, cf_model_config_t *c) {
  cf_json_t *root;
  int rc = cf_json_parse(json, len, &root);
  if (rc) return cf_err_prefix(rc, "%s: ", file);
  rc = cf__parse_root(root, file, c);
  cf_json_free(root);
  return rc;
}
