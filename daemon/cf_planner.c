/* cf_planner — plan a round's restores with lib/sched, predict with its simulator, bound with cf_bound. */
#include "cf_planner.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exec/cf_exec_plan.h"
#include "sched/cf_bound.h"
#include "store/cf_store.h"
#include "util/cf_err.h"
#include "util/cf_log.h"

void cf_restore_plan_free(cf_restore_plan_t *p) {
  free(p->h);
  free(p->load_rank);
  free(p->cops);
  free(p->skip);
  free(p->ops);
  free(p->tiers);
  memset(p, 0, sizeof *p);
}

void cf_plan_group_free(cf_plan_group_t *g) {
  cf_sched_plan_free(&g->plan);
  cf_sim_result_free(&g->sim);
  free(g->reqs);
  free(g->tiers);
  memset(g, 0, sizeof *g);
}

/* Tokens of a cached prefix of `cached` tokens that a plan may load: its full chunks. The store
 * also keeps a partial last chunk (Lookup counts it, so the engine skips its prefill), but
 * lib/exec never loads one (cf_exec_validate: a partial last chunk has h = L): it is computed,
 * every layer. A plan that loads some of its cells would be executed differently: the executor
 * recomputes the chunk outside the plan (work-conserving, not in the plan's order) and the
 * prediction lacks those compute steps (restores ending in a partial chunk ran 2-5x their
 * prediction). So such a prefix is planned as its full chunks, the partial chunk costed as the
 * uncached rest; a plan that computes the partial chunk whole anyway (recompute) keeps it. */
static int64_t cf__loadable_tokens(const cf_sched_cost_t *cost, int64_t cached) {
  return cached - cached % cost->chunk_tokens;
}

/* cf_sched_plan of `in` (whose requests are reqs[0..in->n_reqs)) such that no plan loads a cell
 * of a partial last chunk: a request whose plan would load one gets its prefix rounded down to
 * full chunks (new_tokens grows by as much) and the group is planned again. */
/* One lib/sched plan of the group: within mf's budget when there is one (cf_memfit). */
static int cf__plan1(cf_sched_input_t *in, int policy, const cf_memfit_t *mf, cf_sched_plan_t *plan,
                     cf_memfit_report_t *fit) {
  memset(fit, 0, sizeof *fit);
  if (!mf || !(mf->budget_bytes > 0)) return cf_sched_plan(in, (cf_policy_t)policy, plan);
  int rc = cf_memfit_plan(in, (cf_policy_t)policy, mf, plan, fit);
  if (rc != CF_ENOMEM) return rc;
  /* a must-compute part alone over the budget: no plan fits; plan it unbounded and let the
   * executor (which enforces the budget) refuse that restore with the bytes it needs */
  CF_WARN("plan within the memory budget (%.0f bytes): %s; planned unbounded", mf->budget_bytes, cf_errmsg());
  memset(fit, 0, sizeof *fit);
  return cf_sched_plan(in, (cf_policy_t)policy, plan);
}

static int cf__plan_loadable(cf_sched_input_t *in, cf_sched_req_t *reqs, int policy, const cf_memfit_t *mf,
                             cf_sched_plan_t *plan, cf_memfit_report_t *fit) {
  const int L = in->cost.n_layers;
  int rc = cf__plan1(in, policy, mf, plan, fit);
  /* each pass rounds at least one prefix down: at most n_reqs more plans */
  for (int again = 1; !rc && again;) {
    again = 0;
    for (int i = 0; i < in->n_reqs; i++) {
      int32_t nc = plan->n_chunks[i];
      if (!(reqs[i].prefix_tokens % in->cost.chunk_tokens) || nc <= 0 || plan->h[plan->h_off[i] + nc - 1] >= L) continue;
      int64_t full = cf__loadable_tokens(&in->cost, reqs[i].prefix_tokens);
      reqs[i].new_tokens += reqs[i].prefix_tokens - full;
      reqs[i].prefix_tokens = full;
      again = 1;
    }
    if (again) rc = cf__plan1(in, policy, mf, plan, fit);
  }
  return rc;
}

/* The lib/sched requests of a group: every restore has arrived when it is planned (arrival 0),
 * each cached chunk loads at its tier's rate. */
