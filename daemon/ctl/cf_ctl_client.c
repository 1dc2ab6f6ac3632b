/* cacheflowctl status|stats|config|lookup|evict|restore|bench — operator commands over
 * lib/client. Every command takes --addr ADDR (default $CACHEFLOW_ADDR, else
 * unix:/run/cacheflow/cacheflowd.sock). */
#include <getopt.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/cf_client.h"
#include "ctl/cf_ctl.h"
#include "util/cf_err.h"

#define CF_RPC_FAILED_PRECONDITION_CODE 9 /* gRPC status numbers (no grpc header here) */
#define CF_RPC_INVALID_ARGUMENT_CODE 3
#define CF__DEFAULT_ADDR "unix:/run/cacheflow/cacheflowd.sock"

static const char *cf__addr(const char *opt) {
  if (opt) return opt;
  const char *e = getenv("CACHEFLOW_ADDR");
  return e && *e ? e : CF__DEFAULT_ADDR;
}

/* Parse "1,2,3" into a malloc'd array; returns the count or -1. */
/* --engine ID: a decimal engine id; a bad one is reported as a usage error. */
static int cf__engine_arg(const char *cmd, const char *s, uint64_t *out) {
  unsigned long long v;
  if (cf_ctl_parse_u64(s, UINT64_MAX, &v))
    return cf_ctl_fail(cmd, "--engine '%s': must be a non-negative integer (an id from RegisterEngine)", s);
  *out = v;
  return 0;
}

static long cf__parse_u32_list(const char *s, uint32_t **out) {
  size_t cap = 16, n = 0;
  uint32_t *v = malloc(cap * sizeof *v);
  if (!v) return -1;
  while (*s) {
    char *end;
    unsigned long x = strtoul(s, &end, 10);
    if (end == s || x > UINT32_MAX) { free(v); return -1; }
    if (n == cap) { cap *= 2; uint32_t *t = realloc(v, cap * sizeof *v); if (!t) { free(v); return -1; } v = t; }
    v[n++] = (uint32_t)x;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') { free(v); return -1; }
  }
  *out = v;
  return (long)n;
}

/* Parse the options of a command that takes only --addr; leaves optind at the first operand.
 * Returns 0, or 2 (usage error) on an unknown option. */
static int cf__addr_only(int argc, char **argv, const char **addr) {
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:", o, NULL)) != -1) {
    if (ch != 'a') return 2;
    *addr = optarg;
  }
  return 0;
}

/* A client for `addr`: over TLS when a --tls-* option (or $CACHEFLOW_TLS_*) is set and addr is
 * host:port. */
static int cf__connect(const char *addr, int timeout_ms, cf_client_t **c) {
  cf_client_tls_t t = {cf_ctl_tls_ca, cf_ctl_tls_cert, cf_ctl_tls_key, cf_ctl_tls_server_name};
  int tls = strncmp(addr, "unix:", 5) != 0 && (t.ca_file || t.cert_file || t.key_file || t.server_name);
  return cf_client_connect_tls(addr, timeout_ms, tls ? &t : NULL, c);
}

static int cf__open(const char *cmd, const char *addr, cf_client_t **c) {
  if (cf__connect(cf__addr(addr), 10000, c)) return cf_ctl_fail(cmd, "%s", cf_errmsg());
  return 0;
}

/* ---------------------------------------------------------------- status / stats / config */
static int cf__status_main(int argc, char **argv) {
  const char *addr = NULL;
  if (cf__addr_only(argc, argv, &addr)) return 2;
  cf_client_t *c;
  if (cf__open("status", addr, &c)) return 1;
  int serving = 0;
  if (cf_client_health(c, &serving)) { int r = cf_ctl_fail("status", "%s: %s", cf__addr(addr), cf_errmsg()); cf_client_close(c); return r; }
  Cacheflow__V1__StatsResponse *st = NULL;
  if (cf_client_stats(c, &st) == 0) {
    printf("%s: %s, up %.1f s, %u engine(s), %u restore(s) in flight, model %s\n", cf__addr(addr),
           serving ? "SERVING" : "NOT_SERVING (draining)", st->uptime_s, st->engines, st->restores_in_flight,
           *st->model_dir ? st->model_dir : "(none)");
    cacheflow__v1__stats_response__free_unpacked(st, NULL);
  } else {
    printf("%s: %s\n", cf__addr(addr), serving ? "SERVING" : "NOT_SERVING");
  }
  cf_client_close(c);
  return serving ? 0 : 1;
}

