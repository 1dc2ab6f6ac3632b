/* cf_model — checkpoint loading: config.json + safetensors (single or sharded) → fp32 weights.
 * See cf_model.h for the contract and cf_model_fingerprint() for what the fingerprint covers. */
#include "model/cf_model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "model/cf_hfconfig.h"
#include "model/cf_safetensors.h"
#include "util/cf_err.h"
#include "util/cf_hex.h"

/* config.json and the shard index are small; anything larger is not a config. */
#define CF__MAX_JSON (64u << 20)

typedef struct {
  const cf_st_tensor_t *t;
  const cf_st_file_t *f;
} cf__entry_t;

typedef struct {
  cf_st_file_t *files;
  size_t n_files;
  cf__entry_t *idx;  /* every tensor of every file, sorted by name */
  size_t n_idx;
  void **owned;      /* converted / realigned weight buffers */
  size_t n_owned, cap_owned;
  const char *prefix; /* "model." or "" (checkpoints saved from the base model) */
  size_t weight_bytes; /* fp32 bytes of every weight resolved (mapped in place or converted) */
} cf__priv_t;

/* Reads a whole (small) file into a NUL-terminated malloc'd buffer. */
static int cf__slurp(const char *path, char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return cf_seterr(cf_err_from_errno(-e), "%s: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > CF__MAX_JSON) {
    close(fd);
    return cf_seterr(CF_EFORMAT, "%s: not a regular file of at most %u bytes", path, CF__MAX_JSON);
  }
  size_t n = (size_t)st.st_size, got = 0;
  char *buf = malloc(n + 1);
  if (!buf) { close(fd); return cf_seterr(CF_ENOMEM, "%s: %zu bytes", path, n); }
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int e = r < 0 ? errno : EIO;
      free(buf);
      close(fd);
      return cf_seterr(cf_err_from_errno(-e), "%s: read: %s", path, r < 0 ? strerror(e) : "file shrank");
    }
    got += (size_t)r;
  }
  close(fd);
  buf[n] = 0;
  *out = buf;
  *len = n;
  return 0;
}

static char *cf__join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static int cf__exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static int cf__entry_cmp(const void *a, const void *b) {
  return strcmp(((const cf__entry_t *)a)->t->name, ((const cf__entry_t *)b)->t->name);
}

