#!/usr/bin/env bash
# tests/device/gpuexec_e2e.sh — cacheflowd's GPU executor end to end on a GPU machine (run.sh
# step gpuexec-e2e): the real daemon (backend = cuda, gpu_executor = on) and a GPU engine process
# (build/cf-gpuengine) whose paged KV is device memory registered as CUDA IPC handles over gRPC.
# The engine saves a prefix (D2H into the pinned CPU tier), then restores it with every policy
# into poisoned blocks and checks every cell (loaded: the saved bytes; recomputed: bf16
# tolerance of an fp32 prefill); then load and optimal again with the CPU tier evicted (cells
# read from the SSD tier into pinned buffers). UNVERIFIED until a device session has run it.
set -u
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-fixtures/public-llama-gqa}
PREFIX=${PREFIX:-1000}
T=$(mktemp -d /tmp/cf-gpuexec-XXXXXX)
cat >"$T/d.conf" <<CONF
listen = unix:$T/d.sock
store_dir = $T/store
model = $(cd "$MODEL" && pwd)
backend = cuda
gpu_executor = on
chunk_tokens = 64
cpu_tier_bytes = 256m
ssd_tier_bytes = 1g
log_level = debug
CONF
build/cacheflowd --config "$T/d.conf" >"$T/d.log" 2>&1 &
DPID=$!
for _ in $(seq 1 300); do [ -S "$T/d.sock" ] && break; kill -0 $DPID 2>/dev/null || break; sleep 0.1; done
rc=1
if [ -S "$T/d.sock" ]; then
  build/cf-gpuengine --daemon "unix:$T/d.sock" --model "$MODEL" --prefix "$PREFIX"
  rc=$?
else
  echo "FAIL cacheflowd did not start (gpu_executor = on, backend = cuda)"
fi
kill -TERM $DPID 2>/dev/null
wait $DPID
drc=$?
echo "--- cacheflowd log (last 40 lines)"
tail -n 40 "$T/d.log"
[ $drc -eq 0 ] || { echo "FAIL cacheflowd exit status $drc after SIGTERM"; rc=1; }
rm -rf "$T"
exit $rc
