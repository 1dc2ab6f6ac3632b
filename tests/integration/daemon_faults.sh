#!/usr/bin/env bash
# Faults around the real cacheflowd: SIGHUP during traffic, clients that disconnect mid-stream (more
# than an engine's 64 readiness slots), an engine process killed mid-restore; KV checked bit-exact.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_faults.py
