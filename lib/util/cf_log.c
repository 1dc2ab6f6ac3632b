#include "util/cf_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int cf_log_level = CF_LOG_INFO;

static const char *const cf__lvl_names[] = {"error", "warn", "info", "debug"};

const char *cf_log_level_name(int lvl) {
  return (lvl >= 0 && lvl < 4) ? cf__lvl_names[lvl] : "?";
}

void cf__log(int lvl, const char *file, int line, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  /* Escape quotes and newlines so one event is one parseable line. */
  char esc[4096];
  size_t j = 0;
  for (size_t i = 0; msg[i] && j + 2 < sizeof esc; i++) {
    char c = msg[i];
    if (c == '"' || c == '\\') { esc[j++] = '\\'; esc[j++] = c; }
    else if (c == '\n') { esc[j++] = '\\'; esc[j++] = 'n'; }
    else esc[j++] = c;
  }
  esc[j] = 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char tbuf[32];
  strftime(tbuf, sizeof tbuf, "%Y-%m-%dT%H:%M:%S", &tm);
  flockfile(stderr);
  fprintf(stderr, "%s.%03ldZ level=%s src=%s:%d msg=\"%s\"\n", tbuf, ts.tv_nsec / 1000000,
          cf_log_level_name(lvl), file, line, esc);
  funlockfile(stderr);
}
