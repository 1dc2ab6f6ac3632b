/* cf_test — the tiny test harness every tests/unit/test_*.c binary uses.
 *
 *   CF_TEST(json_parses_nested) { CF_CHECK_EQ(x, 3); }
 *
 * Each binary runs its tests (or those whose name contains argv[1]) and ends with the line
 * "N passed, N failed, N skipped"; tests/run.sh adds those up. A failed check records
 * file:line and both values, and the test goes on (so one run shows every broken check).
 */
#ifndef CF_TEST_H
#define CF_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util/cf_err.h"

typedef void (*cf_test_fn)(void);
void cf_test_register(const char *name, cf_test_fn fn);
void cf_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void cf_test_skip(const char *why);
/* A fresh empty directory for this test (removed at exit unless CF_TEST_KEEP is set). */
const char *cf_test_tmpdir(void);
/* Path of the shared fixtures ("../shared/fixtures" relative to the repo, or $CF_FIXTURES). */
const char *cf_test_fixtures(void);
/* Deterministic per-test random numbers (seed from CF_TEST_SEED or the clock; printed on failure). */
unsigned long long cf_test_rand(void);
double cf_test_uniform(void); /* [0,1) */

#define CF_TEST(name)                                                              \
  static void name(void);                                                          \
  __attribute__((constructor)) static void name##__reg(void) {                     \
    cf_test_register(#name, name);                                                 \
  }                                                                                \
  static void name(void)

#define CF_CHECK(cond)                                                             \
  do {                                                                             \
    if (!(cond)) cf_test_fail(__FILE__, __LINE__, "check failed: %s", #cond);      \
  } while (0)

#define CF_CHECK_MSG(cond, ...)                                                    \
  do {                                                                             \
    if (!(cond)) cf_test_fail(__FILE__, __LINE__, __VA_ARGS__);                    \
  } while (0)

#define CF_CHECK_OP(a, op, b)                                                      \
  do {                                                                             \
    long long cf__ta = (long long)(a), cf__tb = (long long)(b);                    \
    if (!(cf__ta op cf__tb))                                                       \
      cf_test_fail(__FILE__, __LINE__, "check failed: %s %s %s (%lld vs %lld)", #a, \
                   #op, #b, cf__ta, cf__tb);                                       \
  } while (0)
#define CF_CHECK_EQ(a, b) CF_CHECK_OP(a, ==, b)
#define CF_CHECK_NE(a, b) CF_CHECK_OP(a, !=, b)
#define CF_CHECK_LT(a, b) CF_CHECK_OP(a, <, b)
#define CF_CHECK_LE(a, b) CF_CHECK_OP(a, <=, b)
#define CF_CHECK_GT(a, b) CF_CHECK_OP(a, >, b)
#define CF_CHECK_GE(a, b) CF_CHECK_OP(a, >=, b)

#define CF_CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                             \
    double cf__na = (double)(a), cf__nb = (double)(b), cf__nt = (double)(tol);     \
    if (!(fabs(cf__na - cf__nb) <= cf__nt))                                        \
      cf_test_fail(__FILE__, __LINE__, "check failed: |%s - %s| <= %g (%.9g vs %.9g)", \
                   #a, #b, cf__nt, cf__na, cf__nb);                                \
  } while (0)

#define CF_CHECK_STR(a, b)                                                         \
  do {                                                                             \
    const char *cf__sa = (a), *cf__sb = (b);                                       \
    if (!cf__sa || !cf__sb || strcmp(cf__sa, cf__sb) != 0)                         \
      cf_test_fail(__FILE__, __LINE__, "check failed: %s == %s (\"%s\" vs \"%s\")", #a, \
                   #b, cf__sa ? cf__sa : "(null)", cf__sb ? cf__sb : "(null)");    \
  } while (0)

/* `hay` contains `needle` (for checking error messages). */
#define CF_CHECK_CONTAINS(hay, needle)                                             \
  do {                                                                             \
    const char *cf__h = (hay), *cf__n = (needle);                                  \
    if (!cf__h || !strstr(cf__h, cf__n))                                           \
      cf_test_fail(__FILE__, __LINE__, "check failed: \"%s\" contains \"%s\"",     \
                   cf__h ? cf__h : "(null)", cf__n);                               \
  } while (0)

/* expr returns 0; otherwise print the CF error and its detail. */
#define CF_CHECK_OK(expr)                                                          \
  do {                                                                             \
    int cf__rc = (expr);                                                           \
    if (cf__rc != 0)                                                               \
      cf_test_fail(__FILE__, __LINE__, "%s failed: %s: %s", #expr,                 \
                   cf_strerror(cf__rc), cf_errmsg());                              \
  } while (0)

/* expr returns exactly `code`. */
#define CF_CHECK_ERR(expr, code)                                                   \
  do {                                                                             \
    int cf__rc = (expr);                                                           \
    if (cf__rc != (code))                                                          \
      cf_test_fail(__FILE__, __LINE__, "%s returned %s (%s), expected %s", #expr,  \
                   cf_err_name(cf__rc), cf_errmsg(), cf_err_name(code));           \
  } while (0)

#define CF_SKIP(why) do { cf_test_skip(why); return; } while (0)

#endif
