#!/usr/bin/env bash
# Held-out model shapes and prefix lengths end to end on the REAL daemon (CPU backend): models
# written by `cacheflowctl gen-model` in shapes our fixtures do not have (MHA, one KV head,
# head_dim != hidden/heads, 1 and odd layer counts, tied embeddings, qwen2 q/k/v biases, llama3
# RoPE, F16/BF16, shards, a window below a chunk and one not a multiple of it, mixed layer_types,
# MoE top-1 and top-k = experts). For each shape, with chunks of C = 16 tokens:
#   cf-refengine saves a prefix of 6 chunks + 5 tokens (one shape with C = 24, not a multiple of
#   the engine's 16-token blocks); two chunks are evicted (LRU: the oldest,
#   0 and 1) and chunk 0 saved again, so Lookup sees "cpu:16 none:16 cpu:64 ..." (a hole); then
#   the prefix is restored with recompute, load and cacheflow: loaded cells bit-exact, computed
#   cells within 1e-4 of the engine's own prefill, first-token logits as a scratch prefill's,
#   PlanSummary.hole_chunks = 1.
# Prefix lengths (on LEN_SHAPES' daemons): 1, C-1, C, C+1 (on a window-1 model a whole-chunk prefix
# has every cell skipped: nothing to load or compute, the restore must still complete), past max_position_embeddings
# (the llama3 shape has --max-pos 64: computed as transformers does, RoPE at any position), a
# restore after present_tokens ending mid-block, a strict prefix of a stored one (its full
# chunks load, the rest is computed), one diverging from a
# stored one mid-chunk (only the chunks before the divergence load), and 0 tokens (Save, Lookup and
# Restore refused, naming token_ids); the daemon keeps serving after each.
# CF_SHAPES_FULL=1 runs more shapes and all six policies (a few minutes: `make bench-shapes`);
# CF_SHAPES='name|gen-model args;...' runs the given shapes instead; CF_SHAPES_CHUNK sets C,
# CF_SHAPES_KV_DTYPE the daemon's kv_dtype (bf16, f16).
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-shapes TERM
C0=${CF_SHAPES_CHUNK:-16}

SHAPES=(
  "mha-odd|--arch llama --layers 3 --heads 4 --kv-heads 4"
  "kv1-1layer-tied-f16|--arch llama --layers 1 --heads 4 --kv-heads 1 --tie 1 --dtype f16"
  "qwen3-hd24|--arch qwen3 --layers 3 --heads 4 --kv-heads 2 --head-dim 24 --norm-jitter 0.1"
  "qwen2-bias-bf16-sharded|--arch qwen2 --layers 2 --heads 8 --kv-heads 2 --dtype bf16 --shards 3"
  "llama3-rope-maxpos64|--arch llama --layers 2 --rope-type llama3 --rope-factor 8 --rope-orig-max-pos 32 --rope-theta 500000 --max-pos 64"
  "mistral-window5|--arch mistral --layers 2 --window 5"
  "qwen3-window20-mixed|--arch qwen3 --layers 3 --window 20 --layer-types sliding,full,sliding"
  "qwen3moe-top1|--arch qwen3_moe --layers 2 --experts 4 --top-k 1 --norm-topk 0 --moe-intermediate 32"
  "mixtral-topall-window24|--arch mixtral --layers 2 --experts 3 --top-k 3 --window 24 --intermediate 64"
  "mistral-window1|--arch mistral --layers 2 --window 1"
  "mistral-window5-chunk24|--arch mistral --layers 2 --window 5|24"
)
# the shapes that also run the prefix-length checks (every shape under CF_SHAPES)
LEN_SHAPES=" mha-odd kv1-1layer-tied-f16 qwen3-hd24 llama3-rope-maxpos64 mistral-window1 "
POLICIES="recompute load cacheflow"
# CF_SHAPES='name|gen-model args;name|args': these shapes instead (a held-out shape to try)
if [ -n "${CF_SHAPES:-}" ]; then IFS=';' read -r -a SHAPES <<<"$CF_SHAPES"; LEN_SHAPES=all; fi
if [ -n "${CF_SHAPES_FULL:-}" ]; then
  POLICIES="recompute load cake layerwise cacheflow optimal"
  SHAPES+=(
    "mha-5layers-hd32|--arch llama --layers 5 --hidden 96 --heads 3 --kv-heads 3 --head-dim 32"
    "mistral-hd-wide-window33|--arch mistral --layers 3 --heads 2 --kv-heads 1 --head-dim 64 --window 33 --dtype bf16"
    "qwen2-1layer-window16-f16|--arch qwen2 --layers 1 --heads 4 --kv-heads 4 --window 16 --dtype f16 --tie 1"
    "qwen3moe-window9-topall|--arch qwen3_moe --layers 3 --experts 2 --top-k 2 --window 9 --shards 4"
    "mixtral-top1-linear|--arch mixtral --layers 1 --experts 5 --top-k 1 --rope-type linear --rope-factor 4"
    "llama-bias-demo-width|--arch llama --layers 2 --hidden 512 --heads 8 --kv-heads 8 --attention-bias 1 --mlp-bias 1 --vocab 1000"
    "qwen3-layers7-kv1|--arch qwen3 --layers 7 --heads 8 --kv-heads 1 --head-dim 8 --hidden 32 --rope-theta 1000000"
  )
