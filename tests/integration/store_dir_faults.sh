#!/usr/bin/env bash
# The store directory under faults the daemon does not cause itself, on the REAL daemon with the
# reference engine (cf-refengine --verify: every restored cell bit-exact with what was saved, or a
# recomputation within tolerance; a wrong cell fails it). Checks, per fault:
#   - two daemons on one store_dir: the second refuses to start, naming the directory and the
#     first one's pid; the first keeps serving; once it is SIGKILLed the lock is gone and a new
#     daemon serves the durable chunks (verified);
#   - the checkpoint's weights replaced between restarts by others of the same shapes (same
#     fingerprint, e.g. a fine-tune): the daemon refuses the store naming both weights digests,
#     never serves the old KV; a truncated checkpoint is refused naming the file; back on the
#     original weights it serves them (verified);
#   - at restart, a journal record in the middle bit-flipped, then its tail truncated mid-record:
#     the daemon starts, counts what it dropped, and every restore verifies (lost chunks are
#     recomputed, never served wrong);
#   - at restart, a data file truncated, then deleted: the same;
#   - a data file deleted while the daemon runs: restores still verify, durable saves go on, and
#     after a restart the daemon starts and restores verify;
#   - the store's filesystem full (a real 8 MiB tmpfs): an SSD tier larger than the disk fails its
#     first durable save naming the preallocation; a disk filled behind the daemon's back fails
#     durable saves naming the full device; the daemon keeps serving, restores and plain
#     (CPU-tier) saves verify; with room again the same save succeeds and survives a restart.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-store-dir-faults KILL
cf_gen_model tiny
"$BUILD/cacheflowctl" gen-model --out "$T/model2" --preset tiny --seed 2 >/dev/null || bad "gen-model --seed 2"
# no CPU tier: every saved chunk lives in the data files (what these faults damage)
cf_daemon_conf "$T/d.conf" "$T" 0 64M 32 info
sed 's/d\.sock/d2.sock/' "$T/d.conf" >"$T/d2.conf"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --block 16 --prefix 128 --new 16"
eng_ok() { # NAME OUT ARGS...: cf-refengine ARGS must exit 0 (every restored cell verified)
  local n=$1 o=$2; shift 2
  if $ENG "$@" >"$T/$o.json" 2>"$T/$o.err"; then ok "$n"; else bad "$n" "$(tail -3 "$T/$o.err")"; fi; }
restore_ok() { eng_ok "$1" "$2" --turns 1 --no-save-first --policy load --verify --seed "$3"; }
serving() { $BUILD/cacheflowctl status >/dev/null 2>&1; }
restart() { # WHAT: stop (TERM) if running, start again on the store
  [ -n "$DPID" ] && cf_daemon_stop TERM >/dev/null
  check "$1: the daemon starts on the store" "cf_daemon_start $T/d.conf $T/model" "$(tail -3 "$T/d.log")"
}

check "daemon A starts" "cf_daemon_start $T/d.conf $T/model"
for s in 1 2 3 4; do eng_ok "seed $s saved durably" "save$s" --turns 0 --durable --seed "$s"; done

# ---------------------------------------------------------------- two daemons, one store_dir
APID=$DPID
timeout 120 "$BUILD/cacheflowd" --config "$T/d2.conf" --model "$T/model" >"$T/d2.log" 2>&1; rc=$?
out=$("$BUILD/cacheflowctl" store fill --dir "$T/store" --model "$T/model" --prefixes 1 --tokens 64 --seed 1 --chunk 32 2>&1); rc2=$?
check "store fill on the serving daemon's store_dir is refused naming the daemon" \
  "[ $rc2 -ne 0 ] && echo \"\$out\" | grep -q 'in use by another process (pid $APID)'" "$out"
check "a second daemon on the same store_dir refuses to start" "[ $rc -ne 0 ] && [ $rc -ne 124 ]" "exit $rc"
check "... naming the directory and the first daemon's pid" \
  "grep -q 'store $T/store is in use by another process (pid $APID)' $T/d2.log" "$(tail -3 "$T/d2.log")"
check "the first daemon keeps serving" serving
restore_ok "the first daemon restores seed 1, verified" r1 1
kill -9 "$APID"; wait "$APID" 2>/dev/null; DPID=
check "after kill -9 of the first, a daemon starts on the store (no lock left behind)" \
  "cf_daemon_start $T/d.conf $T/model" "$(tail -3 "$T/d.log")"
