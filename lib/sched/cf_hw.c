/* cf_hw — hardware profiles (conf/hw/NAME.json), model shapes, and the cost model built
 * from both (see cf_hw.h). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched/cf_hw.h"
#include "util/cf_err.h"
#include "util/cf_json.h"

const char *const cf_tier_names[3] = {"dram", "ssd", "net"};

int cf_hw_read_file(const char *path, char **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return cf_seterr(errno == ENOENT ? CF_ENOENT : CF_EIO, "%s: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap + 1);
  while (b) {
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (n < cap) break;
    if (cap >= (64u << 20)) {
      free(b);
      fclose(f);
      return cf_seterr(CF_ERANGE, "%s: larger than 64 MiB", path);
    }
    cap *= 2;
    char *nb = realloc(b, cap + 1);
    if (!nb) { free(b); b = NULL; }
    else b = nb;
  }
  int err = ferror(f);
  fclose(f);
  if (!b) return cf_seterr(CF_ENOMEM, "%s: reading", path);
  if (err) { free(b); return cf_seterr(CF_EIO, "%s: read error", path); }
  b[n] = 0;
  *buf = b;
  *len = n;
  return 0;
}

/* Number at obj.key (must be > 0 unless allow_zero) scaled by `scale`. */
static int cf__num(const char *file, const cf_json_t *obj, const char *path, const char *key,
                   double scale, int allow_zero, double *out) {
  double v;
  int rc = cf_json_get_f64(obj, key, &v);
  if (rc == CF_ENOTFOUND) return cf_seterr(CF_EFORMAT, "%s: missing key '%s%s'", file, path, key);
  if (rc) return cf_err_prefix(rc, "%s: %s", file, path);
  if (!isfinite(v) || v < 0 || (!allow_zero && v == 0))
    return cf_seterr(CF_EFORMAT, "%s: key '%s%s' = %g: expected a positive number", file, path,
                     key, v);
  *out = v * scale;
  return 0;
}

/* Required: compute.{gamma_ms, alpha_us_per_token, beta_ns_per_token2} and at least one of
 * tiers.{dram,ssd,net}.{GBps, latency_us}. Optional, with defaults: name, gpus (8), pcie
 * (the dram tier's numbers, else 48 GB/s and 8 us), allreduce (350 GB/s, 15 us), nvlink
 * (none),
 * tiers.*.shared (false for dram, true otherwise), default_tier (dram, else the first given). */
