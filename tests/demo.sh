#!/usr/bin/env bash
# make demo: the model engine on a generated demo model, CPU backend.
#   1. generate the demo checkpoint (8 layers, hidden 512, 8/2 heads, vocab 32000) into
#      $BUILD/demo-model unless it is there already (deterministic: seed 0);
#   2. compute the KV of a 4096-token random prefix whole, and chunk by chunk (256) through
#      the same primitive a restoration plan uses;
#   3. compare the two (max relative error per tensor) and print the tokens/s of each.
set -euo pipefail
BUILD=${BUILD:-build}
CTL=$BUILD/cacheflowctl
MODEL=$BUILD/demo-model
OUT=$BUILD/demo-out
T=${DEMO_TOKENS:-4096}
mkdir -p "$OUT"

if [ ! -f "$MODEL/config.json" ] || [ ! -f "$MODEL/model.safetensors" ]; then
  "$CTL" gen-model --out "$MODEL" --preset demo --seed 0
else
  echo "demo: using the demo model in $MODEL"
fi

# A deterministic random prefix of T token ids in [0, 32000).
awk -v n="$T" 'BEGIN { srand(42); for (i = 0; i < n; i++) printf "%d%s", int(rand() * 32000), (i % 16 == 15 ? "\n" : " ") }' >"$OUT/tokens.txt"

"$CTL" kv --model "$MODEL" --tokens "$OUT/tokens.txt" --out "$OUT/kv-whole.safetensors" --backend cpu
"$CTL" kv --model "$MODEL" --tokens "$OUT/tokens.txt" --out "$OUT/kv-chunk256.safetensors" --backend cpu --chunk 256
echo -n "demo: chunked vs whole: "
"$CTL" kv-compare "$OUT/kv-chunk256.safetensors" "$OUT/kv-whole.safetensors" --tol 1e-5
echo "demo: done (outputs in $OUT)"
