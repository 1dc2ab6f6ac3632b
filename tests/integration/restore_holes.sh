#!/usr/bin/env bash
# Restores with holes on the real daemon (issue 15): chunks of a saved prefix are evicted while
# later chunks stay stored; Lookup reports every stored chunk (runs, stored_tokens) besides the
# leading run (cached_tokens), and a restore with every policy loads the stored chunks past the
# holes and recomputes the holes: every loaded cell bit-exact, every computed cell within 1e-4 of
# a prefill from scratch, the first token and logits as the scratch prefill's.
#
# Holes are made the way they arise in production, by eviction: a CPU tier of exactly 8 chunk
# slots (demo model, 8 layers, chunks of 64: 512 KiB a slot), no SSD tier, LRU. Conversation A
# (512 tokens = 8 chunks) is saved, then B (3 chunks) evicts A's 3 least recent chunks:
#   front:  A's chunks 0-2 gone (the longest stored prefix is 0 tokens, 5 chunks still stored);
#   middle: then A's first 192 tokens saved again evict chunks 3-5 (0-2 and 6-7 stored).
# The engine (cf-refengine) replays A without saving it (--no-save-first: its own prefill is the
# reference, the CPU backend being deterministic) nor its turns (--no-save-turns), so the store
# keeps its holes across the policies.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-holes TERM
cf_gen_model demo
ENG="$BUILD/cf-refengine --model $T/model --shm-dir $T --block 16 --new 16"
C=64
L=8

# start DIR: a fresh daemon whose CPU tier holds 8 chunks, no SSD tier
start() {
  mkdir -p "$T/$1"
  cf_daemon_conf "$T/$1/d.conf" "$T/$1" 4M 0 $C warn
  echo "eviction = lru" >>"$T/$1/d.conf"
  check "$1: daemon starts (8 CPU slots, no SSD tier)" "cf_daemon_start $T/$1/d.conf $T/model $T/$1/d.log"
}

# holes NAME RUNS CACHED STORED HOLES: Lookup of A reports RUNS, then every policy restores it
holes() {
  local name=$1 want_runs=$2 want_cached=$3 want_stored=$4 want_holes=$5 pol out
  $ENG --daemon "unix:$T/$name/d.sock" --prefix 512 --turns 0 --seed 11 --no-save-first >"$T/$name/look.json" 2>"$T/$name/look.err"
  local runs cached stored
  runs=$(jq -r .lookup_runs "$T/$name/look.json")
  cached=$(jq -r .lookup_cached "$T/$name/look.json")
  stored=$(jq -r .lookup_stored "$T/$name/look.json")
  # the conversation's 16 more tokens (its next turn) are not stored: the last run is none
  check "$name: Lookup runs are '$want_runs none:16' (got '$runs')" "[ \"$runs\" = \"$want_runs none:16\" ]"
  check "$name: cached_tokens $want_cached (the leading run), stored_tokens $want_stored" \
    "[ \"$cached\" = $want_cached ] && [ \"$stored\" = $want_stored ]"
  for pol in recompute load cake layerwise cacheflow optimal; do
    out="$T/$name/$pol.json"
    $ENG --daemon "unix:$T/$name/d.sock" --prefix 512 --turns 1 --seed 11 --no-save-first --no-save-turns --verify \
      --policy $pol >"$out" 2>"$T/$name/$pol.err"
    local rc=$?
    local s='select(.mode=="session")'
    check "$name $pol: restore ok, first token and logits as a scratch prefill, no bad cell" \
      "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | $s | .ok and .logits_match == 1 and .bad == 0] | all' $out)\" = true ]"
    # cells of 64 tokens, verified per 16-token block: loaded ones must all be exact
    check "$name $pol: every loaded cell bit-exact" \
      "[ \"\$(jq -s '[.[] | $s | .exact * 16 >= (.cells_cpu + .cells_ssd) * $C] | all' $out)\" = true ]"
    check "$name $pol: PlanSummary.hole_chunks = $want_holes, their $((want_holes * L)) cells computed" \
      "[ \"\$(jq -s '[.[] | $s | .hole_chunks == $want_holes and .cells_computed >= $want_holes * $L] | all' $out)\" = true ]"
    case $pol in
      recompute) check "$name recompute: nothing loaded" "[ \"\$(jq -s '[.[] | $s | .cells_cpu] | add' $out)\" = 0 ]" ;;
      load) # the stored chunks past the holes load whole; only the holes are computed
        check "$name load: the $((want_stored / C)) stored chunks loaded ($((want_stored / C * L)) cells), the holes computed" \
          "[ \"\$(jq -s '[.[] | $s | .cells_cpu == $want_stored / $C * $L and .cells_computed == $want_holes * $L] | all' $out)\" = true ]" ;;
    esac
  done
}

start front
$ENG --daemon "unix:$T/front/d.sock" --prefix 512 --turns 0 --seed 11 >"$T/front/a.json" 2>&1
$ENG --daemon "unix:$T/front/d.sock" --prefix 192 --turns 0 --seed 99 >"$T/front/b.json" 2>&1
check "front: A (8 chunks) then B (3 chunks) saved" \
  "[ \"\$(jq -s '[.[] | .saved_tokens] | add' $T/front/a.json $T/front/b.json)\" = 704 ]"
holes front "none:192 cpu:320" 0 320 3
# reported, not asserted (timing): with the front chunks gone, a longest-prefix lookup finds 0
# tokens and the engine prefills all 512 itself (baseline_ms, measured in the same run)
for pol in load optimal; do
  jq -r -s --arg p $pol '.[] | select(.mode=="session") | "  front \($p): TTFT \(.ttft_ms) ms with holes vs \(.baseline_ms) ms prefilling the whole prefix (longest-prefix lookup: 0 tokens): ratio \(.ttft_ms / .baseline_ms * 1000 | round / 1000)"' "$T/front/$pol.json"
done
check "front: daemon exits 0" "cf_daemon_stop TERM"

start middle
$ENG --daemon "unix:$T/middle/d.sock" --prefix 512 --turns 0 --seed 11 >"$T/middle/a.json" 2>&1
$ENG --daemon "unix:$T/middle/d.sock" --prefix 192 --turns 0 --seed 99 >"$T/middle/b.json" 2>&1
$ENG --daemon "unix:$T/middle/d.sock" --prefix 192 --turns 0 --seed 11 >"$T/middle/a2.json" 2>&1
check "middle: A, B, then A's first 3 chunks again saved" \
  "[ \"\$(jq -s '[.[] | .saved_tokens] | add' $T/middle/a.json $T/middle/b.json $T/middle/a2.json)\" = 896 ]"
holes middle "cpu:192 none:192 cpu:128" 192 320 3
check "middle: daemon exits 0" "cf_daemon_stop TERM"
finish
