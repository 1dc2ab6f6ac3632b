/* cacheflow-sim: workloads — JSON-lines files and three generators.
 *
 * Generators draw lengths from clipped log-normals chosen to look like public traces (shapes,
 * not the traces themselves):
 *   multi-turn  LMSYS-Chat-1M-like returning conversations: prefix median 3k tokens
 *               (sigma 0.9, clipped to 512..32k), new turn median 150 (sigma 0.8, 8..2k);
 *               20 requests/s.
 *   rag         retrieved documents + system prompt: prefix median 8k (sigma 0.5, 2k..32k),
 *               question median 64 (sigma 0.5, 16..512); 10 requests/s.
 *   agentic     SWE-bench agent trajectories (repository context + earlier tool calls):
 *               prefix median 32k (sigma 0.6, 8k..128k), tool output median 1000 (sigma 0.8,
 *               64..8k); 2 requests/s.
 * Arrivals are Poisson (exponential gaps) at the kind's rate or --rate; --rate 0 puts every
 * request at time 0 (one batching window).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim.h"
#include "util/cf_err.h"
#include "util/cf_json.h"

/* splitmix64: small, seedable, the same on every platform. */
static uint64_t cf__next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double cf__unif(uint64_t *s) { return ((cf__next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double cf__normal(uint64_t *s) {
  double u = cf__unif(s), v = cf__unif(s);
  return sqrt(-2 * log(u)) * cos(6.283185307179586 * v);
}
static int64_t cf__lognormal(uint64_t *s, double median, double sigma, double lo, double hi) {
  double x = median * exp(sigma * cf__normal(s));
  if (x < lo) x = lo;
  if (x > hi) x = hi;
  return (int64_t)llround(x);
}

int sim_workload_gen(const char *kind, int n, uint64_t seed, double rate, cf_sched_req_t **out) {
  struct { const char *name; double pm, ps, plo, phi, nm, ns, nlo, nhi, rate; } k[] = {
      {"multi-turn", 3000, 0.9, 512, 32768, 150, 0.8, 8, 2048, 20},
      {"rag", 8000, 0.5, 2048, 32768, 64, 0.5, 16, 512, 10},
      {"agentic", 32000, 0.6, 8192, 131072, 1000, 0.8, 64, 8192, 2},
  };
  int w = -1;
  for (int i = 0; i < 3; i++)
    if (strcmp(kind, k[i].name) == 0) w = i;
  if (w < 0) return cf_seterr(CF_EINVAL, "unknown generator '%s': expected multi-turn, rag or agentic", kind);
  if (n < 1 || n > 1000000) return cf_seterr(CF_EINVAL, "--n %d: expected 1..1000000", n);
  if (rate < 0) rate = k[w].rate;
  cf_sched_req_t *r = calloc((size_t)n, sizeof *r);
  if (!r) return cf_seterr(CF_ENOMEM, "%d requests", n);
  uint64_t s = seed * 0x2545f4914f6cdd1dull + 12345;
  double t = 0;
  for (int i = 0; i < n; i++) {
    if (rate > 0 && i > 0) t += -log(cf__unif(&s)) / rate;
    r[i].arrival_s = t;
    r[i].prefix_tokens = cf__lognormal(&s, k[w].pm, k[w].ps, k[w].plo, k[w].phi);
    r[i].new_tokens = cf__lognormal(&s, k[w].nm, k[w].ns, k[w].nlo, k[w].nhi);
    r[i].device = -1;
  }
  *out = r;
  return 0;
}

static int cf__line_int(const char *path, int line, const cf_json_t *o, const char *key,
                        int64_t *v) {
  int rc = cf_json_get_i64(o, key, v);
  const cf_json_t *x = cf_json_get(o, key);
  if (rc == CF_ENOTFOUND) return cf_seterr(CF_EFORMAT, "%s line %d: missing key '%s'", path, line, key);
  if (rc || !x->is_int || *v < 0 || *v > ((int64_t)1 << 30))
    return cf_seterr(CF_EFORMAT, "%s line %d: key '%s': expected an integer 0..2^30", path, line, key);
  return 0;
}

/* The optional "tiers" runs of one line: fills tiers[0..chunks) (chunk c: the tier of its first
 * token). A run ["none", N] is N tokens no tier holds: every chunk with a token in it is a hole
 * (CF_SCHED_TIER_NONE: a chunk loads whole or not at all). A run of 0 tokens is empty (a trace
 * writer's "no hole here") and marks no chunk. Returns 0 or CF_EFORMAT naming the line, the run
 * and what is wrong with it (its shape, an unknown tier, tokens not an integer or past the
 * prefix). */
static int cf__line_tiers(const char *path, int line, const cf_json_t *runs, int64_t P, int chunk,
                          uint8_t *tiers) {
  static const char *const form = "expected [\"dram\"|\"ssd\"|\"net\"|\"none\", tokens]";
  if (runs->type != CF_JSON_ARR)
    return cf_seterr(CF_EFORMAT, "%s line %d: key 'tiers': expected [[\"dram\"|\"ssd\"|\"net\"|\"none\", tokens], ...]", path, line);
  int64_t at = 0;
  size_t i = 0;
  for (const cf_json_t *run = runs->child; run; run = run->next, i++) {
    const cf_json_t *nm = cf_json_at(run, 0), *tk = cf_json_at(run, 1);
    if (run->type != CF_JSON_ARR || run->len != 2)
      return run->type == CF_JSON_ARR
                 ? cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu: a list of %zu items, %s", path, line, i, run->len, form)
                 : cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu: a JSON %s, %s", path, line, i,
                             cf_json_type_name(run->type), form);
    if (nm->type != CF_JSON_STR)
      return cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu: tier is a JSON %s, %s", path, line, i,
                       cf_json_type_name(nm->type), form);
    int t = -1;
    for (int k = 0; k < 3; k++)
      if (!strcmp(nm->str, cf_tier_names[k])) t = k;
    if (!strcmp(nm->str, "none")) t = CF_SCHED_TIER_NONE;
    if (t < 0) { /* the name as given, control bytes shown as '?' (the error is one line) */
      char shown[41];
      size_t k = 0;
      for (; k < nm->len && k < sizeof shown - 1; k++) shown[k] = (unsigned char)nm->str[k] < 0x20 ? '?' : nm->str[k];
      shown[k] = 0;
      return cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu: unknown tier '%s': expected dram, ssd, net "
                       "or none", path, line, i, shown);
    }
    if (tk->type != CF_JSON_NUM)
      return cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu (%s): tokens is a JSON %s: expected an integer, "
                       "tokens 1..%lld", path, line, i, nm->str, cf_json_type_name(tk->type), (long long)(P - at));
    /* an integral number written with a fraction or exponent (1e3, 1024.0) is that integer;
     * one past int64 is merely out of range */
    if (!tk->is_int && tk->num != floor(tk->num))
      return cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu (%s): tokens %.17g: expected an integer, "
                       "tokens 1..%lld", path, line, i, nm->str, tk->num, (long long)(P - at));
    int64_t n = tk->is_int ? tk->i64 : fabs(tk->num) < 4e18 ? (int64_t)tk->num : tk->num < 0 ? INT64_MIN : INT64_MAX;
    if (n < 0 || n > P - at) {
      char given[32];
      if (tk->is_int) snprintf(given, sizeof given, "%lld", (long long)n);
      else snprintf(given, sizeof given, "%.17g", tk->num);
      return cf_seterr(CF_EFORMAT, "%s line %d: tiers run %zu (%s): tokens %s %s: expected tokens 1..%lld "
                       "(0: an empty run)", path, line, i, nm->str, given,
                       n < 0 ? "is negative" : "run past the prefix's end", (long long)(P - at));
    }
    if (n == 0) continue;
    if (t == CF_SCHED_TIER_NONE) /* every chunk it touches, the one it starts inside too */
      for (int64_t c = at / chunk; c * chunk < at + n; c++) tiers[c] = (uint8_t)t;
    else
      for (int64_t c = (at + chunk - 1) / chunk; c * chunk < at + n; c++) tiers[c] = (uint8_t)t;
    at += n;
  }
  if (at != P)
    return cf_seterr(CF_EFORMAT, "%s line %d: tiers runs cover %lld tokens, prefix_tokens is %lld",
                     path, line, (long long)at, (long long)P);
  return 0;
}

