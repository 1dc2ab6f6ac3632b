#!/usr/bin/env bash
# tests/device/run.sh — the CUDA backend's checks on a GPU machine, in ONE command.
#
# Runs in a tree staged by tests/device/stage.sh (prebuilt binaries, libs/, fixtures/):
#   1. nvidia-smi
#   2. every kernel test build/tests/kt_* (CPU references, fresh random inputs, poisoned outputs);
#      kt_gpupath first: lib/gpu across two processes (CUDA IPC, per-layer gate, pinned and SSD
#      cells into paged blocks, bit-exact), with a longer timeout; then kt_gpuexec (lib/exec's GPU
#      executor vs its CPU executor, every policy) and gpuexec-e2e (cacheflowd gpu_executor = on
#      with a GPU engine process over CUDA IPC: Save, Restore per policy, bytes checked)
#   3. compute-sanitizer memcheck on the attention, paged, elementwise and backend tests,
#      racecheck on the wgmma attention kernel; the backend test again with CF_ATTN_IMPL=wgmma
#   4. cacheflowctl kv --backend cuda on every fixture vs transformers' kv.safetensors
#      (cacheflowctl kv-compare, bf16 tolerance), whole and chunked
#   5. benchmarks: attention vs torch SDPA, load path vs contiguous memcpy, GEMM, Llama-3-8B layer
#      prefill vs transformers' LlamaDecoderLayer (with the mma.sync and with the wgmma attention
#      kernel), compute ∥ load overlap, and lib/gpu's loader (bench-gpupath: each load mode vs
#      contiguous memcpy, compute ∥ load, SSD ring -> GPU), lib/exec's GPU executor (bench-gpuexec)
#   6. a table of ratios, printed last and written to $OUT/results.md (full log: $OUT/log.txt)
# Without a GPU it checks that everything it would run exists, says so, and exits 0.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/device-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
RES=$OUT/results.txt
: >"$LOG"
: >"$RES"
export LD_LIBRARY_PATH="$ROOT/libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CF_FIXTURES="$ROOT/fixtures"
PY=${PYTHON:-python3}

# stage.sh ships the libraries gzipped (the device tool's carry limit)
[ -f libs.tgz ] && [ ! -d libs ] && tar xzf libs.tgz
missing=0
for f in build/cacheflowctl build/tests/kt_attn build/tests/kt_paged build/tests/kt_elementwise \
         build/tests/kt_gemm build/tests/kt_backend build/tests/kt_gpupath build/tests/kt_gpuexec \
         build/cacheflowd build/cf-gpuengine tests/device/gpuexec_e2e.sh tests/device/torch_ref.py \
         tests/device/summarize.py fixtures/public-llama-gqa/kv.safetensors; do
  [ -e "$f" ] || { echo "run.sh: missing $f (stage with tests/device/stage.sh)"; missing=1; }
done
[ $missing -eq 0 ] || exit 1
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "run.sh: no GPU on this machine: staged tree complete, nothing to run (use the device machine)"
  exit 0
fi

# CUDA libraries: the toolkit's, else the ones PyTorch's wheels ship.
if ldd build/tests/kt_gemm | grep -q "not found"; then
  for m in cublas cuda_runtime; do
    d=$($PY -c "import nvidia.$m, os; print(os.path.join(list(nvidia.$m.__path__)[0], 'lib'))" 2>/dev/null)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:/usr/local/cuda/lib64"
fi
ldd build/tests/kt_gemm | grep "not found" && echo "run.sh: unresolved libraries (above)"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)

# step NAME TIMEOUT CMD...: run, log, and record "STEP name rc summary" in results.txt.
# ONLY=regex (environment) runs just the steps whose name matches (a short follow-up call).
step() {
  local name=$1 to=$2; shift 2
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  local t0=$(date +%s%N)
  echo "=== $name: $*" >>"$LOG"
  timeout "$to" "$@" >"$OUT/.step" 2>&1
  local rc=$?
  cat "$OUT/.step" >>"$LOG"
  grep '^RESULT ' "$OUT/.step" >>"$RES"
  local sum=$(grep -E '[0-9]+ passed, [0-9]+ failed|ERROR SUMMARY|max rel|kv-compare|worst' "$OUT/.step" | tail -n 1)
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "STEP $name rc=$rc ($((ms / 1000)).$(( (ms % 1000) / 100 )) s) ${sum}" | tee -a "$RES"
  grep -E '^FAIL' "$OUT/.step" | head -n 20
  return 0
}

