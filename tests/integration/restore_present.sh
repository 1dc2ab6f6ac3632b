#!/usr/bin/env bash
# The C client's new fields against the real daemon, driven by the reference engine (demo model,
# 8 layers, chunks of 64): every turn the engine keeps its own KV of the first K tokens (as vLLM's
# prefix cache does) and restores only [K, n) (present_tokens = K, K = 100: neither chunk- nor
# block-aligned), for load, recompute and optimal; --verify checks every cell (the K tokens' rows
# untouched, loaded rows bit-exact, recomputed ones within 1e-4) and the first token matches a
# prefill from scratch. Saves ask for durability (cf_client_save2) and the daemon says durable.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
. tests/lib/cf_check.sh
cf_need_bins "$BUILD" cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-present TERM
"$BUILD/cacheflowctl" gen-model --out "$T/model" --preset demo >/dev/null || { echo "gen-model failed"; echo "0 passed, 1 failed"; exit 1; }
. tests/lib/cf_daemon.sh
cf_daemon_conf "$T/d.conf" "$T" 64M 256M 64 warn
"$BUILD/cacheflowd" --config "$T/d.conf" --model "$T/model" 2>"$T/d.log" &
DPID=$!
check "daemon starts" "cf_daemon_wait $BUILD $T/d.sock 200"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --prefix 256 --new 16 --turns 2 --block 16 --verify"
rc=0
i=0
for pol in load recompute optimal; do
  i=$((i + 1))
  $ENG --policy $pol --present 100 --durable --seed $((70 + i)) >"$T/$pol.json" 2>"$T/$pol.err" || rc=1
done
check "every restore of [100, n) succeeded" "[ $rc -eq 0 ]"
d=$(jq -s '[.[] | select(.mode=="prefill") | .durable == 1] | all' "$T"/*.json)
check "durable saves (cf_client_save2): the daemon answered durable" "[ \"$d\" = true ]"
ok=$(jq -s '[.[] | select(.mode=="session") | (.ok and .bad == 0 and .logits_match == 1 and .present == 100)] | all' "$T"/*.json)
check "every cell right (the engine's [0, 100) untouched), first token as a scratch prefill" "[ \"$ok\" = true ]"
pc=$(jq -s '[.[] | select(.mode=="session") | .present_chunks == 1] | all' "$T"/*.json)
check "PlanSummary: one present chunk (100 tokens, chunks of 64)" "[ \"$pc\" = true ]"
# the chunk inside [0, 100) is neither loaded nor computed: a load plan's cells are the rest's
ld=$(jq -s '[.[] | select(.mode=="session") | (.cells_cpu + .cells_ssd + .cells_computed) == ((((.prefix + 63) / 64 | floor) - 1) * 8)] | all' "$T"/load.json)
check "load: cells moved = chunks after the present one x 8 layers" "[ \"$ld\" = true ]"
# turn 1 restores 256 tokens = 4 stored chunks: every 16-token cell exact (the engine's own rows
# below 100, the loaded ones above), none merely close
ex=$(jq -s '[.[] | select(.mode=="session" and .turn == 1) | .exact == 16 * 8 and .close == 0 and .bad == 0] | all' "$T"/load.json)
check "load turn 1: all 16 x 8 cells bit-exact (own rows and loaded rows), none recomputed" "[ \"$ex\" = true ]"
kill -TERM $DPID 2>/dev/null; wait $DPID
check "daemon exits 0" "[ $? -eq 0 ]"
if [ $F -ne 0 ]; then echo "--- daemon log"; tail -n 20 "$T/d.log"; for f in "$T"/*.err "$T"/*.json; do echo "--- $f"; tail -n 4 "$f"; done; fi
echo "$P passed, $F failed"
[ $F -eq 0 ]
