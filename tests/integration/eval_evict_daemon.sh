#!/usr/bin/env bash
# The eviction evaluation on the real daemon (issue 15.3; tests/bench/eval_evict_daemon.py) at a
# tiny scale: three cacheflowd (eviction = lru, s3fifo, cost; demo model, CPU backend, CPU and
# SSD caps at ~20% of the trace's working set, emulated links) replay the same chat / agentic /
# RAG trace through reference engines. Asserts behaviour, not timing (that is the README's
# table): every restore of every policy ran and verified against recompute (loaded cells
# bit-exact, computed ones within tolerance, first-token logits equal), no daemon held more
# than its caps and each evicted, shared prefixes were found again (hits), the cost daemon
# installed its value table and exports its learnt frequency weight (within [0, 3]) and its
# deferred write-backs (at most its refusals; none under lru / s3fifo), who wrote them back and its
# promotions on read (none under lru / s3fifo), every request's Save
# RPC was timed, --same-model handed one cost model to all three daemons, the long trace (--long) has the shape it claims, and bad options get
# one clear line.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowd cacheflowctl cf-refengine
cf_test_dir cf-eval-evictd
EV=tests/bench/eval_evict_daemon.py
if TMPDIR=$T "$PYTHON" "$EV" --smoke --seed 2 --same-model --json "$T/r.json" >"$T/out.txt" 2>"$T/err.txt"; then
  ok "the trace replays on all three daemons, no failure"
else bad "the trace replays on all three daemons" "$(tail -n 8 "$T/err.txt")"; fi
# shellcheck disable=SC2016
why=$("$PYTHON" - "$T/r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
n = r["requests"]
if r["failures"]: bad.append(f"{r['failures']} failures")
for p in ("lru", "s3fifo", "cost"):
    rs = r["restores"].get(p, [])
    if len(rs) != n: bad.append(f"{p}: {len(rs)} restores of {n}")
    for x in rs:
        if x["rc"] or not x["ok"] or x["bad"] or not x["logits"] or x["exact"] + x["close"] <= 0:
            bad.append(f"{p} request {x['i']}: not verified ({x})")
        if not (0 <= x["cpu"] <= x["stored"] <= x["prompt"]): bad.append(f"{p} request {x['i']}: hits out of range")
        if x["saves"] != 1 or not x["save_ms"] > 0: bad.append(f"{p} request {x['i']}: its one Save not timed ({x['saves']}, {x['save_ms']})")
    c = r["caps"][p]
    if c["cpu_used"] > c["cpu_cap"] or c["ssd_used"] > c["ssd_cap"]: bad.append(f"{p}: over its caps {c}")
    if c["evictions"] <= 0: bad.append(f"{p}: never evicted (caps not constraining)")
    s = r["summary"]["all"][p]
    if s["hit"] <= 0: bad.append(f"{p}: no prompt token ever found stored")
    if not (s["exec_mean_ms"] > 0 and s["sim_mean_ms"] > 0): bad.append(f"{p}: no times")
if r["caps"]["cost"]["cost_tables"] < 1: bad.append("the cost daemon installed no value table")
c = r["caps"]["cost"]
if c["read_head_start"] is None or c["ghost_unread"] is None or c["ghost_read"] is None:
    bad.append(f"the cost daemon's /metrics lacks the learnt head start or its ghost counters ({c})")
elif not (0.0 <= c["read_head_start"] <= 2 * 1.3862944 + 1e-3):
    bad.append(f"the learnt head start {c['read_head_start']} is outside [0, 2 ln 4]")
if c["freq_w"] is None or c["deferred"] is None:
    bad.append(f"the cost daemon's /metrics lacks the frequency weight or the deferred write-backs ({c})")
elif not (0.0 <= c["freq_w"] <= 3.0) or not (0 <= c["deferred"] <= c["refused"]):
    bad.append(f"frequency weight {c['freq_w']} outside [0, 3] or deferrals {c['deferred']} outside [0, refusals {c['refused']}]")
for p in ("lru", "s3fifo"):
    if r["caps"][p]["deferred"] != 0 or r["caps"][p]["freq_w"] != 0: bad.append(f"{p}: deferrals or a frequency weight ({r['caps'][p]})")
# who wrote the deferred chunks back (ahead of a save, handed off by one, by the save) and the
# promotions on read: exported; only cost promotes
if c["promotions"] is None or any(v is None or v < 0 for v in c["deferred_writes"].values()):
    bad.append(f"the cost daemon's /metrics lacks the promotions or the deferred writes by writer ({c})")
for p in ("lru", "s3fifo"):
    if r["caps"][p]["promotions"] != 0: bad.append(f"{p}: promoted on read ({r['caps'][p]['promotions']})")
# whether the store defers at all (cf__defer_learn): a 0/1 gauge, 0 under the other policies
if c["defer_on"] not in (0.0, 1.0) or c["defer_switches"] is None or c["defer_switches"] < 0:
    bad.append(f"the cost daemon's /metrics lacks the deferral switch or its count ({c['defer_on']}, {c['defer_switches']})")
for p in ("lru", "s3fifo"):
    if r["caps"][p]["defer_on"] or r["caps"][p]["defer_switches"]: bad.append(f"{p}: deferral switched on ({r['caps'][p]})")
fm = r["same_model"]
if not fm: bad.append("--same-model: no model handed to the daemons")
else:
    for p, cal in r["calibration"].items():
        if any(abs(cal[k] - fm[k]) > 0.01 * fm[k] for k in ("gamma", "alpha", "beta")):
            bad.append(f"{p} plans with {cal}, not the model handed to all ({fm})")
if c["cpu_head_start"] is None:
    bad.append(f"the cost daemon's /metrics lacks the CPU tier's head start ({c})")
elif c["cpu_head_start"] not in (0.0, 0.3466, 1.3863):
    bad.append(f"the CPU tier's head start {c['cpu_head_start']} is none of its shadows' (0, 0.3466, 1.3863)")
print("; ".join(bad[:6]))
sys.exit(1 if bad else 0)
PY
)
check "every restore verified, caps held, evictions and hits in every policy, cost table installed, learnt head starts (value tier within [0, 2 ln 4], CPU tier one of its shadows'), frequency weight (within [0, 3]), deferrals (at most the refusals), deferred writes by writer, the deferral switch and promotions (cost only) in /metrics, every Save timed, one cost model for all" "[ -z \"$why\" ]" "$why"
check "a table per family and the best-other / cost line" \
  "[ \$(grep -c '^best other / cost, mean executed' $T/out.txt) -eq 4 ] && grep -q '^# rag' $T/out.txt" "$(cat "$T/out.txt")"
