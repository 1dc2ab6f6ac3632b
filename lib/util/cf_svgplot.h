/* cf_svgplot — the pictures of a restore plan, drawn with cf_svg: the one drawing code that
 * `cacheflow-sim --svg` (a simulated plan) and `cacheflowctl trace --svg` (an executed restore
 * next to its plan) share. It knows nothing of lib/sched or the daemon: callers turn their ops
 * into boxes and their staircases into cf_plot_stair_t.
 *
 *  - Timelines, one under the other on one time axis: a lane per stream (compute stream, link,
 *    loader thread...), each op a box in its lane coloured by request (loads lighter, outlined;
 *    sends hatched darker), the lower bound as a dashed vertical line.
 *  - Staircases, a grid of small panels: per request chunks (x) x layers (y, layer 0 at the
 *    bottom); the cells a chunk computes [0, h) in orange, the loaded rest [h, L) coloured by its
 *    tier; chunks absent from the store (holes: every layer computed) in red.
 *
 * What tests read back (tests/integration/svg_check.py): every op is a <rect class="op"> with
 * data-lane, data-req, data-kind, data-t0 and data-t1 (seconds) and data-cells ((c1 - c0) x
 * (l1 - l0)) inside its timeline's <g class="timeline">,
 * in the lane's order; every lane a <rect class="lane" data-lane=...> the op boxes lie within.
 */
#ifndef CF_SVGPLOT_H
#define CF_SVGPLOT_H

#include <stddef.h>
#include <stdint.h>

#include "util/cf_svg.h"

enum { CF_PLOT_COMPUTE = 0, CF_PLOT_LOAD = 1, CF_PLOT_SEND = 2 };
#define CF_PLOT_HOLE 255    /* cf_plot_stair_t.tier: the chunk is not stored (computed whole) */
#define CF_PLOT_PRESENT 254 /* the engine holds it already: neither loaded nor computed */

typedef struct {
  double t0_s, t1_s;      /* start, end (seconds from the timeline's origin) */
  int lane;               /* index into the timeline's lanes */
  int req;                /* request (the colour) */
  int kind;               /* CF_PLOT_* */
  int tier;               /* loads: the tier (its name in the tooltip), else -1 */
  int32_t c0, c1, l0, l1; /* chunks [c0, c1) x layers [l0, l1) (tooltip) */
} cf_plot_box_t;

typedef struct {
  const char *title;
  const char *const *lanes; /* [n_lanes] names */
  int n_lanes;
  const cf_plot_box_t *boxes;
  size_t n_boxes;
  double bound_s;           /* > 0: the lower bound, a dashed line */
  double end_s;             /* > 0: a solid line (the restore's end as measured or predicted) */
} cf_plot_timeline_t;

typedef struct {
  char title[64];
  int n_chunks, n_layers;
  const int *h;             /* [n_chunks]: layers [0, h) computed */
  const uint8_t *tier;      /* NULL (tier 0) or [n_chunks]: the tier loaded from, CF_PLOT_HOLE */
} cf_plot_stair_t;

typedef struct {
  const char *title;        /* the picture's heading */
  const char *subtitle;     /* NULL or one more line under it */
  const char *const *tier_names; /* [n_tiers] e.g. {"cpu", "ssd", "remote"} */
  int n_tiers;
} cf_plot_t;

/* Draw the picture into a new document in *s (cf_svg_begin is called here; the caller saves and
 * frees it). Up to 64 staircases are drawn (a note says how many were left out). Returns 0 or
 * CF_EINVAL naming a box outside its timeline's lanes or with t1 < t0. */
int cf_svgplot_draw(cf_svg_t *s, const cf_plot_t *p, const cf_plot_timeline_t *tl, int n_tl,
                    const cf_plot_stair_t *st, int n_st);

#endif
