/* cf_assert — our own assertions, never compiled out (NDEBUG does not touch them).
 * For invariants only: bad input from a user or a file is an error return, not an assert. */
#ifndef CF_ASSERT_H
#define CF_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define CF_ASSERT(cond)                                                              \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);   \
      abort();                                                                       \
    }                                                                                \
  } while (0)

/* Compares as long long and prints both values. */
#define CF_ASSERT_OP(a, op, b)                                                       \
  do {                                                                               \
    long long cf__a = (long long)(a), cf__b = (long long)(b);                        \
    if (!(cf__a op cf__b)) {                                                         \
      fprintf(stderr, "%s:%d: assertion failed: %s %s %s (%lld vs %lld)\n",          \
              __FILE__, __LINE__, #a, #op, #b, cf__a, cf__b);                        \
      abort();                                                                       \
    }                                                                                \
  } while (0)

#define CF_ASSERT_EQ(a, b) CF_ASSERT_OP(a, ==, b)
#define CF_ASSERT_LT(a, b) CF_ASSERT_OP(a, <, b)
#define CF_ASSERT_LE(a, b) CF_ASSERT_OP(a, <=, b)

#endif
