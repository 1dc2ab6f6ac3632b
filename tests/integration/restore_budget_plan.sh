#!/usr/bin/env bash
# Plans that fit the memory budget (issue 18) through the REAL daemon and the reference engine,
# on the demo model (8 layers, hidden 512, KV row 128: 5120 bytes of working memory per token):
#   host_memory_bytes = 1200K leaves the planner 1097728 bytes for restores' compute (the arena
#   less the loaders' buffers and bookkeeping, logged at start-up): 214 tokens, 6 of the 8 chunks
#   of a 256-token prefix. For every policy, a session restore (256 tokens) and 3 concurrent ones
#   (288 tokens: whole chunks, so every chunk may be loaded): every
#   restored cell bit-exact (loaded) or within 1e-4 (computed) of the engine's own prefill, the
#   logits match a scratch prefill, and each restore's PlanSummary computes at most 6 chunks'
#   cells (6 x 8 = 48: its extent fits) and loads the rest; recompute, unbounded (a second daemon
#   without a budget), computes all of its cells, within the budget it loads some (the planner says
#   how in its log); /metrics' high-water mark stays within the budget.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-budgetplan KILL
[ -n "${KEEP:-}" ] && cf_at_exit "cp -r $T /tmp/keep-bp"

cf_gen_model demo
C=32
BUDGET=1228800
cf_daemon_conf "$T/d.conf" "$T" 16M 128M $C info
printf 'metrics_listen = unix:%s/m.sock\nhost_memory_bytes = %s\n' "$T" "$BUDGET" >>"$T/d.conf"
check "daemon starts with host_memory_bytes = 1200K" "cf_daemon_start $T/d.conf $T/model"
check "the planner's budget is logged: 1097728 bytes, 5120 a token" \
  "grep -q 'plans fit the memory budget: 1097728 of the $BUDGET byte arena.*5120 bytes per token' '$T/d.log'"
metric() { curl -s --unix-socket "$T/m.sock" http://localhost/metrics | awk -v k="$1" '$1 == k {print $2}'; }
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --block 16"
seed=60
for pol in recompute load cake layerwise cacheflow optimal; do
  out="$T/$pol.json"
  seed=$((seed+1))
  $ENG --policy $pol --prefix 256 --new 32 --turns 1 --concurrent 3 --verify --seed $seed >"$out" 2>"$T/$pol.err"
  rc=$?
  check "$pol: engine exit 0 (restores ok, logits match, no bad cell)" "[ $rc -eq 0 ]"
  check "$pol: 4 restores reported" "[ \"\$(jq -s '[.[] | select(.mode==\"session\" or .mode==\"concurrent\")] | length' $out)\" = 4 ]"
  check "$pol: no cell off by more than 1e-4" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .bad] | add' $out)\" = 0 ]"
  check "$pol: loaded cells bit-exact" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.exact*16 < (.cells_cpu+.cells_ssd)*$C)] | length' $out)\" = 0 ]"
  check "$pol: first-token logits match a scratch prefill" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .logits_match] | min' $out)\" = 1 ]"
  check "$pol: every PlanSummary computes at most 6 chunks (48 cells) and covers all its chunks' cells" \
    "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.plan_compute > 48 or .plan_compute + .plan_load != (.prefix / $C) * 8)] | length' $out)\" = 0 ]"
done
check "recompute within the budget: its plans load cells instead" \
  "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .plan_load] | min' $T/recompute.json)\" -gt 0 ]"
check "the planner logs how it made recompute fit" "grep -q 'memory budget 1097728 bytes: .* with recompute ' '$T/d.log'"
peak=$(metric 'cacheflow_memory_peak_bytes{pool="host"}')
check "/metrics: high-water mark > 0 and within the budget ($peak)" "[ ${peak:-0} -gt 0 ] && [ ${peak:-0} -le $BUDGET ]"
cf_daemon_stop; rc=$?
check "SIGTERM: daemon exits 0" "[ $rc -eq 0 ]"

# unbounded: the same recompute restores compute every cell (the plans above were the budget's)
D="$T/unbounded"; mkdir -p "$D"
cf_daemon_conf "$D/d.conf" "$D" 16M 128M $C info
check "daemon starts without a budget" "cf_daemon_start '$D/d.conf' '$T/model' '$D/d.log'"
$BUILD/cf-refengine --daemon unix:$D/d.sock --model $T/model --shm-dir $D --block 16 --policy recompute --prefix 256 --new 32 --turns 1 --concurrent 3 --verify --seed 61 >"$D/o.json" 2>"$D/o.err"
check "unbounded recompute: engine exit 0" "[ $? -eq 0 ]"
check "unbounded recompute: every PlanSummary computes all its cells, none loaded" \
  "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.plan_load != 0 or .plan_compute != (.prefix / $C) * 8)] | length' $D/o.json)\" = 0 ]"
check "no budget: no planner budget logged" "! grep -q 'plans fit the memory budget' '$D/d.log'"
cf_daemon_stop; rc=$?
check "unbounded: SIGTERM, daemon exits 0" "[ $rc -eq 0 ]"
if [ $F -ne 0 ]; then tail -n 20 "$T/d.log"; for f in "$T"/*.err "$D"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }; done; fi
finish
