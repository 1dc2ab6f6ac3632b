#!/usr/bin/env bash
# The SSD tier failing under the real daemon (issue 16.4): EIO and ENOSPC injected into the
# store's real pread/pwrite calls by tests/lib/cf_faultshim.c (LD_PRELOAD; it turns io_uring off,
# so the store runs its pread/pwrite fallback: see the shim's comment), switched on and off while
# cacheflowd runs, with the reference engine (cf-refengine --verify: every restored cell is
# bit-exact or a recomputation within tolerance; a wrong cell fails it). Checks, per fault:
#   - write EIO / ENOSPC during durable saves: the save is refused with a status naming the
#     error; the daemon keeps serving; once the fault clears the same save succeeds;
#   - read EIO during restores of chunks only on SSD: the restore either completes verified
#     (the unreadable cells recomputed) or fails naming the error — never a wrong cell; nothing
#     stays in flight; once the fault clears the chunks restore from SSD, verified;
#   - write EIO / ENOSPC on the journal's appends only: the durable save is refused naming the
#     journal and the error, the daemon keeps serving, the same save succeeds once it clears, and
#     after a restart every saved prefix restores from SSD, verified;
#   - the shim really hit the store's files (its .hits log).
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine libcf_faultshim.so
cf_test_dir cf-store-faults KILL
cf_gen_model tiny
cf_daemon_conf "$T/d.conf" "$T" 64M 128M 32 info
CTL=$T/fault
# ASan wants its runtime first in the preload list; the shim only wraps libc calls
[ -n "${CF_ASAN:-}" ] && export ASAN_OPTIONS="${ASAN_OPTIONS:-}:verify_asan_link_order=0"
export CF_FAULT_CTL=$CTL LD_PRELOAD=$PWD/$BUILD/libcf_faultshim.so
check "daemon starts with the fault shim" "cf_daemon_start $T/d.conf $T/model"
unset LD_PRELOAD
check "the store runs its pread/pwrite path (io_uring refused by the shim)" "grep -q 'falling back to pread/pwrite' $T/d.log"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --block 16 --prefix 128 --new 16"
serving() { $BUILD/cacheflowctl status >/dev/null 2>&1; }
idle() { local i; for i in $(seq 1 300); do
  $BUILD/cacheflowctl stats 2>/dev/null | grep -q '^restores_in_flight 0$' && return 0; sleep 0.1; done; return 1; }
eng_ok() { # NAME OUT ARGS...: cf-refengine ARGS (stdout OUT.json, stderr OUT.err) must exit 0
  local n=$1 o=$2; shift 2
  if $ENG "$@" >"$o.json" 2>"$o.err"; then ok "$n"; else bad "$n" "$(tail -3 "$o.err")"; fi; }
hits() { [ -f "$CTL.hits" ] && grep -c "^$1 $2 .*/store/" "$CTL.hits" || echo 0; }

eng_ok "no fault: durable save + restore, verified" "$T/ok" --turns 1 --durable --verify --seed 1

# ---------------------------------------------------------------- EIO / ENOSPC on writes
write_fault() { # ERRNO SEED STATUS_PATTERN WHAT: a durable save while the SSD tier's writes fail
  local e=$1 seed=$2 pat=$3 what=$4 rc
  echo "write $e /store/" >"$CTL"
  $ENG --turns 0 --durable --seed "$seed" >"$T/w$e.json" 2>"$T/w$e.err"; rc=$?
  check "write $e: the durable save fails" "[ $rc -ne 0 ]" "$(cat "$T/w$e.err")"
  check "write $e: $what" "grep -qi '$pat' $T/w$e.err" "$(cat "$T/w$e.err")"
  check "write $e: the shim failed the store's writes" "[ $(hits write "$e") -gt 0 ]"
  check "write $e: the daemon keeps serving" serving
  rm -f "$CTL"
  eng_ok "write $e cleared: the same durable save and a restore succeed, verified" "$T/w$e-2" \
    --turns 1 --durable --verify --seed "$seed"
}
write_fault EIO 2 'input/output error' "its status names the I/O error"
write_fault ENOSPC 3 'no space left' "RESOURCE_EXHAUSTED naming the full device"

