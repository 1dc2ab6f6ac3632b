/* cacheflowctl kv — compute a token sequence's KV with the model engine and write it as
 * safetensors (layers.{l}.k / layers.{l}.v [T, n_kv_heads, head_dim] F32, plus `tokens`).
 * --chunk and --staircase exercise the primitive the way restoration plans use it; the output
 * is the same (to fp32 rounding) whatever the options. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl/cf_ctl.h"
#include "model/cf_backend.h"
#include "model/cf_kv.h"
#include "util/cf_err.h"

#define CMD "kv"

/* Strict positive int parse: whole string, 1..max. */
static int cf__parse_pos(const char *s, int max, int *out) {
  unsigned long long v;
  if (cf_ctl_parse_u64(s, (unsigned long long)max, &v) || v == 0) return -1;
  *out = (int)v;
  return 0;
}

/* "h0,h1,..." → malloc'd heights; each 0..n. Returns count or -1 (reason in *why). */
static int cf__parse_heights(const char *s, int **out, char *why, size_t whylen) {
  int cap = 16, n = 0;
  int *h = malloc(sizeof(int) * cap);
  const char *p = s;
  if (!h) { snprintf(why, whylen, "out of memory"); return -1; }
  for (;;) {
    char *end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (errno || end == p || v < 0 || v > 1000000 || (*end && *end != ',')) {
      snprintf(why, whylen, "--staircase '%s': entry %d is not a non-negative integer", s, n);
      free(h);
      return -1;
    }
    if (n == cap) {
      int *nh = realloc(h, sizeof(int) * (cap *= 2));
      if (!nh) { free(h); snprintf(why, whylen, "out of memory"); return -1; }
      h = nh;
    }
    h[n++] = (int)v;
    if (!*end) break;
    p = end + 1;
  }
  *out = h;
  return n;
}

static double cf__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cf__kv_main(int argc, char **argv) {
  const char *model_dir = NULL, *tok_path = NULL, *out_path = NULL, *stair = NULL;
  /* Default cpu: the fp32 path that reproduces transformers' fp32 KV; the CUDA backend keeps
   * bf16 weights, so it is opt-in (--backend cuda|auto). */
  const char *backend = "cpu";
  int chunk = 0, threads = 0, quiet = 0;
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},   {"tokens", required_argument, 0, 't'},
      {"out", required_argument, 0, 'o'},     {"chunk", required_argument, 0, 'c'},
      {"staircase", required_argument, 0, 's'}, {"backend", required_argument, 0, 'b'},
      {"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
      {0, 0, 0, 0}};
  optind = 1;
  opterr = 0;
  int ch;
  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
      case 'm': model_dir = optarg; break;
      case 't': tok_path = optarg; break;
      case 'o': out_path = optarg; break;
      case 's': stair = optarg; break;
      case 'b': backend = optarg; break;
      case 'q': quiet = 1; break;
      case 'c':
        if (cf__parse_pos(optarg, 1 << 28, &chunk))
          return cf_ctl_fail(CMD, "--chunk '%s': must be a positive integer", optarg);
        break;
      case 'j':
        if (cf__parse_pos(optarg, 256, &threads))
          return cf_ctl_fail(CMD, "--threads '%s': must be an integer in 1..256", optarg);
        break;
      default:
        return cf_ctl_fail(CMD, "unknown or incomplete option '%s' (usage: cacheflowctl kv "
                           "--model DIR --tokens FILE --out FILE [--chunk N] [--staircase "
                           "h0,h1,...] [--backend cpu|cuda|auto] [--threads N])",
                           argv[optind - 1]);
    }
  }
  if (optind < argc) return cf_ctl_fail(CMD, "unexpected argument '%s'", argv[optind]);
  if (!model_dir) return cf_ctl_fail(CMD, "--model DIR is required");
  if (!tok_path) return cf_ctl_fail(CMD, "--tokens FILE is required");
  if (!out_path) return cf_ctl_fail(CMD, "--out FILE is required");
  if (strcmp(backend, "cpu") && strcmp(backend, "cuda") && strcmp(backend, "auto"))
    return cf_ctl_fail(CMD, "--backend '%s': expected cpu, cuda or auto", backend);

  int *heights = NULL, nh = 0;
  char why[256];
  if (stair && (nh = cf__parse_heights(stair, &heights, why, sizeof why)) < 0)
    return cf_ctl_fail(CMD, "%s", why);
  if (stair && !chunk) chunk = 256;

  cf_model_t *m = NULL;
  cf_backend_t *be = NULL;
  int32_t *tok = NULL;
  int T = 0, ret = 1, rc;
  cf_kv_t kv = {0};
  if ((rc = cf_model_load(model_dir, &m))) {
    ret = cf_ctl_fail(CMD, "model %s: %s: %s", model_dir, cf_strerror(rc), cf_errmsg());
    goto out;
  }
  if ((rc = cf_tokens_load(tok_path, m->cfg.vocab, &tok, &T))) {
    ret = cf_ctl_fail(CMD, "tokens: %s", cf_errmsg());
    goto out;
  }
  if (stair) {
    int nc = (T + chunk - 1) / chunk;
    if (nh != nc) {
      ret = cf_ctl_fail(CMD, "--staircase has %d heights, expected %d (one per chunk of %d "
                        "of the %d tokens)", nh, nc, chunk, T);
      goto out;
    }
    for (int c = 0; c < nh; c++)
      if (heights[c] > m->cfg.n_layers) {
        ret = cf_ctl_fail(CMD, "--staircase height %d of chunk %d exceeds the model's %d layers",
                          heights[c], c, m->cfg.n_layers);
        goto out;
      }
  }
  /* --threads sizes the CPU backend, also when "auto" falls back to it. */
  if (!threads || !strcmp(backend, "cuda")) {
    rc = cf_backend_create(backend, m, &be);
  } else {
    rc = !strcmp(backend, "auto") ? cf_backend_cuda_create(m, 0, &be) : CF_ENODEV;
    if (rc == CF_ENODEV) {
      cf_errclear();
      rc = cf_backend_cpu_create(m, threads, &be);
    }
  }
  if (rc) {
    ret = cf_ctl_fail(CMD, "backend %s: %s: %s", backend, cf_strerror(rc), cf_errmsg());
    goto out;
  }
  if ((rc = cf_kv_init(&kv, &m->cfg, T))) {
    ret = cf_ctl_fail(CMD, "%s", cf_errmsg());
    goto out;
  }
  double t = cf__now();
  rc = stair ? cf_kv_compute_staircase(be, tok, chunk, heights, nh, &kv)
             : cf_kv_compute(be, tok, chunk, &kv);
  t = cf__now() - t;
  if (rc) {
    ret = cf_ctl_fail(CMD, "compute: %s: %s", cf_strerror(rc), cf_errmsg());
    goto out;
  }
  if ((rc = cf_kv_write(&kv, tok, out_path))) {
    ret = cf_ctl_fail(CMD, "write %s: %s: %s", out_path, cf_strerror(rc), cf_errmsg());
    goto out;
  }
  if (!quiet) {
    char mode[48] = "whole";
    if (stair) snprintf(mode, sizeof mode, "staircase, chunk %d", chunk);
    else if (chunk) snprintf(mode, sizeof mode, "chunk %d", chunk);
    printf("kv: %d tokens, %d layers, backend %s, %s: %.3f s (%.0f tokens/s) -> %s\n", T,
           m->cfg.n_layers, be->name, mode, t, T / t, out_path);
  }
  ret = 0;
