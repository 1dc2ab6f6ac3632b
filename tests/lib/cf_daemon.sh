# Shared by tests/demo.sh and tests/integration/*.sh (sourced, not run): a cacheflowd on a
# temporary socket and store.
#   cf_daemon_conf FILE DIR CPU_BYTES SSD_BYTES CHUNK LOG_LEVEL   write its config into FILE
#   cf_daemon_wait BUILD SOCK [TRIES]   wait until it answers Status (0.1 s per try, default 100)

cf_daemon_conf() {
  cat > "$1" <<CONF
listen = unix:$2/d.sock
metrics_listen =
store_dir = $2/store
cpu_tier_bytes = $3
ssd_tier_bytes = $4
chunk_tokens = $5
threads = 1
batch_window_us = 2000
log_level = $6
CONF
}

cf_daemon_wait() {
  local i
  for i in $(seq 1 "${3:-100}"); do
    [ -S "$2" ] && "$1/cacheflowctl" status --addr "unix:$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  return 1
}