fi

# pycheck SOCK CHECK-NAME: Save, Lookup and Restore of 0 tokens refused naming token_ids, the
# daemon still serving (the Python client: cf-refengine and cacheflowctl refuse an empty prefix
# themselves)
pycheck_empty() {
  "$PYTHON" - "$1" "$2" <<'PY'
import os, sys
sys.path.insert(0, os.path.join("lib", "client", "python")); sys.path.insert(0, os.path.join(os.environ.get("BUILD", "build"), "py"))
from cacheflow_client import CacheFlowError, Client
sock, tmp = sys.argv[1], sys.argv[2]
c = Client("unix:" + sock, timeout=30)
eng = c.register_shm(os.path.join(tmp, "empty.kv"), block_size=16, num_blocks=8)
bad = []
for what, fn in (("save", lambda: c.save(eng, [], [])), ("lookup", lambda: c.lookup(eng, [])),
                 ("restore", lambda: list(c.restore(eng, [], [])))):
    try:
        fn(); bad.append(f"{what}: accepted")
    except CacheFlowError as e:
        if e.code.name != "INVALID_ARGUMENT" or "token_ids is empty" not in e.details:
            bad.append(f"{what}: {e.code.name} {e.details}")
c.unregister(eng)
if c.health() != "SERVING": bad.append("not serving")
print("; ".join(bad) or "ok")
PY
}

# runs JSON: the Lookup runs the restore's prefill line reported
runs() { jq -r -s '[.[] | select(.mode=="prefill") | .lookup_runs][0]' "$1"; }
# restored FILE: every session/concurrent line ok, logits as a scratch prefill's, no bad cell,
# every loaded cell bit-exact (cells of C tokens verified per 16-token block)
# (a chunk of C tokens not a multiple of 16 shares blocks with its neighbours: loaded cells are
# then only known within 1e-4 from the block counts)
restored() {
  [ "$(jq -s --argjson C $C '[.[] | select(.mode=="session") | .ok and .logits_match == 1 and .bad == 0
        and (.exact * 16 >= (.cells_cpu + .cells_ssd) * $C or $C % 16 != 0)] | (length > 0 and all)' "$1")" = true ]
}
# close FILE: as restored, but loaded cells only within 1e-4: for a restore whose reference is the
# engine's prefill of another length than the one that saved the chunks (the CPU backend's KV bits
# depend on the prefill length through sgemm blocking; both are within 1e-4 of transformers)
close() {
  [ "$(jq -s '[.[] | select(.mode=="session") | .ok and .logits_match == 1 and .bad == 0] | (length > 0 and all)' "$1")" = true ]
}
field() { jq -s -r --arg f "$2" '[.[] | select(.mode=="session") | .[$f]][0]' "$1"; }
# stored FILE: cells of the restore's stored chunks (load policy: loaded, or skipped where a window
# needs none of them)
stored_cells() { jq -s -r '[.[] | select(.mode=="session") | .cells_cpu + .skipped][0]' "$1"; }

