#!/usr/bin/env bash
# TLS and mutual TLS on tcp_listen (issue 16.1), with certificates `openssl` makes here and now:
# a CA, a server certificate for 127.0.0.1/localhost (and a second one to rotate to), a good
# client certificate, one from another CA and an expired one. What is refused at start-up and by
# --check-config; which clients the daemon refuses (no certificate, untrusted, expired) and
# serves (both the C client, through cacheflowctl, and the Python client: Save, Lookup, Restore);
# SIGHUP rotation seen by `openssl s_client` (the served serial) while the daemon keeps serving,
# a bad rotation that keeps the running certificate; TLS without client certificates.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl
command -v openssl >/dev/null || { echo "FAIL openssl is not installed (Debian package openssl)"; echo "0 passed, 1 failed"; exit 1; }
cf_test_dir cf-daemon-tls
C=$T/certs
mkdir -p "$C"

# ---------------------------------------------------------------- certificates
o() { openssl "$@" 2>>"$T/openssl.err"; }
key() { o genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$C/$1.key"; }
mkca() { # NAME CN SERIAL
  key "$1" && o req -x509 -new -key "$C/$1.key" -subj "/CN=$2" -days 3 -set_serial "$3" -out "$C/$1.crt" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() { # NAME CA SERIAL CN EXTENSIONS
  key "$1" && o req -new -key "$C/$1.key" -subj "/CN=$4" -out "$C/$1.csr" && printf '%s\n' "$5" > "$C/$1.ext" &&
    o x509 -req -in "$C/$1.csr" -CA "$C/$2.crt" -CAkey "$C/$2.key" -set_serial "$3" -days 2 -extfile "$C/$1.ext" -out "$C/$1.crt"
}
SRV_EXT='subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth'
# an expired certificate: `x509 -days` cannot reach back in time, `openssl ca` takes explicit dates
expired() {
  key expired && o req -new -key "$C/expired.key" -subj /CN=cf-expired-engine -out "$C/expired.csr" || return 1
  mkdir -p "$C/db" && : > "$C/db/index.txt" && echo 2003 > "$C/db/serial"
  printf '[ca]\ndefault_ca = c\n[c]\ndir = %s\ndatabase = $dir/index.txt\nserial = $dir/serial\nnew_certs_dir = $dir\n%s\n' \
    "$C/db" 'default_md = sha256
policy = p
x509_extensions = e
[p]
commonName = supplied
[e]
extendedKeyUsage = clientAuth' > "$C/ca.cnf"
  o ca -batch -config "$C/ca.cnf" -cert "$C/ca.crt" -keyfile "$C/ca.key" -in "$C/expired.csr" -out "$C/expired.crt" \
    -startdate 20200101000000Z -enddate 20200102000000Z -notext
}
if mkca ca cf-test-ca 1 && mkca other cf-other-ca 2 &&
   leaf server ca 0x1001 cf-test-server "$SRV_EXT" && leaf server2 ca 0x1002 cf-test-server "$SRV_EXT" &&
   leaf client ca 0x2001 cf-test-engine 'extendedKeyUsage=clientAuth' &&
   leaf rogue other 0x2002 cf-rogue-engine 'extendedKeyUsage=clientAuth' && expired; then
  chmod 600 "$C"/*.key
  ok "openssl $(openssl version | cut -d' ' -f2): CA, server (x2), client, untrusted and expired client certificates"
else
  bad "certificate generation" "$(tail -5 "$T/openssl.err")"; finish; exit 1
fi
check "the expired certificate is expired (openssl verify says so)" \
  'openssl verify -CAfile "$C/ca.crt" "$C/expired.crt" 2>&1 | grep -q "certificate has expired"'
cp "$C/server.crt" "$C/live.crt"; cp "$C/server.key" "$C/live.key" # what the daemon serves; rotated below

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
base() { printf 'listen = unix:%s/c.sock\nmetrics_listen =\nstore_dir = %s/cstore\n' "$T" "$T"; }
cc() { "$BUILD/cacheflowd" --config "$T/cc.conf" --check-config 2>&1; } # --check-config of $T/cc.conf

# ---------------------------------------------------------------- refused configurations
{ base; echo "tcp_listen = 0.0.0.0:$PORT"; } > "$T/cc.conf"
out=$(cc); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "key 'tcp_listen': 0.0.0.0:$PORT is not a loopback address and TLS is off" &&
  ok "--check-config: plaintext tcp_listen on 0.0.0.0 refused, naming the key" || bad "plaintext 0.0.0.0 check" "rc=$rc $out"
out=$(timeout 60 "$BUILD/cacheflowd" --config "$T/cc.conf" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "not starting" && [ ! -S "$T/c.sock" ] &&
  ok "start-up: plaintext tcp_listen on 0.0.0.0 refused (exit 1, no socket)" || bad "plaintext 0.0.0.0 start" "rc=$rc $out"
{ base; echo "tcp_listen = [::]:$PORT"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && ok "--check-config: plaintext tcp_listen on [::] refused" || bad "plaintext [::]" "$out"
{ base; echo "tcp_listen = 0.0.0.0:$PORT"; echo "tcp_insecure = yes"; } > "$T/cc.conf"
out=$(cc) && ok "--check-config: tcp_insecure = yes allows plaintext on 0.0.0.0" || bad "tcp_insecure = yes" "$out"
for lo in "127.0.0.1:$PORT" "localhost:$PORT" "[::1]:$PORT"; do
  { base; echo "tcp_listen = $lo"; } > "$T/cc.conf"
  out=$(cc) && ok "--check-config: plaintext on loopback $lo allowed" || bad "plaintext loopback $lo" "$out"
done
{ base; printf 'tcp_listen = %s\ntls_cert_file = %s\n' "$ADDR" "$C/server.crt"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tls_cert_file': set but 'tls_key_file' is empty" &&
  ok "--check-config: a certificate without its key refused" || bad "cert without key" "$out"
{ base; printf 'tcp_listen = %s\ntls_cert_file = %s\ntls_key_file = %s\n' "$ADDR" "$C/server.crt" "$C/client.key"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tls_key_file': the key in $C/client.key does not match the certificate in $C/server.crt" &&
  ok "--check-config: a key of another certificate refused, naming both files" || bad "mismatched key" "$out"
{ base; printf 'tcp_listen = %s\ntls_cert_file = %s\ntls_key_file = %s\n' "$ADDR" "$C/expired.crt" "$C/expired.key"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tls_cert_file': the certificate in $C/expired.crt has expired" &&
  ok "--check-config: an expired server certificate refused" || bad "expired server cert" "$out"
{ base; printf 'tcp_listen = %s\ntls_cert_file = %s\ntls_key_file = %s\n' "$ADDR" "$C/server.csr" "$C/server.key"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tls_cert_file': $C/server.csr holds no PEM certificate" &&
  ok "--check-config: a file that is no certificate refused" || bad "not a cert" "$out"
{ base; printf 'tls_cert_file = %s\ntls_key_file = %s\n' "$C/server.crt" "$C/server.key"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tcp_listen': empty, but tls_\* keys are set" &&
  ok "--check-config: TLS keys without tcp_listen refused (the unix socket has no TLS)" || bad "tls without tcp" "$out"
{ base; printf 'tcp_listen = %s\ntls_client_ca_file = %s\n' "$ADDR" "$C/ca.crt"; } > "$T/cc.conf"
out=$(cc); [ $? -eq 1 ] && echo "$out" | grep -q "key 'tls_client_ca_file': mutual TLS needs tls_cert_file and tls_key_file" &&
  ok "--check-config: a client CA without a server certificate refused" || bad "ca without cert" "$out"

# ---------------------------------------------------------------- mutual TLS daemon
printf 'tcp_listen = %s\ntls_cert_file = %s\ntls_key_file = %s\ntls_client_ca_file = %s\nchunk_tokens = 16\nthreads = 1\n' \
  "$ADDR" "$C/live.crt" "$C/live.key" "$C/ca.crt" > "$T/mtls.conf"
cf_daemon_fixture "$T/mtls.conf" || { finish; exit 1; }
check "log: TLS on the TCP listener with the served serial, client certificates required" \
  'grep -q "tls on $ADDR: subject=/CN=cf-test-server serial=1001 .*client certificates required (mutual TLS)" "$T/d.log"'
GOOD=(--tls-ca "$C/ca.crt" --tls-cert "$C/client.crt" --tls-key "$C/client.key")
ctl_status() { timeout 120 "$BUILD/cacheflowctl" status --addr "$ADDR" "$@" 2>&1; }
refused() { # NAME ARGS...: cacheflowctl status exits 1 with UNAVAILABLE
  local n=$1 out rc; shift
  out=$(ctl_status "$@"); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "cacheflowctl status: $ADDR: .*UNAVAILABLE" && ok "$n" || bad "$n" "rc=$rc $out"
}
refused "C client, plaintext to the TLS port: refused"
refused "C client, no client certificate: refused" --tls-ca "$C/ca.crt"
refused "C client, certificate of another CA (untrusted): refused" --tls-ca "$C/ca.crt" --tls-cert "$C/rogue.crt" --tls-key "$C/rogue.key"
refused "C client, expired certificate: refused" --tls-ca "$C/ca.crt" --tls-cert "$C/expired.crt" --tls-key "$C/expired.key"
refused "C client that does not trust the daemon's CA: refused" --tls-ca "$C/other.crt" --tls-cert "$C/client.crt" --tls-key "$C/client.key"
out=$(ctl_status "${GOOD[@]}"); rc=$?
[ $rc -eq 0 ] && echo "$out" | grep -q "^$ADDR: SERVING" && ok "C client, good certificate: served" || bad "C good cert" "rc=$rc $out"
out=$(CACHEFLOW_TLS_CA=$C/ca.crt CACHEFLOW_TLS_CERT=$C/client.crt CACHEFLOW_TLS_KEY=$C/client.key ctl_status) &&
  ok "C client: credentials from \$CACHEFLOW_TLS_*" || bad "ctl env credentials" "$out"
out=$(CACHEFLOW_TLS_CA=$C/ca.crt CACHEFLOW_TLS_CERT=$C/client.crt CACHEFLOW_TLS_KEY=$C/client.key \
      timeout 60 "$BUILD/cacheflowctl" status 2>&1) && ok "the unix socket stays plaintext (TLS options ignored there)" || bad "unix socket" "$out"
out=$(timeout 60 "$BUILD/cacheflowctl" status --addr "localhost:$PORT" "${GOOD[@]}" 2>&1) &&
  ok "C client by name localhost: served (DNS SAN)" || bad "ctl localhost" "$out"
out=$(timeout 300 "$BUILD/cacheflowctl" bench --addr "$ADDR" --clients 2 --requests 30 "${GOOD[@]}" 2>&1) &&
  echo "$out" | grep -q "2 client(s) x 30 request(s).* 0 error(s)" &&
  ok "C client over mutual TLS: bench (register, Lookup, a Restore answered by its validation, Stats, GetConfig), 0 errors" || bad "ctl bench over TLS" "$out"
out=$(timeout 60 "$BUILD/cacheflowctl" status --addr "$ADDR" --tls-cert "$C/client.crt" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$out" | grep -q "certificate and key go together" && ok "C client: a certificate without its key is a clear error" || bad "ctl cert without key" "rc=$rc $out"
check "daemon log: the handshake without a client certificate was refused for that reason" \
  'grep -q "peer did not return a certificate" "$T/d.log"'

py() { timeout 300 "$PYTHON" tests/integration/py/daemon_tls_client.py "$@" 2>>"$T/py.err"; }
pyrefused() { # NAME ARGS...
  local n=$1 out rc; shift
  out=$(py health "$ADDR" "$@"); rc=$?
  [ $rc -eq 1 ] && echo "$out" | grep -q "refused: UNAVAILABLE" && ok "$n" || bad "$n" "rc=$rc $out"
}
pyrefused "Python client, no client certificate: refused" --ca "$C/ca.crt"
pyrefused "Python client, untrusted certificate: refused" --ca "$C/ca.crt" --cert "$C/rogue.crt" --key "$C/rogue.key"
pyrefused "Python client, expired certificate: refused" --ca "$C/ca.crt" --cert "$C/expired.crt" --key "$C/expired.key"
out=$(py roundtrip "$ADDR" --ca "$C/ca.crt" --cert "$C/client.crt" --key "$C/client.key"); rc=$?
[ $rc -eq 0 ] && ok "Python client, good certificate: $out" || bad "Python good cert roundtrip" "rc=$rc $out"

# ---------------------------------------------------------------- SIGHUP rotation
served_serial() {
  timeout 60 openssl s_client -connect "$ADDR" -alpn h2 -servername localhost -CAfile "$C/ca.crt" \
    -cert "$C/client.crt" -key "$C/client.key" </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null
}
s=$(served_serial); [ "$s" = "serial=1001" ] && ok "openssl s_client -alpn h2: the daemon serves serial 1001" || bad "served serial before" "$s"
cp "$C/server2.crt" "$C/live.crt"; cp "$C/server2.key" "$C/live.key"
# the Python client connects, the daemon gets SIGHUP, the same channel goes on
out=$(py roundtrip "$ADDR" --ca "$C/ca.crt" --cert "$C/client.crt" --key "$C/client.key" --hup "$DPID" --log "$T/d.log"); rc=$?
[ $rc -eq 0 ] && ok "rotation: a connection made before the SIGHUP keeps serving: $out" || bad "roundtrip across SIGHUP" "rc=$rc $out"
check "log: reload names the new certificate" 'grep -q "reload: tls: new connections get subject=/CN=cf-test-server serial=1002" "$T/d.log"'
s=$(served_serial); [ "$s" = "serial=1002" ] && ok "rotation: new connections get serial 1002 (s_client)" || bad "served serial after" "$s"
out=$(ctl_status "${GOOD[@]}") && ok "rotation: C client served by the new certificate" || bad "ctl after rotation" "$out"
refused "rotation: the untrusted client is still refused" --tls-ca "$C/ca.crt" --tls-cert "$C/rogue.crt" --tls-key "$C/rogue.key"
# a bad rotation (the key of another certificate): the running certificate stays
cp "$C/client.key" "$C/live.key"
kill -HUP "$DPID"
for i in $(seq 1 300); do grep -q "reload: tls: key 'tls_key_file'" "$T/d.log" && break; sleep 0.1; done
check "bad rotation: logged, naming the key that does not match" \
  'grep -q "reload: tls: key .tls_key_file.: the key in $C/live.key does not match the certificate in $C/live.crt; new connections keep the running certificates" "$T/d.log"'
s=$(served_serial); [ "$s" = "serial=1002" ] && ok "bad rotation: still serving serial 1002" || bad "serial after bad rotation" "$s"
out=$(ctl_status "${GOOD[@]}") && ok "bad rotation: C client still served" || bad "ctl after bad rotation" "$out"
m=$(curl -s --unix-socket "$T/m.sock" http://x/metrics | grep '^cacheflow_tls_reloads_total')
echo "$m" | grep -q 'result="ok"} 1' && echo "$m" | grep -q 'result="error"} 1' &&
  ok "/metrics: cacheflow_tls_reloads_total ok 1, error 1" || bad "tls reload metrics" "$m"
cf_daemon_stop; rc=$?
[ $rc -eq 0 ] && ok "mutual TLS daemon: SIGTERM, exit 0" || bad "mtls daemon exit" "rc=$rc"

# ---------------------------------------------------------------- TLS without client certificates
cp "$C/server.crt" "$C/live.crt"; cp "$C/server.key" "$C/live.key"
printf 'tcp_listen = %s\ntls_cert_file = %s\ntls_key_file = %s\nchunk_tokens = 16\nthreads = 1\n' \
  "$ADDR" "$C/live.crt" "$C/live.key" > "$T/tls.conf"
cf_daemon_fixture "$T/tls.conf" || { finish; exit 1; }
check "log: client certificates not asked" 'grep -q "tls on $ADDR: .*client certificates not asked" "$T/d.log"'
out=$(ctl_status --tls-ca "$C/ca.crt") && ok "TLS only: C client with the CA, no certificate: served" || bad "tls-only ctl" "$out"
refused "TLS only: plaintext client refused"
refused "TLS only: a client that does not trust the daemon's CA refused" --tls-ca "$C/other.crt"
out=$(py health "$ADDR" --ca "$C/ca.crt"); rc=$?
[ $rc -eq 0 ] && ok "TLS only: Python client with the CA: $out" || bad "tls-only python" "rc=$rc $out"
cf_daemon_stop; rc=$?
[ $rc -eq 0 ] && ok "TLS daemon: SIGTERM, exit 0" || bad "tls daemon exit" "rc=$rc"
finish
