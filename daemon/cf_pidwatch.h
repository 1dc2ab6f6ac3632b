/* cf_pidwatch — tell the loop when a process exits (an engine killed with kill -9 leaves no
 * Unregister behind: the service unregisters it when its process is gone).
 *
 * A pidfd (pidfd_open, Linux >= 5.3) polled readable in the libuv loop: the kernel says when the
 * process exits, at once and without a pid-reuse race. Where pidfd_open fails (older kernel,
 * seccomp) a timer checks every CF_PIDWATCH_POLL_MS that the pid still names the same process
 * (its start time in /proc/<pid>/stat unchanged and not a zombie). Loop thread only.
 */
#ifndef CF_PIDWATCH_H
#define CF_PIDWATCH_H
#include <stdint.h>
#include <uv.h>

#define CF_PIDWATCH_POLL_MS 500
#define CF_PIDWATCH_FORCE_POLL 1 /* flags: use the timer even where a pidfd works (tests) */

typedef struct cf_pidwatch_s cf_pidwatch_t;
/* Called once, on the loop, when the process exited; `arg` as given to start. The watch stays
 * allocated until cf_pidwatch_stop (which the callback may call). */
typedef void (*cf_pidwatch_cb)(cf_pidwatch_t *w, void *arg);

/* Watch process `pid` (> 0). Returns 0 and *out, CF_ENOTFOUND when no such process is running now
 * (or it is a zombie), CF_EINVAL for pid <= 0, CF_ENOMEM. The caller owns *out: cf_pidwatch_stop. */
int cf_pidwatch_start(cf_pidwatch_t **out, uv_loop_t *loop, int pid, int flags, cf_pidwatch_cb cb, void *arg);
/* Stop watching and free it (the memory goes once libuv closed its handle: keep the loop running).
 * NULL is a no-op. */
void cf_pidwatch_stop(cf_pidwatch_t *w);
/* 1 when the watch uses a pidfd, 0 when it polls. */
int cf_pidwatch_uses_pidfd(const cf_pidwatch_t *w);
#endif