static int cf__stats_main(int argc, char **argv) {
  const char *addr = NULL;
  if (cf__addr_only(argc, argv, &addr)) return 2;
  cf_client_t *c;
  if (cf__open("stats", addr, &c)) return 1;
  Cacheflow__V1__StatsResponse *st;
  int rc = cf_client_stats(c, &st);
  if (rc) { cf_client_close(c); return cf_ctl_fail("stats", "%s", cf_errmsg()); }
  printf("uptime_s %.3f\nengines %u\nrequests_total %llu\nerrors_total %llu\nrestores_in_flight %u\n"
         "cpu_tier_bytes_used %llu\nssd_tier_bytes_used %llu\ndraining %d\n",
         st->uptime_s, st->engines, (unsigned long long)st->requests_total, (unsigned long long)st->errors_total,
         st->restores_in_flight, (unsigned long long)st->cpu_tier_bytes_used, (unsigned long long)st->ssd_tier_bytes_used,
         st->draining);
  for (size_t i = 0; i < st->n_counters; i++) printf("%s %g\n", st->counters[i]->name, st->counters[i]->value);
  cacheflow__v1__stats_response__free_unpacked(st, NULL);
  cf_client_close(c);
  return 0;
}

static int cf__config_main(int argc, char **argv) {
  const char *addr = NULL;
  if (cf__addr_only(argc, argv, &addr)) return 2;
  cf_client_t *c;
  if (cf__open("config", addr, &c)) return 1;
  Cacheflow__V1__GetConfigResponse *r;
  int rc = cf_client_get_config(c, optind < argc ? argv[optind] : "", &r);
  if (rc) { cf_client_close(c); return cf_ctl_fail("config", "%s", cf_errmsg()); }
  for (size_t i = 0; i < r->n_entries; i++)
    printf("%s = %s%s\n", r->entries[i]->name, r->entries[i]->value, r->entries[i]->reloadable ? "" : "    # restart to change");
  cacheflow__v1__get_config_response__free_unpacked(r, NULL);
  cf_client_close(c);
  return 0;
}

/* ---------------------------------------------------------------- lookup / evict / restore */
static int cf__lookup_main(int argc, char **argv) {
  const char *addr = NULL, *tokens = NULL;
  uint64_t engine = 0;
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {"engine", required_argument, 0, 'e'},
                                    {"tokens", required_argument, 0, 't'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:e:t:", o, NULL)) != -1) {
    if (ch == 'a') addr = optarg;
    else if (ch == 'e') { if (cf__engine_arg("lookup", optarg, &engine)) return 2; }
    else if (ch == 't') tokens = optarg;
    else return 2;
  }
  uint32_t *tok;
  long n;
  if (!tokens || (n = cf__parse_u32_list(tokens, &tok)) < 0) return cf_ctl_fail("lookup", "--tokens 1,2,3 required"), 2;
  cf_client_t *c;
  if (cf__open("lookup", addr, &c)) { free(tok); return 1; }
  uint32_t cached, cpu, ssd, stored = 0;
  cf_client_run_t *runs = NULL;
  size_t nr = 0;
  int rc = cf_client_lookup(c, engine, tok, (size_t)n, &cached, &cpu, &ssd);
  if (!rc) rc = cf_client_lookup_runs(c, engine, tok, (size_t)n, &stored, &runs, &nr);
  free(tok);
  cf_client_close(c);
  if (rc) { free(runs); return cf_ctl_fail("lookup", "%s", cf_errmsg()); }
  printf("cached_tokens %u (cpu %u, ssd %u) of %ld\n", cached, cpu, ssd, n);
  /* every stored chunk (a restore loads them and recomputes the holes) */
  static const char *const tn[] = {"none", "cpu", "ssd", "remote"};
  printf("stored_tokens %u, runs", stored);
  for (size_t i = 0; i < nr; i++) printf(" %s:%u", runs[i].tier >= 0 && runs[i].tier < 4 ? tn[runs[i].tier] : "?", runs[i].tokens);
  printf("\n");
  free(runs);
  return 0;
}

