/* cacheflow-sim — plan a batch of restores with every policy, simulate each plan on a modelled
 * node, print a table and optionally the same as JSON. Exit 0; 2 on bad input (one line on
 * stderr naming it); 1 if a policy produced an invalid plan (a bug). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sched/cf_bound.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "sim/sim.h"
#include "util/cf_err.h"
#include "util/cf_json.h"

/* Per-request arrays in the JSON only up to this many requests. */
#define SIM_MAX_PER_REQUEST 4096
/* 2^27 cells: 2.7 GB of simulator scratch at most. */
#define SIM_MAX_CELLS (1 << 27)

static void usage(FILE *f) {
  fprintf(f,
          "usage: cacheflow-sim --hw FILE|NAME --model NAME|config.json\n"
          "                     (--workload FILE | --gen multi-turn|rag|agentic --n N [--seed S] [--rate R])\n"
          "                     [--policy all|NAME] [--tier dram|ssd|net] [--gbps X] [--chunk N]\n"
          "                     [--gpus N | --devices G] [--nvlink GBPS] [--refine N] [--json FILE]\n"
          "                     [--save-workload FILE]\n"
          "                     [--plan-json FILE] [--svg FILE]\n"
          "  --hw       hardware profile: conf/hw/NAME.json (h100-pcie5, h100x8-nvlink, h100-link10g/40g/80g,\n"
          "             h100-nvme) or a path\n"
          "  --model    llama-3.1-8b, qwen3-8b, llama-3.1-70b-tp4, llama-3.1-70b-tp8, llama-3.1-70b-tp4pp2,\n"
          "             qwen3-30b-a3b, mixtral-8x7b, mistral-7b-sw4096, or an HF config.json\n"
          "  --workload JSON lines {\"arrival_s\": 0.0, \"prefix_tokens\": 16384, \"new_tokens\": 256}\n"
          "             optional \"tiers\": [[\"dram\", 8192], [\"ssd\", 8192]]: where runs of the prefix lie\n"
          "             (each chunk loads at its tier's rate; the rest of the batch is in --tier);\n"
          "             [\"none\", N]: N tokens stored nowhere (a hole: its chunks are computed, every layer)\n"
          "  --gen      synthetic workload; --rate requests/s (Poisson; 0 = all at t=0; default per kind)\n"
          "  --policy   recompute, load, cake, layerwise, cacheflow, optimal or all (default all)\n"
          "  --tier     tier holding the prefixes (default: the profile's)\n"
          "  --gbps     override that tier's load bandwidth, Gbit/s (dram: per GPU link; ssd/net: shared total)\n"
          "  --chunk    tokens per chunk (default 256)\n"
          "  --gpus     GPUs in use (default: the model's TP degree); engines = gpus / TP\n"
          "  --devices  engines (devices) in use: G x the model's TP degree GPUs\n"
          "  --nvlink   override the profile's NVLink GB/s per GPU and direction; 0 = no peer link\n"
          "             (then no GPU computes cells for another GPU's request)\n"
          "  --refine   simulator runs optimal may spend refining, whatever the time budget (default:\n"
          "             the daemon's path: what the 1 ms budget buys; 0 = the analytic plan alone,\n"
          "             then checked against the other policies' plans: optimal is never slower)\n"
          "  --json     write the results as JSON to FILE\n"
          "  --save-workload  write the requests (e.g. generated ones) as JSON lines to FILE\n"
          "  --svg FILE  draw the plan of --policy NAME (with all: optimal's) as an SVG picture: a\n"
          "             timeline lane per compute stream and link, each op a box coloured by request,\n"
          "             the lower bound as a dashed line; each request's staircase below\n"
          "  --plan-json FILE write the plan of --policy NAME (with all: optimal's) as JSON:\n"
          "             {\"policy\", \"n_layers\", \"requests\": [{\"device\", \"h\": [...]}],\n"
          "              \"ops\": [[\"compute\"|\"load\"|\"send\", req, stream, c0, c1, l0, l1], ...]}\n"
          "             (compute on a stream other than the request's device: help over NVLink;\n"
          "              [\"send\", req, from, c0, c1, l0, l1, to] moves those cells to device to)\n"
          "             (ops of one stream in the order it runs them)\n");
}