restore_ok "it restores seed 2 (durable before the kill), verified" r2 2
n=$(grep -o '"cells_ssd":[0-9]*' "$T/r2.json" | head -1 | cut -d: -f2)
check "... from the data files ($n cells)" "[ ${n:-0} -gt 0 ]" "$(cat "$T/r2.json")"

# ---------------------------------------------------------------- other weights, same fingerprint
cf_daemon_stop TERM >/dev/null
timeout 120 "$BUILD/cacheflowd" --config "$T/d.conf" --model "$T/model2" >"$T/dw.log" 2>&1; rc=$?
check "weights replaced (same shapes, seed 2): the daemon refuses the store" "[ $rc -ne 0 ] && [ $rc -ne 124 ]" "exit $rc"
check "... naming both weights digests" "grep -q 'made with other weights (weights digest [0-9a-f]\{32\}) than this model.s ([0-9a-f]\{32\})' $T/dw.log" "$(tail -3 "$T/dw.log")"
check "... while the fingerprint is the same (the fingerprint alone would have served the old KV)" \
  "[ \"\$(grep -o 'fingerprint=[0-9a-f]*' $T/dw.log | head -1)\" = \"\$(grep -o 'fingerprint=[0-9a-f]*' $T/d.log | head -1)\" ]"
out=$("$BUILD/cacheflowctl" store fill --dir "$T/store" --model "$T/model2" --prefixes 1 --tokens 64 --seed 1 --chunk 32 2>&1); rc=$?
check "store fill with the other weights is refused too" "[ $rc -ne 0 ] && echo \"\$out\" | grep -q 'made with other weights'" "$out"
cp -r "$T/model" "$T/model3"
truncate -s $(($(stat -c %s "$T/model3/model.safetensors") / 2)) "$T/model3/model.safetensors"
timeout 120 "$BUILD/cacheflowd" --config "$T/d.conf" --model "$T/model3" >"$T/dc.log" 2>&1; rc=$?
check "checkpoint truncated between restarts: the daemon refuses to start, naming the file" \
  "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'model3/model.safetensors' $T/dc.log" "$(tail -3 "$T/dc.log")"
restart "the original weights again"
restore_ok "seed 3 restores, verified" r3 3

# ---------------------------------------------------------------- damaged journal at restart
cf_daemon_stop TERM >/dev/null
# record size 48 + 8 x layers; flip one byte in the middle record's key
L=$(sed -n 's/.*"num_hidden_layers": *\([0-9]*\).*/\1/p' "$T/model/config.json")
RB=$((48 + 8 * L)); JN=$(stat -c %s "$T/store/journal"); NR=$((JN / RB))
"$PYTHON" - "$T/store/journal" $((NR / 2 * RB + 20)) <<'PY'
import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x40]))
PY
restart "journal record $((NR / 2)) of $NR bit-flipped"
check "... the damaged record counted" "grep 'recovered:' $T/d.log | tail -1 | grep -q ' 1 damaged'" "$(grep recovered "$T/d.log" | tail -1)"
for s in 1 2 3 4; do restore_ok "journal bit flip: seed $s restores, verified" j$s "$s"; done
cf_daemon_stop TERM >/dev/null
JN=$(stat -c %s "$T/store/journal")
truncate -s $((JN - RB / 2)) "$T/store/journal"
restart "journal tail cut mid-record"
for s in 1 2 3 4; do restore_ok "journal torn tail: seed $s restores, verified" t$s "$s"; done
eng_ok "a durable save after the torn tail" save5 --turns 0 --durable --seed 5
restart "after the save that followed the torn tail"
restore_ok "seed 5 restores, verified" t5 5

# ---------------------------------------------------------------- damaged data files at restart
cf_daemon_stop TERM >/dev/null
truncate -s 8192 "$T/store/data.000"
restart "data.000 truncated to 8 KiB"
check "... the chunks past its end dropped and said so" "grep -q 'lie past the end of a missing or truncated data file (first: data.000' $T/d.log"
for s in 1 2 3 4 5; do restore_ok "data file truncated: seed $s restores, verified" dt$s "$s"; done
eng_ok "a durable save after the truncation" save6 --turns 0 --durable --seed 6
cf_daemon_stop TERM >/dev/null
rm -f "$T/store/data.000"
restart "data.000 deleted"
for s in 1 5 6; do restore_ok "data file deleted: seed $s restores, verified" dd$s "$s"; done

