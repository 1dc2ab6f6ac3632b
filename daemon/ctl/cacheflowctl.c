/* cacheflowctl main: dispatch to the registered subcommand. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "ctl/cf_ctl.h"

#define CF_CTL_MAX 32
static const cf_ctl_cmd_t *cf__cmds[CF_CTL_MAX];
static int cf__ncmds;

void cf_ctl_register(const cf_ctl_cmd_t *cmd) {
  if (cf__ncmds < CF_CTL_MAX) cf__cmds[cf__ncmds++] = cmd;
}

int cf_ctl_parse_u64(const char *s, unsigned long long max, unsigned long long *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || s[0] == '+' || v > max) return -1;
  *out = v;
  return 0;
}

int cf_ctl_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cacheflowctl %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

const char *cf_ctl_tls_ca, *cf_ctl_tls_cert, *cf_ctl_tls_key, *cf_ctl_tls_server_name;

/* Take the --tls-* options out of argv (any position, "--opt VALUE" or "--opt=VALUE"), then
 * fill what is unset from the environment. Returns the new argc, or -1 (a value is missing). */
static int cf__take_tls(int argc, char **argv) {
  static const struct { const char *opt, *env; const char **dst; } t[] = {
      {"--tls-ca", "CACHEFLOW_TLS_CA", &cf_ctl_tls_ca},
      {"--tls-cert", "CACHEFLOW_TLS_CERT", &cf_ctl_tls_cert},
      {"--tls-key", "CACHEFLOW_TLS_KEY", &cf_ctl_tls_key},
      {"--tls-server-name", "CACHEFLOW_TLS_SERVER_NAME", &cf_ctl_tls_server_name}};
  int n = 1;
  for (int i = 1; i < argc; i++) {
    int used = 0;
    for (size_t k = 0; k < sizeof t / sizeof t[0] && !used; k++) {
      size_t l = strlen(t[k].opt);
      if (strncmp(argv[i], t[k].opt, l)) continue;
      if (argv[i][l] == '=') { *t[k].dst = argv[i] + l + 1; used = 1; }
      else if (!argv[i][l]) {
        if (i + 1 >= argc) { fprintf(stderr, "cacheflowctl: %s needs a value\n", t[k].opt); return -1; }
        *t[k].dst = argv[++i];
        used = 1;
      }
    }
    if (!used) argv[n++] = argv[i];
  }
  argv[n] = NULL;
  for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
    const char *e = getenv(t[k].env);
    if (!*t[k].dst && e && *e) *t[k].dst = e;
  }
  return n;
}

static void cf__usage(FILE *f) {
  fprintf(f, "usage: cacheflowctl <command> [options]\n"
             "       TLS to a tcp_listen address: [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]\n"
             "       (or $CACHEFLOW_TLS_CA, _CERT, _KEY, _SERVER_NAME)\n\ncommands:\n");
  for (int i = 0; i < cf__ncmds; i++)
    fprintf(f, "  %-8s %s\n           %s\n", cf__cmds[i]->name, cf__cmds[i]->usage, cf__cmds[i]->help);
}

int main(int argc, char **argv) {
  if ((argc = cf__take_tls(argc, argv)) < 0) return 2;
  if (argc < 2) { cf__usage(stderr); return 2; }
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
    cf__usage(stdout);
    return 0;
  }
  for (int i = 0; i < cf__ncmds; i++)
    if (!strcmp(cf__cmds[i]->name, argv[1])) return cf__cmds[i]->main(argc - 1, argv + 1);
  fprintf(stderr, "cacheflowctl: unknown command '%s' (try --help)\n", argv[1]);
  return 2;
}
