#!/usr/bin/env bash
# The libuv loop keeps answering Health/Lookup during a 256k-token Save (copied on the save
# worker) and while a 64-restore batch is planned (on the executor thread); prints p99 latency
# ratios to idle (benchmarks, not asserted).
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/loop_free.py
