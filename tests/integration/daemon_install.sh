#!/usr/bin/env bash
# `make install` into a DESTDIR puts binaries, config, systemd unit + sysusers/tmpfiles, the
# client library, headers and cacheflow.pc in place; a program built only from the installed
# files (pkg-config) talks to a running daemon.
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-daemon-install
D=$T/root
# under `make asan` the build was made with CUDA=0 and sanitizer flags (CF_MAKE_SAN): the same
# here, or make would add CUDA objects built without them to the tree the later tests run
MK=(make --no-print-directory BUILD="$BUILD")
[ -n "${CF_MAKE_SAN:-}" ] && MK+=(CUDA=0 OPT=-O1 "SAN=$CF_MAKE_SAN")
out=$("${MK[@]}" install DESTDIR="$D" PREFIX=/usr 2>&1) && ok "make install DESTDIR PREFIX=/usr" || bad "make install" "$out"
for f in usr/bin/cacheflowd usr/bin/cacheflowctl etc/cacheflow/cacheflowd.conf lib/systemd/system/cacheflowd.service \
         usr/lib/sysusers.d/cacheflowd.conf usr/lib/tmpfiles.d/cacheflowd.conf usr/lib/libcacheflow_client.a \
         usr/include/cacheflow/client/cf_client.h usr/lib/pkgconfig/cacheflow.pc; do
  [ -e "$D/$f" ] && ok "installed $f" || bad "missing $f"
done
U=$D/lib/systemd/system/cacheflowd.service
for k in "Type=notify" "WatchdogSec=" "ExecStartPre=/usr/bin/cacheflowd --config /etc/cacheflow/cacheflowd.conf --check-config" \
         "ExecReload=/bin/kill -HUP \$MAINPID" "User=cacheflow" "LimitMEMLOCK=infinity" "NoNewPrivileges=yes" "RuntimeDirectory=cacheflow"; do
  grep -qF -- "$k" "$U" && ok "unit has $k" || bad "unit lacks $k"
done
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/bin/cacheflowd|$D/usr/bin/cacheflowd|g" "$U" > "$T/cacheflowd.service"
  out=$(systemd-analyze verify "$T/cacheflowd.service" 2>&1) && [ -z "$out" ] && ok "systemd-analyze verify: unit clean" || bad "systemd-analyze verify" "$out"
fi
"$D/usr/bin/cacheflowd" --config "$D/etc/cacheflow/cacheflowd.conf" --check-config >/dev/null 2>&1 && ok "installed binary checks the installed config" || bad "installed config check"
echo 'x' > "$D/etc/cacheflow/keep"; printf 'policy = cake\n' > "$D/etc/cacheflow/cacheflowd.conf"
"${MK[@]}" install DESTDIR="$D" PREFIX=/usr >/dev/null 2>&1
grep -q "policy = cake" "$D/etc/cacheflow/cacheflowd.conf" && ok "reinstall keeps an edited config" || bad "reinstall overwrote the config"

# a client program built from the installed tree only
cat > "$T/hello.c" <<'EOC'
#include <stdio.h>
#include <client/cf_client.h>
#include <util/cf_err.h>
int main(int argc, char **argv) {
  cf_client_t *c; int serving = 0;
  if (cf_client_connect(argv[1], 5000, &c) || cf_client_health(c, &serving)) { printf("error: %s\n", cf_errmsg()); return 1; }
  Cacheflow__V1__StatsResponse *st;
  if (cf_client_stats(c, &st)) { printf("error: %s\n", cf_errmsg()); return 1; }
  printf("serving=%d layers=%u\n", serving, st->model_layers);
  cacheflow__v1__stats_response__free_unpacked(st, NULL);
  cf_client_close(c);
  return 0;
}
EOC
export PKG_CONFIG_PATH="$D/usr/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$D"
SAN=; [ -n "${CF_ASAN:-}" ] && SAN="-fsanitize=address,undefined"
out=$(cc $SAN -o "$T/hello" "$T/hello.c" $(pkg-config --cflags --static --libs cacheflow) 2>&1) && ok "builds against pkg-config cacheflow" || bad "build against pkg-config" "$out"
cf_daemon_fixture
out=$("$T/hello" "unix:$T/d.sock" 2>&1)
[ "$out" = "serving=1 layers=2" ] && ok "installed client library talks to the daemon" || bad "client program" "$out"
finish
