#!/usr/bin/env bash
# Two real cacheflowd processes ("node A" and "node B": separate local stores) sharing one remote
# tier, a real redis-server started here (then a real three-master Redis Cluster):
#   for every policy, A's engine prefills and saves a conversation, B's engine (same model, seed
#   and threads, so its own prefill is the reference) restores it through B: cells come from the
#   remote tier, loaded cells bit-exact, computed ones within 1e-4, first-token logits equal;
#   keys corrupted and deleted behind the daemons' backs: detected, counted, recomputed;
#   redis-server SIGKILLed in the middle of a rate-limited restore on B: the restore completes with
#   the right KV, B keeps serving, reports the remote tier down in Stats and /metrics, and
#   reconnects when the server is back; a daemon starts and serves while its remote is down;
#   promotion: a session B read whole from Redis is stored in B's local tiers, so B's next restore
#   of it is local (Lookup per tier, cells per tier) and still works with redis SIGKILLed;
#   --check-config names a bad remote_url; the same save-on-A / restore-on-B over a Redis Cluster.
# Every wait below is on state (a PONG, chunk markers, a reloaded setting, a restore in flight),
# bounded only as a limit for something wedged: the script holds on a busy machine.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  cf_skip_all "remote_two_nodes: redis-server / redis-cli not installed (make deps)"
cf_test_dir cf-remote KILL
PIDS=() # the daemons and redis-servers started here: SIGKILLed at exit
cf_at_exit 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null'

# the standalone server needs a password (the daemons' remote_password); the cluster does not
PW=s3cret
rcli() { redis-cli --no-auth-warning -a "$PW" "$@"; }
markers() { rcli -p "$1" --scan --pattern '*:m' 2>/dev/null | wc -l; }
wait_markers() { # PORT N: until the remote holds at least N chunk markers
  for _ in $(seq 1 600); do [ "$(markers "$1")" -ge "$2" ] && return 0; sleep 0.1; done
  return 1
}

cf_gen_model tiny
C=32
RPORT=$(cf_free_port)
check "redis-server starts on a free loopback port" "cf_start_redis r1 $RPORT --requirepass $PW"

# node_conf NAME URL [extra lines]
node_conf() {
  mkdir -p "$T/$1"
  cf_daemon_conf "$T/$1/d.conf" "$T/$1" 64M 128M $C info
  printf 'remote_url = %s\n%b' "$2" "${3:-}" >> "$T/$1/d.conf"
}
# start_node NAME: its pid in NPID_NAME
start_node() {
  "$BUILD/cacheflowd" --config "$T/$1/d.conf" --model "$T/model" >>"$T/$1/d.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  eval "NPID_$1=$pid"
  cf_daemon_wait "$T/$1/d.sock"
}
# reload_node NAME KEY: SIGHUP, then until the node reports KEY as its d.conf now sets it
reload_node() {
  local v="NPID_$1"
  kill -HUP "${!v}"
  (export CACHEFLOW_ADDR="unix:$T/$1/d.sock"; cf_wait_config "$T/$1/d.conf" "$2")
}
stop_node() { local v="NPID_$1"; kill -TERM "${!v}" 2>/dev/null; wait "${!v}" 2>/dev/null; }
eng() { "$BUILD/cf-refengine" --daemon "unix:$T/$1/d.sock" --model "$T/model" --shm-dir "$T" --block 16 --threads 1 "${@:2}"; }
stat_of() { "$BUILD/cacheflowctl" stats --addr "unix:$T/$1/d.sock" 2>/dev/null | awk -v k="$2" '$1 == k {print $2}'; }

# ------------------------------------------------------------------ config
printf 'remote_url = http://cache:6379\n' > "$T/bad.conf"
out=$("$BUILD/cacheflowd" --config "$T/bad.conf" --check-config 2>&1); rc=$?
check "--check-config refuses a bad remote_url, naming the key and the scheme" \
  "[ $rc -ne 0 ] && echo \"\$out\" | grep -q \"remote_url\" && echo \"\$out\" | grep -q 'scheme must be'"