int sim_workload_read(const char *path, int chunk, int deftier, cf_sched_req_t **out, int *nout,
                      uint8_t **tiers_out, int *any_tiers) {
  char *text;
  size_t len;
  int rc = cf_hw_read_file(path, &text, &len);
  if (rc) return rc;
  size_t cap = 64, tcap = 0, tn = 0;
  int n = 0, any = 0;
  uint8_t *tiers = NULL;
  size_t *toff = NULL; /* request i's chunks at tiers[toff[i]..] (pointers fixed at the end) */
  cf_sched_req_t *r = malloc(cap * sizeof *r);
  toff = malloc(cap * sizeof *toff);
  if (!toff) { free(r); r = NULL; }
  char *p = text;
  int line = 0;
  while (r && *p) {
    char *e = strchr(p, '\n');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    line++;
    char *q = p;
    p = e ? e + 1 : p + l;
    size_t i = 0;
    while (i < l && (q[i] == ' ' || q[i] == '\t' || q[i] == '\r')) i++;
    if (i == l) continue; /* blank line */
    cf_json_t *o;
    rc = cf_json_parse(q, l, &o);
    if (rc) { cf_err_prefix(rc, "%s line %d: ", path, line); goto fail; }
    if (o->type != CF_JSON_OBJ) {
      cf_json_free(o);
      rc = cf_seterr(CF_EFORMAT, "%s line %d: expected an object {\"arrival_s\", \"prefix_tokens\", "
                     "\"new_tokens\"}", path, line);
      goto fail;
    }
    if ((size_t)n == cap) {
      cf_sched_req_t *nr = realloc(r, 2 * cap * sizeof *r);
      size_t *no = nr ? realloc(toff, 2 * cap * sizeof *toff) : NULL;
      if (nr) r = nr;
      if (!no) { cf_json_free(o); free(r); r = NULL; break; }
      toff = no;
      cap *= 2;
    }
    cf_sched_req_t *x = &r[n];
    int64_t d = -1;
    rc = cf_json_get_f64(o, "arrival_s", &x->arrival_s);
    if (rc == CF_ENOTFOUND) rc = cf_seterr(CF_EFORMAT, "%s line %d: missing key 'arrival_s'", path, line);
    else if (rc) cf_err_prefix(rc, "%s line %d: ", path, line);
    else if (!isfinite(x->arrival_s) || x->arrival_s < 0)
      rc = cf_seterr(CF_EFORMAT, "%s line %d: key 'arrival_s': expected a number >= 0", path, line);
    if (!rc) rc = cf__line_int(path, line, o, "prefix_tokens", &x->prefix_tokens);
    if (!rc) rc = cf__line_int(path, line, o, "new_tokens", &x->new_tokens);
    if (!rc && cf_json_get(o, "device")) rc = cf__line_int(path, line, o, "device", &d);
    x->device = (int)d;
    x->chunk_tier = NULL;
    size_t nc = rc ? 0 : (size_t)((x->prefix_tokens + chunk - 1) / chunk);
    if (!rc && tn + nc > tcap) {
      size_t c2 = tcap ? tcap : 4096;
      while (c2 < tn + nc) c2 *= 2;
      uint8_t *nt = realloc(tiers, c2);
      if (!nt) rc = cf_seterr(CF_ENOMEM, "%s line %d: chunk tiers", path, line);
      else { tiers = nt; tcap = c2; }
    }
    const cf_json_t *runs = cf_json_get(o, "tiers");
    if (!rc) {
      memset(tiers + tn, deftier, nc);
      if (runs) { rc = cf__line_tiers(path, line, runs, x->prefix_tokens, chunk, tiers + tn); any = 1; }
    }
    toff[n] = tn;
    tn += nc;
    cf_json_free(o);
    if (rc) goto fail;
    n++;
  }
  if (!r) { rc = cf_seterr(CF_ENOMEM, "%s: %d requests", path, n); goto fail; }
  if (n == 0) { rc = cf_seterr(CF_EFORMAT, "%s: no requests (expected JSON lines)", path); goto fail; }
  free(text);
  for (int i = 0; any && i < n; i++) r[i].chunk_tier = tiers + toff[i];
  free(toff);
  if (!any) { free(tiers); tiers = NULL; }
  *out = r;
  *nout = n;
  *tiers_out = tiers;
  *any_tiers = any;
  return 0;
fail:
  free(text);
  free(r);
  free(toff);
  free(tiers);
  return rc ? rc : CF_ENOMEM;
}

