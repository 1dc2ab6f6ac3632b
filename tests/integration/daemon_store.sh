#!/usr/bin/env bash
# Save/Lookup/Evict through the real daemon over lib/store, byte-exact against the engine's
# paged blocks; restart keeps the cache; another chunk size is refused.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/daemon_store.py
