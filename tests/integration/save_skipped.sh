#!/usr/bin/env bash
# Save after a windowed restore never stores the cells the restore skipped, through the REAL
# daemon and reference engine on public-mistral-window (window 32, every layer sliding; prefix
# 256 >> window). A restore leaves a windowed layer's cells outside the final window unwritten
# (the engine's blocks keep their NaN fill there). cf-refengine --evict-before-save then drops
# the whole store (Admin.Evict) before each turn's Save from those very blocks, so that Save is
# what would store them:
#   the chunks whose cells were skipped are not stored (holes: saved_tokens = T - skipped
#   chunks * C, Lookup finds no leading prefix), the daemon logs them, the rest are stored;
#   the next turn restores that prefix and equals a scratch prefill (engine exit 0, --verify:
#   no bad cell, logits match);
#   a restore that writes the blocks whole (the next turn, all recomputed) clears the marks;
#   the same blocks reused for other tokens (another first token, prefilled by the engine)
#   save whole.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cf-refengine
cf_test_dir cf-saveskip KILL

M="$CF_FIXTURES/public-mistral-window"
[ -f "$M/kv.safetensors" ] || cf_skip_all "no public-mistral-window fixture"
C=32
L=$(jq '.num_hidden_layers' "$M/config.json")
D="$T/d"; mkdir -p "$D"
# no SSD tier: Admin.Evict of the CPU tier then drops the chunks (with one it writes them back)
cf_daemon_conf "$D/d.conf" "$D" 64M 0 $C info
check "daemon starts" "cf_daemon_start '$D/d.conf' '$M' '$D/d.log'"
out="$D/load.json"
"$BUILD/cf-refengine" --daemon "unix:$D/d.sock" --model "$M" --shm-dir "$D" --block 16 --policy load \
  --prefix 256 --new 16 --turns 2 --concurrent 0 --verify --seed 7 --evict-before-save >"$out" 2>"$D/eng.err"
rc=$?
check "engine exit 0 (restores ok, no bad cell, logits match a scratch prefill)" "[ $rc -eq 0 ]"
check "turn 1 restore skipped cells" "[ \"\$(jq -s '[.[] | select(.mode==\"session\" and .turn==1) | .skipped] | add' $out)\" -gt 0 ]"
# chunks with skipped cells at turn 1 (every layer is windowed: skipped cells / L)
holes=$(jq -s --argjson L "$L" '[.[] | select(.mode=="session" and .turn==1) | .skipped / $L | floor] | add' "$out")
check "turn 1: skipped cells cover whole chunks (every layer windowed)" \
  "[ \"\$(jq -s --argjson L $L '[.[] | select(.mode==\"session\" and .turn==1) | .skipped % \$L] | add' $out)\" = 0 ]"
check "turn 1 save after evict: the store was emptied first" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"turn_save\" and .turn==1) | .evicted_chunks] | add' $out)\" -gt 0 ]"
check "turn 1 save: skipped chunks ($holes) not stored, the rest stored" \
  "[ \"\$(jq -s --argjson C $C --argjson H $holes '[.[] | select(.mode==\"turn_save\" and .turn==1) | select(.saved_tokens == .tokens - \$H * \$C)] | length' $out)\" = 1 ]"
check "turn 1 save: Lookup finds the hole at chunk 0 (no leading prefix)" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"turn_save\" and .turn==1) | .lookup_cached] | add' $out)\" = 0 ]"
check "daemon logs the refused chunks" "grep -q 'hold cells a windowed restore skipped' '$D/d.log'"
check "turn 2 restored and verified (equals recompute)" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"session\" and .turn==2) | select(.ok and .bad==0 and .logits_match==1)] | length' $out)\" = 1 ]"
# turn 2 found no leading prefix: it recomputed every cell and skipped none, so it wrote its
# blocks whole, which clears their marks: its Save stores every chunk
check "turn 2 skipped nothing; its save (blocks written whole) stores every chunk" \
  "[ \"\$(jq -s '[.[] | select((.mode==\"session\" and .turn==2 and .skipped==0) or (.mode==\"turn_save\" and .turn==2 and .saved_tokens==.tokens and .lookup_cached==.tokens))] | length' $out)\" = 2 ]"
# one turn: the blocks keep turn 1's marks when the engine reuses them for other tokens
out="$D/reuse.json"
"$BUILD/cf-refengine" --daemon "unix:$D/d.sock" --model "$M" --shm-dir "$D" --block 16 --policy load \
  --prefix 256 --new 16 --turns 1 --concurrent 0 --verify --seed 8 --evict-before-save >"$out" 2>"$D/eng2.err"
rc=$?
check "reuse run: engine exit 0" "[ $rc -eq 0 ]"
check "reuse run: turn 1 save left its skipped chunks out (blocks marked)" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"turn_save\" and .turn==1) | select(.saved_tokens < .tokens)] | length' $out)\" = 1 ]"
check "reused blocks, other tokens: saved whole" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"reuse_save\") | select(.saved_tokens == .tokens and .lookup_cached == .tokens)] | length' $out)\" = 1 ]"
cf_daemon_stop; rc=$?
check "SIGTERM, daemon exits 0 (no sanitizer report)" "[ $rc -eq 0 ]"
if [ $F -ne 0 ]; then echo "--- daemon log"; tail -n 20 "$D/d.log"; echo "--- engine"; cat "$D"/*.json; tail -n 5 "$D/eng.err"; fi
finish
