/* cf_ratelimit — a read-rate limiter per storage tier (GCRA / virtual-clock token bucket).
 *
 * Benchmarks emulate 10/40/80 Gbps links on a host whose CPU tier copies at tens of GB/s:
 * every load asks the tier's limiter for its bytes before copying, and is held until the
 * link would have delivered them. Thread-safe; several loader threads share one limiter and
 * together never exceed the rate (plus `burst` bytes).
 */
#ifndef CF_RATELIMIT_H
#define CF_RATELIMIT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* How late a caller may come back and still continue where the link's previous reservation
 * ended (see cf_ratelimit_acquire): covers one op's copy and wake-up, banks no more. */
#define CF_RATELIMIT_CATCHUP_NS 250000

typedef struct cf_ratelimit_s_ {
  pthread_mutex_t mu;
  double bytes_per_s;   /* 0: unlimited */
  double burst_ns;      /* how far ahead of the link a caller may run */
  int64_t tat_ns;       /* theoretical arrival time of the next byte */
  uint64_t bytes_total; /* bytes granted so far (stats) */
  int64_t waited_ns;    /* total time callers slept (stats) */
  struct cf_ratelimit_s_ *link; /* NULL, or the link this tier shares (cf_ratelimit_share) */
} cf_ratelimit_t;

/* Init with a rate in bytes/s (0 = unlimited) and a burst allowance in bytes.
 * Returns 0 or CF_EINVAL for a negative or non-finite rate/burst. */
int cf_ratelimit_init(cf_ratelimit_t *rl, double bytes_per_s, double burst_bytes);
void cf_ratelimit_close(cf_ratelimit_t *rl);
/* Change the rate (config reload); pending reservations keep their times. */
void cf_ratelimit_set(cf_ratelimit_t *rl, double bytes_per_s);
/* Tiers behind one link (the planner's model, cf_cost.h): from now on rl's reservations take
 * bytes / rl's own rate of `link`'s clock instead of rl's own, so the cells of several tiers
 * sharing `link` cross it one after another, each at its tier's rate (link's own rate is
 * not used). NULL link: rl keeps its own clock again. Call before loads start. */
void cf_ratelimit_share(cf_ratelimit_t *rl, cf_ratelimit_t *link);
/* Reserve `bytes` of the link and sleep until they would have arrived. NULL rl: no-op. */
void cf_ratelimit_acquire(cf_ratelimit_t *rl, size_t bytes);
/* Reserve `bytes` only if that needs no sleep now (the link is within its burst): 1 reserved,
 * 0 not (nothing reserved: come back later or call cf_ratelimit_acquire). NULL rl: 1.
 * Lets a caller with reads in flight hand their cells over instead of sleeping on the link. */
int cf_ratelimit_try_acquire(cf_ratelimit_t *rl, size_t bytes);
/* Gbit/s -> bytes/s (10 Gbps = 1.25e9 B/s). */
static inline double cf_gbps(double gbit) { return gbit * 1e9 / 8.0; }

#endif