static const cf__entry_t *cf__lookup(const cf__priv_t *p, const char *name) {
  size_t lo = 0, hi = p->n_idx;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(p->idx[mid].t->name, name);
    if (c == 0) return &p->idx[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

/* Opens one more shard into p->files (capacity reserved by the caller). */
static int cf__open_file(cf__priv_t *p, const char *path) {
  int rc = cf_st_open(path, &p->files[p->n_files]);
  if (rc) return rc;
  p->n_files++;
  return 0;
}

/* model.safetensors.index.json: open every shard named in weight_map, and check that each
 * mapped tensor really is in the shard the index names. */
static int cf__open_sharded(cf__priv_t *p, const char *dir, const char *index_path) {
  char *text;
  size_t len;
  int rc = cf__slurp(index_path, &text, &len);
  if (rc) return rc;
  cf_st_index_t ix;
  rc = cf_st_index_parse(text, len, index_path, &ix);
  free(text);
  if (rc) return rc;
  if (!(p->files = calloc(ix.n_shards, sizeof *p->files))) {
    rc = cf_seterr(CF_ENOMEM, "%s: %zu shards", index_path, ix.n_shards);
    goto out;
  }
  for (size_t i = 0; i < ix.n_shards; i++) {
    char *path = cf__join(dir, ix.shards[i]);
    if (!path) { rc = cf_seterr(CF_ENOMEM, "path"); goto out; }
    rc = cf__open_file(p, path);
    if (rc == CF_ENOENT) cf_err_prefix(rc, "shard named by %s: ", index_path);
    free(path);
    if (rc) goto out;
  }
  for (size_t i = 0; i < ix.n_entries; i++)
    if (!cf_st_find(&p->files[ix.shard[i]], ix.tensor[i])) {
      rc = cf_seterr(CF_EFORMAT, "%s: weight_map puts tensor '%s' in %s, but that file has no "
                     "such tensor", index_path, ix.tensor[i], p->files[ix.shard[i]].path);
      goto out;
    }
out:
  cf_st_index_free(&ix);
  return rc;
}

static int cf__build_index(cf__priv_t *p) {
  size_t n = 0;
  for (size_t i = 0; i < p->n_files; i++) n += p->files[i].n_tensors;
  if (!(p->idx = calloc(n ? n : 1, sizeof *p->idx))) return cf_seterr(CF_ENOMEM, "tensor index");
  for (size_t i = 0; i < p->n_files; i++)
    for (size_t j = 0; j < p->files[i].n_tensors; j++)
      p->idx[p->n_idx++] = (cf__entry_t){&p->files[i].tensors[j], &p->files[i]};
  qsort(p->idx, p->n_idx, sizeof *p->idx, cf__entry_cmp);
  for (size_t i = 0; i + 1 < p->n_idx; i++)
    if (strcmp(p->idx[i].t->name, p->idx[i + 1].t->name) == 0)
      return cf_seterr(CF_EFORMAT, "tensor '%s' appears in both %s and %s", p->idx[i].t->name,
                       p->idx[i].f->path, p->idx[i + 1].f->path);
  return 0;
}

static int cf__own(cf__priv_t *p, void *buf) {
  if (p->n_owned == p->cap_owned) {
    size_t nc = p->cap_owned ? 2 * p->cap_owned : 64;
    void **no = realloc(p->owned, nc * sizeof *no);
    if (!no) return cf_seterr(CF_ENOMEM, "weight buffer list");
    p->owned = no;
    p->cap_owned = nc;
  }
  p->owned[p->n_owned++] = buf;
  return 0;
}

/* Resolves tensor `name` with the expected shape as fp32. F32 data aligned to 4 bytes is used
 * in place; anything else is converted (or copied) once into a 64-byte-aligned owned buffer.
 * optional: absent → *out = NULL, 0. */
static int cf__weight_nd(cf__priv_t *p, const char *name, int ndim, const int64_t *want,
                         int optional, const float **out) {
  *out = NULL;
  const cf__entry_t *e = cf__lookup(p, name);
  if (!e) {
    if (optional) return 0;
    return cf_seterr(CF_ENOTFOUND, "tensor '%s' is missing from %s%s", name,
                     p->n_files == 1 ? p->files[0].path : "every shard",
                     p->n_files == 1 ? "" : " of the index");
  }
  const cf_st_tensor_t *t = e->t;
  if (t->dtype != CF_DT_F32 && t->dtype != CF_DT_BF16 && t->dtype != CF_DT_F16)
    return cf_seterr(CF_EDTYPE, "%s: tensor '%s': dtype %s, expected F32, BF16 or F16",
                     e->f->path, name, cf_dtype_name(t->dtype));
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
  if (!ok) {
    char found[160], exp[64];
    cf_st_shape_str(found, sizeof found, t->ndim, t->shape);
    cf_st_shape_str(exp, sizeof exp, ndim, want);
    return cf_seterr(CF_ESHAPE, "%s: tensor '%s': shape %s, expected %s", e->f->path, name,
                     found, exp);
  }
  size_t n = (size_t)t->numel;
  p->weight_bytes += n * sizeof(float);
  if (t->dtype == CF_DT_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
    *out = t->data;
    return 0;
  }
  size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
  float *buf = aligned_alloc(64, bytes ? bytes : 64);
  if (!buf) return cf_seterr(CF_ENOMEM, "tensor '%s': %zu bytes", name, bytes);
  if (cf__own(p, buf)) { free(buf); return CF_ENOMEM; }
  if (t->dtype == CF_DT_BF16) cf_bf16_to_f32(t->data, buf, n);
  else if (t->dtype == CF_DT_F16) cf_f16_to_f32(t->data, buf, n);
  else memcpy(buf, t->data, n * sizeof(float));
  *out = buf;
  return 0;
}

static int cf__weight(cf__priv_t *p, const char *name, int ndim, int64_t d0, int64_t d1,
                      int optional, const float **out) {
  const int64_t want[2] = {d0, d1};
  return cf__weight_nd(p, name, ndim, want, optional, out);
}

/* Layer weight "<prefix>layers.<l>.<suffix>". */
static int cf__lw(cf__priv_t *p, int l, const char *suffix, int ndim, int64_t d0, int64_t d1,
                  int optional, const float **out) {
  char name[256];
  snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, l, suffix);
  return cf__weight(p, name, ndim, d0, d1, optional, out);
}

static int cf__has_lw(const cf__priv_t *p, int l, const char *suffix) {
  char name[256];
  snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, l, suffix);
  return cf__lookup(p, name) != NULL;
}

