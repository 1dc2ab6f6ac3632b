/* Pictures: the SVG writer's escaping, the drawing's refusals, the simulator's per-op times
 * (recording changes no result; each stream's ops one after another, in plan order) and the
 * daemon's restore-trace ring (bounded: after N + k restores only the last N are kept). The
 * pictures themselves are parsed back by tests/integration/sim_svg.sh and restore_trace.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_test.h"
#include "cf_trace.h"
#include "sched/cf_sched.h"
#include "sched/cf_sim.h"
#include "util/cf_svg.h"
#include "util/cf_svgplot.h"

CF_TEST(svg_escape_every_special_character) {
  char out[256];
  size_t n = cf_svg_escape(out, sizeof out, "a&b<c>d\"e'f\x01g\th");
  CF_CHECK(!strcmp(out, "a&amp;b&lt;c&gt;d&quot;e&apos;fg\th"));
  CF_CHECK_EQ(n, strlen(out));
  /* truncation stops at a whole entity, never half of one */
  n = cf_svg_escape(out, 8, "ab&cd");
  CF_CHECK(!strcmp(out, "ab&amp;"));
  n = cf_svg_escape(out, 6, "ab&cd");
  CF_CHECK(!strcmp(out, "ab"));
}

/* Text from input that is not UTF-8 (a Latin-1 path, a character cut by a caller's snprintf)
 * would make the file ill-formed: each bad byte becomes U+FFFD, good characters stay as they are,
 * and a truncated escape never ends inside a character. */
