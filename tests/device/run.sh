#!/usr/bin/env bash
# tests/device/run.sh — the CUDA backend's checks on a GPU machine, in ONE command (see
# tests/device/README.md for the exact device call and how to read the results).
#
# Runs in a tree staged by tests/device/stage.sh (prebuilt binaries, libs.tgz, fixtures/).
#   PRESET=all (default)  correctness first, in dependency order, then the benchmarks that decide
#                         issue 6's goals, then the slow sanitizer runs of the attention kernels
#   PRESET=verify         correctness only (kernel tests, lib/gpu, lib/exec GPU executor, the
#                         daemon end to end, CLI fixtures, every sanitizer)
#   PRESET=bench          benchmarks only (layer prefill vs torch with mma and wgmma, load path,
#                         overlap, lib/gpu loader, GPU executor, attention, GEMM)
#   ONLY=regex            on top of the preset: only the steps whose name matches
#   BUDGET=seconds        wall-clock budget of the whole script (default 420): a step gets at most
#                         what is left (its own timeout otherwise); a step with < 8 s left is
#                         recorded SKIPPED. Keep BUDGET about 60 s under the device call's timeout_s.
# Order of PRESET=all (each step has its own timeout, so one hang costs that step only):
#   kt_attn (wgmma probes first) -> kt_paged, kt_backend, kt_elementwise, kt_gemm -> kt_gpupath
#   (lib/gpu, two processes over CUDA IPC) -> kt_borrow (the cuda backend on an engine's weights over
#   CUDA IPC, issue 18) -> kt_gpuexec (lib/exec GPU vs CPU executor) ->
#   gpuexec-e2e (cacheflowd gpu_executor = on + a GPU engine process) -> kt_backend-wgmma ->
#   ctl-kv-* (every fixture vs transformers) -> memcheck of paged/elementwise/backend ->
#   bench-layer, bench-layer-wgmma, bench-torch (table a) -> bench-load -> bench-gpupath (skipped
#   when kt_gpupath failed) -> bench-gpuexec (skipped when kt_gpuexec failed) -> bench-attn,
#   bench-gemm -> memcheck-kt_attn, racecheck/synccheck of the wgmma kernel.
# Results: $OUT/results.txt (STEP and RESULT lines, appended as each step ends), $OUT/results.md
# (the tables, rewritten after every step: a run killed at its limit still returns them) and
# $OUT/log.txt (every step's full output).
# Without a GPU it checks that everything it would run exists, says so, and exits 0.
set -u
T_START=$(date +%s)
PRESET=${PRESET:-all}
BUDGET=${BUDGET:-420}
case "$PRESET" in all|verify|bench) ;; *) echo "run.sh: PRESET=$PRESET: expected all, verify or bench"; exit 2 ;; esac
case "$BUDGET" in ''|*[!0-9]*) echo "run.sh: BUDGET=$BUDGET: expected whole seconds"; exit 2 ;; esac
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/device-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
RES=$OUT/results.txt
: >"$LOG"
: >"$RES"
export CF_FIXTURES="$ROOT/fixtures"
PY=${PYTHON:-python3}

# stage.sh ships the libraries gzipped (the device tool's carry limit); unpacked OUTSIDE the
# staged tree (unpacked there it would grow to ~105 MiB and no longer fit a later carry)
LIBDIR=$ROOT/libs
if [ -f libs.tgz ] && [ ! -d libs ]; then
  LIBDIR=$(mktemp -d "${TMPDIR:-/tmp}/cf-devlibs-XXXXXX")
  trap 'rm -rf "$LIBDIR"' EXIT
  tar xzf libs.tgz -C "$LIBDIR" --strip-components=1 || { echo "run.sh: cannot unpack libs.tgz"; exit 1; }
fi
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=0
for f in build/cacheflowctl build/tests/kt_attn build/tests/kt_paged build/tests/kt_elementwise \
         build/tests/kt_gemm build/tests/kt_backend build/tests/kt_gpupath build/tests/kt_gpuexec \
         build/cacheflowd build/cf-gpuengine tests/device/gpuexec_e2e.sh tests/device/torch_ref.py \
         tests/device/summarize.py fixtures/public-llama-gqa/kv.safetensors; do
  [ -e "$f" ] || { echo "run.sh: missing $f (stage with tests/device/stage.sh)"; missing=1; }
done
for t in build/tests/kt_* build/cacheflowctl build/cacheflowd build/cf-gpuengine; do
  [ -x "$t" ] || case "$t" in *.d) ;; *) echo "run.sh: $t is not executable"; missing=1 ;; esac
done
[ $missing -eq 0 ] || exit 1
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  # every library but the C/C++ runtime (stage.sh's list) and CUDA/NVIDIA's (the device has
  # those) must come from the shipped libs, not from this machine's packages (the device image
  # lacks OpenBLAS, liburing, gRPC, ...)
  un=$(ldd build/cacheflowctl build/cacheflowd build/cf-gpuengine build/tests/kt_* 2>/dev/null |
       awk '/=>/ {print $1, $3}' | grep -Ev '^lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so|^ld-linux|^lib(cu|nv)' |
       awk -v d="$LIBDIR/" 'index($2, d) != 1 {print $1}' | sort -u | tr '\n' ' ')
  if [ -n "$un" ]; then echo "run.sh: not resolved from the shipped libs.tgz: $un"; exit 1; fi
  echo "run.sh: no GPU on this machine: staged tree complete (PRESET=$PRESET), nothing to run (use the device machine)"
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