/* A MoE layer's router and experts, in whichever layout the checkpoint holds:
 *   module "mlp" (qwen3_moe; mixtral in transformers 5) or "block_sparse_moe" (mixtral 4.x);
 *   router "<module>.gate.weight" [E][H];
 *   experts per-expert "<module>.experts.<e>.{gate,up,down}_proj.weight" (qwen3_moe) or
 *   ".w1/.w3/.w2.weight" (mixtral: w1 = gate, w3 = up, w2 = down), or stacked, as transformers
 *   5 holds them in memory: "<module>.experts.gate_up_proj" [E][2I][H] (gate rows, then up rows)
 *   and "<module>.experts.down_proj" [E][H][I] (with or without a ".weight" suffix).
 * Stacked experts are used in place: expert e's gate is rows [0, I) of slice e. */
static int cf__moe_layer(cf__priv_t *p, const cf_model_config_t *c, int l, cf_layer_weights_t *w) {
  int64_t H = c->hidden, I = c->moe_intermediate, E = c->n_experts;
  const char *mod = cf__has_lw(p, l, "block_sparse_moe.gate.weight") ? "block_sparse_moe" : "mlp";
  char suf[160];
  int rc;
  snprintf(suf, sizeof suf, "%s.gate.weight", mod);
  if ((rc = cf__lw(p, l, suf, 2, E, H, 0, &w->router))) return rc;
  const float **arr = calloc((size_t)E * 3, sizeof *arr);
  if (!arr || cf__own(p, (void *)arr)) {
    free(arr);
    return cf_seterr(CF_ENOMEM, "layer %d: expert table", l);
  }
  w->e_gate = arr;
  w->e_up = arr + E;
  w->e_down = arr + 2 * E;
  for (int dot = 0; dot < 2; dot++) {
    char gu[160], dn[160];
    snprintf(gu, sizeof gu, "%s.experts.gate_up_proj%s", mod, dot ? ".weight" : "");
    snprintf(dn, sizeof dn, "%s.experts.down_proj%s", mod, dot ? ".weight" : "");
    if (!cf__has_lw(p, l, gu)) continue;
    char name[256];
    const float *g, *d;
    const int64_t sgu[3] = {E, 2 * I, H}, sdn[3] = {E, H, I};
    snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, l, gu);
    if ((rc = cf__weight_nd(p, name, 3, sgu, 0, &g))) return rc;
    snprintf(name, sizeof name, "%slayers.%d.%s", p->prefix, l, dn);
    if ((rc = cf__weight_nd(p, name, 3, sdn, 0, &d))) return rc;
    for (int64_t e = 0; e < E; e++) {
      w->e_gate[e] = g + e * 2 * I * H;
      w->e_up[e] = g + e * 2 * I * H + I * H;
      w->e_down[e] = d + e * H * I;
    }
    return 0;
  }
  snprintf(suf, sizeof suf, "%s.experts.0.w1.weight", mod);
  int mix = cf__has_lw(p, l, suf);
  const char *ng = mix ? "w1" : "gate_proj", *nu = mix ? "w3" : "up_proj",
             *nd = mix ? "w2" : "down_proj";
  for (int e = 0; e < E; e++) {
    char sg[160], su[160], sd[160];
    snprintf(sg, sizeof sg, "%s.experts.%d.%s.weight", mod, e, ng);
    snprintf(su, sizeof su, "%s.experts.%d.%s.weight", mod, e, nu);
    snprintf(sd, sizeof sd, "%s.experts.%d.%s.weight", mod, e, nd);
    if ((rc = cf__lw(p, l, sg, 2, I, H, 0, &w->e_gate[e])) ||
        (rc = cf__lw(p, l, su, 2, I, H, 0, &w->e_up[e])) ||
        (rc = cf__lw(p, l, sd, 2, H, I, 0, &w->e_down[e])))
      return rc;
  }
  return 0;
}

