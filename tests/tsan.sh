#!/usr/bin/env bash
# `make tsan`: the integration tests that start cacheflowd, run against the ThreadSanitizer
# build (BUILD=build-tsan, made by `make tsan`). They cover the daemon's threads at their
# busiest: restores under load and concurrent restores (restore_e2e, daemon_faults), Unregister
# during a Restore (daemon_rpc, restore_e2e), SIGHUP during traffic and an engine killed
# mid-restore (daemon_faults), SIGHUP reload and SIGTERM drain (daemon_lifecycle), 64-client
# load (daemon_load), saves through to SSD (daemon_store), SSD read and write errors
# (store_faults), TLS and mTLS with certificates re-read on SIGHUP (daemon_tls), eviction = cost
# with both tiers full, verified restores (restore_evict_cost), the store directory's faults
# (store_dir_faults: two daemons on one store_dir and its flock, weights digest, damaged journal
# and data files, a full filesystem), processes misbehaving around the daemon (process_faults:
# an engine SIGKILLed mid-Save, a KV file truncated under the daemon's mapping, i.e. cf_shmguard's
# SIGBUS path, a client or the daemon SIGKILLed), the remote tier's faults against real Redis
# (remote_faults), and the small shape matrix (shapes_matrix: gen-model shapes x policies).
# Every process writes its reports to $BUILD/tsan/report.<pid> (TSAN_OPTIONS log_path), so a report from any
# of them is counted, not only the daemon's; the suppressions are in tests/tsan.supp, each with
# its reason. Before them, the store's unit tests (TSAN_UNITS, built by `make tsan`): readers,
# savers, the spiller and flushes on one store, the cost policy with a tiny SSD tier and its
# value table replaced while saving (test_store_stress), and test_ipc (cf_shmguard: a real
# SIGBUS absorbed under TSan's signal handling, engine slots reused while the registry is read).
# TSAN_TESTS="a b" / TSAN_UNITS="a b" run only those ("" none: TSAN_TESTS="" used to run them
# all). Ends with "tsan: N passed, N failed" (failed = tests that failed + report files).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-tsan}
export BUILD CF_TSAN=1 # daemon_load skips its RSS checks under a sanitizer
export PYTHON=${PYTHON:-/usr/bin/python3}
export CF_FIXTURES=${CF_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
TESTS=${TSAN_TESTS-"daemon_rpc daemon_lifecycle daemon_load daemon_store daemon_faults store_faults daemon_tls restore_e2e restore_evict_cost store_dir_faults process_faults remote_faults shapes_matrix"}
rm -rf "$BUILD/tsan" && mkdir -p "$BUILD/tsan" "$BUILD/test-logs"
# history_size: the daemon's threads are long-lived; a bigger history keeps both stacks of a report
export TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp log_path=$PWD/$BUILD/tsan/report second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}"
P=0; F=0
UNITS=${TSAN_UNITS-"test_store test_store_cost test_store_stress test_store_fill test_store_shrink test_store_enospc test_ipc test_evict_refresh test_exec_store"}
for u in $UNITS; do
  log=$BUILD/test-logs/tsan-$u.log
  timeout 1200 "$BUILD/tests/$u" >"$log" 2>&1
  rc=$?
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then P=$((P+1)); echo "ok   $u: $line"
  else F=$((F+1)); echo "FAIL $u: exit $rc, ${line:-no summary} (log: $log)"; grep -E '^FAIL|^  .*:[0-9]+: ' "$log" | head -n 10 | sed 's/^/    /'; fi
done
for t in $TESTS; do
  log=$BUILD/test-logs/tsan-$t.log
  timeout 1200 bash "tests/integration/$t.sh" >"$log" 2>&1
  rc=$?
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then P=$((P+1)); echo "ok   $t: $line"
  else F=$((F+1)); echo "FAIL $t: exit $rc, ${line:-no summary} (log: $log)"; grep -E '^FAIL' "$log" | head -n 10 | sed 's/^/    /'; fi
done
n=0
for r in "$BUILD"/tsan/report*; do
  [ -f "$r" ] || continue
  if grep -q 'WARNING: ThreadSanitizer' "$r"; then
    n=$((n+1)); echo "REPORT $r:"; grep -E 'WARNING: ThreadSanitizer|^    #[0-4] ' "$r" | head -n 24 | sed 's/^/    /'
  fi
done
echo "tsan: $n report file(s) under $BUILD/tsan"
F=$((F+n))
echo "tsan: $P passed, $F failed"
[ "$F" -eq 0 ]
