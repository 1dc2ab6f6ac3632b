/* cacheflowctl store — operator commands for a store directory.
 *
 *   store verify --dir DIR [--remote URL]
 *       fsck: replay the journal read-only, read every cell and check its checksum; prints
 *       the store's geometry and KV dtype, then "chunks ok N, damaged N, torn-tail N". Exit 0
 *       only when nothing is damaged (a torn journal tail after a crash is not damage), 1 when
 *       something is or on error. With --remote (a remote_url; the password, if any, from
 *       $CACHEFLOW_REMOTE_PASSWORD, never the command line): also scan the remote tier for this
 *       store's model, chunk size and dtype (the key prefix), fetch every chunk's cells and check
 *       each value's header and checksum: "remote ...: chunks ok N, damaged N" (a chunk with a
 *       missing or corrupt cell is damaged: it would be recomputed, never served).
 *   store fill --dir DIR --model DIR --prefixes N --tokens T --seed S [--chunk C]
 *              [--ssd-bytes SIZE] [--backend cpu|auto] [--threads N] [--kv-dtype f32|bf16|f16]
 *       compute the KV of N random T-token prefixes with the model engine (fp32) and save every
 *       chunk (a partial last chunk too) durably in the store's KV dtype (default f32; bf16/f16
 *       rounded to nearest even, as the daemon stores computed cells), printing progress. For
 *       warm-up and benchmarks; the daemon serving the store needs the same kv_dtype. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl/cf_ctl.h"
#include "exec/cf_cellsrc_store.h"
#include "model/cf_backend.h"
#include "model/cf_model.h"
#include "store/cf_remote.h"
#include "store/cf_store.h"
#include "util/cf_err.h"

#define CMD "store"

static double cf__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* "123", "64K", "256M", "4G" → bytes. Returns 0 or -1. */
static int cf__parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || s[0] == '-') return -1;
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
  if (*end == 'i' && mul > 1) end++;
  if (*end == 'B') end++;
  if (*end || v == 0 || v > UINT64_MAX / mul) return -1;
  *out = v * mul;
  return 0;
}

/* ---------------------------------------------------------------- verify */

static int cf__verify(int argc, char **argv) {
  static const struct option opts[] = {{"dir", required_argument, 0, 'd'}, {"remote", required_argument, 0, 'r'},
                                       {0, 0, 0, 0}};
  const char *dir = NULL, *remote = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c == 'd') dir = optarg;
    else if (c == 'r') remote = optarg;
    else {
      fprintf(stderr, "usage: cacheflowctl store verify --dir DIR [--remote URL]\n");
      return 2;
    }
  }
  if (!dir || optind < argc) {
    fprintf(stderr, "usage: cacheflowctl store verify --dir DIR [--remote URL]\n");
    return 2;
  }
  cf_store_verify_t v;
  int rc = cf_store_verify_dir(dir, &v);
  if (rc) return cf_ctl_fail(CMD " verify", "%s: %s", cf_strerror(rc), cf_errmsg());
  uint64_t damaged = v.chunks_damaged + v.journal_damaged;
  printf("store %s: kv dtype %s (%u bytes), chunk %u tokens, %u layers x %u kv heads x %u\n", dir,
         cf_store_dtype_name(v.geom.dtype, v.geom.dtype_size), v.geom.dtype_size, v.geom.chunk_tokens,
         v.geom.n_layers, v.geom.n_kv_heads, v.geom.head_dim);
  printf("chunks ok %llu, damaged %llu, torn-tail %llu\n", (unsigned long long)v.chunks_ok,
         (unsigned long long)damaged, (unsigned long long)v.torn_tail);
  printf("cells checked %llu; damaged chunks %llu, damaged journal records %llu\n",
         (unsigned long long)v.cells_checked, (unsigned long long)v.chunks_damaged,
         (unsigned long long)v.journal_damaged);
  if (damaged) printf("first damage: %s\n", v.first_damage);
  if (remote) {
    cf_remote_config_t rc_;
    cf_remote_config_default(&rc_);
    rc_.url = remote;
    rc_.password = getenv("CACHEFLOW_REMOTE_PASSWORD");
    rc_.writer = 0;
    rc_.pool = 2;
    cf_remote_t *r;
    if ((rc = cf_remote_open(&rc_, &v.geom, &r))) return cf_ctl_fail(CMD " verify", "--remote: %s", cf_errmsg());
    cf_remote_verify_t rv;
    rc = cf_remote_verify(r, &rv);
    char url[512];
    snprintf(url, sizeof url, "%s", cf_remote_url(r));
    cf_remote_close(r);
    if (rc) return cf_ctl_fail(CMD " verify", "remote %s: %s: %s", url, cf_strerror(rc), cf_errmsg());
    printf("remote %s: chunks ok %llu, damaged %llu\n", url, (unsigned long long)rv.chunks_ok,
           (unsigned long long)rv.chunks_damaged);
    printf("remote cells checked %llu; missing %llu, corrupt %llu\n", (unsigned long long)rv.cells_checked,
           (unsigned long long)rv.cells_missing, (unsigned long long)rv.cells_corrupt);
    if (rv.chunks_damaged) {
      printf("remote first damage: %s\n", rv.first_damage);
      damaged += rv.chunks_damaged;
    }
  }
  return damaged ? 1 : 0;
}

