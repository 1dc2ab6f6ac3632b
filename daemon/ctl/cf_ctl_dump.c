/* cacheflowctl dump --store DIR --tokens T,T,... [--out FILE]
 *
 * Writes the stored KV of a prefix's chunks, as the store holds it: for each chunk (the last
 * one partial when the prefix is not a multiple of the chunk size), for each layer, its cell
 * [2][n_tokens][n_kv_heads][head_dim] (K rows then V rows). Opens the store read-only (the
 * daemon must have flushed: run it on a stopped daemon's directory). Prints one line per chunk
 * to stderr; exit 1 when a chunk is missing. For tests (byte-exact Save checks) and debugging. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/cf_ctl.h"
#include "store/cf_store.h"
#include "util/cf_err.h"

static int cf__dump_main(int argc, char **argv) {
  const char *dir = NULL, *tokens = NULL, *outp = NULL;
  static const struct option o[] = {{"store", required_argument, 0, 's'}, {"tokens", required_argument, 0, 't'},
                                    {"out", required_argument, 0, 'o'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "s:t:o:", o, NULL)) != -1) {
    if (ch == 's') dir = optarg;
    else if (ch == 't') tokens = optarg;
    else if (ch == 'o') outp = optarg;
    else return 2;
  }
  if (!dir || !tokens) { fprintf(stderr, "usage: cacheflowctl dump --store DIR --tokens T,T,... [--out FILE]\n"); return 2; }
  size_t cap = 64, n = 0;
  int32_t *tok = malloc(cap * sizeof *tok);
  for (const char *p = tokens; tok && *p;) {
    char *end;
    long x = strtol(p, &end, 10);
    if (end == p || x < 0 || x > INT32_MAX || (*end && *end != ',')) { free(tok); return cf_ctl_fail("dump", "--tokens: bad list at '%.20s'", p), 2; }
    if (n == cap) { cap *= 2; int32_t *t2 = realloc(tok, cap * sizeof *tok); if (!t2) break; tok = t2; }
    tok[n++] = (int32_t)x;
    p = *end ? end + 1 : end;
  }
  if (!tok || !n) { free(tok); return cf_ctl_fail("dump", "--tokens: empty list"); }
  cf_store_config_t cfg;
  cf_store_config_default(&cfg);
  cfg.readonly = 1;
  cf_store_t *st = NULL;
  int rc = cf_store_open(dir, NULL, &cfg, &st);
  if (rc) { free(tok); return cf_ctl_fail("dump", "%s: %s", cf_strerror(rc), cf_errmsg()); }
  const cf_store_geom_t *g = cf_store_geom(st);
  size_t C = g->chunk_tokens, nk = (n + C - 1) / C;
  cf_store_key_t *keys = malloc(nk * sizeof *keys);
  size_t cb = cf_store_cell_bytes(g) * g->n_layers;
  void *buf = malloc(cb);
  FILE *out = outp ? fopen(outp, "wb") : stdout;
  int ret = 1;
  if (!keys || !buf || !out) { cf_ctl_fail("dump", "%s", out ? "out of memory" : "cannot open --out"); goto done; }
  cf_store_chain_keys_partial(g->fingerprint, tok, n, (uint32_t)C, keys);
  for (size_t i = 0; i < nk; i++) {
    uint32_t nt = (uint32_t)(n - i * C < C ? n - i * C : C);
    size_t bytes = cf_store_cell_bytes_n(g, nt) * g->n_layers;
    int tier = 0;
    rc = cf_store_read(st, &keys[i], 0, g->n_layers, buf, bytes, &tier);
    if (rc) { cf_ctl_fail("dump", "chunk %zu (%u tokens): %s: %s", i, nt, cf_strerror(rc), cf_errmsg()); goto done; }
    fwrite(buf, 1, bytes, out);
    fprintf(stderr, "chunk %zu: %u tokens, %zu bytes, tier %s\n", i, nt, bytes, tier == CF_STORE_TIER_CPU ? "cpu" : "ssd");
  }
  ret = 0;
done:
  if (out && out != stdout) fclose(out);
  free(buf);
  free(keys);
  free(tok);
  cf_store_close(st);
  return ret;
}

static const cf_ctl_cmd_t cf__cmd_dump = {"dump", "--store DIR --tokens T,T,... [--out FILE]",
                                          "write a stopped daemon's stored KV cells of a prefix (tests, debugging)", cf__dump_main};
CF_CTL_COMMAND(cf__cmd_dump)
