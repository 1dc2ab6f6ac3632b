#!/usr/bin/env bash
# Restores with holes in held-out patterns on the real daemon (issue 15): a prefix of 8 chunks
# and 37 tokens (not a multiple of the chunk) is saved, then holes are punched into it by the
# daemon's own LRU eviction (tests/integration/py/holes_shape.py: restores that make the wanted
# chunk the least recent, then Admin.Evict of one chunk in the CPU tier, or on an SSD-only
# daemon one more chunk saved into the full tier): every other chunk (the first missing, or the last),
# only the last chunk stored, all holes, and a random pattern (CF_HOLES_SEED replays one), in
# the CPU tier and in the SSD tier, on the demo model, a sliding-window and a MoE checkpoint;
# and in the remote tier (a real redis-server, markers deleted behind the daemons' backs), alone
# and mixed with CPU chunks in one prefix.
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
  # (a loader thread keeps several SSD reads in flight: its overlapping ops drawn in sub-rows,
  # so --serial holds for SSD restores too: no two boxes at once in a row, none hidden)
  local id serial=--serial
  id=$(jq -r 'select(.mode=="session") | .restore_id' "$D/load.json" | tail -1)
  if "$BUILD/cacheflowctl" trace --addr "unix:$D/d.sock" --restore "$id" --svg "$D/t.svg" >"$D/t.txt" 2>"$D/t.err" &&
     "$PYTHON" "$CHECK" "$D/t.svg" $serial >"$D/t.chk" 2>>"$D/t.err"; then
    check "$name load: its trace drawn, well-formed, one box per loaded cell, one per executed step, rows serial" \
      "[ \"\$(jq --argjson n \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_cpu + .cells_ssd] | add' $D/load.json)\" '(.timelines[1].kinds.load // 0) == \$n' $D/t.chk)\" = true ] &&
       [ \"\$(jq .timelines[1].ops $D/t.chk)\" = \"\$(sed -n 's/.*executed \\([0-9]*\\) steps.*/\\1/p' $D/t.txt)\" ]" \
      "$(cat "$D/t.chk" "$D/t.txt")"
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
for M in "$CF_FIXTURES/public-mistral-window" "$CF_FIXTURES/public-qwen3-moe"; do
  if [ -f "$M/config.json" ]; then
    L=$(jq .num_hidden_layers "$M/config.json")
    pattern "$(basename "$M")" "$M" 32 cpu 0,3,4,6
  else skip "$(basename "$M") holes" "no fixture $M"; fi
done
# The remote tier (a real redis-server): node A saves the prefix and writes it back to Redis; its
# chunks' markers are deleted there behind the daemons' backs (what a Redis that evicts keys
# does): node B, which never saw the prefix, finds the rest in the remote tier, holes between;
# node C first restores 2 chunks (promoting the one stored whole into its CPU tier): holes, CPU
# and remote chunks in one prefix.
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  PIDS=()
  cf_at_exit 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null'
  C=64 L=8
  RPORT=$(cf_free_port)
  rcli() { redis-cli -p "$RPORT" "$@"; }
  node() { # NAME: a daemon with the remote tier (CPU 64M, no SSD), started
    mkdir -p "$T/$1"
    cf_daemon_conf "$T/$1/d.conf" "$T/$1" 64M 0 $C warn
    printf 'eviction = lru\nremote_url = redis://127.0.0.1:%s\n' "$RPORT" >>"$T/$1/d.conf"
    "$BUILD/cacheflowd" --config "$T/$1/d.conf" --model "$T/model" >>"$T/$1/d.log" 2>&1 &
    PIDS+=($!)
    cf_daemon_wait "$T/$1/d.sock"
  }
  look() { BUILD=$BUILD "$PYTHON" "$SHAPE" "$T/$1/d.sock" "$T/model" 11 $N $C lookup "" 2>>"$T/$1/look.err"; }
  reng() { "$BUILD/cf-refengine" --daemon "unix:$T/$1/d.sock" --model "$T/model" --shm-dir "$T" --block 16 --new 4 "${@:2}"; }
  if cf_start_redis r "$RPORT" && node ra && node rb && node rc; then
    reng ra --prefix $((N * C)) --turns 0 --seed 11 >"$T/ra.json" 2>"$T/ra.err"
    for _ in $(seq 1 600); do [ "$(rcli --scan --pattern '*:m' | wc -l)" -ge $N ] && break; sleep 0.1; done
    check "remote: A saved $N chunks, written back to Redis" "[ \"\$(rcli --scan --pattern '*:m' | wc -l)\" = $N ]"
    # which marker is which chunk: hidden one at a time, the chunk B's Lookup then misses
    declare -A mk=()
    for m in $(rcli --scan --pattern '*:m'); do
      rcli rename "$m" "$m.x" >/dev/null
      r=$(look rb)
      rcli rename "$m.x" "$m" >/dev/null
      pre=${r%%none:*}; k=0
      for run in $pre; do k=$((k + ${run#*:} / C)); done
      mk[$k]=$m
    done
    check "remote: each of the $N markers maps to one chunk" "[ \${#mk[@]} -eq $N ]" "${!mk[*]}"
    rm_remote=0,3,4,6
    for k in ${rm_remote//,/ }; do [ -n "${mk[$k]:-}" ] && rcli del "${mk[$k]}" >/dev/null; done
    want="none:64 remote:128 none:128 remote:64 none:64 remote:64"
    check "remote: chunks $rm_remote gone from Redis: B's Lookup '$want'" "[ \"\$(look rb)\" = '$want' ]" "$(look rb)"
    reng rb --prefix $((N * C + 37)) --turns 1 --seed 11 --no-save-first --no-save-turns --verify --policy load >"$T/rb.json" 2>"$T/rb.err"
    rc=$?
    s='select(.mode=="session")'
    check "remote B load: restored, loaded cells bit-exact, logits, 4 remote chunks loaded ($((4 * L)) cells), hole_chunks 4" \
      "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | $s | .ok and .logits_match == 1 and .bad == 0 and .hole_chunks == 4
          and .cells_remote == 4 * $L and .exact * 16 >= (.cells_cpu + .cells_remote) * $C] | (length > 0 and all)' $T/rb.json)\" = true ]" \
      "$(tail -3 "$T/rb.err"; jq -c "$s" "$T/rb.json")"
    # C: chunk 1 (remote) read whole by a 2-chunk restore is promoted into C's CPU tier
    reng rc --prefix $((2 * C)) --turns 1 --seed 11 --no-save-first --no-save-turns --policy load >"$T/rc1.json" 2>"$T/rc1.err"
    want="none:64 cpu:64 remote:64 none:128 remote:64 none:64 remote:64"
    for _ in $(seq 1 100); do [ "$(look rc)" = "$want" ] && break; sleep 0.1; done
    check "remote C: Lookup mixes holes, CPU and remote chunks: '$want'" "[ \"\$(look rc)\" = '$want' ]" "$(look rc)"
    for pol in optimal cacheflow; do
      reng rc --prefix $((N * C + 37)) --turns 1 --seed 11 --no-save-first --no-save-turns --verify --policy $pol >"$T/rc-$pol.json" 2>"$T/rc-$pol.err"
      rc=$?
      check "remote C $pol: holes + CPU + remote restored, loaded cells bit-exact, logits, hole_chunks 4" \
        "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | $s | .ok and .logits_match == 1 and .bad == 0 and .hole_chunks == 4
            and .exact * 16 >= (.cells_cpu + .cells_remote) * $C] | (length > 0 and all)' $T/rc-$pol.json)\" = true ]" \
        "$(tail -3 "$T/rc-$pol.err"; jq -c "$s" "$T/rc-$pol.json")"
    done
  else bad "remote: redis-server and three daemons start" "$(tail -3 "$T"/r*/d.log 2>/dev/null)"; fi
else skip "remote-tier holes" "redis-server / redis-cli not installed"; fi
finish
