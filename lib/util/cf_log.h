/* cf_log — leveled, structured log lines on stderr:
 *   2026-11-27T02:00:00.123Z level=info src=daemon/cf_main.c:42 msg="listening" addr=unix:/run/cf.sock
 * The macros test the level before evaluating their arguments (Redis serverLog style). */
#ifndef CF_LOG_H
#define CF_LOG_H

typedef enum { CF_LOG_ERROR = 0, CF_LOG_WARN, CF_LOG_INFO, CF_LOG_DEBUG } cf_log_level_t;

/* Read by every thread, set on SIGHUP (the daemon's loop): relaxed atomics on both sides
 * (cf_log_set_level), a data race otherwise (make tsan). */
extern int cf_log_level;
static inline void cf_log_set_level(int lvl) { __atomic_store_n(&cf_log_level, lvl, __ATOMIC_RELAXED); }

const char *cf_log_level_name(int lvl);

void cf__log(int lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define CF_LOG(lvl, ...)                                                      \
  do {                                                                        \
    if ((lvl) <= __atomic_load_n(&cf_log_level, __ATOMIC_RELAXED))            \
      cf__log((lvl), __FILE__, __LINE__, __VA_ARGS__);                        \
  } while (0)
#define CF_ERROR(...) CF_LOG(CF_LOG_ERROR, __VA_ARGS__)
#define CF_WARN(...) CF_LOG(CF_LOG_WARN, __VA_ARGS__)
#define CF_INFO(...) CF_LOG(CF_LOG_INFO, __VA_ARGS__)
#define CF_DEBUG(...) CF_LOG(CF_LOG_DEBUG, __VA_ARGS__)

#endif
