#!/usr/bin/env bash
# Restores with holes in held-out patterns on the real daemon (issue 15): a prefix of 8 chunks
# and 37 tokens (not a multiple of the chunk) is saved, then holes are punched into it by the
# daemon's own LRU eviction (tests/integration/py/holes_shape.py: restores that make the wanted
# chunk the least recent, then Admin.Evict of one chunk in the CPU tier, or on an SSD-only
# daemon one more chunk saved into the full tier): every other chunk (the first missing, or the last),
# only the last chunk stored, all holes, and a random pattern (CF_HOLES_SEED replays one), in
# the CPU tier and in the SSD tier, on the demo model, a sliding-window and a MoE checkpoint.
# For each: Lookup's runs name every chunk's tier (or none) and cached_tokens is the leading
# run; the engine (cf-refengine --verify) restores with load and a rotating second policy:
# loaded cells bit-exact, computed ones within 1e-4, first-token logits as a scratch prefill,
# PlanSummary.hole_chunks the holes before the last stored chunk; load loads exactly the stored
# chunks and computes the rest; the load restore's trace drawn (cacheflowctl trace --svg) is
# well-formed with one box per loaded cell, each lane's boxes in time order.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-holes-rand TERM
cf_gen_model demo
SHAPE=tests/integration/py/holes_shape.py
CHECK=tests/integration/py/svg_check.py
N=8
SEED=${CF_HOLES_SEED:-$(( $$ % 997 + 1 ))}
RANDOM=$SEED
rnd=""
for k in $(seq 0 $((N - 1))); do [ $((RANDOM % 2)) -eq 1 ] && rnd="$rnd${rnd:+,}$k"; done
echo "  (random pattern: holes at chunks '$rnd', CF_HOLES_SEED=$SEED replays it)"
OTHER=(optimal cacheflow cake layerwise recompute)
oi=0

# expect TIER REMOVE TAIL: the Lookup runs of N chunks in TIER less REMOVE, then TAIL tokens stored nowhere
expect() {
  local out="" prev="" n=0 k t
  for k in $(seq 0 $((N - 1))); do
    t=$2; [[ ",$2," == *",$k,"* ]] && t=none || t=$1
    if [ "$t" = "$prev" ]; then n=$((n + C)); else [ -n "$prev" ] && out="$out $prev:$n"; prev=$t; n=$C; fi
  done
  if [ "$3" -gt 0 ]; then if [ "$prev" = none ]; then n=$((n + $3)); else out="$out $prev:$n"; prev=none; n=$3; fi; fi
  echo "${out# } $prev:$n" | sed 's/^ //'
}

