/* cf_config — the settings table and everything it drives (see cf_config.h). */
#include "cf_config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "store/cf_redis.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

#define F(field) offsetof(cf_config_t, field)

static const char *const cf__evictions[] = {"lru", "s3fifo", "cost", NULL};
static const char *const cf__policies[] = {"recompute", "load", "cake", "layerwise",
                                           "cacheflow", "optimal", NULL};
static const char *const cf__onoff[] = {"off", "on", NULL};
static const char *const cf__noyes[] = {"no", "yes", NULL};
static const char *const cf__backends[] = {"auto", "cpu", "cuda", NULL};
static const char *const cf__kv_dtypes[] = {"auto", "f32", "bf16", "f16", NULL};
static const char *const cf__gpu_load_modes[] = {"staged", "zerocopy", "arena", NULL}; /* cf_gpu_load_mode_t order */
static const char *const cf__levels[] = {"error", "warn", "info", "debug", NULL};

/* Listen addresses: gRPC understands unix:/abs/path and host:port; reject anything else here
 * so a typo fails --check-config instead of the bind at start-up. */
static int cf__valid_addr(const char *v, int allow_empty, int allow_unix, char *why, size_t cap) {
  if (!*v) {
    if (allow_empty) return 0;
    snprintf(why, cap, "must not be empty");
    return -1;
  }
  if (!strncmp(v, "unix:", 5)) {
    if (!allow_unix) { snprintf(why, cap, "expected host:port (unix sockets go in `listen`)"); return -1; }
    if (v[5] != '/') { snprintf(why, cap, "unix socket path must be absolute (unix:/run/...)"); return -1; }
    if (strlen(v + 5) >= 108) { snprintf(why, cap, "unix socket path longer than 107 bytes"); return -1; }
    return 0;
  }
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v) { snprintf(why, cap, "expected host:port%s", allow_unix ? " or unix:/path" : ""); return -1; }
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || colon[1] == 0 || port < 1 || port > 65535) { snprintf(why, cap, "port must be 1 .. 65535"); return -1; }
  return 0;
}
static int cf__v_listen(const char *v, char *why, size_t cap) {
  if (strncmp(v, "unix:", 5)) { snprintf(why, cap, "expected unix:/path (TCP goes in tcp_listen)"); return -1; }
  return cf__valid_addr(v, 0, 1, why, cap);
}
static int cf__v_tcp(const char *v, char *why, size_t cap) { return cf__valid_addr(v, 1, 0, why, cap); }
static int cf__v_metrics(const char *v, char *why, size_t cap) { return cf__valid_addr(v, 1, 1, why, cap); }
static int cf__v_abs_or_empty(const char *v, char *why, size_t cap) {
  if (*v && *v != '/') { snprintf(why, cap, "must be an absolute path or empty"); return -1; }
  return 0;
}
/* cost_model: "" or three finite numbers gamma,alpha,beta >= 0, alpha or beta > 0 (a model in
 * which compute costs nothing would plan every restore as a recompute) */
int cf_config_parse_cost_model(const char *v, double out[3]) {
  const char *p = v;
  for (int i = 0; i < 3; i++) {
    char *end;
    errno = 0;
    out[i] = strtod(p, &end);
    if (end == p || errno || !isfinite(out[i]) || out[i] < 0) return -1;
    p = end;
    while (*p == ' ') p++;
    if (i < 2 && *p++ != ',') return -1;
    while (i < 2 && *p == ' ') p++;
  }
  return *p || !(out[1] > 0 || out[2] > 0) ? -1 : 0;
}
static int cf__v_cost_model(const char *v, char *why, size_t cap) {
  double x[3];
  if (*v && cf_config_parse_cost_model(v, x)) {
    snprintf(why, cap, "expected gamma,alpha,beta: three numbers >= 0 in s, s/token, s/token^2, alpha or beta > 0");
    return -1;
  }
  return 0;
}
static int cf__v_abs(const char *v, char *why, size_t cap) {
  if (*v != '/') { snprintf(why, cap, "must be an absolute path"); return -1; }
  return 0;
}

static int cf__v_remote_url(const char *v, char *why, size_t cap) {
  if (!*v) return 0;
  cf_redis_url_t u;
  if (cf_redis_url_parse(v, &u) == 0) return 0;
  snprintf(why, cap, "%s", cf_errmsg());
  return -1;
}

