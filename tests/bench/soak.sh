#!/usr/bin/env bash
# The soak (tests/bench/soak.py: 256 clients x 10 min of mixed Lookup/Save/Restore against the real
# daemon on a loopback unix socket; RSS and fds sampled). Arguments go to soak.py.
cd "$(dirname "$0")/../.." || exit 1
export BUILD=${BUILD:-build} CF_FIXTURES=${CF_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
exec /usr/bin/python3 tests/bench/soak.py "$@"
