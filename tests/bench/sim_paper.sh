#!/usr/bin/env bash
# Reproduces the shape of the CacheFlow paper's restore experiments with cacheflow-sim on the
# h100-pcie5 profile, Llama-3.1-8B, and prints markdown tables (mean TTFT in ms per policy,
# optimal's makespan / lower bound, and optimal's speed-up over the best other policy):
#   1. TTFT vs prefix length 6k..30k, one request, prefixes over a 10 Gbps link
#   2. batches of 2, 4, 8 requests (6k..30k, all arriving together), 10 Gbps
#   3. links of 10, 40, 80 Gbps (one 16k request, and a batch of 4)
# Usage: tests/bench/sim_paper.sh [extra cacheflow-sim args, e.g. --chunk 1024]
set -eu
cd "$(dirname "$0")/../.."
SIM=${BUILD:-build}/cacheflow-sim
T=$(mktemp -d /tmp/cf-paper.XXXXXX)
trap 'rm -rf "$T"' EXIT
POLS="recompute load cake layerwise cacheflow optimal"
NEW=64

header() { # first column title
  printf '| %s |' "$1"; for p in $POLS; do printf ' %s |' "$p"; done
  printf ' optimal / bound | optimal speed-up vs best other |\n|---|'
  for p in $POLS; do printf '%s' '---:|'; done; printf -- '---:|---:|\n'
}
row() { # label, json
  jq -r --arg lab "$1" --arg pols "$POLS" '
    ($pols | split(" ")) as $n
    | [ $n[] as $p | .policies[$p].mean_ttft_s ] as $t
    | ([ $n[] | select(. != "optimal") as $p | $p ] | map(. as $p | $t[($n | index($p))]) | min) as $best
    | "| \($lab) | " + ([ $t[] | (. * 1000 * 10 | round / 10 | tostring) ] | join(" | "))
      + " | \(.policies.optimal.ratio_to_bound * 1000 | round / 1000) | \($best / .policies.optimal.mean_ttft_s * 100 | round / 100)x |"' "$2"
}
run() { # workload file, label, sim args...
  local w=$1 label=$2; shift 2
  "$SIM" --model llama-3.1-8b --workload "$w" --json "$T/o.json" "$@" >/dev/null
  row "$label" "$T/o.json"
}

echo "### 1. TTFT (ms) vs prefix length, one request, 10 Gbps (h100-pcie5 --gbps 10)"
echo
header "prefix"
for k in 6 12 18 24 30; do
  echo "{\"arrival_s\": 0, \"prefix_tokens\": $((k * 1024)), \"new_tokens\": $NEW}" > "$T/w"
  run "$T/w" "${k}k" --hw h100-pcie5 --gbps 10 "$@"
done
echo
echo "### 2. Mean TTFT (ms) of a batch arriving together (prefixes spread over 6k..30k), 10 Gbps"
echo
header "batch"
for b in 2 4 8; do
  : > "$T/w"
  for i in $(seq 0 $((b - 1))); do
    echo "{\"arrival_s\": 0, \"prefix_tokens\": $(( 6144 + i * 24576 / (b - 1) )), \"new_tokens\": $NEW}" >> "$T/w"
  done
  run "$T/w" "$b" --hw h100-pcie5 --gbps 10 "$@"
done
echo
echo "### 3. Mean TTFT (ms) vs link speed (h100-link10g/40g/80g: prefixes over a network link)"
echo
header "link, workload"
for g in 10 40 80; do
  echo "{\"arrival_s\": 0, \"prefix_tokens\": 16384, \"new_tokens\": $NEW}" > "$T/w1"
  run "$T/w1" "${g} Gbps, one 16k" --hw h100-link${g}g "$@"
  : > "$T/w4"
  for i in 0 1 2 3; do echo "{\"arrival_s\": 0, \"prefix_tokens\": $(( 6144 + i * 8192 )), \"new_tokens\": $NEW}" >> "$T/w4"; done
  run "$T/w4" "${g} Gbps, batch of 4" --hw h100-link${g}g "$@"
done