#define GiB "1073741824"
const cf_config_entry_t cf_config_table[] = {
  /* name, type, offset, min, max, choices, default, validator, reloadable, help */
  {"listen", CF_CFG_T_STR, F(listen), 0, 0, NULL, "unix:/run/cacheflow/cacheflowd.sock", cf__v_listen, 0,
   "gRPC unix socket (created mode 0660)"},
  {"tcp_listen", CF_CFG_T_STR, F(tcp_listen), 0, 0, NULL, "", cf__v_tcp, 0,
   "extra gRPC TCP address host:port; empty = no TCP"},
  {"tcp_insecure", CF_CFG_T_ENUM, F(tcp_insecure), 0, 0, cf__noyes, "no", NULL, 0,
   "yes: allow tcp_listen on a non-loopback address without TLS (anyone reaching the port drives the daemon); "
   "no: such a listener is refused at start-up"},
  {"tls_cert_file", CF_CFG_T_STR, F(tls_cert_file), 0, 0, NULL, "", cf__v_abs_or_empty, 0,
   "PEM certificate chain the TCP listener presents (TLS); empty = plaintext TCP; SIGHUP re-reads the file"},
  {"tls_key_file", CF_CFG_T_STR, F(tls_key_file), 0, 0, NULL, "", cf__v_abs_or_empty, 0,
   "PEM private key of tls_cert_file (unencrypted; keep it mode 600); SIGHUP re-reads the file"},
  {"tls_client_ca_file", CF_CFG_T_STR, F(tls_client_ca_file), 0, 0, NULL, "", cf__v_abs_or_empty, 0,
   "PEM CA certificates for mutual TLS: a TCP client must present a certificate they signed; empty = no client "
   "certificate asked; SIGHUP re-reads the file"},
  {"metrics_listen", CF_CFG_T_STR, F(metrics_listen), 0, 0, NULL, "127.0.0.1:9464", cf__v_metrics, 0,
   "HTTP /metrics and /healthz: host:port or unix:/path; empty = off"},
  {"model", CF_CFG_T_STR, F(model), 0, 0, NULL, "", cf__v_abs_or_empty, 0,
   "Hugging Face checkpoint directory served by this daemon; empty = none"},
  {"store_dir", CF_CFG_T_STR, F(store_dir), 0, 0, NULL, "/var/lib/cacheflow", cf__v_abs, 0,
   "directory of the SSD tier files and the index journal"},
  {"cpu_tier_bytes", CF_CFG_T_SIZE, F(cpu_tier_bytes), 0, 1099511627776.0, NULL, "4G", NULL, 0,
   "byte cap of the pinned CPU tier (k/m/g/t suffixes); 0 = no CPU tier"},
  {"ssd_tier_bytes", CF_CFG_T_SIZE, F(ssd_tier_bytes), 0, 281474976710656.0, NULL, "64G", NULL, 0,
   "byte cap of the SSD tier; 0 = no SSD tier (a smaller cap at start evicts by the eviction policy)"},
  {"eviction", CF_CFG_T_ENUM, F(eviction), 0, 0, cf__evictions, "s3fifo", NULL, 0,
   "eviction policy of the CPU and SSD tiers (SSD: lru = least recently saved or read first; "
   "s3fifo = oldest save first, a chunk read since goes round again; cost = least restoration "
   "time saved first: recompute at the chunk's position minus load from its tier, aged)"},
  {"chunk_tokens", CF_CFG_T_INT, F(chunk_tokens), 16, 4096, NULL, "256", NULL, 0,
   "tokens per stored chunk (part of every chunk key: changing it empties the cache)"},
  {"policy", CF_CFG_T_ENUM, F(policy), 0, 0, cf__policies, "optimal", NULL, 1,
   "restore policy used when a request does not name one"},
  {"batch_window_us", CF_CFG_T_INT, F(batch_window_us), 0, 1000000, NULL, "200", NULL, 1,
   "how long the batcher collects restores before planning (microseconds)"},
  {"batch_max", CF_CFG_T_INT, F(batch_max), 1, 1024, NULL, "16", NULL, 1,
   "restores planned together at most; a full batch is dispatched at once"},
  {"trace_restores", CF_CFG_T_INT, F(trace_restores), 0, 1024, NULL, "16", NULL, 0,
   "executed restores whose op timestamps and plan are kept for `cacheflowctl trace` (0 = none)"},
  {"trace_ops", CF_CFG_T_INT, F(trace_ops), 16, 1048576, NULL, "8192", NULL, 0,
   "most steps kept per traced restore (forward calls + loaded cells; plan ops likewise), 48 bytes each"},
  {"cpu_read_gbps", CF_CFG_T_DOUBLE, F(cpu_read_gbps), 0, 10000, NULL, "0", NULL, 1,
   "emulated read-rate limit of the CPU tier in Gbit/s; 0 = unlimited"},
  {"ssd_read_gbps", CF_CFG_T_DOUBLE, F(ssd_read_gbps), 0, 10000, NULL, "0", NULL, 1,
   "emulated read-rate limit of the SSD tier in Gbit/s; 0 = unlimited"},
  {"cost_refit", CF_CFG_T_ENUM, F(cost_refit), 0, 0, cf__onoff, "on", NULL, 1,
   "re-fit the planner's compute cost online from executed restores (off: the start-up calibration only)"},
  {"cost_refit_weight", CF_CFG_T_DOUBLE, F(cost_refit_weight), 0.01, 1, NULL, "0.2", NULL, 0,
   "EWMA weight of one executed restore in the re-fit (one outlier moves the model by at most this x 100%)"},
  {"cost_model", CF_CFG_T_STR, F(cost_model), 0, 0, NULL, "", cf__v_cost_model, 0,
   "the compute terms gamma,alpha,beta (s, s/token, s/token^2) instead of measuring them at start-up; "
   "\"\" = measure (several daemons compared on one machine get the same model this way)"},
  {"drain_timeout_s", CF_CFG_T_INT, F(drain_timeout_s), 0, 3600, NULL, "30", NULL, 1,
   "on SIGTERM, how long in-flight restores may take before they are cancelled"},
  {"max_request_tokens", CF_CFG_T_INT, F(max_request_tokens), 1, 16777216, NULL, "262144", NULL, 1,
   "most token ids one request may carry"},
  {"max_message_bytes", CF_CFG_T_SIZE, F(max_message_bytes), 1024, 1073741824, NULL, "16M", NULL, 0,
   "largest gRPC message accepted (bigger ones get RESOURCE_EXHAUSTED)"},
  {"max_engines", CF_CFG_T_INT, F(max_engines), 1, 4096, NULL, "64", NULL, 0,
   "engines registered at once at most"},
  {"max_blocks", CF_CFG_T_INT, F(max_blocks), 1, 67108864, NULL, "1048576", NULL, 0,
   "largest num_blocks an engine may declare per layer"},
  {"log_level", CF_CFG_T_ENUM, F(log_level), 0, 0, cf__levels, "info", NULL, 1,
   "error|warn|info|debug"},
  {"threads", CF_CFG_T_INT, F(threads), 0, 1024, NULL, "0", NULL, 0,
   "worker threads for compute and tier reads; 0 = one per core"},
  {"backend", CF_CFG_T_ENUM, F(backend), 0, 0, cf__backends, "auto", NULL, 0,
   "model backend: auto picks cuda when a GPU is usable, else cpu"},
  {"kv_dtype", CF_CFG_T_ENUM, F(kv_dtype), 0, 0, cf__kv_dtypes, "auto", NULL, 0,
   "KV element type of stored cells and engine buffers (auto|f32|bf16|f16); auto = bf16 with the cuda backend, "
   "else f32; the store directory records it and refuses another"},
  {"gpu_executor", CF_CFG_T_ENUM, F(gpu_executor), 0, 0, cf__onoff, "off", NULL, 0,
   "off|on: with backend cuda, accept engines' CUDA IPC buffers, keep the CPU tier pinned, save by D2H and "
   "restore on the GPU (device staging, copy streams, stream-written readiness gates); off refuses CUDA IPC "
   "buffers. Unverified on hardware until a device run: off by default"},
  {"gpu_load_mode", CF_CFG_T_ENUM, F(gpu_load_mode), 0, 0, cf__gpu_load_modes, "staged", NULL, 0,
   "how the GPU executor moves loaded cells into engine blocks: staged (copy engine + scatter kernel) | "
   "zerocopy (kernel reads pinned host memory) | arena (copy engine into a device arena, scattered per cell)"},
  {"remote_url", CF_CFG_T_STR, F(remote_url), 0, 0, NULL, "", cf__v_remote_url, 0,
   "remote tier shared by several nodes: redis://host:port[/db] | redis+cluster://h1:p1,h2:p2 | unix:/path; "
   "empty = none"},
  {"remote_password", CF_CFG_T_STR, F(remote_password), 0, 0, NULL, "", NULL, 0,
   "AUTH password of the remote tier (never shown by GetConfig or --dump-config)"},
  {"remote_timeout_ms", CF_CFG_T_INT, F(remote_timeout_ms), 10, 60000, NULL, "1000", NULL, 0,
   "connect and reply timeout of the remote tier; past it a cell is recomputed"},
  {"remote_read_gbps", CF_CFG_T_DOUBLE, F(remote_read_gbps), 0, 10000, NULL, "0", NULL, 1,
   "read rate of the remote tier in Gbit/s: emulated limit and the planner's rate; 0 = measured at start-up "
   "(re-fitted online either way)"},
  {"remote_queue_bytes", CF_CFG_T_SIZE, F(remote_queue_bytes), 0, 1099511627776.0, NULL, "256M", NULL, 0,
   "write-back queue to the remote tier; a save that finds it full is not written there (counted)"},
  {"remote_ttl_s", CF_CFG_T_INT, F(remote_ttl_s), 0, 31536000, NULL, "0", NULL, 0,
   "expiry of the remote tier's keys in seconds; 0 = none (Redis's maxmemory policy decides)"},
  {"remote_promote_bytes", CF_CFG_T_SIZE, F(remote_promote_bytes), 0, 1099511627776.0, NULL, "256M", NULL, 0,
   "remote chunks staged or queued at once for promotion into the local tiers; 0 = no promotion"},
  /* memory budget (issue 18) */
  {"host_memory_bytes", CF_CFG_T_SIZE, F(host_memory_bytes), 0, 281474976710656.0, NULL, "0", NULL, 0,
   "host memory for restore working memory (hidden states, K/V staging, loader buffers, bookkeeping of the "
   "CPU executor), reserved at start-up and reused; restores wait for it, never exceed it; 0 = unbounded"},
  {"gpu_memory_bytes", CF_CFG_T_SIZE, F(gpu_memory_bytes), 0, 281474976710656.0, NULL, "0", NULL, 0,
   "device memory the cuda backend may hold (its weights unless borrowed, staging, hidden states, load rings, "
   "gates); checked at start-up against what the backend holds; 0 = unbounded"},
};
const size_t cf_config_count = sizeof cf_config_table / sizeof cf_config_table[0];

