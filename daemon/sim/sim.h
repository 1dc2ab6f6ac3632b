/* cacheflow-sim internals: hardware profiles, model shapes, workloads. */
#ifndef CF_SIM_CLI_H
#define CF_SIM_CLI_H

#include <stdint.h>

#include "sched/cf_sched.h"

/* A hardware profile (conf/hw/NAME.json). */
typedef struct {
  char name[128];
  int gpus;                        /* GPUs in the node */
  double gamma_s, alpha_s, beta_s; /* compute fit for the reference model on one GPU */
  double pcie_Bps, pcie_lat_s;
  double ar_Bps, ar_lat_s;         /* all-reduce bus bandwidth and latency (TP engines) */
  double tier_Bps[3], tier_lat_s[3];
  int tier_shared[3];
  int default_tier;                /* SIM_TIER_* */
} sim_hw_t;

enum { SIM_TIER_DRAM = 0, SIM_TIER_SSD = 1, SIM_TIER_NET = 2 };
extern const char *const sim_tier_names[3];

/* Model shape (what the cost model needs). */
typedef struct {
  char name[128];
  int layers, hidden, heads, kv_heads, head_dim, intermediate, dtype_bytes, tp;
} sim_model_t;

/* Load profile `arg`: a path (contains '/' or ends in .json) or a NAME looked up as
 * $CF_HW_DIR/NAME.json, <exe>/../conf/hw/NAME.json, conf/hw/NAME.json.
 * Returns 0 or CF_ENOENT / CF_EFORMAT with a detail naming the file and key. */
int sim_hw_load(const char *arg, sim_hw_t *hw);

/* Model by name (llama-3.1-8b, qwen3-8b, llama-3.1-70b-tp4, llama-3.1-70b-tp8) or an HF
 * config.json path. Returns 0 or CF_ENOTFOUND / CF_EFORMAT with a detail. */
int sim_model_load(const char *arg, sim_model_t *m);

/* Fill the scheduler's cost model for `model` on `hw`: `gpus` GPUs in use (0 = the model's TP
 * degree), tier (SIM_TIER_*), gbps > 0 overrides the tier's bandwidth (Gbit/s), chunk tokens.
 * Returns 0 or CF_EINVAL naming the conflict. */
int sim_cost_make(const sim_hw_t *hw, const sim_model_t *model, int gpus, int tier, double gbps,
                  int chunk, cf_sched_cost_t *cost);

/* Read a JSON-lines workload file. *reqs is malloc'd (caller frees). Returns 0 or
 * CF_ENOENT / CF_EFORMAT with "FILE line N: ..." */
int sim_workload_read(const char *path, cf_sched_req_t **reqs, int *n);

/* Generate n requests of kind "multi-turn", "rag" or "agentic" with Poisson arrivals of
 * `rate` per second (0: all at time 0; < 0: the kind's default). Returns 0 or CF_EINVAL. */
int sim_workload_gen(const char *kind, int n, uint64_t seed, double rate, cf_sched_req_t **reqs);

/* Read a whole file (at most 64 MiB) into a malloc'd NUL-terminated buffer. */
int sim_read_file(const char *path, char **buf, size_t *len);

#endif
