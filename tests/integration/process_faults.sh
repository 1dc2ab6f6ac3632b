#!/usr/bin/env bash
# Processes misbehaving around the real cacheflowd: an engine SIGKILLed mid-Save, one truncating its
# KV file, a client SIGKILLed mid-Restore, the daemon SIGKILLed mid-Restore / amid durable Saves; see
# tests/integration/py/process_faults.py.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/process_faults.py
