#!/usr/bin/env bash
# Online re-fit of the planner's compute cost (cf_refit.h) on a real daemon whose compute slows
# down mid-run: cacheflowd is pinned to CPU 0 and, after a few restores, two busy loops pinned to
# the same CPU take about two thirds of it. Restores use the recompute policy (their time is all
# compute). Behaviour, not timing (the machine is shared: how much slower it gets is not ours to
# assert; the measured executed / predicted ratios are printed, and cf_refit's arithmetic is
# test_refit's):
#   - every restore's compute is sampled (GetStats' cacheflow_cost_refit_samples_total);
#   - the re-fit follows what it measured: when the first restore under the busy loops ran
#     >= 1.2x its prediction, the compute scale rose (else that is printed, not asserted);
#   - plans use the re-fitted model: a restore planned at scale S predicts S x what the start-up
#     calibration predicted for the same prefix (the first restore ever was planned at scale 1);
#   - /metrics exposes the scale, the predicted ratios and the sample count;
#   - cost_refit = off (SIGHUP): plans go back to the start-up calibration (the same prediction
#     as the first restore's for the same prefix) with the busy loops still there.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; then
  cf_skip_all "needs 2 CPUs and taskset"
fi
cf_test_dir cf-refit TERM
BUSY=
cf_at_exit 'if [ -n "$BUSY" ]; then kill $BUSY 2>/dev/null; wait $BUSY 2>/dev/null; fi'
cf_gen_model demo
cf_daemon_conf "$T/d.conf" "$T" 256M 256M 64 warn
printf 'metrics_listen = unix:%s/m.sock\ncost_refit = on\ncost_refit_weight = 0.3\n' "$T" >>"$T/d.conf"
sed -i '/^metrics_listen =$/d' "$T/d.conf"
taskset -c 0 "$BUILD/cacheflowd" --config "$T/d.conf" --model "$T/model" 2>"$T/d.log" &
DPID=$!
check "daemon starts pinned to CPU 0" "cf_daemon_wait $T/d.sock"
ENG="taskset -c 1 $BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 512 --new 32 --policy recompute"
ratios() { jq -r 'select(.mode=="session") | .daemon_us / .predicted_us' "$1"; }
counter() { "$BUILD/cacheflowctl" stats --addr "unix:$T/d.sock" | awk -v k="$1" '$1 == k {print $2}'; }
pred1() { jq -r 'select(.mode=="session" and .turn==1) | .predicted_us' "$1"; }
near() { awk -v a="$1" -v b="$2" -v tol="$3" 'BEGIN{d = a / b - 1; if (d < 0) d = -d; exit !(b > 0 && d <= tol)}'; }
$ENG --turns 3 --seed 3 >"$T/before.json" 2>"$T/before.err"
check "restores before the slow-down" "[ $? -eq 0 ]"
p0=$(pred1 "$T/before.json"); s0=$(counter cacheflow_cost_compute_scale); n0=$(counter cacheflow_cost_refit_samples_total)
echo "     before: executed / predicted $(ratios "$T/before.json" | tr '\n' ' ')(scale $s0)"
check "every restore's compute sampled (3 restores: $n0 samples)" "[ \"$n0\" -ge 3 ]"
taskset -c 0 sh -c 'while :; do :; done' &
BUSY=$!
taskset -c 0 sh -c 'while :; do :; done' &
BUSY="$BUSY $!"
$ENG --turns 9 --seed 4 >"$T/after.json" 2>"$T/after.err"
check "restores while a busy loop shares CPU 0" "[ $? -eq 0 ]"
ratios "$T/after.json" >"$T/r"
first=$(head -n 1 "$T/r"); last=$(tail -n 3 "$T/r" | cf_median)
scale=$(counter cacheflow_cost_compute_scale); n=$(counter cacheflow_cost_refit_samples_total)
echo "     after:  executed / predicted $(tr '\n' ' ' <"$T/r")(scale $scale, $n samples; first $first, last 3 median $last)"
check "every restore under the busy loops sampled ($n0 -> $n)" "[ \"$n\" -ge $((n0 + 9)) ]"
check "the first restore after the slow-down was planned at the scale fitted before it ($(pred1 "$T/after.json") us = $s0 x $p0 us)" \
  "near $(pred1 "$T/after.json") $(awk -v s=$s0 -v p=$p0 'BEGIN{print s * p}') 0.01"
if awk -v r=$first 'BEGIN{exit !(r >= 1.2)}'; then
  check "the slow-down showed (first restore $first x its prediction): the compute scale rose ($s0 -> $scale)" "awk -v a=$s0 -v b=$scale 'BEGIN{exit !(b > a)}'"
else
  echo "     (the busy loops did not slow the first restore here: $first x its prediction; direction not asserted)"
fi
$ENG --turns 1 --seed 6 >"$T/fitted.json" 2>"$T/fitted.err"
check "a restore after the re-fit" "[ $? -eq 0 ]"
pf=$(pred1 "$T/fitted.json")
check "plans use the re-fitted scale: predicted $pf us = scale $scale x the calibration's $p0 us" "near $pf $(awk -v s=$scale -v p=$p0 'BEGIN{print s * p}') 0.01"
m=$(curl -s --unix-socket "$T/m.sock" http://x/metrics)
check "/metrics: compute scale, predicted ratios by term, samples" \
  "echo \"\$m\" | grep -q '^cacheflow_cost_compute_scale ' && echo \"\$m\" | grep -q '^cacheflow_predicted_ratio{term=\"compute\"} ' && echo \"\$m\" | grep -q '^cacheflow_predicted_ratio{term=\"restore\"} ' && echo \"\$m\" | grep -q '^cacheflow_cost_refit_samples_total '"
# control: the switch off, the busy loop still there
sed -i 's/^cost_refit = on/cost_refit = off/' "$T/d.conf"
kill -HUP $DPID
for i in $(seq 1 100); do [ "$(counter cacheflow_cost_refit_enabled)" = 0 ] && break; sleep 0.1; done
check "cost_refit = off after SIGHUP (GetStats)" "[ \"$(counter cacheflow_cost_refit_enabled)\" = 0 ]"
$ENG --turns 3 --seed 5 >"$T/off.json" 2>"$T/off.err"
check "restores with the re-fit off" "[ $? -eq 0 ]"
echo "     re-fit off: executed / predicted $(ratios "$T/off.json" | tr '\n' ' ')"
check "re-fit off: planned with the start-up calibration again ($(pred1 "$T/off.json") us = the first restore's $p0 us)" "near $(pred1 "$T/off.json") $p0 0.001"
kill $BUSY; wait $BUSY 2>/dev/null; BUSY=
finish
