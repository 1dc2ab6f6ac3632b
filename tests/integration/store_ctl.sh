#!/usr/bin/env bash
# cacheflowctl store verify|fill: outputs, exit codes and errors on a real store directory.
set -u
BUILD=${BUILD:-build}
CTL=$BUILD/cacheflowctl
T=$(mktemp -d /tmp/cfstorectl.XXXXXX)
trap 'rm -rf "$T"' EXIT
P=0; F=0
check() { # description, command...
  local d=$1; shift
  if "$@"; then P=$((P+1)); else F=$((F+1)); echo "FAIL $d"; fi
}

$CTL gen-model --out "$T/model" --preset tiny >/dev/null || { echo "0 passed, 1 failed"; exit 1; }
# another model: same shapes, another rope theta (the fingerprint hashes config + tensor headers)
cp -r "$T/model" "$T/model2"
sed -i 's/"rope_theta": 10000.0/"rope_theta": 500000.0/' "$T/model2/config.json"

out=$($CTL store fill --dir "$T/s" --model "$T/model" --prefixes 3 --tokens 200 --seed 1 --chunk 64)
check "fill exits 0" test $? -eq 0
check "fill prints progress" grep -q "prefix 3/3: 200 tokens, 4 chunks durable" <<<"$out"
check "fill prints a summary" grep -q "fill done: 12 chunks saved" <<<"$out"

out=$($CTL store verify --dir "$T/s"); rc=$?
check "verify clean: exit 0" test $rc -eq 0
check "verify clean: counts" grep -q "^chunks ok 12, damaged 0, torn-tail 0$" <<<"$out"

check "verify names the store's KV dtype: f32 by default" grep -q "kv dtype f32 (4 bytes), chunk 64 tokens" <<<"$out"

# --kv-dtype: bf16 cells are half the bytes, recorded in the header; the f32 store refuses f16
out=$($CTL store fill --dir "$T/sb" --model "$T/model" --prefixes 2 --tokens 200 --seed 1 --chunk 64 --kv-dtype bf16)
check "fill --kv-dtype bf16 exits 0" test $? -eq 0
check "fill --kv-dtype bf16: 2-byte cells" grep -q "cell 8192 bytes (BF16)" <<<"$out"
out=$($CTL store verify --dir "$T/sb"); rc=$?
check "verify bf16 store: clean, kv dtype bf16" bash -c "test $rc -eq 0 && grep -q 'kv dtype bf16 (2 bytes)' <<<'$out' && grep -q '^chunks ok 8, damaged 0' <<<'$out'"
err=$($CTL store fill --dir "$T/s" --model "$T/model" --prefixes 1 --tokens 64 --seed 1 --chunk 64 --kv-dtype f16 2>&1); rc=$?
check "f16 fill into the f32 store: refused naming both" bash -c "test $rc -eq 1 && grep -q 'holds f32 KV cells, asked for f16' <<<'$err'"
err=$($CTL store fill --dir "$T/x" --model "$T/model" --prefixes 1 --tokens 64 --seed 1 --kv-dtype fp8 2>&1); rc=$?
check "fill --kv-dtype fp8 rejected" bash -c "test $rc -eq 1 && grep -q -- \"--kv-dtype 'fp8': expected f32, bf16 or f16\" <<<\"$err\""

# a torn journal tail (half a record) is not damage
cp -r "$T/s" "$T/torn"
sz=$(stat -c %s "$T/torn/journal"); truncate -s $((sz - 10)) "$T/torn/journal"
out=$($CTL store verify --dir "$T/torn"); rc=$?
check "torn tail: exit 0" test $rc -eq 0
check "torn tail: counted" grep -q "^chunks ok 11, damaged 0, torn-tail 1$" <<<"$out"

# one flipped byte in a data file: damaged, exit 1, and it says where
cp -r "$T/s" "$T/bad"
printf '\xff' | dd of="$T/bad/data.000" bs=1 seek=$((65536 * 2 + 100)) conv=notrunc status=none
out=$($CTL store verify --dir "$T/bad"); rc=$?
check "damaged data: exit 1" test $rc -eq 1
check "damaged data: counted" grep -q "^chunks ok 11, damaged 1, torn-tail 0$" <<<"$out"
check "damaged data: named" grep -q "first damage: .*checksum mismatch" <<<"$out"
# verify is read-only: running it twice gives the same answer
out=$($CTL store verify --dir "$T/bad"); rc=$?
check "verify read-only" test $rc -eq 1

