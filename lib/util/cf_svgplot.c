/* cf_svgplot — see cf_svgplot.h. */
#include "util/cf_svgplot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/cf_err.h"

#define W_LABEL 120.0  /* lane names */
#define W_TIME 960.0   /* the time axis */
#define W_PAGE (W_LABEL + W_TIME + 30.0)
#define H_LANE 22.0
#define H_BOX 16.0
#define H_ROW 14.0 /* a sub-row of a lane whose ops overlap in time (10 px boxes) */
#define H_ROWBOX 10.0
#define STAIR_W 240.0
#define STAIR_H 150.0
#define STAIR_COLS 4
#define MAX_STAIRS 64

/* Tableau 10: distinguishable, and readable printed in grey. */
static const char *const cf__req_col[10] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                            "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
/* The staircase: computed cells, loaded cells per tier, holes. */
/* (Dark2: apart from the request colours, so a staircase never reads as a request) */
#define COL_COMPUTED "#d95f02"
#define COL_HOLE "#8b0000"
static const char *const cf__tier_col[4] = {"#1b9e77", "#7570b3", "#66a61e", "#e6ab02"};

static const char *cf__kind_name(int k) {
  return k == CF_PLOT_COMPUTE ? "compute" : k == CF_PLOT_LOAD ? "load" : "send";
}

