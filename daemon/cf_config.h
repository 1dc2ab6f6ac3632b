/* cf_config — cacheflowd's settings, driven by ONE declarative table (Redis config.c style).
 *
 * The table (cf_config.c) names each directive with its type, bounds or choices, default,
 * reloadable flag and help line. It drives: parsing conf/cacheflowd.conf (INI, libinih),
 * command-line overrides, `cacheflowd --check-config` (every bad value reported with
 * file:line, key, value and the allowed range), the GetConfig RPC, the config dump, and SIGHUP
 * reload (only reloadable keys are applied; the others are logged as needing a restart).
 */
#ifndef CF_CONFIG_H
#define CF_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CF_CFG_STR_MAX 512

typedef enum { CF_EVICT_LRU = 0, CF_EVICT_S3FIFO, CF_EVICT_COST } cf_evict_kind_t;
typedef enum { CF_BACKEND_AUTO = 0, CF_BACKEND_CPU, CF_BACKEND_CUDA } cf_backend_kind_t;
/* kv_dtype: the element type of stored cells and of the engines' KV buffers. */
typedef enum { CF_KVDT_AUTO = 0, CF_KVDT_F32, CF_KVDT_BF16, CF_KVDT_F16 } cf_kv_dtype_kind_t;

typedef struct {
  char listen[CF_CFG_STR_MAX];          /* unix:/path (the default) */
  char tcp_listen[CF_CFG_STR_MAX];      /* host:port or "" (off) */
  int tcp_insecure;                     /* 0 = no, 1 = yes: plaintext TCP on a non-loopback address allowed */
  char tls_cert_file[CF_CFG_STR_MAX];   /* TCP listener's PEM chain; "" = plaintext TCP (cf_tls.h) */
  char tls_key_file[CF_CFG_STR_MAX];    /* its PEM private key */
  char tls_client_ca_file[CF_CFG_STR_MAX]; /* PEM CAs of client certificates; set = mutual TLS */
  char metrics_listen[CF_CFG_STR_MAX];  /* host:port, unix:/path or "" (off) */
  char model[CF_CFG_STR_MAX];           /* HF checkpoint directory or "" */
  char store_dir[CF_CFG_STR_MAX];
  int64_t cpu_tier_bytes, ssd_tier_bytes;
  int eviction;                         /* cf_evict_kind_t */
  int64_t chunk_tokens;
  int policy;                           /* cf_policy_t (sched/cf_sched.h): same order as the
                                         * choices, = the proto's Policy minus 1 */
  int64_t batch_window_us, batch_max;
  int64_t trace_restores, trace_ops;    /* restore traces kept (cf_trace), steps per trace */
  double cpu_read_gbps, ssd_read_gbps;  /* 0 = unlimited */
  int cost_refit;                       /* 0 = off, 1 = on: plan with the re-fitted compute term */
  double cost_refit_weight;             /* EWMA weight of one executed restore (cf_refit.h) */
  char cost_model[CF_CFG_STR_MAX];      /* "gamma,alpha,beta" (s, s/token, s/token^2) instead of the
                                         * start-up measurement's compute terms; "" = measured */
  int64_t drain_timeout_s;
  int64_t max_request_tokens, max_message_bytes, max_engines, max_blocks;
  int log_level;                        /* cf_log_level_t */
  int64_t threads;                      /* 0 = one per core */
  int backend;                          /* cf_backend_kind_t */
  int kv_dtype;                         /* cf_kv_dtype_kind_t (auto: bf16 on the cuda backend, else f32) */
  int gpu_executor;                     /* 0 = off, 1 = on: restores/saves of CUDA IPC engines on the GPU
                                           (cuda backend only; unverified on hardware, hence off) */
  int gpu_load_mode;                    /* cf_gpu_load_mode_t: staged | zerocopy | arena */
  /* remote tier (lib/store/cf_remote.h): "" = none */
  char remote_url[CF_CFG_STR_MAX];      /* redis://h:p | redis+cluster://h1:p1,... | unix:/path */
  char remote_password[CF_CFG_STR_MAX]; /* AUTH; shown as "(set)" by GetConfig and the dump */
  int64_t remote_timeout_ms, remote_queue_bytes, remote_ttl_s;
  double remote_read_gbps;              /* emulated limit and planner rate; 0 = measured at start */
  int64_t remote_promote_bytes;         /* promotion of remote hits; 0 = off */
  int64_t host_memory_bytes;            /* restore working memory of the CPU executor; 0 = unbounded */
  int64_t gpu_memory_bytes;             /* what the cuda backend may hold on the device; 0 = unbounded */
} cf_config_t;

typedef enum { CF_CFG_T_STR, CF_CFG_T_INT, CF_CFG_T_SIZE, CF_CFG_T_DOUBLE, CF_CFG_T_ENUM } cf_cfg_type_t;

typedef struct {
  const char *name;
  cf_cfg_type_t type;
  size_t off;                 /* offsetof(cf_config_t, field) */
  double min, max;            /* numbers: inclusive bounds */
  const char *const *choices; /* enums: NULL-terminated names, value = index */
  const char *def;            /* default, as written in the file */
  int (*validate)(const char *value, char *why, size_t cap); /* extra check or NULL; 0 = ok */
  int reloadable;
  const char *help;
} cf_config_entry_t;

extern const cf_config_entry_t cf_config_table[];
extern const size_t cf_config_count;

/* Fill `c` with every default. */
void cf_config_defaults(cf_config_t *c);

/* cost_model's "gamma,alpha,beta" into out[3]: 0, or -1 when it is not three numbers >= 0 with
 * alpha or beta > 0 (the validator's rule). */
int cf_config_parse_cost_model(const char *v, double out[3]);

/* Set `name` to `value` (the file's spelling: sizes take k/m/g/t suffixes, enums their names).
 * Returns 0, CF_ENOTFOUND (unknown key) or CF_ERANGE/CF_EINVAL (bad value); on error `c` is
 * unchanged and the detail (cf_errmsg) names the key, the value and the allowed range. */
int cf_config_set(cf_config_t *c, const char *name, const char *value);

/* Parse the INI file `path` into `c` (on top of what it holds). Every bad line is reported
 * through `report` (or logged when NULL) as "path:line: key 'k': ..." and the parse goes on,
 * so one run shows every error. Returns 0, or CF_EINVAL/CF_ENOENT/CF_EIO with the number of
 * bad lines in *nbad. */
int cf_config_load(cf_config_t *c, const char *path, void (*report)(const char *line), int *nbad);

/* Write the value of entry `e` of `c` into buf (the file spelling). Returns buf. */
const char *cf_config_format(const cf_config_t *c, const cf_config_entry_t *e, char *buf, size_t cap);
/* "1 .. 4096", "lru|s3fifo", "string" — the allowed values of `e`. */
const char *cf_config_allowed(const cf_config_entry_t *e, char *buf, size_t cap);
/* Find an entry by name; NULL if none. */
const cf_config_entry_t *cf_config_find(const char *name);

/* Print every setting as "name = value" lines (a valid config file). */
void cf_config_dump(const cf_config_t *c, FILE *f);

/* Copy the reloadable settings of `fresh` into `cur`. Each changed non-reloadable key is
 * logged as needing a restart and counted in *n_restart; changed reloadable ones are logged
 * and counted in *n_applied. */
void cf_config_apply_reload(cf_config_t *cur, const cf_config_t *fresh, int *n_applied, int *n_restart);

#endif
