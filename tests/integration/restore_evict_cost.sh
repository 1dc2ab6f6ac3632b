#!/usr/bin/env bash
# eviction = cost on the real daemon (issue 15.2): the daemon hands the store its cost model's value
# table and saves name each chunk's index; with CPU and SSD caps of a few chunks, sessions of a
# reference engine (CPU backend, demo model) force evictions in both tiers, and every restore is
# still verified cell by cell (exact where loaded, within tolerance where recomputed), turn after
# turn and across sessions that push each other out. Behaviour, not timing.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-evict-cost TERM
cf_gen_model demo
# demo model: 8 layers x 64 KiB cells = 512 KiB a chunk of 64 tokens; CPU 4 chunks, SSD 10
cf_daemon_conf "$T/d.conf" "$T" 2M 5M 64 warn
printf 'eviction = cost\n' >>"$T/d.conf"
check "daemon starts with eviction = cost" "cf_daemon_start $T/d.conf $T/model"
CTL="$BUILD/cacheflowctl"
check "the setting in effect is cost" "$CTL config --addr unix:$T/d.sock eviction | grep -q cost" \
  "$($CTL config --addr unix:$T/d.sock eviction 2>&1)"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 384 --new 32"
rc=0
for seed in 1 2 3 4 5; do
  $ENG --policy optimal --turns 3 --verify --seed $seed >"$T/s$seed.json" 2>"$T/s$seed.err" || { rc=1; echo "seed $seed:"; tail -n 3 "$T/s$seed.err"; }
done
check "5 sessions of 3 turns, every restore verified under eviction pressure" "[ $rc -eq 0 ]"
# the first sessions' prefixes were pushed out by the later ones (or parts of them: holes are
# recomputed); restoring one again still verifies
$ENG --policy optimal --turns 2 --verify --seed 1 >"$T/again.json" 2>"$T/again.err"
check "an early session restored again after the others, verified" "[ $? -eq 0 ]" "$(tail -n 3 "$T/again.err")"
check "no error in the daemon log" "! grep -q 'level=error' $T/d.log" "$(grep 'level=error' "$T/d.log" | head -3)"
cf_daemon_stop
# 6 sessions saved about 50 chunks into room for 14: the SSD tier evicted (journaled) down to its
# cap and what it kept is intact
out=$("$CTL" store verify --dir "$T/store" 2>&1)
n=$(sed -n 's/^chunks ok \([0-9]*\), damaged 0, .*/\1/p' <<<"$out")
check "the store verifies clean after the run, at most its 10 SSD chunks (${n:-?})" "[ -n \"$n\" ] && [ \"$n\" -le 10 ] && [ \"$n\" -gt 0 ]" "$out"
finish
