#!/usr/bin/env bash
# The API real engines need (issue 12): vLLM's CPU layout through per-plane strides, restores of
# [k, n), TP shards, durable saves — the Python client driving the real daemon.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_engine_api.py
