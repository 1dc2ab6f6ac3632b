#!/usr/bin/env bash
# Online re-fit of the SSD tier's load rate (cf_refit.h) on a real daemon whose restores all read
# the SSD tier (cpu_tier_bytes = 0: every saved chunk lives on disk only; policy load: restores
# are all loads). No ssd_read_gbps is configured, so the planner starts out assuming the SSD tier
# reads at the CPU tier's (memcpy's) rate. Then, mid-run, two competing O_DIRECT readers (dd
# iflag=direct on a 256 MiB file of the same disk) share the disk. Behaviour, not timing (how
# fast this VM's disk is, and how much two readers slow it, are not ours to assert: the measured
# executed / predicted ratios and rates are printed; cf_refit's arithmetic is test_refit's):
#   - every restore's cells came from the SSD tier;
#   - plans cost the SSD tier's bytes at the rate the planner holds: the first restore (a full
#     prefix, all loads) predicts its bytes at the starting rate (the CPU tier's), and a restore
#     after the re-fit predicts them at the fitted rate GetStats reports;
#   - the re-fit samples every restore's loads and keeps the rate at or under the cap (the rate
#     it started from), before and under the competing readers;
#   - every other turn ends in a 32-token partial chunk, which the store holds but lib/exec
#     computes (h = L): those restores compute exactly that chunk's L cells and no load falls
#     back to a recompute (the planner's side, the prediction that includes those L steps, is
#     test_planner's);
#   - /metrics exposes the per-tier rates, the load terms' predicted ratios and sample counts;
#   - the fitted rate never exceeds the configured limit: with ssd_read_gbps set (SIGHUP) far
#     below the disk's speed, the rate the planner uses is exactly that limit.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
command -v jq >/dev/null || cf_skip_all "needs jq"
cf_test_dir cf-lrefit TERM
DD=
cf_at_exit 'for p in $DD; do kill $p 2>/dev/null; wait $p 2>/dev/null; done'
cf_gen_model demo
cf_daemon_conf "$T/d.conf" "$T" 0 256M 64 ${CF_LOG_LEVEL:-warn}
printf 'metrics_listen = unix:%s/m.sock\ncost_refit = on\ncost_refit_weight = 0.5\n' "$T" >>"$T/d.conf"
sed -i '/^metrics_listen =$/d' "$T/d.conf"
check "daemon starts with an SSD-only store" "cf_daemon_start $T/d.conf $T/model"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 1024 --new 32 --policy load"
sess() { jq -c 'select(.mode=="session")' "$1"; }
ratios() { sess "$1" | jq -r '.daemon_us / .predicted_us'; }
counter() { "$BUILD/cacheflowctl" stats --addr "unix:$T/d.sock" | awk -v k="$1" '$1 == k {print $2}'; }
cpu0=$(counter cacheflow_tier_read_bytes_per_second_cpu); ssd0=$(counter cacheflow_tier_read_bytes_per_second_ssd)
$ENG --turns 7 --seed 3 >"$T/a.json" 2>"$T/a.err"
check "restores from the SSD tier" "[ $? -eq 0 ]"
check "every restore loaded its cells from the SSD tier only" \
  "[ \"\$(sess $T/a.json | jq -r 'select(.cells_ssd == 0 or .cells_cpu != 0) | 1' | wc -l)\" = 0 ] && [ \"\$(sess $T/a.json | wc -l)\" -ge 6 ]"
