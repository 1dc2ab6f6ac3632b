/* cf_ratelimit — see cf_ratelimit.h. */
#include "exec/cf_ratelimit.h"

#include <math.h>
#include <time.h>

#include "util/cf_err.h"

static int64_t cf__mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cf_ratelimit_init(cf_ratelimit_t *rl, double bytes_per_s, double burst_bytes) {
  if (!(bytes_per_s >= 0) || !isfinite(bytes_per_s) || !(burst_bytes >= 0) || !isfinite(burst_bytes))
    return cf_seterr(CF_EINVAL, "rate limit: rate %g B/s and burst %g B must be finite and >= 0",
                     bytes_per_s, burst_bytes);
  pthread_mutex_init(&rl->mu, NULL);
  rl->bytes_per_s = bytes_per_s;
  rl->burst_ns = bytes_per_s > 0 ? burst_bytes / bytes_per_s * 1e9 : 0;
  rl->tat_ns = 0;
  rl->bytes_total = 0;
  rl->waited_ns = 0;
  rl->link = NULL;
  return 0;
}

void cf_ratelimit_share(cf_ratelimit_t *rl, cf_ratelimit_t *link) { rl->link = link == rl ? NULL : link; }

void cf_ratelimit_close(cf_ratelimit_t *rl) { pthread_mutex_destroy(&rl->mu); }

void cf_ratelimit_set(cf_ratelimit_t *rl, double bytes_per_s) {
  pthread_mutex_lock(&rl->mu);
  double burst_bytes = rl->bytes_per_s > 0 ? rl->burst_ns * 1e-9 * rl->bytes_per_s : 0;
  rl->bytes_per_s = bytes_per_s > 0 ? bytes_per_s : 0;
  rl->burst_ns = rl->bytes_per_s > 0 ? burst_bytes / rl->bytes_per_s * 1e9 : 0;
  pthread_mutex_unlock(&rl->mu);
}

/* Reserve `bytes` on rl's clock (its link's when shared); returns the wake time, or 0 when no
 * limit applies. try: reserve only if the wake time is not in the future (else return -1). */
static int64_t cf__reserve(cf_ratelimit_t *rl, size_t bytes, int64_t now, int try) {
  pthread_mutex_lock(&rl->mu);
  if (rl->bytes_per_s <= 0) {
    rl->bytes_total += bytes;
    pthread_mutex_unlock(&rl->mu);
    return 0;
  }
  cf_ratelimit_t *clk = rl;
  double dur_ns = (double)bytes / rl->bytes_per_s * 1e9, burst_ns = rl->burst_ns;
  if (rl->link) { /* a tier sharing a link: advance the link's clock by this tier's time */
    pthread_mutex_unlock(&rl->mu);
    clk = rl->link;
    pthread_mutex_lock(&clk->mu);
  }
  /* An idle link does not bank credit beyond the burst; but a caller that comes back within
   * CF_RATELIMIT_CATCHUP_NS of its previous reservation's end (it was copying, or its sleep
   * overshot) continues back to back, as a link with queued transfers does: without this each
   * op's software overhead (~50-100 us here) idled the emulated link, which made all-load
   * restores at 10 Gbps 1.8x slower than the transfer time the planner models. */
  int64_t tat = clk->tat_ns < now - CF_RATELIMIT_CATCHUP_NS ? now : clk->tat_ns;
  int64_t wake = tat + (int64_t)dur_ns - (int64_t)burst_ns;
  if (try && wake > now) {
    pthread_mutex_unlock(&clk->mu);
    return -1;
  }
  clk->tat_ns = tat + (int64_t)dur_ns;
  pthread_mutex_unlock(&clk->mu);
  pthread_mutex_lock(&rl->mu);
  rl->bytes_total += bytes;
  pthread_mutex_unlock(&rl->mu);
  return wake;
}

void cf_ratelimit_acquire(cf_ratelimit_t *rl, size_t bytes) {
  if (!rl) return;
  int64_t now = cf__mono_ns();
  int64_t wake = cf__reserve(rl, bytes, now, 0);
  if (wake <= now) return;
  struct timespec ts = {wake / 1000000000, wake % 1000000000};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {}
  pthread_mutex_lock(&rl->mu);
  rl->waited_ns += wake - now;
  pthread_mutex_unlock(&rl->mu);
}

int cf_ratelimit_try_acquire(cf_ratelimit_t *rl, size_t bytes) {
  if (!rl) return 1;
  return cf__reserve(rl, bytes, cf__mono_ns(), 1) >= 0;
}