int sim_workload_write(const char *path, const cf_sched_req_t *reqs, int n, int chunk, int deftier) {
  FILE *f = fopen(path, "w");
  if (!f) return cf_seterr(CF_EIO, "--save-workload %s: %s", path, strerror(errno));
  for (int i = 0; i < n; i++) {
    const cf_sched_req_t *q = &reqs[i];
    fprintf(f, "{\"arrival_s\": %.17g, \"prefix_tokens\": %lld, \"new_tokens\": %lld", q->arrival_s,
            (long long)q->prefix_tokens, (long long)q->new_tokens);
    if (q->device >= 0) fprintf(f, ", \"device\": %d", q->device);
    int64_t nc = (q->prefix_tokens + chunk - 1) / chunk, c0 = 0, other = 0;
    for (int64_t c = 0; q->chunk_tier && c < nc; c++) other += q->chunk_tier[c] != deftier;
    if (other) { /* (a request all in --tier is written without: it follows --tier when read back) */
      /* the chunks' tiers as runs of whole chunks (the last one partial): read back with the
       * same --chunk they give the same tier to every chunk, holes included */
      fputs(", \"tiers\": [", f);
      for (int64_t c = 1; c <= nc; c++) {
        if (c < nc && q->chunk_tier[c] == q->chunk_tier[c0]) continue;
        int64_t end = c * chunk < q->prefix_tokens ? c * chunk : q->prefix_tokens;
        uint8_t t = q->chunk_tier[c0];
        fprintf(f, "%s[\"%s\", %lld]", c0 ? ", " : "", t == CF_SCHED_TIER_NONE ? "none" : t < 3 ? cf_tier_names[t] : "?",
                (long long)(end - c0 * chunk));
        c0 = c;
      }
      fputc(']', f);
    }
    fputs("}\n", f);
  }
  if (fclose(f) != 0) return cf_seterr(CF_EIO, "--save-workload %s: write failed", path);
  return 0;
}

