# Shared by tests/integration/*.sh (sourced, not run): the pass/fail counters and the final
# "N passed, N failed" line tests/run.sh sums.
#   check NAME 'SHELL CONDITION'   ok or FAIL NAME, counted in P / F
#   cf_need_bins BUILD BIN...      exit 1 (one failed check) unless every BUILD/BIN is built
#   cf_median                      the median of the numbers on stdin (one per line)
P=0; F=0
ok() { echo "ok   $1"; P=$((P+1)); }
bad() { echo "FAIL $1"; F=$((F+1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
cf_median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
cf_need_bins() {
  local build=$1 b
  shift
  for b in "$@"; do
    [ -x "$build/$b" ] || { echo "missing $build/$b"; echo "0 passed, 1 failed"; exit 1; }
  done
}
#   cf_test_dir PREFIX SIGNAL      T = a new /tmp/PREFIX.XXXXXX; on exit the daemon in $DPID (if
#                                  any) gets SIGNAL and T is removed (kept with CF_TEST_KEEP=1)
cf_test_dir() {
  T=$(mktemp -d "/tmp/$1.XXXXXX")
  DPID=
  CF__KILLSIG=$2
  trap cf__test_cleanup EXIT
}
cf__test_cleanup() {
  if [ -n "$DPID" ]; then kill "-$CF__KILLSIG" "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null; fi
  [ -n "${CF_TEST_KEEP:-}" ] || rm -rf "$T"
}
