/* cf_pidwatch — a process's exit as a loop event: a pidfd polled by libuv, or a timer that
 * re-reads /proc/<pid>/stat where pidfds are not available. */
#include "cf_pidwatch.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/cf_err.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif

struct cf_pidwatch_s {
  union {
    uv_handle_t h;
    uv_poll_t poll;   /* pidfd >= 0 */
    uv_timer_t timer; /* pidfd < 0 */
  } u;
  int pid, pidfd;
  unsigned long long start_time; /* /proc/<pid>/stat field 22: tells a reused pid from ours */
  int fired;
  cf_pidwatch_cb cb;
  void *arg;
};

/* 1 and *start when `pid` runs (not a zombie), 0 when it is gone. comm may hold spaces and ')',
 * so the fields are counted from the last ')'. */
static int cf__proc_alive(int pid, unsigned long long *start) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  char state = 0;
  unsigned long long st = 0;
  /* after ")": state (field 3), then fields 4..21 skipped, starttime is field 22 */
  if (!p || sscanf(p + 1, " %c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %llu", &state,
                   &st) != 2)
    return 0;
  if (state == 'Z' || state == 'X') return 0;
  *start = st;
  return 1;
}

static void cf__fire(cf_pidwatch_t *w) {
  if (w->fired) return;
  w->fired = 1;
  if (w->pidfd >= 0) uv_poll_stop(&w->u.poll);
  else uv_timer_stop(&w->u.timer);
  w->cb(w, w->arg);
}

static void cf__on_pidfd(uv_poll_t *p, int status, int events) {
  (void)status; (void)events; /* readable, or an error on the pidfd: either way the watch ends */
  cf__fire(p->data);
}

static void cf__on_tick(uv_timer_t *t) {
  cf_pidwatch_t *w = t->data;
  unsigned long long st;
  if (!cf__proc_alive(w->pid, &st) || st != w->start_time) cf__fire(w);
}

int cf_pidwatch_start(cf_pidwatch_t **out, uv_loop_t *loop, int pid, int flags, cf_pidwatch_cb cb, void *arg) {
  if (pid <= 0) return cf_seterr(CF_EINVAL, "pid %d: expected a process id > 0", pid);
  cf_pidwatch_t *w = calloc(1, sizeof *w);
  if (!w) return cf_seterr(CF_ENOMEM, "pidwatch");
  w->pid = pid;
  w->cb = cb;
  w->arg = arg;
  w->pidfd = -1;
  if (!(flags & CF_PIDWATCH_FORCE_POLL)) {
    w->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (w->pidfd < 0 && errno == ESRCH) { free(w); return cf_seterr(CF_ENOTFOUND, "pid %d: no such process", pid); }
  }
  if (w->pidfd >= 0) {
    /* a pidfd of a process that already exited (a zombie) is readable at once */
    struct pollfd pf = {.fd = w->pidfd, .events = POLLIN};
    if (poll(&pf, 1, 0) == 1) {
      close(w->pidfd);
      free(w);
      return cf_seterr(CF_ENOTFOUND, "pid %d: the process has exited", pid);
    }
    if (uv_poll_init(loop, &w->u.poll, w->pidfd)) { close(w->pidfd); w->pidfd = -1; } /* fall back to the timer */
    else {
      w->u.poll.data = w;
      uv_poll_start(&w->u.poll, UV_READABLE | UV_DISCONNECT, cf__on_pidfd);
    }
  }
  if (w->pidfd < 0) {
    if (!cf__proc_alive(pid, &w->start_time)) { free(w); return cf_seterr(CF_ENOTFOUND, "pid %d: no such process", pid); }
    uv_timer_init(loop, &w->u.timer);
    w->u.timer.data = w;
    uv_timer_start(&w->u.timer, cf__on_tick, CF_PIDWATCH_POLL_MS, CF_PIDWATCH_POLL_MS);
  }
  *out = w;
  return 0;
}

static void cf__closed(uv_handle_t *h) {
  cf_pidwatch_t *w = h->data;
  if (w->pidfd >= 0) close(w->pidfd); /* after libuv stopped polling it */
  free(w);
}

void cf_pidwatch_stop(cf_pidwatch_t *w) {
  if (!w) return;
  w->fired = 1; /* no callback after stop */
  uv_close(&w->u.h, cf__closed);
}

int cf_pidwatch_uses_pidfd(const cf_pidwatch_t *w) { return w->pidfd >= 0; }
