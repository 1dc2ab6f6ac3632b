#!/usr/bin/env bash
# tests/device/run.sh's own machinery, without a GPU: the real script on a synthetic staged tree
# whose binaries are small shell stand-ins and whose `nvidia-smi` (first on PATH) claims a GPU.
# Checks what the one device call relies on: PRESET order (correctness in dependency order, then
# benchmarks, then sanitizers), ONLY, a step that hangs is killed at its clipped timeout with its
# last output quoted, later steps SKIPPED once BUDGET is spent, benchmarks skipped when their
# prerequisite failed, results.md rewritten after every step, bad PRESET/BUDGET refused, and the
# no-GPU mode (missing file, unresolvable library) failing loudly.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-device-runsh

D=$T/tree
mkdir -p "$D/build/tests" "$D/tests/device" "$D/fixtures/public-llama-gqa" "$D/bin"
cp tests/device/run.sh tests/device/summarize.py tests/device/gpuexec_e2e.sh "$D/tests/device/"
: >"$D/fixtures/public-llama-gqa/kv.safetensors"
: >"$D/tests/device/torch_ref.py"
# stand-ins: every binary passes, except what the test's environment says (FAKE_FAIL: names
# that exit 1; FAKE_HANG: a name that sleeps) — the names are the binaries' basenames
fake() {
  cat >"$1" <<'SH'
#!/bin/sh
n=$(basename "$0")
echo "$n: $*"
case " ${FAKE_FAIL:-} " in *" $n "*) echo "FAIL $n injected"; echo "0 passed, 1 failed"; exit 1 ;; esac
[ "${FAKE_HANG:-}" = "$n" ] && { echo "last words of $n"; sleep "$FAKE_HANG_S"; }
echo "1 passed, 0 failed"
SH
  chmod +x "$1"
}
for b in kt_attn kt_paged kt_elementwise kt_gemm kt_backend kt_gpupath kt_borrow kt_gpuexec; do fake "$D/build/tests/$b"; done
for b in cacheflowctl cacheflowd cf-gpuengine; do fake "$D/build/$b"; done
# the end-to-end script needs a real daemon: a stand-in too (run.sh only checks it exists)
fake "$D/tests/device/gpuexec_e2e.sh"
printf '#!/bin/sh\necho "GPU 0: Stand-in (UUID: GPU-00112233-4455-6677-8899-aabbccddeeff)"\n' >"$D/bin/nvidia-smi"
chmod +x "$D/bin/nvidia-smi"
PY=/usr/bin/python3
run() { env PATH="$D/bin:$PATH" PYTHON=$PY OUT="$T/out" SAN= "$@" bash "$D/tests/device/run.sh" >"$T/stdout" 2>&1; }
order() { grep -o '^STEP [^ ]*' "$T/out/results.txt" | cut -d' ' -f2 | tr '\n' ' '; }

# 1. PRESET=all: dependency order; no sanitizer here (none on PATH in the tree) -> one rc=127 line
run PRESET=all BUDGET=120
o=$(order)
check "PRESET=all runs kt_attn first, lib/gpu before lib/exec before the daemon, benches after" \
  '[[ "$o" == "kt_attn kt_paged kt_backend kt_elementwise kt_gemm kt_gpupath kt_borrow kt_gpuexec gpuexec-e2e gpuexec-e2e-budget kt_backend-wgmma "* ]] &&
   [[ "$o" == *" bench-layer bench-layer-wgmma bench-torch bench-load bench-gpupath bench-gpuexec bench-attn bench-gemm "* ]]' "$o"
check "ctl-kv steps for the fixture, whole and chunked, before the benches" \
  '[[ "$o" == *"ctl-kv-public-llama-gqa-chunk0 ctl-kv-public-llama-gqa-chunk64"*"bench-layer "* ]]' "$o"
check "every step passed (stand-ins) and results.md lists them" \
  '! grep -v "^STEP memcheck rc=127" "$T/out/results.txt" | grep -q "rc=[1-9]" && grep -q "| bench-gemm | rc=0" "$T/out/results.md"' "$(cat "$T/out/results.txt")"

# 2. a hanging step is killed at its timeout clipped to the budget; later steps SKIPPED (budget)
# BUDGET 40: the stand-ins before it fit however busy the machine is (12 did not, under two busy
# loops), and the clipped timeout still ends before the hang would (a sleep of 61.<this pid> s:
# its name is this run's own, so suites running beside it cannot be mistaken for a leftover)
HANG_S=61.$$
run PRESET=all BUDGET=40 FAKE_HANG=kt_gpupath FAKE_HANG_S=$HANG_S
check "hanging kt_gpupath killed at the clipped budget, its last output quoted" \
  'grep -q "^STEP kt_gpupath rc=124 .*TIMEOUT after [0-9]* s; last lines: .*last words of kt_gpupath" "$T/out/results.txt"' \
  "$(cat "$T/out/results.txt")"
check "steps after the budget are recorded SKIPPED (budget ...), results.md still written" \
  'grep -q "^STEP kt_gpuexec SKIPPED (budget" "$T/out/results.txt" && grep -q "kt_gpuexec | SKIPPED" "$T/out/results.md"' \
  "$(cat "$T/out/results.txt")"
check "no stand-in left running after the kill" "! pgrep -f 'sleep $HANG_S' >/dev/null" "$(pgrep -af "sleep $HANG_S")"

# 3. a failed prerequisite skips its benchmark; PRESET=bench alone runs only benches
run PRESET=all BUDGET=120 FAKE_FAIL="kt_gpuexec"
check "bench-gpuexec SKIPPED when kt_gpuexec failed; its FAIL line shown" \
  'grep -q "^STEP bench-gpuexec SKIPPED (kt_gpuexec failed)" "$T/out/results.txt" && grep -q "FAIL kt_gpuexec injected" "$T/stdout" &&
   grep -q "^STEP bench-gpupath rc=0" "$T/out/results.txt"' "$(cat "$T/out/results.txt")"
run PRESET=bench BUDGET=120
o=$(order)
check "PRESET=bench runs the benchmarks only" '[ "$o" = "bench-layer bench-layer-wgmma bench-torch bench-load bench-gpupath bench-gpuexec bench-attn bench-gemm " ]' "$o"
run PRESET=verify BUDGET=120 ONLY='^kt_gpu'
o=$(order)
check "ONLY narrows a preset" '[ "$o" = "kt_gpupath kt_gpuexec " ]' "$o"

# 4. refusals
run PRESET=fast; rc=$?
check "unknown PRESET refused (exit 2, naming the choices)" '[ $rc -eq 2 ] && grep -q "expected all, verify or bench" "$T/stdout"' "$(cat "$T/stdout")"
run BUDGET=7m; rc=$?
check "BUDGET must be whole seconds" '[ $rc -eq 2 ] && grep -q "BUDGET=7m" "$T/stdout"' "$(cat "$T/stdout")"
rm "$D/build/tests/kt_gpuexec"
run; rc=$?
check "a missing staged file fails before anything runs" '[ $rc -eq 1 ] && grep -q "missing build/tests/kt_gpuexec" "$T/stdout"' "$(cat "$T/stdout")"
fake "$D/build/tests/kt_gpuexec"
# no GPU (no stand-in nvidia-smi): complete tree -> exit 0
env PATH="/usr/bin:/bin" OUT="$T/out" bash "$D/tests/device/run.sh" >"$T/stdout" 2>&1; rc=$?
check "without a GPU a complete tree exits 0 saying so" '[ $rc -eq 0 ] && grep -q "staged tree complete" "$T/stdout"' "$(cat "$T/stdout")"
finish
