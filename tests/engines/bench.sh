#!/usr/bin/env bash
# make bench-engines: TTFT of turn 2 on the real vLLM engine with the CacheFlow connector vs vLLM
# recomputing (tests/engines/bench_ttft.py; arguments pass through). Not a test: prints a table.
set -u
cd "$(dirname "$0")/../.."
. tests/engines/env.sh
engines_env || { echo "bench-engines: the vLLM venv is not available (exit $?)"; exit 1; }
exec "$PY" tests/engines/bench_ttft.py "$@"