static int bad(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "cacheflow-sim: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  return 2;
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
  char *e;
  double v = strtod(s, &e);
  if (!*s || *e || !isfinite(v) || v < lo || v > hi) {
    char buf[96];
    snprintf(buf, sizeof buf, "%g..%g", lo, hi);
    fprintf(stderr, "cacheflow-sim: %s '%s': expected a number in %s\n", opt, s, buf);
    return 2;
  }
  *out = v;
  return 0;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The plan as JSON (see usage). Returns 0 or CF_EIO naming the file. */
static int write_plan(const char *path, const cf_sched_plan_t *p) {
  FILE *f = fopen(path, "w");
  if (!f) return cf_seterr(CF_EIO, "--plan-json %s: cannot open for writing", path);
  fprintf(f, "{\"policy\": \"%s\", \"n_layers\": %d, \"n_devices\": %d, \"n_links\": %d,\n \"requests\": [",
          cf_policy_name(p->policy), p->n_layers, p->n_devices, p->n_links);
  for (int r = 0; r < p->n_reqs; r++) {
    fprintf(f, "%s\n  {\"device\": %d, \"h\": [", r ? "," : "", p->device[r]);
    for (int c = 0; c < p->n_chunks[r]; c++) fprintf(f, "%s%d", c ? "," : "", p->h[p->h_off[r] + c]);
    fprintf(f, "]}");
  }
  fprintf(f, "],\n \"ops\": [");
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    fprintf(f, "%s\n  [\"%s\", %d, %d, %d, %d, %d, %d", i ? "," : "",
            o->kind == CF_OP_COMPUTE ? "compute" : o->kind == CF_OP_SEND ? "send" : "load", o->req,
            o->stream, o->c0, o->c1, o->l0, o->l1);
    if (o->kind == CF_OP_SEND) fprintf(f, ", %d", o->dst); /* the receiving device */
    fprintf(f, "]");
  }
  fprintf(f, "]}\n");
  if (fclose(f) != 0) return cf_seterr(CF_EIO, "--plan-json %s: write failed", path);
  return 0;
}

typedef struct {
  int ran, valid;
  char err[512];
  cf_sim_result_t res;
  double plan_ms;
  int sim_evals;
} row_t;

static void json_num(FILE *f, double v) {
  if (isfinite(v)) fprintf(f, "%.9g", v);
  else fprintf(f, "null");
}

/* Command line (see usage). */
typedef struct {
  const char *hw_arg, *model_arg, *work, *gen, *pol_arg, *tier_arg, *json, *save, *plan_out, *svg;
  double n_gen, seed, rate, gbps, chunk, gpus, refine, devices, nvlink;
} sim_opts_t;

/* What the run works on: profile, model, the batch as planned (per stage with pipeline
 * stages), and the rows of results. */
typedef struct {
  cf_hw_t hw;
  cf_model_shape_t model;
  int tier, pp, n, pol_one;
  cf_sched_input_t in;
  cf_sched_req_t *reqs, *stage_reqs;
  uint8_t *chunk_tiers; /* backs reqs[i].chunk_tier when the workload names tiers */
  double bound;
  row_t rows[CF_POLICY_COUNT];
} sim_run_t;

static void sim_run_free(sim_run_t *r) {
  for (int p = 0; p < CF_POLICY_COUNT; p++)
    if (r->rows[p].ran) cf_sim_result_free(&r->rows[p].res);
  free(r->reqs);
  free(r->stage_reqs);
  free(r->chunk_tiers);
}

