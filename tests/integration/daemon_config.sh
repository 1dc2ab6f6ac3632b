#!/usr/bin/env bash
# `cacheflowd --check-config` rejects each kind of bad value naming file:line, key, value and
# the allowed range; the shipped conf/cacheflowd.conf documents every directive with its
# default; command-line overrides are checked too.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-daemon-config
BIN=$BUILD/cacheflowd

# 1. the shipped file: valid, and its documented values are exactly the table's defaults
out=$($BIN --config conf/cacheflowd.conf --check-config 2>&1) && ok "shipped conf passes --check-config" || bad "shipped conf passes --check-config" "$out"
if diff <($BIN --config conf/cacheflowd.conf --dump-config 2>&1) <($BIN --config /dev/null --dump-config 2>&1) >/dev/null; then
  ok "shipped conf values == built-in defaults"
else bad "shipped conf values == built-in defaults" "$(diff <($BIN --config conf/cacheflowd.conf --dump-config 2>&1) <($BIN --config /dev/null --dump-config 2>&1))"; fi
missing=""
for k in $($BIN --config /dev/null --dump-config | cut -d' ' -f1); do
  grep -qE "^$k =" conf/cacheflowd.conf || missing="$missing $k"
  # each directive carries a comment right above it
  awk -v k="$k" '$1==k && $2=="=" { if (prev !~ /^#/) bad=1 } { if ($0 != "") prev=$0 } END { exit bad }' conf/cacheflowd.conf || missing="$missing $k(undocumented)"
done
[ -z "$missing" ] && ok "every directive is in conf/cacheflowd.conf with a comment" || bad "every directive documented" "missing:$missing"

# 2. one file with every kind of bad value: all are reported in one run, each with its line
cat > "$T/bad.conf" <<EOB
# line 1: a comment
listen = tcp:1.2.3.4
cpu_tier_bytes = 12Q
chunk_tokens = 8
batch_max = many
policy = fastest
drain_timeout_s = -1
cpu_read_gbps = 1e9
no_such_key = 1
store_dir = relative/dir
metrics_listen = localhost:99999
max_message_bytes = 2g
[store]
ssd_tier_bytes = 512M
EOB
out=$($BIN --config "$T/bad.conf" --check-config 2>&1); rc=$?
[ $rc -eq 1 ] && ok "bad config: exit 1" || bad "bad config: exit 1" "rc=$rc"
expect() { # name, regex
  if echo "$out" | grep -qE -- "$2"; then ok "$1"; else bad "$1" "$out"; fi
}
expect "listen: not a unix socket (line 2)"        "bad.conf:2: key 'listen': bad value 'tcp:1.2.3.4': expected unix:/path"
expect "size with a bad suffix (line 3)"           "bad.conf:3: key 'cpu_tier_bytes': bad value '12Q': expected a byte count, allowed 0 .. 1099511627776"
expect "integer below its minimum (line 4)"        "bad.conf:4: key 'chunk_tokens': value '8' out of range, allowed 16 .. 4096"
expect "not an integer (line 5)"                   "bad.conf:5: key 'batch_max': bad value 'many': expected an integer, allowed 1 .. 1024"
expect "enum not among its choices (line 6)"       "bad.conf:6: key 'policy': bad value 'fastest': expected one of recompute\|load\|cake\|layerwise\|cacheflow\|optimal"
expect "negative timeout (line 7)"                 "bad.conf:7: key 'drain_timeout_s': value '-1' out of range, allowed 0 .. 3600"
expect "double above its maximum (line 8)"         "bad.conf:8: key 'cpu_read_gbps': value '1e9' out of range, allowed 0 .. 10000"
expect "unknown key (line 9)"                      "bad.conf:9: unknown key 'no_such_key'"
expect "relative path (line 10)"                   "bad.conf:10: key 'store_dir': bad value 'relative/dir': must be an absolute path"
expect "port out of range (line 11)"               "bad.conf:11: key 'metrics_listen': bad value 'localhost:99999': port must be 1 .. 65535"
expect "size above its maximum (line 12)"          "bad.conf:12: key 'max_message_bytes': value '2g' out of range"
echo "$out" | grep -q "bad.conf:14" && bad "a good line is not reported" "$out" || ok "a good line (in a [section]) is not reported"
expect "error count" "configuration has 11 error"

