#!/usr/bin/env bash
# The real cacheflowd on a temporary unix socket: health, register/unregister, bad input of
# every kind (malformed bytes, wrong wire types, oversized, unknown ids, block ids out of range,
# fingerprint/layout mismatch), unknown methods, Unregister racing a Restore.
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/daemon_rpc.py
