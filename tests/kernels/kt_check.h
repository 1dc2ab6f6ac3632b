/* kt_check — the pass/fail harness of the C device tests (tests/kernels/kt_*.c): "ok  "/"FAIL"
 * lines tagged with the process's role (multi-process tests set g_role), a final
 * "N passed, N failed[, N skipped]" line (tests/run.sh and tests/device/run.sh read it). */
#ifndef KT_CHECK_H
#define KT_CHECK_H

#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/cf_err.h"

static int g_pass, g_fail, g_skip;
static const char *g_role = "test";

static void check(int ok, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("%s [%s] ", ok ? "ok  " : "FAIL", g_role);
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
  if (ok) g_pass++;
  else g_fail++;
}

/* A call that must return 0; prints the CF error otherwise. */
#define RC(expr) rc_ok((expr), #expr, __LINE__)
static int rc_ok(int rc, const char *what, int line) {
  if (rc) check(0, "line %d: %s: %s: %s", line, what, cf_err_name(rc), cf_errmsg());
  return rc == 0;
}
#define CU(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
    check(0, "line %d: %s: %s", __LINE__, #call, cudaGetErrorString(e_)); exit(1); } } while (0)

static int finish(void) {
  printf("%d passed, %d failed", g_pass, g_fail);
  if (g_skip) printf(", %d skipped", g_skip);
  printf("\n");
  return g_fail ? 1 : 0;
}

#endif
