/* cacheflow-sim --svg: a simulated plan as a picture (lib/util/cf_svgplot): a lane per compute
 * stream, per link and (with sends) per peer link, each op at its simulated times; the batch's
 * lower bound; each request's staircase. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched/cf_hw.h"
#include "sim/sim.h"
#include "util/cf_err.h"
#include "util/cf_svgplot.h"

int sim_svg_write(const char *path, const char *title, const cf_sched_input_t *in, const cf_sched_plan_t *p,
                  const cf_sim_result_t *res, double bound_s, int stages) {
  if (!res->record_ops || !res->op_start_s) return cf_seterr(CF_EINVAL, "--svg %s: the run kept no op times", path);
  int nd = p->n_devices, nl = p->n_links, peer = 0;
  for (size_t i = 0; i < p->n_ops; i++) peer |= p->ops[i].kind == CF_OP_SEND;
  int n_lanes = nd + nl + (peer ? nd : 0);
  char (*names)[24] = calloc((size_t)n_lanes, sizeof *names);
  const char **lanes = calloc((size_t)n_lanes, sizeof *lanes);
  cf_plot_box_t *boxes = calloc(p->n_ops ? p->n_ops : 1, sizeof *boxes);
  cf_plot_stair_t *st = calloc((size_t)(p->n_reqs ? p->n_reqs : 1), sizeof *st);
  int **hs = calloc((size_t)(p->n_reqs ? p->n_reqs : 1), sizeof *hs);
  int rc = 0;
  if (!names || !lanes || !boxes || !st || !hs) { rc = cf_seterr(CF_ENOMEM, "--svg: %zu ops", p->n_ops); goto out; }
  for (int d = 0; d < nd; d++) snprintf(names[d], sizeof names[d], "compute %d", d);
  for (int k = 0; k < nl; k++) snprintf(names[nd + k], sizeof names[0], "link %d", k);
  for (int d = 0; peer && d < nd; d++) snprintf(names[nd + nl + d], sizeof names[0], "peer %d", d);
  for (int l = 0; l < n_lanes; l++) lanes[l] = names[l];
  for (size_t i = 0; i < p->n_ops; i++) {
    const cf_sched_op_t *o = &p->ops[i];
    const cf_sched_req_t *q = &in->reqs[o->req];
    int kind = o->kind == CF_OP_COMPUTE ? CF_PLOT_COMPUTE : o->kind == CF_OP_LOAD ? CF_PLOT_LOAD : CF_PLOT_SEND;
    int lane = o->kind == CF_OP_COMPUTE ? o->stream : o->kind == CF_OP_LOAD ? nd + o->stream : nd + nl + o->stream;
    boxes[i] = (cf_plot_box_t){.t0_s = res->op_start_s[i], .t1_s = res->op_end_s[i], .lane = lane,
                               .req = o->req / stages, .kind = kind,
                               .tier = kind == CF_PLOT_LOAD && o->l0 >= 0 ? cf_sched_chunk_tier(q, o->c0) : -1,
                               .c0 = o->c0, .c1 = o->c1, .l0 = o->l0, .l1 = o->l1};
  }
  for (int r = 0; r < p->n_reqs; r++) {
    int nc = p->n_chunks[r];
    if (!(hs[r] = malloc((size_t)(nc ? nc : 1) * sizeof *hs[r]))) { rc = cf_seterr(CF_ENOMEM, "--svg"); goto out; }
    for (int c = 0; c < nc; c++) hs[r][c] = p->h[p->h_off[r] + c];
    st[r] = (cf_plot_stair_t){.n_chunks = nc, .n_layers = p->n_layers, .h = hs[r], .tier = in->reqs[r].chunk_tier};
    if (stages > 1)
      snprintf(st[r].title, sizeof st[r].title, "req %d stage %d: %lld tokens, device %d", r / stages, r % stages,
               (long long)in->reqs[r].prefix_tokens, p->device[r]);
    else
      snprintf(st[r].title, sizeof st[r].title, "req %d: %lld tokens, device %d", r, (long long)in->reqs[r].prefix_tokens,
               p->device[r]);
  }
  char sub[200];
  int secs = res->makespan_s >= 2; /* the unit the time axis uses too */
  snprintf(sub, sizeof sub, "%d requests, %d layers, %d device(s), %d link(s), %zu ops; makespan %.4g %s, bound %.4g %s",
           in->n_reqs / stages, p->n_layers, nd, nl, p->n_ops, res->makespan_s * (secs ? 1 : 1e3), secs ? "s" : "ms",
           bound_s * (secs ? 1 : 1e3), secs ? "s" : "ms");
  char tl_title[96];
  snprintf(tl_title, sizeof tl_title, "Simulated plan (%s)", cf_policy_name(p->policy));
  cf_plot_timeline_t tl = {.title = tl_title, .lanes = lanes, .n_lanes = n_lanes, .boxes = boxes,
                           .n_boxes = p->n_ops, .bound_s = bound_s, .end_s = res->makespan_s};
  cf_plot_t plot = {.title = title, .subtitle = sub, .tier_names = cf_tier_names, .n_tiers = 3};
  cf_svg_t svg;
  memset(&svg, 0, sizeof svg);
  if (!(rc = cf_svgplot_draw(&svg, &plot, &tl, 1, st, p->n_reqs))) rc = cf_svg_save(&svg, path);
  cf_svg_free(&svg);
out:
  for (int r = 0; hs && r < p->n_reqs; r++) free(hs[r]);
  free(hs); free(names); free(lanes); free(boxes); free(st);
  return rc;
}