ratios "$T/a.json" >"$T/r"
CELL=65536 # bytes of one cell of the demo model (64 tokens x 2 kv heads x 64 dims x K,V x f32)
pred_at() { # JSON RATE: turn 1's predicted us / its bytes at RATE (1 when costed at RATE)
  jq -r --argjson r "$2" --argjson c $CELL 'select(.mode=="session" and .turn==1) | .predicted_us / (.cells_ssd * $c / $r * 1e6)' "$1"
}
near1() { awk -v a="$1" -v tol="$2" 'BEGIN{d = a - 1; if (d < 0) d = -d; exit !(d <= tol)}'; }
ssd1=$(counter cacheflow_tier_read_bytes_per_second_ssd); n1=$(counter cacheflow_load_refit_samples_ssd)
echo "     planned ssd rate $ssd0 B/s (cpu $cpu0) -> fitted $ssd1 B/s after $n1 samples"
echo "     executed / predicted: $(tr '\n' ' ' <"$T/r")"
q=$(pred_at "$T/a.json" "$ssd0")
check "the first restore costed its SSD bytes at the starting rate, the CPU tier's ($q x bytes / $ssd0 B/s)" "near1 $q 0.05"
check "the re-fit sampled every restore's loads ($n1 samples of 7)" "[ \"$n1\" -ge 7 ]"
check "the fitted SSD rate stays at or under the cap, the rate it started from ($ssd0 -> $ssd1 B/s)" "awk -v a=$ssd0 -v b=$ssd1 'BEGIN{exit !(b <= a && b > 0)}'"
$ENG --turns 1 --seed 5 >"$T/fitted.json" 2>"$T/fitted.err"
check "a restore after the re-fit" "[ $? -eq 0 ]"
q=$(pred_at "$T/fitted.json" "$ssd1")
check "plans use the fitted rate: its SSD bytes costed at $ssd1 B/s ($q x)" "near1 $q 0.05"
ssd1=$(counter cacheflow_tier_read_bytes_per_second_ssd); n1=$(counter cacheflow_load_refit_samples_ssd)
# mid-run: competing O_DIRECT readers on the same disk
dd if=/dev/urandom of="$T/big" bs=1M count=256 status=none
for i in 1 2; do (while :; do dd if="$T/big" of=/dev/null bs=1M iflag=direct status=none || break; done) & DD="$DD $!"; done
$ENG --turns 7 --seed 4 >"$T/b.json" 2>"$T/b.err"
check "restores while two O_DIRECT readers compete" "[ $? -eq 0 ]"
for p in $DD; do kill $p 2>/dev/null; wait $p 2>/dev/null; done; DD=
ratios "$T/b.json" >"$T/r2"
ssd2=$(counter cacheflow_tier_read_bytes_per_second_ssd); lr=$(counter cacheflow_predicted_ratio_load_ssd); n2=$(counter cacheflow_load_refit_samples_ssd)
echo "     competing readers: fitted ssd rate $ssd1 -> $ssd2 B/s; load term executed / predicted $lr; executed / predicted: $(tr '\n' ' ' <"$T/r2")"
check "under the competing readers every restore's loads sampled ($n1 -> $n2) and the rate stays under the cap ($ssd2 <= $ssd0)" \
  "[ \"$n2\" -ge $((n1 + 7)) ] && awk -v a=$ssd0 -v b=$ssd2 'BEGIN{exit !(b <= a && b > 0)}'"
# restores whose last chunk is partial: that chunk computed, every layer (h = L), nothing else
parts=$( (sess "$T/a.json"; sess "$T/b.json") | jq -r 'select(.prefix % 64 != 0) | "\(.cells_computed) \(.fallback)"')
echo "     partial-chunk restores (cells computed, fallbacks): $(echo $parts)"
check "restores ending in a partial chunk compute its 8 cells (one per layer), no load falls back ($(echo "$parts" | grep -c .) restores)" \
  "[ \"\$(echo \"\$parts\" | grep -c .)\" -ge 4 ] && ! echo \"\$parts\" | grep -qv '^8 0$'"
whole=$( (sess "$T/a.json"; sess "$T/b.json") | jq -r 'select(.prefix % 64 == 0) | "\(.cells_computed) \(.fallback)"')
check "restores of whole chunks compute nothing ($(echo "$whole" | grep -c .) restores)" "! echo \"\$whole\" | grep -qv '^0 0$'"
check "load-term ratio reported for the SSD tier ($lr)" "awk -v r=$lr 'BEGIN{exit !(r > 0)}'"
m=$(curl -s --unix-socket "$T/m.sock" http://x/metrics)
check "/metrics: per-tier read rates, load_ssd predicted ratio, load re-fit samples" \
  "echo \"\$m\" | grep -q '^cacheflow_tier_read_bytes_per_second{tier=\"ssd\"} ' && echo \"\$m\" | grep -q '^cacheflow_predicted_ratio{term=\"load_ssd\"} ' && echo \"\$m\" | grep -q '^cacheflow_load_refit_samples_total{tier=\"ssd\"} '"
# a configured limit caps the fitted rate: 0.4 Gbps = 50 MB/s, below what the disk delivers
printf 'ssd_read_gbps = 0.4\n' >>"$T/d.conf"
kill -HUP $DPID
for i in $(seq 1 50); do [ "$(counter cacheflow_tier_read_bytes_per_second_ssd)" = 5e+07 ] && break; sleep 0.1; done
check "ssd_read_gbps = 0.4 (SIGHUP): the planner's SSD rate is the limit, 5e+07 B/s ($(counter cacheflow_tier_read_bytes_per_second_ssd))" \
  "[ \"$(counter cacheflow_tier_read_bytes_per_second_ssd)\" = 5e+07 ]"
finish
