/* cf_cost — the cost model the scheduler plans with (DESIGN.md §1).
 *
 * Compute: one prefill step of n consecutive tokens that start at position p, at one layer,
 * on one device, takes
 *     step(p, n) = gamma + alpha * n + beta * n * (p + n / 2)          seconds
 * gamma is the fixed cost of a step (kernel launches, small-GEMM inefficiency, and for tensor
 * parallel engines the all-reduce latency), alpha the per-token cost of the projections and the
 * MLP, beta the attention over the prefix (the integral of the context length over the step's
 * tokens: the chunk at position p attends to p + its causal half). The daemon fills these from
 * its start-up profile; cf_cost_h100_llama8b() returns the fit to ../shared/calib/h100.json.
 *
 * Load: a load op of `cells` bytes over a link takes  latency + bytes / link_Bps.
 * Tiers: the cells of one request may lie in tiers that read at different rates (CPU DRAM and
 * an SSD behind the same link). A request may name each chunk's tier (cf_sched_req_t.chunk_tier);
 * tier t reads at tier_Bps[t] bytes/s when that is > 0, else at link_Bps. A load op still runs
 * on the device's one link, its chunks one after the other: it takes
 *     latency + layers * sum over its chunks c of tokens(c) * kv_bytes_per_token / rate(tier(c))
 * (cf_sched_load_s). Every policy, the bound and the simulator use that same sum.
 * A node has n_devices compute devices (engine instances; a TP engine of G GPUs is ONE device
 * whose link carries the G shards over G PCIe links, i.e. G x the bandwidth). Each device has
 * its own link (tier in CPU DRAM: PCIe) unless shared_link is set (SSD or network tier: one
 * link for every device, bandwidth = the slower of the tier and PCIe).
 *
 * Peer link (DESIGN.md §1 (b)): with n_devices > 1 and peer_Bps > 0 a device may compute
 * cells of another device's request and send them over its peer link (NVLink: NCCL send/recv
 * or a peer copy): a send op of `tokens x layers` cells takes
 *     peer_latency_s + bytes / peer_Bps
 * on the SENDING device's peer stream (each GPU's NVLink port, one direction; through an
 * NVSwitch the receiving port is not modelled separately: the planner gives a request at most
 * one helper). peer_Bps = 0: no peer link, every cell is computed by its request's device.
 * Both fields are read only when n_devices > 1.
 *
 * Pipeline stages (DESIGN.md §1 (c)): with pp_stages = S > 1 (n_devices > 1, a multiple of S)
 * device d is stage d % S of engine d / S and holds n_layers consecutive layers of the model;
 * each stage restores its own layers independently because the hidden state entering its first
 * layer is stored with the KV: a request on a stage > 0 device must load the boundary hidden
 * state of every chunk it computes at its layer 0 (a LOAD op with layers [-1, 0)), costing
 * link_latency_s + tokens * hidden_bytes_per_token / link_Bps. Read only when n_devices > 1.
 */
#ifndef CF_COST_H
#define CF_COST_H

#include <math.h>
#include <stdint.h>

#define CF_COST_MAX_TIERS 4

typedef struct {
  int n_layers;              /* L */
  int chunk_tokens;          /* C: tokens per chunk (the last chunk of a prefix may be shorter) */
  double kv_bytes_per_token; /* K+V bytes of one token at one layer, per device */
  double gamma_s;            /* fixed cost of one compute step (s) */
  double alpha_s;            /* per token (s) */
  double beta_s;             /* per token x context token (s) */
  int n_devices;             /* compute devices (engine instances), >= 1 */
  int shared_link;           /* 1: one link shared by all devices; 0: one link per device */
  double link_Bps;           /* bytes/s of each link */
  double link_latency_s;     /* fixed cost of one load op (s) */
  double peer_Bps;           /* bytes/s of each device's peer (NVLink) port; 0 = none */
  double peer_latency_s;     /* fixed cost of one peer send op (s) */
  int pp_stages;             /* pipeline stages per engine (1: none) */
  double hidden_bytes_per_token; /* stored boundary hidden state of one token (stage > 0) */
  double tier_Bps[CF_COST_MAX_TIERS]; /* read rate of chunks in tier t; 0: link_Bps (see above) */
  /* Sliding-window attention (0: none): a fraction window_frac of the layers attends only the
   * last `window` keys, so their attention term is beta times the integral of min(x, window)
   * over the step's context lengths x in [p, p+n] instead of n (p + n/2) (cf_cost_ctx). The
   * planner's layers are uniform, so a model mixing windowed and full layers is charged the
   * layer average. The closed forms that solve for a position (cf_bound, the optimal
   * policy's hull and step-size rule) invert that context (cf_cost_ctx_inv). */
  int window;
  double window_frac;
  /* Which layers are windowed, for the cells they need not restore (cf_sched_window_skip):
   * bit l of window_mask[l / 64] (layers >= 256: never skipped). All zero with window_frac >= 1:
   * every layer; all zero otherwise: none (a cost model that only knows the fraction). */
  uint64_t window_mask[4];
} cf_sched_cost_t;

/* Defaults for Llama-3.1-8B on one H100 with the prefixes in pinned CPU DRAM (PCIe gen5):
 * least-squares fit (relative error) of step(p, n) to the 22 rows of
 * calib/h100.json llama3_8b_chunk_over_prefix (n = 256/512/2048, p = 0..128k: total_ms) and
 * llama3_8b_layer_prefill (n = 1k..32k, p = 0): gamma = 0.173 ms, alpha = 0.622 us/token,
 * beta = 0.0488 ns/token^2. Residuals: within 6% for the 256-token chunk rows, 5-17% for the
 * larger steps (the fit is linear, the GPU is not), -27% at the 1k-token full-layer row.
 * Link: 48 GB/s (h2d_pinned_256x1MiB_chunks), latency 8 us (from the 0.25/2/16 MB copies). */
