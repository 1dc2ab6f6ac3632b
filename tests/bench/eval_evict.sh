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
# every family named before any replay runs (a misspelt one would fail after the others' minutes)
[ -n "${work// /}" ] || { echo "eval_evict.sh: --workloads '$work': no workload named (chat, agentic, rag)" >&2; exit 2; }
for w in $work; do
  case $w in chat | agentic | rag | mixed) ;; *) echo "eval_evict.sh: --workloads: unknown workload '$w': expected chat, agentic, rag or mixed" >&2; exit 2 ;; esac
done
# tmpfs when there is one: the replay measures policies, not the disk (one directory, removed at
# exit: the trap once named "$dir" after it had been pointed at the tmpfs one, leaking the first)
if [ -d /dev/shm ] && [ -w /dev/shm ]; then dir=$(mktemp -d /dev/shm/eval_evict.XXXXXX)
else dir=$(mktemp -d "${TMPDIR:-/tmp}/eval_evict.XXXXXX"); fi
trap 'rm -rf "$dir"' EXIT
rc=0
for w in $work; do
  "$BIN" --workload "$w" --dir "$dir" "${args[@]+"${args[@]}"}" || rc=1
  echo
done
exit $rc
