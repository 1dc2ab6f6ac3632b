/* cf_clock — timed waits that a wall-clock step cannot stretch or cut short.
 *
 * pthread_cond_timedwait measures its absolute deadline on the condition variable's clock,
 * CLOCK_REALTIME unless told otherwise. An NTP step, a VM resumed from a snapshot or an operator's
 * `date -s` moves that clock: a step back by an hour made a 50 ms wait (the spiller's pace, an
 * eviction waiting for SSD slots, how late the executor notices a cancel) or a bounded flush (the
 * remote write-back, queued promotions) last an hour, and a step forward timed them out at once.
 * Condition variables that take timed waits are made on CLOCK_MONOTONIC, and their deadlines
 * are computed on it. Header-only so that every module below can use it without a link-time
 * dependency. */
#ifndef CF_CLOCK_H
#define CF_CLOCK_H
#include <pthread.h>
#include <time.h>

/* pthread_cond_init on CLOCK_MONOTONIC (for pthread_cond_timedwait with cf_deadline_ms). */
static inline int cf_cond_init_mono(pthread_cond_t *cv) {
  pthread_condattr_t a;
  int rc = pthread_condattr_init(&a);
  if (rc) return rc;
  rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  if (!rc) rc = pthread_cond_init(cv, &a);
  pthread_condattr_destroy(&a);
  return rc;
}

/* The absolute CLOCK_MONOTONIC time `ms` milliseconds from now, for a cf_cond_init_mono cv. */
static inline struct timespec cf_deadline_ms(long ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
  return ts;
}
#endif
