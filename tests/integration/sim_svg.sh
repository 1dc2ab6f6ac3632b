#!/usr/bin/env bash
# cacheflow-sim --svg: the picture of a plan read back (tests/integration/py/svg_check.py):
# well-formed XML, one box per op of the plan (--plan-json of the same run), per kind, boxes
# inside their lanes, every stream's boxes in time order and never overlapping (the simulator
# runs a stream's ops one after another), one staircase per request; text from input escaped;
# a path that cannot be written is one clear line and exit 2.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflow-sim
SIM=$BUILD/cacheflow-sim
CHECK=tests/integration/py/svg_check.py
cf_test_dir cf-sim-svg

cat > "$T/w.jsonl" <<'W'
{"arrival_s": 0.0, "prefix_tokens": 8192, "new_tokens": 256, "tiers": [["dram", 4096], ["ssd", 4096]]}
{"arrival_s": 0.0, "prefix_tokens": 4096, "new_tokens": 256}
{"arrival_s": 0.002, "prefix_tokens": 6144, "new_tokens": 256}
W

# draw NAME SIM-ARGS...: the picture and the plan of one run, compared
draw() {
  local name=$1; shift
  if ! "$SIM" "$@" --svg "$T/p.svg" --plan-json "$T/p.json" >"$T/out.txt" 2>"$T/err.txt"; then
    bad "$name" "$(head -n 3 "$T/err.txt")"; return
  fi
  if ! "$PYTHON" "$CHECK" "$T/p.svg" --serial >"$T/chk.json" 2>"$T/chk.err"; then
    bad "$name" "$(cat "$T/chk.err")"; return
  fi
  local why
  why=$(jq -r --slurpfile c "$T/chk.json" '
    ($c[0].timelines) as $t
    | [ if ($t | length) != 1 then "\($t | length) timelines, expected 1" else empty end,
        if $t[0].ops != (.ops | length) then "\($t[0].ops) op boxes, the plan has \(.ops | length) ops" else empty end,
        ( ["compute", "load", "send"][] as $k
          | ([.ops[] | select(.[0] == $k)] | length) as $n
          | if ($t[0].kinds[$k] // 0) != $n then "\($t[0].kinds[$k] // 0) \($k) boxes, the plan has \($n)" else empty end ),
        if $c[0].stairs != ([.requests | length, 64] | min) then "\($c[0].stairs) staircases, \(.requests | length) requests (at most 64 drawn)" else empty end ]
    | join("; ")' "$T/p.json")
  if [ -z "$why" ]; then ok "$name"; else bad "$name" "$why"; fi
}

draw "optimal, mixed tiers" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/w.jsonl" --chunk 1024 --policy optimal
for pol in recompute load cake layerwise cacheflow; do
  draw "$pol" --hw h100-pcie5 --model llama-3.1-8b --gen multi-turn --n 4 --seed 5 --chunk 1024 --policy $pol
done
draw "policy all draws optimal" --hw h100-link10g --model llama-3.1-8b --gen agentic --n 3 --seed 2 --chunk 2048
draw "two engines, peer help (sends)" --hw h100x8-nvlink --model llama-3.1-8b --devices 2 --gen rag --n 3 --seed 4 --chunk 2048 --policy optimal
draw "pipeline stages" --hw h100x8-nvlink --model llama-3.1-70b-tp4pp2 --gen rag --n 2 --seed 1 --chunk 4096 --policy optimal
# held-out edge cases: one token (one chunk), a prefix of 0 tokens (a plan with no op), a prefix
# stored nowhere (all holes), a 0-token "none" run, 400 requests (staircases capped, every op drawn)
echo '{"arrival_s": 0, "prefix_tokens": 1, "new_tokens": 1}' >"$T/one.jsonl"
draw "one token, load" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/one.jsonl" --policy load
echo '{"arrival_s": 0, "prefix_tokens": 0, "new_tokens": 1}' >"$T/zero.jsonl"
draw "prefix of 0 tokens: no op" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/zero.jsonl" --policy optimal
printf '%s\n' '{"arrival_s": 0, "prefix_tokens": 4096, "new_tokens": 16, "tiers": [["none", 0], ["none", 4096]]}' \
  '{"arrival_s": 0, "prefix_tokens": 1000, "new_tokens": 16, "tiers": [["dram", 999], ["none", 1]]}' >"$T/holes.jsonl"
draw "all holes and a last-token hole" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/holes.jsonl" --chunk 256 --policy optimal
draw "400 requests" --hw h100-pcie5 --model llama-3.1-8b --gen rag --n 400 --seed 3 --chunk 2048 --policy load

# the bound line and the makespan line are drawn, at the numbers the table prints
"$SIM" --hw h100-pcie5 --model llama-3.1-8b --workload "$T/w.jsonl" --chunk 1024 --policy optimal --svg "$T/b.svg" --json "$T/b.json" >/dev/null 2>&1
check "bound line drawn" "grep -q 'class=\"bound\"' '$T/b.svg' && grep -q 'class=\"end\"' '$T/b.svg'"

# text from input is escaped: the model's name is its config.json path, here one with & < " '
cfg=${CF_FIXTURES:-../shared/fixtures}/public-llama-gqa/config.json
if [ -f "$cfg" ]; then
  d="$T/a&b<c\"d'e"
  mkdir -p "$d" && cp "$cfg" "$d/config.json"
  if "$SIM" --hw h100-pcie5 --model "$d/config.json" --gen rag --n 2 --chunk 2048 --policy load --svg "$T/e.svg" >/dev/null 2>"$T/e.err"; then
    check "input text with & < \" ' escaped: well-formed" "'$PYTHON' '$CHECK' '$T/e.svg' --serial >/dev/null"
    check "the escaped name is in the picture" "grep -q 'a&amp;b&lt;c&quot;d&apos;e' '$T/e.svg'"
  else bad "escaped input text" "$(head -n 2 "$T/e.err")"; fi
  # a path that is not UTF-8 (Latin-1 e-acute): the picture stays well-formed (U+FFFD in its place)
  d="$T/lat$(printf '\xe9')n"
  mkdir -p "$d" && cp "$cfg" "$d/config.json"
  "$SIM" --hw h100-pcie5 --model "$d/config.json" --gen rag --n 2 --chunk 2048 --policy load --svg "$T/l.svg" >/dev/null 2>"$T/l.err"
  check "input text not UTF-8: well-formed" "'$PYTHON' '$CHECK' '$T/l.svg' --serial >/dev/null" "$(cat "$T/l.err")"
else skip "escaped input text" "no fixture config.json ($cfg)"; fi

# an unwritable path: exit 2, one line naming it
"$SIM" --hw h100-pcie5 --model llama-3.1-8b --gen rag --n 2 --policy load --svg /nonexistent/dir/x.svg >/dev/null 2>"$T/u.err"
rc=$?
check "unwritable --svg: exit 2 naming it" "[ $rc -eq 2 ] && grep -q '/nonexistent/dir/x.svg' '$T/u.err' && [ \$(wc -l < '$T/u.err') -eq 1 ]" "rc $rc: $(cat "$T/u.err")"

finish