printf 'remote_url = redis+cluster://a:1,\n' > "$T/bad2.conf"
out=$("$BUILD/cacheflowd" --config "$T/bad2.conf" --check-config 2>&1); rc=$?
check "--check-config refuses an empty cluster seed" "[ $rc -ne 0 ] && echo \"\$out\" | grep -q 'empty host'"

# ------------------------------------------------------------------ A saves, B restores (every policy)
node_conf a "redis://127.0.0.1:$RPORT" "remote_password = $PW\n"
node_conf b "redis://127.0.0.1:$RPORT" "remote_password = $PW\n"
check "node A starts with the remote tier" "start_node a"
check "node B starts with the remote tier" "start_node b"
out=$("$BUILD/cacheflowctl" config --addr unix:$T/b/d.sock 2>&1)
check "GetConfig shows remote_password as (set), never the password" "echo \"\$out\" | grep -q 'remote_password.*(set)' && ! echo \"\$out\" | grep -q $PW"
seed=100
chunks=0
for pol in recompute load cake layerwise cacheflow optimal; do
  seed=$((seed+1))
  eng a --policy $pol --prefix 256 --new 16 --turns 0 --seed $seed >"$T/a-$pol.json" 2>"$T/a-$pol.err"
  check "$pol: node A saves turn 0" "[ $? -eq 0 ]"
  chunks=$((chunks + 256 / C))
  check "$pol: A's write-back reaches Redis ($chunks chunk markers)" "wait_markers $RPORT $chunks"
  eng b --policy $pol --prefix 256 --new 16 --turns 1 --verify --no-save-first --seed $seed >"$T/b-$pol.json" 2>"$T/b-$pol.err"
  rc=$?
  j="$T/b-$pol.json"
  check "$pol: node B restores A's session (exit 0: logits match, no bad cell)" "[ $rc -eq 0 ]"
  check "$pol: B's Lookup finds the whole prefix in the remote tier" \
    "[ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_remote' $j)\" = 256 ]"
  check "$pol: loaded cells bit-exact (exact blocks cover every loaded cell)" \
    "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | select(.exact*16 < (.cells_cpu+.cells_ssd+.cells_remote)*$C)] | length' $j)\" = 0 ]"
  check "$pol: no cell off by more than 1e-4" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .bad] | add' $j)\" = 0 ]"
  if [ $pol = recompute ]; then
    check "recompute: nothing loaded" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote] | add' $j)\" = 0 ]"
  else
    check "$pol: cells came from the remote tier" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote] | add' $j)\" -gt 0 ]"
  fi
done
check "B counts remote cell reads in Stats" "[ \"\$(stat_of b cacheflow_remote_cells_ok)\" -gt 0 ]"
check "B reports the remote tier connected" "[ \"\$(stat_of b cacheflow_remote_up)\" = 1 ]"
check "B's planner has a remote-tier rate" "awk 'BEGIN{exit !($(stat_of b cacheflow_tier_read_bytes_per_second_remote) > 0)}'"

out=$(CACHEFLOW_REMOTE_PASSWORD=$PW "$BUILD/cacheflowctl" store verify --dir "$T/a/store" --remote "redis://127.0.0.1:$RPORT" 2>&1); rc=$?
check "store verify --remote: every remote chunk checks out (exit 0)" "[ $rc -eq 0 ] && echo \"\$out\" | grep -q 'remote redis://127.0.0.1:$RPORT: chunks ok [0-9]*, damaged 0'"
check "store verify --remote scanned the sessions' chunks" "[ \"\$(echo \"\$out\" | sed -n 's/.*chunks ok \\([0-9]*\\), damaged 0$/\\1/p' | tail -1)\" -ge 48 ]"

