#!/usr/bin/env bash
# The real cacheflowd's process life: sd_notify on a test NOTIFY_SOCKET, /metrics and
# /healthz, SIGHUP reload, SIGTERM drain and drain timeout.
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/daemon_lifecycle.py
