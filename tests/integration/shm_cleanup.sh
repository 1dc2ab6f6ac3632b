#!/usr/bin/env bash
# A daemon killed with SIGKILL leaves its engines' readiness files (/dev/shm/cacheflowd-<pid>-
# ready-<engine id>) behind; the next daemon to start removes them, and only them. Real
# processes: daemon A with an engine registered (cf-refengine mid-session) gets kill -9; daemon B
# with an engine registered stays alive (B started while A was still alive); then daemon C starts. Checks:
#   - A's file is left after the kill -9 (the bug this fixes), C removes it at start-up;
#   - B's file (a live daemon's) is kept, and B's engine still restores afterwards;
#   - decoys are kept: a dead pid's file with the right name but no readiness magic, a name with
#     extra characters, a symlink with a dead pid's name, a live pid's (this shell's) real file.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
[ -d /dev/shm ] || cf_skip_all "no /dev/shm"
cf_test_dir cf-shm TERM
PIDS=
DECOYS=
cf_at_exit 'for p in $PIDS; do kill -9 $p 2>/dev/null; wait $p 2>/dev/null; done; rm -f $DECOYS'
cf_gen_model demo
start() { # start NAME: a daemon on $T/NAME.sock with its own store; its pid in $DP
  mkdir -p "$T/$1"
  cf_daemon_conf "$T/$1.conf" "$T/$1" 64M 64M 64 info
  "$BUILD/cacheflowd" --config "$T/$1.conf" --model "$T/model" 2>"$T/$1.log" &
  DP=$!
  PIDS="$PIDS $DP"
  cf_daemon_wait "$T/$1/d.sock"
}
engine() { # engine NAME: a long session against daemon NAME, in the background; its pid in EP
  "$BUILD/cf-refengine" --daemon "unix:$T/$1/d.sock" --model "$T/model" --shm-dir "$T" --prefix 128 --new 16 \
    --turns 400 --policy recompute >"$T/$1.eng" 2>&1 &
  EP=$!
  PIDS="$PIDS $EP"
}
wait_file() { # wait_file PID: until a readiness file of daemon PID exists; prints it
  for i in $(seq 1 600); do
    f=$(ls /dev/shm/cacheflowd-$1-ready-* 2>/dev/null | head -n 1)
    [ -n "$f" ] && { echo "$f"; return 0; }
    sleep 0.1
  done
  return 1
}
check "daemon A starts" "start a"; A=$DP
engine a
FA=$(wait_file $A); check "A's engine has a readiness file ($FA)" "[ -n \"$FA\" ]"
AE=$EP
check "daemon B starts" "start b"; B=$DP
engine b; BE=$EP
FB=$(wait_file $B); check "B's engine has a readiness file ($FB)" "[ -n \"$FB\" ]"
kill -9 $A; wait $A 2>/dev/null
kill -9 $AE 2>/dev/null; wait $AE 2>/dev/null
check "kill -9 leaves A's readiness file behind" "[ -f \"$FA\" ]"
# decoys, all with A's dead pid unless said otherwise
printf 'NOTREADY-not-ours' >"/dev/shm/cacheflowd-$A-ready-99999"
printf 'CFREADY1xxxx' >"/dev/shm/cacheflowd-$A-ready-12x"
ln -s "$FA" "/dev/shm/cacheflowd-$A-ready-77777"
cp "$FA" "/dev/shm/cacheflowd-$$-ready-55555" 2>/dev/null || printf 'CFREADY1xxxx' >"/dev/shm/cacheflowd-$$-ready-55555"
DECOYS="/dev/shm/cacheflowd-$A-ready-99999 /dev/shm/cacheflowd-$A-ready-12x /dev/shm/cacheflowd-$A-ready-77777 /dev/shm/cacheflowd-$$-ready-55555"
check "daemon C starts" "start c"; C=$DP
check "A's stale readiness file is gone once C started" "[ ! -e \"$FA\" ]"
# every cacheflowd that starts cleans /dev/shm: where other suites run on the machine, another
# test's daemon may get to A's file first (then C has nothing to remove, and says nothing)
if grep -qE 'removed [0-9]+ stale readiness file' "$T/c.log"; then ok "C logged the removal"
else skip "C logged the removal" "no removal in C's log: another daemon on this machine removed A's file first"; fi
check "B's (a live daemon's) readiness file is kept" "[ -f \"$FB\" ]"
check "a dead pid's file without the readiness magic is kept" "[ -f /dev/shm/cacheflowd-$A-ready-99999 ]"
check "a name with extra characters is kept" "[ -f /dev/shm/cacheflowd-$A-ready-12x ]"
check "a symlink with a dead pid's name is kept" "[ -L /dev/shm/cacheflowd-$A-ready-77777 ]"
check "a live pid's readiness file is kept" "[ -f /dev/shm/cacheflowd-$$-ready-55555 ]"
n0=$(grep -c '"mode":"session"' "$T/b.eng")
for i in $(seq 1 600); do [ "$(grep -c '"mode":"session"' "$T/b.eng")" -gt $((n0 + 1)) ] && break; sleep 0.1; done
n1=$(grep -c '"mode":"session"' "$T/b.eng")
check "B's engine keeps restoring ($n0 -> $n1 sessions, all ok)" "[ $n1 -gt $n0 ] && ! grep -q '\"ok\":false' \"$T/b.eng\""
kill $BE 2>/dev/null; wait $BE 2>/dev/null
kill $B $C 2>/dev/null; wait $B $C 2>/dev/null
check "B and C remove their own files when they stop" "[ ! -e \"$FB\" ] && [ -z \"\$(ls /dev/shm/cacheflowd-$C-ready-* 2>/dev/null)\" ]"
finish
