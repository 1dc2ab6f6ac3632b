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

static void cf__usage(FILE *f) {
  fprintf(f, "usage: cacheflowctl <command> [options]\n\ncommands:\n");
  for (int i = 0; i < cf__ncmds; i++)
    fprintf(f, "  %-8s %s\n           %s\n", cf__cmds[i]->name, cf__cmds[i]->usage, cf__cmds[i]->help);
}

int main(int argc, char **argv) {
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