const cf_config_entry_t *cf_config_find(const char *name) {
  for (size_t i = 0; i < cf_config_count; i++)
    if (!strcmp(cf_config_table[i].name, name)) return &cf_config_table[i];
  return NULL;
}

/* "16M" -> 16777216. Suffixes k/m/g/t (powers of 1024), optional trailing b/ib. */
static int cf__parse_size(const char *v, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (end == v || errno || x < 0 || !isfinite(x)) return -1;
  double mul = 1;
  if (*end) {
    switch (*end | 0x20) {
      case 'k': mul = 1024.0; break;
      case 'm': mul = 1048576.0; break;
      case 'g': mul = 1073741824.0; break;
      case 't': mul = 1099511627776.0; break;
      case 'b': mul = 1; end--; break;
      default: return -1;
    }
    end++;
    if ((*end | 0x20) == 'i') end++;
    if ((*end | 0x20) == 'b') end++;
    if (*end) return -1;
  }
  x *= mul;
  if (x != floor(x)) return -1;
  *out = x;
  return 0;
}

const char *cf_config_allowed(const cf_config_entry_t *e, char *buf, size_t cap) {
  switch (e->type) {
    case CF_CFG_T_ENUM: {
      size_t n = 0;
      buf[0] = 0;
      for (int i = 0; e->choices[i]; i++)
        n += snprintf(buf + n, n < cap ? cap - n : 0, "%s%s", i ? "|" : "", e->choices[i]);
      return buf;
    }
    case CF_CFG_T_INT: snprintf(buf, cap, "%.0f .. %.0f", e->min, e->max); return buf;
    case CF_CFG_T_SIZE: snprintf(buf, cap, "%.0f .. %.0f bytes (k/m/g/t suffixes)", e->min, e->max); return buf;
    case CF_CFG_T_DOUBLE: snprintf(buf, cap, "%g .. %g", e->min, e->max); return buf;
    default: snprintf(buf, cap, "string"); return buf;
  }
}

