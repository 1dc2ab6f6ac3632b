#!/usr/bin/env bash
# The libuv loop keeps answering Health/Lookup during a 256k-token Save (copied on the save
# worker) and while a 64-restore batch is planned (on the executor thread); prints p99 latency
# ratios to idle (benchmarks, not asserted).
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/loop_free.py
