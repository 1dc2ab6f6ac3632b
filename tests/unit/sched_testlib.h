/* Shared helpers of the scheduler tests (header-only: each test binary is one translation unit). */
#ifndef CF_SCHED_TESTLIB_H
#define CF_SCHED_TESTLIB_H

#include "cf_test.h"
#include "sched/cf_cost.h"

/* Random model and link around the H100 fit: 1-40 layers, chunks of 64-575 tokens, compute
 * fit scaled, link 0.5-60.5 GB/s with up to 100 us latency. */
static inline void random_model_link(cf_sched_cost_t *c) {
  cf_cost_h100_llama8b(c);
  c->n_layers = 1 + (int)(cf_test_uniform() * 40);
  c->chunk_tokens = cf_test_uniform() < 0.5 ? 256 : 64 + (int)(cf_test_uniform() * 512);
  c->gamma_s *= cf_test_uniform() * 2;
  c->alpha_s *= 0.2 + cf_test_uniform() * 3;
  c->beta_s *= cf_test_uniform() * 4;
  c->link_Bps = (0.5 + cf_test_uniform() * 60) * 1e9;
  c->link_latency_s = cf_test_uniform() * 100e-6;
}

#endif