int sim_stage_requests(const cf_sched_req_t *reqs, int n, int engines, int stages,
                       cf_sched_req_t **out) {
  cf_sched_req_t *r = malloc((size_t)(n ? n : 1) * stages * sizeof *r);
  double *load = calloc((size_t)engines, sizeof *load);
  int *order = malloc((size_t)(n ? n : 1) * sizeof *order);
  if (!r || !load || !order) {
    free(r);
    free(load);
    free(order);
    return cf_seterr(CF_ENOMEM, "%d requests x %d pipeline stages", n, stages);
  }
  for (int i = 0; i < n; i++) { /* arrival order (stable insertion sort) */
    int j = i;
    while (j > 0 && reqs[order[j - 1]].arrival_s > reqs[i].arrival_s) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
  int rc = 0;
  for (int k = 0; k < n && !rc; k++) {
    int i = order[k], e = reqs[i].device;
    if (e >= engines) {
      rc = cf_seterr(CF_EINVAL, "request %d: device %d: the model runs %d pipeline engines "
                     "(0..%d)", i, e, engines, engines - 1);
      break;
    }
    if (e < 0)
      for (int x = e = 0; x < engines; x++)
        if (load[x] < load[e]) e = x;
    load[e] += (double)reqs[i].prefix_tokens;
    for (int s = 0; s < stages; s++) {
      r[i * stages + s] = reqs[i];
      r[i * stages + s].device = e * stages + s;
    }
  }
  free(load);
  free(order);
  if (rc) free(r);
  else *out = r;
  return rc;
}
