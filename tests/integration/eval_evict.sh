#!/usr/bin/env bash
# The eviction evaluation (issue 15.3) end to end at a tiny scale: every workload family replays
# for every policy at every capacity (a row each, hit ratios in range, TTFT positive, no plan
# that loads an absent chunk: the binary exits 1 on that or on a store over its caps), no row
# keeping more value than the weighted-paging optimum the vbelady line states as the most any
# eviction choice can keep (so that optimum is at least feasible-consistent), the same
# seed gives the same table, another seed another trace, both lookups run, and bad options get
# one clear line and exit 2; the online reference row bayes and each of its ablation forms run with
# valid plans. Asserts behaviour, not which policy wins (that is the README's table).
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
EV=$BUILD/bench/bench_eval_evict
cf_test_dir cf-eval-evict
[ -x "$EV" ] || cf_skip_all "$EV not built"

rows_ok() { # FILE CAPS [POLICIES]: one row per capacity for each policy and reference row (lru,
  # s3fifo, cost, ssd-all, belady, vbelady, bayes), 0 <= cpu_hit <= hit <= 100, mean and p99 TTFT > 0
  awk -v caps="$2" -v pols="${3:-lru s3fifo cost ssd-all belady vbelady bayes}" '
    /^#/ || /^capacity/ { next }
    { n++; seen[$1 " " $2]++; h = $5; c = $6; sub("%", "", h); sub("%", "", c); h += 0; c += 0
      if ($3 + 0 <= 0 || $4 + 0 <= 0 || h < 0 || h > 100 || c < 0 || c > h + 1e-9) { print "bad row: " $0; bad = 1 } }
    END { k = split(caps, a, ","); np = split(pols, p, " ")
          if (n != k * np) { print n " rows, want " k * np; bad = 1 }
          for (i = 1; i <= k; i++) for (j = 1; j <= np; j++) {
            key = sprintf("%g%% %s", a[i] * 100, p[j])
            if (seen[key] != 1) { print "no single row for " key; bad = 1 } }
          exit bad }' "$1"
}

bound_ok() { # FILE: a value line per capacity naming vbelady's form; no row's value above the bound
  awk '/^# [0-9.]+%: vbelady is / { n++
      if ($5 !~ /^(exp:[0-9.]+|flow|live);$/) { print "no form: " $0; bad = 1 }
      s = $0; sub(/.*at most /, "", s); b = s + 0
      t = $0; sub(/^.*held locally\):/, "", t); sub(/;.*/, "", t); k = split(t, f, " ")
      if (k != 18 || b <= 0) { print "not 6 rows and a bound: " $0; bad = 1 }
      for (i = 2; i <= k; i += 3) if (f[i] + 0 > b + 0.05) { print f[i - 1] " keeps " f[i] " > bound " b; bad = 1 } }
    END { if (!n) { print "no value lines"; bad = 1 } exit bad }' "$1"
}

for w in chat agentic rag; do
  if "$EV" --workload "$w" --scale 0.03 --caps 0.1,0.5 --seed 3 --dir "$T" >"$T/$w.txt" 2>"$T/$w.err"; then
    why=$(rows_ok "$T/$w.txt" 0.1,0.5) && ok "$w: a row per policy and capacity" || bad "$w rows" "$why"
    why=$(bound_ok "$T/$w.txt") && ok "$w: no row keeps more value than the optimum" || bad "$w bound" "$why"
  else bad "$w runs" "$(head -n 5 "$T/$w.err")"; fi
done
"$EV" --workload rag --scale 0.03 --caps 0.1,0.5 --seed 3 --dir "$T" >"$T/again.txt" 2>/dev/null
check "same seed, same table" "cmp -s '$T/rag.txt' '$T/again.txt'"
"$EV" --workload rag --scale 0.03 --caps 0.1 --seed 4 --policies cost --dir "$T" >"$T/seed4.txt" 2>/dev/null
check "another seed, another trace" "! cmp -s <(head -n 1 '$T/rag.txt') <(head -n 1 '$T/seed4.txt')"
if "$EV" --workload chat --scale 0.03 --caps 0.2 --lookup prefix --remote --dir "$T" >"$T/prefix.txt" 2>"$T/prefix.err"; then
  why=$(rows_ok "$T/prefix.txt" 0.2) && ok "prefix lookup with the remote tier" || bad "prefix rows" "$why"