# the long trace (--long, README's long-trace row): its shape, without daemons
if "$PYTHON" "$EV" --long --trace-only --seed 1 --json "$T/long.json" >"$T/long.txt" 2>&1; then
  # shellcheck disable=SC2016
  why=$("$PYTHON" - "$T/long.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, bad = r["shape"], []
if len([b for b, k in s["bucket_chunks"].items() if k > 0]) < 4: bad.append(f"chunks in fewer than 4 value buckets: {s['bucket_chunks']}")
if s["prompts_8k"] < 1: bad.append("no prompt of 8k+ tokens")
if max(q["prompt"] + q["new"] for q in r["trace"]) > 32768: bad.append("a prompt beyond the demo model's 32k context")
for f in ("chat", "agentic", "rag"):
    if not any(q["family"] == f for q in r["trace"]): bad.append(f"no {f} request")
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
)
  check "the long trace spans 4+ value buckets, has 8k+ prompts, stays within the model's context" "[ -z \"$why\" ]" "$why"
else bad "the long trace's shape" "$(cat "$T/long.txt")"; fi
"$PYTHON" "$EV" --long --smoke >/dev/null 2>"$T/e3.txt"; rc=$?
check "--long with --smoke: refused" "[ $rc -ne 0 ] && grep -q -- '--long and --smoke' $T/e3.txt" "$(cat "$T/e3.txt")"
"$PYTHON" "$EV" --families chat,video >/dev/null 2>"$T/e1.txt"; rc=$?
check "an unknown family: refused, naming it" "[ $rc -ne 0 ] && grep -q \"unknown family 'video'\" $T/e1.txt" "$(cat "$T/e1.txt")"
"$PYTHON" "$EV" --cap 0 >/dev/null 2>"$T/e2.txt"; rc=$?
check "a zero capacity: refused" "[ $rc -ne 0 ] && grep -q -- '--cap must be' $T/e2.txt" "$(cat "$T/e2.txt")"
finish
