#!/usr/bin/env bash
# Restores within a memory budget (host_memory_bytes, issue 18) through the REAL daemon and the
# reference engine, on the demo model (8 layers, hidden 512):
#   with a budget that holds one restore's working set (hidden states + one layer's staging for
#   the whole conversation, plus bookkeeping and loader buffers), every policy over a 2-turn
#   session plus 3 concurrent restores: every restored cell bit-exact (loaded) or within 1e-4
#   (computed) of the engine's own prefill, logits match a scratch prefill;
#   /metrics and Admin.Stats report the budget, its use (0 between restores) and a high-water
#   mark within the budget; after the first policy (model pages resident) the daemon's resident
#   size grows by no more than its CPU tier's growth and a stated constant (48M: gRPC buffers,
#   the store's index, malloc arenas), while restores run: the arena is resident from start-up;
#   a budget too small for one restore's working set: the restore fails with RESOURCE_EXHAUSTED
#   naming the bytes, and the daemon keeps serving.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-budget KILL

cf_gen_model demo
C=32
BUDGET=$((3 * 1024 * 1024))
cf_daemon_conf "$T/d.conf" "$T" 16M 128M $C info
printf 'metrics_listen = unix:%s/m.sock\nhost_memory_bytes = %s\n' "$T" "$BUDGET" >>"$T/d.conf"
check "daemon starts with host_memory_bytes = 3M" "cf_daemon_start $T/d.conf $T/model"
check "the reservation is logged" "grep -q 'host_memory_bytes: $BUDGET bytes reserved' '$T/d.log'"
metric() { curl -s --unix-socket "$T/m.sock" http://localhost/metrics | awk -v k="$1" '$1 == k {print $2}'; }
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --block 16"
seed=30
for pol in recompute load cake layerwise cacheflow optimal; do
  out="$T/$pol.json"
  seed=$((seed+1))
  $ENG --policy $pol --prefix 256 --new 16 --turns 2 --concurrent 3 --verify --seed $seed >"$out" 2>"$T/$pol.err"
  rc=$?
  check "$pol within 3M: engine exit 0 (restores ok, logits match, no bad cell)" "[ $rc -eq 0 ]"
  check "$pol within 3M: 5 restores reported" "[ \"\$(jq -s '[.[] | select(.mode==\"session\" or .mode==\"concurrent\")] | length' $out)\" = 5 ]"
  check "$pol within 3M: no cell off by more than 1e-4" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .bad] | add' $out)\" = 0 ]"
  check "$pol within 3M: loaded cells bit-exact" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.exact*16 < (.cells_cpu+.cells_ssd)*$C)] | length' $out)\" = 0 ]"
  check "$pol within 3M: first-token logits match a scratch prefill" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .logits_match] | min' $out)\" = 1 ]"
  if [ $pol = recompute ]; then # every weight page touched by now: the resident baseline
    rss0=$(awk '/^VmRSS/ {print $2}' /proc/$DPID/status)
    tier0=$(metric 'cacheflow_tier_bytes_used{tier="cpu"}')
  fi
done
peak=$(metric 'cacheflow_memory_peak_bytes{pool="host"}')
used=$(metric 'cacheflow_memory_used_bytes{pool="host"}')
check "/metrics: the budget" "[ \"\$(metric 'cacheflow_memory_budget_bytes{pool=\"host\"}')\" = $BUDGET ]"
check "/metrics: high-water mark > 0 and within the budget ($peak)" "[ ${peak:-0} -gt 0 ] && [ ${peak:-0} -le $BUDGET ]"
check "/metrics: nothing held between restores" "[ \"$used\" = 0 ]"
stats=$(/usr/bin/python3 - "$T/d.sock" "$BUILD" <<'PY' 2>"$T/stats.err"
import sys
sys.path.insert(0, "lib/client/python"); sys.path.insert(0, sys.argv[2] + "/py")
from cacheflow_client import Client
m = Client("unix:" + sys.argv[1]).stats().memory
print(m.host_budget_bytes, m.host_used_bytes, m.host_peak_bytes)
PY
)
check "Admin.Stats: memory budget, use and high-water mark agree with /metrics ($stats)" "[ \"$stats\" = \"$BUDGET 0 $peak\" ]"
hwm=$(awk '/^VmHWM/ {print $2}' /proc/$DPID/status)
tier=$(metric 'cacheflow_tier_bytes_used{tier="cpu"}')
grow=$(( (hwm - rss0) * 1024 ))
tier=$(( ${tier:-0} - ${tier0:-0} ))
# the constant: gRPC buffers, the store's index and journal, the engine-facing maps, malloc arenas
CONST=$((48 * 1024 * 1024))
echo "  resident: $rss0 kB after the first policy (the 3M arena included), high-water $hwm kB after all; the CPU tier grew by $tier bytes"
check "resident growth ($grow bytes) within the CPU tier's growth + 48M" "[ $grow -le $(( ${tier:-0} + CONST )) ]"
cf_daemon_stop; rc=$?
check "SIGTERM: daemon exits 0 (no sanitizer report)" "[ $rc -eq 0 ]"

# too small for one restore: a clear error, the daemon keeps serving
D="$T/small"; mkdir -p "$D"
cf_daemon_conf "$D/d.conf" "$D" 16M 128M $C info
printf 'host_memory_bytes = 600K\n' >>"$D/d.conf"
check "daemon starts with host_memory_bytes = 600K" "cf_daemon_start '$D/d.conf' '$T/model' '$D/d.log'"
$BUILD/cf-refengine --daemon unix:$D/d.sock --model $T/model --shm-dir $D --block 16 --policy recompute --prefix 256 --new 16 --turns 2 --seed 5 >"$D/o.json" 2>"$D/o.err"
check "600K: the restore fails" "[ $? -ne 0 ]"
check "600K: RESOURCE_EXHAUSTED naming the working memory and the budget" "grep -q 'RESOURCE_EXHAUSTED.*working memory.*budget' '$D/o.json' '$D/o.err'"
check "600K: the daemon still answers" "'$BUILD/cacheflowctl' status --addr unix:$D/d.sock >/dev/null"
cf_daemon_stop; rc=$?
check "600K: SIGTERM, daemon exits 0" "[ $rc -eq 0 ]"
if [ $F -ne 0 ]; then tail -n 20 "$T/d.log"; tail -n 5 "$D/d.log"; for f in "$T"/*.err "$D"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }; done; fi
finish
