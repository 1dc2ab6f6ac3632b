"""Benchmark (not a test): time to first token of turn 2 on the REAL vLLM engine, restoring the
prefix through cacheflowd (each policy; CPU tier at memory speed and behind an emulated slow
link) against vLLM recomputing it, as ratios measured in one run. Also the daemon's CPU-backend
prefill tokens/s against vLLM's own CPU prefill of the same model, and the Save cost.

    tests/engines/bench.sh [--lengths 1024,2048,4096,8192] [--reps 2] [--slow-gbps 10]

TTFT = wall time of LLM.generate(turn-2 prompt, max_tokens=1) after vLLM's prefix cache is
reset: turn 2 = turn-1 prompt + one 32-token user message; turn 1 saved its KV. Best of --reps.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

POLICIES = ["load", "layerwise", "cake", "cacheflow", "optimal"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--slow-gbps", type=float, default=10.0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",")]
    pols = a.policies.split(",")
    model = H.gen_model()
    d = H.start_daemon(model, chunk_tokens=256, cpu_tier_bytes="2G")
    import cacheflow_vllm as C
    maxlen = max(lengths) + 256
    llm = H.make_llm(model, connector={"addr": d.addr, "restore_timeout_s": 300}, max_len=maxlen)
    w, s = C.WORKERS[-1], C.SCHEDULERS[-1]
    H.generate(llm, [H.prompt(64, 999)], max_tokens=1)  # warm-up

    def ttft(p2, enabled, policy=None):
        best = None
        for _ in range(a.reps):
            llm.reset_prefix_cache()
            s.enabled = enabled
            if policy:
                w.policy = C.connector.POLICIES[policy]
            n0 = len(w.restores_done)
            t0 = time.perf_counter()
            H.generate(llm, [p2], max_tokens=1)
            dt = time.perf_counter() - t0
            rs = w.restores_done[n0:]
            if enabled and not (len(rs) == 1 and rs[0].error is None):
                raise RuntimeError(f"restore did not happen: {[(r.error, r.stats) for r in rs]}")
            best = dt if best is None else min(best, dt)
        s.enabled = True
        return best

    def set_link(gbps):
        d.write_conf(cpu_read_gbps=str(gbps))
        d.signal(signal.SIGHUP)
        end = time.time() + 10
        while time.time() < end and float(d.client.config("cpu_read_gbps")["cpu_read_gbps"]) != gbps:
            time.sleep(0.05)

    rows = []
    save_rows = []
    for n in lengths:
        p1 = H.prompt(n, n)
        s.do_save = True
        m0 = len(w.save_times)
        t0 = time.perf_counter()
        H.generate(llm, [p1], max_tokens=1)
        t_turn1 = time.perf_counter() - t0
        for ntok, dt in w.save_times[m0:]:
            save_rows.append((n, ntok, dt, t_turn1))
        s.do_save = False  # turn-2 runs restore what turn 1 saved, nothing more
        p2 = p1 + H.prompt(32, n + 1)
        base = ttft(p2, False)
        row = {"n": n, "recompute": base}
        for link, gbps in (("mem", 0), ("slow", a.slow_gbps)):
            set_link(gbps)
            for pol in pols:
                row[(pol, link)] = ttft(p2, True, pol)
        set_link(0)
        rows.append(row)
        print(f"n={n}: vLLM recompute {base * 1e3:.0f} ms; " +
              ", ".join(f"{p}/{l} {row[(p, l)] / base:.3f}" for l in ("mem", "slow") for p in pols), flush=True)

    # daemon CPU backend prefill vs vLLM's own prefill of the same model (same token count)
    nref = min(2048, max(lengths))
    tok_file = os.path.join(tempfile.gettempdir(), f"cfv-bench-{os.getpid()}.txt")
    with open(tok_file, "w") as f:
        f.write(" ".join(map(str, H.prompt(nref, 4242))))
    out = subprocess.run([H.CTL, "kv", "--model", model, "--tokens", tok_file, "--out", tok_file + ".st"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    os.unlink(tok_file)
    try:
        os.unlink(tok_file + ".st")
    except OSError:
        pass
    import re
    m = re.search(r"\(([\d.]+) tokens/s\)", out)
    daemon_tps = float(m.group(1)) if m else float("nan")
    vllm_tps = None
    for r in rows:
        if r["n"] == nref:
            vllm_tps = (nref + 32) / r["recompute"]
    d.stop()

    print()
    print(f"TTFT of turn 2, ratio to vLLM recomputing the prefix (same engine, same run; best of {a.reps}; "
          f"'slow' = CPU tier behind an emulated {a.slow_gbps:g} Gbit/s link)")
    hdr = "| prefix tokens | vLLM recompute (ms) | " + " | ".join(f"{p} mem" for p in pols) + " | " + \
          " | ".join(f"{p} {a.slow_gbps:g}G" for p in pols) + " |"
    print(hdr)
    print("|" + "---|" * (2 + 2 * len(pols)))
    for r in rows:
        print(f"| {r['n']} | {r['recompute'] * 1e3:.0f} | " +
              " | ".join(f"{r[(p, 'mem')] / r['recompute']:.3f}" for p in pols) + " | " +
              " | ".join(f"{r[(p, 'slow')] / r['recompute']:.3f}" for p in pols) + " |")
    print()
    print(f"prefill of {nref} tokens: cacheflowd CPU backend {daemon_tps:.0f} tokens/s, vLLM CPU "
          f"{vllm_tps:.0f} tokens/s (ratio daemon/vLLM {daemon_tps / vllm_tps:.2f})" if vllm_tps else "")
    for n, ntok, dt, t1 in save_rows:
        print(f"Save of {ntok} tokens (one RPC, all layers): {dt * 1e3:.1f} ms = {dt / t1:.3f} of turn 1's "
              f"{t1 * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