/* Parse and range-check `value` for `e` into the field of `c`. On error, cf_seterr names the
 * key, the value and the allowed range; `c` is untouched. */
static int cf__set_entry(cf_config_t *c, const cf_config_entry_t *e, const char *value) {
  char allowed[160], why[200];
  char *field = (char *)c + e->off;
  cf_config_allowed(e, allowed, sizeof allowed);
  switch (e->type) {
    case CF_CFG_T_STR:
      if (strlen(value) >= CF_CFG_STR_MAX)
        return cf_seterr(CF_ERANGE, "key '%s': value longer than %d bytes", e->name, CF_CFG_STR_MAX - 1);
      if (e->validate && e->validate(value, why, sizeof why))
        return cf_seterr(CF_EINVAL, "key '%s': bad value '%s': %s", e->name, value, why);
      strcpy(field, value);
      return 0;
    case CF_CFG_T_ENUM:
      for (int i = 0; e->choices[i]; i++)
        if (!strcasecmp(value, e->choices[i])) { *(int *)field = i; return 0; }
      return cf_seterr(CF_EINVAL, "key '%s': bad value '%s': expected one of %s", e->name, value, allowed);
    case CF_CFG_T_INT:
    case CF_CFG_T_SIZE:
    case CF_CFG_T_DOUBLE: {
      double x;
      char *end;
      if (e->type == CF_CFG_T_SIZE) {
        if (cf__parse_size(value, &x))
          return cf_seterr(CF_EINVAL, "key '%s': bad value '%s': expected a byte count, allowed %s", e->name, value, allowed);
      } else {
        errno = 0;
        x = e->type == CF_CFG_T_INT ? (double)strtoll(value, &end, 10) : strtod(value, &end);
        if (end == value || *end || errno || !isfinite(x))
          return cf_seterr(CF_EINVAL, "key '%s': bad value '%s': expected %s, allowed %s", e->name, value,
                           e->type == CF_CFG_T_INT ? "an integer" : "a number", allowed);
      }
      if (x < e->min || x > e->max)
        return cf_seterr(CF_ERANGE, "key '%s': value '%s' out of range, allowed %s", e->name, value, allowed);
      if (e->type == CF_CFG_T_DOUBLE) *(double *)field = x;
      else *(int64_t *)field = (int64_t)x;
      return 0;
    }
  }
  return cf_seterr(CF_EINTERNAL, "key '%s': bad table type", e->name);
}

