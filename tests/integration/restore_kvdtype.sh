#!/usr/bin/env bash
# The KV dtype end to end through the REAL daemon (real files, real processes), CPU backend:
#   kv_dtype = bf16: for every policy the reference engine (bf16 paged blocks) saves, restores a
#   2-turn session plus concurrent restores, and checks every cell — loaded cells bit-exact with
#   the bytes it saved, recomputed cells within bf16 tolerance of an fp32 prefill from scratch —
#   and the first-token logits against a scratch prefill; chunks evicted to SSD restore from there;
#   an F32 engine is refused with FAILED_PRECONDITION naming both dtypes and the daemon keeps
#   serving; the store records bf16 (store verify) and a daemon with kv_dtype = f16 on it refuses
#   to start naming both; kv_dtype = f16 on a store of its own (two policies); --check-config,
#   --dump-config and GetConfig show the key; auto on the CPU backend is f32.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-kvdt KILL

cf_gen_model tiny
C=32
cf_daemon_conf "$T/d.conf" "$T" 64M 128M $C info
echo "kv_dtype = bf16" >>"$T/d.conf"
check "daemon starts with kv_dtype = bf16" "cf_daemon_start $T/d.conf $T/model"
check "the log names the KV dtype in use" "grep -q 'kv_dtype BF16 (configured bf16, backend cpu)' $T/d.log"
check "GetConfig reports kv_dtype bf16" "$BUILD/cacheflowctl config --addr unix:$T/d.sock kv_dtype 2>&1 | grep -q bf16"
ENG="$BUILD/cf-refengine --daemon unix:$T/d.sock --model $T/model --shm-dir $T --block 16"

# ------------------------------------------------------------------ every policy, bf16
seed=40
for pol in recompute load cake layerwise cacheflow optimal; do
  out="$T/$pol.json"
  seed=$((seed+1))
  $ENG --kv-dtype bf16 --policy $pol --prefix 256 --new 16 --turns 2 --concurrent 2 --verify --seed $seed >"$out" 2>"$T/$pol.err"
  rc=$?
  check "bf16 $pol: engine exit 0 (restores ok, logits close, no bad cell)" "[ $rc -eq 0 ]"
  check "bf16 $pol: 2 session turns + 2 concurrent restores, all BF16" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\" and .kv_dtype==\"BF16\" and .ok)] | length' $out)\" = 4 ]"
  check "bf16 $pol: no cell outside bf16 tolerance" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .bad] | add' $out)\" = 0 ]"
  check "bf16 $pol: loaded cells bit-exact with the saved bytes" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.exact*16 < (.cells_cpu+.cells_ssd)*$C)] | length' $out)\" = 0 ]"
  check "bf16 $pol: first-token logits close to a scratch fp32 prefill" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .logits_match] | min' $out)\" = 1 ]"
  check "bf16 $pol: layers arrive in order" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .layers_in_order] | min' $out)\" = 1 ]"
  case $pol in
    recompute) check "bf16 recompute: every cell computed (rounded), none loaded" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | .cells_cpu + .cells_ssd] | add' $out)\" = 0 ]";;
    load) check "bf16 load: cells loaded" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_cpu] | min' $out)\" -gt 0 ]";;
  esac
done
# a computed cell that is not bit-equal to the engine's own rounding is still near the fp32 one
check "bf16: recomputed cells' worst error <= one bf16 ulp of the layer's largest value (2^-7 of max|ref|)" "jq -s '[.[] | select(.mode!=\"prefill\") | .max_rel_err] | max <= 0.0078125' $T/recompute.json | grep -q true"

# ------------------------------------------------------------------ SSD tier
"$BUILD/cacheflowctl" evict --tier cpu --addr "unix:$T/d.sock" >/dev/null 2>&1
$ENG --kv-dtype bf16 --policy load --prefix 256 --new 16 --turns 1 --verify --seed $seed >"$T/ssd.json" 2>"$T/ssd.err"
check "bf16 restore from the SSD tier after CPU eviction, verified" "[ $? -eq 0 ]"
check "bf16: those cells came from the SSD tier" "[ \"\$(jq -s '[.[] | select(.mode==\"session\") | .cells_ssd] | add' $T/ssd.json)\" -gt 0 ]"