static int cf__layer(cf__priv_t *p, const cf_model_config_t *c, int l, cf_layer_weights_t *w) {
  int64_t H = c->hidden, q = (int64_t)c->n_heads * c->head_dim,
          kv = (int64_t)c->n_kv_heads * c->head_dim, I = c->intermediate;
  int rc;
  if ((rc = cf__lw(p, l, "input_layernorm.weight", 1, H, 0, 0, &w->attn_norm)) ||
      (rc = cf__lw(p, l, "self_attn.q_proj.weight", 2, q, H, 0, &w->wq)) ||
      (rc = cf__lw(p, l, "self_attn.k_proj.weight", 2, kv, H, 0, &w->wk)) ||
      (rc = cf__lw(p, l, "self_attn.v_proj.weight", 2, kv, H, 0, &w->wv)) ||
      (rc = cf__lw(p, l, "self_attn.o_proj.weight", 2, H, q, 0, &w->wo)) ||
      (rc = cf__lw(p, l, "post_attention_layernorm.weight", 1, H, 0, 0, &w->mlp_norm)))
    return rc;
  if (c->layer_moe[l]) {
    if ((rc = cf__moe_layer(p, c, l, w))) return rc;
  } else if ((rc = cf__lw(p, l, "mlp.gate_proj.weight", 2, I, H, 0, &w->w_gate)) ||
             (rc = cf__lw(p, l, "mlp.up_proj.weight", 2, I, H, 0, &w->w_up)) ||
             (rc = cf__lw(p, l, "mlp.down_proj.weight", 2, H, I, 0, &w->w_down))) {
    return rc;
  }
  if (c->qkv_bias &&
      ((rc = cf__lw(p, l, "self_attn.q_proj.bias", 1, q, 0, 0, &w->bq)) ||
       (rc = cf__lw(p, l, "self_attn.k_proj.bias", 1, kv, 0, 0, &w->bk)) ||
       (rc = cf__lw(p, l, "self_attn.v_proj.bias", 1, kv, 0, 0, &w->bv))))
    return rc;
  if (c->o_bias && (rc = cf__lw(p, l, "self_attn.o_proj.bias", 1, H, 0, 0, &w->bo))) return rc;
  if (c->qk_norm &&
      ((rc = cf__lw(p, l, "self_attn.q_norm.weight", 1, c->head_dim, 0, 0, &w->q_norm)) ||
       (rc = cf__lw(p, l, "self_attn.k_norm.weight", 1, c->head_dim, 0, 0, &w->k_norm))))
    return rc;
  if (c->mlp_bias &&
      ((rc = cf__lw(p, l, "mlp.gate_proj.bias", 1, I, 0, 0, &w->b_gate)) ||
       (rc = cf__lw(p, l, "mlp.up_proj.bias", 1, I, 0, 0, &w->b_up)) ||
       (rc = cf__lw(p, l, "mlp.down_proj.bias", 1, H, 0, 0, &w->b_down))))
    return rc;
  return 0;
}

/* ------------------------------------------------------------------ fingerprint */

static void cf__h_i64(XXH3_state_t *s, int64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)v >> (8 * i));
  XXH3_128bits_update(s, b, 8);
}

static void cf__h_f64(XXH3_state_t *s, double v) {
  int64_t bits;
  if (v == 0) v = 0; /* -0.0 and 0.0 hash alike */
  memcpy(&bits, &v, 8);
  cf__h_i64(s, bits);
}

