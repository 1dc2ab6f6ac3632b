#!/usr/bin/env bash
# Load: 64 concurrent clients x 200 mixed requests (lookup, health, stats, config, a Restore
# with a bad block id that must get INVALID_ARGUMENT) over the unix socket, each client with its
# own connection and registered engine. Every status is checked by cacheflowctl bench; the
# daemon's RSS must stay bounded: a second identical run may not grow it by more than 8 MiB.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-daemon-load
cf_daemon_fixture
rss() { awk '/^VmRSS:/ {print $2}' /proc/$DPID/status; }
r0=$(rss)
out1=$($BUILD/cacheflowctl bench --clients 64 --requests 200 2>&1); rc1=$?
r1=$(rss)
out2=$($BUILD/cacheflowctl bench --clients 64 --requests 200 2>&1); rc2=$?
r2=$(rss)
echo "$out1"; echo "$out2"
echo "RSS kB: start $r0, after run 1 $r1, after run 2 $r2"
[ $rc1 -eq 0 ] && echo "$out1" | grep -q "64 client(s) x 200 request(s).* 0 error(s)" && ok "run 1: 12800 requests, no error" || bad "run 1" "$out1"
[ $rc2 -eq 0 ] && echo "$out2" | grep -q " 0 error(s)" && ok "run 2: 12800 requests, no error" || bad "run 2" "$out2"
if [ -n "${CF_ASAN:-}${CF_TSAN:-}" ]; then # ASan's quarantine, TSan's shadow: RSS says nothing there
  skip "RSS bounded after run 2" "sanitizer build"; skip "RSS under 256 MiB" "sanitizer build"
else
  [ $((r2 - r1)) -lt 8192 ] && ok "RSS bounded: run 2 grew it by $((r2 - r1)) kB (< 8192)" || bad "RSS grew by $((r2 - r1)) kB in run 2"
  [ "$r2" -lt 262144 ] && ok "RSS under 256 MiB ($r2 kB)" || bad "RSS $r2 kB"
fi
st=$($BUILD/cacheflowctl stats 2>&1)
echo "$st" | grep -q "^engines 0$" && ok "every bench engine unregistered" || bad "engines left" "$st"
$BUILD/cacheflowctl status >/dev/null && ok "still SERVING after the load" || bad "not serving after the load"
cf_daemon_stop TERM; rc=$?
[ $rc -eq 0 ] && ok "exit 0 on SIGTERM" || bad "exit $rc on SIGTERM" "$(tail -5 "$T/d.log")"
finish
