#!/usr/bin/env bash
# The Python client package (lib/client/python/cacheflow_client) driving the real daemon.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_pyclient.py
