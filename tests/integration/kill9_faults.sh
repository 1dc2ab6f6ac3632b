#!/usr/bin/env bash
# kill -9 around the real cacheflowd: an engine SIGKILLed mid-Save, a client SIGKILLed
# mid-Restore, the daemon SIGKILLed mid-Restore and restarted on its store; see
# tests/integration/py/kill9_faults.py.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/kill9_faults.py
