#!/usr/bin/env python3
"""Read back a picture drawn by lib/util/cf_svgplot and check it.

usage: svg_check.py FILE [--serial]

Checks: the file is well-formed XML (xml.etree), it is SVG, every op box (<rect class="op">)
lies in a timeline (<g class="timeline tK">) and inside the lane it names (<rect class="lane">
with the same data-lane: x and y within the lane's rectangle), t1 >= t0 >= 0, and per lane the
start times are monotone in document order. A lane whose ops overlap in time is drawn in
sub-rows (data-row on each box, data-rows on the lane): with --serial every row runs its ops
one after another (never two at once in a row), each box's row is below the lane's data-rows,
and no two boxes of a lane that overlap in time overlap on the page (every op visible).
Prints one JSON line: per timeline, the number of op boxes, per kind (and the cells they
cover) and per lane, the lanes drawn in more than one row (their row counts), and the number
of staircases. Exit 1 naming the first violation.
"""
import json
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def fail(msg):
    print("svg_check: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    if not args:
        fail("usage: svg_check.py FILE [--serial]")
    path, serial = args[0], "--serial" in args[1:]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        fail("%s: not well-formed XML: %s" % (path, e))
    if root.tag != NS + "svg":
        fail("%s: root is %s, not svg" % (path, root.tag))
    out = {"timelines": [], "stairs": 0}
    for g in root.iter(NS + "g"):
        cls = (g.get("class") or "").split()
        if "stair" in cls:
            out["stairs"] += 1
        if "timeline" not in cls:
            continue
        lanes = {}
        for r in g.iter(NS + "rect"):
            if r.get("class") == "lane":
                lanes[int(r.get("data-lane"))] = tuple(float(r.get(k)) for k in ("x", "y", "width", "height"))
        rows = {int(r.get("data-lane")): int(r.get("data-rows") or 1)
                for r in g.iter(NS + "rect") if r.get("class") == "lane"}
        last, last_row, live = {}, {}, {}
        kinds, cells, per_lane, n = {}, {}, {}, 0
        for r in g.iter(NS + "rect"):
            if r.get("class") != "op":
                continue
            n += 1
            lane = int(r.get("data-lane"))
            t0, t1 = float(r.get("data-t0")), float(r.get("data-t1"))
            x, y, w, h = (float(r.get(k)) for k in ("x", "y", "width", "height"))
            if lane not in lanes:
                fail("op %d names lane %d, which the timeline does not have" % (n, lane))
            lx, ly, lw, lh = lanes[lane]
            eps = 1e-3
            if not (ly - eps <= y and y + h <= ly + lh + eps and lx - eps <= x and x + w <= lx + lw + 1 + eps):
                fail("op %d (lane %d) at (%g, %g, %g, %g) is outside its lane (%g, %g, %g, %g)"
                     % (n, lane, x, y, w, h, lx, ly, lw, lh))
            if not (0 <= t0 <= t1):
                fail("op %d (lane %d): t0 %g, t1 %g" % (n, lane, t0, t1))
            if lane in last and t0 < last[lane]:
                fail("lane %d: op %d starts at %g before the previous op (%g)" % (lane, n, t0, last[lane]))
            last[lane] = t0
            row = int(r.get("data-row") or 0)
            if serial:
                if not 0 <= row < rows[lane]:
                    fail("op %d: row %d of lane %d, which has %d row(s)" % (n, row, lane, rows[lane]))
                p1 = last_row.get((lane, row))
                if p1 is not None and t0 < p1 - 1e-12 * max(1.0, p1):
                    fail("lane %d row %d: op %d starts at %g before the previous one ends (%g)" % (lane, row, n, t0, p1))
                last_row[(lane, row)] = t1
                # the ops of this lane still running at t0 (overlapping in time) must not hide it
                act = [a for a in live.get(lane, []) if t0 < a[1] - 1e-12 * max(1.0, a[1])]
                for a in act:
                    if y < a[3] + a[4] - eps and a[3] < y + h - eps:
                        fail("lane %d: op %d (%g .. %g s) overlaps op %d (%g .. %g s) on the page"
                             % (lane, n, t0, t1, a[2], a[0], a[1]))
                live[lane] = act + [(t0, t1, n, y, h)]
            kinds[r.get("data-kind")] = kinds.get(r.get("data-kind"), 0) + 1
            cells[r.get("data-kind")] = cells.get(r.get("data-kind"), 0) + int(r.get("data-cells"))
            per_lane[lane] = per_lane.get(lane, 0) + 1
        out["timelines"].append({"ops": n, "kinds": kinds, "cells": cells, "lanes": len(lanes),
                                 "per_lane": {str(k): v for k, v in sorted(per_lane.items())},
                                 "rows": {str(k): v for k, v in sorted(rows.items()) if v > 1}})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
