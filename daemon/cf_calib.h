/* cf_calib — the daemon's start-up cost profile: the numbers lib/sched plans with
 * (cf_sched_cost_t), measured on this machine for the served model instead of taken from a
 * profile of another node. Compute: layer-0 prefill steps of the backend at a few (position,
 * tokens) points, fit to step(p, n) = gamma + alpha*n + beta*n*(p + n/2) by least squares.
 * Link: the CPU tier's read rate — `cpu_read_gbps` when the config limits it, else memcpy.
 */
#ifndef CF_CALIB_H
#define CF_CALIB_H

#include "model/cf_backend.h"
#include "sched/cf_cost.h"

/* Fill *out for model m on backend be, chunk size `chunk`, link limit `link_gbps` (0 = measure
 * memcpy). Takes a few steps of up to `chunk` tokens (milliseconds on small models).
 * Returns 0, or the backend's error / CF_ENOMEM; out passes cf_cost_check on success. */
int cf_calib_cost(cf_backend_t *be, const cf_model_t *m, int chunk, double link_gbps, cf_sched_cost_t *out);

#endif