int cf_config_set(cf_config_t *c, const char *name, const char *value) {
  const cf_config_entry_t *e = cf_config_find(name);
  if (!e) return cf_seterr(CF_ENOTFOUND, "unknown key '%s'", name);
  return cf__set_entry(c, e, value);
}

void cf_config_defaults(cf_config_t *c) {
  memset(c, 0, sizeof *c);
  for (size_t i = 0; i < cf_config_count; i++) {
    int rc = cf__set_entry(c, &cf_config_table[i], cf_config_table[i].def);
    if (rc) { /* a bad default is a programming error: say so loudly, never silently */
      fprintf(stderr, "cf_config: bad default: %s\n", cf_errmsg());
      abort();
    }
  }
}

const char *cf_config_format(const cf_config_t *c, const cf_config_entry_t *e, char *buf, size_t cap) {
  const char *field = (const char *)c + e->off;
  switch (e->type) {
    case CF_CFG_T_STR: /* a secret never leaves: GetConfig, the dump and reload logs show this */
      snprintf(buf, cap, "%s", e->off == F(remote_password) && *field ? "(set)" : field);
      break;
    case CF_CFG_T_ENUM: snprintf(buf, cap, "%s", e->choices[*(const int *)field]); break;
    case CF_CFG_T_INT:
    case CF_CFG_T_SIZE: snprintf(buf, cap, "%lld", (long long)*(const int64_t *)field); break;
    case CF_CFG_T_DOUBLE: snprintf(buf, cap, "%g", *(const double *)field); break;
  }
  return buf;
}