/* ---------------------------------------------------------------- fill */

static uint64_t cf__mix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

#define CF__FILL_USAGE                                                                        \
  "usage: cacheflowctl store fill --dir DIR --model DIR --prefixes N --tokens T --seed S "     \
  "[--chunk C] [--ssd-bytes SIZE] [--backend cpu|auto] [--threads N] [--kv-dtype f32|bf16|f16]\n"

/* What `store fill` was asked for. */
typedef struct {
  const char *dir, *mdir, *backend;
  unsigned long long prefixes, tokens, seed, chunk, threads;
  uint64_t ssd_bytes; /* 0: sized from the arguments */
  cf_dtype_t kvdt;
} cf__fill_args_t;

/* What `store fill` holds while it runs: the engine, the store and the per-prefix buffers. */
typedef struct {
  cf_model_t *m;
  cf_backend_t *be;
  cf_store_t *st;
  cf_store_geom_t g;
  size_t cb, nchunks, row; /* cell bytes; chunks per prefix; floats per token per K (or V) */
  float **k, **v;
  int32_t *tok;
  cf_store_key_t *keys;
  uint8_t *cellbuf;
  const void **cells;
  uint64_t saved, existed;
  double t_compute, t_save;
} cf__fill_t;

/* Parse the options into *a. Returns 0, or the exit code (2: usage, 1: a bad value, named). */
static int cf__fill_parse(int argc, char **argv, cf__fill_args_t *a) {
  static const struct option opts[] = {
      {"dir", required_argument, 0, 'd'},      {"model", required_argument, 0, 'm'},
      {"prefixes", required_argument, 0, 'p'}, {"tokens", required_argument, 0, 't'},
      {"seed", required_argument, 0, 's'},     {"chunk", required_argument, 0, 'c'},
      {"ssd-bytes", required_argument, 0, 'b'}, {"backend", required_argument, 0, 'e'},
      {"threads", required_argument, 0, 'j'},  {"kv-dtype", required_argument, 0, 'k'},
      {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->kvdt = CF_DT_F32;
  a->backend = "cpu";
  a->chunk = 256;
  int have_p = 0, have_t = 0, have_s = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 'd': a->dir = optarg; break;
      case 'm': a->mdir = optarg; break;
      case 'e': a->backend = optarg; break;
      case 'p':
        if (cf_ctl_parse_u64(optarg, 1000000, &a->prefixes) || !a->prefixes)
          return cf_ctl_fail(CMD " fill", "--prefixes '%s': expected an integer in 1..1000000", optarg);
        have_p = 1;
        break;
      case 't':
        if (cf_ctl_parse_u64(optarg, 1 << 20, &a->tokens) || !a->tokens)
          return cf_ctl_fail(CMD " fill", "--tokens '%s': expected an integer in 1..1048576", optarg);
        have_t = 1;
        break;
      case 's':
        if (cf_ctl_parse_u64(optarg, UINT64_MAX, &a->seed))
          return cf_ctl_fail(CMD " fill", "--seed '%s': expected a non-negative integer", optarg);
        have_s = 1;
        break;
      case 'c':
        if (cf_ctl_parse_u64(optarg, 65536, &a->chunk) || !a->chunk)
          return cf_ctl_fail(CMD " fill", "--chunk '%s': expected an integer in 1..65536", optarg);
        break;
      case 'j':
        if (cf_ctl_parse_u64(optarg, 256, &a->threads))
          return cf_ctl_fail(CMD " fill", "--threads '%s': expected 0..256", optarg);
        break;
      case 'k':
        a->kvdt = !strcmp(optarg, "f32") ? CF_DT_F32 : !strcmp(optarg, "bf16") ? CF_DT_BF16
                : !strcmp(optarg, "f16") ? CF_DT_F16 : CF_DT__COUNT;
        if (a->kvdt == CF_DT__COUNT) return cf_ctl_fail(CMD " fill", "--kv-dtype '%s': expected f32, bf16 or f16", optarg);
        break;
      case 'b':
        if (cf__parse_size(optarg, &a->ssd_bytes))
          return cf_ctl_fail(CMD " fill", "--ssd-bytes '%s': expected a size like 512M or 4G", optarg);
        break;
      default:
        fputs(CF__FILL_USAGE, stderr);
        return 2;
    }
  }
  if (!a->dir || !a->mdir || !have_p || !have_t || !have_s || optind < argc) {
    fputs(CF__FILL_USAGE, stderr);
    return 2;
  }
  return 0;
}

