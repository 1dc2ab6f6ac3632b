/* cf_notify — the systemd notify protocol, by hand (no libsystemd): one datagram per message
 * to $NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). Without $NOTIFY_SOCKET
 * every call is a no-op, so the daemon runs the same under systemd and in a terminal. */
#ifndef CF_NOTIFY_H
#define CF_NOTIFY_H

#include <stdint.h>

/* Send `msg` ("READY=1", "STATUS=loading model", "STOPPING=1", "WATCHDOG=1", several lines
 * joined by '\n'). Returns 0 (also when not under systemd) or CF_EIO with the reason. */
int cf_notify(const char *msg);
/* printf form. */
int cf_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval asked by systemd ($WATCHDOG_USEC, for this pid per $WATCHDOG_PID),
 * or 0 when none. Ping at half of it. */
uint64_t cf_notify_watchdog_usec(void);

#endif
