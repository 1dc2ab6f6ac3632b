#!/usr/bin/env bash
# Runs the whole suite and prints one closing line "total: N passed, N failed, N skipped".
#   unit binaries      $BUILD/tests/test_*   (cf_test harness: each ends with its own summary)
#   kernel tests       $BUILD/tests/kt_*     (need a GPU; skipped here with a line when none)
#   integration tests  tests/integration/*.sh (each ends with its own summary line)
# A binary that crashes or prints no summary counts as one failure.
set -u
BUILD=${BUILD:-build}
export BUILD
export PYTHON=${PYTHON:-/usr/bin/python3}
cd "$(dirname "$0")/.."
export CF_FIXTURES=${CF_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
P=0; F=0; S=0; failed_names=()
LOGDIR=$BUILD/test-logs
mkdir -p "$LOGDIR"
TEST_TIMEOUT=${TEST_TIMEOUT:-600}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; }

run_one() { # name, command...
  local name=$1; shift
  local log="$LOGDIR/$name.log"
  local start=$(date +%s%N)
  timeout "$TEST_TIMEOUT" "$@" >"$log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  local line=$(grep -E '^([A-Za-z_-]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "FAIL $name: exit $rc and no summary line (log: $log)"; tail -n 20 "$log" | sed 's/^/    /'
    F=$((F+1)); failed_names+=("$name"); return
  fi
  local p=$(echo "$line" | sed -E 's/^([A-Za-z_-]+: )?([0-9]+) passed.*/\2/')
  local f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
  local s=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || echo 0)
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  P=$((P+p)); F=$((F+f)); S=$((S+${s:-0}))
  printf '%-36s %s (%d.%01ds)\n' "$name" "$line" $((ms/1000)) $(((ms%1000)/100))
  if [ "$f" -ne 0 ]; then
    failed_names+=("$name"); grep -E '^(FAIL|  )' "$log" | head -n 40 | sed 's/^/    /'
  fi
  grep -E '^  skip ' "$log" | sed 's/^/    /'
}

for t in "$BUILD"/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done

for t in "$BUILD"/tests/kt_*; do
  [ -x "$t" ] || continue
  if has_gpu; then run_one "$(basename "$t")" "$t"
  else echo "skip $(basename "$t"): no GPU on this machine (run tests/device/run.sh on one)"; S=$((S+1)); fi
done

for t in tests/integration/*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .sh)" bash "$t"
done

if [ ${#failed_names[@]} -ne 0 ]; then echo "failed: ${failed_names[*]}"; fi
echo "total: $P passed, $F failed, $S skipped"
[ "$F" -eq 0 ]
