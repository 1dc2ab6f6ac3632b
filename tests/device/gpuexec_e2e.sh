#!/usr/bin/env bash
# tests/device/gpuexec_e2e.sh — cacheflowd's GPU executor end to end on a GPU machine (run.sh
# step gpuexec-e2e): the real daemon (backend = cuda, gpu_executor = on) and a GPU engine process
# (build/cf-gpuengine) whose paged KV is device memory registered as CUDA IPC handles over gRPC.
# The engine saves a prefix (D2H into the pinned CPU tier), then restores it with every policy
# into poisoned blocks and checks every cell (loaded: the saved bytes; recomputed: bf16
# tolerance of an fp32 prefill); then load and optimal again with the CPU tier evicted (cells
# read from the SSD tier into pinned buffers). UNVERIFIED until a device session has run it.
# E2E_TIMEOUT (s, default 110): the engine's limit, under run.sh's step timeout, so a hang still
# prints the daemon's log; the daemon gets 20 s to stop after SIGTERM, then SIGKILL.
set -u
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-fixtures/public-llama-gqa}
PREFIX=${PREFIX:-1000}
E2E_TIMEOUT=${E2E_TIMEOUT:-110}
T=$(mktemp -d /tmp/cf-gpuexec-XXXXXX)
DPID=
# whatever happens (failure, run.sh's SIGTERM): the daemon's log tail, no daemon left behind
cleanup() {
  if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
    kill -TERM "$DPID" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$DPID" 2>/dev/null && { echo "FAIL cacheflowd still running 20 s after SIGTERM: SIGKILL"; kill -KILL "$DPID"; }
  fi
  if [ -f "$T/d.log" ]; then echo "--- cacheflowd log (last 40 lines)"; tail -n 40 "$T/d.log"; fi
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
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
# GPU_MEMORY_BYTES (run.sh step gpuexec-e2e-budget): the same within gpu_memory_bytes (issue 18):
# restores from one device arena; afterwards the daemon's own accounting (/metrics peak) and the
# driver's view of its memory (nvidia-smi, less the CUDA context) stay within the budget.
if [ -n "${GPU_MEMORY_BYTES:-}" ]; then
  printf 'gpu_memory_bytes = %s\nmetrics_listen = unix:%s/m.sock\n' "$GPU_MEMORY_BYTES" "$T" >>"$T/d.conf"
fi
build/cacheflowd --config "$T/d.conf" >"$T/d.log" 2>&1 &
DPID=$!
# start-up: CUDA context, weights, cost-model calibration, pinned CPU tier: up to 60 s
for _ in $(seq 1 600); do [ -S "$T/d.sock" ] && break; kill -0 $DPID 2>/dev/null || break; sleep 0.1; done
rc=1
if [ -S "$T/d.sock" ]; then
  timeout --foreground -k 5 "$E2E_TIMEOUT" build/cf-gpuengine --daemon "unix:$T/d.sock" --model "$MODEL" --prefix "$PREFIX"
  rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "FAIL cf-gpuengine did not finish in $E2E_TIMEOUT s"
  if [ -n "${GPU_MEMORY_BYTES:-}" ]; then
    peak=$(curl -s --unix-socket "$T/m.sock" http://localhost/metrics | awk '$1 == "cacheflow_memory_peak_bytes{pool=\"gpu\"}" {print $2}')
    smi=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', ' -v p=$DPID '$1 == p {print $2 * 1048576}')
    # the CUDA context and cuBLAS/driver allocations outside the daemon's accounting: 1 GiB at most
    echo "RESULT gpu-budget budget=$GPU_MEMORY_BYTES accounted_peak=${peak:-none} nvidia_smi_now=${smi:-none}"
    [ -n "$peak" ] && [ "${peak%.*}" -gt 0 ] && [ "${peak%.*}" -le "$GPU_MEMORY_BYTES" ] ||
      { echo "FAIL gpu_memory_bytes: accounted peak ${peak:-missing} not in (0, $GPU_MEMORY_BYTES]"; rc=1; }
    [ -z "$smi" ] || [ "${smi%.*}" -le $((GPU_MEMORY_BYTES + 1073741824)) ] ||
      { echo "FAIL gpu_memory_bytes: nvidia-smi says $smi bytes, over the budget + 1 GiB of context"; rc=1; }
  fi
else
  kill -0 $DPID 2>/dev/null && echo "FAIL cacheflowd did not start in 60 s (gpu_executor = on, backend = cuda)" ||
    echo "FAIL cacheflowd exited during start-up (gpu_executor = on, backend = cuda): see its log below"
fi
kill -TERM $DPID 2>/dev/null
drc=0
for _ in $(seq 1 40); do kill -0 $DPID 2>/dev/null || break; sleep 0.5; done
if kill -0 $DPID 2>/dev/null; then
  echo "FAIL cacheflowd did not exit 20 s after SIGTERM (a stream waiting forever?)"
  kill -KILL $DPID; rc=1
else
  wait $DPID; drc=$?
  [ $drc -eq 0 ] || { echo "FAIL cacheflowd exit status $drc after SIGTERM"; rc=1; }
fi
DPID=
exit $rc