/* argv into o; 0, or 2 after one line on stderr (-1: --help printed). */
static int sim_parse(int argc, char **argv, sim_opts_t *o) {
  int rc;
  *o = (sim_opts_t){.pol_arg = "all", .seed = 1, .rate = -1, .chunk = 256, .refine = -1, .nvlink = -1};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return -1; }
    if (strncmp(a, "--", 2) != 0) return bad("unexpected argument '%s'%s (see --help)", a, "");
    if (i + 1 >= argc) return bad("option %s needs a value%s", a, "");
    const char *v = argv[++i];
    if (!strcmp(a, "--hw")) o->hw_arg = v;
    else if (!strcmp(a, "--model")) o->model_arg = v;
    else if (!strcmp(a, "--workload")) o->work = v;
    else if (!strcmp(a, "--gen")) o->gen = v;
    else if (!strcmp(a, "--policy")) o->pol_arg = v;
    else if (!strcmp(a, "--tier")) o->tier_arg = v;
    else if (!strcmp(a, "--json")) o->json = v;
    else if (!strcmp(a, "--save-workload")) o->save = v;
    else if (!strcmp(a, "--plan-json")) o->plan_out = v;
    else if (!strcmp(a, "--svg")) o->svg = v;
    else if (!strcmp(a, "--n")) { if ((rc = parse_num(a, v, 1, 1000000, &o->n_gen))) return rc; }
    else if (!strcmp(a, "--seed")) { if ((rc = parse_num(a, v, 0, 1e15, &o->seed))) return rc; }
    else if (!strcmp(a, "--rate")) { if ((rc = parse_num(a, v, 0, 1e9, &o->rate))) return rc; }
    else if (!strcmp(a, "--gbps")) { if ((rc = parse_num(a, v, 1e-6, 1e6, &o->gbps))) return rc; }
    else if (!strcmp(a, "--chunk")) { if ((rc = parse_num(a, v, 1, 1 << 20, &o->chunk))) return rc; }
    else if (!strcmp(a, "--gpus")) { if ((rc = parse_num(a, v, 1, 1024, &o->gpus))) return rc; }
    else if (!strcmp(a, "--devices")) { if ((rc = parse_num(a, v, 1, 1024, &o->devices))) return rc; }
    else if (!strcmp(a, "--nvlink")) { if ((rc = parse_num(a, v, 0, 1e6, &o->nvlink))) return rc; }
    else if (!strcmp(a, "--refine")) { if ((rc = parse_num(a, v, 0, 1e6, &o->refine))) return rc; }
    else return bad("unknown option '%s'%s (see --help)", a, "");
  }
  if (!o->hw_arg) return bad("missing --hw FILE|NAME%s%s", "", "");
  if (!o->model_arg) return bad("missing --model NAME|config.json%s%s", "", "");
  if (!o->work == !o->gen) return bad("give exactly one of --workload FILE or --gen KIND%s%s", "", "");
  if (o->gen && o->n_gen < 1) return bad("--gen %s needs --n N%s", o->gen, "");
  return 0;
}

/* Profile, model, cost model, workload (read or generated; per stage with pipeline stages),
 * options checked against each other. 0, or 2 after one line on stderr. */
