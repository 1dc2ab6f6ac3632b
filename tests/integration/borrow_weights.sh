#!/usr/bin/env bash
# Borrowed weights (OfferWeights, issue 18) with the real daemon and real engine processes: see
# tests/integration/py/borrow_weights.py.
. "$(dirname "$0")/../lib/cf_test.sh" # root, BUILD, CF_FIXTURES, PYTHON: tests/lib/cfdaemon.py reads the same
exec "$PYTHON" tests/integration/py/borrow_weights.py