# SAN= (set, empty) runs without the sanitizer steps (tests/integration/device_runsh.sh does)
SAN=${SAN-$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)}

declare -A STEP_RC

# step NAME TIMEOUT CMD...: run under min(TIMEOUT, what is left of BUDGET), log it, record
# "STEP name rc summary" in results.txt and rewrite results.md (partial results survive a kill).
step() {
  local name=$1 to=$2; shift 2
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  local left=$(( BUDGET - ($(date +%s) - T_START) ))
  if [ "$left" -lt 8 ]; then
    echo "STEP $name SKIPPED (budget: ${BUDGET} s spent)" | tee -a "$RES"
    STEP_RC[$name]=skipped
    return 0
  fi
  [ "$to" -gt "$left" ] && to=$left
  local t0=$(date +%s%N)
  echo "=== $name (timeout ${to} s): $*" >>"$LOG"
  # -k: SIGKILL 5 s after the SIGTERM (timeout signals the step's whole process group)
  timeout -k 5 "$to" "$@" >"$OUT/.step" 2>&1 </dev/null
  local rc=$?
  # into the log at most 2000 lines per step (a sanitizer reporting every hazard could push
  # log.txt past the 16 MiB a returned file may have)
  local nl=$(wc -l <"$OUT/.step")
  if [ "$nl" -gt 2000 ]; then
    head -n 1500 "$OUT/.step" >>"$LOG"
    echo "... $((nl - 2000)) lines cut (run.sh) ..." >>"$LOG"
    tail -n 500 "$OUT/.step" >>"$LOG"
  else
    cat "$OUT/.step" >>"$LOG"
  fi
  grep '^RESULT ' "$OUT/.step" >>"$RES"
  local sum=$(grep -E '[0-9]+ passed, [0-9]+ failed|ERROR SUMMARY|max rel|kv-compare|worst' "$OUT/.step" | tail -n 1)
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local why=""
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && why=" TIMEOUT after ${to} s; last lines: $(tail -n 3 "$OUT/.step" | tr '\n' ' ' | cut -c1-200)"
  echo "STEP $name rc=$rc ($((ms / 1000)).$(( (ms % 1000) / 100 )) s) ${sum}${why}" | tee -a "$RES"
  grep -E '^FAIL' "$OUT/.step" | head -n 20
  STEP_RC[$name]=$rc
  summarize >/dev/null 2>&1
  return 0
}
# after NAME: 0 when step NAME ran and passed (or was not selected by ONLY)
after() { [ -z "${STEP_RC[$1]+x}" ] || [ "${STEP_RC[$1]}" = 0 ]; }
# results.md from results.txt; the previous results.md stays when the summary fails
summarize() {
  if $PY tests/device/summarize.py "$RES" >"$OUT/results.md.tmp" 2>>"$LOG" ||
     /usr/bin/python3 tests/device/summarize.py "$RES" >"$OUT/results.md.tmp" 2>>"$LOG"; then
    mv -f "$OUT/results.md.tmp" "$OUT/results.md"
  else
    rm -f "$OUT/results.md.tmp"
  fi
}

nvidia-smi | tee -a "$LOG" | head -n 15
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"
echo "run.sh: PRESET=$PRESET BUDGET=${BUDGET}s${ONLY:+ ONLY=$ONLY}" | tee -a "$LOG"

