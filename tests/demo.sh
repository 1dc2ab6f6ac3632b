#!/usr/bin/env bash
# make demo: the main job on the CPU backend.
#   1. generate the demo model (cacheflowctl gen-model: 8 layers, hidden 512, 8/2 heads, vocab 32000)
#   2. start cacheflowd on it (temporary socket and store)
#   3. for each policy, the reference engine (build/cf-refengine) plays a multi-turn session
#      (prefill turn 0 itself and Save it; then per turn: Restore the conversation so far through
#      the daemon, prefill the new tokens layer by layer as the readiness counter allows, first
#      token) and a batch of concurrent restores of the whole conversation;
#      once with the CPU tier at memory speed and once behind an emulated slow link (SIGHUP
#      reload of cpu_read_gbps), where splitting compute and loads matters most;
#   4. print TTFT per policy x workload with the ratio of the daemon's restore time to the lower
#      bound, and the no-cache prefill of the same turn as the baseline.
# Knobs: DEMO_PREFIX (512), DEMO_NEW (32), DEMO_TURNS (2), DEMO_BATCH (3), DEMO_SLOW_GBPS (0.05).
set -euo pipefail
. "$(dirname "$0")/lib/cf_test.sh" # the integration harness: root, BUILD, T, the daemon helpers
PREFIX=${DEMO_PREFIX:-512}; NEW=${DEMO_NEW:-32}; TURNS=${DEMO_TURNS:-2}; BATCH=${DEMO_BATCH:-3}
SLOW=${DEMO_SLOW_GBPS:-0.05}
MODEL=$PWD/$BUILD/demo/model
if [ ! -f "$MODEL/model.safetensors" ]; then
  echo "demo: generating the demo model in $MODEL"
  "$BUILD/cacheflowctl" gen-model --out "$MODEL" --preset demo
fi
[ -n "${CF_DEMO_KEEP:-}" ] && export CF_TEST_KEEP=1
cf_test_dir cf-demo
cf_daemon_conf "$T/d.conf" "$T" 512M 1G 64 warn
cf_daemon_start "$T/d.conf" "$MODEL" || { echo "demo: daemon did not start"; cat "$T/d.log"; exit 1; }
echo "demo: cacheflowd up (pid $DPID) on the demo model; prefix $PREFIX tokens + $NEW new per turn, $TURNS turns, batch of $BATCH"

POLICIES="recompute load cake layerwise cacheflow optimal"
run_link() { # name
  for pol in $POLICIES; do
    "$BUILD/cf-refengine" --daemon "unix:$T/d.sock" --model "$MODEL" --shm-dir "$T" --policy "$pol" \
      --prefix "$PREFIX" --new "$NEW" --turns "$TURNS" --concurrent "$BATCH" --seed 1 >"$T/$1-$pol.json" 2>"$T/$1-$pol.err" \
      || { echo "demo: $pol failed:"; tail -n 3 "$T/$1-$pol.err"; jq -c 'select(.ok==false)' "$T/$1-$pol.json"; exit 1; }
  done
}
table() { # name title
  echo
  echo "$2"
  printf "  %-10s | %12s %12s %8s %9s | %12s %12s %9s\n" "policy" "session TTFT" "no-cache" "speedup" "vs bound" \
         "batch TTFT" "batch p.max" "vs bound"
  printf "  %-10s-+-%12s-%12s-%8s-%9s-+-%12s-%12s-%9s\n" "----------" "------------" "------------" "--------" "---------" \
         "------------" "------------" "---------"
  for pol in $POLICIES; do
    jq -rs --arg p "$pol" '
      def mean(f): (map(f) | add / length);
      ([.[] | select(.mode=="session")]) as $s | ([.[] | select(.mode=="concurrent")]) as $b |
      [$p, ($s|mean(.ttft_ms)), ($s|mean(.baseline_ms)), (($s|mean(.baseline_ms)) / ($s|mean(.ttft_ms))),
       ($s|mean(.ratio_to_bound)), ($b|mean(.ttft_ms)), ($b|map(.ttft_ms)|max),
       (($b|map(.restore_ms)|max) / (($b|map(.bound_us)|add) / 1e3))] |
      @tsv' "$T/$1-$pol.json" |
    awk -F'\t' '{printf "  %-10s | %9.1f ms %9.1f ms %7.1fx %8.2fx | %9.1f ms %9.1f ms %8.2fx\n", $1,$2,$3,$4,$5,$6,$7,$8}'
  done
}
t0=$(date +%s)
run_link fast
sed -i "s/^log_level = warn/log_level = warn\ncpu_read_gbps = $SLOW\nssd_read_gbps = $SLOW/" "$T/d.conf"
kill -HUP "$DPID"; sleep 0.3
run_link slow
table fast "TTFT with the CPU tier at memory speed (session: mean over $TURNS turns; batch: $BATCH concurrent restores)"
table slow "TTFT behind an emulated $SLOW Gbps link (cpu_read_gbps, reloaded with SIGHUP)"
echo
echo "  session TTFT = Restore request -> first-token logits (restore + layer-pipelined prefill of $NEW new tokens)"
echo "  no-cache     = the engine prefilling the whole turn itself; vs bound = daemon restore time / lower bound"
echo "  batch vs bound = makespan (last of the $BATCH restores complete) / batch lower bound (the sum of the"
echo "                   single bounds: the pooled bound of identical requests arriving together on one device)"
echo "demo: done in $(( $(date +%s) - t0 )) s"
