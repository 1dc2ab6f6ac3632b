#!/usr/bin/env bash
# The real cacheflowd on a temporary unix socket: health, register/unregister, bad input of
# every kind (malformed bytes, wrong wire types, oversized, unknown ids, block ids out of range,
# fingerprint/layout mismatch), unknown methods, Unregister racing a Restore.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_rpc.py
