/* cacheflowctl trace [--restore ID] [--svg FILE] [--addr ADDR]
 *
 * An executed restore next to its plan (Admin.Trace): one summary line, and with --svg the
 * picture lib/util/cf_svgplot draws for `cacheflow-sim --svg` too: the plan's ops at the times
 * the planner's simulation predicted (lanes: compute, link), then the restore as it ran (lanes:
 * the compute worker and each loader thread: every forward call and loaded cell a box), on one
 * time axis with the bound and both ends marked; below, the staircase it executed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cf_client.h"
#include "ctl/cf_ctl.h"
#include "util/cf_err.h"
#include "util/cf_svgplot.h"

static const char *const cf__tiers[3] = {"cpu", "ssd", "remote"};
static const char *const cf__pols[7] = {"default", "recompute", "load", "cake", "layerwise", "cacheflow", "optimal"};

static void cf__box(cf_plot_box_t *b, const Cacheflow__V1__TraceOp *o, int lane) {
  *b = (cf_plot_box_t){.t0_s = o->t0_us * 1e-6, .t1_s = o->t1_us * 1e-6, .lane = lane, .req = 0,
                       .kind = o->kind ? CF_PLOT_LOAD : CF_PLOT_COMPUTE, .tier = o->kind ? (int)o->tier : -1,
                       .c0 = (int32_t)o->c0, .c1 = (int32_t)o->c1, .l0 = o->l0, .l1 = o->l1};
}

static int cf__draw(const Cacheflow__V1__TraceResponse *t, const char *path) {
  int nl = (int)t->loaders, rc = CF_ENOMEM;
  size_t np = t->n_planned, ne = t->n_executed;
  cf_plot_box_t *pb = calloc(np + 1, sizeof *pb), *eb = calloc(ne ? ne : 1, sizeof *eb);
  char (*names)[24] = calloc((size_t)nl + 1, sizeof *names);
  const char **elanes = calloc((size_t)nl + 1, sizeof *elanes);
  int *h = calloc(t->n_h ? t->n_h : 1, sizeof *h);
  if (!pb || !eb || !names || !elanes || !h) { cf_seterr(CF_ENOMEM, "trace: out of memory"); goto out; }
  double plan_end = 0;
  for (size_t i = 0; i < np; i++) {
    cf__box(&pb[i], t->planned[i], t->planned[i]->kind ? 1 : 0);
    if (pb[i].t1_s > plan_end) plan_end = pb[i].t1_s;
  }
  /* the uncached tail (chunks stored nowhere after the planned prefix) is computed after the
   * plan, as one prefill the prediction adds: one box from the plan's end to the predicted end */
  size_t tail = t->chunk_tiers.len == t->n_h ? t->n_h : 0;
  while (tail > 0 && t->chunk_tiers.data[tail - 1] == CF_PLOT_HOLE) tail--;
  if (t->chunk_tiers.len == t->n_h && tail < t->n_h && t->predicted_us * 1e-6 > plan_end)
    pb[np++] = (cf_plot_box_t){.t0_s = plan_end, .t1_s = t->predicted_us * 1e-6, .lane = 0, .req = 0,
                               .kind = CF_PLOT_COMPUTE, .tier = -1, .c0 = (int32_t)tail, .c1 = (int32_t)t->n_h,
                               .l0 = 0, .l1 = (int32_t)t->layers};
  for (size_t i = 0; i < ne; i++) {
    const Cacheflow__V1__TraceOp *o = t->executed[i];
    if (o->kind && (int)o->lane >= nl) { rc = cf_seterr(CF_EFORMAT, "trace: step %zu on loader %u of %d", i, o->lane, nl); goto out; }
    cf__box(&eb[i], o, o->kind ? 1 + (int)o->lane : 0);
  }
  snprintf(names[0], sizeof names[0], "compute");
  for (int k = 0; k < nl; k++) snprintf(names[1 + k], sizeof names[0], "loader %d", k);
  for (int k = 0; k <= nl; k++) elanes[k] = names[k];
  static const char *const plans[2] = {"compute", "link"};
  char pt[160], et[200], title[160], sub[300];
  snprintf(pt, sizeof pt, "Plan (%s), as its simulation predicted: %zu ops%s%s", cf__pols[t->policy % 7],
           t->n_planned, np > t->n_planned ? " + the uncached tail's prefill" : "",
           t->planned_dropped ? " (more dropped: trace_ops)" : "");
  snprintf(et, sizeof et, "Executed: %zu steps (%llu forward calls, loaded cells by %d loader thread(s))%s", ne,
           (unsigned long long)t->forward_calls, nl, t->executed_dropped ? " (more dropped: trace_ops)" : "");
  cf_plot_timeline_t tl[2] = {
    {.title = pt, .lanes = plans, .n_lanes = 2, .boxes = pb, .n_boxes = np, .bound_s = t->bound_us * 1e-6,
     .end_s = t->predicted_us * 1e-6},
    {.title = et, .lanes = elanes, .n_lanes = nl + 1, .boxes = eb, .n_boxes = ne, .bound_s = t->bound_us * 1e-6,
     .end_s = t->time_us * 1e-6}};
  for (size_t c = 0; c < t->n_h; c++) h[c] = (int)t->h[c];
  cf_plot_stair_t st = {.n_chunks = (int)t->n_h, .n_layers = (int)t->layers, .h = h,
                        .tier = t->chunk_tiers.len == t->n_h ? t->chunk_tiers.data : NULL};
  snprintf(st.title, sizeof st.title, "restore %llu: %u tokens, %u per chunk", (unsigned long long)t->restore_id,
           t->tokens, t->chunk_tokens);
  snprintf(title, sizeof title, "cacheflowd restore %llu: executed next to its plan", (unsigned long long)t->restore_id);
  snprintf(sub, sizeof sub, "%.3f ms executed, %.3f ms predicted, bound %.3f ms; cells loaded cpu %llu ssd %llu remote %llu, "
           "computed %llu%s%s", t->time_us * 1e-3, t->predicted_us * 1e-3, t->bound_us * 1e-3,
           (unsigned long long)t->cells_loaded_cpu, (unsigned long long)t->cells_loaded_ssd,
           (unsigned long long)t->cells_loaded_remote, (unsigned long long)t->cells_computed,
           *t->error ? "; failed: " : "", t->error);
  cf_plot_t plot = {.title = title, .subtitle = sub, .tier_names = cf__tiers, .n_tiers = 3};
  cf_svg_t svg;
  memset(&svg, 0, sizeof svg);
  if (!(rc = cf_svgplot_draw(&svg, &plot, tl, 2, &st, 1))) rc = cf_svg_save(&svg, path);
  cf_svg_free(&svg);