# ---------------------------------------------------------------- data file deleted while running
eng_ok "seed 7 saved durably" save7 --turns 0 --durable --seed 7
rm -f "$T/store"/data.*
restore_ok "data files deleted while running: seed 7 restores, verified" rd7 7
eng_ok "... a durable save still succeeds" save8 --turns 0 --durable --seed 8
check "... the daemon keeps serving" serving
restart "after its data files were deleted while it ran"
for s in 7 8; do restore_ok "after the restart: seed $s restores, verified" ra$s "$s"; done
cf_daemon_stop TERM; rc=$?
check "exit 0 on SIGTERM after the faults" "[ $rc -eq 0 ]"

# ---------------------------------------------------------------- a full disk
# a real small filesystem (tmpfs, 8 MiB) under the store while the daemon serves; skipped where
# this process may not mount
mkdir -p "$T/small"
if ! mount -t tmpfs -o size=8m tmpfs "$T/small" 2>/dev/null; then
  skip "full store filesystem" "cannot mount a tmpfs here (not root?)"
  finish; exit $?
fi
cf_at_exit "umount -l '$T/small' 2>/dev/null"
small_conf() { # SSD_CAP
  cf_daemon_conf "$T/s.conf" "$T/small" 64M "$1" 32 info
  sed -i "s|^listen = .*|listen = unix:$T/d.sock|" "$T/s.conf"
}
small_conf 64M
check "a daemon starts with a 64 MiB SSD tier on an 8 MiB filesystem" "cf_daemon_start $T/s.conf $T/model"
$ENG --turns 0 --durable --seed 20 >"$T/cap.json" 2>"$T/cap.err"; rc=$?
check "SSD tier larger than the disk: the durable save fails, naming the preallocation and the full device" \
  "[ $rc -ne 0 ] && grep -q 'RESOURCE_EXHAUSTED.*preallocating data.000.*No space left on device' $T/cap.err" "$(cat "$T/cap.err")"
check "... the daemon keeps serving" serving
eng_ok "... a plain save + restore (CPU tier) verified" cp --turns 1 --verify --seed 21
cf_daemon_stop TERM >/dev/null
small_conf 4M
check "a daemon with a 4 MiB SSD tier starts on it" "cf_daemon_start $T/s.conf $T/model"
for s in 22 23; do eng_ok "seed $s saved durably" "fs$s" --prefix 512 --turns 0 --durable --seed "$s"; done
dd if=/dev/zero of="$T/small/filler" bs=64k 2>/dev/null # until the filesystem is full
check "the filesystem is full (a filler took the rest)" "! dd if=/dev/zero of=$T/small/one bs=4k count=1 2>/dev/null"
rm -f "$T/small/one"
# the data file is preallocated and the journal's last page has room for a few records: durable
# saves go on until an append needs a new page of the journal
DUR="22 23" fail=0
for s in $(seq 24 60); do
  if $ENG --prefix 512 --turns 0 --durable --seed "$s" >"$T/full.json" 2>"$T/full.err"; then DUR="$DUR $s"; else fail=$s; break; fi
done
check "disk full: a durable save fails (seed $fail)" "[ $fail -gt 0 ]"
check "... naming the full device" "grep -qi 'RESOURCE_EXHAUSTED.*no space left' $T/full.err" "$(cat "$T/full.err")"
check "... the daemon keeps serving" serving
for s in $DUR; do
  eng_ok "disk full: durable seed $s restores, verified" "fr$s" --prefix 512 --turns 1 --no-save-first --no-save-turns --policy load --verify --seed "$s"
done
eng_ok "disk full: a plain save + restore (CPU tier) verified" fp --turns 1 --verify --seed 25
rm -f "$T/small/filler"
eng_ok "room again: the same durable save succeeds, restore verified" fa --prefix 512 --turns 1 --durable --verify --seed "$fail"
DUR="$DUR $fail"
cf_daemon_stop TERM; rc=$?
check "exit 0 on SIGTERM" "[ $rc -eq 0 ]"
check "the daemon restarts on the store" "cf_daemon_start $T/s.conf $T/model"
run_ok "... the CPU tier evicted (every chunk from SSD)" $BUILD/cacheflowctl evict --tier cpu
for s in $DUR; do # every save reported durable, also those made on the full disk
  eng_ok "after the restart: seed $s restores from SSD, verified" "fz$s" --prefix 512 --turns 1 --no-save-first --no-save-turns --policy load --verify --seed "$s"
  check "... its 512 tokens all found on SSD (nothing durable lost)" \
    "[ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_ssd' $T/fz$s.json)\" = 512 ]" "$(head -1 "$T/fz$s.json")"
done
cf_daemon_stop TERM >/dev/null
finish
