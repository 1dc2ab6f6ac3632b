#!/usr/bin/env bash
# The Python client package (lib/client/python/cacheflow_client) driving the real daemon.
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/daemon_pyclient.py
