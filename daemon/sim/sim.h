/* cacheflow-sim internals: hardware profiles, model shapes, workloads. */
#ifndef CF_SIM_CLI_H
#define CF_SIM_CLI_H

#include <stdint.h>

#include "sched/cf_hw.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"

/* Read a JSON-lines workload file. *reqs is malloc'd (caller frees). A line may carry
 * "tiers": [["dram", 8192], ["ssd", 8192]] (runs of prefix tokens and the tier each lies in,
 * summing to prefix_tokens; a chunk is in the tier of its first token): those requests get a
 * chunk_tier for chunks of `chunk` tokens, the others every chunk in `deftier`; *tiers (caller
 * frees) backs them all and *any_tiers says whether any line had runs (else no chunk_tier is
 * set). Returns 0 or CF_ENOENT / CF_EFORMAT with "FILE line N: ..." */
int sim_workload_read(const char *path, int chunk, int deftier, cf_sched_req_t **reqs, int *n,
                      uint8_t **tiers, int *any_tiers);

/* Generate n requests of kind "multi-turn", "rag" or "agentic" with Poisson arrivals of
 * `rate` per second (0: all at time 0; < 0: the kind's default). Returns 0 or CF_EINVAL. */
int sim_workload_gen(const char *kind, int n, uint64_t seed, double rate, cf_sched_req_t **reqs);

/* Write reqs as JSON lines (the --workload format): their "device" when pinned, their chunks'
 * "tiers" (holes too) when any chunk lies elsewhere than deftier (--tier), as runs of whole
 * chunks of `chunk` tokens. Returns 0 or CF_EIO naming the file. */
int sim_workload_write(const char *path, const cf_sched_req_t *reqs, int n, int chunk, int deftier);

/* Pipeline-parallel engines of `stages` stages, `engines` of them: every request becomes
 * `stages` consecutive requests (request i's stage s at i * stages + s, pinned to device
 * e * stages + s) of one engine e: its own "device" field as the engine, else the engine with
 * the least prefix tokens so far, in arrival order. *out is malloc'd (caller frees).
 * Returns 0, CF_EINVAL (an engine out of range) or CF_ENOMEM. */
int sim_stage_requests(const cf_sched_req_t *reqs, int n, int engines, int stages,
                       cf_sched_req_t **out);

/* Draw plan p of input in, simulated into res (run with record_ops), as an SVG picture at path
 * (sim_svg.c): timelines of its streams with the lower bound bound_s, each request's staircase;
 * requests are colour-grouped by `stages` (pipeline stages of one request share a colour).
 * Returns 0 or CF_EIO / CF_ENOMEM / CF_EINVAL naming the file. */
int sim_svg_write(const char *path, const char *title, const cf_sched_input_t *in, const cf_sched_plan_t *p,
                  const cf_sim_result_t *res, double bound_s, int stages);

#endif