/* Load the model and its engine, derive the store's geometry and open the store. 0 or 1. */
static int cf__fill_open(const cf__fill_args_t *a, cf__fill_t *f) {
  int rc = cf_model_load(a->mdir, &f->m);
  if (rc) return cf_ctl_fail(CMD " fill", "--model %s: %s: %s", a->mdir, cf_strerror(rc), cf_errmsg());
  rc = !strcmp(a->backend, "cpu") ? cf_backend_cpu_create(f->m, (int)a->threads, &f->be)
                                  : cf_backend_create(a->backend, f->m, &f->be);
  if (rc) return cf_ctl_fail(CMD " fill", "--backend %s: %s: %s", a->backend, cf_strerror(rc), cf_errmsg());
  const cf_model_config_t *mc = &f->m->cfg;
  if (a->tokens > (unsigned long long)mc->max_pos && mc->max_pos > 0)
    return cf_ctl_fail(CMD " fill", "--tokens %llu exceeds the model's max_position_embeddings %d",
                       a->tokens, mc->max_pos);
  /* the engine computes fp32 KV; the store keeps --kv-dtype (recorded in its header) */
  cf_store_geom_t *g = &f->g;
  memset(g, 0, sizeof *g);
  memcpy(g->fingerprint, f->m->fingerprint, 16);
  /* the store refuses KV of other weights than it holds (and records these for the daemon) */
  if ((rc = cf_model_weights_digest(a->mdir, g->weights)))
    return cf_ctl_fail(CMD " fill", "--model %s: weights digest: %s: %s", a->mdir, cf_strerror(rc), cf_errmsg());
  cf_exec_geom_dtype(g, a->kvdt);
  g->chunk_tokens = (uint32_t)a->chunk;
  g->n_layers = (uint32_t)mc->n_layers;
  g->n_kv_heads = (uint32_t)mc->n_kv_heads;
  g->head_dim = (uint32_t)mc->head_dim;
  f->cb = cf_store_cell_bytes(g);
  size_t stride = (f->cb + 4095) / 4096 * 4096;
  f->nchunks = (a->tokens + a->chunk - 1) / a->chunk;
  uint64_t ssd_bytes = a->ssd_bytes;
  if (!ssd_bytes)
    ssd_bytes = (uint64_t)a->prefixes * f->nchunks * stride * (uint64_t)mc->n_layers + (64ull << 20);
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.cpu_bytes = 0; /* straight to SSD: fill is a bulk writer, no point caching in RAM */
  cfg.ssd_bytes = ssd_bytes;
  rc = cf_store_open(a->dir, g, &cfg, &f->st);
  if (rc) return cf_ctl_fail(CMD " fill", "%s: %s", cf_strerror(rc), cf_errmsg());
  return 0;
}