# ------------------------------------------------------------------ damage behind the daemons' backs
seed=$((seed+1))
eng a --policy load --prefix 256 --new 16 --turns 0 --seed $seed >/dev/null 2>"$T/a-dmg.err"
chunks=$((chunks + 256 / C))
wait_markers $RPORT $chunks
# B has never seen this conversation: corrupt one layer-1 cell and delete one layer-2 cell of each
# of its chunks (A's newest keys: not in B's local store, which holds the earlier sessions)
before_c=$(stat_of b cacheflow_remote_cells_corrupt); before_m=$(stat_of b cacheflow_remote_cells_missing)
n=0
for k in $(rcli -p $RPORT --scan --pattern '*}:1'); do
  rcli -p $RPORT setrange "$k" 60 "XXXX" >/dev/null; n=$((n+1))
done
for k in $(rcli -p $RPORT --scan --pattern '*}:0'); do rcli -p $RPORT del "$k" >/dev/null; done
check "damaged cells in Redis ($n corrupted)" "[ $n -gt 0 ]"
eng b --policy load --prefix 256 --new 16 --turns 1 --verify --no-save-first --seed $seed >"$T/b-dmg.json" 2>"$T/b-dmg.err"
check "corrupt and deleted remote cells: B's restore still verifies (recomputed)" "[ $? -eq 0 ]"
check "the failed cells were recomputed (fallback > 0)" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .fallback] | add' $T/b-dmg.json)\" -gt 0 ]"
check "corrupt cells counted" "[ \"\$(stat_of b cacheflow_remote_cells_corrupt)\" -gt \"$before_c\" ]"
check "missing cells counted" "[ \"\$(stat_of b cacheflow_remote_cells_missing)\" -gt \"$before_m\" ]"
out=$(CACHEFLOW_REMOTE_PASSWORD=$PW "$BUILD/cacheflowctl" store verify --dir "$T/a/store" --remote "redis://127.0.0.1:$RPORT" 2>&1); rc=$?
check "store verify --remote finds the damage (exit 1, damaged chunks, missing and corrupt cells)" \
  "[ $rc -eq 1 ] && echo \"\$out\" | grep -q 'damaged [1-9]' && echo \"\$out\" | grep -q 'missing [1-9][0-9]*, corrupt [1-9]'"

# ------------------------------------------------------------------ promotion of remote hits
# B restores a session only the remote tier holds, without saving it (--no-save-turns): the chunks
# it read whole are promoted into its local tiers, so its next restore of them is local
seed=$((seed+1)); PSEED=$seed
eng a --policy load --prefix 256 --new 16 --turns 0 --seed $PSEED >/dev/null 2>"$T/a-promo.err"
chunks=$((chunks + 256 / C))
wait_markers $RPORT $chunks
before_p=$(stat_of b cacheflow_remote_promotions_promoted)
wb() { echo $(( $(stat_of b cacheflow_remote_writes_written) + $(stat_of b cacheflow_remote_writes_skipped) + $(stat_of b cacheflow_remote_writes_dropped) )); }
before_w=$(wb)
eng b --policy load --prefix 256 --new 16 --turns 1 --verify --no-save-first --no-save-turns --seed $PSEED >"$T/b-promo1.json" 2>"$T/b-promo1.err"
rc=$?
check "promotion: B's first restore (remote) verifies" "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_remote' $T/b-promo1.json)\" = 256 ]"
for _ in $(seq 1 600); do [ "$(stat_of b cacheflow_remote_promotions_promoted)" -ge $((before_p + 256 / C)) ] && break; sleep 0.1; done
check "promotion: B counts the $((256 / C)) chunks it read whole as promoted" \
  "[ \"\$(stat_of b cacheflow_remote_promotions_promoted)\" -ge $((before_p + 256 / C)) ]"