static int cf__group_input(const cf_sched_cost_t *cost, const cf_plan_input_t *ins, int n, cf_plan_group_t *g) {
  if (!(g->reqs = calloc((size_t)n, sizeof *g->reqs))) return cf_seterr(CF_ENOMEM, "plan of %d restores", n);
  size_t nt = 0;
  for (int i = 0; i < n; i++)
    if (ins[i].chunk_tiers) nt += (size_t)cf_cost_chunks(cost, ins[i].cached_tokens);
  if (nt && !(g->tiers = malloc(nt))) return cf_seterr(CF_ENOMEM, "plan of %d restores", n);
  nt = 0;
  for (int i = 0; i < n; i++) {
    /* a restore of [k, n): lib/sched plans the cached chunks after the engine's present ones */
    int64_t skip = (int64_t)ins[i].present_chunks * cost->chunk_tokens, cached = ins[i].cached_tokens;
    int64_t P = cached > skip ? cached - skip : 0;
    g->reqs[i] = (cf_sched_req_t){.arrival_s = 0, .prefix_tokens = P,
                                  .new_tokens = ins[i].n_tokens - (cached > skip ? cached : skip), .device = -1};
    if (!ins[i].chunk_tiers) continue;
    uint8_t *t = g->tiers + nt;
    for (int32_t c = 0, m = cf_cost_chunks(cost, P); c < m; c++)
      {
        uint8_t st = ins[i].chunk_tiers[ins[i].present_chunks + c];
        t[c] = st == CF_STORE_TIER_SSD ? CF_PLAN_TIER_SSD : st == CF_STORE_TIER_REMOTE ? CF_PLAN_TIER_REMOTE
             : st == CF_STORE_TIER_NONE ? CF_SCHED_TIER_NONE : CF_PLAN_TIER_CPU;
      }
    g->reqs[i].chunk_tier = t;
    nt += (size_t)cf_cost_chunks(cost, P);
  }
  g->in = (cf_sched_input_t){.cost = *cost, .reqs = g->reqs, .n_reqs = n, .refine_evals = CF_PLANNER_REFINE_EVALS};
  return 0;
}

/* Windowed layers' cells no later token needs (cf_sched_window_skip over the whole restore:
 * the uncached tail is computed, so it needs its windows; the engine's present chunks are its
 * own): p->skip and p->cells_skip, the skipped cells taken out of the load counts (tiers: the
 * chunks' store tiers, as counted). Returns the
 * count, or -1 without memory (then p->skip is left for the caller to drop). */
static int64_t cf__window_skip(const cf_sched_cost_t *cost, cf_restore_plan_t *p, int64_t ntok,
                               const uint8_t *tiers) {
  const int L = cost->n_layers;
  int32_t nc = (int32_t)p->chunks, pc = (int32_t)p->present_chunks;
  int any = 0;
  for (int l = 0; l < L && !any; l++) any = cf_cost_layer_windowed(cost, l);
  if (!any || nc <= 0) return 0;
  uint16_t *h = malloc((size_t)nc * sizeof *h);
  uint8_t *row = malloc((size_t)nc);
  p->skip = calloc((size_t)nc * L, 1);
  if (!h || !row || !p->skip) { free(h); free(row); return -1; }
  for (int32_t c = 0; c < nc; c++) h[c] = (uint16_t)p->h[c];
  int64_t n = 0;
  for (int l = 0; l < L; l++) {
    if (!cf_sched_window_skip(cost, ntok, h, nc, l, row)) continue;
    for (int32_t c = pc; c < nc; c++) /* chunks the plan would load at l */
      if (row[c]) {
        p->skip[(size_t)c * L + l] = 1;
        n++;
      }
  }
  free(h);
  free(row);
  if (!n) { free(p->skip); p->skip = NULL; return 0; }
  /* out of the load counts: a skipped cell is a loaded one (l >= h) the plan no longer loads */
  for (int32_t c = pc; c < nc; c++) {
    uint64_t k = 0;
    for (int l = 0; l < L; l++) k += p->skip[(size_t)c * L + l];
    if (!k) continue;
    if (tiers && tiers[c] == CF_STORE_TIER_SSD) p->cells_load_ssd -= k;
    else if (tiers && tiers[c] == CF_STORE_TIER_REMOTE) p->cells_load_remote -= k;
    else p->cells_load_cpu -= k;
  }
  p->cells_skip = (uint64_t)n;
  return n;
}

