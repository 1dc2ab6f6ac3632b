/* The cost model and simulator shapes of the new model kinds: sliding-window attention is
 * charged over min(position, window) keys, mixtures of experts by their active parameters, the
 * start-up profile fits a windowed model's beta per attended key, and the makespan lower bound
 * stays below what a plan achieves when layers are windowed. */
#include "cf_test.h"
#include "exec/cf_profile.h"
#include "model/cf_backend.h"
#include "model/cf_model_synth.h"
#include "sched/cf_cost.h"
#include "sched/cf_hw.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Keys attended, summed over queries at continuous positions x in [p, p+n]: min(x, W). */
static double ctx_numeric(double p, double n, double W) {
  double s = 0, dx = n / 200000.0;
  for (int i = 0; i < 200000; i++) {
    double x = p + (i + 0.5) * dx;
    s += (W > 0 && x > W ? W : x) * dx;
  }
  return s;
}

CF_TEST(cost_window_charges_min_position_window) {
  const double cases[][3] = {{0, 100, 0},   {0, 100, 4096},  {4000, 512, 4096}, {0, 9000, 4096},
                             {8000, 256, 4096}, {100, 50, 120}, {5000, 5000, 1000}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    double p = cases[i][0], n = cases[i][1], W = cases[i][2];
    double want = ctx_numeric(p, n, W);
    CF_CHECK_MSG(fabs(cf_cost_ctx_w(p, n, W) - want) <= 1e-6 * want,
                 "p=%g n=%g W=%g: %g vs %g", p, n, W, cf_cost_ctx_w(p, n, W), want);
  }
  cf_sched_cost_t c;
  cf_cost_h100_llama8b(&c);
  double full = cf_cost_step(&c, 64000, 256);
  c.window = 4096;
  c.window_frac = 1;
  double win = cf_cost_step(&c, 64000, 256);
  /* deep in a long prefix the windowed step's attention is W/(p + n/2) of the full one */
  double att_full = c.beta_s * 256 * (64000 + 128), att_win = c.beta_s * 256 * 4096;
  CF_CHECK_NEAR(full - win, att_full - att_win, 1e-12);
  c.window_frac = 0.5; /* half the layers windowed: the layer average */
  CF_CHECK_NEAR(cf_cost_step(&c, 64000, 256), 0.5 * (full + win), 1e-12);
  CF_CHECK_OK(cf_cost_check(&c));
  c.window_frac = 1.5;
  CF_CHECK_ERR(cf_cost_check(&c), CF_EINVAL);
  CF_CHECK_CONTAINS(cf_errmsg(), "window_frac = 1.5");
}

/* Active parameters of one layer per token, from the published configs. */
static double active(double H, double q, double kv, double mlp) { return H * q * 2 + 2 * H * kv + mlp; }