static int sim_setup(sim_opts_t *o, sim_run_t *R) {
  int rc;
  const char *pol_arg = o->pol_arg, *tier_arg = o->tier_arg, *work = o->work, *gen = o->gen,
             *save = o->save;
  double gpus = o->gpus, chunk = o->chunk, gbps = o->gbps, refine = o->refine;
  double devices = o->devices, nvlink = o->nvlink;
  cf_hw_t *hw = &R->hw;
  cf_model_shape_t *model = &R->model;
  cf_sched_input_t *in = &R->in;
  int n = 0, any_tiers = 0;
  R->pol_one = -1;
  if (strcmp(pol_arg, "all") != 0) {
    cf_policy_t p;
    if (cf_policy_parse(pol_arg, &p)) return bad("%s%s", cf_errmsg(), " (or all)");
    R->pol_one = (int)p;
  }
  if ((rc = cf_hw_load(o->hw_arg, hw))) return bad("%s%s", cf_errmsg(), "");
  if ((rc = cf_model_shape_load(o->model_arg, model))) return bad("%s%s", cf_errmsg(), "");
  int tier = hw->default_tier;
  if (tier_arg) {
    tier = -1;
    for (int t = 0; t < 3; t++)
      if (!strcmp(tier_arg, cf_tier_names[t])) tier = t;
    if (tier < 0) return bad("unknown tier '%s': expected dram, ssd or net%s", tier_arg, "");
  }
  int pp = model->pp > 1 ? model->pp : 1;
  if (devices > 0) { /* engines of the model's TP degree (x pipeline stages) each */
    int per = model->tp * pp;
    if (gpus > 0 && (int)gpus != (int)devices * per) {
      char b1[64];
      snprintf(b1, sizeof b1, "%d x %d GPUs = %d", (int)devices, per, (int)devices * per);
      return bad("--devices %s conflicts with --gpus (%s GPUs)", b1, "given");
    }
    gpus = devices * per;
  }
  if (nvlink >= 0) hw->nvlink_Bps = nvlink * 1e9; /* GB/s per GPU and direction; 0: none */
  if ((rc = cf_hw_cost(hw, model, (int)gpus, tier, gbps, (int)chunk, &in->cost)))
    return bad("%s%s", cf_errmsg(), "");
  if (work) {
    if ((rc = sim_workload_read(work, (int)chunk, tier, &R->reqs, &n, &R->chunk_tiers, &any_tiers)))
      return bad("workload %s%s", cf_errmsg(), "");
    /* mixed tiers: chunk tier indices are CF_TIER_*; each loads at its own tier's rate (the
     * rate that tier would give as --tier), the chosen one at link_Bps (--gbps applies) */
    for (int t = 0; any_tiers && t < 3 && t < CF_COST_MAX_TIERS; t++) {
      cf_sched_cost_t alt;
      if (t == tier || hw->tier_Bps[t] <= 0) continue;
      if (cf_hw_cost(hw, model, (int)gpus, t, 0, (int)chunk, &alt) == 0) in->cost.tier_Bps[t] = alt.link_Bps;
    }
    if (any_tiers) in->cost.tier_Bps[tier] = in->cost.link_Bps;
    for (int i = 0; any_tiers && i < n; i++)
      for (int32_t c = 0; c < cf_cost_chunks(&in->cost, R->reqs[i].prefix_tokens); c++)
        if (R->reqs[i].chunk_tier[c] != CF_SCHED_TIER_NONE && in->cost.tier_Bps[R->reqs[i].chunk_tier[c]] <= 0) {
          char what[64];
          snprintf(what, sizeof what, "request %d chunk %d", i, c);
          const char *tn = cf_tier_names[R->reqs[i].chunk_tier[c]];
          return bad("workload: %s: profile has no '%s' tier", what, tn);
        }
  } else {
    if ((rc = sim_workload_gen(gen, (int)o->n_gen, (uint64_t)o->seed, o->rate, &R->reqs))) return bad("%s%s", cf_errmsg(), "");
    n = (int)o->n_gen;
  }
  if (pp > 1 && (rc = sim_stage_requests(R->reqs, n, in->cost.n_devices / pp, pp, &R->stage_reqs)))
    return bad("workload: %s%s", cf_errmsg(), "");
  in->reqs = pp > 1 ? R->stage_reqs : R->reqs;
  in->n_reqs = n * pp;
  if (refine == 0) in->refine_budget_s = -1; /* the analytic plan alone */
  else if (refine > 0) { in->refine_evals = (int)refine; in->refine_budget_s = 3600; }
  if ((rc = cf_sched_input_check(in))) return bad("workload: %s%s", cf_errmsg(), "");
  if (save && (rc = sim_workload_write(save, R->reqs, n, (int)in->cost.chunk_tokens, tier))) return bad("%s%s", cf_errmsg(), "");
  /* the simulator keeps 20 bytes per cell: refuse what would not fit rather than thrash */
  double cells = 0;
  for (int i = 0; i < in->n_reqs; i++)
    cells += (double)cf_cost_chunks(&in->cost, in->reqs[i].prefix_tokens) * in->cost.n_layers;
  if (cells > SIM_MAX_CELLS) {
    char what[96];
    snprintf(what, sizeof what, "%.0f cells (requests x chunks x layers) > %.0f", cells,
             (double)SIM_MAX_CELLS);
    return bad("workload too large to simulate: %s%s; use fewer requests or a larger --chunk", what, "");
  }
  R->tier = tier;
  R->pp = pp;
  R->n = n;
  R->bound = cf_bound(in);
  return 0;
}