nvidia-smi | tee -a "$LOG" | head -n 15
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"

# lib/gpu first (the newest, unverified code): four engine/daemon process pairs, <= 30 s each.
step kt_gpupath 150 build/tests/kt_gpupath
# lib/exec's GPU executor vs the CPU executor, every policy and load mode, in-process; then the
# real cacheflowd (gpu_executor = on) with a GPU engine over CUDA IPC (unverified until here).
step kt_gpuexec 240 build/tests/kt_gpuexec
step gpuexec-e2e 240 bash tests/device/gpuexec_e2e.sh
for t in build/tests/kt_*; do
  case "$(basename "$t")" in kt_gpupath|kt_gpuexec) continue ;; esac
  step "$(basename "$t")" 90 "$t"
done

if [ -n "$SAN" ]; then
  for t in kt_attn kt_paged kt_elementwise kt_backend; do
    step "memcheck-$t" 150 "$SAN" --tool memcheck --error-exitcode 9 "build/tests/$t"
  done
  # The wgmma attention kernel alone (unverified until it passes here): shared-memory races of
  # its cp.async double buffer against the warpgroup MMAs' reads.
  step "racecheck-kt_attn-wgmma" 150 "$SAN" --tool racecheck --error-exitcode 9 build/tests/kt_attn --wgmma
  step "synccheck-kt_attn-wgmma" 120 "$SAN" --tool synccheck --check-warpgroup-mma yes --error-exitcode 9 build/tests/kt_attn --wgmma
else
  echo "STEP memcheck rc=127 compute-sanitizer not found" | tee -a "$RES"
fi

# The whole CUDA backend with the wgmma attention kernel selected (CF_ATTN_IMPL=wgmma) against
# the CPU reference (kt_attn above already checks the kernel alone).
step kt_backend-wgmma 90 env CF_ATTN_IMPL=wgmma build/tests/kt_backend

# The CLI on every fixture: whole and chunked, CUDA backend, vs transformers' KV, by kv-compare's
# max|err|/max|ref| per tensor: 1e-2 for the shared fixture (fp32 weights); 2e-2 for the held-out
# ones, which include F16/BF16 checkpoints whose weights the backend rounds to bf16.
for d in fixtures/public-llama-gqa tests/fixtures/*/; do
  d=${d%/}
  n=$(basename "$d")
  [ -f "$d/kv.safetensors" ] || continue
  tol=2e-2
  [ "$n" = public-llama-gqa ] && tol=1e-2
  for ch in 0 64; do
    o=/tmp/cf-kv-$n-$ch.safetensors
    step "ctl-kv-$n-chunk$ch" 60 bash -c "build/cacheflowctl kv --model $d --tokens $d/kv.safetensors \
      --out $o --backend cuda $( [ $ch -gt 0 ] && echo --chunk $ch ) && \
      build/cacheflowctl kv-compare $o $d/kv.safetensors --tol $tol"
  done
done

step bench-gemm 60 build/tests/kt_gemm --bench
step bench-attn 90 build/tests/kt_attn --bench
step bench-load 120 build/tests/kt_paged --bench
step bench-layer 150 build/tests/kt_backend --bench
# The same layer benchmark with the wgmma attention kernel: RESULT layer_wgmma, so the table
# shows the prefill ratio vs transformers with each kernel from one call.
step bench-layer-wgmma 120 env CF_ATTN_IMPL=wgmma build/tests/kt_backend --bench
# lib/gpu loader: 1 GiB into 16 KiB-1 MiB blocks per mode vs contiguous memcpy; compute ∥ load;
# SSD ring with the GPU sink vs a memcpy sink (store under $KT_SSD_DIR, default /var/tmp).
step bench-gpupath 180 build/tests/kt_gpupath --bench
# lib/exec GPU executor: a 32k-token prefix on 4 Llama-3-8B-shaped layers per policy: executed vs
# the planner's prediction and the bound, vs load-only and recompute-only (table h).
step bench-gpuexec 300 build/tests/kt_gpuexec --bench 32768
step bench-torch 240 env PYTHONUNBUFFERED=1 $PY tests/device/torch_ref.py
rm -f "$OUT/.step"

$PY tests/device/summarize.py "$RES" >"$OUT/results.md" 2>>"$LOG" || /usr/bin/python3 tests/device/summarize.py "$RES" >"$OUT/results.md"
echo
cat "$OUT/results.md"