eng b --policy load --prefix 256 --new 16 --turns 1 --verify --no-save-first --no-save-turns --seed $PSEED >"$T/b-promo2.json" 2>"$T/b-promo2.err"
rc=$?
j="$T/b-promo2.json"
check "promotion: B's second restore verifies" "[ $rc -eq 0 ]"
check "promotion: B's Lookup now finds the prefix in its local tiers (cpu + ssd = 256, remote 0)" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_cpu + .lookup_ssd' $j)\" = 256 ] && [ \"\$(jq -s '[.[] | select(.mode==\"prefill\")][0] | .lookup_remote' $j)\" = 0 ]"
check "promotion: the second restore loads locally, nothing from the remote tier" \
  "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote] | add' $j)\" = 0 ] && [ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_cpu + .cells_ssd] | add' $j)\" -gt 0 ]"
check "promotion: promoted chunks are not queued for the write-back (the remote holds them)" "[ \"\$(wb)\" = $before_w ]"

# ------------------------------------------------------------------ SIGKILL of redis mid-restore
seed=$((seed+1))
eng a --policy load --prefix 512 --new 16 --turns 0 --seed $seed >/dev/null 2>"$T/a-kill.err"
chunks=$((chunks + 512 / C))
wait_markers $RPORT $chunks
# hold B's remote reads to 0.5 Mbit/s (reloadable) so the restore is still loading when redis dies:
# the prefix's 256 KiB then take about 4 s, longer than the polls below take on a busy machine
printf 'remote_read_gbps = 0.0005\n' >> "$T/b/d.conf"
check "B reloads remote_read_gbps = 0.0005 (SIGHUP)" "reload_node b remote_read_gbps"
eng b --policy load --prefix 512 --new 16 --turns 1 --verify --no-save-first --seed $seed >"$T/b-kill.json" 2>"$T/b-kill.err" &
EPID=$!
# redis dies once B has the restore in flight (its cells' reads are held back by the limit; if
# none was read yet they all fail over to recompute: either way some cells are recomputed)
for _ in $(seq 1 600); do awk "BEGIN{exit !($(stat_of b cacheflow_restores_in_flight) + 0 >= 1)}" && break; sleep 0.1; done
kill -9 "$RPID_r1"; wait "$RPID_r1" 2>/dev/null
wait $EPID
check "redis SIGKILLed mid-restore: the restore completes and verifies" "[ $? -eq 0 ]"
check "... some of its cells were recomputed after the kill" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .fallback + .cells_computed] | add' $T/b-kill.json)\" -gt 0 ]"
check "node B keeps serving" "\"$BUILD/cacheflowctl\" status --addr unix:$T/b/d.sock >/dev/null"
check "Stats report the remote tier down" "[ \"\$(stat_of b cacheflow_remote_up)\" = 0 ]"
sed -i '/^remote_read_gbps/d' "$T/b/d.conf"
check "B reloads the default remote_read_gbps (SIGHUP)" "reload_node b remote_read_gbps"
eng b --policy optimal --prefix 128 --new 16 --turns 1 --verify --seed 999 >"$T/b-down.json" 2>"$T/b-down.err"
check "with redis down, B still saves and restores from its local tiers" "[ $? -eq 0 ]"
eng b --policy load --prefix 256 --new 16 --turns 1 --verify --no-save-first --no-save-turns --seed $PSEED >"$T/b-promo3.json" 2>"$T/b-promo3.err"
rc=$?
check "promotion: with redis down, B restores the promoted prefix from its local tiers, verified" \
  "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_cpu + .cells_ssd] | add' $T/b-promo3.json)\" -gt 0 ] && [ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote + .fallback] | add' $T/b-promo3.json)\" = 0 ]"
# a daemon started while its remote is down starts and serves
node_conf c "redis://127.0.0.1:$RPORT" "remote_password = $PW\n"
check "node C starts while redis is down" "start_node c"
eng c --policy optimal --prefix 128 --new 16 --turns 1 --verify --seed 5 >"$T/c.json" 2>"$T/c.err"
check "node C serves restores from its local tiers" "[ $? -eq 0 ]"
check "node C's log says the remote tier was not reachable" "grep -q 'not reachable' $T/c/d.log"
stop_node c
# back on the same port (empty: no persistence): B reconnects after its backoff
check "redis restarts on the same port" "cf_start_redis r1 $RPORT --requirepass $PW"
seed=$((seed+1))
eng a --policy load --prefix 256 --new 16 --turns 0 --seed $seed >/dev/null 2>"$T/a-back.err"
check "A writes back to the restarted redis" "wait_markers $RPORT 8"
ok2=1
for _ in $(seq 1 60); do # B's reconnect backoff, however long a busy machine makes it
  eng b --policy load --prefix 256 --new 16 --turns 1 --verify --no-save-first --seed $seed >"$T/b-back.json" 2>"$T/b-back.err" || { ok2=0; break; }
  [ "$(jq -s '[.[] | select(.mode=="session") | .cells_remote] | add' "$T/b-back.json")" -gt 0 ] && break
  sleep 0.5
done
check "B reconnects: its restore loads from the remote tier again" "[ $ok2 = 1 ] && [ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote] | add' $T/b-back.json)\" -gt 0 ]"
check "/metrics-facing Stats: remote connected again" "[ \"\$(stat_of b cacheflow_remote_up)\" = 1 ]"
stop_node a; stop_node b

# ------------------------------------------------------------------ Redis Cluster
P1=$(cf_free_port); P2=$(cf_free_port); P3=$(cf_free_port)
PW=  # the cluster runs without a password
rcli() { redis-cli "$@"; }
ok3=1
for i in 1 2 3; do
  v="P$i"; cf_start_redis "c$i" "${!v}" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 || ok3=0
done
redis-cli --cluster create 127.0.0.1:$P1 127.0.0.1:$P2 127.0.0.1:$P3 --cluster-yes >"$T/cluster.log" 2>&1 || ok3=0
for _ in $(seq 1 300); do redis-cli -p $P1 cluster info 2>/dev/null | grep -q cluster_state:ok && break; sleep 0.1; done
check "a three-master Redis Cluster forms" "[ $ok3 = 1 ] && redis-cli -p $P1 cluster info | grep -q cluster_state:ok"
rm -rf "$T/a" "$T/b"
node_conf a "redis+cluster://127.0.0.1:$P1"
node_conf b "redis+cluster://127.0.0.1:$P2,127.0.0.1:$P3"
check "nodes A and B start on the cluster" "start_node a && start_node b"
for pol in load optimal; do
  seed=$((seed+1))
  eng a --policy $pol --prefix 256 --new 16 --turns 0 --seed $seed >/dev/null 2>"$T/ca-$pol.err"
  n=0; for p in $P1 $P2 $P3; do n=$((n + $(markers $p))); done
  for _ in $(seq 1 600); do n=0; for p in $P1 $P2 $P3; do n=$((n + $(markers $p))); done; [ $n -ge 8 ] && break; sleep 0.1; done
  eng b --policy $pol --prefix 256 --new 16 --turns 1 --verify --no-save-first --seed $seed >"$T/cb-$pol.json" 2>"$T/cb-$pol.err"
  check "cluster, $pol: B restores A's session, verified" "[ $? -eq 0 ]"
  check "cluster, $pol: cells came from the remote tier" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_remote] | add' $T/cb-$pol.json)\" -gt 0 ]"
done
spread=0; for p in $P1 $P2 $P3; do [ "$(markers $p)" -gt 0 ] && spread=$((spread+1)); done
check "the chunks are spread over the masters ($spread of 3 hold some)" "[ $spread -ge 2 ]"
stop_node a; stop_node b

if [ $F -ne 0 ]; then for f in "$T"/*/d.log; do echo "--- $f"; tail -n 15 "$f"; done; fi
finish
