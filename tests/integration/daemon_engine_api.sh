#!/usr/bin/env bash
# The API real engines need (issue 12): vLLM's CPU layout through per-plane strides, restores of
# [k, n), TP shards, durable saves — the Python client driving the real daemon.
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/daemon_engine_api.py
