/* daemon/cf_pidwatch: a real child process, really killed (SIGKILL), seen exiting by the loop —
 * through a pidfd and through the /proc polling fallback. */
#include "cf_test.h"
#include "cf_pidwatch.h"
#include "util/cf_err.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int n_fired;

static void on_exit_cb(cf_pidwatch_t *w, void *arg) {
  (void)arg;
  n_fired++;
  cf_pidwatch_stop(w); /* from inside the callback, as the service does */
}

static pid_t spawn_sleeper(void) {
  pid_t p = fork();
  if (p == 0) {
    for (;;) pause();
  }
  return p;
}

static void watch_kill(int flags) {
  uv_loop_t loop;
  CF_CHECK_OK(uv_loop_init(&loop));
  pid_t child = spawn_sleeper();
  CF_CHECK_GT(child, 0);
  cf_pidwatch_t *w = NULL;
  n_fired = 0;
  CF_CHECK_OK(cf_pidwatch_start(&w, &loop, child, flags, on_exit_cb, NULL));
  if (flags & CF_PIDWATCH_FORCE_POLL) CF_CHECK_EQ(cf_pidwatch_uses_pidfd(w), 0);
  /* alive: a pass of the loop does not fire */
  uv_run(&loop, UV_RUN_NOWAIT);
  CF_CHECK_EQ(n_fired, 0);
  kill(child, SIGKILL);
  /* not reaped: the child is a zombie, which counts as gone */
  uv_run(&loop, UV_RUN_DEFAULT); /* returns once the callback stopped the only handle */
  CF_CHECK_EQ(n_fired, 1);
  /* a zombie cannot be watched */
  CF_CHECK_EQ(cf_pidwatch_start(&w, &loop, child, flags, on_exit_cb, NULL), CF_ENOTFOUND);
  int st;
  CF_CHECK_EQ(waitpid(child, &st, 0), child);
  CF_CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  /* nor a pid with no process */
  CF_CHECK_EQ(cf_pidwatch_start(&w, &loop, child, flags, on_exit_cb, NULL), CF_ENOTFOUND);
  CF_CHECK_EQ(cf_pidwatch_start(&w, &loop, 0, flags, on_exit_cb, NULL), CF_EINVAL);
  CF_CHECK_OK(uv_loop_close(&loop));
}

CF_TEST(pidwatch_sees_sigkill_through_pidfd) { watch_kill(0); }

CF_TEST(pidwatch_sees_sigkill_by_polling_proc) { watch_kill(CF_PIDWATCH_FORCE_POLL); }

/* Stopped before the process exits: no callback, and every handle is closed (the loop closes). */
CF_TEST(pidwatch_stop_before_exit) {
  for (int flags = 0; flags <= CF_PIDWATCH_FORCE_POLL; flags++) {
    uv_loop_t loop;
    CF_CHECK_OK(uv_loop_init(&loop));
    pid_t child = spawn_sleeper();
    cf_pidwatch_t *w = NULL;
    n_fired = 0;
    CF_CHECK_OK(cf_pidwatch_start(&w, &loop, child, flags, on_exit_cb, NULL));
    cf_pidwatch_stop(w);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CF_CHECK_EQ(n_fired, 0);
    CF_CHECK_OK(uv_loop_close(&loop));
  }
}