# ---------------------------------------------------------------- EIO on reads during restores
eng_ok "save seed 4 durably (prefill only)" "$T/r0" --turns 0 --durable --seed 4
run_ok "evict the CPU tier: seed 4's chunks only on SSD" $BUILD/cacheflowctl evict --tier cpu
echo "read EIO /store/" >"$CTL"
$ENG --turns 1 --no-save-first --policy load --verify --seed 4 >"$T/reio.json" 2>"$T/reio.err"; rc=$?
check "read EIO: the shim failed the store's reads" "[ $(hits read EIO) -gt 0 ]"
check "read EIO: no wrong cell (verified, or the restore failed)" "! grep -q '\"bad\":[1-9]' $T/reio.json" "$(cat $T/reio.json $T/reio.err)"
if [ $rc -eq 0 ]; then
  comp=$(jq -s '[.[] | select(.mode=="session") | .cells_computed] | add' "$T/reio.json")
  check "read EIO: the restore completed, verified, the unreadable cells recomputed ($comp)" "[ ${comp:-0} -gt 0 ]" "$(cat "$T/reio.json")"
else
  check "read EIO: the restore failed naming the I/O error" "grep -qi 'input/output error\|io error\|EIO' $T/reio.err $T/reio.json" "$(cat $T/reio.err)"
fi
check "read EIO: nothing left in flight" idle
check "read EIO: the daemon keeps serving" serving
rm -f "$CTL"
eng_ok "read EIO cleared: seed 4 restores, verified" "$T/reio2" --turns 1 --no-save-first --policy load --verify --seed 4
ssd=$(jq -s '[.[] | select(.mode=="session") | .cells_ssd] | add' "$T/reio2.json")
check "read EIO cleared: from the SSD tier ($ssd cells)" "[ ${ssd:-0} -gt 0 ]" "$(cat $T/reio2.json)"
# ---------------------------------------------------------------- the journal's appends failing
# (a full disk hits the journal as well as the data files: its appends are write(2) calls)
journal_fault() { # ERRNO SEED STATUS_PATTERN
  local e=$1 seed=$2 pat=$3 rc n0
  n0=$(hits write "$e")
  echo "write $e /store/journal" >"$CTL"
  $ENG --turns 0 --durable --seed "$seed" >"$T/j$e.json" 2>"$T/j$e.err"; rc=$?
  check "journal $e: the durable save fails" "[ $rc -ne 0 ]" "$(cat "$T/j$e.json")"
  check "journal $e: its status names the journal and the error" "grep -qi 'journal.*$pat' $T/j$e.err" "$(cat "$T/j$e.err")"
  check "journal $e: the shim failed the journal's appends" "[ \$(grep -c '^write $e .*/store/journal' $CTL.hits) -gt 0 ]"
  check "journal $e: the daemon keeps serving" serving
  rm -f "$CTL"
  eng_ok "journal $e cleared: the same durable save and a restore succeed, verified" "$T/j$e-2" \
    --turns 1 --durable --verify --seed "$seed"
}
journal_fault ENOSPC 5 'no space left'
journal_fault EIO 6 'input/output error'
echo "     faults injected: $(wc -l <"$CTL.hits" 2>/dev/null || echo 0) calls"
cf_daemon_stop TERM; rc=$?
check "exit 0 on SIGTERM after the faults" "[ $rc -eq 0 ]"
check "the daemon restarts on the store after the journal faults" "cf_daemon_start $T/d.conf $T/model"
run_ok "... the CPU tier evicted (every chunk from SSD)" $BUILD/cacheflowctl evict --tier cpu
for seed in 1 4 5 6; do
  eng_ok "after the restart: seed $seed restores from SSD, verified" "$T/after$seed" --turns 1 --no-save-first --policy load --verify --seed "$seed"
done
cf_daemon_stop TERM; rc=$?
check "exit 0 on SIGTERM" "[ $rc -eq 0 ]"
finish
