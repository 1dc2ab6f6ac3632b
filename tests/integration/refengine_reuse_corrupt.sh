#!/usr/bin/env bash
# cf-refengine --reuse-prefill still catches a wrong cell (the eviction evaluation's long trace,
# tests/bench/eval_evict_daemon.py, relies on it: there its one fp32 prefill from scratch is also
# the restore verification's reference). A real daemon restores a durably saved prefix from its
# SSD files after a restart (--policy load: every cell loaded) into an engine that saved nothing
# itself (--no-save-first, as in the evaluation). Then one stored cell is corrupted
# (tests/integration/py/store_corrupt_cell.py flips the sign of each of its floats):
#   1. in the data file only: the daemon's checksum catches it, drops the chunk, and the restore
#      recomputes it: the run passes, no cell is bad, the daemon counts the corrupt cell;
#   2. past the checksum (the cell's checksum in its journal record rewritten to match, as a
#      writer bug would leave it): the daemon hands out the wrong bytes, and the engine must
#      report bad cells and exit non-zero instead of passing.
# A control run before any corruption verifies every cell exact. Behaviour, not timing.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-reuse-corrupt TERM
cf_gen_model demo
# demo model, f32 KV (--reuse-prefill's mode): 4 chunks of 64 tokens, all on SSD after the restart;
# verified per 16-token block and layer: 16 x 8 = 128 cells
cf_daemon_conf "$T/d.conf" "$T" 8M 16M 64 warn
printf 'kv_dtype = f32\nmetrics_listen = unix:%s/m.sock\n' "$T" >>"$T/d.conf"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 256 --new 16 --seed 3"
RESTORE="$ENG --no-save-first --turns 1 --verify --reuse-prefill --policy load"
CORRUPT="$PYTHON $(dirname "$0")/py/store_corrupt_cell.py $T/store"
# field of the session line of a run's JSON output
field() { sed -n "s/.*\"mode\":\"session\".*\"$2\":\([0-9a-z]*\).*/\1/p" "$T/$1.json" | head -n 1; }

check "daemon starts (kv_dtype f32)" "cf_daemon_start $T/d.conf $T/model"
$ENG --turns 0 --durable >"$T/save.json" 2>"$T/save.err"
check "the prefix saved durably" "grep -q '\"saved_tokens\":256,.*\"durable\":1' $T/save.json" "$(cat "$T/save.json" "$T/save.err")"
cf_daemon_stop
# restore NAME: (re)start the daemon on the store, restore into NAME.json / NAME.err; rc in $rc
restore() {
  check "daemon starts on the store ($1)" "cf_daemon_start $T/d.conf $T/model"
  $RESTORE >"$T/$1.json" 2>"$T/$1.err"
  rc=$?
}

restore clean
check "control: restored from SSD, verified against the reused prefill, every cell exact, run passes" \
  "[ $rc -eq 0 ] && grep -q '\"reference\":\"prefill\"' $T/clean.json && [ \"$(field clean exact)\" = 128 ] && [ \"$(field clean bad)\" = 0 ]" "$(cat "$T/clean.json" "$T/clean.err")"
cf_daemon_stop

# 1. the data file only: caught by the checksum, recomputed, the run passes
where=$($CORRUPT 1 2 data)
check "corrupted layer 2 of the 2nd chunk in the journal, in the data file ($where)" "[ -n \"$where\" ]"
restore data
check "a cell the checksum catches is recomputed: no bad cell, run passes" \
  "[ $rc -eq 0 ] && [ \"$(field data bad)\" = 0 ] && [ \"$(field data logits_match)\" = 1 ]" "$(cat "$T/data.json" "$T/data.err")"
corrupt=$(curl -s --unix-socket "$T/m.sock" http://x/metrics | sed -n 's/^cacheflow_store_corrupt_cells_total \([0-9]*\)$/\1/p')
check "the daemon counted the corrupt cell (${corrupt:-?})" "[ \"${corrupt:-0}\" -ge 1 ]"
cf_daemon_stop

# 2. past the checksum: the daemon serves the wrong bytes; --reuse-prefill's comparison must flag them
where=$($CORRUPT 2 5 past)
check "corrupted layer 5 of the 3rd chunk, its journal checksum rewritten ($where)" "[ -n \"$where\" ]"
restore past
check "a wrong cell past the checksum fails the run (exit $rc)" "[ $rc -ne 0 ]" "$(cat "$T/past.json" "$T/past.err")"
check "the restore reports bad cells ($(field past bad)), against the reused prefill" \
  "[ \"$(field past bad)\" -ge 1 ] && grep -q '\"reference\":\"prefill\"' $T/past.json" "$(cat "$T/past.json")"
check "the other cells still verify exact ($(field past exact) of 128)" "[ \"$(field past exact)\" -ge 124 ]" "$(cat "$T/past.json")"
cf_daemon_stop
finish