/* Plan and simulate every policy (or --policy's); --plan-json writes optimal's plan (or the
 * one policy's). Returns 0, 1 if a policy made an invalid plan (a bug), or 2 after one line
 * on stderr. */
static int sim_policies(const sim_opts_t *o, sim_run_t *R) {
  const char *plan_out = o->plan_out;
  int rc;
  row_t rows[CF_POLICY_COUNT];
  memset(rows, 0, sizeof rows);
  cf_sched_plan_t plan;
  cf_sched_plan_init(&plan);
  int invalid = 0;
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    if (R->pol_one >= 0 && p != R->pol_one) continue;
    row_t *w = &R->rows[p];
    cf_sim_result_init(&w->res);
    w->ran = 1;
    double t0 = now_s();
    rc = cf_sched_plan(&R->in, (cf_policy_t)p, &plan);
    w->plan_ms = (now_s() - t0) * 1e3;
    w->sim_evals = plan.sim_evals;
    int drawn = o->svg && (p == CF_POLICY_OPTIMAL || R->pol_one >= 0);
    w->res.record_ops = drawn; /* per-op times for the picture; no result changes */
    if (!rc) rc = cf_sim_run(&R->in, &plan, &w->res);
    if (!rc && drawn) {
      char title[320];
      snprintf(title, sizeof title, "cacheflow-sim: %s on %s, %s", R->model.name, R->hw.name,
               cf_policy_name((cf_policy_t)p));
      if ((rc = sim_svg_write(o->svg, title, &R->in, &plan, &w->res, R->bound, R->pp))) {
        cf_sched_plan_free(&plan);
        return bad("%s%s", cf_errmsg(), "");
      }
    }
    cf_sim_result_trim(&w->res); /* keep one policy's cell scratch alive at a time */
    if (!rc && R->pp > 1) rc = cf_sim_fold_stages(&R->in, R->pp, &w->res); /* per request, all stages */
    if (!rc && plan_out && (p == CF_POLICY_OPTIMAL || R->pol_one >= 0) &&
        (rc = write_plan(plan_out, &plan))) {
      cf_sched_plan_free(&plan);
      return bad("%s%s", cf_errmsg(), "");
    }
    w->valid = rc == 0;
    if (rc) {
      snprintf(w->err, sizeof w->err, "%s: %s", cf_strerror(rc), cf_errmsg());
      fprintf(stderr, "cacheflow-sim: policy %s: %s\n", cf_policy_name((cf_policy_t)p), w->err);
      invalid = 1;
    }
  }
  cf_sched_plan_free(&plan);
  return invalid;
}