static int cf__evict_main(int argc, char **argv) {
  const char *addr = NULL;
  int tier = 0;
  uint64_t bytes = 0;
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {"tier", required_argument, 0, 't'},
                                    {"bytes", required_argument, 0, 'b'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:t:b:", o, NULL)) != -1) {
    if (ch == 'a') addr = optarg;
    else if (ch == 't') {
      if (!strcmp(optarg, "cpu")) tier = 1;
      else if (!strcmp(optarg, "ssd")) tier = 2;
      else if (!strcmp(optarg, "all")) tier = 0;
      else return cf_ctl_fail("evict", "--tier cpu|ssd|all, not '%s'", optarg), 2;
    } else if (ch == 'b') {
      unsigned long long b;
      if (cf_ctl_parse_u64(optarg, UINT64_MAX, &b))
        return cf_ctl_fail("evict", "--bytes '%s': must be a non-negative integer", optarg), 2;
      bytes = b;
    }
    else return 2;
  }
  cf_client_t *c;
  if (cf__open("evict", addr, &c)) return 1;
  uint64_t be = 0, ce = 0;
  int rc = cf_client_evict(c, tier, bytes, &be, &ce);
  cf_client_close(c);
  if (rc) return cf_ctl_fail("evict", "%s", cf_errmsg());
  printf("evicted %llu bytes in %llu chunks\n", (unsigned long long)be, (unsigned long long)ce);
  return 0;
}

static int cf__print_event(void *arg, const Cacheflow__V1__RestoreEvent *ev) {
  (void)arg;
  switch (ev->event_case) {
    case CACHEFLOW__V1__RESTORE_EVENT__EVENT_PLAN:
      printf("plan: policy %d, %u chunks, load cpu %llu ssd %llu cells, compute %llu cells, predicted %.1f us, bound %.1f us\n",
             ev->plan->policy, ev->plan->chunks, (unsigned long long)ev->plan->cells_load_cpu,
             (unsigned long long)ev->plan->cells_load_ssd, (unsigned long long)ev->plan->cells_compute,
             ev->plan->predicted_us, ev->plan->bound_us);
      break;
    case CACHEFLOW__V1__RESTORE_EVENT__EVENT_LAYERS: printf("layers ready: %u\n", ev->layers->layers_ready); break;
    case CACHEFLOW__V1__RESTORE_EVENT__EVENT_DONE:
      printf("done: %u tokens, loaded cpu %llu ssd %llu, computed %llu cells, %.1f us (%.2f x bound)\n",
             ev->done->restored_tokens, (unsigned long long)ev->done->cells_loaded_cpu,
             (unsigned long long)ev->done->cells_loaded_ssd, (unsigned long long)ev->done->cells_computed,
             ev->done->time_us, ev->done->ratio_to_bound);
      break;
    default: break;
  }
  return 0;
}