i=0
for entry in "${SHAPES[@]}"; do
  i=$((i + 1))
  # NAME|GEN-MODEL ARGS[|CHUNK]: a chunk of 24 tokens is not a multiple of the engine's 16-token
  # blocks (a block holds the tail of one chunk and the head of the next)
  name=${entry%%|*}; args=${entry#*|}; C=$C0
  case $args in *\|*) C=${args##*|}; args=${args%|*} ;; esac
  PRE=$((6 * C + 5))
  D="$T/s$i"; mkdir -p "$D"
  if ! "$BUILD/cacheflowctl" gen-model --out "$D/model" --preset tiny --seed $i $args >"$D/gen.log" 2>&1; then
    bad "$name: gen-model $args" "$(cat "$D/gen.log")"; continue
  fi
  L=$(jq .num_hidden_layers "$D/model/config.json")
  cf_daemon_conf "$D/d.conf" "$D" 64M 0 $C info
  echo "eviction = lru" >>"$D/d.conf"
  [ -n "${CF_SHAPES_KV_DTYPE:-}" ] && echo "kv_dtype = $CF_SHAPES_KV_DTYPE" >>"$D/d.conf"
  check "$name: daemon starts" "cf_daemon_start '$D/d.conf' '$D/model' '$D/d.log'" || { tail -3 "$D/d.log"; continue; }
  ENG="$BUILD/cf-refengine --daemon unix:$D/d.sock --model $D/model --shm-dir $D --block 16 --new 5"
  SEED=$((100 + i))
  # A: saved whole; its first chunk restored (loaded: the most recent chunk now), then the least
  # recent chunk evicted: chunk 1, a hole between stored chunks
  $ENG --prefix $PRE --turns 0 --seed $SEED >"$D/a.json" 2>"$D/a.err"
  check "$name: prefix of $PRE tokens saved" "[ \"\$(jq -r .saved_tokens $D/a.json)\" = $PRE ]" "$(cat "$D/a.err")"
  $ENG --prefix $C --turns 1 --seed $SEED --no-save-first --no-save-turns --policy load >"$D/a0.json" 2>"$D/a0.err"
  "$BUILD/cacheflowctl" evict --tier cpu --bytes 1 >/dev/null
  for pol in $POLICIES; do
    out="$D/$pol.json"
    $ENG --prefix $PRE --turns 1 --seed $SEED --no-save-first --no-save-turns --verify --policy $pol >"$out" 2>"$D/$pol.err"
    rc=$?
    check "$name $pol: exit 0, loaded cells bit-exact, computed within 1e-4, logits as a scratch prefill" \
      "[ $rc -eq 0 ] && restored $out" "$(tail -3 "$D/$pol.err"; jq -c 'select(.mode=="session")' "$out")"
    want="cpu:$C none:$C cpu:$((4 * C)) none:15"
    [ $pol = recompute ] && check "$name: Lookup runs '$want' (got '$(runs "$out")')" "[ \"\$(runs $out)\" = '$want' ]"
    check "$name $pol: hole_chunks 1" "[ \"\$(field $out hole_chunks)\" = 1 ]"
    [ $pol = load ] && check "$name load: the 5 stored chunks loaded ($((5 * L)) cells less skipped ones)" \
      "[ \"\$(stored_cells $out)\" -ge $((5 * L)) ]"
  done
  # prefix lengths on this daemon (the first shapes; the llama3 one goes past max_position_embeddings)
  if [ "$LEN_SHAPES" = all ] || [[ "$LEN_SHAPES" == *" $name "* ]]; then
    for n in 1 $((C - 1)) $C $((C + 1)); do
      out="$D/len$n.json"
      $ENG --prefix $n --turns 1 --seed $((SEED + 50 + n)) --verify --policy load >"$out" 2>"$D/len$n.err"
      check "$name: prefix $n saved and restored exactly" "[ $? -eq 0 ] && restored $out" "$(tail -3 "$D/len$n.err")"
    done
    # the engine holds the first 2.5 chunks itself (present_tokens, as vLLM's prefix cache):
    # restored from there, two turns (a windowed model leaves the skipped rows after them unwritten)
    out="$D/present.json"
    $ENG --prefix $PRE --present $((2 * C + C / 2)) --turns 2 --seed $((SEED + 200)) --verify --policy cacheflow >"$out" 2>"$D/present.err"
    check "$name: present_tokens $((2 * C + C / 2)) (mid-block), 2 turns restored exactly" "[ $? -eq 0 ] && restored $out" \
      "$(tail -3 "$D/present.err"; jq -c 'select(.mode=="session")' "$out")"
    # a strict prefix of A (2.5 chunks): A's chunk 0 and 2.. are stored, 1 is the hole
    out="$D/strict.json"
    $ENG --prefix $((2 * C + C / 2)) --turns 1 --seed $SEED --no-save-first --no-save-turns --verify --policy load >"$out" 2>"$D/strict.err"
    check "$name: strict prefix ($((2 * C + C / 2)) of A's $PRE tokens) restored exactly, chunk 0 loaded ($L cells), the rest computed" \
      "[ $? -eq 0 ] && close $out && [ \"\$(stored_cells $out)\" = $L ]" "$(tail -3 "$D/strict.err"; jq -c 'select(.mode=="session")' "$out")"
    # diverging from A mid chunk 4: chunks 0, 2, 3 match A's, chunk 4 must not load
    out="$D/diverge.json"
    want="cpu:$C none:$C cpu:$((2 * C)) none:$((2 * C + 15))"
    $ENG --prefix $PRE --shared $((4 * C + C / 2)) --shared-seed $SEED --turns 1 --seed $((SEED + 7)) --no-save-first --no-save-turns --verify \
      --policy load >"$out" 2>"$D/diverge.err"
    check "$name: diverging mid-chunk from a stored prefix: Lookup runs '$want' (got '$(runs "$out")')" "[ \"\$(runs $out)\" = '$want' ]"
    check "$name: ... restored exactly, only the 3 matching chunks loaded ($((3 * L)) cells)" \
      "close $out && [ \"\$(stored_cells $out)\" = $((3 * L)) ]" "$(tail -3 "$D/diverge.err"; jq -c 'select(.mode=="session")' "$out")"
  fi
  if [ "$name" = llama3-rope-maxpos64 ]; then
    check "$name: prefix $PRE > max_position_embeddings 64 restored (RoPE at any position, as transformers)" \
      "restored $D/load.json"
  fi
  if [ $i -eq 1 ]; then
    r=$(pycheck_empty "$D/d.sock" "$D" 2>&1)
    check "$name: 0 tokens: Save, Lookup, Restore refused (INVALID_ARGUMENT naming token_ids), still serving" "[ \"$r\" = ok ]" "$r"
  fi
  check "$name: still serving, exits 0 on SIGTERM" \
    "\"$BUILD/cacheflowctl\" status >/dev/null && cf_daemon_stop TERM" "$(tail -5 "$D/d.log")"
done
finish