void cf_cost_h100_llama8b(cf_sched_cost_t *c);

/* Number of chunks of a prefix of `tokens` tokens. */
static inline int32_t cf_cost_chunks(const cf_sched_cost_t *c, int64_t tokens) {
  return (int32_t)((tokens + c->chunk_tokens - 1) / c->chunk_tokens);
}
/* Tokens in chunks [0, k) of a prefix of P tokens. */
static inline int64_t cf_cost_tok(const cf_sched_cost_t *c, int64_t P, int64_t k) {
  int64_t t = k * c->chunk_tokens;
  return t < P ? t : P;
}
/* Attention context of a step of n tokens from position p, averaged over the layers: key
 * count summed over the step's queries (n (p + n/2) with full attention; with a window W the
 * integral of min(x, W) over [p, p+n]). */
static inline double cf_cost_ctx_w(double p, double n, double W) {
  double full = n * (p + 0.5 * n), e = p + n;
  if (W <= 0 || e <= W) return full;
  if (p >= W) return n * W;
  return 0.5 * (W * W - p * p) + W * (e - W);
}
static inline double cf_cost_ctx(const cf_sched_cost_t *c, double p, double n) {
  double full = n * (p + 0.5 * n);
  if (c->window <= 0 || c->window_frac <= 0) return full;
  return (1 - c->window_frac) * full + c->window_frac * cf_cost_ctx_w(p, n, c->window);
}
/* Position x at which the layer-averaged attention context of one query, (1-f) x + f min(x, W)
 * (x without a window), reaches G: the inverse of the marginal of cf_cost_ctx. Closed forms
 * that solve "alpha + beta * context = price" for a position use it (INFINITY: every layer
 * windowed and G above the window, never reached). */
static inline double cf_cost_ctx_inv(const cf_sched_cost_t *c, double G) {
  if (c->window <= 0 || c->window_frac <= 0 || G <= c->window) return G;
  if (c->window_frac >= 1) return INFINITY;
  return c->window + (G - c->window) / (1 - c->window_frac);
}
/* 1 when layer l attends through the sliding window (see window_mask). */
static inline int cf_cost_layer_windowed(const cf_sched_cost_t *c, int l) {
  if (c->window <= 0 || l < 0) return 0;
  if (!(c->window_mask[0] | c->window_mask[1] | c->window_mask[2] | c->window_mask[3]))
    return c->window_frac >= 1;
  return l < 256 && (c->window_mask[l / 64] >> (l % 64) & 1);
}
/* One compute step of n tokens starting at position p, one layer (0 when n == 0). */
static inline double cf_cost_step(const cf_sched_cost_t *c, double p, double n) {
  if (n <= 0) return 0.0;
  return c->gamma_s + c->alpha_s * n + c->beta_s * cf_cost_ctx(c, p, n);
}
/* One load op of `tokens` tokens x `layers` layers. */
static inline double cf_cost_load(const cf_sched_cost_t *c, double tokens, int layers) {
  if (tokens <= 0 || layers <= 0) return 0.0;
  return c->link_latency_s + tokens * layers * c->kv_bytes_per_token / c->link_Bps;
}
/* Bytes/s at which cells of tier t (0..CF_COST_MAX_TIERS-1) load. */
static inline double cf_cost_tier_Bps(const cf_sched_cost_t *c, int t) {
  return c->tier_Bps[t] > 0 ? c->tier_Bps[t] : c->link_Bps;
}
/* One peer send of `tokens` tokens x `layers` layers (device to device). */
static inline double cf_cost_send(const cf_sched_cost_t *c, double tokens, int layers) {
  if (tokens <= 0 || layers <= 0) return 0.0;
  return c->peer_latency_s + tokens * layers * c->kv_bytes_per_token / c->peer_Bps;
}
/* 1 when a device may compute cells of another device's request (several devices joined by
 * a peer link). */
static inline int cf_cost_has_peer(const cf_sched_cost_t *c) {
  return c->n_devices > 1 && c->peer_Bps > 0;
}
/* Pipeline stage of device d (0 without pipeline stages). */
static inline int cf_cost_stage(const cf_sched_cost_t *c, int d) {
  return c->n_devices > 1 && c->pp_stages > 1 ? d % c->pp_stages : 0;
}
/* Load of the boundary hidden states of `tokens` tokens (a stage's layer-0 input). */
static inline double cf_cost_load_hidden(const cf_sched_cost_t *c, double tokens) {
  if (tokens <= 0) return 0.0;
  return c->link_latency_s + tokens * c->hidden_bytes_per_token / c->link_Bps;
}
/* Link used by device d. */
static inline int cf_cost_link_of(const cf_sched_cost_t *c, int d) {
  return c->shared_link ? 0 : d;
}
static inline int cf_cost_n_links(const cf_sched_cost_t *c) {
  return c->shared_link ? 1 : c->n_devices;
}
/* Prefill of `new_tokens` after a restored prefix of P tokens: L steps (TTFT's second term). */
static inline double cf_cost_prefill(const cf_sched_cost_t *c, int64_t P, int64_t new_tokens) {
  return c->n_layers * cf_cost_step(c, (double)P, (double)new_tokens);
}

/* Returns 0 or CF_EINVAL naming the bad field (non-positive, non-finite, out of range). */
int cf_cost_check(const cf_sched_cost_t *c);

#endif