CF_TEST(svg_escape_keeps_utf8_well_formed) {
  char out[64];
  cf_svg_escape(out, sizeof out, "lat\xe9n \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  CF_CHECK(!strcmp(out, "lat\xef\xbf\xbdn \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  /* cut mid-character, a surrogate, overlong, U+FFFF, a stray continuation byte */
  cf_svg_escape(out, sizeof out, "a\xc3");
  CF_CHECK(!strcmp(out, "a\xef\xbf\xbd"));
  cf_svg_escape(out, sizeof out, "\xed\xa0\x80|\xc0\xaf|\xef\xbf\xbf|\x80");
  CF_CHECK(!strcmp(out, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd\xef\xbf\xbd|"
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd|\xef\xbf\xbd"));
  /* room for "ab" and half of the euro sign: the sign is left out whole */
  cf_svg_escape(out, 5, "ab\xe2\x82\xac");
  CF_CHECK(!strcmp(out, "ab"));
  cf_svg_t s;
  cf_svg_begin(&s, 10, 10, "model /tmp/lat\xe9n");
  cf_svg_text(&s, 1, 2, 10, NULL, NULL, "%s", "\xff\xfe");
  cf_svg_end(&s);
  CF_CHECK(strstr(s.buf, "<title>model /tmp/lat\xef\xbf\xbdn</title>") != NULL);
  CF_CHECK(strstr(s.buf, ">\xef\xbf\xbd\xef\xbf\xbd</text>") != NULL);
  cf_svg_free(&s);
}

CF_TEST(svg_document_text_is_escaped_and_groups_close) {
  cf_svg_t s;
  cf_svg_begin(&s, 100, 50, "t<&>");
  cf_svg_group(&s, "g\"x");
  cf_svg_text(&s, 1, 2, 10, "start", NULL, "%s %d", "</svg><script>", 3);
  char data[64] = "";
  cf_svg_attr(data, sizeof data, "data-x", "%s", "a\"b");
  cf_svg_rect(&s, 0, 0, 10, 10, "#000000", NULL, "op", "r&d", data);
  cf_svg_end(&s); /* closes the open group */
  CF_CHECK_EQ(s.err, 0);
  CF_CHECK(strstr(s.buf, "<title>t&lt;&amp;&gt;</title>") != NULL);
  CF_CHECK(strstr(s.buf, "&lt;/svg&gt;&lt;script&gt; 3</text>") != NULL);
  CF_CHECK(strstr(s.buf, "class=\"g&quot;x\"") != NULL);
  CF_CHECK(strstr(s.buf, "data-x=\"a&quot;b\"") != NULL);
  CF_CHECK(strstr(s.buf, "<title>r&amp;d</title>") != NULL);
  CF_CHECK(strstr(s.buf, "<script") == NULL);
  const char *g = strstr(s.buf, "</g>"), *e = strstr(s.buf, "</svg>");
  CF_CHECK(g && e && g < e && !strstr(e + 1, "</svg>"));
  /* an attribute that does not fit whole is left out, not cut */
  char small[16] = "";
  cf_svg_attr(small, sizeof small, "data-long", "%s", "0123456789");
  CF_CHECK_EQ(small[0], 0);
  cf_svg_free(&s);
}

CF_TEST(svgplot_refuses_a_box_outside_its_lanes) {
  const char *lanes[1] = {"compute"};
  cf_plot_box_t b[2] = {{.t0_s = 0, .t1_s = 1e-3, .lane = 0, .tier = -1, .c1 = 1, .l1 = 1},
                        {.t0_s = 0, .t1_s = 1e-3, .lane = 1, .tier = -1, .c1 = 1, .l1 = 1}};
  cf_plot_timeline_t tl = {.title = "x", .lanes = lanes, .n_lanes = 1, .boxes = b, .n_boxes = 2};
  cf_plot_t p = {.title = "x"};
  cf_svg_t s;
  memset(&s, 0, sizeof s);
  CF_CHECK_EQ(cf_svgplot_draw(&s, &p, &tl, 1, NULL, 0), CF_EINVAL);
  CF_CHECK(strstr(cf_errmsg(), "lane 1 of 1") != NULL);
  b[1].lane = 0;
  b[1].t1_s = -1; /* ends before it starts */
  CF_CHECK_EQ(cf_svgplot_draw(&s, &p, &tl, 1, NULL, 0), CF_EINVAL);
  b[1].t1_s = 2e-3;
  CF_CHECK_OK(cf_svgplot_draw(&s, &p, &tl, 1, NULL, 0));
  cf_svg_free(&s);
}

/* Ops of one lane that overlap in time (an SSD loader's reads in flight) are drawn in sub-rows:
 * each op in the first row free at its start, one box per op, the lane's label once and the
 * lane as tall as its rows; a lane whose ops run one after another keeps a single row. */
static int cf__row_of(const char *doc, const char *t0) {
  char key[64];
  snprintf(key, sizeof key, "data-t0=\"%s\"", t0);
  const char *at = strstr(doc, key), *row = NULL;
  if (!at) return -1;
  for (const char *p = at; p > doc && strncmp(p, "<rect", 5); p--)
    if (!strncmp(p, "data-row=\"", 10)) row = p + 10;
  return row ? atoi(row) : -1;
}

CF_TEST(svgplot_overlapping_ops_get_sub_rows) {
  const char *lanes[2] = {"compute", "ssd loader 0"};
  /* lane 1: A [0,4) B [1,2) D [1.5,5) C [2.5,3) E [4,6) (given out of order) -> rows A0 B1 D2 C1 E0 */
  cf_plot_box_t b[7] = {{.t0_s = 4e-3, .t1_s = 6e-3, .lane = 1, .kind = CF_PLOT_LOAD, .tier = 1, .c1 = 1, .l1 = 1},
                        {.t0_s = 0, .t1_s = 4e-3, .lane = 1, .kind = CF_PLOT_LOAD, .tier = 1, .c1 = 1, .l1 = 1},
                        {.t0_s = 1e-3, .t1_s = 2e-3, .lane = 1, .kind = CF_PLOT_LOAD, .tier = 1, .c1 = 1, .l1 = 1},
                        {.t0_s = 2.5e-3, .t1_s = 3e-3, .lane = 1, .kind = CF_PLOT_LOAD, .tier = 1, .c1 = 1, .l1 = 1},
                        {.t0_s = 1.5e-3, .t1_s = 5e-3, .lane = 1, .kind = CF_PLOT_LOAD, .tier = 1, .c1 = 1, .l1 = 1},
                        /* lane 0: back to back, one row */
                        {.t0_s = 0.5e-3, .t1_s = 1.2e-3, .lane = 0, .tier = -1, .c1 = 1, .l1 = 1},
                        {.t0_s = 1.2e-3, .t1_s = 1.75e-3, .lane = 0, .tier = -1, .c1 = 1, .l1 = 1}};
  cf_plot_timeline_t tl = {.title = "x", .lanes = lanes, .n_lanes = 2, .boxes = b, .n_boxes = 7};
  const char *tiers[2] = {"cpu", "ssd"};
  cf_plot_t p = {.title = "x", .tier_names = tiers, .n_tiers = 2};
  cf_svg_t s;
  memset(&s, 0, sizeof s);
  CF_CHECK_OK(cf_svgplot_draw(&s, &p, &tl, 1, NULL, 0));
  char *doc = strndup(s.buf, s.len); /* a C string to search */
  CF_CHECK(doc != NULL);
  CF_CHECK(strstr(doc, "data-lane=\"1\" data-rows=\"3\"") != NULL);
  CF_CHECK(strstr(doc, "data-lane=\"0\" data-rows=\"1\"") != NULL);
  CF_CHECK_EQ(cf__row_of(doc, "0"), 0);
  CF_CHECK_EQ(cf__row_of(doc, "0.001"), 1);
  CF_CHECK_EQ(cf__row_of(doc, "0.0015"), 2);
  CF_CHECK_EQ(cf__row_of(doc, "0.0025"), 1);
  CF_CHECK_EQ(cf__row_of(doc, "0.004"), 0);
  CF_CHECK_EQ(cf__row_of(doc, "0.0005"), 0);
  CF_CHECK_EQ(cf__row_of(doc, "0.0012"), 0);
  /* one box per op; each label once */
  size_t ops = 0, labels = 0;
  for (const char *q = doc; (q = strstr(q, "class=\"op\"")); q++) ops++;
  for (const char *q = doc; (q = strstr(q, ">ssd loader 0<")); q++) labels++;
  CF_CHECK_EQ(ops, 7);
  CF_CHECK_EQ(labels, 1);
  /* the same picture for the same boxes */
  cf_svg_t s2;
  memset(&s2, 0, sizeof s2);
  CF_CHECK_OK(cf_svgplot_draw(&s2, &p, &tl, 1, NULL, 0));
  CF_CHECK(s2.len == s.len && !memcmp(s.buf, s2.buf, s.len));
  cf_svg_free(&s2);
  free(doc);
  cf_svg_free(&s);
}

/* Per-op times: the same results with and without recording; every op inside [arrival, end of
 * its request]; each stream (compute d, link k) runs its ops in plan order, one at a time. */
CF_TEST(sim_records_op_times_without_changing_results) {
  for (int trial = 0; trial < 40; trial++) {
    cf_sched_input_t in = {0};
    cf_cost_h100_llama8b(&in.cost);
    in.cost.link_Bps = (1 + cf_test_uniform() * 40) * 1e9 / 8;
    cf_sched_req_t q[6];
    int n = 1 + (int)(cf_test_uniform() * 6);
    for (int i = 0; i < n; i++)
      q[i] = (cf_sched_req_t){cf_test_uniform() * 0.01, 256 + (int64_t)(cf_test_uniform() * 16384), 64, -1, NULL};
    in.reqs = q;
    in.n_reqs = n;
    for (int pol = 0; pol < CF_POLICY_COUNT; pol++) {
      cf_sched_plan_t p;
      cf_sched_plan_init(&p);
      cf_sim_result_t a, b;
      cf_sim_result_init(&a);
      cf_sim_result_init(&b);
      b.record_ops = 1;
      CF_CHECK_OK(cf_sched_plan(&in, (cf_policy_t)pol, &p));
      CF_CHECK_OK(cf_sim_run(&in, &p, &a));
      CF_CHECK_OK(cf_sim_run(&in, &p, &b));
      CF_CHECK(a.makespan_s == b.makespan_s && a.mean_ttft_s == b.mean_ttft_s);
      for (int r = 0; r < n; r++) CF_CHECK(a.finish_s[r] == b.finish_s[r]);
      double free_at[2][64] = {{0}};
      for (size_t i = 0; i < p.n_ops; i++) {
        const cf_sched_op_t *o = &p.ops[i];
        double t0 = b.op_start_s[i], t1 = b.op_end_s[i];
        CF_CHECK_MSG(t0 >= q[o->req].arrival_s - 1e-15 && t1 > t0 && t1 <= b.finish_s[o->req] + 1e-12,
                     "%s op %zu: [%g, %g], arrival %g, finish %g", cf_policy_name((cf_policy_t)pol), i, t0, t1,
                     q[o->req].arrival_s, b.finish_s[o->req]);
        double *f = &free_at[o->kind == CF_OP_LOAD][o->stream];
        CF_CHECK_MSG(t0 >= *f - 1e-12, "%s op %zu starts at %g before its stream is free (%g)",
                     cf_policy_name((cf_policy_t)pol), i, t0, *f);
        *f = t1;
      }
      cf_sim_result_free(&a);
      cf_sim_result_free(&b);
      cf_sched_plan_free(&p);
    }
  }
}

/* A fake executed request of 3 chunks: what cf_trace_end needs. */
static void traced(cf_trace_t *t, uint64_t id, int steps) {
  static const int h[3] = {2, 0, 4};
  cf_exec_trace_t *tr = cf_trace_begin(t);
  CF_CHECK(tr != NULL);
  if (!tr) return;
  for (int i = 0; i < steps; i++) { /* as lib/exec records them (it drops past cap the same way) */
    int k = atomic_fetch_add(&tr->n, 1);
    if (k < tr->cap) tr->ev[k] = (cf_exec_tev_t){.t0_ns = 1000 + i, .t1_ns = 1001 + i, .c0 = 0, .c1 = 1, .l = 0};
  }
  cf_exec_req_t r = {.n_tokens = 40, .chunk_tokens = 16, .h = h, .req_id = id};
  r.stats.t_start_ns = 1000;
  r.stats.t_done_ns = 1000 + steps;
  cf_plan_op_t ops[2] = {{.t0_s = 0, .t1_s = 1e-3, .c0 = 0, .c1 = 1, .l0 = 0, .l1 = 1}, {.t1_s = 1e-3, .kind = 1}};
  uint8_t tiers[3] = {0, 1, 255};
  cf_restore_plan_t pl = {.ops = ops, .n_ops = 2, .tiers = tiers, .predicted_us = 5};
  cf_trace_end(t, tr, &r, &pl, 4, 2);
}

CF_TEST(trace_ring_keeps_the_last_n_restores_only) {
  cf_trace_t *t;
  CF_CHECK_OK(cf_trace_init(&t, 3, 16));
  cf_trace_rec_t rec;
  CF_CHECK_EQ(cf_trace_get(t, 0, &rec), CF_ENOTFOUND);
  for (uint64_t id = 1; id <= 7; id++) traced(t, id, (int)id * 4); /* 7 = N + 4 */
  uint64_t ids[8];
  CF_CHECK_EQ(cf_trace_ids(t, ids, 8), 3);
  CF_CHECK(ids[0] == 5 && ids[1] == 6 && ids[2] == 7);
  CF_CHECK_EQ(cf_trace_get(t, 4, &rec), CF_ENOTFOUND);
  CF_CHECK(strstr(cf_errmsg(), "restore 4 is not among the 3") != NULL);
  CF_CHECK_OK(cf_trace_get(t, 0, &rec)); /* the latest */
  CF_CHECK_EQ(rec.id, 7);
  CF_CHECK_EQ(rec.n_ev, 16); /* 28 steps, 16 kept: bounded per restore */
  CF_CHECK_EQ(rec.ev_dropped, 12);
  CF_CHECK_EQ(rec.ev[0].t0_ns, 0); /* from the request's start */
  CF_CHECK_EQ(rec.ev[15].t1_ns, 16);
  CF_CHECK_EQ(rec.n_chunks, 3);
  CF_CHECK(rec.h[0] == 2 && rec.h[1] == 0 && rec.h[2] == 4 && rec.tiers[2] == 255);
  CF_CHECK_EQ(rec.n_plan_ops, 2);
  cf_trace_rec_free(&rec);
  CF_CHECK_OK(cf_trace_get(t, 5, &rec));
  CF_CHECK(rec.id == 5 && rec.n_ev == 16 && rec.ev_dropped == 4);
  cf_trace_rec_free(&rec);
  cf_trace_free(t);
}
