#!/usr/bin/env bash
# The remote tier failing in ways remote_two_nodes.sh does not cover, with real cacheflowd nodes
# sharing a real redis-server started here, driven by the reference engine (cf-refengine --verify:
# every restored cell bit-exact with what was saved or a recomputation within tolerance of the
# engine's own prefill; a wrong cell fails it):
#   - a node whose checkpoint has other weights of the same shapes (same fingerprint: a fine-tune)
#     shares the Redis: it never finds the other nodes' chunks there (its keys carry its weights'
#     digest) and its restores verify against its own weights;
#   - redis paused (SIGSTOP) during write-back: saves answer, restores on the saving node and on
#     the other node (misses: recomputed) verify, both keep serving; once resumed (SIGCONT) new
#     write-backs reach it and the other node loads from it again;
#   - redis paused (SIGSTOP) during a rate-limited restore that reads from it: the restore
#     completes verified (the cells it could not read recomputed), the node keeps serving;
#   - FLUSHALL during such a restore: the same; later saves reach the emptied Redis again.
# Waits are on state (chunk markers, restores in flight, reloaded settings), bounded only as a
# limit for something wedged.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  cf_skip_all "remote_faults: redis-server / redis-cli not installed (make deps)"
cf_test_dir cf-remote-faults KILL
PIDS=()
cf_at_exit 'for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null'
cf_gen_model tiny
"$BUILD/cacheflowctl" gen-model --out "$T/model2" --preset tiny --seed 2 >/dev/null || bad "gen-model --seed 2"
C=32
RPORT=$(cf_free_port)
check "redis-server starts" "cf_start_redis r1 $RPORT"
markers() { timeout 10 redis-cli -p "$RPORT" --scan --pattern '*:m' 2>/dev/null | wc -l; }
wait_markers() { for _ in $(seq 1 600); do [ "$(markers)" -ge "$1" ] && return 0; sleep 0.1; done; return 1; }
# node NAME MODEL: a daemon on the shared Redis; its pid in NPID_NAME
node() {
  mkdir -p "$T/$1"
  cf_daemon_conf "$T/$1/d.conf" "$T/$1" 64M 128M $C info
  printf 'remote_url = redis://127.0.0.1:%s\n' "$RPORT" >>"$T/$1/d.conf"
  "$BUILD/cacheflowd" --config "$T/$1/d.conf" --model "$2" >>"$T/$1/d.log" 2>&1 &
  PIDS+=("$!")
  eval "NPID_$1=$!"
  cf_daemon_wait "$T/$1/d.sock"
}
reload() { # NAME KEY: SIGHUP, until the node reports KEY as its d.conf sets it
  local v="NPID_$1"
  kill -HUP "${!v}"
  (export CACHEFLOW_ADDR="unix:$T/$1/d.sock"; cf_wait_config "$T/$1/d.conf" "$2")
}
eng() { # NODE MODEL OUT ARGS...: cf-refengine on NODE (stdout OUT.json, stderr OUT.err); its exit status
  local n=$1 m=$2 o=$3
  shift 3
  timeout 300 "$BUILD/cf-refengine" --daemon "unix:$T/$n/d.sock" --model "$m" --shm-dir "$T" --block 16 --threads 1 \
    --new 16 "$@" >"$T/$o.json" 2>"$T/$o.err"
}
sum() { jq -s "[.[] | select(.mode==\"session\") | $2] | add" "$T/$1.json"; }
serving() { "$BUILD/cacheflowctl" status --addr "unix:$T/$1/d.sock" >/dev/null 2>&1; }
in_flight() { # NODE: until a restore is in flight there
  for _ in $(seq 1 600); do
    [ "$("$BUILD/cacheflowctl" stats --addr "unix:$T/$1/d.sock" 2>/dev/null | awk '$1 == "restores_in_flight" {print $2}')" = 1 ] && return 0
    sleep 0.05
  done
  return 1
}

check "node A starts" "node a $T/model"
check "node B starts" "node b $T/model"
check "node W starts (other weights, same shapes and fingerprint)" "node w $T/model2"
check "A and W have the same fingerprint, other weights digests" \
  "[ \"\$(grep -o 'fingerprint=[0-9a-f]*' $T/a/d.log)\" = \"\$(grep -o 'fingerprint=[0-9a-f]*' $T/w/d.log)\" ] && \
   [ \"\$(grep -o 'weights=[0-9a-f]*' $T/a/d.log)\" != \"\$(grep -o 'weights=[0-9a-f]*' $T/w/d.log)\" ]"