else bad "prefix lookup runs" "$(head -n 5 "$T/prefix.err")"; fi
# the reference rows with promotion on read (issue 15: never worse against LRU / S3-FIFO promoting
# too), at an extreme capacity each way, and the line comparing cost with the best of all four
if "$EV" --workload agentic --scale 0.03 --caps 0.01,1 --policies lru,s3fifo,cost,lru+promote,s3fifo+promote \
     --dir "$T" >"$T/promote.txt" 2>"$T/promote.err"; then
  why=$(rows_ok "$T/promote.txt" 0.01,1 "lru s3fifo cost lru+promote s3fifo+promote") &&
    [ "$(grep -c '^# .*: cost against the best of lru / s3fifo with and without promotion on read: [0-9.]*x$' "$T/promote.txt")" = 2 ] &&
    ok "lru+promote and s3fifo+promote rows at 1% and 100%" || bad "promote rows" "$why"
else bad "promote rows run" "$(head -n 5 "$T/promote.err")"; fi

# bayes, the online reference row: each of its forms runs (valid plans: the binary exits 1 on a plan
# that loads an absent chunk) and says which form it is
for f in nolive nocont exact nopop:1 nopop-exact nostruct nostruct-aged; do
  w=chat; case $f in nop* | nos*) w=rag ;; esac
  if "$EV" --workload $w --scale 0.03 --caps 0.1 --policies lru,bayes --bayes $f --dir "$T" >"$T/b.txt" 2>"$T/b.err"; then
    why=$(rows_ok "$T/b.txt" 0.1 "lru bayes") && grep -q "^# bayes: form ${f%%:*}," "$T/b.txt" && ok "bayes $f on $w" ||
      bad "bayes $f rows" "$why $(head -n 3 "$T/b.txt")"
  else bad "bayes $f runs" "$(head -n 5 "$T/b.err")"; fi
done

expect_err() { # NAME PATTERN ARGS...: exit 2, one line naming the problem
  local name=$1 pat=$2; shift 2
  "$EV" "$@" >/dev/null 2>"$T/e.txt"; local rc=$?
  if [ $rc -eq 2 ] && grep -q -- "$pat" "$T/e.txt"; then ok "$name"; else bad "$name" "exit $rc: $(cat "$T/e.txt")"; fi
}
expect_err "unknown workload" "--workload video" --workload video
expect_err "bad lookup" "--lookup sometimes" --lookup sometimes
expect_err "mixed with bayes (one family's model)" "drop it from --policies" --workload mixed --policies lru,bayes
expect_err "bad scale" "--scale must be" --scale 0
expect_err "unknown option" "unknown option --fast" --fast 1
expect_err "bad capacity" "--caps .abc." --scale 0.03 --caps 0.1,abc
expect_err "bad vbelady form" "--vbelady exp:0" --vbelady exp:0
expect_err "bad bayes form" "--bayes psychic" --bayes psychic
expect_err "bad bayes tau" "--bayes full:0" --bayes full:0
# held-out option values: each named, before any replay runs
expect_err "seed not a number" "--seed 'abc'" --seed abc
expect_err "negative seed" "--seed '-1'" --seed -1
expect_err "seed past 2^64" "--seed '18446744073709551616'" --seed 18446744073709551616
expect_err "scale with junk" "--scale must be .*'0.25x'" --scale 0.25x
expect_err "infinite scale" "--scale must be .*'inf'" --scale inf
expect_err "no capacity" "--caps '': no capacity" --caps ""
expect_err "capacity over 10x" "--caps '11'" --caps 0.1,11
expect_err "capacity holding no chunk" "holds no chunk" --scale 0.03 --caps 1e-9
expect_err "unknown policy" "unknown policy 'lfu'" --policies lru,lfu
expect_err "no policy" "no policy named" --policies ,
# capacities as percentages, 1% and 100%: a row each
if "$EV" --workload chat --scale 0.03 --caps 1%,100% --policies lru,cost --dir "$T" >"$T/pct.txt" 2>"$T/pct.err"; then
  why=$(rows_ok "$T/pct.txt" 0.01,1 "lru cost") && ok "capacities 1% and 100% (percent form)" || bad "percent rows" "$why"
