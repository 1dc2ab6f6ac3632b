# The integration harness (sourced by tests/integration/*.sh and tests/demo.sh, not run): one
# set of conventions for every script, shared with its Python side (tests/lib/cfdaemon.py, the
# one place Python tests get daemons from):
#   environment  BUILD (default build), CF_FIXTURES (default ../shared/fixtures), PYTHON,
#                CF_TEST_KEEP=1 keeps the temporary directory, CF_ASAN set under `make asan`;
#   output       "  ok   NAME", "FAIL NAME" then its detail indented, "  skip NAME", and last
#                "N passed, N failed[, N skipped]", the line tests/run.sh sums; exit 0 iff none failed;
#   a daemon     the real build/cacheflowd on a unix socket in a temporary directory T, its log
#                in $T/d.log; killed at exit; a sanitizer report in its log fails cf_daemon_stop.
#
# Sourcing cds to the repository root and sets BUILD, FIX (the fixture model) and P F S.
#   ok NAME / bad NAME [DETAIL] / skip NAME [WHY]   count one check
#   check NAME 'SHELL CONDITION' [DETAIL]           ok or bad, by the condition (eval'd)
#   run_ok NAME COMMAND [ARG...]                    ok or bad, by the command's exit status
#   finish                                          the summary line (after the tails of $T/*.log
#                                                   and $T/*.err when a check failed); returns 1
#                                                   when one failed
#   cf_skip_all WHY                                 the whole script skips (exit 0)
#   cf_need_bins BIN...                             exit 1 (one failed check) unless each $BUILD/BIN is built
#   cf_gen_model PRESET                             cacheflowctl gen-model into $T/model, or exit 1
#   cf_median                                       the median of the numbers on stdin (one a line)
#   cf_test_dir PREFIX [SIGNAL]                     T = a new /tmp/PREFIX.XXXXXX; at exit: the
#                                                   cf_at_exit commands, then the daemon in $DPID
#                                                   gets SIGNAL (default TERM), then T is removed
#   cf_at_exit 'COMMAND'                            run COMMAND at exit (before the daemon is killed)
#   cf_daemon_conf FILE DIR CPU SSD CHUNK LOG_LEVEL a config: socket DIR/d.sock, store DIR/store,
#                                                   no HTTP side, the tier sizes, chunk, 1 thread
#   cf_daemon_wait SOCK [TRIES]                     until it answers Status (0.1 s a try, default 600:
#                                                   a limit for a wedged daemon, not a speed goal)
#   cf_daemon_start CONF MODEL [LOG]                cacheflowd --config CONF --model MODEL in the
#                                                   background (DPID; log appended to LOG, default
#                                                   $T/d.log), CACHEFLOW_ADDR set to CONF's listen;
#                                                   returns 1 if it does not answer
#   cf_daemon_fixture [CONF]                        cf_daemon_start on the fixture model, $T/d.sock,
#                                                   HTTP side on $T/m.sock, plus the settings in CONF
#   cf_wait_config CONF KEY                         after a SIGHUP: until the daemon (CACHEFLOW_ADDR)
#                                                   reports KEY as CONF sets it (30 s at most)
#   cf_free_port                                    a free loopback TCP port below 55000 (a Redis
#                                                   cluster node also listens on port + 10000)
#   cf_start_redis NAME PORT [ARG...]               a redis-server in $T/NAME on 127.0.0.1:PORT
#                                                   (no persistence, ARGs appended), its pid in
#                                                   RPID_NAME and in PIDS (an array the script
#                                                   kills at exit); 1 if it does not answer
#   cf_daemon_stop [SIGNAL]                         signal DPID (default TERM), wait: its exit status,
#                                                   or 99 when its log (cf_daemon_start's LOG)
#                                                   holds a sanitizer report
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
BUILD=${BUILD:-build}
export BUILD
export CF_FIXTURES=${CF_FIXTURES:-$(cd .. && pwd)/shared/fixtures}
export PYTHON=${PYTHON:-/usr/bin/python3}
FIX=$CF_FIXTURES/public-llama-gqa
P=0; F=0; S=0; DPID=; T=; CF__ATEXIT=; CF__KILLSIG=TERM; CF__DLOG=