/* Buffers for one prefix: its tokens, keys, fp32 K/V per layer and one chunk's cells. 0 or 1. */
static int cf__fill_alloc(const cf__fill_args_t *a, cf__fill_t *f) {
  const int L = f->m->cfg.n_layers;
  f->row = (size_t)f->m->cfg.n_kv_heads * f->m->cfg.head_dim;
  f->k = calloc((size_t)L, sizeof *f->k);
  f->v = calloc((size_t)L, sizeof *f->v);
  f->tok = malloc(sizeof(int32_t) * a->tokens);
  f->keys = malloc(sizeof *f->keys * f->nchunks);
  f->cellbuf = malloc(f->cb * (size_t)L);
  f->cells = malloc(sizeof *f->cells * (size_t)L);
  if (!f->k || !f->v || !f->tok || !f->keys || !f->cellbuf || !f->cells)
    return cf_ctl_fail(CMD " fill", "out of memory");
  for (int l = 0; l < L; l++) {
    f->k[l] = malloc(sizeof(float) * f->row * a->tokens);
    f->v[l] = malloc(sizeof(float) * f->row * a->tokens);
    if (!f->k[l] || !f->v[l])
      return cf_ctl_fail(CMD " fill", "out of memory for the KV of %llu tokens", a->tokens);
  }
  return 0;
}

/* Prefix p: random tokens from *rng, the engine's KV, every chunk saved, one flush. 0 or 1. */
static int cf__fill_prefix(const cf__fill_args_t *a, cf__fill_t *f, unsigned long long p,
                           uint64_t *rng) {
  const cf_model_config_t *mc = &f->m->cfg;
  const int L = mc->n_layers;
  const size_t chunk = a->chunk, tokens = a->tokens, row = f->row;
  for (size_t i = 0; i < tokens; i++) f->tok[i] = (int32_t)(cf__mix(rng) % (uint64_t)mc->vocab);
  double t0 = cf__now();
  cf_fwd_args_t fa = {.l0 = 0, .l1 = L, .t0 = 0, .t1 = (int)tokens, .tokens = f->tok,
                      .k = f->k, .v = f->v, .hidden_out = NULL};
  int rc = cf_backend_forward(f->be, &fa);
  if (rc) return cf_ctl_fail(CMD " fill", "prefix %llu: forward: %s: %s", p, cf_strerror(rc), cf_errmsg());
  double t1 = cf__now();
  size_t nk = cf_store_chain_keys_partial(f->g.fingerprint, f->tok, tokens, (uint32_t)chunk, f->keys);
  for (size_t ci = 0; ci < nk; ci++) {
    size_t first = ci * chunk;
    uint32_t nt = (uint32_t)(tokens - first < chunk ? tokens - first : chunk);
    size_t cbn = cf_store_cell_bytes_n(&f->g, nt);
    for (int l = 0; l < L; l++) {
      /* cell layout [2][nt][n_kv][hd]: the chunk's K rows, then its V rows */
      uint8_t *cell = f->cellbuf + (size_t)l * cbn;
      cf_dtype_from_f32(a->kvdt, f->k[l] + first * row, cell, row * nt);
      cf_dtype_from_f32(a->kvdt, f->v[l] + first * row, cell + cbn / 2, row * nt);
      f->cells[l] = cell;
    }
    rc = cf_store_save(f->st, &f->keys[ci], nt, f->cells, 0);
    if (rc == CF_EEXIST) { f->existed++; continue; }
    if (rc) return cf_ctl_fail(CMD " fill", "prefix %llu chunk %zu: save: %s: %s", p, ci, cf_strerror(rc), cf_errmsg());
    f->saved++;
  }
  /* one group commit per prefix: data, then journal, fdatasync'ed */
  rc = cf_store_flush(f->st);
  if (rc) return cf_ctl_fail(CMD " fill", "prefix %llu: flush: %s: %s", p, cf_strerror(rc), cf_errmsg());
  double t2 = cf__now();
  f->t_compute += t1 - t0;
  f->t_save += t2 - t1;
  printf("prefix %llu/%llu: %zu tokens, %zu chunks durable (compute %.2f s, save %.3f s)\n", p + 1,
         a->prefixes, tokens, nk, t1 - t0, t2 - t1);
  fflush(stdout);
  return 0;
}

