#!/usr/bin/env bash
# cacheflow-sim end to end: the fixed JSON interface (bound_s, policies.<name>.{valid,
# makespan_s, mean_ttft_s, p99_ttft_s, ratio_to_bound}), validity, every policy >= the bound,
# optimal <= every other policy, workload files, profiles by name and path, HF config.json,
# --gbps/--tier, and bad input -> one clear line on stderr and exit 2.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
SIM=$BUILD/cacheflow-sim
cf_test_dir cf-sim-cli
POLS="recompute load cake layerwise cacheflow optimal"

# check_json FILE NAME: interface, validity, bound ordering, optimal <= the rest
check_json() {
  local j=$1 name=$2 why
  why=$(jq -r --arg pols "$POLS" '
    ($pols | split(" ")) as $names
    | [ if (.bound_s | type) != "number" or .bound_s < 0 then "bound_s missing or negative" else empty end,
        ( $names[] as $n
          | .policies[$n] as $p
          | if $p == null then "policy \($n) missing"
            elif $p.valid != true then "policy \($n) invalid"
            elif ([$p.makespan_s, $p.mean_ttft_s, $p.p99_ttft_s, $p.ratio_to_bound] | map(type == "number") | all | not)
              then "policy \($n): a field is not a number"
            elif $p.makespan_s < .bound_s then "policy \($n) below the bound"
            elif ($p.ratio_to_bound - ($p.makespan_s / (if .bound_s > 0 then .bound_s else 1 end)) | fabs) > 1e-6 and .bound_s > 0
              then "policy \($n): ratio_to_bound disagrees"
            elif $p.p99_ttft_s < $p.mean_ttft_s * 0 then "bad p99"
            elif .policies.optimal.makespan_s > $p.makespan_s then "optimal slower than \($n)"
            else empty end ) ]
    | join("; ")' "$j" 2>&1)
  if [ -z "$why" ]; then ok "$name"; else bad "$name" "$why"; fi
}

# 1. generators on every shipped profile, both models families
for hw in conf/hw/*.json; do
  name=$(basename "$hw" .json)
  for gen in multi-turn rag agentic; do
    if "$SIM" --hw "$name" --model llama-3.1-8b --gen $gen --n 12 --seed 7 --json "$T/o.json" >"$T/out.txt" 2>"$T/err.txt"; then
      check_json "$T/o.json" "gen $gen on $name"
    else bad "gen $gen on $name" "$(head -n 3 "$T/err.txt")"; fi
  done
done
for model in qwen3-8b llama-3.1-70b-tp4 llama-3.1-70b-tp8 qwen3-30b-a3b mixtral-8x7b mistral-7b-sw4096; do
  if "$SIM" --hw h100-pcie5 --model $model --gen rag --n 8 --seed 3 --rate 0 --tier net --json "$T/o.json" >/dev/null 2>"$T/err.txt"; then
    check_json "$T/o.json" "model $model, burst over the network tier"
  else bad "model $model" "$(head -n 3 "$T/err.txt")"; fi
done
if "$SIM" --hw h100-link10g --model llama-3.1-8b --gpus 4 --gen agentic --n 10 --seed 2 --rate 0 --json "$T/o.json" >/dev/null 2>"$T/err.txt"; then
  check_json "$T/o.json" "4 engines sharing a 10 Gbps link"
  [ "$(jq .n_devices "$T/o.json")" = 4 ] && [ "$(jq .shared_link "$T/o.json")" = true ] && ok "4 engines reported" || bad "4 engines reported"
else bad "4 engines" "$(head -n 3 "$T/err.txt")"; fi

# 2. a workload file, a profile by path, the table
cat > "$T/w.jsonl" <<'EOF'
{"arrival_s": 0.0, "prefix_tokens": 16384, "new_tokens": 256}
{"arrival_s": 0.0, "prefix_tokens": 6000, "new_tokens": 32}

{"arrival_s": 0.05, "prefix_tokens": 30000, "new_tokens": 1}
{"arrival_s": 0.2, "prefix_tokens": 0, "new_tokens": 100}
EOF
if "$SIM" --hw conf/hw/h100-pcie5.json --model llama-3.1-8b --workload "$T/w.jsonl" --gbps 10 --json "$T/o.json" >"$T/out.txt" 2>"$T/err.txt"; then
  check_json "$T/o.json" "workload file, profile by path"
  [ "$(jq .n_requests "$T/o.json")" = 4 ] && ok "4 requests read (blank line skipped)" || bad "4 requests read"
  jq -e '[.policies[] | (.ttft_s | length) == 4 and (((.ttft_s | add) / 4 - .mean_ttft_s) | fabs) < 1e-7 * .mean_ttft_s
          and ([.restore_s, .ttft_s] | transpose | map(.[0] <= .[1]) | all)] | all' "$T/o.json" >/dev/null \
    && ok "per-request restore_s/ttft_s agree with the means" || bad "per-request arrays"
  jq -e '.link_GBps == 1.25' "$T/o.json" >/dev/null && ok "--gbps 10 sets 1.25 GB/s" || bad "--gbps 10" "$(jq .link_GBps "$T/o.json")"
  grep -q "lower bound on makespan" "$T/out.txt" && grep -q "^optimal" "$T/out.txt" && grep -q "TTFT mean" "$T/out.txt" \
    && ok "table printed" || bad "table printed" "$(head -n 5 "$T/out.txt")"
else bad "workload file" "$(head -n 3 "$T/err.txt")"; fi

# 2b. a profile we did not ship: minimal keys, defaults for the rest
cat > "$T/hw.json" <<'EOF'
{"compute": {"gamma_ms": 0.3, "alpha_us_per_token": 1.1, "beta_ns_per_token2": 0.09},
 "tiers": {"ssd": {"GBps": 3.0, "latency_us": 90}}}
EOF
if "$SIM" --hw "$T/hw.json" --model qwen3-8b --gen rag --n 6 --rate 0 --json "$T/o.json" >/dev/null 2>"$T/err.txt"; then
  check_json "$T/o.json" "minimal custom profile"
  jq -e '.tier == "ssd" and .link_GBps == 3' "$T/o.json" >/dev/null && ok "custom profile: its only tier is the default" || bad "custom profile tier"
else bad "minimal custom profile" "$(cat "$T/err.txt")"; fi

# 3. one policy only; single long request near the bound; HF config.json
"$SIM" --hw h100-link10g --model llama-3.1-8b --workload <(echo '{"arrival_s": 0, "prefix_tokens": 20000, "new_tokens": 10}') \
  --policy cake --json "$T/o.json" >/dev/null 2>&1
[ "$(jq -c '.policies | keys' "$T/o.json" 2>/dev/null)" = '["cake"]' ] && ok "--policy cake runs only cake" || bad "--policy cake"
for hw in conf/hw/*.json; do
  "$SIM" --hw "$hw" --model llama-3.1-8b --workload <(echo '{"arrival_s": 0, "prefix_tokens": 8192, "new_tokens": 10}') \
    --policy optimal --json "$T/o.json" >/dev/null 2>&1
  r=$(jq .policies.optimal.ratio_to_bound "$T/o.json" 2>/dev/null)
  awk -v r="${r:-9}" 'BEGIN { exit !(r <= 1.05) }' && ok "single 8k request on $(basename "$hw"): optimal/bound $r" \
    || bad "single request on $(basename "$hw")" "ratio $r"
done
cfg=${CF_FIXTURES:-../shared/fixtures}/public-llama-gqa/config.json
if [ -f "$cfg" ]; then
  "$SIM" --hw h100-pcie5 --model "$cfg" --gen multi-turn --n 4 --json "$T/o.json" >/dev/null 2>"$T/err.txt" \
    && check_json "$T/o.json" "model from an HF config.json" || bad "model from config.json" "$(cat "$T/err.txt")"
fi

# 3b. generators: deterministic by seed, lengths inside their documented ranges, and a saved
# workload replays to the same results
for gen in multi-turn:512:32768:3000 rag:2048:32768:8000 agentic:8192:131072:32000; do
  IFS=: read -r g lo hi want <<<"$gen"
  "$SIM" --hw h100-pcie5 --model llama-3.1-8b --gen $g --n 200 --seed 11 --policy load --save-workload "$T/a.jsonl" >/dev/null 2>&1
  "$SIM" --hw h100-pcie5 --model llama-3.1-8b --gen $g --n 200 --seed 11 --policy load --save-workload "$T/b.jsonl" >/dev/null 2>&1
  "$SIM" --hw h100-pcie5 --model llama-3.1-8b --gen $g --n 200 --seed 12 --policy load --save-workload "$T/c.jsonl" >/dev/null 2>&1
  cmp -s "$T/a.jsonl" "$T/b.jsonl" && ! cmp -s "$T/a.jsonl" "$T/c.jsonl" && ok "gen $g: same seed, same workload" || bad "gen $g determinism"
  bad=$(jq -s --argjson lo $lo --argjson hi $hi '[.[] | select(.prefix_tokens < $lo or .prefix_tokens > $hi)] | length' "$T/a.jsonl")
  n=$(jq -s 'length' "$T/a.jsonl"); med=$(jq -s '[.[].prefix_tokens] | sort | .[100]' "$T/a.jsonl")
  mono=$(jq -s '[range(1; length) as $i | select(.[$i].arrival_s < .[$i-1].arrival_s)] | length' "$T/a.jsonl")
  [ "$n" = 200 ] && [ "$bad" = 0 ] && [ "$mono" = 0 ] && [ $((med * 10)) -gt $((want * 8)) ] && [ $((med * 10)) -lt $((want * 12)) ] && ok "gen $g: 200 requests in [$lo, $hi], median $med, arrivals sorted" \
    || bad "gen $g ranges" "n $n, $bad out of range, $mono unsorted, median $med (documented $want)"
done
"$SIM" --hw h100-link10g --model llama-3.1-8b --gen rag --n 6 --seed 4 --save-workload "$T/s.jsonl" --json "$T/g.json" >/dev/null 2>&1
"$SIM" --hw h100-link10g --model llama-3.1-8b --workload "$T/s.jsonl" --json "$T/r.json" >/dev/null 2>&1
[ "$(jq -c '[.bound_s, .policies[].makespan_s]' "$T/g.json")" = "$(jq -c '[.bound_s, .policies[].makespan_s]' "$T/r.json")" ] \
  && ok "saved workload replays identically" || bad "saved workload replay"

# 3c. the plan itself, checked independently of the simulator: every cell exactly once,
# computed iff below the staircase, staircases in [0, L], compute steps one layer high
for pol in optimal cake layerwise cacheflow; do
  "$SIM" --hw h100-link10g --model llama-3.1-8b --workload "$T/w.jsonl" --policy $pol --plan-json "$T/plan.json" >/dev/null 2>"$T/err.txt" \
    || { bad "plan-json $pol" "$(cat "$T/err.txt")"; continue; }
  why=$(jq -r '
    .n_layers as $L | .requests as $R
    | [ .ops[] | . as [$k, $r, $s, $c0, $c1, $l0, $l1]
        | range($c0; $c1) as $c | range($l0; $l1) as $l
        | {key: "\($r),\($c),\($l)", comp: ($k == "compute"), ok: (($k == "compute") == ($l < $R[$r].h[$c]))} ] as $cells
    | ([$R[] | (.h | length) * $L] | add // 0) as $total
    | [ if ($cells | length) != $total then "\($cells | length) cell ops for \($total) cells" else empty end,
        if ($cells | map(.key) | unique | length) != ($cells | length) then "a cell appears twice" else empty end,
        if ($cells | map(.ok) | all | not) then "a cell computed above or loaded below its staircase" else empty end,
        if ([$R[].h[] | select(. < 0 or . > $L)] | length) > 0 then "h out of [0, L]" else empty end,
        if ([.ops[] | select(.[0] == "compute" and .[6] != .[5] + 1)] | length) > 0 then "compute op spans layers" else empty end ]
    | join("; ")' "$T/plan.json")
  [ -z "$why" ] && ok "plan-json $pol: every cell once, staircase honoured" || bad "plan-json $pol" "$why"
done

# 3d. cross-device recompute (DESIGN.md §1 (b)) on 8 GPUs joined by NVLink: one long request
# and idle GPUs. The plan, checked independently of the simulator: every cell computed or
# loaded exactly once, loads only to the request's own GPU, every cell computed on another GPU
# sent to the request's GPU exactly once, and sends only of cells their sender computed.
echo '{"arrival_s": 0, "prefix_tokens": 131072, "new_tokens": 256}' > "$T/long.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 4096, "new_tokens": 256}' >> "$T/long.jsonl"
if "$SIM" --hw h100x8-nvlink --model llama-3.1-8b --devices 8 --workload "$T/long.jsonl" --tier ssd \
     --json "$T/nv.json" --plan-json "$T/nvplan.json" >/dev/null 2>"$T/err.txt" &&
   "$SIM" --hw h100x8-nvlink --model llama-3.1-8b --devices 8 --workload "$T/long.jsonl" --tier ssd \
     --nvlink 0 --json "$T/nonv.json" >/dev/null 2>"$T/err.txt"; then
  why=$(jq -r '
    .requests as $R
    | [ .ops[] | . as [$k, $r, $s, $c0, $c1, $l0, $l1, $dst]
        | range($c0; $c1) as $c | range($l0; $l1) as $l
        | {key: "\($r),\($c),\($l)", k: $k, s: $s, dst: $dst, own: $R[$r].device} ] as $cells
    | ($cells | map(select(.k != "send")) ) as $made
    | ($cells | map(select(.k == "send" and .dst == .own))) as $home
    | ($made | map(select(.k == "compute" and .s != .own)) | map({(.key): .s}) | add // {}) as $helped
    | [ if ($made | map(.key) | unique | length) != ($made | length) then "a cell made twice" else empty end,
        if ($made | length) != ([$R[] | (.h | length)] | add) * .n_layers then "cells missing" else empty end,
        if ($helped | length) == 0 then "no cell computed on another GPU" else empty end,
        if ($home | map(.key) | unique | length) != ($home | length) then "a cell sent home twice" else empty end,
        if ($home | map(.key) | sort) != ($helped | keys | sort) then "helped cells and cells sent home differ" else empty end,
        if ($cells | map(select(.k == "send" and $helped[.key] != .s)) | length) > 0 then "a send of a cell its sender did not compute" else empty end ]
    | join("; ")' "$T/nvplan.json")
  [ -z "$why" ] && ok "cross-device plan: cells once, help sent home once" || bad "cross-device plan" "$why"
  jq -e '.n_devices == 8 and .peer_GBps == 450 and (.policies | to_entries | all(.value.valid and .value.makespan_s >= $b))
         and (.policies.optimal.makespan_s as $o | .policies | to_entries | all(.value.makespan_s >= $o))' \
     --argjson b "$(jq .bound_s "$T/nv.json")" "$T/nv.json" >/dev/null \
    && ok "8 GPUs + NVLink: valid, >= bound, optimal fastest" || bad "8 GPUs + NVLink ordering"
  /usr/bin/python3 - "$T/nv.json" "$T/nonv.json" <<'P' && ok "cross-device help cuts the makespan >= 2x (1 x 128k, SSD tier)" || bad "cross-device help gain"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
oa, ob = a["policies"]["optimal"], b["policies"]["optimal"]
sys.exit(0 if oa["cells_helped"] > 0 and ob["cells_helped"] == 0 and ob["makespan_s"] >= 2 * oa["makespan_s"]
         and oa["ratio_to_bound"] <= 1.3 and b["peer_GBps"] == 0 else 1)
P
else
  bad "8 GPUs + NVLink" "$(cat "$T/err.txt")"
fi

# 3e. pipeline stages (DESIGN.md §1 (c)): Llama-3.1-70B as 2 stages of TP-4; each request is
# restored by both stages, the second loading the stored boundary hidden state of exactly the
# chunks it computes at its first layer; results are per request (4, not 8)
if "$SIM" --hw h100x8-nvlink --model llama-3.1-70b-tp4pp2 --workload "$T/long.jsonl" --tier ssd \
     --json "$T/pp.json" --plan-json "$T/ppplan.json" >/dev/null 2>"$T/err.txt"; then
  why=$(jq -r '
    .requests as $R
    | [ .ops[] | select(.[0] == "load" and .[5] == -1) | . as [$k, $r, $s, $c0, $c1] | range($c0; $c1) as $c | "\($r),\($c)" ] as $hid
    | [ $R | to_entries[] | .key as $r | .value.h | to_entries[] | select(.value > 0) | "\($r),\(.key)" ] as $l0
    | [ $R | to_entries[] | select(.value.device % 2 == 1) | .key ] as $late
    | [ if ($hid | unique | length) != ($hid | length) then "a hidden state loaded twice" else empty end,
        if ($hid | sort) != ($l0 | map(select((split(",")[0] | tonumber) as $r | $late | index($r))) | sort) then "hidden loads differ from the later stages layer-0 computes" else empty end,
        if ($R | length) != 4 or ([$R[].device] | sort) != [0, 0, 1, 1] then "stages not one per device" else empty end ]
    | join("; ")' "$T/ppplan.json")
  [ -z "$why" ] && ok "pipeline stages: boundary hidden states loaded exactly where computed" || bad "pipeline plan" "$why"
  jq -e '.pp_stages == 2 and .n_requests == 2 and (.policies | to_entries | all(.value.valid and .value.makespan_s >= $b and (.value.ttft_s | length) == 2))
         and (.policies.optimal.makespan_s as $o | .policies | to_entries | all(.value.makespan_s >= $o))' \
     --argjson b "$(jq .bound_s "$T/pp.json")" "$T/pp.json" >/dev/null \
    && ok "pipeline stages: valid, >= bound, optimal fastest, per-request results" || bad "pipeline ordering"
else
  bad "pipeline stages" "$(cat "$T/err.txt")"
fi

# 3b. mixed tiers: a workload naming where runs of each prefix lie (dram and ssd of h100-nvme);
# the interface is unchanged, every plan valid, >= the bound, optimal <= the rest; the ssd half
# makes the load policy slower than the same prefix all in dram; runs all in --tier give the
# numbers of a workload without "tiers" (backward compatible)
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 16384, "new_tokens": 64, "tiers": [["dram", 8192], ["ssd", 8192]]}' \
  '{"arrival_s": 0.01, "prefix_tokens": 6000, "new_tokens": 64}' > "$T/mixed.jsonl"
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 16384, "new_tokens": 64, "tiers": [["dram", 16384]]}' \
  '{"arrival_s": 0.01, "prefix_tokens": 6000, "new_tokens": 64}' > "$T/alldram.jsonl"
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 16384, "new_tokens": 64}' \
  '{"arrival_s": 0.01, "prefix_tokens": 6000, "new_tokens": 64}' > "$T/plain.jsonl"
if "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/mixed.jsonl" --json "$T/mx.json" >/dev/null 2>"$T/err.txt" &&
   "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/alldram.jsonl" --json "$T/ad.json" >/dev/null 2>&1 &&
   "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/plain.jsonl" --json "$T/pl.json" >/dev/null 2>&1; then
  check_json "$T/mx.json" "mixed dram/ssd tiers"
  jq -e '.policies.load.makespan_s' "$T/mx.json" >/dev/null &&
    [ "$(jq -n --slurpfile a "$T/mx.json" --slurpfile b "$T/pl.json" '$a[0].policies.load.makespan_s > 2 * $b[0].policies.load.makespan_s')" = true ] \
    && ok "ssd chunks load at the ssd rate" || bad "ssd chunks load at the ssd rate" "$(jq -c '.policies.load.makespan_s' "$T/mx.json" "$T/pl.json")"
  d=$(jq -n --slurpfile a "$T/ad.json" --slurpfile b "$T/pl.json" '[$a[0].policies[] .makespan_s] == [$b[0].policies[] .makespan_s] and $a[0].bound_s == $b[0].bound_s')
  [ "$d" = true ] && ok "tiers all in --tier == no tiers" || bad "tiers all in --tier == no tiers"
else bad "mixed tiers" "$(head -n 3 "$T/err.txt")"; fi

# 3c. holes: ["none", N] runs are tokens no tier holds (issue 15). Every policy's plan stays
# valid, >= the bound, optimal <= the rest; the load policy's plan computes the hole's chunks
# at every layer and loads the others; restoring around the holes is no slower than the
# longest-prefix restore (everything from the first hole on computed); a pipeline model too.
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 16384, "new_tokens": 64, "tiers": [["dram", 2048], ["none", 512], ["dram", 13824]]}' \
  '{"arrival_s": 0.01, "prefix_tokens": 8192, "new_tokens": 64, "tiers": [["none", 256], ["ssd", 4096], ["none", 1024], ["dram", 2816]]}' > "$T/holes.jsonl"
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 16384, "new_tokens": 64, "tiers": [["dram", 2048], ["none", 14336]]}' \
  '{"arrival_s": 0.01, "prefix_tokens": 8192, "new_tokens": 64, "tiers": [["none", 8192]]}' > "$T/longest.jsonl"
if "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/holes.jsonl" --json "$T/ho.json" \
     --policy load --plan-json "$T/hoplan.json" >/dev/null 2>"$T/err.txt" &&
   "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/holes.jsonl" --json "$T/ho.json" >/dev/null 2>>"$T/err.txt" &&
   "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --workload "$T/longest.jsonl" --json "$T/lo.json" >/dev/null 2>>"$T/err.txt"; then
  check_json "$T/ho.json" "holes: every policy valid, >= bound, optimal fastest"
  # chunks of 256: request 0's hole is chunks 8-9, request 1's chunks 0 and 17-20
  jq -e '.n_layers as $L | (.requests[0].h | (.[8] == $L and .[9] == $L and .[7] == 0 and .[10] == 0))
         and (.requests[1].h | (.[0] == $L and .[17] == $L and .[20] == $L and .[1] == 0 and .[21] == 0))' \
     "$T/hoplan.json" >/dev/null && ok "holes: the load policy computes exactly the holes" \
     || bad "holes: the load policy computes exactly the holes" "$(jq -c '[.requests[].h]' "$T/hoplan.json" | head -c 300)"
  r=$(jq -n --slurpfile a "$T/ho.json" --slurpfile b "$T/lo.json" '$a[0].policies.optimal.mean_ttft_s / $b[0].policies.optimal.mean_ttft_s')
  jq -n -e --argjson r "$r" '$r <= 1.000001' >/dev/null && ok "holes: TTFT ${r} x the longest-prefix restore" \
    || bad "holes: no slower than the longest prefix" "ratio $r"
else bad "holes" "$(head -n 3 "$T/err.txt")"; fi
if "$SIM" --hw h100x8-nvlink --model llama-3.1-70b-tp4pp2 --workload "$T/holes.jsonl" --json "$T/hp.json" >/dev/null 2>"$T/err.txt"; then
  check_json "$T/hp.json" "holes with pipeline stages"
else bad "holes with pipeline stages" "$(head -n 3 "$T/err.txt")"; fi

# 3d. held-out holes: random "tiers" lists with ["none", N] first, last, alone, every other chunk,
# all but the last chunk, 0 tokens, adjacent duplicates, N not a multiple of the chunk
# (tests/integration/py/holes_workload.py), chunks of 256 and of 1000 tokens: every policy valid,
# >= the bound, optimal <= the rest; the load policy computes exactly the chunks with a "none"
# token at every layer and no other (the expected holes computed by the generator itself)
for hs in "1 256" "2 1000" "3 256" "4 1000"; do
  set -- $hs
  "$PYTHON" tests/integration/py/holes_workload.py "$1" "$2" "$T/rh.exp" >"$T/rh.jsonl"
  if "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --chunk "$2" --workload "$T/rh.jsonl" --json "$T/rh.json" >/dev/null 2>"$T/err.txt" &&
     "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --chunk "$2" --workload "$T/rh.jsonl" --policy load \
       --plan-json "$T/rhplan.json" >/dev/null 2>>"$T/err.txt"; then
    check_json "$T/rh.json" "random holes (seed $1, chunk $2): every policy valid, >= bound, optimal fastest"
    why=$(jq -r --slurpfile e "$T/rh.exp" '.n_layers as $L | [range(.requests | length) as $r
            | (.requests[$r].h) as $h | ($e[0][$r]) as $x
            | range($h | length) as $c | select(($h[$c] == $L) != ($x | index($c) != null) or ($h[$c] != $L and $h[$c] != 0))
            | "request \($r) chunk \($c): h \($h[$c]), hole \($x | index($c) != null)"][:3] | join("; ")' "$T/rhplan.json")
    check "random holes (seed $1, chunk $2): load computes exactly the holes, every layer" "[ -z \"$why\" ]" "$why"
  else bad "random holes (seed $1, chunk $2)" "$(head -n 3 "$T/err.txt")"; fi
done
# 3e. optimal <= every other policy at every --refine, the analytic plan alone included (0, and
# 1..8: fewer runs than refinement starts with): random hole workloads, generated batches, several
# engines; the plan optimal returns unrefined is checked against the others' plans (cf_sched.h)
props() { # NAME ARGS...: every --refine in 0 1 2 3 5 8 and the default, each table checked
  local name=$1 why="" r; shift
  for r in 0 1 2 3 5 8 default; do
    local ra=(--refine "$r"); [ "$r" = default ] && ra=()
    if "$SIM" "$@" "${ra[@]}" --json "$T/pr.json" >/dev/null 2>"$T/err.txt"; then
      local w; w=$(check_json "$T/pr.json" x | grep -v '^  ok' || true)
      [ -n "$w" ] && why="$why refine $r: $w;"
    else why="$why refine $r: $(head -c 200 "$T/err.txt");"; fi
  done
  check "optimal <= every policy at --refine 0..8 and default: $name" "[ -z \"\$why\" ]" "$why"
}
for hs in "6 1024" "7 256" "8 1000" "9 4096" "10 512"; do
  set -- $hs
  "$PYTHON" tests/integration/py/holes_workload.py "$1" "$2" "$T/pr.exp" >"$T/pr.jsonl"
  props "holes seed $1 chunk $2" --hw h100-nvme --model llama-3.1-8b --tier dram --chunk "$2" --workload "$T/pr.jsonl"
done
for gs in "multi-turn 11 h100-pcie5" "rag 12 h100-link10g" "agentic 13 h100-nvme"; do
  set -- $gs
  props "--gen $1 seed $2 on $3" --hw "$3" --model llama-3.1-8b --gen "$1" --n 16 --seed "$2"
done
props "--gen rag, 4 engines sharing 10 Gbps" --hw h100-link10g --model llama-3.1-8b --gen rag --n 16 --seed 14 --devices 4
# --save-workload keeps the holes (and a pinned device): read back, the same numbers
echo '{"arrival_s": 0.001, "prefix_tokens": 700, "new_tokens": 9, "device": 0}' >>"$T/rh.jsonl"
if "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --chunk 1000 --workload "$T/rh.jsonl" --json "$T/rt1.json" \
     --save-workload "$T/rt.jsonl" >/dev/null 2>"$T/err.txt" &&
   "$SIM" --hw h100-nvme --model llama-3.1-8b --tier dram --chunk 1000 --workload "$T/rt.jsonl" --json "$T/rt2.json" >/dev/null 2>>"$T/err.txt"; then
  check "--save-workload round trip with holes and a device: same bound and makespans" \
    "[ \"\$(jq -c '[.bound_s, [.policies[].makespan_s]]' '$T/rt1.json')\" = \"\$(jq -c '[.bound_s, [.policies[].makespan_s]]' '$T/rt2.json')\" ] &&
     grep -q '\"none\"' '$T/rt.jsonl' && grep -q '\"device\": 0' '$T/rt.jsonl'" "$(head -c 300 "$T/rt.jsonl")"
else bad "--save-workload round trip" "$(head -n 3 "$T/err.txt")"; fi
"$PYTHON" tests/integration/py/holes_workload.py 5 4096 "$T/rh.exp" 8 >"$T/rh.jsonl"
if "$SIM" --hw h100x8-nvlink --model llama-3.1-70b-tp4pp2 --chunk 4096 --workload "$T/rh.jsonl" --json "$T/rhp.json" >/dev/null 2>"$T/err.txt"; then
  check_json "$T/rhp.json" "random holes with pipeline stages"
else bad "random holes with pipeline stages" "$(head -n 3 "$T/err.txt")"; fi

# 4. bad input: exit 2 and one line naming the problem
expect_err() { # name, expected substring, args...
  local name=$1 want=$2; shift 2
  "$SIM" "$@" >"$T/out.txt" 2>"$T/err.txt"
  local rc=$? lines
  lines=$(wc -l <"$T/err.txt")
  if [ $rc -eq 2 ] && [ "$lines" -eq 1 ] && grep -q -- "$want" "$T/err.txt"; then ok "error: $name"
  else bad "error: $name" "rc $rc, $lines lines: $(head -c 300 "$T/err.txt")"; fi
}
expect_err "unknown profile" "unknown hardware profile 'h900'" --hw h900 --model llama-3.1-8b --gen rag --n 2
expect_err "missing profile file" "no such file" --hw /nonexistent/x.json --model llama-3.1-8b --gen rag --n 2
expect_err "unknown model" "unknown model 'llama-9'" --hw h100-pcie5 --model llama-9 --gen rag --n 2
expect_err "unknown policy" "unknown policy 'fast'" --hw h100-pcie5 --model llama-3.1-8b --gen rag --n 2 --policy fast
expect_err "unknown generator" "unknown generator 'chat'" --hw h100-pcie5 --model llama-3.1-8b --gen chat --n 2
expect_err "unknown tier" "unknown tier 'tape'" --hw h100-pcie5 --model llama-3.1-8b --gen rag --n 2 --tier tape
expect_err "bad --gbps" "--gbps 'abc'" --hw h100-pcie5 --model llama-3.1-8b --gen rag --n 2 --gbps abc
echo '{"arrival_s": 0, "prefix_tokens": 100, "new_tokens": 1}' > "$T/bad1.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 100' >> "$T/bad1.jsonl"
expect_err "malformed workload line" "bad1.jsonl line 2" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/bad1.jsonl"
echo '{"arrival_s": 0, "new_tokens": 1}' > "$T/bad2.jsonl"
expect_err "workload missing key" "missing key 'prefix_tokens'" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/bad2.jsonl"
echo '{"arrival_s": -1, "prefix_tokens": 5, "new_tokens": 1}' > "$T/bad3.jsonl"
expect_err "negative arrival" "arrival_s" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/bad3.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 5.5, "new_tokens": 1}' > "$T/bad4.jsonl"
expect_err "fractional tokens" "expected an integer" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/bad4.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 512, "new_tokens": 1, "tiers": [["dram", 256], ["tape", 256]]}' > "$T/bad5.jsonl"
expect_err "unknown tier in runs" "tiers run 1" --hw h100-nvme --model llama-3.1-8b --workload "$T/bad5.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 512, "new_tokens": 1, "tiers": [["none", 600]]}' > "$T/bad5b.jsonl"
expect_err "a hole past the prefix" "tokens 1..512" --hw h100-nvme --model llama-3.1-8b --workload "$T/bad5b.jsonl"
# held-out bad runs: each error names the run and what is wrong with it
badrun() { # name, expected substring, tiers JSON
  echo "{\"arrival_s\": 0, \"prefix_tokens\": 512, \"new_tokens\": 1, \"tiers\": $3}" >"$T/badr.jsonl"
  expect_err "$1" "$2" --hw h100-nvme --model llama-3.1-8b --workload "$T/badr.jsonl"
}
badrun "negative run" "tiers run 0 (none): tokens -5 is negative" '[["none", -5], ["dram", 517]]'
badrun "unknown tier named" "tiers run 1: unknown tier 'hbm'" '[["dram", 256], ["hbm", 256]]'
badrun "fractional run" "tiers run 0 (none): tokens 256.5: expected an integer" '[["none", 256.5], ["dram", 255.5]]'
badrun "run given as a string" "tokens is a JSON string" '[["none", "512"]]'
badrun "huge run" "(none): tokens 9.99.*e+22 run past the prefix.s end" '[["none", 99999999999999999999999]]'
badrun "huge int64 run" "tokens 9223372036854775807 run past" '[["none", 9223372036854775807]]'
badrun "run of 3 items" "tiers run 0: a list of 3 items" '[["none", 256, 1], ["dram", 256]]'
badrun "tier not a string" "tiers run 0: tier is a JSON null" '[[null, 512]]'
badrun "control bytes in a tier name" "unknown tier 'a?b'" '[["a\nb", 512]]'
echo '{"arrival_s": 0, "prefix_tokens": 512, "new_tokens": 1, "tiers": [["dram", 256]]}' > "$T/bad6.jsonl"
expect_err "runs short of the prefix" "cover 256 tokens" --hw h100-nvme --model llama-3.1-8b --workload "$T/bad6.jsonl"
echo '{"arrival_s": 0, "prefix_tokens": 512, "new_tokens": 1, "tiers": [["ssd", 256], ["net", 256]]}' > "$T/bad7.jsonl"
expect_err "run in a tier the profile lacks" "has no 'net' tier" --hw "$T/hw.json" --model llama-3.1-8b --workload "$T/bad7.jsonl"
expect_err "no workload" "exactly one of --workload" --hw h100-pcie5 --model llama-3.1-8b
expect_err "too large to simulate" "too large to simulate" --hw h100-pcie5 --model llama-3.1-8b --gen agentic --n 100000
expect_err "tier not in profile" "has no 'dram' tier" --hw "$T/hw.json" --model llama-3.1-8b --gen rag --n 2 --tier dram
expect_err "TP needs GPUs" "TP degree 8" --hw h100-pcie5 --model llama-3.1-70b-tp8 --gpus 4 --gen rag --n 2
expect_err "--devices vs --gpus" "conflicts with --gpus" --hw h100x8-nvlink --model llama-3.1-70b-tp4 --devices 2 --gpus 4 --gen rag --n 2
expect_err "more devices than GPUs" "has 8 GPUs" --hw h100x8-nvlink --model llama-3.1-70b-tp4 --devices 4 --gen rag --n 2
expect_err "pipeline engine too big" "needs a multiple" --hw h100x8-nvlink --model llama-3.1-70b-tp4pp2 --gpus 4 --gen rag --n 2
expect_err "bad --nvlink" "--nvlink '-3'" --hw h100x8-nvlink --model llama-3.1-8b --devices 2 --nvlink -3 --gen rag --n 2
sed 's/"nvlink": {"GBps": 450/"nvlink": {"GBps": "fast"/' conf/hw/h100x8-nvlink.json > "$T/badnv.json"
expect_err "malformed nvlink" "nvlink.key .GBps." --hw "$T/badnv.json" --model llama-3.1-8b --devices 2 --gen rag --n 2

finish
