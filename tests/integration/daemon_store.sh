#!/usr/bin/env bash
# Save/Lookup/Evict through the real daemon over lib/store, byte-exact against the engine's
# paged blocks; restart keeps the cache; another chunk size is refused.
cd "$(dirname "$0")/../.." || exit 1
exec "${PYTHON:-/usr/bin/python3}" tests/integration/py/daemon_store.py