void cf_config_dump(const cf_config_t *c, FILE *f) {
  char v[CF_CFG_STR_MAX];
  for (size_t i = 0; i < cf_config_count; i++)
    fprintf(f, "%s = %s\n", cf_config_table[i].name, cf_config_format(c, &cf_config_table[i], v, sizeof v));
}

/* ---------------------------------------------------------------- file parsing */
/* libinih does not hand the line number to the handler (Debian builds it without
 * INI_HANDLER_LINENO), so our reader counts the lines it feeds the parser; with multi-line
 * values turned off the handler always runs for the line just read. */
typedef struct {
  FILE *f;
  int line;
  const char *path;
  cf_config_t *c;
  int nbad;
  int read_errno; /* a read that failed (fgets NULL with ferror): EISDIR, EIO */
  void (*report)(const char *);
} cf__ini_ctx_t;

static char *cf__ini_reader(char *str, int num, void *stream) {
  cf__ini_ctx_t *x = stream;
  char *r = fgets(str, num, x->f);
  if (r) x->line++;
  else if (ferror(x->f)) x->read_errno = errno ? errno : EIO;
  return r;
}

static void cf__report(cf__ini_ctx_t *x, const char *fmt, ...) {
  char msg[1024];
  int n = snprintf(msg, sizeof msg, "%s:%d: ", x->path, x->line);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + n, sizeof msg - n, fmt, ap);
  va_end(ap);
  x->nbad++;
  if (x->report) x->report(msg);
  else CF_ERROR("config: %s", msg);
}

static int cf__ini_handler(void *user, const char *section, const char *name, const char *value) {
  cf__ini_ctx_t *x = user;
  (void)section; /* sections are banners for the reader; keys are unique across them */
  if (cf_config_set(x->c, name, value)) cf__report(x, "%s", cf_errmsg());
  return 1; /* keep going: report every bad line in one run */
}

int cf_config_load(cf_config_t *c, const char *path, void (*report)(const char *line), int *nbad) {
  cf__ini_ctx_t x = {.path = path, .c = c, .report = report};
  if (nbad) *nbad = 0;
  x.f = fopen(path, "r");
  if (!x.f) return cf_seterr(cf_err_from_errno(-errno), "%s: cannot open config: %s", path, strerror(errno));
  ini_allow_multiline = 0;
  int rc = ini_parse_stream(cf__ini_reader, &x, cf__ini_handler, &x);
  if (rc > 0) { /* a syntax error (no '=' or bad section): inih stops at the first one */
    x.line = rc;
    cf__report(&x, "syntax error: expected 'key = value', '[section]' or a comment");
  } else if (rc < 0) {
    cf__report(&x, "read error");
  } else if (x.read_errno) {
    /* inih takes a failed read for the end of the file: a directory (or an I/O error) would
     * read as an empty config, every key at its default — a SIGHUP then reverted the running
     * settings to the defaults */
    cf__report(&x, "read error: %s (nothing applied)", strerror(x.read_errno));
  }
  fclose(x.f);
  if (nbad) *nbad = x.nbad;
  if (x.nbad) return cf_seterr(CF_EINVAL, "%s: %d bad line%s", path, x.nbad, x.nbad == 1 ? "" : "s");
  return 0;
}

void cf_config_apply_reload(cf_config_t *cur, const cf_config_t *fresh, int *n_applied, int *n_restart) {
  char a[CF_CFG_STR_MAX], b[CF_CFG_STR_MAX];
  *n_applied = *n_restart = 0;
  for (size_t i = 0; i < cf_config_count; i++) {
    const cf_config_entry_t *e = &cf_config_table[i];
    cf_config_format(cur, e, a, sizeof a);
    cf_config_format(fresh, e, b, sizeof b);
    if (!strcmp(a, b)) continue;
    if (e->reloadable) {
      size_t sz = e->type == CF_CFG_T_STR ? CF_CFG_STR_MAX : e->type == CF_CFG_T_ENUM ? sizeof(int)
                  : e->type == CF_CFG_T_DOUBLE ? sizeof(double) : sizeof(int64_t);
      memcpy((char *)cur + e->off, (const char *)fresh + e->off, sz);
      CF_INFO("reload: %s changed from '%s' to '%s'", e->name, a, b);
      (*n_applied)++;
    } else {
      CF_WARN("reload: %s changed from '%s' to '%s' but needs a restart; keeping '%s'", e->name, a, b, a);
      (*n_restart)++;
    }
  }
}
