/* cf_calib — measure the cost model of this node (see cf_calib.h). The measurements are
 * lib/exec's cf_profile (timed one-layer forwards fit to step(p, n), memcpy rate), shared with
 * bench_restore so the daemon and the benchmark plan with the same numbers. */
#include "cf_calib.h"

#include <string.h>

#include "exec/cf_profile.h"
#include "util/cf_err.h"

int cf_calib_cost(cf_backend_t *be, const cf_model_t *m, int chunk, double link_gbps, cf_sched_cost_t *out) {
  (void)m; /* the backend's model */
  memset(out, 0, sizeof *out);
  int rc = cf_profile_compute(be, chunk, 3, out);
  if (rc) return cf_err_prefix(rc, "calibration step: ");
  out->shared_link = 0;
  out->link_Bps = link_gbps > 0 ? link_gbps * 1e9 / 8 : cf_profile_memcpy_Bps(32u << 20);
  if (!(out->link_Bps > 0)) out->link_Bps = 8e9; /* no memory for the probe: a DRAM-ish guess */
  out->link_latency_s = 2e-6;
  return cf_cost_check(out);
}
