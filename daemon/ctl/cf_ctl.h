/* cacheflowctl — the operator's CLI. Each subcommand lives in its own daemon/ctl/cf_ctl_*.c
 * and registers itself with CF_CTL_COMMAND, so adding one touches no shared file.
 * A subcommand returns the process exit status: 0 ok, 1 failure (after printing one line
 * "cacheflowctl <cmd>: <reason>" on stderr), 2 usage error. */
#ifndef CF_CTL_H
#define CF_CTL_H

typedef struct {
  const char *name;   /* "kv", "store", "status", ... */
  const char *usage;  /* one line of arguments */
  const char *help;   /* one line of what it does */
  int (*main)(int argc, char **argv); /* argv[0] is the subcommand name */
} cf_ctl_cmd_t;

void cf_ctl_register(const cf_ctl_cmd_t *cmd);

/* Strict decimal parse of a whole option value: digits only (no sign, no suffix, no trailing
 * text), at most `max`. Returns 0 and *out, or -1 (the caller names the option in its error). */
int cf_ctl_parse_u64(const char *s, unsigned long long max, unsigned long long *out);

/* Print "cacheflowctl <cmd>: <formatted reason>\n" to stderr; returns 1. */
int cf_ctl_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* TLS towards a daemon's tcp_listen: --tls-ca FILE, --tls-cert FILE, --tls-key FILE,
 * --tls-server-name NAME anywhere on the command line (main takes them out before the
 * subcommand parses its options), else $CACHEFLOW_TLS_CA, _CERT, _KEY, _SERVER_NAME. Used only
 * for host:port addresses: the unix socket is plaintext. NULL = not set. */
extern const char *cf_ctl_tls_ca, *cf_ctl_tls_cert, *cf_ctl_tls_key, *cf_ctl_tls_server_name;

#define CF_CTL_COMMAND(var)                                                  \
  __attribute__((constructor)) static void var##__reg(void) { cf_ctl_register(&var); }

#endif
