#!/usr/bin/env bash
# Trace-driven evaluation of the eviction policies (issue 15.3): lru, s3fifo and cost, replayed
# against the real store at CPU+SSD capacities of 5-50% of each trace's working set, every request
# planned with `optimal` on the H100 profile (conf/hw/h100-nvme.json: CPU DRAM 48 GB/s, SSD
# 6.8 GB/s) and its TTFT simulated. One table per workload family (chat, agentic, rag).
# Reference rows: ssd-all, belady (clairvoyant, hit-optimal), vbelady (clairvoyant, value-
# weighted; its `#` line per capacity: each row's value of local hits against the most any
# eviction choice can keep, a weighted-paging optimum by min-cost flow), bayes (online: knows
# the generator's model and the past, never the future; --bayes FORM[:TAU] picks its form or an
# ablation: full, nolive, nocont, nopop, nostruct(-aged), or the diagnostics exact / nopop-exact; TAU its
# SSD discount horizon in tier turnovers, default 4).
# Usage: tests/bench/eval_evict.sh [--seed N] [--scale X] [--caps LIST] [--lookup holes|prefix]
#                                  [--remote] [--workloads "chat agentic rag"]
#                                  [--vbelady best|flow|live|exp:TAU] [--dump DIR]
#                                  [--bayes FORM[:TAU]] [--policies LIST]
# --dump DIR: per replay, what each row held (tests/bench/eval_evict_diff.py compares two).
# Held-out runs: another --seed (and --scale) draws other traces of the same families.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BUILD:-build}/bench/bench_eval_evict
make --no-print-directory "$BIN" >/dev/null # (re)built when its sources changed
work="chat agentic rag"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workloads) work="$2"; shift 2 ;;
    --remote) args+=("$1"); shift ;;
    *) [ $# -ge 2 ] || { echo "eval_evict.sh: $1 needs a value" >&2; exit 2; }; args+=("$1" "$2"); shift 2 ;;
  esac
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/eval_evict.XXXXXX")
trap 'rm -rf "$dir"' EXIT
# tmpfs when there is one: the replay measures policies, not the disk
if [ -d /dev/shm ] && [ -w /dev/shm ]; then dir2=$(mktemp -d /dev/shm/eval_evict.XXXXXX); trap 'rm -rf "$dir" "$dir2"' EXIT; dir=$dir2; fi
rc=0
for w in $work; do
  "$BIN" --workload "$w" --dir "$dir" "${args[@]+"${args[@]}"}" || rc=1
  echo
done
exit $rc