void cf_model_fingerprint(const cf_model_config_t *c, size_t n, const char *const *names,
                          const cf_dtype_t *dtypes, const int *ndims,
                          const int64_t *const *shapes, uint8_t out[16]) {
  XXH3_state_t st; /* on the stack: no allocation, so no failure path */
  XXH3_128bits_reset(&st);
  static const char tag[] = "cacheflow-model-v1";
  XXH3_128bits_update(&st, tag, sizeof tag);
  const int64_t ints[] = {c->arch, c->n_layers, c->hidden, c->n_heads, c->n_kv_heads,
                          c->head_dim, c->intermediate, c->vocab};
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) cf__h_i64(&st, ints[i]);
  cf__h_f64(&st, c->rms_eps);
  cf__h_i64(&st, c->rope_kind);
  cf__h_f64(&st, c->rope_theta);
  if (c->rope_kind == CF_ROPE_LLAMA3) {
    cf__h_f64(&st, c->rope_factor);
    cf__h_f64(&st, c->rope_low_freq_factor);
    cf__h_f64(&st, c->rope_high_freq_factor);
    cf__h_i64(&st, c->rope_orig_max_pos);
  } else if (c->rope_kind == CF_ROPE_LINEAR) {
    cf__h_f64(&st, c->rope_factor);
  } else if (c->rope_kind == CF_ROPE_YARN) {
    const double y[] = {c->rope_factor, c->rope_beta_fast, c->rope_beta_slow, c->rope_attn_factor};
    for (size_t i = 0; i < sizeof y / sizeof y[0]; i++) cf__h_f64(&st, y[i]);
    cf__h_i64(&st, c->rope_orig_max_pos);
    cf__h_i64(&st, c->rope_truncate);
  }
  const int64_t flags[] = {c->qkv_bias, c->o_bias, c->mlp_bias, c->qk_norm, c->tie_embeddings,
                           c->dtype};
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) cf__h_i64(&st, flags[i]);
  if (c->n_experts > 0 || c->sliding_window > 0) { /* absent for dense models: v1 unchanged */
    static const char mw[] = "moe-window";
    XXH3_128bits_update(&st, mw, sizeof mw);
    const int64_t moe[] = {c->n_experts, c->top_k, c->moe_intermediate, c->norm_topk,
                           c->sliding_window};
    for (size_t i = 0; i < sizeof moe / sizeof moe[0]; i++) cf__h_i64(&st, moe[i]);
    int nl = c->n_layers < CF_MODEL_MAX_LAYERS ? c->n_layers : CF_MODEL_MAX_LAYERS;
    for (int l = 0; l < nl; l++)
      cf__h_i64(&st, (int64_t)(c->layer_moe[l] ? 1 : 0) | (c->layer_sliding[l] ? 2 : 0));
  }
  cf__h_i64(&st, (int64_t)n);
  for (size_t i = 0; i < n; i++) {
    size_t len = strlen(names[i]);
    cf__h_i64(&st, (int64_t)len); /* length first: ("ab","c") and ("a","bc") differ */
    XXH3_128bits_update(&st, names[i], len);
    cf__h_i64(&st, dtypes[i]);
    cf__h_i64(&st, ndims[i]);
    for (int d = 0; d < ndims[i]; d++) cf__h_i64(&st, shapes[i][d]);
  }
  XXH128_canonical_t canon;
  XXH128_canonicalFromHash(&canon, XXH3_128bits_digest(&st));
  memcpy(out, canon.digest, 16);
}

char *cf_model_fingerprint_hex(const uint8_t fp[16], char out[33]) { return cf_hex(fp, 16, out); }

static int cf__fingerprint(cf_model_t *m, const cf__priv_t *p) {
  size_t n = p->n_idx;
  const char **names = malloc((n + 1) * sizeof *names);
  cf_dtype_t *dt = malloc((n + 1) * sizeof *dt);
  int *nd = malloc((n + 1) * sizeof *nd);
  const int64_t **sh = malloc((n + 1) * sizeof *sh);
  int rc = 0;
  if (!names || !dt || !nd || !sh) {
    rc = cf_seterr(CF_ENOMEM, "fingerprint of %zu tensors", n);
  } else {
    for (size_t i = 0; i < n; i++) {
      names[i] = p->idx[i].t->name;
      dt[i] = p->idx[i].t->dtype;
      nd[i] = p->idx[i].t->ndim;
      sh[i] = p->idx[i].t->shape;
    }
    cf_model_fingerprint(&m->cfg, n, names, dt, nd, sh, m->fingerprint);
  }
  free(names);
  free(dt);
  free(nd);
  free(sh);
  return rc;
}

const cf_st_tensor_t *cf_model_find_tensor(const cf_model_t *m, const char *name) {
  const cf__entry_t *e = m && m->priv ? cf__lookup(m->priv, name) : NULL;
  return e ? e->t : NULL;
}

/* ------------------------------------------------------------------ load / free */