ok() { P=$((P+1)); echo "  ok   $1"; }
bad() { F=$((F+1)); echo "FAIL $1"; if [ -n "${2:-}" ]; then echo "$2" | sed 's/^/    /' | head -20; fi; }
skip() { S=$((S+1)); echo "  skip $1${2:+: $2}"; }
check() { if eval "$2"; then ok "$1"; else bad "$1" "${3:-}"; fi; }
run_ok() { local n=$1; shift; if "$@"; then ok "$n"; else bad "$n" "exit $?: $*"; fi; }
finish() {
  if [ "$F" -ne 0 ] && [ -n "$T" ] && [ -d "$T" ]; then
    for f in "$T"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done
    for f in "$T"/*.err; do [ -f "$f" ] && { echo "--- $f"; tail -n 5 "$f"; }; done
  fi
  if [ "$S" -gt 0 ]; then echo "$P passed, $F failed, $S skipped"; else echo "$P passed, $F failed"; fi
  [ "$F" -eq 0 ]
}
cf_skip_all() { echo "skip: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }
cf_need_bins() {
  local b
  for b in "$@"; do
    [ -x "$BUILD/$b" ] || { echo "FAIL missing $BUILD/$b (build it first: make)"; echo "0 passed, 1 failed"; exit 1; }
  done
}
cf_gen_model() { # PRESET: a synthetic model in $T/model
  "$BUILD/cacheflowctl" gen-model --out "$T/model" --preset "$1" >/dev/null || { echo "FAIL gen-model --preset $1"; echo "0 passed, 1 failed"; exit 1; }
}
cf_median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

cf_test_dir() {
  T=$(mktemp -d "/tmp/$1.XXXXXX")
  CF__KILLSIG=${2:-TERM}
  trap cf__cleanup EXIT
}
cf_at_exit() { CF__ATEXIT="$CF__ATEXIT$1;"; }
cf__cleanup() {
  [ -n "$CF__ATEXIT" ] && eval "$CF__ATEXIT"
  if [ -n "$DPID" ]; then kill "-$CF__KILLSIG" "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null; fi
  [ -n "${CF_TEST_KEEP:-}" ] || [ -z "$T" ] || rm -rf "$T"
}

cf_daemon_conf() {
  cat > "$1" <<CONF
listen = unix:$2/d.sock
metrics_listen =
store_dir = $2/store
cpu_tier_bytes = $3
ssd_tier_bytes = $4
chunk_tokens = $5
threads = 1
batch_window_us = 2000
log_level = $6
CONF
}

cf_daemon_wait() {
  local i
  for i in $(seq 1 "${2:-600}"); do
    [ -S "$1" ] && "$BUILD/cacheflowctl" status --addr "unix:$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}

cf_daemon_start() {
  local sock
  sock=$(sed -n 's/^listen = unix://p' "$1" | tail -n 1)
  export CACHEFLOW_ADDR="unix:$sock"
  CF__DLOG=${3:-$T/d.log}
  "$BUILD/cacheflowd" --config "$1" --model "$2" >>"$CF__DLOG" 2>&1 &
  DPID=$!
  cf_daemon_wait "$sock"
}

cf_daemon_fixture() {
  { printf 'listen = unix:%s/d.sock\nmetrics_listen = unix:%s/m.sock\nstore_dir = %s/store\n' "$T" "$T" "$T"
    [ -n "${1:-}" ] && cat "$1"; } > "$T/fixture.conf"
  cf_daemon_start "$T/fixture.conf" "$FIX" || { bad "daemon did not start" "$(tail -5 "$T/d.log")"; return 1; }
}

cf_wait_config() {
  local want got i
  want=$("$BUILD/cacheflowd" --config "$1" --dump-config 2>/dev/null | grep -m 1 "^$2 = ")
  [ -n "$want" ] || return 1
  for i in $(seq 1 300); do
    got=$("$BUILD/cacheflowctl" config "$2" 2>/dev/null | head -n 1)
    [ "${got%%    #*}" = "$want" ] && return 0
    sleep 0.1
  done
  return 1
}

cf_daemon_stop() {
  local rc
  kill "-${1:-TERM}" "$DPID"; wait "$DPID"; rc=$?; DPID=
  if grep -qE 'Sanitizer|runtime error:' "${CF__DLOG:-$T/d.log}" 2>/dev/null; then
    echo "sanitizer report in the daemon log:"; grep -m 5 -E 'Sanitizer|runtime error:' "${CF__DLOG:-$T/d.log}"; return 99
  fi
  return $rc
}

cf_free_port() {
  python3 -c 'import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    if p < 55000: print(p); break'
}

cf_start_redis() {
  local name=$1 port=$2 pid
  shift 2
  mkdir -p "$T/$name"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$T/$name" --save "" --appendonly no \
    --logfile "$T/$name/redis.log" --protected-mode no "$@" &
  pid=$!
  PIDS+=("$pid")
  eval "RPID_$name=$pid"
  for _ in $(seq 1 300); do # NOAUTH: up, with a password
    redis-cli -p "$port" ping 2>/dev/null | grep -q 'PONG\|NOAUTH' && return 0
    sleep 0.1
  done
  return 1
}