static int cf__restore_main(int argc, char **argv) {
  const char *addr = NULL, *tokens = NULL, *blocks = NULL;
  Cacheflow__V1__RestoreRequest req = CACHEFLOW__V1__RESTORE_REQUEST__INIT;
  static const char *const pol[] = {"default", "recompute", "load", "cake", "layerwise", "cacheflow", "optimal"};
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {"engine", required_argument, 0, 'e'},
                                    {"tokens", required_argument, 0, 't'}, {"blocks", required_argument, 0, 'b'},
                                    {"policy", required_argument, 0, 'p'}, {"priority", required_argument, 0, 'P'},
                                    {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:e:t:b:p:P:", o, NULL)) != -1) {
    if (ch == 'a') addr = optarg;
    else if (ch == 'e') { uint64_t id = 0; if (cf__engine_arg("restore", optarg, &id)) return 2; req.engine_id = id; }
    else if (ch == 't') tokens = optarg;
    else if (ch == 'b') blocks = optarg;
    else if (ch == 'P') req.priority = atoi(optarg);
    else if (ch == 'p') {
      int k = -1;
      for (int i = 0; i < 7; i++) if (!strcmp(optarg, pol[i])) k = i;
      if (k < 0) return cf_ctl_fail("restore", "--policy recompute|load|cake|layerwise|cacheflow|optimal, not '%s'", optarg), 2;
      req.policy = k;
    } else return 2;
  }
  long nt, nb;
  if (!tokens || (nt = cf__parse_u32_list(tokens, &req.token_ids)) < 0) return cf_ctl_fail("restore", "--tokens 1,2,3 required"), 2;
  if (!blocks || (nb = cf__parse_u32_list(blocks, &req.block_ids)) < 0) { free(req.token_ids); return cf_ctl_fail("restore", "--blocks 0,1 required"), 2; }
  req.n_token_ids = (size_t)nt;
  req.n_block_ids = (size_t)nb;
  cf_client_t *c;
  int rc = 1;
  if (!cf__open("restore", addr, &c)) {
    rc = cf_client_restore(c, &req, cf__print_event, NULL) ? cf_ctl_fail("restore", "%s", cf_errmsg()) : 0;
    cf_client_close(c);
  }
  free(req.token_ids);
  free(req.block_ids);
  return rc;
}

/* ---------------------------------------------------------------- bench */
/* Concurrent clients, each with its own connection and engine, issue a mix of requests and
 * check every status against what the daemon must answer; latencies of Lookup and Health
 * (the trivial baseline handler) are collected for p50/p99. */
enum { CF__OP_LOOKUP, CF__OP_HEALTH, CF__OP_STATS, CF__OP_CONFIG, CF__OP_BADRESTORE, CF__NOPS };
static const char *const cf__opnames[CF__NOPS] = {"lookup", "health", "stats", "config", "bad-restore"};

typedef struct {
  const char *addr, *shm;
  int requests, lookup_only, tokens;
  int errors;
  char first_error[700];
  double *lat[CF__NOPS];
  int nlat[CF__NOPS];
} cf__bench_t;

static double cf__now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void cf__bench_err(cf__bench_t *b, const char *what) {
  if (!b->errors++) snprintf(b->first_error, sizeof b->first_error, "%s", what);
}