# ------------------------------------------------------------------ baseline, other weights
eng a "$T/model" a1 --prefix 256 --turns 0 --seed 1
check "A saves seed 1" "[ $? -eq 0 ]"
check "A's write-back reaches Redis (8 chunk markers)" "wait_markers 8"
eng b "$T/model" b1 --prefix 256 --turns 1 --verify --no-save-first --policy load --seed 1
check "B restores seed 1 from the remote tier, verified" "[ $? -eq 0 ] && [ \"\$(sum b1 .cells_remote)\" -gt 0 ]" "$(tail -3 "$T/b1.err")"
eng w "$T/model2" w1 --prefix 256 --turns 1 --verify --no-save-first --policy load --seed 1
check "W (other weights) restores seed 1 verified against its own weights" "[ $? -eq 0 ]" "$(tail -3 "$T/w1.err")"
check "... its Lookup found none of A's chunks in Redis, nothing loaded from there" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_remote' $T/w1.json)\" = 0 ] && [ \"\$(sum w1 .cells_remote)\" = 0 ]" \
  "$(cat "$T/w1.json")"

# ------------------------------------------------------------------ SIGSTOP during write-back
kill -STOP "$RPID_r1"
eng a "$T/model" a2 --prefix 256 --turns 1 --verify --seed 2
check "redis paused: A saves seed 2 and restores it (local), verified" "[ $? -eq 0 ]" "$(tail -3 "$T/a2.err")"
check "... A keeps serving" "serving a"
eng b "$T/model" b2 --prefix 256 --turns 1 --verify --no-save-first --policy load --seed 2
check "redis paused: B restores seed 2 (a miss: recomputed), verified" "[ $? -eq 0 ]" "$(tail -3 "$T/b2.err")"
check "... B keeps serving" "serving b"
kill -CONT "$RPID_r1"
eng a "$T/model" a3 --prefix 256 --turns 0 --seed 3
check "redis resumed: A saves seed 3" "[ $? -eq 0 ]"
check "... its write-back reaches Redis" "wait_markers 16"
ok2=1
for _ in $(seq 1 60); do # B's reconnect backoff, however long a busy machine makes it
  eng b "$T/model" b3 --prefix 256 --turns 1 --verify --no-save-first --no-save-turns --policy load --seed 3 || { ok2=0; break; }
  [ "$(sum b3 .cells_remote)" -gt 0 ] && break
  sleep 0.5
done
check "... B loads seed 3 from the remote tier again, verified" "[ $ok2 = 1 ] && [ \"\$(sum b3 .cells_remote)\" -gt 0 ]" "$(tail -3 "$T/b3.err")"

# ------------------------------------------------------------------ SIGSTOP / FLUSHALL mid-restore
printf 'remote_read_gbps = 0.0005\n' >>"$T/b/d.conf"
check "B reloads remote_read_gbps = 0.0005 (its restores read Redis for seconds)" "reload b remote_read_gbps"
mid_restore() { # SEED WHAT FAULT_CMD UNDO_CMD
  local seed=$1 what=$2 rc m0
  m0=$(markers)
  eng a "$T/model" "a$seed" --prefix 512 --turns 0 --seed "$seed"
  check "$what: A's write-back of seed $seed reaches Redis" "wait_markers $((m0 + 512 / C))"
  eng b "$T/model" "b$seed" --prefix 512 --turns 1 --verify --no-save-first --no-save-turns --policy load --seed "$seed" &
  local epid=$!
  check "$what: B's restore in flight" "in_flight b"
  eval "$3"
  wait $epid; rc=$?
  eval "$4"
  check "$what mid-restore: the restore completes, verified" "[ $rc -eq 0 ]" "$(tail -3 "$T/b$seed.err")"
  check "... some cells recomputed (not read from Redis)" "[ \"\$(sum b$seed '.fallback + .cells_computed')\" -gt 0 ]" "$(cat "$T/b$seed.json")"
  check "... B keeps serving" "serving b"
}
mid_restore 4 "redis paused (SIGSTOP)" 'kill -STOP $RPID_r1' 'kill -CONT $RPID_r1'
mid_restore 5 "FLUSHALL" 'redis-cli -p $RPORT flushall >/dev/null' ':'
check "after FLUSHALL: Redis empty of earlier chunks" "[ \$(markers) -le 16 ]"
sed -i '/^remote_read_gbps/d' "$T/b/d.conf"
check "B reloads the default remote_read_gbps" "reload b remote_read_gbps"
eng a "$T/model" a6 --prefix 256 --turns 0 --seed 6
check "after FLUSHALL: A's new saves reach Redis" "wait_markers 8"
ok2=1
for _ in $(seq 1 60); do
  eng b "$T/model" b6 --prefix 256 --turns 1 --verify --no-save-first --no-save-turns --policy load --seed 6 || { ok2=0; break; }
  [ "$(sum b6 .cells_remote)" -gt 0 ] && break
  sleep 0.5
done
check "... and B loads them from there, verified" "[ $ok2 = 1 ] && [ \"\$(sum b6 .cells_remote)\" -gt 0 ]" "$(tail -3 "$T/b6.err")"
for n in a b w; do
  v="NPID_$n"; kill -TERM "${!v}"; wait "${!v}"; rc=$?
  check "node $n exits 0 on SIGTERM" "[ $rc -eq 0 ]"
done
finish