static int cf__hw_parse(const char *file, const char *text, size_t len, cf_hw_t *hw) {
  cf_json_t *root;
  int rc = cf_json_parse(text, len, &root);
  if (rc) return cf_err_prefix(rc, "%s: ", file);
  memset(hw, 0, sizeof *hw);
  const char *s;
  const cf_json_t *comp = cf_json_get(root, "compute"), *pcie = cf_json_get(root, "pcie"),
                  *ar = cf_json_get(root, "allreduce"), *tiers = cf_json_get(root, "tiers"),
                  *nvl = cf_json_get(root, "nvlink");
  int64_t g = 8;
  if (root->type != CF_JSON_OBJ) { rc = cf_seterr(CF_EFORMAT, "%s: expected an object", file); goto out; }
  if (cf_json_get_str(root, "name", &s) == 0) snprintf(hw->name, sizeof hw->name, "%s", s);
  if (cf_json_get(root, "gpus") && ((rc = cf_json_get_i64(root, "gpus", &g)) || g < 1 || g > 1024)) {
    rc = cf_seterr(CF_EFORMAT, "%s: key 'gpus': expected an integer 1..1024", file);
    goto out;
  }
  hw->gpus = (int)g;
  if (!comp || !tiers) {
    rc = cf_seterr(CF_EFORMAT, "%s: missing key '%s'", file, !comp ? "compute" : "tiers");
    goto out;
  }
  if ((rc = cf__num(file, comp, "compute.", "gamma_ms", 1e-3, 1, &hw->gamma_s)) ||
      (rc = cf__num(file, comp, "compute.", "alpha_us_per_token", 1e-6, 0, &hw->alpha_s)) ||
      (rc = cf__num(file, comp, "compute.", "beta_ns_per_token2", 1e-9, 1, &hw->beta_s)))
    goto out;
  int first = -1;
  for (int t = 0; t < 3; t++) {
    const cf_json_t *tj = cf_json_get(tiers, cf_tier_names[t]);
    char path[32];
    snprintf(path, sizeof path, "tiers.%s.", cf_tier_names[t]);
    if (!tj) continue; /* not in this profile: only an error if selected */
    if ((rc = cf__num(file, tj, path, "GBps", 1e9, 0, &hw->tier_Bps[t])) ||
        (rc = cf__num(file, tj, path, "latency_us", 1e-6, 1, &hw->tier_lat_s[t])))
      goto out;
    hw->tier_shared[t] = t != CF_TIER_DRAM;
    int b;
    if (cf_json_get(tj, "shared") && (rc = cf_json_get_bool(tj, "shared", &b))) {
      cf_err_prefix(rc, "%s: tiers.%s: ", file, cf_tier_names[t]);
      goto out;
    }
    if (cf_json_get(tj, "shared")) hw->tier_shared[t] = b;
    if (first < 0) first = t;
  }
  if (first < 0) {
    rc = cf_seterr(CF_EFORMAT, "%s: key 'tiers': expected at least one of dram, ssd, net", file);
    goto out;
  }
  hw->pcie_Bps = hw->tier_Bps[CF_TIER_DRAM] > 0 ? hw->tier_Bps[CF_TIER_DRAM] : 48e9;
  hw->pcie_lat_s = hw->tier_Bps[CF_TIER_DRAM] > 0 ? hw->tier_lat_s[CF_TIER_DRAM] : 8e-6;
  if (pcie && ((rc = cf__num(file, pcie, "pcie.", "GBps", 1e9, 0, &hw->pcie_Bps)) ||
               (rc = cf__num(file, pcie, "pcie.", "latency_us", 1e-6, 1, &hw->pcie_lat_s))))
    goto out;
  hw->ar_Bps = 350e9;
  hw->ar_lat_s = 15e-6;
  if (ar && ((rc = cf__num(file, ar, "allreduce.", "bus_GBps", 1e9, 0, &hw->ar_Bps)) ||
             (rc = cf__num(file, ar, "allreduce.", "latency_us", 1e-6, 1, &hw->ar_lat_s))))
    goto out;
  if (nvl && ((rc = cf__num(file, nvl, "nvlink.", "GBps", 1e9, 0, &hw->nvlink_Bps)) ||
              (rc = cf__num(file, nvl, "nvlink.", "latency_us", 1e-6, 1, &hw->nvlink_lat_s))))
    goto out;
  hw->default_tier = hw->tier_Bps[CF_TIER_DRAM] > 0 ? CF_TIER_DRAM : first;
  if (cf_json_get_str(root, "default_tier", &s) == 0) {
    int t = -1;
    for (int i = 0; i < 3; i++)
      if (strcmp(s, cf_tier_names[i]) == 0) t = i;
    if (t < 0 || hw->tier_Bps[t] <= 0) {
      rc = cf_seterr(CF_EFORMAT, "%s: default_tier '%s': expected one of the tiers it defines", file, s);
      goto out;
    }
    hw->default_tier = t;
  }
  rc = 0;
out:
  cf_json_free(root);
  return rc;
}

