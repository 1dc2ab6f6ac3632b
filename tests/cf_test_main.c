/* The main() of every unit-test binary: see cf_test.h. */
#include "cf_test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CF_TEST_MAX 1024

static struct { const char *name; cf_test_fn fn; } cf__tests[CF_TEST_MAX];
static int cf__ntests;
static int cf__cur_failed, cf__cur_skipped;
static const char *cf__cur_name;
static char cf__tmp[4096];
static unsigned long long cf__rng, cf__seed;

void cf_test_register(const char *name, cf_test_fn fn) {
  if (cf__ntests == CF_TEST_MAX) { fprintf(stderr, "too many tests\n"); abort(); }
  cf__tests[cf__ntests].name = name;
  cf__tests[cf__ntests].fn = fn;
  cf__ntests++;
}

void cf_test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stdout, "  %s:%d: [%s] ", file, line, cf__cur_name);
  vfprintf(stdout, fmt, ap);
  fprintf(stdout, "\n");
  va_end(ap);
  fflush(stdout);
  cf__cur_failed++;
}

void cf_test_skip(const char *why) {
  printf("  skip %s: %s\n", cf__cur_name, why);
  cf__cur_skipped = 1;
}

const char *cf_test_tmpdir(void) {
  if (!cf__tmp[0]) {
    const char *base = getenv("TMPDIR");
    snprintf(cf__tmp, sizeof cf__tmp, "%s/cftest.XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(cf__tmp)) { perror("mkdtemp"); abort(); }
  }
  return cf__tmp;
}

const char *cf_test_fixtures(void) {
  const char *e = getenv("CF_FIXTURES");
  return e ? e : "../shared/fixtures";
}

unsigned long long cf_test_rand(void) {
  /* splitmix64 */
  unsigned long long z = (cf__rng += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double cf_test_uniform(void) { return (double)(cf_test_rand() >> 11) / 9007199254740992.0; }

static void cf__rmtmp(void) {
  if (cf__tmp[0] && !getenv("CF_TEST_KEEP")) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", cf__tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", cf__tmp);
  }
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  const char *s = getenv("CF_TEST_SEED");
  cf__seed = s ? strtoull(s, NULL, 0) : (unsigned long long)time(NULL);
  int passed = 0, failed = 0, skipped = 0;
  atexit(cf__rmtmp);
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (int i = 0; i < cf__ntests; i++) {
    if (filter && !strstr(cf__tests[i].name, filter)) continue;
    cf__cur_name = cf__tests[i].name;
    cf__cur_failed = cf__cur_skipped = 0;
    cf__rng = cf__seed ^ (0x1234567ULL * (unsigned long long)(i + 1));
    cf_errclear();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cf__tests[i].fn();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (cf__cur_failed) {
      printf("FAIL %s (%d checks failed, seed %llu)\n", cf__cur_name, cf__cur_failed, cf__seed);
      failed++;
    } else if (cf__cur_skipped) {
      skipped++;
    } else {
      printf("ok   %s (%.0f ms)\n", cf__cur_name, ms);
      passed++;
    }
  }
  printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}