# 3. a syntax error names its line
printf 'policy = cake\nthis line has no equals sign\n' > "$T/syntax.conf"
out=$($BIN --config "$T/syntax.conf" --check-config 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "syntax.conf:2: syntax error" && ok "syntax error with its line" || bad "syntax error with its line" "$out"

# 4. missing file, bad model directory, bad command-line override
out=$($BIN --config "$T/nope.conf" --check-config 2>&1)
[ $? -eq 1 ] && echo "$out" | grep -q "nope.conf: cannot open config" && ok "missing config file" || bad "missing config file" "$out"
mkdir "$T/dir.conf"
out=$($BIN --config "$T/dir.conf" --check-config 2>&1)
[ $? -eq 1 ] && echo "$out" | grep -q "dir.conf:0: read error: Is a directory" && ok "a directory as the config: read error, not an empty config" || bad "a directory as the config: read error, not an empty config" "$out"
printf 'model = %s\n' "$T" > "$T/model.conf"
out=$($BIN --config "$T/model.conf" --check-config 2>&1)
[ $? -eq 1 ] && echo "$out" | grep -q "key 'model'.*config.json" && ok "model directory without config.json" || bad "model directory without config.json" "$out"
out=$($BIN --config /dev/null --model "$FIX" --check-config 2>&1) && ok "--model override with the fixture passes" || bad "--model override" "$out"
out=$($BIN --config /dev/null --listen /tmp/x.sock --check-config 2>&1)
[ $? -eq 1 ] && echo "$out" | grep -q "command line: key 'listen'" && ok "bad --listen names the command line" || bad "bad --listen" "$out"
out=$($BIN --config /dev/null --store-dir "$T/s" --listen "unix:$T/a.sock" --dump-config 2>&1)
echo "$out" | grep -q "^store_dir = $T/s$" && echo "$out" | grep -q "^listen = unix:$T/a.sock$" && ok "overrides win over the file" || bad "overrides win" "$out"
out=$($BIN --bogus 2>&1); [ $? -eq 2 ] && ok "unknown option: exit 2 with usage" || bad "unknown option" "$out"
# relative paths on the command line are relative to the caller's directory (the file needs absolute ones)
BINABS=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
mkdir -p "$T/rel" && cp -r "$FIX" "$T/rel/fixture"
out=$(cd "$T/rel" && "$BINABS" --config /dev/null --model fixture --store-dir st --listen unix:r.sock --dump-config 2>&1)
echo "$out" | grep -q "^model = $T/rel/fixture$" && echo "$out" | grep -q "^store_dir = $T/rel/st$" \
  && echo "$out" | grep -q "^listen = unix:$T/rel/r.sock$" && ok "relative command-line paths resolve against the cwd" || bad "relative command-line paths" "$out"
out=$(cd "$T/rel" && "$BINABS" --config /dev/null --model fixture --check-config 2>&1) && ok "--model relative passes --check-config" || bad "--model relative" "$out"

# 5. a daemon that cannot bind says which address
mkdir -p "$T/busy.sock"
out=$(timeout 10 $BIN --config /dev/null --listen "unix:$T/busy.sock" --store-dir "$T/st" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "busy.sock exists and is not a socket" && ok "refuses a listen path that is not a socket" || bad "listen path not a socket" "rc=$rc $out"

# 6. gpu_executor = on needs the cuda backend: with backend = cpu the configuration is invalid;
#    with backend = auto on a machine without a usable GPU (cpu chosen) the daemon refuses to start
printf 'gpu_executor = on\nbackend = cpu\n' > "$T/gx.conf"
out=$($BIN --config "$T/gx.conf" --check-config 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "key 'gpu_executor': on needs backend = cuda (backend = cpu)" \
  && ok "gpu_executor = on with backend = cpu: configuration error" || bad "gpu_executor with cpu backend" "rc=$rc $out"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  printf 'gpu_executor = on\nbackend = auto\n' > "$T/gxa.conf"
  out=$(timeout 60 $BIN --config "$T/gxa.conf" --model "$FIX" --store-dir "$T/gxst" --listen "unix:$T/gx.sock" 2>&1); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "gpu_executor = on needs the cuda backend, but backend cpu is in use" \
    && ok "gpu_executor = on, backend auto without a GPU: start-up error" || bad "gpu_executor with auto -> cpu" "rc=$rc $out"
fi

# 7. cost_model (the compute terms instead of the start-up measurement): three numbers >= 0,
#    alpha or beta > 0; anything else is a configuration error naming the key
for v in "1e-3,5e-5" "1e-3,-5e-5,2e-8" "0,0,0" "a,b,c" "1e-3,5e-5,2e-8,1" "1e-3,5e-5,inf"; do
  printf 'cost_model = %s\n' "$v" > "$T/cm.conf"
  out=$($BIN --config "$T/cm.conf" --check-config 2>&1); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "key 'cost_model': bad value '$v': expected gamma,alpha,beta" \
    && ok "cost_model = $v: configuration error" || bad "cost_model = $v refused" "rc=$rc $out"
done
printf 'cost_model = 1.5e-3, 5e-5, 2.2e-8\n' > "$T/cm.conf"
out=$($BIN --config "$T/cm.conf" --check-config 2>&1) && ok "cost_model = 1.5e-3, 5e-5, 2.2e-8 passes --check-config" \
  || bad "a valid cost_model passes" "$out"

finish