/* The table on stdout. */
static void sim_table(const sim_run_t *R) {
  int n = R->n, pp = R->pp;
  (void)n;
  (void)pp;
  int64_t tot = 0, mx = 0;
  for (int i = 0; i < R->n; i++) {
    tot += R->reqs[i].prefix_tokens;
    if (R->reqs[i].prefix_tokens > mx) mx = R->reqs[i].prefix_tokens;
  }
  printf("hw %s (%s tier, %.3g GB/s per link%s, %d engine%s of %s%d GPU%s, NVLink %.0f GB/s), model %s (%d layers, "
         "%.0f B/token/layer)\n",
         R->hw.name, cf_tier_names[R->tier], R->in.cost.link_Bps / 1e9,
         R->in.cost.shared_link ? " shared" : "", R->in.cost.n_devices / R->pp, R->in.cost.n_devices / R->pp > 1 ? "s" : "",
         R->pp > 1 ? (R->pp == 2 ? "2 stages x " : "stages x ") : "", R->model.tp, R->model.tp > 1 ? "s" : "", cf_cost_has_peer(&R->in.cost) ? R->in.cost.peer_Bps / 1e9 : 0.0,
         R->model.name, R->in.cost.n_layers, R->in.cost.kv_bytes_per_token);
  printf("%d requests, %lld prefix tokens (max %lld), chunk %d; lower bound on makespan %.4f s\n\n",
         n, (long long)tot, (long long)mx, R->in.cost.chunk_tokens, R->bound);
  printf("%-10s %9s %7s %9s %9s %9s %9s %6s %6s %8s", "policy", "makespan", "/bound", "TTFT mean",
         "p50", "p95", "p99", "util_c", "util_l", "plan_ms");
  for (int q = 0; q < CF_POLICY_COUNT; q++)
    if (R->rows[q].ran) printf(" %9.9s", cf_policy_name((cf_policy_t)q));
  printf("\n");
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    const row_t *w = &R->rows[p];
    if (!w->ran) continue;
    if (!w->valid) { printf("%-10s INVALID: %s\n", cf_policy_name((cf_policy_t)p), w->err); continue; }
    const cf_sim_result_t *s = &w->res;
    printf("%-10s %9.4f %7.3f %9.4f %9.4f %9.4f %9.4f %6.2f %6.2f %8.3f", cf_policy_name((cf_policy_t)p),
           s->makespan_s, R->bound > 0 ? s->makespan_s / R->bound : 1.0, s->mean_ttft_s, s->p50_ttft_s,
           s->p95_ttft_s, s->p99_ttft_s, s->compute_util, s->link_util, w->plan_ms);
    for (int q = 0; q < CF_POLICY_COUNT; q++)
      if (R->rows[q].ran) {
        if (R->rows[q].valid && s->mean_ttft_s > 0) printf(" %8.2fx", R->rows[q].res.mean_ttft_s / s->mean_ttft_s);
        else printf(" %9s", "-");
      }
    printf("\n");
  }
  printf("\nTTFT = restore + prefill of the new tokens; columns after plan_ms: speed-up of the row's mean TTFT over each policy\n");
}