CF_TEST(sim_models_cost_active_parameters) {
  cf_hw_t hw;
  CF_CHECK_OK(cf_hw_load("conf/hw/h100-pcie5.json", &hw));
  cf_model_shape_t ref, moe, mix, sw;
  CF_CHECK_OK(cf_model_shape_load("llama-3.1-8b", &ref));
  CF_CHECK_OK(cf_model_shape_load("qwen3-30b-a3b", &moe));
  CF_CHECK_OK(cf_model_shape_load("mixtral-8x7b", &mix));
  CF_CHECK_OK(cf_model_shape_load("mistral-7b-sw4096", &sw));
  cf_sched_cost_t cr, cm, cx, cs;
  CF_CHECK_OK(cf_hw_cost(&hw, &ref, 0, CF_TIER_DRAM, 0, 256, &cr));
  CF_CHECK_OK(cf_hw_cost(&hw, &moe, 0, CF_TIER_DRAM, 0, 256, &cm));
  CF_CHECK_OK(cf_hw_cost(&hw, &mix, 0, CF_TIER_DRAM, 0, 256, &cx));
  CF_CHECK_OK(cf_hw_cost(&hw, &sw, 0, CF_TIER_DRAM, 0, 256, &cs));
  double a_ref = active(4096, 4096, 1024, 3.0 * 4096 * 14336);
  /* qwen3-30b-a3b: 32 heads x 128, 4 KV heads, router 128 x 2048, 8 experts of 768 */
  double a_moe = active(2048, 4096, 512, 2048.0 * 128 + 8 * 3.0 * 2048 * 768);
  /* mixtral-8x7b: llama-8b's attention, router 8 x 4096, 2 experts of 14336 */
  double a_mix = active(4096, 4096, 1024, 4096.0 * 8 + 2 * 3.0 * 4096 * 14336);
  CF_CHECK_NEAR(cm.alpha_s / cr.alpha_s, a_moe / a_ref, 1e-12);
  CF_CHECK_NEAR(cx.alpha_s / cr.alpha_s, a_mix / a_ref, 1e-12);
  CF_CHECK(cm.alpha_s < cr.alpha_s && cx.alpha_s > 1.7 * cr.alpha_s);
  CF_CHECK_EQ(cm.n_layers, 48);
  CF_CHECK_NEAR(cm.kv_bytes_per_token, 2.0 * 4 * 128 * 2, 0); /* 4 KV heads: 2 KiB */
  CF_CHECK_EQ(cm.window, 0);
  CF_CHECK(cs.window == 4096 && cs.window_frac == 1);
  CF_CHECK_NEAR(cs.alpha_s, cr.alpha_s, 1e-18); /* mistral-7b's layers are llama-8b's */
  CF_CHECK(cf_cost_step(&cs, 32768, 256) < cf_cost_step(&cr, 32768, 256));
  CF_CHECK_NEAR(cf_cost_step(&cs, 0, 256), cf_cost_step(&cr, 0, 256), 1e-15);
}

/* An HF config.json given as the model: experts and window are read from it. */
CF_TEST(sim_model_from_config_reads_experts_and_window) {
  char path[600];
  snprintf(path, sizeof path, "%s/public-qwen3-moe/config.json", cf_test_fixtures());
  if (access(path, R_OK) != 0) CF_SKIP("fixture public-qwen3-moe not present");
  cf_model_shape_t m;
  CF_CHECK_OK(cf_model_shape_load(path, &m));
  CF_CHECK(m.experts == 8 && m.top_k == 2 && m.moe_intermediate == 32 && m.window == 0);
  snprintf(path, sizeof path, "%s/public-mistral-window/config.json", cf_test_fixtures());
  CF_CHECK_OK(cf_model_shape_load(path, &m));
  CF_CHECK(m.experts == 0 && m.window == 32 && m.window_layers == m.layers);
}

/* The start-up profile of a model whose every layer has a 64-key window: cost->window and
 * window_frac describe it, and the fit still predicts the timed steps (beta per attended key). */
CF_TEST(profile_of_windowed_model_sets_window) {
  cf_model_config_t c;
  CF_CHECK_OK(cf_synth_preset("tiny", &c));
  c.arch = CF_ARCH_MISTRAL;
  c.n_layers = 2;
  c.sliding_window = 64;
  c.layer_sliding[0] = 1; /* layer 1 full: half the layers windowed */
  cf_synth_opts_t o = {.seed = 3, .std = 0.05f};
  cf_model_t *m;
  CF_CHECK_OK(cf_model_synth(&c, &o, &m));
  cf_backend_t *be;
  CF_CHECK_OK(cf_backend_cpu_create(m, 1, &be));
  cf_sched_cost_t cost;
  memset(&cost, 0, sizeof cost);
  CF_CHECK_OK(cf_profile_compute(be, 32, 3, &cost));
  CF_CHECK_EQ(cost.window, 64);
  CF_CHECK_NEAR(cost.window_frac, 0.5, 0);
  CF_CHECK(cost.beta_s > 0 && cost.alpha_s > 0);
  cf_backend_free(be);
  cf_model_synth_free(m);
}
