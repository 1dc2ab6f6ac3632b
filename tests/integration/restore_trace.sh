#!/usr/bin/env bash
# Restore traces on the real daemon (Admin.Trace, `cacheflowctl trace --svg`), driven by the
# reference engine (demo model, 8 layers, chunks of 64, CPU tier): for every restore of load,
# recompute, cake and optimal, its trace is fetched by the PlanSummary's restore_id and drawn;
# the picture is read back (well-formed, every box inside its lane, every lane's steps in time
# order and one at a time) and matched against the restore: the plan's load cells = the
# PlanSummary's, its compute cells (with the uncached tail's prefill after it) = the PlanSummary's;
# the executed steps: one box per forward
# call (RestoreStats' count), one per loaded cell (= cells loaded), compute boxes covering the
# cells computed. Memory is bounded: with trace_restores = 3, after more restores only the last
# 3 are kept, an older one is NOT_FOUND with a clear line. trace_restores = 0: no traces.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
CHECK=tests/integration/py/svg_check.py
cf_test_dir cf-trace TERM
cf_gen_model demo
cf_daemon_conf "$T/d.conf" "$T" 64M 0 64 warn
printf 'trace_restores = 3\ntrace_ops = 4096\n' >> "$T/d.conf"
check "daemon starts" "cf_daemon_start $T/d.conf $T/model"
CTL="$BUILD/cacheflowctl"
A="unix:$T/d.sock"
ENG="$BUILD/cf-refengine --daemon $A --model $T/model --shm-dir $T --prefix 256 --new 16 --turns 2 --block 16"

ids=()
i=0
for pol in load recompute cake optimal; do
  i=$((i + 1))
  if ! $ENG --policy $pol --seed $((40 + i)) >"$T/$pol.json" 2>"$T/$pol.err"; then
    bad "$pol: restores" "$(tail -n 3 "$T/$pol.err")"; continue
  fi
  n=0
  while read -r s; do
    n=$((n + 1))
    id=$(jq -r .restore_id <<<"$s")
    ids+=("$id")
    name="$pol turn $(jq -r .turn <<<"$s") (restore $id)"
    if ! "$CTL" trace --addr "$A" --restore "$id" --svg "$T/r$id.svg" >"$T/r$id.txt" 2>"$T/r$id.err"; then
      bad "$name: trace" "$(cat "$T/r$id.err")"; continue
    fi
    if ! "$PYTHON" "$CHECK" "$T/r$id.svg" --serial >"$T/r$id.chk" 2>"$T/r$id.cerr"; then
      bad "$name: picture" "$(cat "$T/r$id.cerr")"; continue
    fi
    fwd=$(sed -n 's/.*(\([0-9]*\) forward calls).*/\1/p' "$T/r$id.txt")
    why=$(jq -r --argjson s "$s" --argjson fwd "${fwd:-0}" '
      .timelines as $t
      | [ if ($t | length) != 2 then "\($t | length) timelines, expected plan and executed" else empty end,
          if ($t[0].cells.load // 0) != $s.plan_load then "plan load cells \($t[0].cells.load // 0), PlanSummary \($s.plan_load)" else empty end,
          if ($t[0].cells.compute // 0) != $s.plan_compute then "plan compute cells \($t[0].cells.compute // 0) (with the uncached tail), PlanSummary \($s.plan_compute)" else empty end,
          if $s.fallback == 0 and ($t[1].kinds.load // 0) != $s.plan_load then "executed \($t[1].kinds.load // 0) loaded cells, PlanSummary plans \($s.plan_load)" else empty end,
          if ($t[1].kinds.load // 0) != ($s.cells_cpu + $s.cells_ssd + $s.cells_remote) then "executed load boxes \($t[1].kinds.load // 0), RestoreStats \($s.cells_cpu + $s.cells_ssd)" else empty end,
          if ($t[1].kinds.compute // 0) != $fwd then "executed compute boxes \($t[1].kinds.compute // 0), forward calls \($fwd)" else empty end,
          if $s.fallback == 0 and ($t[1].cells.compute // 0) != $s.cells_computed then "executed compute cells \($t[1].cells.compute // 0), RestoreStats \($s.cells_computed)" else empty end,
          if $s.fallback == 0 and $s.cells_computed != $s.plan_compute then "computed \($s.cells_computed), planned \($s.plan_compute)" else empty end,
          if .stairs != 1 then "\(.stairs) staircases" else empty end ]
      | join("; ")' "$T/r$id.chk")
    if [ -z "$why" ]; then ok "$name: trace matches the restore"; else bad "$name" "$why"; fi
  done < <(jq -c 'select(.mode == "session")' "$T/$pol.json")
  check "$pol: restores traced" "[ $n -ge 1 ]"
done

# bounded: only the last 3 restores kept (kept ids listed oldest first), the oldest gone
nids=${#ids[@]}
if [ "$nids" -ge 5 ]; then
  "$CTL" trace --addr "$A" >"$T/last.txt" 2>&1
  want="kept: ${ids[$((nids - 3))]} ${ids[$((nids - 2))]} ${ids[$((nids - 1))]}"
  check "after $nids restores only the last 3 traces are kept" "grep -qx '$want' '$T/last.txt'" "$(cat "$T/last.txt"); want $want"
  check "no --restore: the latest" "grep -q '^restore ${ids[$((nids - 1))]}:' '$T/last.txt'"
  "$CTL" trace --addr "$A" --restore "${ids[0]}" >"$T/old.txt" 2>"$T/old.err"
  rc=$?
  check "an old restore's trace: exit 1, NOT_FOUND naming it" \
    "[ $rc -eq 1 ] && grep -q 'restore ${ids[0]} is not among' '$T/old.err'" "rc $rc: $(cat "$T/old.err")"
else bad "enough restores for the bound" "$nids restores"; fi
"$CTL" trace --addr "$A" --restore abc >/dev/null 2>"$T/bad.err"
check "--restore abc: usage error (exit 2)" "[ $? -eq 2 ] && grep -q 'restore id' '$T/bad.err'"
check "daemon exits 0" "cf_daemon_stop TERM"

# trace_restores = 0: nothing kept, Admin.Trace says so
cf_daemon_conf "$T/d0.conf" "$T" 64M 0 64 warn
printf 'trace_restores = 0\n' >> "$T/d0.conf"
check "daemon (trace_restores = 0) starts" "cf_daemon_start $T/d0.conf $T/model"
$ENG --policy optimal --seed 9 --turns 1 >/dev/null 2>&1
"$CTL" trace --addr "$A" >/dev/null 2>"$T/zero.err"
check "trace_restores = 0: FAILED_PRECONDITION saying so" "grep -q 'trace_restores = 0' '$T/zero.err'" "$(cat "$T/zero.err")"
check "daemon exits 0" "cf_daemon_stop TERM"
finish