/* want_ops: request i's ops of the group's plan with the simulator's times, and its chunks' tiers. */
static void cf__keep_ops(const cf_plan_group_t *g, int i, const cf_plan_input_t *in, int32_t all_chunks,
                         cf_restore_plan_t *p) {
  const cf_sched_plan_t *sp = &g->plan;
  int32_t pc = in->present_chunks, planned = sp->n_chunks[i];
  int n = 0;
  for (size_t k = 0; k < sp->n_ops; k++) n += sp->ops[k].req == i;
  p->ops = malloc((size_t)(n ? n : 1) * sizeof *p->ops);
  p->tiers = malloc((size_t)(all_chunks ? all_chunks : 1));
  if (!p->ops || !p->tiers || !g->sim.op_start_s) {
    free(p->ops); free(p->tiers);
    p->ops = NULL; p->tiers = NULL;
    return;
  }
  for (size_t k = 0; k < sp->n_ops; k++) {
    const cf_sched_op_t *o = &sp->ops[k];
    if (o->req != i) continue;
    p->ops[p->n_ops++] = (cf_plan_op_t){.t0_s = g->sim.op_start_s[k], .t1_s = g->sim.op_end_s[k],
                                        .c0 = o->c0 + pc, .c1 = o->c1 + pc, .l0 = o->l0, .l1 = o->l1,
                                        .kind = o->kind == CF_OP_LOAD, .tier = (uint8_t)cf_sched_chunk_tier(&g->reqs[i], o->c0)};
  }
  for (int32_t c = 0; c < all_chunks; c++) /* the engine's own chunks 254, the uncached rest 255 */
    p->tiers[c] = c < pc ? 254 : c - pc < planned ? (uint8_t)cf_sched_chunk_tier(&g->reqs[i], c - pc) : 255;
}

int cf_planner_plan_group(const cf_sched_cost_t *cost, const cf_plan_input_t *ins, int n, int policy,
                          const cf_memfit_t *mf, cf_plan_group_t *g, cf_restore_plan_t *out) {
  memset(g, 0, sizeof *g);
  cf_sched_plan_init(&g->plan);
  cf_sim_result_init(&g->sim);
  int rc = cf__group_input(cost, ins, n, g);
  if (!rc) rc = cf__plan_loadable(&g->in, g->reqs, policy, mf, &g->plan, &g->fit);
  for (int i = 0; i < n; i++) g->sim.record_ops |= ins[i].want_ops; /* times only: no result changes */
  if (!rc) rc = cf_sim_run(&g->in, &g->plan, &g->sim);
  if (rc) return rc;
  const int L = cost->n_layers;
  int i = 0;
  for (; i < n; i++) { /* the staircases first: nothing is handed out unless all fit in memory */
    int32_t all_chunks = cf_cost_chunks(cost, ins[i].n_tokens);
    out[i] = (cf_restore_plan_t){0};
    if (!(out[i].h = malloc((size_t)(all_chunks ? all_chunks : 1) * sizeof *out[i].h))) break;
  }
  if (i < n) {
    while (i-- > 0) cf_restore_plan_free(&out[i]);
    return cf_seterr(CF_ENOMEM, "plan of %d restores", n);
  }
  for (i = 0; i < n; i++) {
    cf_restore_plan_t *p = &out[i];
    /* chunks [0, pc) are the engine's (present_tokens); the plan's chunk c is chunk pc + c */
    int32_t pc = ins[i].present_chunks;
    int64_t skip = (int64_t)pc * cost->chunk_tokens;
    /* the executor computes chunks past the planned prefix (h = L), after the plan's (rest_s) */
    int64_t ntok = ins[i].n_tokens, P = skip + g->reqs[i].prefix_tokens, rest = ntok - P;
    int32_t planned = g->plan.n_chunks[i], all_chunks = cf_cost_chunks(cost, ntok);
    p->policy = policy;
    p->planned_tokens = P;
    p->cost = *cost;
    p->have_cost = 1;
    p->chunks = (uint32_t)all_chunks;
    p->present_chunks = (uint32_t)pc;
    double ctx_s = 0; /* the present tokens as context of the planned compute steps */
    for (int32_t c = 0; c < all_chunks; c++) {
      if (c < pc) { p->h[c] = 0; continue; }
      int h = c - pc < planned ? g->plan.h[g->plan.h_off[i] + c - pc] : L;
      if (c == pc && ins[i].compute_partial && h < L) { /* the GPU path: computed whole */
        for (int l = h; l < L; l++) ctx_s += cf_cost_step(cost, (double)skip, (double)cost->chunk_tokens);
        h = L;
      }
      p->h[c] = h;
      p->cells_compute += (uint64_t)h;
      if (c - pc < planned) ctx_s += cost->beta_s * (double)skip * (double)h * (double)cost->chunk_tokens;
      if (c - pc >= planned) continue;
      if (ins[i].chunk_tiers && ins[i].chunk_tiers[c] == CF_STORE_TIER_NONE) p->hole_chunks++; /* h = L */
      else if (ins[i].chunk_tiers && ins[i].chunk_tiers[c] == CF_STORE_TIER_SSD) p->cells_load_ssd += (uint64_t)(L - h);
      else if (ins[i].chunk_tiers && ins[i].chunk_tiers[c] == CF_STORE_TIER_REMOTE) p->cells_load_remote += (uint64_t)(L - h);
      else p->cells_load_cpu += (uint64_t)(L - h);
    }
    if (cf__window_skip(cost, p, ntok, ins[i].chunk_tiers) < 0) { /* no memory for the mask: nothing skipped */
      free(p->skip);
      p->skip = NULL;
    }
    /* the plan's link order and compute order (op indices: comparable across the group) */
    p->load_rank = cf_exec_plan_load_rank(&g->plan, i, all_chunks - pc, L); /* NULL: layer-major */
    p->cops = cf_exec_plan_cops(&g->plan, i, &p->n_cops);                   /* NULL: work-conserving */
    if (pc && p->load_rank) { /* to the restore's chunk numbers */
      uint32_t *r = malloc((size_t)all_chunks * L * sizeof *r);
      if (r) {
        for (size_t e = 0; e < (size_t)pc * L; e++) r[e] = UINT32_MAX;
        memcpy(r + (size_t)pc * L, p->load_rank, (size_t)(all_chunks - pc) * L * sizeof *r);
      }
      free(p->load_rank);
      p->load_rank = r;
    }
    for (int k = 0; k < p->n_cops; k++) { p->cops[k].c0 += pc; p->cops[k].c1 += pc; }
    double rest_s = rest > 0 ? cf_cost_prefill(cost, P, rest) : 0;
    p->predicted_us = (g->sim.restore_s[i] + ctx_s + rest_s) * 1e6;
    /* the shifted request's bound stays a lower bound: present context only adds to compute */
    p->bound_us = (cf_bound_request(cost, &g->reqs[i]) + rest_s) * 1e6;
    if (ins[i].want_ops) cf__keep_ops(g, i, &ins[i], all_chunks, p); /* no memory: no picture, same plan */
  }
  return 0;
}