/* A round step of about range / 8: 1, 2 or 5 x 10^k. */
static double cf__tick(double range) {
  double raw = range / 8, p = pow(10, floor(log10(raw))), m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* Seconds in the unit that reads best for the axis' range. */
static void cf__unit(double tmax, double *scale, const char **name) {
  if (tmax >= 2) { *scale = 1; *name = "s"; }
  else if (tmax >= 2e-3) { *scale = 1e3; *name = "ms"; }
  else { *scale = 1e6; *name = "us"; }
}

typedef struct {
  const cf_plot_box_t *b;
  int row; /* the sub-row of its lane (0 unless ops of the lane overlap in time) */
} cf__bref_t;

static int cf__by_lane_start(const void *a, const void *b) {
  const cf_plot_box_t *x = ((const cf__bref_t *)a)->b, *y = ((const cf__bref_t *)b)->b;
  if (x->lane != y->lane) return x->lane < y->lane ? -1 : 1;
  if (x->t0_s != y->t0_s) return x->t0_s < y->t0_s ? -1 : 1;
  return x < y ? -1 : x > y; /* stable: recording order */
}

/* A lane with r sub-rows: its height, and the y of row k's band inside it. One row keeps the
 * plain look; overlapping ops (an SSD loader keeps several io_uring reads in flight) get rows of
 * H_ROW each, so every box stays visible instead of hiding the ones under it. */
static double cf__lane_h(int r) { return r <= 1 ? H_LANE : r * H_ROW + 4; }

/* Sort the boxes by lane and start and give each the first sub-row of its lane free at its
 * start (greedy interval colouring: as many rows as ops ever run at once in that lane, and the
 * same picture for the same trace). "Free" ignores an overlap within rounding of the end, the
 * tolerance svg_check.py --serial allows. ends: scratch of n_boxes. Returns the lanes' height. */
static double cf__layout(const cf_plot_timeline_t *t, cf__bref_t *ord, double *ends, int *rows) {
  for (size_t i = 0; i < t->n_boxes; i++) ord[i] = (cf__bref_t){.b = &t->boxes[i]};
  qsort(ord, t->n_boxes, sizeof *ord, cf__by_lane_start);
  for (int l = 0; l < t->n_lanes; l++) rows[l] = 1;
  /* O(ops x rows): rows stay a handful (the most ops ever in flight at once in one lane) */
  for (size_t i = 0, n = 0; i < t->n_boxes; i++) {
    const cf_plot_box_t *b = ord[i].b;
    if (i == 0 || b->lane != ord[i - 1].b->lane) n = 0; /* ends[0, n): the rows of this lane */
    size_t r = 0;
    while (r < n && b->t0_s < ends[r] - 1e-12 * (ends[r] > 1 ? ends[r] : 1)) r++;
    if (r == n) n++;
    ends[r] = b->t1_s;
    ord[i].row = (int)r;
    if ((int)n > rows[b->lane]) rows[b->lane] = (int)n;
  }
  double h = 0;
  for (int l = 0; l < t->n_lanes; l++) h += cf__lane_h(rows[l]);
  return h;
}

static double cf__timeline(cf_svg_t *s, const cf_plot_t *p, const cf_plot_timeline_t *t, int idx, double y,
                           double tmax, cf__bref_t *ord, double *ends, int *rows, double *lane_y) {
  double scale;
  const char *unit;
  cf__unit(tmax, &scale, &unit);
  double x0 = W_LABEL, px = W_TIME / tmax;
  char grp[32];
  snprintf(grp, sizeof grp, "timeline t%d", idx);
  cf_svg_group(s, grp);
  cf_svg_text(s, 10, y + 14, 13, "start", "#222222", "%s", t->title ? t->title : "");
  y += 34; /* room for the bound's and the end's labels above the lanes */
  double top = y, h = cf__layout(t, ord, ends, rows);
  for (int l = 0; l < t->n_lanes; l++) {
    char data[64] = "";
    double lh = cf__lane_h(rows[l]);
    lane_y[l] = y;
    cf_svg_attr(data, sizeof data, "data-lane", "%d", l);
    cf_svg_attr(data, sizeof data, "data-rows", "%d", rows[l]);
    cf_svg_rect(s, x0, y, W_TIME, lh, l % 2 ? "#f4f4f4" : "#fafafa", NULL, "lane", NULL, data);
    cf_svg_text(s, x0 - 6, y + lh / 2 + 4, 11, "end", "#333333", "%s", t->lanes[l]); /* once, mid-lane */
    y += lh;
  }
  /* grid and axis */
  double step = cf__tick(tmax);
  for (double v = 0; v <= tmax * 1.0001; v += step) {
    double x = x0 + v * px;
    cf_svg_line(s, x, top, x, top + h, "#dddddd", 0.5, NULL, NULL);
    cf_svg_text(s, x, top + h + 12, 9, "middle", "#555555", "%g", round(v * scale * 1e6) / 1e6);
  }
  cf_svg_text(s, x0 + W_TIME, top + h + 24, 9, "end", "#555555", "time (%s)", unit);
  /* boxes, per lane by start time, each in its sub-row */
  for (size_t i = 0; i < t->n_boxes; i++) {
    const cf_plot_box_t *b = ord[i].b;
    double bx = x0 + b->t0_s * px, bw = (b->t1_s - b->t0_s) * px;
    int one = rows[b->lane] <= 1;
    double bh = one ? H_BOX : H_ROWBOX;
    double by = one ? lane_y[b->lane] + (H_LANE - H_BOX) / 2 : lane_y[b->lane] + 2 + ord[i].row * H_ROW + (H_ROW - H_ROWBOX) / 2;
    if (bw < 0.4) bw = 0.4; /* a very short op stays visible */
    const char *col = cf__req_col[(b->req < 0 ? 0 : b->req) % 10];
    char tip[200], data[256] = "";
    const char *tn = b->tier >= 0 && b->tier < p->n_tiers ? p->tier_names[b->tier] : NULL;
    snprintf(tip, sizeof tip, "request %d %s%s%s chunks [%d, %d) layers [%d, %d): %.6g - %.6g %s", b->req,
             cf__kind_name(b->kind), tn ? " from " : "", tn ? tn : "", b->c0, b->c1, b->l0, b->l1,
             b->t0_s * scale, b->t1_s * scale, unit);
    cf_svg_attr(data, sizeof data, "data-lane", "%d", b->lane);
    cf_svg_attr(data, sizeof data, "data-row", "%d", ord[i].row);
    cf_svg_attr(data, sizeof data, "data-req", "%d", b->req);
    cf_svg_attr(data, sizeof data, "data-kind", "%s", cf__kind_name(b->kind));
    cf_svg_attr(data, sizeof data, "data-t0", "%.9g", b->t0_s);
    cf_svg_attr(data, sizeof data, "data-t1", "%.9g", b->t1_s);
    cf_svg_attr(data, sizeof data, "data-cells", "%lld", (long long)(b->c1 - b->c0) * (b->l1 - b->l0));
    if (b->kind == CF_PLOT_COMPUTE) {
      cf_svg_rect(s, bx, by, bw, bh, col, "#ffffff", "op", tip, data);
    } else { /* loads and sends: the request's colour, lighter, outlined by the tier / darker */
      char fill[16];
      unsigned r, g, bl;
      sscanf(col + 1, "%02x%02x%02x", &r, &g, &bl);
      if (b->kind == CF_PLOT_LOAD) { r = (r + 2 * 255) / 3; g = (g + 2 * 255) / 3; bl = (bl + 2 * 255) / 3; }
      else { r = r * 2 / 3; g = g * 2 / 3; bl = bl * 2 / 3; }
      snprintf(fill, sizeof fill, "#%02x%02x%02x", r & 255, g & 255, bl & 255);
      cf_svg_rect(s, bx, by, bw, bh, fill, col, "op", tip, data);
    }
  }
  if (t->bound_s > 0) {
    double x = x0 + t->bound_s * px;
    cf_svg_line(s, x, top - 4, x, top + h + 2, "#d62728", 1.5, "5,3", "bound");
    int right = x > x0 + W_TIME * 0.7; /* labels near the right edge grow leftwards */
    cf_svg_text(s, right ? x - 3 : x + 3, top - 6, 10, right ? "end" : "start", "#d62728", "bound %.4g %s",
                t->bound_s * scale, unit);
  }
  if (t->end_s > 0) {
    double x = x0 + t->end_s * px;
    int right = x > x0 + W_TIME * 0.7;
    cf_svg_line(s, x, top - 16, x, top + h + 2, "#222222", 1.2, NULL, "end");
    cf_svg_text(s, right ? x - 3 : x + 3, top - 18, 10, right ? "end" : "start", "#222222", "end %.4g %s",
                t->end_s * scale, unit);
  }
  cf_svg_group_end(s);
  return top + h + 34;
}

static void cf__stair(cf_svg_t *s, const cf_plot_stair_t *st, double x, double y) {
  cf_svg_group(s, "stair");
  cf_svg_text(s, x, y + 11, 11, "start", "#222222", "%s", st->title);
  double gy = y + 16, gh = STAIR_H - 34, gw = STAIR_W - 30;
  int n = st->n_chunks > 0 ? st->n_chunks : 1, L = st->n_layers > 0 ? st->n_layers : 1;
  double cw = gw / n, lh = gh / L;
  cf_svg_rect(s, x, gy, gw, gh, "#ffffff", "#999999", "frame", NULL, NULL);
  /* runs of chunks with the same height and tier are one rectangle each (staircases are
   * mostly flat: a 512-chunk request is a few rectangles, not a thousand) */
  for (int c = 0, e; c < st->n_chunks; c = e) {
    int h = st->h[c] < 0 ? 0 : st->h[c] > L ? L : st->h[c];
    int tier = st->tier ? st->tier[c] : 0, hole = tier == CF_PLOT_HOLE;
    for (e = c + 1; e < st->n_chunks && st->h[e] == st->h[c] && (st->tier ? st->tier[e] : 0) == tier; e++) {}
    double rx = x + c * cw, rw = (e - c) * cw;
    if (tier == CF_PLOT_PRESENT) {
      cf_svg_rect(s, rx, gy, rw, gh, "#d9d9d9", NULL, "present", NULL, NULL);
      continue;
    }
    /* layer 0 at the bottom: computed [0, h) below the loaded [h, L) */
    if (h > 0)
      cf_svg_rect(s, rx, gy + gh - h * lh, rw, h * lh, hole ? COL_HOLE : COL_COMPUTED, NULL, hole ? "hole" : "computed",
                  NULL, NULL);
    if (h < L)
      cf_svg_rect(s, rx, gy, rw, (L - h) * lh, cf__tier_col[(tier < 0 ? 0 : tier) % 4], NULL, "loaded", NULL, NULL);
  }
  cf_svg_text(s, x + gw / 2, gy + gh + 11, 9, "middle", "#555555", "chunks 0..%d", st->n_chunks - 1);
  cf_svg_text(s, x + gw + 3, gy + gh, 9, "start", "#555555", "l0");
  cf_svg_text(s, x + gw + 3, gy + 8, 9, "start", "#555555", "l%d", L - 1);
  cf_svg_group_end(s);
}

/* The legend line: request colours, op styles, staircase colours. */
static double cf__legend(cf_svg_t *s, const cf_plot_t *p, double y, int n_req) {
  double x = 10;
  cf_svg_group(s, "legend");
  for (int r = 0; r < n_req && r < 10; r++) {
    cf_svg_rect(s, x, y, 10, 10, cf__req_col[r], NULL, "key", NULL, NULL);
    cf_svg_text(s, x + 13, y + 9, 10, "start", "#333333", "req %d", r);
    x += 58;
  }
  if (n_req > 10) { cf_svg_text(s, x, y + 9, 10, "start", "#333333", "(colours repeat)"); x += 90; }
  cf_svg_text(s, x + 10, y + 9, 10, "start", "#333333", "solid: compute, light: load, dark: send");
  y += 18;
  x = 10;
  cf_svg_text(s, x, y + 9, 10, "start", "#333333", "staircases:");
  x += 70;
  cf_svg_rect(s, x, y, 10, 10, COL_COMPUTED, NULL, "key", NULL, NULL);
  cf_svg_text(s, x + 13, y + 9, 10, "start", "#333333", "computed");
  x += 70;
  for (int t = 0; t < p->n_tiers && t < 4; t++) {
    cf_svg_rect(s, x, y, 10, 10, cf__tier_col[t], NULL, "key", NULL, NULL);
    cf_svg_text(s, x + 13, y + 9, 10, "start", "#333333", "loaded: %s", p->tier_names[t]);
    x += 95;
  }
  cf_svg_rect(s, x, y, 10, 10, COL_HOLE, NULL, "key", NULL, NULL);
  cf_svg_text(s, x + 13, y + 9, 10, "start", "#333333", "hole (not stored: computed)");
  x += 170;
  cf_svg_rect(s, x, y, 10, 10, "#d9d9d9", NULL, "key", NULL, NULL);
  cf_svg_text(s, x + 13, y + 9, 10, "start", "#333333", "engine's own");
  cf_svg_group_end(s);
  return y + 22;
}

int cf_svgplot_draw(cf_svg_t *s, const cf_plot_t *p, const cf_plot_timeline_t *tl, int n_tl,
                    const cf_plot_stair_t *st, int n_st) {
  double tmax = 0, hsum = 0;
  size_t most = 1, most_lanes = 1;
  int n_req = 0;
  for (int k = 0; k < n_tl; k++) {
    const cf_plot_timeline_t *t = &tl[k];
    for (size_t i = 0; i < t->n_boxes; i++) {
      const cf_plot_box_t *b = &t->boxes[i];
      if (b->lane < 0 || b->lane >= t->n_lanes || !(b->t1_s >= b->t0_s) || !(b->t0_s >= 0) || !isfinite(b->t1_s))
        return cf_seterr(CF_EINVAL, "svg: %s: op %zu (lane %d of %d, %g .. %g s) is outside its lanes or ends "
                         "before it starts", t->title ? t->title : "timeline", i, b->lane, t->n_lanes, b->t0_s, b->t1_s);
      if (b->t1_s > tmax) tmax = b->t1_s;
      if (b->req + 1 > n_req) n_req = b->req + 1;
    }
    if (t->bound_s > tmax) tmax = t->bound_s;
    if (t->end_s > tmax) tmax = t->end_s;
    if (t->n_boxes > most) most = t->n_boxes;
    if ((size_t)t->n_lanes > most_lanes) most_lanes = (size_t)t->n_lanes;
  }
  if (!(tmax > 0)) tmax = 1e-3;
  tmax *= 1.02;
  int shown = n_st < MAX_STAIRS ? n_st : MAX_STAIRS;
  int srows = (shown + STAIR_COLS - 1) / STAIR_COLS;
  cf__bref_t *ord = malloc(most * sizeof *ord);
  double *ends = malloc(most * sizeof *ends), *lane_y = malloc(most_lanes * sizeof *lane_y);
  int *rows = malloc(most_lanes * sizeof *rows);
  if (!ord || !ends || !lane_y || !rows) {
    free(ord); free(ends); free(lane_y); free(rows);
    return cf_seterr(CF_ENOMEM, "svg: %zu ops", most);
  }
  /* the page's height: each timeline's lanes as laid out (sub-rows where ops overlap) */
  for (int k = 0; k < n_tl; k++) hsum += 34 + cf__layout(&tl[k], ord, ends, rows) + 34;
  double height = 50 + (p->subtitle ? 16 : 0) + hsum + 44 + (shown ? 20 + srows * STAIR_H : 0) + 24;
  cf_svg_begin(s, W_PAGE, height, p->title ? p->title : "restore plan");
  double y = 22;
  cf_svg_text(s, 10, y, 15, "start", "#111111", "%s", p->title ? p->title : "");
  if (p->subtitle) { y += 16; cf_svg_text(s, 10, y, 11, "start", "#444444", "%s", p->subtitle); }
  y += 14;
  y = cf__legend(s, p, y, n_req);
  for (int k = 0; k < n_tl; k++) y = cf__timeline(s, p, &tl[k], k, y, tmax, ord, ends, rows, lane_y);
  free(ord); free(ends); free(lane_y); free(rows);
  if (shown) {
    cf_svg_text(s, 10, y + 12, 13, "start", "#222222", "Staircases: chunks (x) by layers (y, layer 0 at the bottom)");
    y += 20;
    for (int i = 0; i < shown; i++)
      cf__stair(s, &st[i], 10 + (i % STAIR_COLS) * (STAIR_W + 30), y + (i / STAIR_COLS) * STAIR_H);
    y += srows * STAIR_H;
    if (n_st > shown) cf_svg_text(s, 10, y + 10, 10, "start", "#555555", "(%d more requests not drawn)", n_st - shown);
  }
  cf_svg_end(s);
  return s->err ? cf_seterr(s->err, "svg: out of memory") : 0;
}