int cf_hw_load(const char *arg, cf_hw_t *hw) {
  char path[PATH_MAX];
  size_t al = strlen(arg);
  int is_path = strchr(arg, '/') || (al > 5 && strcmp(arg + al - 5, ".json") == 0);
  char *text = NULL;
  size_t len = 0;
  int rc = CF_ENOENT;
  if (is_path) {
    snprintf(path, sizeof path, "%s", arg);
    rc = cf_hw_read_file(path, &text, &len);
    if (rc) return rc == CF_ENOENT ? cf_seterr(CF_ENOENT, "hardware profile '%s': no such file", arg) : rc;
  } else {
    for (const char *p = arg; *p; p++)
      if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.'))
        return cf_seterr(CF_ENOENT, "unknown hardware profile '%s'", arg);
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    /* beside the binary: build/cacheflow-sim and an install's bin/ one level below conf/, the
     * benches (build/bench/bench_eval_evict) two: both found from any working directory */
    const char *dirs[4] = {getenv("CF_HW_DIR"), NULL, NULL, "conf/hw"};
    char exedir[2][PATH_MAX + 16];
    if (n > 0) {
      exe[n] = 0;
      char *sl = strrchr(exe, '/');
      if (sl) *sl = 0;
      snprintf(exedir[0], sizeof exedir[0], "%s/../conf/hw", exe);
      snprintf(exedir[1], sizeof exedir[1], "%s/../../conf/hw", exe);
      dirs[1] = exedir[0];
      dirs[2] = exedir[1];
    }
    for (int i = 0; i < 4 && rc == CF_ENOENT; i++) {
      if (!dirs[i]) continue;
      snprintf(path, sizeof path, "%s/%s.json", dirs[i], arg);
      rc = cf_hw_read_file(path, &text, &len);
    }
    if (rc == CF_ENOENT)
      return cf_seterr(CF_ENOENT, "unknown hardware profile '%s' (no %s.json in conf/hw; shipped: "
                       "h100-pcie5, h100-link10g, h100-link40g, h100-link80g, h100-nvme)", arg, arg);
    if (rc) return rc;
  }
  rc = cf__hw_parse(path, text, len, hw);
  free(text);
  if (!rc && !hw->name[0]) snprintf(hw->name, sizeof hw->name, "%s", arg);
  return rc;
}

