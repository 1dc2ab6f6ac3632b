#!/usr/bin/env bash
# Pictures of what the scheduler did, rendered to PNG to be looked at (issue 15.4):
#   1. cacheflow-sim --svg: a batch over mixed tiers (dram + ssd), the same batch with holes when
#      the simulator takes ["none", N] tier runs, two engines helping each other over NVLink, and
#      a large batch (64 agentic requests, layerwise: ~2000 ops) for the cost of drawing;
#   2. cacheflowd: a real restore (reference engine, demo model, CPU tier limited to 0.25 Gbit/s so
#      loads and compute overlap visibly) fetched with `cacheflowctl trace --svg`: the executed
#      steps next to the plan's predicted ops.
# Every SVG is read back by tests/integration/py/svg_check.py and rendered with rsvg-convert
# (Debian librsvg2-bin, in the Makefile's DEB_PKGS: `make deps`). Prints a table: ops, SVG
# bytes, PNG bytes, render time, and the cost of drawing as a ratio to simulating the same
# plan without drawing, measured in the same run (medians of 5).
# Usage: tests/bench/render_svg.sh [OUT_DIR]   (default build/pictures; the PNGs land there)
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
OUT=${1:-$BUILD/pictures}
SIM=$BUILD/cacheflow-sim
CHECK=tests/integration/py/svg_check.py
command -v rsvg-convert >/dev/null || { echo "render_svg: rsvg-convert missing (apt-get install librsvg2-bin, or make deps)"; exit 1; }
cf_need_bins cacheflow-sim cacheflowd cacheflowctl cf-refengine
mkdir -p "$OUT"
cf_test_dir cf-render TERM
now() { date +%s.%N; }

# ---------------------------------------------------------------- simulated plans
cat > "$T/mixed.jsonl" <<'W'
{"arrival_s": 0.0, "prefix_tokens": 8192, "new_tokens": 256, "tiers": [["dram", 4096], ["ssd", 4096]]}
{"arrival_s": 0.0, "prefix_tokens": 4096, "new_tokens": 256}
{"arrival_s": 0.002, "prefix_tokens": 6144, "new_tokens": 256, "tiers": [["ssd", 6144]]}
W
cat > "$T/holes.jsonl" <<'W'
{"arrival_s": 0.0, "prefix_tokens": 8192, "new_tokens": 256, "tiers": [["dram", 2048], ["none", 1024], ["dram", 3072], ["ssd", 2048]]}
{"arrival_s": 0.0, "prefix_tokens": 4096, "new_tokens": 256, "tiers": [["dram", 1024], ["none", 1024], ["dram", 2048]]}
{"arrival_s": 0.002, "prefix_tokens": 6144, "new_tokens": 256, "tiers": [["ssd", 6144]]}
W
S="--hw h100-pcie5 --model llama-3.1-8b --chunk 1024 --policy optimal"
"$SIM" $S --workload "$T/mixed.jsonl" --svg "$OUT/sim_mixed.svg" >/dev/null
if "$SIM" $S --workload "$T/holes.jsonl" --svg "$OUT/sim_holes.svg" >/dev/null 2>"$T/holes.err"; then :
else echo "(holes: this cacheflow-sim takes no [\"none\", N] runs yet: $(head -c 120 "$T/holes.err"))"; fi
"$SIM" --hw h100x8-nvlink --model llama-3.1-8b --devices 2 --gen rag --n 4 --seed 4 --chunk 2048 --policy optimal \
  --svg "$OUT/sim_nvlink.svg" >/dev/null
BIG="--hw h100-pcie5 --model llama-3.1-8b --gen agentic --n 64 --seed 3 --chunk 256 --policy layerwise"
plain=() drawn=()
for i in 1 2 3 4 5; do
  t0=$(now); "$SIM" $BIG >/dev/null; t1=$(now)
  "$SIM" $BIG --svg "$OUT/sim_big.svg" >/dev/null; t2=$(now)
  plain+=("$(echo "$t1 - $t0" | bc -l)"); drawn+=("$(echo "$t2 - $t1" | bc -l)")
done
mp=$(printf '%s\n' "${plain[@]}" | cf_median); md=$(printf '%s\n' "${drawn[@]}" | cf_median)

# ---------------------------------------------------------------- an executed restore
cf_gen_model demo
cf_daemon_conf "$T/d.conf" "$T" 256M 0 64 warn
printf 'cpu_read_gbps = 0.25\ntrace_restores = 4\n' >> "$T/d.conf"
if cf_daemon_start "$T/d.conf" "$T/model"; then
  "$BUILD/cf-refengine" --daemon "unix:$T/d.sock" --model "$T/model" --shm-dir "$T" --prefix 1024 --new 16 --turns 1 \
    --block 16 --policy optimal --seed 5 >"$T/eng.json" 2>"$T/eng.err" || echo "render_svg: engine failed: $(tail -n 2 "$T/eng.err")"
  id=$(jq -r 'select(.mode == "session") | .restore_id' "$T/eng.json" | tail -n 1)
  "$BUILD/cacheflowctl" trace --addr "unix:$T/d.sock" --restore "${id:-0}" --svg "$OUT/restore_trace.svg" || true
  cf_daemon_stop TERM || true
else echo "render_svg: the daemon did not start"; fi

# ---------------------------------------------------------------- check, render, report
printf '\n| picture | op boxes | SVG KiB | PNG KiB | rsvg-convert ms |\n|---|---:|---:|---:|---:|\n'
fail=0
for f in "$OUT"/*.svg; do
  [ -f "$f" ] || continue
  if ! "$PYTHON" "$CHECK" "$f" --serial >"$T/chk.json" 2>"$T/chk.err"; then
    echo "render_svg: $(basename "$f"): $(cat "$T/chk.err")"; fail=1; continue
  fi
  t0=$(now)
  rsvg-convert -o "${f%.svg}.png" "$f" || { echo "render_svg: rsvg-convert failed on $f"; fail=1; continue; }
  t1=$(now)
  printf '| %s | %s | %.1f | %.1f | %.0f |\n' "$(basename "${f%.svg}")" "$(jq '[.timelines[].ops] | add' "$T/chk.json")" \
    "$(echo "$(stat -c %s "$f") / 1024" | bc -l)" "$(echo "$(stat -c %s "${f%.svg}.png") / 1024" | bc -l)" \
    "$(echo "($t1 - $t0) * 1000" | bc -l)"
done
printf '\nDrawing cost, 64 agentic requests (layerwise) (%s ops): cacheflow-sim with --svg / without = %.2fx (%.3f s / %.3f s, medians of 5)\n' \
  "$(jq '.timelines[0].ops' <<<"$("$PYTHON" "$CHECK" "$OUT/sim_big.svg")")" "$(echo "$md / $mp" | bc -l)" "$md" "$mp"
echo "PNGs in $OUT"
exit $fail