# pattern NAME MODEL C TIER REMOVE: a fresh daemon, the prefix saved, REMOVE's chunks evicted, restored
pattern() {
  local name=$1 model=$2 tier=$4 rm=$5 D="$T/$1" pol
  C=$3
  mkdir -p "$D"
  local pre=$((N * C + 37)) stored=0 leading=0 holes=0 k last=-1
  for k in $(seq 0 $((N - 1))); do
    if [[ ",$rm," != *",$k,"* ]]; then stored=$((stored + 1)); last=$k; fi
  done
  for k in $(seq 0 $((N - 1))); do [[ ",$rm," == *",$k,"* ]] && break; leading=$((leading + 1)); done
  for k in $(seq 0 $((last - 1))); do [[ ",$rm," == *",$k,"* ]] && holes=$((holes + 1)); done
  if [ "$tier" = cpu ]; then cf_daemon_conf "$D/d.conf" "$D" 64M 0 "$C" warn
  else # SSD-only: room for exactly N chunks (the holes are its own evictions)
    cf_daemon_conf "$D/d.conf" "$D" 0 "$SSD_BYTES" "$C" warn
  fi
  echo "eviction = lru" >>"$D/d.conf"
  check "$name: daemon starts ($tier tier)" "cf_daemon_start $D/d.conf $model $D/d.log" || return
  local eng="$BUILD/cf-refengine --daemon unix:$D/d.sock --model $model --shm-dir $D --block 16 --new 4"
  $eng --prefix $((N * C)) --turns 0 --seed 11 >"$D/a.json" 2>"$D/a.err"
  check "$name: $N chunks saved" "[ \"\$(jq -r .saved_tokens $D/a.json)\" = $((N * C)) ]" "$(cat "$D/a.err")"
  local got want
  got=$(BUILD=$BUILD "$PYTHON" "$SHAPE" "$D/d.sock" "$model" 11 $N "$C" "$tier" "$rm" 2>"$D/shape.err")
  want=$(expect "$tier" "$rm" 0)
  check "$name: holes punched at '$rm': runs '$want'" "[ \"$got\" = \"$want\" ]" "got '$got': $(tail -2 "$D/shape.err")"
  want=$(expect "$tier" "$rm" 45) # the engine looks up its conversation: the prefix and 8 new tokens
  for pol in load "${OTHER[$oi]}"; do
    local out="$D/$pol.json" s='select(.mode=="session")'
    $eng --prefix $pre --turns 1 --seed 11 --no-save-first --no-save-turns --verify --policy $pol >"$out" 2>"$D/$pol.err"
    local rc=$?
    if [ $pol = load ]; then
      check "$name: Lookup runs '$want', cached_tokens $((leading * C)), stored_tokens $((stored * C))" \
        "[ \"\$(jq -r 'select(.mode==\"prefill\") | \"\\(.lookup_runs)|\\(.lookup_cached)|\\(.lookup_stored)\"' $out)\" = \"$want|$((leading * C))|$((stored * C))\" ]" \
        "$(jq -c 'select(.mode=="prefill") | {lookup_runs, lookup_cached, lookup_stored}' "$out")"
    fi
    check "$name $pol: restored, logits as a scratch prefill, no bad cell, loaded cells bit-exact, hole_chunks $holes" \
      "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | $s | .ok and .logits_match == 1 and .bad == 0 and .hole_chunks == $holes
          and .exact * 16 >= (.cells_cpu + .cells_ssd) * $C] | (length > 0 and all)' $out)\" = true ]" \
      "$(tail -3 "$D/$pol.err"; jq -c "$s" "$out")"
  done
  oi=$(((oi + 1) % ${#OTHER[@]}))
  # load: every stored chunk loaded whole (less the cells a window skips), the rest computed
  check "$name load: the $stored stored chunks loaded ($((stored * L)) cells with skipped ones), none from another tier" \
    "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | (.cells_$tier + .skipped >= $stored * $L) and (.cells_$tier <= $stored * $L)
        and (.cells_cpu + .cells_ssd == .cells_$tier)] | all' $D/load.json)\" = true ]" "$(jq -c 'select(.mode=="session")' "$D/load.json")"
  # (a loader thread keeps several SSD reads in flight: its boxes overlap, their starts in order)
  local id serial=--serial
  [ "$tier" = ssd ] && serial=
  id=$(jq -r 'select(.mode=="session") | .restore_id' "$D/load.json" | tail -1)
  if "$BUILD/cacheflowctl" trace --addr "unix:$D/d.sock" --restore "$id" --svg "$D/t.svg" >"$D/t.txt" 2>"$D/t.err" &&
     "$PYTHON" "$CHECK" "$D/t.svg" $serial >"$D/t.chk" 2>>"$D/t.err"; then
    check "$name load: its trace drawn, well-formed, one box per loaded cell" \
      "[ \"\$(jq --argjson n \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_cpu + .cells_ssd] | add' $D/load.json)\" '(.timelines[1].kinds.load // 0) == \$n' $D/t.chk)\" = true ]" \
      "$(cat "$D/t.chk")"
  else bad "$name load: trace drawn" "$(cat "$D/t.err")"; fi
  check "$name: daemon exits 0" "cf_daemon_stop TERM"
}

L=8
SSD_BYTES=$((N * 512 * 1024)) # demo model: 8 layers x 64 KiB cells a chunk of 64 tokens
pattern every-other "$T/model" 64 cpu 0,2,4,6 # the first chunk missing too
pattern only-last "$T/model" 64 cpu 0,1,2,3,4,5,6
pattern all-holes "$T/model" 64 cpu 0,1,2,3,4,5,6,7
pattern random-cpu "$T/model" 64 cpu "$rnd"
pattern ssd-every-other "$T/model" 64 ssd 1,3,5,7
pattern ssd-random "$T/model" 64 ssd "$rnd"
for M in "$CF_FIXTURES/public-mistral-window" "$CF_FIXTURES/public-qwen3-moe"; do
  if [ -f "$M/config.json" ]; then
    L=$(jq .num_hidden_layers "$M/config.json")
    pattern "$(basename "$M")" "$M" 32 cpu 0,3,4,6
  else skip "$(basename "$M") holes" "no fixture $M"; fi
done
finish