/* The same as JSON into `json`. 0, or 2 (errno printed). */
static int sim_json(const char *json, const sim_run_t *R) {
  int n = R->n, pp = R->pp;
  const cf_sched_input_t *inp = &R->in;
  (void)inp;
  FILE *f = fopen(json, "w");
  if (!f) {
    perror(json);
    return 2;
  }
  char esc[512];
  fprintf(f, "{\n  \"hw\": ");
  cf_json_escape(esc, sizeof esc, R->hw.name);
  fprintf(f, "%s,\n  \"model\": ", esc);
  cf_json_escape(esc, sizeof esc, R->model.name);
  fprintf(f, "%s,\n  \"tier\": \"%s\",\n  \"link_GBps\": ", esc, cf_tier_names[R->tier]);
  json_num(f, R->in.cost.link_Bps / 1e9);
  fprintf(f, ",\n  \"pp_stages\": %d", pp);
  fprintf(f, ",\n  \"peer_GBps\": ");
  json_num(f, cf_cost_has_peer(&R->in.cost) ? R->in.cost.peer_Bps / 1e9 : 0.0);
  fprintf(f, ",\n  \"shared_link\": %s,\n  \"n_devices\": %d,\n  \"n_requests\": %d,\n"
             "  \"chunk_tokens\": %d,\n  \"n_layers\": %d,\n  \"bound_s\": ",
          R->in.cost.shared_link ? "true" : "false", R->in.cost.n_devices, n, R->in.cost.chunk_tokens,
          R->in.cost.n_layers);
  json_num(f, R->bound);
  fprintf(f, ",\n  \"policies\": {");
  int first = 1;
  for (int p = 0; p < CF_POLICY_COUNT; p++) {
    const row_t *w = &R->rows[p];
    if (!w->ran) continue;
    fprintf(f, "%s\n    \"%s\": {\"valid\": %s", first ? "" : ",", cf_policy_name((cf_policy_t)p),
            w->valid ? "true" : "false");
    first = 0;
    if (!w->valid) {
      cf_json_escape(esc, sizeof esc, w->err);
      fprintf(f, ", \"error\": %s}", esc);
      continue;
    }
    const cf_sim_result_t *s = &w->res;
    const char *k[] = {"makespan_s", "mean_ttft_s", "p50_ttft_s", "p95_ttft_s", "p99_ttft_s",
                       "mean_restore_s", "ratio_to_bound", "compute_util", "link_util", "plan_ms",
                       "peer_util"};
    double v[] = {s->makespan_s, s->mean_ttft_s, s->p50_ttft_s, s->p95_ttft_s, s->p99_ttft_s,
                  s->mean_restore_s, R->bound > 0 ? s->makespan_s / R->bound : 1.0, s->compute_util,
                  s->link_util, w->plan_ms, s->peer_util};
    for (size_t j = 0; j < sizeof v / sizeof v[0]; j++) {
      fprintf(f, ", \"%s\": ", k[j]);
      json_num(f, v[j]);
    }
    fprintf(f, ", \"cells_computed\": %lld, \"cells_loaded\": %lld, \"cells_helped\": %lld, "
            "\"sim_evals\": %d", (long long)s->cells_computed, (long long)s->cells_loaded,
            (long long)s->cells_helped, w->sim_evals);
    if (n <= SIM_MAX_PER_REQUEST) { /* per-request results, in workload order */
      const double *arr[2] = {s->restore_s, s->ttft_s};
      const char *names[2] = {"restore_s", "ttft_s"};
      for (int a = 0; a < 2; a++) {
        fprintf(f, ", \"%s\": [", names[a]);
        for (int i = 0; i < R->n; i++) {
          if (i) fputc(',', f);
          json_num(f, arr[a][i]);
        }
        fputc(']', f);
      }
    }
    fprintf(f, ", \"speedup_mean_ttft\": {");
    int f2 = 1;
    for (int q = 0; q < CF_POLICY_COUNT; q++)
      if (R->rows[q].ran && R->rows[q].valid && s->mean_ttft_s > 0) {
        fprintf(f, "%s\"%s\": ", f2 ? "" : ", ", cf_policy_name((cf_policy_t)q));
        json_num(f, R->rows[q].res.mean_ttft_s / s->mean_ttft_s);
        f2 = 0;
      }
    fprintf(f, "}}");
  }
  fprintf(f, "\n  }\n}\n");
  if (fclose(f) != 0) {
    perror(json);
    return 2;
  }
  return 0;
}

int main(int argc, char **argv) {
  sim_opts_t o;
  int rc = sim_parse(argc, argv, &o);
  if (rc) return rc < 0 ? 0 : rc;
  sim_run_t R;
  memset(&R, 0, sizeof R);
  if (!(rc = sim_setup(&o, &R)) && (rc = sim_policies(&o, &R)) != 2) {
    int invalid = rc;
    sim_table(&R);
    rc = o.json ? sim_json(o.json, &R) : 0;
    if (!rc) rc = invalid ? 1 : 0;
  }
  sim_run_free(&R);
  return rc;
}