static void *cf__bench_thread(void *arg) {
  cf__bench_t *b = arg;
  cf_client_t *c;
  char msg[600];
  if (cf__connect(b->addr, 30000, &c)) { cf__bench_err(b, cf_errmsg()); return NULL; }
  uint64_t eng;
  if (cf_client_register_shm(c, b->shm, 16, 64, CACHEFLOW__V1__DTYPE__DTYPE_F32, "bench", &eng, NULL)) {
    snprintf(msg, sizeof msg, "register: %s", cf_errmsg());
    cf__bench_err(b, msg);
    cf_client_close(c);
    return NULL;
  }
  int nt = b->tokens;
  uint32_t *tok = malloc((size_t)nt * sizeof *tok);
  if (!tok) { cf__bench_err(b, "out of memory"); cf_client_unregister(c, eng); cf_client_close(c); return NULL; }
  for (int i = 0; i < nt; i++) tok[i] = (uint32_t)(i * 7 + 3) % 200;
  for (int i = 0; i < b->requests; i++) {
    int op = b->lookup_only ? (i % 2 ? CF__OP_LOOKUP : CF__OP_HEALTH) : i % CF__NOPS;
    double t0 = cf__now_us();
    int rc = 0, ok = 0;
    switch (op) {
      case CF__OP_LOOKUP: {
        uint32_t cached;
        rc = cf_client_lookup(c, eng, tok, (size_t)nt, &cached, NULL, NULL);
        /* OK once the store is wired; until then FAILED_PRECONDITION naming the store */
        ok = rc == 0 || cf_client_status(c) == CF_RPC_FAILED_PRECONDITION_CODE;
        break;
      }
      case CF__OP_HEALTH: { int s; rc = cf_client_health(c, &s); ok = rc == 0 && s; break; }
      case CF__OP_STATS: { Cacheflow__V1__StatsResponse *st; rc = cf_client_stats(c, &st); ok = rc == 0; if (ok) cacheflow__v1__stats_response__free_unpacked(st, NULL); break; }
      case CF__OP_CONFIG: { Cacheflow__V1__GetConfigResponse *r; rc = cf_client_get_config(c, "policy", &r); ok = rc == 0 && r->n_entries == 1; if (rc == 0) cacheflow__v1__get_config_response__free_unpacked(r, NULL); break; }
      case CF__OP_BADRESTORE: {
        Cacheflow__V1__RestoreRequest rq = CACHEFLOW__V1__RESTORE_REQUEST__INIT;
        uint32_t blocks[1] = {64}; /* one past the last block: must be refused */
        rq.engine_id = eng;
        rq.token_ids = tok;
        rq.n_token_ids = 16;
        rq.block_ids = blocks;
        rq.n_block_ids = 1;
        rc = cf_client_restore(c, &rq, NULL, NULL);
        ok = cf_client_status(c) == CF_RPC_INVALID_ARGUMENT_CODE;
        break;
      }
    }
    double dt = cf__now_us() - t0;
    if (!ok) {
      snprintf(msg, sizeof msg, "%s: status %d: %s", cf__opnames[op], cf_client_status(c), rc ? cf_errmsg() : cf_client_detail(c));
      cf__bench_err(b, msg);
    } else {
      b->lat[op][b->nlat[op]++] = dt;
    }
  }
  if (cf_client_unregister(c, eng)) { snprintf(msg, sizeof msg, "unregister: %s", cf_errmsg()); cf__bench_err(b, msg); }
  free(tok);
  cf_client_close(c);
  return NULL;
}

