/* cf_hw — hardware profiles (conf/hw/NAME.json) and model shapes, turned into the scheduler's
 * cost model. Used by cacheflow-sim and the tests; the daemon fills cf_sched_cost_t from its
 * own start-up profile instead.
 *
 * Profile keys: compute.{gamma_ms, alpha_us_per_token, beta_ns_per_token2} (fit for
 * llama-3.1-8b on one GPU) and tiers.{dram,ssd,net}.{GBps, latency_us, shared} (at least one
 * tier) are required; gpus (8), pcie.{GBps, latency_us} (the dram tier's), allreduce.{bus_GBps,
 * latency_us} (350 GB/s, 15 us), nvlink.{GBps, latency_us} (each GPU's peer port, one
 * direction; absent: no peer link, GPUs never compute for each other) and default_tier (dram,
 * else the first) are optional.
 */
#ifndef CF_HW_H
#define CF_HW_H

#include <stddef.h>

#include "sched/cf_cost.h"

/* A hardware profile (conf/hw/NAME.json). */
typedef struct {
  char name[128];
  int gpus;                        /* GPUs in the node */
  double gamma_s, alpha_s, beta_s; /* compute fit for the reference model on one GPU */
  double pcie_Bps, pcie_lat_s;
  double ar_Bps, ar_lat_s;         /* all-reduce bus bandwidth and latency (TP engines) */
  double nvlink_Bps, nvlink_lat_s; /* peer port of one GPU, one direction; 0: none */
  double tier_Bps[3], tier_lat_s[3]; /* 0 bandwidth: the profile has no such tier */
  int tier_shared[3];
  int default_tier;                /* CF_TIER_* */
} cf_hw_t;

enum { CF_TIER_DRAM = 0, CF_TIER_SSD = 1, CF_TIER_NET = 2 };
extern const char *const cf_tier_names[3];

/* Model shape (what the cost model needs). */
typedef struct {
  char name[128];
  int layers, hidden, heads, kv_heads, head_dim, intermediate, dtype_bytes, tp;
  int pp; /* pipeline stages (1: none) */
  /* Mixture of experts (0: dense): each token runs top_k of `experts` experts of width
   * moe_intermediate, so the per-token MLP work is that of top_k * moe_intermediate (plus the
   * router), not of `experts` of them. */
  int experts, top_k, moe_intermediate;
  /* Sliding window (0: none) on window_layers of the layers. */
  int window, window_layers;
} cf_model_shape_t;

/* Load profile `arg`: a path (contains '/' or ends in .json) or a NAME looked up as
 * $CF_HW_DIR/NAME.json, <exe>/../conf/hw/NAME.json, <exe>/../../conf/hw/NAME.json (the benches
 * under build/bench), conf/hw/NAME.json.
 * Returns 0 or CF_ENOENT / CF_EFORMAT with a detail naming the file and key. */
int cf_hw_load(const char *arg, cf_hw_t *hw);

/* Model by name (llama-3.1-8b, qwen3-8b, llama-3.1-70b-tp4, llama-3.1-70b-tp8,
 * llama-3.1-70b-tp4pp2: 2 pipeline stages of TP-4, each stage one device; qwen3-30b-a3b and
 * mixtral-8x7b: mixtures of experts; mistral-7b-sw4096: a 4096-key window on every layer)
 * or an HF config.json path (MoE keys and sliding_window read too). Returns 0 or CF_ENOTFOUND / CF_EFORMAT with a detail. */
int cf_model_shape_load(const char *arg, cf_model_shape_t *m);

/* Fill the scheduler's cost model for `model` on `hw`: `gpus` GPUs in use (0 = the model's TP
 * degree), tier (CF_TIER_*), the peer link of an engine = its tp GPUs' NVLink ports, gbps > 0 overrides the tier's bandwidth (Gbit/s; for dram that
 * of each GPU's PCIe link, for ssd/net the shared link's total), chunk tokens.
 * Returns 0 or CF_EINVAL naming the conflict. */
int cf_hw_cost(const cf_hw_t *hw, const cf_model_shape_t *model, int gpus, int tier, double gbps,
                  int chunk, cf_sched_cost_t *cost);

/* Read a whole file (at most 64 MiB) into a malloc'd NUL-terminated buffer. */
int cf_hw_read_file(const char *path, char **buf, size_t *len);

#endif