static const cf_model_shape_t cf__models[] = {
    {"llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 2, 1},
    {"qwen3-8b", 36, 4096, 32, 8, 128, 12288, 2, 1},
    {"llama-3.1-70b-tp4", 80, 8192, 64, 8, 128, 28672, 2, 4},
    {"llama-3.1-70b-tp8", 80, 8192, 64, 8, 128, 28672, 2, 8},
    /* two pipeline stages of 40 layers, each a TP-4 group (DESIGN.md §1 (c)) */
    {"llama-3.1-70b-tp4pp2", 80, 8192, 64, 8, 128, 28672, 2, 4, 2},
    /* Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B): 128 experts of 768, 8 per token */
    {"qwen3-30b-a3b", 48, 2048, 32, 4, 128, 6144, 2, 1, 1, 128, 8, 768},
    /* Mixtral-8x7B-v0.1: 8 experts of 14336, 2 per token, no window */
    {"mixtral-8x7b", 32, 4096, 32, 8, 128, 14336, 2, 1, 1, 8, 2, 14336},
    /* Mistral-7B-v0.1: dense, a 4096-key sliding window on every layer */
    {"mistral-7b-sw4096", 32, 4096, 32, 8, 128, 14336, 2, 1, 1, 0, 0, 0, 4096, 32},
};
#define CF__MODEL_NAMES "llama-3.1-8b, qwen3-8b, llama-3.1-70b-tp4, llama-3.1-70b-tp8, " \
                        "llama-3.1-70b-tp4pp2, qwen3-30b-a3b, mixtral-8x7b, mistral-7b-sw4096"

static int cf__cfg_int(const char *file, const cf_json_t *o, const char *key, int *out) {
  int64_t v;
  int rc = cf_json_get_i64(o, key, &v);
  if (rc == CF_ENOTFOUND) return cf_seterr(CF_EFORMAT, "%s: missing key '%s'", file, key);
  if (rc) return cf_err_prefix(rc, "%s: ", file);
  if (v < 1 || v > (1 << 22))
    return cf_seterr(CF_EFORMAT, "%s: key '%s' = %lld: expected 1..4194304", file, key, (long long)v);
  *out = (int)v;
  return 0;
}

int cf_model_shape_load(const char *arg, cf_model_shape_t *m) {
  for (size_t i = 0; i < sizeof cf__models / sizeof cf__models[0]; i++)
    if (strcmp(arg, cf__models[i].name) == 0) {
      *m = cf__models[i];
      if (m->pp < 1) m->pp = 1;
      return 0;
    }
  size_t al = strlen(arg);
  if (!strchr(arg, '/') && !(al > 5 && strcmp(arg + al - 5, ".json") == 0))
    return cf_seterr(CF_ENOTFOUND, "unknown model '%s': expected " CF__MODEL_NAMES " or a "
                     "config.json path", arg);
  char *text;
  size_t len;
  int rc = cf_hw_read_file(arg, &text, &len);
  if (rc) return rc;
  cf_json_t *root;
  rc = cf_json_parse(text, len, &root);
  free(text);
  if (rc) return cf_err_prefix(rc, "%s: ", arg);
  memset(m, 0, sizeof *m);
  snprintf(m->name, sizeof m->name, "%s", arg);
  if ((rc = cf__cfg_int(arg, root, "num_hidden_layers", &m->layers)) ||
      (rc = cf__cfg_int(arg, root, "hidden_size", &m->hidden)) ||
      (rc = cf__cfg_int(arg, root, "num_attention_heads", &m->heads)) ||
      (rc = cf__cfg_int(arg, root, "intermediate_size", &m->intermediate)))
    goto out;
  m->kv_heads = m->heads;
  if (cf_json_get(root, "num_key_value_heads") &&
      (rc = cf__cfg_int(arg, root, "num_key_value_heads", &m->kv_heads)))
    goto out;
  m->head_dim = m->hidden / m->heads;
  if (cf_json_get(root, "head_dim") && cf_json_get(root, "head_dim")->type != CF_JSON_NULL &&
      (rc = cf__cfg_int(arg, root, "head_dim", &m->head_dim)))
    goto out;
  m->dtype_bytes = 2;
  const char *dt;
  if (cf_json_get_str(root, "torch_dtype", &dt) == 0 || cf_json_get_str(root, "dtype", &dt) == 0)
    m->dtype_bytes = strcmp(dt, "float32") == 0 ? 4 : 2;
  m->tp = 1;
  m->pp = 1;
  /* experts: qwen3_moe (num_experts, moe_intermediate_size) or mixtral (num_local_experts,
   * experts of intermediate_size); an absent moe_intermediate_size means the latter */
  const char *ek = cf_json_get(root, "num_experts") ? "num_experts" : "num_local_experts";
  const cf_json_t *ev = cf_json_get(root, ek);
  if (ev && ev->type == CF_JSON_NUM && ev->num > 0) {
    if ((rc = cf__cfg_int(arg, root, ek, &m->experts)) ||
        (rc = cf__cfg_int(arg, root, "num_experts_per_tok", &m->top_k)))
      goto out;
    m->moe_intermediate = m->intermediate;
    if (cf_json_get(root, "moe_intermediate_size") &&
        (rc = cf__cfg_int(arg, root, "moe_intermediate_size", &m->moe_intermediate)))
      goto out;
  }
  /* window: sliding_window when set (qwen: only with use_sliding_window), on every layer */
  const cf_json_t *sw = cf_json_get(root, "sliding_window");
  int use = 1;
  if (cf_json_get(root, "use_sliding_window")) cf_json_get_bool(root, "use_sliding_window", &use);
  if (use && sw && sw->type == CF_JSON_NUM && sw->num >= 1) {
    if ((rc = cf__cfg_int(arg, root, "sliding_window", &m->window))) goto out;
    m->window_layers = m->layers;
  }
  if (m->layers > 4096) rc = cf_seterr(CF_EFORMAT, "%s: num_hidden_layers = %d: at most 4096", arg, m->layers);
out:
  cf_json_free(root);
  return rc;
}

/* Weights one token of one decoder layer multiplies (the GEMM work per token is 2x this): for
 * a mixture of experts the router and its top_k experts, not every expert. */
static double cf__layer_weights(const cf_model_shape_t *m) {
  double q = (double)m->heads * m->head_dim, kv = (double)m->kv_heads * m->head_dim;
  double mlp = m->experts > 0
                   ? (double)m->hidden * m->experts + 3.0 * m->hidden * m->moe_intermediate * m->top_k
                   : 3.0 * m->hidden * m->intermediate;
  return m->hidden * q + 2.0 * m->hidden * kv + q * m->hidden + mlp;
}

int cf_hw_cost(const cf_hw_t *hw, const cf_model_shape_t *model, int gpus, int tier, double gbps,
                  int chunk, cf_sched_cost_t *c) {
  int tp = model->tp, pp = model->pp > 1 ? model->pp : 1;
  if (gpus == 0) gpus = tp * pp;
  if (gpus < tp * pp || gpus % (tp * pp))
    return cf_seterr(CF_EINVAL, "--gpus %d: model %s needs a multiple of its TP degree %d%s", gpus,
                     model->name, tp * pp, pp > 1 ? " x its pipeline stages" : "");
  if (model->layers % pp)
    return cf_seterr(CF_EINVAL, "model %s: %d layers do not split into %d pipeline stages",
                     model->name, model->layers, pp);
  if (gpus > hw->gpus)
    return cf_seterr(CF_EINVAL, "--gpus %d: profile %s has %d GPUs", gpus, hw->name, hw->gpus);
  const cf_model_shape_t *ref = &cf__models[0]; /* the profile's fit is for llama-3.1-8b */
  double wr = cf__layer_weights(model) / cf__layer_weights(ref);
  double ar = ((double)model->heads * model->head_dim) / ((double)ref->heads * ref->head_dim);
  memset(c, 0, sizeof *c);
  c->n_layers = model->layers / pp; /* each stage device holds its own layers */
  c->chunk_tokens = chunk;
  c->kv_bytes_per_token = 2.0 * model->kv_heads * model->head_dim * model->dtype_bytes;
  c->gamma_s = hw->gamma_s;
  c->alpha_s = hw->alpha_s * wr / tp;
  c->beta_s = hw->beta_s * ar / tp;
  c->window = model->window;
  c->window_frac = model->window > 0 ? (double)model->window_layers / model->layers : 0;
  if (tp > 1) { /* two ring all-reduces of the hidden state per layer (after attention, MLP) */
    c->gamma_s += 2 * hw->ar_lat_s;
    c->alpha_s += 2 * (2.0 * (tp - 1) / tp) * model->hidden * 2.0 / hw->ar_Bps;
  }
  if (tier < 0 || tier > 2 || hw->tier_Bps[tier] <= 0)
    return cf_seterr(CF_EINVAL, "profile %s has no '%s' tier", hw->name,
                     tier >= 0 && tier <= 2 ? cf_tier_names[tier] : "?");
  c->n_devices = gpus / tp; /* with pipeline stages: every stage of every engine */
  c->pp_stages = pp;
  /* the hidden state entering a stage, stored with the KV; a TP group's ranks each load 1/tp
   * of it over their own links (the device's link is tp links) */
  c->hidden_bytes_per_token = (double)model->hidden * model->dtype_bytes;
  /* a TP engine loads its tp shards over tp PCIe links at once */
  double pcie = hw->pcie_Bps * tp;
  double bw = tier == CF_TIER_DRAM ? hw->tier_Bps[tier] * tp : hw->tier_Bps[tier];
  if (gbps > 0) bw = gbps * 1e9 / 8 * (tier == CF_TIER_DRAM ? tp : 1); /* dram: per GPU link */
  c->shared_link = hw->tier_shared[tier];
  c->link_Bps = c->shared_link ? fmin(bw, pcie) : bw;
  c->link_latency_s = hw->tier_lat_s[tier];
  /* an engine sends its tp shards over its tp GPUs' NVLink ports at once */
  c->peer_Bps = hw->nvlink_Bps * tp;
  c->peer_latency_s = hw->nvlink_lat_s;
  return cf_cost_check(c);
}
