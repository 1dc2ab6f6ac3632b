#!/usr/bin/env bash
# Restores whose chunks are split between the CPU and the SSD tier, behind emulated links of
# different rates (CPU 0.4 Gbps, SSD 0.05 Gbps: 8x slower): the planner costs each chunk at its
# own tier's rate and the executor's two tiers share one emulated link. Real daemon + reference
# engine on the demo model (8 layers, chunks of 64 tokens, a 512-token prefix = 8 chunks of
# 512 KiB; the CPU tier holds 4 of them, the rest was written back to the SSD tier when it evicted
# them); cost_refit off, so plans use exactly the configured rates. Behaviour, not timing
# (executed / predicted is printed; bench_restore measures it):
#   - load (every cell loaded, half of them from each tier): the prediction is each tier's bytes
#     at that tier's rate (a one-rate model would predict the CPU rate for all of them: ~0.22 of
#     it), and the emulated link holds the restore to at least that time (load only slows it);
#   - optimal, verified: every cell and the first token right.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-tiers TERM
cf_gen_model demo
cf_daemon_conf "$T/d.conf" "$T" 2M 256M 64 warn
printf 'cpu_read_gbps = 0.4\nssd_read_gbps = 0.05\ncost_refit = off\n' >>"$T/d.conf"
check "daemon starts (CPU tier 2 MiB at 0.4 Gbps, SSD tier at 0.05 Gbps)" "cf_daemon_start $T/d.conf $T/model"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 512 --new 32 --turns 1"
# each run saves a new prefix (its own seed): its back 4 chunks stay in the CPU tier
rc=0
for round in 1 2; do
  i=0
  for pol in load optimal recompute; do
    v=; [ $pol = optimal ] && v=--verify
    i=$((i + 1))
    $ENG --policy $pol $v --seed $((40 + round * 10 + i)) >"$T/$pol-$round.json" 2>"$T/$pol-$round.err" || rc=1
  done
done
check "every restore succeeded (optimal's verified cell by cell)" "[ $rc -eq 0 ]"
split=$(jq -s '[.[] | select(.mode=="prefill") | (.lookup_cpu > 0 and .lookup_ssd > 0)] | all' "$T"/load-*.json)
check "the prefixes lie in both tiers (lookup)" "[ \"$split\" = true ]"
both=$(jq -s '[.[] | select(.mode=="session") | (.cells_cpu > 0 and .cells_ssd > 0)] | all' "$T"/load-*.json)
check "load restores read cells from both tiers" "[ \"$both\" = true ]"
CELL=65536 # bytes of one cell (64 tokens x 2 kv heads x 64 dims x K,V x f32)
# each load restore: predicted / (its CPU cells at 0.4 Gbps + its SSD cells at 0.05 Gbps), and
# executed / the same time
at_rates() { jq -r --argjson c $CELL 'select(.mode=="session") | ((.cells_cpu * $c / 5e7 + .cells_ssd * $c / 6.25e6) * 1e6) as $t | "\(.predicted_us / $t) \(.daemon_us / $t) \(.daemon_us / .predicted_us)"' "$@"; }
at_rates "$T"/load-*.json >"$T/rates"
echo "     load: predicted / two-rate time, executed / two-rate time, executed / predicted: $(tr '\n' ';' <"$T/rates")"
check "load: each tier's cells costed at its own rate (predicted = two-rate time within 5%)" \
  "[ -s $T/rates ] && awk '{d = \$1 - 1; if (d < 0) d = -d; if (d > 0.05) bad = 1} END {exit bad}' $T/rates"
check "load: the emulated link holds each restore to its tiers' rates (executed >= 0.9 x the two-rate time)" \
  "[ -s $T/rates ] && awk '\$2 < 0.9 {bad = 1} END {exit bad}' $T/rates"
o=$(cat "$T"/optimal-*.json | jq -r 'select(.mode=="session") | .daemon_us / .predicted_us' | cf_median)
c=$(cat "$T"/recompute-*.json | jq -r 'select(.mode=="session") | .daemon_us / .predicted_us' | cf_median)
echo "     optimal: executed / predicted $o, recompute $c (this machine's compute drift since the calibration)"
ex=$(jq -s '[.[] | select(.mode=="session") | (.bad == 0 and .logits_match == 1)] | all' "$T"/optimal-*.json)
check "optimal: no wrong cell, first token matches a scratch prefill" "[ \"$ex\" = true ]"
finish