else bad "capacities 1% and 100% run" "$(head -n 3 "$T/pct.err")"; fi
# --workload mixed: chat, agentic, rag back to back in one store; a row per capacity and policy,
# and a line per capacity giving each family's mean TTFT for each row
if "$EV" --workload mixed --scale 0.01 --caps 0.05,0.25 --policies lru,s3fifo,cost --dir "$T" >"$T/mix.txt" 2>"$T/mix.err"; then
  why=$(rows_ok "$T/mix.txt" 0.05,0.25 "lru s3fifo cost") && ok "mixed workload rows" || bad "mixed rows" "$why"
  check "mixed workload: each family's mean TTFT per capacity" \
    "[ \$(grep -cE '^# (5|25)%: per family mean TTFT ms: chat lru [0-9.]+ s3fifo [0-9.]+ cost [0-9.]+ \\(cost [0-9.]+x\\); agentic .*; rag ' '$T/mix.txt') -eq 2 ]" \
    "$(grep '^#' "$T/mix.txt")"
else bad "mixed workload run" "$(head -n 3 "$T/mix.err")"; fi
# no temporary store left behind (its own under TMPDIR without --dir), on success or failure
mkdir -p "$T/tmp"
TMPDIR="$T/tmp" "$EV" --workload rag --scale 0.03 --caps 0.1 --policies cost >/dev/null 2>&1
TMPDIR="$T/tmp" "$EV" --workload rag --scale 0.03 --caps 0.1 --policies lru --dump "$T/none/x" >/dev/null 2>&1
TMPDIR="$T/tmp" "$EV" --workload rag --scale 0.03 --caps 0.1,1e-9 --policies lru >/dev/null 2>&1
# the one-command script (make eval-evict): workload names checked first, its directory removed
mkdir -p "$T/tmp2"
TMPDIR="$T/tmp2" tests/bench/eval_evict.sh --workloads rag --scale 0.03 --caps 0.1 --policies lru >"$T/sh.txt" 2>&1
rc=$?
check "eval_evict.sh runs and leaves no directory under TMPDIR" "[ $rc -eq 0 ] && [ -z \"\$(ls -A '$T/tmp2')\" ]" "$(tail -3 "$T/sh.txt"; ls "$T/tmp2")"
tests/bench/eval_evict.sh --workloads "chat video" --scale 0.03 >"$T/sh.txt" 2>&1
rc=$?
check "eval_evict.sh: an unknown workload named, nothing run (exit 2)" \
  "[ $rc -eq 2 ] && grep -q \"unknown workload 'video'\" '$T/sh.txt' && ! grep -q '^capacity' '$T/sh.txt'" "$(head -3 "$T/sh.txt")"
# run from another directory (as cacheflow-sim can be): the profile is found from the binary's place
EVABS=$(cd "$(dirname "$EV")" && pwd)/$(basename "$EV")
(cd "$T" && unset CF_HW_DIR && "$EVABS" --workload rag --scale 0.03 --caps 0.1 --policies lru >"$T/cwd.txt" 2>&1)
rc=$?
check "bench_eval_evict run from another directory finds conf/hw (h100-nvme)" \
  "[ $rc -eq 0 ] && grep -q '^capacity' '$T/cwd.txt'" "$(head -3 "$T/cwd.txt")"
check "no temporary directory left (a run, a failed --dump, a failed capacity)" "[ -z \"\$(ls -A '$T/tmp')\" ]" "$(ls -R "$T/tmp")"
finish
