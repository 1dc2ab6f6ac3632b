#!/usr/bin/env bash
# make test-engines: the CacheFlow connectors against REAL inference engines (vLLM CPU build).
# Builds/reuses the pinned venv (setup_venv.sh, cached under ~/.cache/cacheflow), generates the
# gRPC stubs with the venv's grpcio-tools, runs each tests/engines/test_*.py, and closes with
# "engines: N passed, N failed". A registry that cannot be reached skips with a line (0 failed);
# a test that runs and fails is a failure.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export PYTHONUNBUFFERED=1
export BUILD
LOGDIR=$BUILD/test-logs
mkdir -p "$LOGDIR"
P=0; F=0; S=0
. tests/engines/env.sh
engines_env
rc=$?
if [ "$rc" = 3 ]; then
  echo "skip engines: the vLLM venv could not be installed (package registry unreachable; see $LOGDIR/engines-venv.log)"
  echo "engines: 0 passed, 0 failed, 1 skipped"; exit 0
elif [ "$rc" != 0 ]; then
  echo "FAIL engines setup: exit $rc"; tail -n 20 "$LOGDIR/engines-venv.log" | sed 's/^/    /'
  echo "engines: 0 passed, 1 failed"; exit 1
fi
for t in tests/engines/test_*.py; do
  name=$(basename "$t" .py)
  log="$LOGDIR/engines-$name.log"
  start=$(date +%s)
  timeout "${ENGINE_TEST_TIMEOUT:-1500}" "$PY" "$t" >"$log" 2>&1
  trc=$?
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ -z "$line" ]; then
    echo "FAIL $name: exit $trc and no summary line (log: $log)"; tail -n 30 "$log" | sed 's/^/    /'
    F=$((F+1)); continue
  fi
  p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
  if [ "$trc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  P=$((P+p)); F=$((F+f))
  printf '%-36s %s (%ds)\n' "$name" "$line" $(( $(date +%s) - start ))
  grep -E '^(FAIL|  ok)' "$log" | sed 's/^/    /'
done
echo "engines: $P passed, $F failed"
[ "$F" -eq 0 ]
