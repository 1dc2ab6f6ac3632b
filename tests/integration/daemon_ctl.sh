#!/usr/bin/env bash
# cacheflowctl against the real daemon: each subcommand's output and exit status, and a clear
# one-line error naming the daemon's reason.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-daemon-ctl
export CACHEFLOW_ADDR="unix:$T/d.sock"
out=$($BUILD/cacheflowctl status 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "cacheflowctl status: unix:$T/d.sock: .*UNAVAILABLE" && ok "status without a daemon: exit 1, UNAVAILABLE" || bad "status without daemon" "rc=$rc $out"
printf 'policy = layerwise\n' > "$T/c.conf"
cf_daemon_fixture "$T/c.conf"
out=$($BUILD/cacheflowctl status 2>&1) && echo "$out" | grep -q "SERVING, up .* 0 engine(s), 0 restore(s) in flight, model $FIX" && ok "status: SERVING summary" || bad "status" "$out"
out=$($BUILD/cacheflowctl stats 2>&1) && echo "$out" | grep -q "^requests_total [0-9]" && echo "$out" | grep -q "^cacheflow_restores_total 0" && ok "stats" || bad "stats" "$out"
out=$($BUILD/cacheflowctl config policy 2>&1) && [ "$out" = "policy = layerwise" ] && ok "config policy (from the file)" || bad "config policy" "$out"
out=$($BUILD/cacheflowctl config chunk_tokens 2>&1) && echo "$out" | grep -q "chunk_tokens = 256 .*restart to change" && ok "config marks non-reloadable keys" || bad "config chunk_tokens" "$out"
out=$($BUILD/cacheflowctl config nope 2>&1); [ $? -eq 1 ] && echo "$out" | grep -q "NOT_FOUND: no setting named 'nope'" && ok "config unknown -> NOT_FOUND" || bad "config unknown" "$out"
out=$($BUILD/cacheflowctl lookup --engine 42 --tokens 1,2,3 2>&1); [ $? -eq 1 ] && echo "$out" | grep -q "cacheflowctl lookup: .*NOT_FOUND: engine_id 42 is not registered" && ok "lookup unknown engine" || bad "lookup" "$out"
out=$($BUILD/cacheflowctl lookup --engine 42 2>&1); [ $? -eq 2 ] && ok "lookup without --tokens: usage error" || bad "lookup usage" "$out"
out=$($BUILD/cacheflowctl lookup --engine 4x2 --tokens 1,2 2>&1); [ $? -eq 2 ] && echo "$out" | grep -q "cacheflowctl lookup: --engine '4x2': must be a non-negative integer" && ok "lookup bad --engine: named usage error" || bad "lookup bad --engine" "$out"
out=$($BUILD/cacheflowctl evict --bytes -5 2>&1); [ $? -eq 2 ] && echo "$out" | grep -q "cacheflowctl evict: --bytes '-5'" && ok "evict bad --bytes: named usage error" || bad "evict bad --bytes" "$out"
out=$($BUILD/cacheflowctl restore --engine 42 --tokens 1,2 --blocks 0 --policy cake 2>&1); [ $? -eq 1 ] && echo "$out" | grep -q "NOT_FOUND" && ok "restore unknown engine" || bad "restore" "$out"
out=$($BUILD/cacheflowctl restore --engine 42 --tokens 1,2 --blocks 0 --policy fastest 2>&1); [ $? -eq 2 ] && echo "$out" | grep -q "policy recompute|load" && ok "restore bad policy: usage error" || bad "restore bad policy" "$out"
out=$($BUILD/cacheflowctl evict --tier cpu 2>&1) && [ "$out" = "evicted 0 bytes in 0 chunks" ] && ok "evict of an empty CPU tier" || bad "evict" "$out"
out=$($BUILD/cacheflowctl evict --tier ssd 2>&1); [ $? -eq 1 ] && echo "$out" | grep -q "UNIMPLEMENTED: .*SSD tier evicts by itself" && ok "evict ssd: refused with the reason" || bad "evict ssd" "$out"
out=$($BUILD/cacheflowctl evict --tier gpu 2>&1); [ $? -eq 2 ] && ok "evict bad tier: usage error" || bad "evict bad tier" "$out"
out=$($BUILD/cacheflowctl bench --clients 4 --requests 50 2>&1) && echo "$out" | grep -q "4 client(s) x 50 request(s).* 0 error(s)" && ok "bench small run" || bad "bench" "$out"
finish