int cf_planner_plan_fallback(const cf_plan_input_t *in, int C, int L, cf_restore_plan_t *out) {
  int n_chunks = (int)((in->n_tokens + C - 1) / C);
  *out = (cf_restore_plan_t){.policy = CF_POLICY_LOAD, .chunks = (uint32_t)n_chunks};
  if (!(out->h = malloc((size_t)(n_chunks ? n_chunks : 1) * sizeof *out->h)))
    return cf_seterr(CF_ENOMEM, "plan of a restore of %lld tokens", (long long)in->n_tokens);
  out->present_chunks = (uint32_t)in->present_chunks;
  for (int c = 0; c < n_chunks; c++) {
    int cached = (int64_t)(c + 1) * C <= in->cached_tokens && !(c == in->present_chunks && in->compute_partial) &&
                 !(in->chunk_tiers && in->chunk_tiers[c] == CF_STORE_TIER_NONE); /* a hole: computed */
    out->h[c] = cached ? 0 : L;
    if (c < in->present_chunks) continue; /* the engine's own */
    if (in->chunk_tiers && (int64_t)(c + 1) * C <= in->cached_tokens && in->chunk_tiers[c] == CF_STORE_TIER_NONE)
      out->hole_chunks++;
    if (!cached) out->cells_compute += (uint64_t)L;
    else if (in->chunk_tiers && in->chunk_tiers[c] == CF_STORE_TIER_SSD) out->cells_load_ssd += (uint64_t)L;
    else if (in->chunk_tiers && in->chunk_tiers[c] == CF_STORE_TIER_REMOTE) out->cells_load_remote += (uint64_t)L;
    else out->cells_load_cpu += (uint64_t)L;
  }
  out->planned_tokens = (in->cached_tokens / C) * C;
  return 0;
}

/* ---------------------------------------------------------------- the daemon's planner */
void cf_planner_init(cf_planner_t *pl, double refit_weight) {
  memset(pl, 0, sizeof *pl);
  pthread_mutex_init(&pl->mu, NULL);
  cf_refit_init(&pl->refit, refit_weight);
  const char *hold = getenv("CF_TEST_PLAN_HOLD_MS");
  pl->test_hold_ms = hold ? atoi(hold) : 0;
}

void cf_planner_close(cf_planner_t *pl) {
  cf_refit_close(&pl->refit);
  pthread_mutex_destroy(&pl->mu);
}