# ------------------------------------------------------------------ dtype mismatch: RegisterEngine
$ENG --kv-dtype f32 --policy load --prefix 64 --new 16 --turns 1 >"$T/f32.json" 2>"$T/f32.err"
rc=$?
check "f32 engine on a bf16 daemon: refused" "[ $rc -ne 0 ]"
check "refusal is FAILED_PRECONDITION naming engine and store dtypes" "grep -q 'FAILED_PRECONDITION: engine KV dtype F32, but this daemon.s store holds BF16' $T/f32.err"
$ENG --kv-dtype f16 --policy load --prefix 64 --new 16 --turns 1 >"$T/f16x.json" 2>"$T/f16x.err"
check "f16 engine on a bf16 daemon: refused too (same size, other dtype)" "grep -q 'engine KV dtype F16, but this daemon.s store holds BF16' $T/f16x.err"
check "daemon alive after the refusals" "kill -0 $DPID"
$ENG --policy optimal --prefix 256 --new 16 --turns 1 --verify --seed 99 >"$T/after.json" 2>"$T/after.err"
check "daemon keeps serving: an engine without --kv-dtype takes the daemon's (Stats) and restores fine" "[ $? -eq 0 ] && jq -s -e '[.[] | select(.mode==\"session\")][0].kv_dtype == \"BF16\"' $T/after.json >/dev/null"
check "SIGTERM: daemon exits 0" "cf_daemon_stop"

# ------------------------------------------------------------------ the store records bf16
out=$("$BUILD/cacheflowctl" store verify --dir "$T/store" 2>&1)
check "store verify: kv dtype bf16, nothing damaged" "echo \"$out\" | grep -q 'kv dtype bf16 (2 bytes)' && echo \"$out\" | grep -q 'damaged 0'"
sed 's/^kv_dtype = bf16/kv_dtype = f16/' "$T/d.conf" >"$T/f16.conf"
timeout 30 "$BUILD/cacheflowd" --config "$T/f16.conf" --model "$T/model" >"$T/f16start.log" 2>&1
rc=$?
check "kv_dtype = f16 on the bf16 store: refuses to start" "[ $rc -ne 0 ] && [ $rc -ne 124 ]"
check "... naming both dtypes" "grep -q 'holds bf16 KV cells, asked for f16' $T/f16start.log"
sed 's/^kv_dtype = bf16/kv_dtype = auto/' "$T/d.conf" >"$T/auto.conf"
timeout 30 "$BUILD/cacheflowd" --config "$T/auto.conf" --model "$T/model" >"$T/autostart.log" 2>&1
check "kv_dtype = auto on the CPU backend is f32: refused on the bf16 store" "grep -q 'kv_dtype F32 (configured auto, backend cpu)' $T/autostart.log && grep -q 'holds bf16 KV cells, asked for f32' $T/autostart.log"

# ------------------------------------------------------------------ f16 on a store of its own
sed -e "s|^store_dir = .*|store_dir = $T/store16|" "$T/f16.conf" >"$T/f16b.conf"
check "daemon starts with kv_dtype = f16 on a new store" "cf_daemon_start $T/f16b.conf $T/model"
for pol in optimal cake; do
  $ENG --kv-dtype f16 --policy $pol --prefix 256 --new 16 --turns 2 --verify --seed 77 >"$T/f16-$pol.json" 2>"$T/f16-$pol.err"
  rc=$?
  check "f16 $pol: engine exit 0, all cells exact or within f16 tolerance, logits close" "[ $rc -eq 0 ] && [ \"\$(jq -s '[.[] | select(.mode==\"session\" and .kv_dtype==\"F16\" and .bad==0 and .logits_match==1)] | length' $T/f16-$pol.json)\" = 2 ]"
  check "f16 $pol: loaded cells bit-exact" "[ \"\$(jq -s '[.[] | select(.mode!=\"prefill\") | select(.exact*16 < (.cells_cpu+.cells_ssd)*$C)] | length' $T/f16-$pol.json)\" = 0 ]"
done
check "SIGTERM: f16 daemon exits 0" "cf_daemon_stop"

# ------------------------------------------------------------------ config surface
check "--dump-config shows kv_dtype = auto by default" "$BUILD/cacheflowd --config /dev/null --dump-config | grep -qx 'kv_dtype = auto'"
printf 'kv_dtype = fp8\n' >"$T/bad.conf"
out=$("$BUILD/cacheflowd" --config "$T/bad.conf" --check-config 2>&1)
check "--check-config refuses kv_dtype = fp8 naming the choices" "echo \"$out\" | grep -q \"bad.conf:1: key 'kv_dtype': bad value 'fp8': expected one of auto|f32|bf16|f16\""

finish