out:
  cf_kv_free(&kv);
  cf_backend_free(be);
  cf_model_free(m);
  free(tok);
  free(heights);
  return ret;
}

static const cf_ctl_cmd_t cf__kv_cmd = {
    .name = "kv",
    .usage = "--model DIR --tokens FILE --out FILE [--chunk N] [--staircase h0,h1,...] "
             "[--backend cpu|cuda|auto (default cpu)] [--threads N] [--quiet]",
    .help = "compute a token sequence's KV (whole, chunked or staircase) into safetensors",
    .main = cf__kv_main,
};
CF_CTL_COMMAND(cf__kv_cmd)

/* cacheflowctl kv-compare A REF [--tol X]: worst per-tensor relative error of A against REF
 * (max|a-ref| / max|ref| per layer and k/v); exit 1 when above --tol. */
static int cf__kvcmp_main(int argc, char **argv) {
  const char *cmd = "kv-compare";
  double tol = -1;
  const char *files[2] = {NULL, NULL};
  int nf = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tol") && i + 1 < argc) {
      char *end;
      tol = strtod(argv[++i], &end);
      if (*end || end == argv[i] || !(tol >= 0))
        return cf_ctl_fail(cmd, "--tol '%s': must be a non-negative number", argv[i]);
    } else if (argv[i][0] == '-' && argv[i][1]) {
      return cf_ctl_fail(cmd, "unknown option '%s' (usage: cacheflowctl kv-compare A REF [--tol X])", argv[i]);
    } else if (nf < 2) {
      files[nf++] = argv[i];
    } else {
      return cf_ctl_fail(cmd, "unexpected argument '%s'", argv[i]);
    }
  }
  if (nf != 2) return cf_ctl_fail(cmd, "need two KV files (usage: cacheflowctl kv-compare A REF [--tol X])");
  cf_kv_t a = {0}, r = {0};
  int rc, ret = 1, wl = 0;
  char wk = 'k';
  double e;
  if ((rc = cf_kv_load(files[0], &a, NULL)) || (rc = cf_kv_load(files[1], &r, NULL)) ||
      (rc = cf_kv_max_rel_err(&a, &r, &e, &wl, &wk))) {
    ret = cf_ctl_fail(cmd, "%s: %s", cf_strerror(rc), cf_errmsg());
  } else {
    printf("max rel err %.3g (layers.%d.%c), %d layers x %d tokens\n", e, wl, wk, a.n_layers, a.T);
    ret = tol >= 0 && !(e <= tol) ? cf_ctl_fail(cmd, "max rel err %.3g above --tol %g", e, tol) : 0;
  }
  cf_kv_free(&a);
  cf_kv_free(&r);
  return ret;
}

static const cf_ctl_cmd_t cf__kvcmp_cmd = {
    .name = "kv-compare",
    .usage = "A.safetensors REF.safetensors [--tol X]",
    .help = "worst per-tensor relative error of KV file A against REF (exit 1 above --tol)",
    .main = cf__kvcmp_main,
};
CF_CTL_COMMAND(cf__kvcmp_cmd)
