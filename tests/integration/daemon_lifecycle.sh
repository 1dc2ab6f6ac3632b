#!/usr/bin/env bash
# The real cacheflowd's process life: sd_notify on a test NOTIFY_SOCKET, /metrics and
# /healthz, SIGHUP reload, SIGTERM drain and drain timeout.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_lifecycle.py