# errors: another model, missing dir, not a store, bad options
err=$($CTL store fill --dir "$T/s" --model "$T/model2" --prefixes 1 --tokens 64 --seed 1 --chunk 64 2>&1); rc=$?
check "other model: exit 1" test $rc -eq 1
check "other model: named" grep -q "made for model fingerprint" <<<"$err"
err=$($CTL store verify --dir "$T/nope" 2>&1); rc=$?
check "missing dir: exit 1" test $rc -eq 1
check "missing dir: named" grep -q "$T/nope" <<<"$err"
mkdir -p "$T/empty"
err=$($CTL store verify --dir "$T/empty" 2>&1); rc=$?
check "not a store: exit 1 + header" bash -c "test $rc -eq 1 && grep -q 'header missing' <<<'$err'"
head -c 100 /dev/zero > "$T/s2hdr"; mkdir -p "$T/s2"; cp "$T/s/journal" "$T/s2/"; cp "$T/s2hdr" "$T/s2/header"
err=$($CTL store verify --dir "$T/s2" 2>&1); rc=$?
check "truncated header: named" bash -c "test $rc -eq 1 && grep -q 'truncated' <<<'$err'"
$CTL store verify >/dev/null 2>&1; rc=$?
check "verify without --dir: usage exit 2" test $rc -eq 2
err=$($CTL store fill --dir "$T/x" --model "$T/model" --prefixes 0 --tokens 64 --seed 1 2>&1); rc=$?
check "fill --prefixes 0 rejected" bash -c "test $rc -eq 1 && grep -q -- '--prefixes' <<<'$err'"
err=$($CTL store fill --dir "$T/x" --model "$T/nomodel" --prefixes 1 --tokens 64 --seed 1 2>&1); rc=$?
check "fill missing model named" bash -c "test $rc -eq 1 && grep -q 'nomodel' <<<'$err'"

# issue 19's reproduction on the shared fixture: a fill with fewer prefixes sizes a smaller cap;
# the open drops what the eviction policy gives up (journaled), moves the rest below the cap and
# only then cuts the file, so verify finds no damage; a larger cap grows; a smaller one again.
M=${CF_FIXTURES:-../shared/fixtures}/public-llama-gqa
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 200 --tokens 700 --seed 1 2>&1); rc=$?
check "cap: fill 200 prefixes (600 chunks)" bash -c "test $rc -eq 0 && grep -q 'fill done: 600 chunks saved' <<<'$out'"
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 5 --tokens 700 --seed 2 2>&1); rc=$?
check "cap: smaller cap keeps 527 chunks" bash -c "test $rc -eq 0 && grep -q '527 chunks in the store' <<<'$out'"
out=$($CTL store verify --dir "$T/cap"); rc=$?
check "cap: verify after the shrink: exit 0, no damage" bash -c "test $rc -eq 0 && grep -q '^chunks ok 527, damaged 0, torn-tail 0$' <<<'$out'"
check "cap: the data file is cut to the cap" test "$(stat -c %s "$T/cap/data.000")" -le $((527 * 131072))
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 1 --tokens 700 --seed 3 --ssd-bytes 200M 2>&1); rc=$?
check "cap: a larger cap grows" bash -c "test $rc -eq 0 && grep -q '530 chunks in the store' <<<'$out'"
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 1 --tokens 700 --seed 4 --ssd-bytes 32M 2>&1); rc=$?
check "cap: shrink again to 256 slots" bash -c "test $rc -eq 0 && grep -q '256 chunks in the store' <<<'$out'"
out=$($CTL store verify --dir "$T/cap"); rc=$?
check "cap: verify after the second shrink" bash -c "test $rc -eq 0 && grep -q '^chunks ok 256, damaged 0' <<<'$out'"
# the policy (LRU) kept the newest saves before that shrink (seed 3's) and gave up the oldest
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 1 --tokens 700 --seed 3 --ssd-bytes 32M 2>&1)
check "cap: the newest prefix survived" grep -q "0 chunks saved, 3 already present" <<<"$out"
out=$($CTL store fill --dir "$T/cap" --model "$M" --prefixes 1 --tokens 700 --seed 1 --ssd-bytes 32M 2>&1)
check "cap: the oldest prefix was evicted" grep -q "3 chunks saved, 0 already present" <<<"$out"
# real damage is still damage: the file cut behind the store's back
truncate -s $((100 * 131072)) "$T/cap/data.000"
out=$($CTL store verify --dir "$T/cap"); rc=$?
check "cap: truncation behind the store's back: exit 1, named" bash -c "test $rc -eq 1 && grep -q '^chunks ok 100, damaged 156' <<<'$out' && grep -q 'truncated' <<<'$out'"

echo "store_ctl: $P passed, $F failed"
[ "$F" -eq 0 ]
