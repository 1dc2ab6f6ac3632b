# Sourced by tests/integration/daemon_*.sh (not a test itself: run.sh runs only the top level).
# Sets B (build dir), FIX (the fixture model), T (a temp dir removed at exit, with the daemon
# started by start_daemon), ok/bad counters and finish (prints the summary line).
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
B=${BUILD:-build}
FIX=${CF_FIXTURES:-$(cd .. && pwd)/shared/fixtures}/public-llama-gqa
P=0; F=0; S=0; PID=
ok() { P=$((P+1)); echo "  ok   $1"; }
bad() { F=$((F+1)); echo "FAIL $1"; [ -n "${2:-}" ] && echo "$2" | sed 's/^/    /' | head -20; }
T=$(mktemp -d)
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
# start_daemon [CONF]: the real daemon on $T/cf.sock with the fixture model and its HTTP side on
# $T/metrics.sock (never a shared TCP port), plus the settings of the file CONF; waits until it
# answers. Sets PID and exports CACHEFLOW_ADDR for cacheflowctl.
start_daemon() {
  export CACHEFLOW_ADDR="unix:$T/cf.sock"
  { echo "metrics_listen = unix:$T/metrics.sock"; [ -n "${1:-}" ] && cat "$1"; } > "$T/daemon.conf"
  $B/cacheflowd --config "$T/daemon.conf" --listen "unix:$T/cf.sock" --store-dir "$T/store" --model "$FIX" >"$T/log" 2>&1 &
  PID=$!
  for _ in $(seq 200); do $B/cacheflowctl status >/dev/null 2>&1 && return 0; sleep 0.05; done
  bad "daemon did not start" "$(tail -5 "$T/log")"
}
finish() {
  if [ "$S" -gt 0 ]; then echo "$P passed, $F failed, $S skipped"; else echo "$P passed, $F failed"; fi
  [ "$F" -eq 0 ]
}