out:
  free(pb); free(eb); free(names); free(elanes); free(h);
  return rc;
}

static int cf__trace_main(int argc, char **argv) {
  const char *addr = NULL, *svg = NULL;
  unsigned long long id = 0;
  static const struct option o[] = {{"addr", required_argument, 0, 'a'}, {"restore", required_argument, 0, 'r'},
                                    {"svg", required_argument, 0, 's'}, {0, 0, 0, 0}};
  int ch;
  optind = 1;
  while ((ch = getopt_long(argc, argv, "a:r:s:", o, NULL)) != -1) {
    if (ch == 'a') addr = optarg;
    else if (ch == 's') svg = optarg;
    else if (ch == 'r') {
      if (cf_ctl_parse_u64(optarg, UINT64_MAX, &id) || id == 0)
        return cf_ctl_fail("trace", "--restore '%s': must be a restore id (PlanSummary.restore_id, >= 1)", optarg), 2;
    } else return 2;
  }
  if (optind < argc) return cf_ctl_fail("trace", "unexpected argument '%s'", argv[optind]), 2;
  if (!addr) addr = getenv("CACHEFLOW_ADDR");
  if (!addr || !*addr) addr = "unix:/run/cacheflow/cacheflowd.sock";
  cf_client_t *c;
  if (cf_client_connect(addr, 10000, &c)) return cf_ctl_fail("trace", "%s", cf_errmsg());
  Cacheflow__V1__TraceResponse *t = NULL;
  int rc = cf_client_trace(c, id, &t);
  cf_client_close(c);
  if (rc) return cf_ctl_fail("trace", "%s", cf_errmsg());
  printf("restore %llu: %s, %u tokens, %.3f ms (predicted %.3f ms, bound %.3f ms), plan %zu ops, executed %zu steps "
         "(%llu forward calls), cells loaded %llu/%llu/%llu (cpu/ssd/remote), computed %llu%s%s\n",
         (unsigned long long)t->restore_id, cf__pols[t->policy % 7], t->tokens, t->time_us * 1e-3,
         t->predicted_us * 1e-3, t->bound_us * 1e-3, t->n_planned, t->n_executed,
         (unsigned long long)t->forward_calls, (unsigned long long)t->cells_loaded_cpu,
         (unsigned long long)t->cells_loaded_ssd, (unsigned long long)t->cells_loaded_remote,
         (unsigned long long)t->cells_computed, *t->error ? ", failed: " : "", t->error);
  printf("kept:");
  for (size_t i = 0; i < t->n_kept_ids; i++) printf(" %llu", (unsigned long long)t->kept_ids[i]);
  printf("\n");
  int ret = 0;
  if (svg && (rc = cf__draw(t, svg))) ret = cf_ctl_fail("trace", "%s", cf_errmsg());
  else if (svg) printf("wrote %s\n", svg);
  cacheflow__v1__trace_response__free_unpacked(t, NULL);
  return ret;
}

static const cf_ctl_cmd_t cf__cmd_trace = {"trace", "[--restore ID] [--svg FILE] [--addr ADDR]",
                                           "an executed restore next to its plan (Admin.Trace); --svg draws it",
                                           cf__trace_main};
CF_CTL_COMMAND(cf__cmd_trace)