verify_core() {
  # Kernels first (everything above them builds on them): the attention test opens with the
  # wgmma probes (random, then decodable: a wrong layout names its fix), then the paged copies,
  # the backend forward (MoE expert GEMMs grouped, then the per-expert fallback), elementwise, GEMM.
  step kt_attn 60 build/tests/kt_attn
  for t in kt_paged kt_backend kt_elementwise kt_gemm; do step $t 30 build/tests/$t; done
  for t in build/tests/kt_*; do # a kernel test added later runs too
    case "$(basename "$t")" in kt_attn|kt_paged|kt_backend|kt_elementwise|kt_gemm|kt_gpupath|kt_borrow|kt_gpuexec|*.d) continue ;; esac
    step "$(basename "$t")" 60 "$t"
  done
  # lib/gpu (two processes over CUDA IPC; four variants, <= 30 s each), then lib/exec's GPU
  # executor vs its CPU executor in-process, then the real cacheflowd (gpu_executor = on) with a
  # GPU engine process over CUDA IPC. All three unverified until here.
  step kt_gpupath 90 build/tests/kt_gpupath
  # issue 18 borrowed weights: an engine process's fused bf16 weights over CUDA IPC, checked, used
  # by the cuda backend instead of its own copy (freed), KV bit-identical; written, never run yet
  step kt_borrow 60 build/tests/kt_borrow
  step kt_gpuexec 120 build/tests/kt_gpuexec
  step gpuexec-e2e 150 env E2E_TIMEOUT=110 bash tests/device/gpuexec_e2e.sh
  # issue 18: the same within gpu_memory_bytes = 2 GiB (backend + rings + restore arena); its Saves
  # take their one-cell device buffers from that arena (cf_exec_gpu_save, kept region; not yet run)
  if after gpuexec-e2e; then step gpuexec-e2e-budget 150 env E2E_TIMEOUT=110 GPU_MEMORY_BYTES=2147483648 bash tests/device/gpuexec_e2e.sh; fi
  # the whole CUDA backend with the wgmma attention kernel selected, vs the CPU reference
  step kt_backend-wgmma 30 env CF_ATTN_IMPL=wgmma build/tests/kt_backend
  # The CLI on every fixture: whole and chunked, CUDA backend, vs transformers' KV, by kv-compare's
  # max|err|/max|ref| per tensor: 1e-2 for the shared fixture (fp32 weights); 2e-2 for the held-out
  # ones, which include F16/BF16 checkpoints whose weights the backend rounds to bf16.
  for d in fixtures/public-llama-gqa tests/fixtures/*/; do
    d=${d%/}
    local n=$(basename "$d") tol=2e-2
    [ -f "$d/kv.safetensors" ] || continue
    [ "$n" = public-llama-gqa ] && tol=1e-2
    for ch in 0 64; do
      local o=/tmp/cf-kv-$n-$ch.safetensors
      step "ctl-kv-$n-chunk$ch" 30 bash -c "build/cacheflowctl kv --model $d --tokens $d/kv.safetensors \
        --out $o --backend cuda $( [ $ch -gt 0 ] && echo --chunk $ch ) && \
        build/cacheflowctl kv-compare $o $d/kv.safetensors --tol $tol"
    done
  done
  if [ -n "$SAN" ]; then
    for t in kt_paged kt_elementwise kt_backend; do
      step "memcheck-$t" 45 "$SAN" --tool memcheck --error-exitcode 9 "build/tests/$t"
    done
  fi
}

verify_slow() {
  # the attention kernels under the sanitizers (slow: last, clipped to the budget left)
  if [ -n "$SAN" ]; then
    step memcheck-kt_attn 60 "$SAN" --tool memcheck --error-exitcode 9 build/tests/kt_attn
    # the wgmma kernel alone: shared-memory races of its cp.async double buffer against the
    # warpgroup MMAs' reads; then the warpgroup-MMA sync rules (fence / wait_group, mbarriers)
    step racecheck-kt_attn-wgmma 150 "$SAN" --tool racecheck --error-exitcode 9 build/tests/kt_attn --wgmma
    step synccheck-kt_attn-wgmma 120 "$SAN" --tool synccheck --check-warpgroup-mma yes --error-exitcode 9 build/tests/kt_attn --wgmma
  elif [ -z "${ONLY:-}" ] || [[ memcheck-racecheck-synccheck =~ $ONLY ]]; then
    echo "STEP memcheck rc=127 compute-sanitizer not found" | tee -a "$RES"
  fi
}

bench() {
  # issue 6's goal first: Llama-3-8B layer prefill vs transformers' LlamaDecoderLayer, with the
  # mma.sync and the wgmma attention kernel (table a), then the load path and overlap
  step bench-layer 60 build/tests/kt_backend --bench
  step bench-layer-wgmma 60 env CF_ATTN_IMPL=wgmma build/tests/kt_backend --bench
  step bench-torch 90 env PYTHONUNBUFFERED=1 $PY tests/device/torch_ref.py
  step bench-load 45 build/tests/kt_paged --bench
  # lib/gpu loader: 1 GiB into 16 KiB-1 MiB blocks per mode vs contiguous memcpy; compute ∥ load;
  # SSD ring with the GPU sink vs a memcpy sink (store under $KT_SSD_DIR, default /var/tmp)
  if after kt_gpupath; then step bench-gpupath 120 build/tests/kt_gpupath --bench
  else echo "STEP bench-gpupath SKIPPED (kt_gpupath failed)" | tee -a "$RES"; fi
  # lib/exec GPU executor: a 32k-token prefix on 4 Llama-3-8B-shaped layers per policy: executed
  # vs the planner's prediction and the bound, vs load-only and recompute-only (table h)
  if after kt_gpuexec; then step bench-gpuexec 150 build/tests/kt_gpuexec --bench 32768
  else echo "STEP bench-gpuexec SKIPPED (kt_gpuexec failed)" | tee -a "$RES"; fi
  step bench-attn 45 build/tests/kt_attn --bench
  step bench-gemm 30 build/tests/kt_gemm --bench
}

case "$PRESET" in
  all) verify_core; bench; verify_slow ;;
  verify) verify_core; verify_slow ;;
  bench) bench ;;
esac
rm -f "$OUT/.step"
summarize
[ -f "$OUT/results.md" ] || cp "$RES" "$OUT/results.md" # summarize.py failed from the start: the raw lines
echo "run.sh: done in $(( $(date +%s) - T_START )) s (budget ${BUDGET} s)"
echo
cat "$OUT/results.md"
