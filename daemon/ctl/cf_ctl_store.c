/* cacheflowctl store — operator commands for a store directory.
 *
 *   store verify --dir DIR
 *       fsck: replay the journal read-only, read every cell and check its checksum; prints
 *       the store's geometry and KV dtype, then "chunks ok N, damaged N, torn-tail N". Exit 0
 *       only when nothing is damaged (a torn journal tail after a crash is not damage), 1 when
 *       something is or on error.
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
  static const struct option opts[] = {{"dir", required_argument, 0, 'd'}, {0, 0, 0, 0}};
  const char *dir = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c == 'd') dir = optarg;
    else {
      fprintf(stderr, "usage: cacheflowctl store verify --dir DIR\n");
      return 2;
    }
  }
  if (!dir || optind < argc) {
    fprintf(stderr, "usage: cacheflowctl store verify --dir DIR\n");
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
  if (damaged) {
    printf("first damage: %s\n", v.first_damage);
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- fill */

static uint64_t cf__mix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static int cf__fill(int argc, char **argv) {
  static const struct option opts[] = {
      {"dir", required_argument, 0, 'd'},      {"model", required_argument, 0, 'm'},
      {"prefixes", required_argument, 0, 'p'}, {"tokens", required_argument, 0, 't'},
      {"seed", required_argument, 0, 's'},     {"chunk", required_argument, 0, 'c'},
      {"ssd-bytes", required_argument, 0, 'b'}, {"backend", required_argument, 0, 'e'},
      {"threads", required_argument, 0, 'j'},  {"kv-dtype", required_argument, 0, 'k'},
      {0, 0, 0, 0}};
  cf_dtype_t kvdt = CF_DT_F32;
  const char *dir = NULL, *mdir = NULL, *backend = "cpu";
  unsigned long long prefixes = 0, tokens = 0, seed = 0, chunk = 256, threads = 0;
  int have_p = 0, have_t = 0, have_s = 0;
  uint64_t ssd_bytes = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
      case 'd': dir = optarg; break;
      case 'm': mdir = optarg; break;
      case 'e': backend = optarg; break;
      case 'p':
        if (cf_ctl_parse_u64(optarg, 1000000, &prefixes) || !prefixes)
          return cf_ctl_fail(CMD " fill", "--prefixes '%s': expected an integer in 1..1000000", optarg);
        have_p = 1;
        break;
      case 't':
        if (cf_ctl_parse_u64(optarg, 1 << 20, &tokens) || !tokens)
          return cf_ctl_fail(CMD " fill", "--tokens '%s': expected an integer in 1..1048576", optarg);
        have_t = 1;
        break;
      case 's':
        if (cf_ctl_parse_u64(optarg, UINT64_MAX, &seed))
          return cf_ctl_fail(CMD " fill", "--seed '%s': expected a non-negative integer", optarg);
        have_s = 1;
        break;
      case 'c':
        if (cf_ctl_parse_u64(optarg, 65536, &chunk) || !chunk)
          return cf_ctl_fail(CMD " fill", "--chunk '%s': expected an integer in 1..65536", optarg);
        break;
      case 'j':
        if (cf_ctl_parse_u64(optarg, 256, &threads))
          return cf_ctl_fail(CMD " fill", "--threads '%s': expected 0..256", optarg);
        break;
      case 'k':
        kvdt = !strcmp(optarg, "f32") ? CF_DT_F32 : !strcmp(optarg, "bf16") ? CF_DT_BF16
             : !strcmp(optarg, "f16") ? CF_DT_F16 : CF_DT__COUNT;
        if (kvdt == CF_DT__COUNT) return cf_ctl_fail(CMD " fill", "--kv-dtype '%s': expected f32, bf16 or f16", optarg);
        break;
      case 'b':
        if (cf__parse_size(optarg, &ssd_bytes))
          return cf_ctl_fail(CMD " fill", "--ssd-bytes '%s': expected a size like 512M or 4G", optarg);
        break;
      default:
        fprintf(stderr, "usage: cacheflowctl store fill --dir DIR --model DIR --prefixes N "
                        "--tokens T --seed S [--chunk C] [--ssd-bytes SIZE] [--backend cpu|auto] "
                        "[--threads N] [--kv-dtype f32|bf16|f16]\n");
        return 2;
    }
  }
  if (!dir || !mdir || !have_p || !have_t || !have_s || optind < argc) {
    fprintf(stderr, "usage: cacheflowctl store fill --dir DIR --model DIR --prefixes N --tokens T "
                    "--seed S [--chunk C] [--ssd-bytes SIZE] [--backend cpu|auto] [--threads N] [--kv-dtype f32|bf16|f16]\n");
    return 2;
  }

  int ret = 1;
  cf_model_t *m = NULL;
  cf_backend_t *be = NULL;
  cf_store_t *st = NULL;
  float **k = NULL, **v = NULL;
  int32_t *tok = NULL;
  cf_store_key_t *keys = NULL;
  uint8_t *cellbuf = NULL;
  const void **cells = NULL;
  int rc = cf_model_load(mdir, &m);
  if (rc) { cf_ctl_fail(CMD " fill", "--model %s: %s: %s", mdir, cf_strerror(rc), cf_errmsg()); goto out; }
  rc = !strcmp(backend, "cpu") ? cf_backend_cpu_create(m, (int)threads, &be)
                               : cf_backend_create(backend, m, &be);
  if (rc) { cf_ctl_fail(CMD " fill", "--backend %s: %s: %s", backend, cf_strerror(rc), cf_errmsg()); goto out; }
  const cf_model_config_t *mc = &m->cfg;
  const int L = mc->n_layers, nkv = mc->n_kv_heads, hd = mc->head_dim;
  if (tokens > (unsigned long long)mc->max_pos && mc->max_pos > 0) {
    cf_ctl_fail(CMD " fill", "--tokens %llu exceeds the model's max_position_embeddings %d", tokens,
                mc->max_pos);
    goto out;
  }
  /* the engine computes fp32 KV; the store keeps --kv-dtype (recorded in its header) */
  cf_store_geom_t g;
  memset(&g, 0, sizeof g);
  memcpy(g.fingerprint, m->fingerprint, 16);
  cf_exec_geom_dtype(&g, kvdt);
  g.chunk_tokens = (uint32_t)chunk;
  g.n_layers = (uint32_t)L;
  g.n_kv_heads = (uint32_t)nkv;
  g.head_dim = (uint32_t)hd;
  size_t cb = cf_store_cell_bytes(&g);
  size_t stride = (cb + 4095) / 4096 * 4096;
  size_t nchunks = (tokens + chunk - 1) / chunk;
  if (!ssd_bytes) ssd_bytes = (uint64_t)prefixes * nchunks * stride * (uint64_t)L + (64ull << 20);
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.cpu_bytes = 0; /* straight to SSD: fill is a bulk writer, no point caching in RAM */
  cfg.ssd_bytes = ssd_bytes;
  rc = cf_store_open(dir, &g, &cfg, &st);
  if (rc) { cf_ctl_fail(CMD " fill", "%s: %s", cf_strerror(rc), cf_errmsg()); goto out; }

  size_t row = (size_t)nkv * hd; /* floats per token per K (or V) */
  k = calloc((size_t)L, sizeof *k);
  v = calloc((size_t)L, sizeof *v);
  tok = malloc(sizeof(int32_t) * tokens);
  keys = malloc(sizeof *keys * nchunks);
  cellbuf = malloc(cb * (size_t)L);
  cells = malloc(sizeof *cells * (size_t)L);
  if (!k || !v || !tok || !keys || !cellbuf || !cells) { cf_ctl_fail(CMD " fill", "out of memory"); goto out; }
  for (int l = 0; l < L; l++) {
    k[l] = malloc(sizeof(float) * row * tokens);
    v[l] = malloc(sizeof(float) * row * tokens);
    if (!k[l] || !v[l]) { cf_ctl_fail(CMD " fill", "out of memory for the KV of %llu tokens", tokens); goto out; }
  }
  printf("fill: model %s (%d layers, %d kv heads x %d), chunk %llu tokens, cell %zu bytes (%s), "
         "backend %s, store %s\n", mdir, L, nkv, hd, chunk, cb, cf_dtype_name(kvdt), be->name, dir);
  uint64_t rng = seed, saved = 0, existed = 0;
  double t_start = cf__now(), t_compute = 0, t_save = 0;
  for (unsigned long long p = 0; p < prefixes; p++) {
    for (unsigned long long i = 0; i < tokens; i++) tok[i] = (int32_t)(cf__mix(&rng) % (uint64_t)mc->vocab);
    double t0 = cf__now();
    cf_fwd_args_t a = {.l0 = 0, .l1 = L, .t0 = 0, .t1 = (int)tokens, .tokens = tok,
                       .k = k, .v = v, .hidden_out = NULL};
    rc = cf_backend_forward(be, &a);
    if (rc) { cf_ctl_fail(CMD " fill", "prefix %llu: forward: %s: %s", p, cf_strerror(rc), cf_errmsg()); goto out; }
    double t1 = cf__now();
    size_t nk = cf_store_chain_keys_partial(g.fingerprint, tok, tokens, (uint32_t)chunk, keys);
    for (size_t ci = 0; ci < nk; ci++) {
      size_t first = ci * chunk;
      uint32_t nt = (uint32_t)(tokens - first < chunk ? tokens - first : chunk);
      size_t cbn = cf_store_cell_bytes_n(&g, nt);
      for (int l = 0; l < L; l++) {
        /* cell layout [2][nt][n_kv][hd]: the chunk's K rows, then its V rows */
        uint8_t *cell = cellbuf + (size_t)l * cbn;
        cf_dtype_from_f32(kvdt, k[l] + first * row, cell, row * nt);
        cf_dtype_from_f32(kvdt, v[l] + first * row, cell + cbn / 2, row * nt);
        cells[l] = cell;
      }
      rc = cf_store_save(st, &keys[ci], nt, cells, 0);
      if (rc == CF_EEXIST) { existed++; continue; }
      if (rc) { cf_ctl_fail(CMD " fill", "prefix %llu chunk %zu: save: %s: %s", p, ci, cf_strerror(rc), cf_errmsg()); goto out; }
      saved++;
    }
    /* one group commit per prefix: data, then journal, fdatasync'ed */
    rc = cf_store_flush(st);
    if (rc) { cf_ctl_fail(CMD " fill", "prefix %llu: flush: %s: %s", p, cf_strerror(rc), cf_errmsg()); goto out; }
    double t2 = cf__now();
    t_compute += t1 - t0;
    t_save += t2 - t1;
    printf("prefix %llu/%llu: %llu tokens, %zu chunks durable (compute %.2f s, save %.3f s)\n", p + 1,
           prefixes, tokens, nk, t1 - t0, t2 - t1);
    fflush(stdout);
  }
  cf_store_stats_t s;
  cf_store_get_stats(st, &s);
  printf("fill done: %llu chunks saved, %llu already present, %llu chunks in the store "
         "(%.1f MiB), compute %.2f s, save %.2f s (%.0f MB/s), total %.2f s\n",
         (unsigned long long)saved, (unsigned long long)existed,
         (unsigned long long)s.ssd_chunks, s.ssd_bytes_used / 1048576.0, t_compute, t_save,
         t_save > 0 ? saved * (double)cb * L / t_save / 1e6 : 0.0, cf__now() - t_start);
  ret = 0;
out:
  if (k) for (int l = 0; l < (m ? m->cfg.n_layers : 0); l++) free(k[l]);
  if (v) for (int l = 0; l < (m ? m->cfg.n_layers : 0); l++) free(v[l]);
  free(k); free(v); free(tok); free(keys); free(cellbuf); free(cells);
  cf_store_close(st);
  if (be) cf_backend_free(be);
  cf_model_free(m);
  return ret;
}

static int cf__store_main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "verify")) return cf__verify(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "fill")) return cf__fill(argc - 1, argv + 1);
  fprintf(stderr, "usage: cacheflowctl store verify --dir DIR\n"
                  "       cacheflowctl store fill --dir DIR --model DIR --prefixes N --tokens T "
                  "--seed S [--chunk C] [--ssd-bytes SIZE] [--backend cpu|auto] [--threads N] [--kv-dtype f32|bf16|f16]\n");
  return 2;
}

static const cf_ctl_cmd_t cf__store = {
    "store", "verify --dir DIR | fill --dir DIR --model DIR --prefixes N --tokens T --seed S",
    "check a store directory (fsck) or fill it with the KV of random prefixes", cf__store_main};
CF_CTL_COMMAND(cf__store)
