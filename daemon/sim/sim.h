/* cacheflow-sim internals: hardware profiles, model shapes, workloads. */
#ifndef CF_SIM_CLI_H
#define CF_SIM_CLI_H

#include <stdint.h>

#include "sched/cf_hw.h"
#include "sched/cf_sched.h"

/* Read a JSON-lines workload file. *reqs is malloc'd (caller frees). Returns 0 or
 * CF_ENOENT / CF_EFORMAT with "FILE line N: ..." */
int sim_workload_read(const char *path, cf_sched_req_t **reqs, int *n);

/* Generate n requests of kind "multi-turn", "rag" or "agentic" with Poisson arrivals of
 * `rate` per second (0: all at time 0; < 0: the kind's default). Returns 0 or CF_EINVAL. */
int sim_workload_gen(const char *kind, int n, uint64_t seed, double rate, cf_sched_req_t **reqs);

/* Write reqs as JSON lines (the --workload format). Returns 0 or CF_EIO naming the file. */
int sim_workload_write(const char *path, const cf_sched_req_t *reqs, int n);

#endif