static void cf__fill_free(cf__fill_t *f) {
  int L = f->m ? f->m->cfg.n_layers : 0;
  if (f->k) for (int l = 0; l < L; l++) free(f->k[l]);
  if (f->v) for (int l = 0; l < L; l++) free(f->v[l]);
  free(f->k); free(f->v); free(f->tok); free(f->keys); free(f->cellbuf); free(f->cells);
  cf_store_close(f->st);
  if (f->be) cf_backend_free(f->be);
  cf_model_free(f->m);
}

static int cf__fill(int argc, char **argv) {
  cf__fill_args_t a;
  int ret = cf__fill_parse(argc, argv, &a);
  if (ret) return ret;
  cf__fill_t f;
  memset(&f, 0, sizeof f);
  ret = 1;
  if (cf__fill_open(&a, &f) || cf__fill_alloc(&a, &f)) goto out;
  const int L = f.m->cfg.n_layers;
  printf("fill: model %s (%d layers, %d kv heads x %d), chunk %llu tokens, cell %zu bytes (%s), "
         "backend %s, store %s\n", a.mdir, L, f.m->cfg.n_kv_heads, f.m->cfg.head_dim, a.chunk, f.cb,
         cf_dtype_name(a.kvdt), f.be->name, a.dir);
  uint64_t rng = a.seed;
  double t_start = cf__now();
  for (unsigned long long p = 0; p < a.prefixes; p++)
    if (cf__fill_prefix(&a, &f, p, &rng)) goto out;
  cf_store_stats_t s;
  cf_store_get_stats(f.st, &s);
  printf("fill done: %llu chunks saved, %llu already present, %llu chunks in the store "
         "(%.1f MiB), compute %.2f s, save %.2f s (%.0f MB/s), total %.2f s\n",
         (unsigned long long)f.saved, (unsigned long long)f.existed,
         (unsigned long long)s.ssd_chunks, s.ssd_bytes_used / 1048576.0, f.t_compute, f.t_save,
         f.t_save > 0 ? f.saved * (double)f.cb * L / f.t_save / 1e6 : 0.0, cf__now() - t_start);
  ret = 0;
out:
  cf__fill_free(&f);
  return ret;
}

static int cf__store_main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "verify")) return cf__verify(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "fill")) return cf__fill(argc - 1, argv + 1);
  fprintf(stderr, "usage: cacheflowctl store verify --dir DIR [--remote URL]\n       %s",
          CF__FILL_USAGE + strlen("usage: "));
  return 2;
}

static const cf_ctl_cmd_t cf__store = {
    "store", "verify --dir DIR [--remote URL] | fill --dir DIR --model DIR --prefixes N --tokens T --seed S",
    "check a store directory (fsck) or fill it with the KV of random prefixes", cf__store_main};
CF_CTL_COMMAND(cf__store)
