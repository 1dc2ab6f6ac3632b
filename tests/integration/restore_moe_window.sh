#!/usr/bin/env bash
# Mixture-of-experts and sliding-window models through the REAL daemon and reference engine
# (build/cf-refengine), on the transformers-made checkpoints: public-qwen3-moe (8 experts,
# top-2), public-mistral-window (window 32, far shorter than the 256-token prefixes) and the
# held-out checkpoints under tests/fixtures/ (mixtral-window, qwen3moe-dense, qwen3moe-window:
# use_sliding_window with a 20-key window on every layer, dense layers among MoE). For each:
#   `cacheflowctl kv` whole and --chunk 7 equals its kv.safetensors (max rel err <= 1e-4);
#   the daemon starts on it (its fingerprint logged) and restores with every policy over a
#   2-turn session plus concurrent restores: computed cells within 1e-4 of the engine's own
#   prefill, loaded cells bit-exact, first-token logits equal a scratch prefill.
# Then variants the engine cannot reproduce (shared experts; a qwen3_moe layer_types mixing
# full and sliding layers, which transformers does not read) are refused naming the key.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-moe KILL

models=()
for d in "$CF_FIXTURES/public-qwen3-moe" "$CF_FIXTURES/public-mistral-window" tests/fixtures/mixtral-* tests/fixtures/qwen3moe-*; do
  [ -f "$d/kv.safetensors" ] && models+=("$d")
done
[ ${#models[@]} -gt 0 ] || cf_skip_all "no MoE / window fixtures found"

C=32
i=0
for M in "${models[@]}"; do
  name=$(basename "$M")
  for opt in "" "--chunk 7"; do
    "$BUILD/cacheflowctl" kv --model "$M" --tokens "$M/kv.safetensors" --out "$T/kv.safetensors" $opt --quiet 2>"$T/kv.err"
    check "$name: cacheflowctl kv ${opt:-whole} runs" "[ $? -eq 0 ]"
    check "$name: cacheflowctl kv ${opt:-whole} equals transformers (1e-4)" \
      "'$BUILD/cacheflowctl' kv-compare '$T/kv.safetensors' '$M/kv.safetensors' --tol 1e-4 >/dev/null"
  done
  i=$((i+1))
  D="$T/d$i"; mkdir -p "$D"
  cf_daemon_conf "$D/d.conf" "$D" 64M 128M $C info
  check "$name: daemon starts" "cf_daemon_start '$D/d.conf' '$M' '$D/d.log'"
  check "$name: fingerprint logged" "grep -q 'fingerprint=[0-9a-f]\{32\}' '$D/d.log'"
  ENG="$BUILD/cf-refengine --daemon unix:$D/d.sock --model $M --shm-dir $D --block 16"
  seed=20
  for pol in recompute load cake layerwise cacheflow optimal; do
    out="$D/$pol.json"
    seed=$((seed+1))
    $ENG --policy $pol --prefix 256 --new 16 --turns 2 --concurrent 3 --verify --seed $seed >"$out" 2>"$D/$pol.err"
    rc=$?
    check "$name $pol: engine exit 0 (restores ok, logits match, no bad cell)" "[ $rc -eq 0 ]"
    check "$name $pol: 5 restores reported" "[ \"\$(jq -s '[.[] | select(.mode==\"session\" or .mode==\"concurrent\")] | length' $out)\" = 5 ]"
    check "$name $pol: no cell off by more than 1e-4" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .bad] | add' $out)\" = 0 ]"
    check "$name $pol: loaded cells bit-exact" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.exact*16 < (.cells_cpu+.cells_ssd)*$C)] | length' $out)\" = 0 ]"
    check "$name $pol: first-token logits match a scratch prefill" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .logits_match] | min' $out)\" = 1 ]"
    case $pol in
      load) check "$name load: cells were loaded" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .cells_cpu] | add' $out)\" -gt 0 ]";;
      recompute) check "$name recompute: cells were computed" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .cells_computed] | add' $out)\" -gt 0 ]";;
    esac
  done
  cf_daemon_stop; rc=$?
  check "$name: SIGTERM, daemon exits 0 (no sanitizer report)" "[ $rc -eq 0 ]"
  if [ $F -ne 0 ]; then echo "--- $name daemon log"; tail -n 20 "$D/d.log"; for f in "$D"/*.err; do [ -s "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }; done; fi
done

# A variant the engine cannot reproduce: refused at start naming the key, not served.
mkdir -p "$T/shared-experts"
cp "${models[0]}"/config.json "${models[0]}"/model.safetensors "$T/shared-experts/"
sed -i 's/"hidden_act"/"shared_expert_intermediate_size": 64, "hidden_act"/' "$T/shared-experts/config.json"
cf_daemon_conf "$T/r.conf" "$T" 64M 128M $C info
"$BUILD/cacheflowd" --config "$T/r.conf" --model "$T/shared-experts" >"$T/r.log" 2>&1
check "shared experts: daemon refuses to start" "[ $? -ne 0 ]"
check "shared experts: the error names the key" "grep -q \"key 'shared_expert_intermediate_size' is set: shared experts are not supported\" '$T/r.log'"

# qwen3_moe windows every layer when use_sliding_window is set; a layer_types that says some
# layers are full is not what transformers computes, so it is refused rather than guessed.
W=tests/fixtures/qwen3moe-window
if [ -f "$W/config.json" ]; then
  mkdir -p "$T/mixed-types"
  cp "$W/config.json" "$W/model.safetensors" "$T/mixed-types/"
  sed -i 's/"hidden_act"/"layer_types": ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"], "hidden_act"/' "$T/mixed-types/config.json"
  "$BUILD/cacheflowd" --config "$T/r.conf" --model "$T/mixed-types" >"$T/m.log" 2>&1
  check "qwen3_moe mixed layer_types: daemon refuses to start" "[ $? -ne 0 ]"
  check "qwen3_moe mixed layer_types: the error names the key" "grep -q \"layer_types mixes full and sliding attention, but transformers' qwen3_moe reads no layer_types\" '$T/m.log'"
fi
finish