void cf_planner_set_cost(cf_planner_t *pl, const cf_sched_cost_t *cost, int refit_on) {
  pthread_mutex_lock(&pl->mu);
  pl->cost = *cost;
  pl->have_cost = 1;
  pl->refit_on = refit_on;
  pthread_mutex_unlock(&pl->mu);
  cf_refit_set_base(&pl->refit, cost);
}

void cf_planner_set_memory(cf_planner_t *pl, double budget_bytes, double bytes_per_token) {
  pthread_mutex_lock(&pl->mu);
  pl->mem = (cf_memfit_t){.budget_bytes = budget_bytes > 0 ? budget_bytes : 0, .bytes_per_token = bytes_per_token};
  pthread_mutex_unlock(&pl->mu);
}

cf_refit_t *cf_planner_refit(cf_planner_t *pl) { return &pl->refit; }

int cf_planner_cost_now(cf_planner_t *pl, cf_sched_cost_t *out) {
  pthread_mutex_lock(&pl->mu);
  *out = pl->cost;
  int have = pl->have_cost, refit_on = pl->refit_on;
  pthread_mutex_unlock(&pl->mu);
  if (!have) return CF_EAGAIN;
  if (refit_on) cf_refit_apply(&pl->refit, out);
  return 0;
}

void cf_planner_set_evict(cf_planner_t *pl, cf_evict_refresh_t *r) {
  pthread_mutex_lock(&pl->mu);
  pl->evict = r;
  pthread_mutex_unlock(&pl->mu);
}

int cf_planner_plan(cf_planner_t *pl, const cf_plan_input_t *ins, cf_restore_plan_t *out, int n, int C, int L) {
  cf_sched_cost_t cost; /* what this round is planned with */
  int have = !cf_planner_cost_now(pl, &cost);
  pthread_mutex_lock(&pl->mu);
  cf_memfit_t mem = pl->mem;
  cf_evict_refresh_t *evict = pl->evict;
  pthread_mutex_unlock(&pl->mu);
  /* the re-fit moved the model since the last round: the store's eviction follows it */
  if (have && evict) cf_evict_refresh_offer(evict, &cost, 0);
  if (pl->test_hold_ms > 0) {
    struct timespec ts = {pl->test_hold_ms / 1000, (long)(pl->test_hold_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  int *grp = malloc((size_t)(n ? n : 1) * sizeof *grp);
  cf_plan_input_t *gin = malloc((size_t)(n ? n : 1) * sizeof *gin);
  cf_restore_plan_t *gout = malloc((size_t)(n ? n : 1) * sizeof *gout);
  int rc = 0;
  memset(out, 0, (size_t)n * sizeof *out);
  for (int p = 0; p < CF_POLICY_COUNT && have && grp && gin && gout; p++) {
    int g = 0;
    for (int i = 0; i < n; i++)
      if (ins[i].policy == p) { grp[g] = i; gin[g++] = ins[i]; }
    if (!g) continue;
    cf_plan_group_t pg;
    int prc = cf_planner_plan_group(&cost, gin, g, p, mem.budget_bytes > 0 ? &mem : NULL, &pg, gout);
    if (prc) {
      CF_WARN("plan of %d restore(s) with %s failed: %s: %s (they load what is cached, compute the rest)", g,
              cf_policy_name((cf_policy_t)p), cf_strerror(prc), cf_errmsg());
    } else {
      CF_DEBUG("planned %d restore(s) with %s: predicted makespan %.1f ms", g, cf_policy_name((cf_policy_t)p),
               pg.sim.makespan_s * 1e3);
      if (pg.fit.strategy || pg.fit.shrunk_reqs)
        CF_INFO("memory budget %.0f bytes: %d restore(s) with %s %s (%d cut, %lld compute cells loaded instead, "
                "%d waiting; peak %.0f bytes)", mem.budget_bytes, g, cf_policy_name((cf_policy_t)p),
                pg.fit.strategy == 2 ? "shift compute to loads" : pg.fit.strategy == 1 ? "wait for memory" : "compute less", pg.fit.shrunk_reqs,
                (long long)pg.fit.cells_shifted, pg.fit.waiting_reqs, pg.fit.peak_bytes);
      for (int k = 0; k < g; k++) out[grp[k]] = gout[k];
    }
    cf_plan_group_free(&pg);
  }
  /* what lib/sched did not plan (no cost model, a failed group, no memory for the groups) */
  for (int i = 0; i < n; i++)
    if (!out[i].h && cf_planner_plan_fallback(&ins[i], C, L, &out[i])) rc = CF_ENOMEM;
  free(grp); free(gin); free(gout);
  return rc;
}