static int cf__load(cf_model_t *m, cf__priv_t *p, const char *dir) {
  char *cfg_path = cf__join(dir, "config.json"), *single = cf__join(dir, "model.safetensors"),
       *index = cf__join(dir, "model.safetensors.index.json"), *text = NULL;
  size_t len;
  int rc = 0;
  if (!cfg_path || !single || !index) { rc = cf_seterr(CF_ENOMEM, "paths"); goto out; }
  if ((rc = cf__slurp(cfg_path, &text, &len))) goto out;
  if ((rc = cf_hfconfig_parse(text, len, cfg_path, &m->cfg))) goto out;

  /* transformers prefers the single file when both exist; so do we. */
  if (cf__exists(single)) {
    if (!(p->files = calloc(1, sizeof *p->files))) { rc = cf_seterr(CF_ENOMEM, "files"); goto out; }
    rc = cf__open_file(p, single);
  } else if (cf__exists(index)) {
    rc = cf__open_sharded(p, dir, index);
  } else {
    rc = cf_seterr(CF_ENOENT, "%s: no model.safetensors and no model.safetensors.index.json",
                   dir);
  }
  if (rc || (rc = cf__build_index(p)) || (rc = cf__fingerprint(m, p))) goto out;

  const cf_model_config_t *c = &m->cfg;
  p->prefix = "model.";
  if (!cf__lookup(p, "model.embed_tokens.weight") && cf__lookup(p, "embed_tokens.weight"))
    p->prefix = "";
  char name[64];
  snprintf(name, sizeof name, "%sembed_tokens.weight", p->prefix);
  if ((rc = cf__weight(p, name, 2, c->vocab, c->hidden, 0, &m->embed))) goto out;
  snprintf(name, sizeof name, "%snorm.weight", p->prefix);
  if ((rc = cf__weight(p, name, 1, c->hidden, 0, 0, &m->final_norm))) goto out;
  /* Tied: transformers uses the embedding even if an lm_head tensor is stored. */
  if (c->tie_embeddings) m->lm_head = m->embed;
  else if ((rc = cf__weight(p, "lm_head.weight", 2, c->vocab, c->hidden, 1, &m->lm_head))) goto out;
  if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) {
    rc = cf_seterr(CF_ENOMEM, "%d layers", c->n_layers);
    goto out;
  }
  for (int l = 0; l < c->n_layers && !rc; l++) rc = cf__layer(p, c, l, &m->layers[l]);
out:
  free(text);
  free(cfg_path);
  free(single);
  free(index);
  return rc;
}

int cf_model_load(const char *dir, cf_model_t **out) {
  *out = NULL;
  cf_model_t *m = calloc(1, sizeof *m);
  cf__priv_t *p = calloc(1, sizeof *p);
  if (!m || !p || !(m->dir = strdup(dir))) {
    free(m ? m->dir : NULL);
    free(m);
    free(p);
    return cf_seterr(CF_ENOMEM, "%s: model", dir);
  }
  m->priv = p;
  int rc = cf__load(m, p, dir);
  if (rc) {
    cf_model_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

static void cf__priv_free(cf__priv_t *p) {
  if (!p) return;
  for (size_t i = 0; i < p->n_owned; i++) free(p->owned[i]);
  free(p->owned);
  for (size_t i = 0; i < p->n_files; i++) cf_st_close(&p->files[i]);
  free(p->files);
  free(p->idx);
  free(p);
}

void cf_model_free(cf_model_t *m) {
  if (!m) return;
  cf__priv_free(m->priv);
  free(m->layers);
  free(m->dir);
  free(m);
}

size_t cf_model_weight_bytes(const cf_model_t *m) {
  const cf__priv_t *p = m ? m->priv : NULL;
  return p ? p->weight_bytes : 0;
}

size_t cf_model_release_weights(cf_model_t *m) {
  size_t b = cf_model_weight_bytes(m);
  cf__priv_free(m->priv);
  m->priv = NULL;  /* cf_model_weight_bytes: 0; cf_model_find_tensor: NULL */
  free(m->layers);
  m->layers = NULL;
  m->embed = m->final_norm = m->lm_head = NULL;
  return b;
}

int cf_model_reload_weights(cf_model_t *m) {
  if (m->priv) return 0;
  cf_model_t *n;
  int rc = cf_model_load(m->dir, &n);
  if (rc) return rc;
  if (memcmp(n->fingerprint, m->fingerprint, sizeof m->fingerprint)) {
    cf_model_free(n);
    return cf_seterr(CF_EMISMATCH, "%s: the checkpoint on disk is no longer the model this process serves "
                     "(fingerprint changed)", m->dir);
  }
  /* the fingerprint pins the config: only the weights move over */
  m->priv = n->priv;
  m->layers = n->layers;
  m->embed = n->embed;
  m->final_norm = n->final_norm;
  m->lm_head = n->lm_head;
  n->priv = NULL;
  n->layers = NULL;
  cf_model_free(n);
  return 0;
}

size_t cf_model_kv_row_floats(const cf_model_config_t *c) {
  return (size_t)c->n_kv_heads * (size_t)c->head_dim;
}

const char *cf_arch_name(cf_arch_t a) {
  static const char *const n[] = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "mixtral"};
  return (unsigned)a < sizeof n / sizeof n[0] ? n[a] : "?";
}