static int cf__cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int cf__bench_main(int argc, char **argv) {
  const char *addr = NULL;
  int clients = 1, requests = 1000, lookup_only = 0, tokens = 256;
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {"clients", required_argument, 0, 'c'},
                                    {"requests", required_argument, 0, 'n'}, {"lookup", no_argument, 0, 'l'},
                                    {"tokens", required_argument, 0, 't'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:c:n:lt:", o, NULL)) != -1) {
    if (ch == 'a') addr = optarg;
    else if (ch == 'c') clients = atoi(optarg);
    else if (ch == 'n') requests = atoi(optarg);
    else if (ch == 'l') lookup_only = 1;
    else if (ch == 't') tokens = atoi(optarg);
    else return 2;
  }
  if (clients < 1 || clients > 1024 || requests < 1 || tokens < 16 || tokens > 16777216)
    return cf_ctl_fail("bench", "--clients 1..1024, --requests >= 1, --tokens 16..16777216"), 2;
  char shm[128];
  snprintf(shm, sizeof shm, "/dev/shm/cacheflowctl-bench-%d", (int)getpid());
  cf__bench_t *b = calloc(clients, sizeof *b);
  pthread_t *th = calloc(clients, sizeof *th);
  if (!b || !th) return cf_ctl_fail("bench", "out of memory");
  double t0 = cf__now_us();
  for (int i = 0; i < clients; i++) {
    b[i].addr = cf__addr(addr);
    b[i].shm = shm;
    b[i].requests = requests;
    b[i].lookup_only = lookup_only;
    b[i].tokens = tokens;
    for (int k = 0; k < CF__NOPS; k++) b[i].lat[k] = malloc(requests * sizeof(double));
    pthread_create(&th[i], NULL, cf__bench_thread, &b[i]);
  }
  int errors = 0;
  const char *first = NULL;
  for (int i = 0; i < clients; i++) {
    pthread_join(th[i], NULL);
    errors += b[i].errors;
    if (b[i].errors && !first) first = b[i].first_error;
  }
  double wall = (cf__now_us() - t0) / 1e6;
  unlink(shm);
  printf("bench: %d client(s) x %d request(s) in %.2f s: %.0f req/s, %d error(s)\n", clients, requests, wall,
         clients * (double)requests / wall, errors);
  double p50[CF__NOPS] = {0};
  for (int k = 0; k < CF__NOPS; k++) {
    size_t n = 0;
    for (int i = 0; i < clients; i++) n += b[i].nlat[k];
    if (!n) continue;
    double *all = malloc(n * sizeof *all);
    size_t j = 0;
    for (int i = 0; i < clients; i++) { memcpy(all + j, b[i].lat[k], b[i].nlat[k] * sizeof *all); j += b[i].nlat[k]; }
    qsort(all, n, sizeof *all, cf__cmp);
    p50[k] = all[n / 2];
    printf("  %-12s n=%-7zu p50 %8.1f us  p99 %8.1f us  max %8.1f us\n", cf__opnames[k], n, all[n / 2],
           all[(size_t)(n * 0.99) < n ? (size_t)(n * 0.99) : n - 1], all[n - 1]);
    free(all);
  }
  if (p50[CF__OP_HEALTH] > 0 && p50[CF__OP_LOOKUP] > 0)
    printf("  lookup p50 / health p50 (trivial handler, same connection) = %.2f\n", p50[CF__OP_LOOKUP] / p50[CF__OP_HEALTH]);
  if (first) fprintf(stderr, "bench: first error: %s\n", first);
  for (int i = 0; i < clients; i++) for (int k = 0; k < CF__NOPS; k++) free(b[i].lat[k]);
  free(b);
  free(th);
  return errors ? 1 : 0;
}

static const cf_ctl_cmd_t cf__cmd_status = {"status", "[--addr ADDR]", "health and a one-line summary; exit 0 when SERVING", cf__status_main};
static const cf_ctl_cmd_t cf__cmd_stats = {"stats", "[--addr ADDR]", "daemon counters (Admin.Stats)", cf__stats_main};
static const cf_ctl_cmd_t cf__cmd_config = {"config", "[--addr ADDR] [NAME]", "settings in effect (Admin.GetConfig)", cf__config_main};
static const cf_ctl_cmd_t cf__cmd_lookup = {"lookup", "--engine ID --tokens 1,2,3 [--addr ADDR]", "cached prefix length per tier", cf__lookup_main};
static const cf_ctl_cmd_t cf__cmd_evict = {"evict", "[--tier cpu|ssd|all] [--bytes N] [--addr ADDR]", "evict stored KV", cf__evict_main};
static const cf_ctl_cmd_t cf__cmd_restore = {"restore", "--engine ID --tokens T,.. --blocks B,.. [--policy P] [--addr ADDR]", "restore a prefix, printing the streamed events", cf__restore_main};
static const cf_ctl_cmd_t cf__cmd_bench = {"bench", "[--clients N] [--requests M] [--lookup] [--tokens T] [--addr ADDR]", "concurrent mixed load with status checks; p50/p99 per request kind", cf__bench_main};
CF_CTL_COMMAND(cf__cmd_status)
CF_CTL_COMMAND(cf__cmd_stats)
CF_CTL_COMMAND(cf__cmd_config)
CF_CTL_COMMAND(cf__cmd_lookup)
CF_CTL_COMMAND(cf__cmd_evict)
CF_CTL_COMMAND(cf__cmd_restore)
CF_CTL_COMMAND(cf__cmd_bench)
