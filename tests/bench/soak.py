#!/usr/bin/python3
"""Soak: N clients (default 256) for D seconds (default 600) of mixed Lookup / Save / Restore
against the REAL cacheflowd on a loopback unix socket, sampling its RSS and open fds.

The daemon runs the fixture model with a small CPU tier and an SSD tier (so saves spill and
restores read from both), 16 engines (shared-memory buffers), 16 clients per engine on their
own block ranges, each client on its own gRPC channel. Each client loops: a Lookup, a Save of
one of 64 conversations' prefixes, a Restore of another (of a saved prefix: loads; of an unsaved
one: recomputes) — 1 : 1 : 1. Each client has its own connection (the daemon holds N sockets). Every reply's status is checked: any error is counted by code.

Samples (every --every s): time, VmRSS kB, open fds of the daemon, requests so far. Writes
OUT/soak.csv and OUT/soak.svg (RSS and fds against time) and prints the summary the README
quotes: RSS and fds after warm-up (the first --warmup s) vs at the end, and their drift.
  tests/bench/soak.sh [--clients 256] [--seconds 600] [--out DIR]
Loopback only; bounded by --seconds. Not part of `make test` (minutes)."""
import argparse
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from cfdaemon import CacheFlowError, Client, Daemon, pb  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--clients", type=int, default=256)
ap.add_argument("--seconds", type=float, default=600)
ap.add_argument("--engines", type=int, default=16)
ap.add_argument("--every", type=float, default=10)
ap.add_argument("--warmup", type=float, default=60)
ap.add_argument("--out", default="/tmp/cf-soak")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

d = Daemon(conf={"cpu_tier_bytes": "8M", "ssd_tier_bytes": "64M", "chunk_tokens": "16", "max_engines": "64",
                 "batch_window_us": "2000", "log_level": "warn"}).start()
c = d.client
st = c.stats()
BS = 16
PER = max(1, a.clients // a.engines)            # clients per engine
BLOCKS_PER_CLIENT = 8                           # 128 tokens at most
engines = []
for i in range(a.engines):
    req, _ = c.layout_request(os.path.join(d.tmp, f"e{i}.kv"), block_size=BS, num_blocks=PER * BLOCKS_PER_CLIENT,
                              name=f"soak-{i}", stats=st)
    engines.append(c.register(req).engine_id)
rng0 = random.Random(1)
CONV = [[rng0.randrange(st.model_vocab) for _ in range(128)] for _ in range(64)]

stop = threading.Event()
lock = threading.Lock()
counts = {"lookup": 0, "save": 0, "restore": 0}
errors = {}


def client(k):
    rng = random.Random(1000 + k)
    eng = engines[k % a.engines]
    base = (k // a.engines) * BLOCKS_PER_CLIENT
    # its own connection: grpcio shares one subchannel between channels to the same address
    # unless each keeps a local pool (then the daemon sees `clients` connections, as from engines)
    cl = Client(d.addr, timeout=120, options=[("grpc.use_local_subchannel_pool", 1)])
    done = {"lookup": 0, "save": 0, "restore": 0}
    try:
        while not stop.is_set():
            for op in ("lookup", "save", "restore"):
                conv = CONV[rng.randrange(len(CONV))]
                n = rng.choice((16, 32, 64, 100, 128))
                toks = conv[:n]
                blocks = [base + j for j in range((n + BS - 1) // BS)]
                try:
                    if op == "lookup":
                        cl.lookup(eng, toks)
                    elif op == "save":
                        cl.save(eng, toks, blocks)
                    else:
                        evs = list(cl.restore(eng, toks, blocks))
                        if not evs or not evs[-1].HasField("done"):
                            raise CacheFlowError("Restore", "NO_DONE", "stream ended without done")
                    done[op] += 1
                except CacheFlowError as e:
                    with lock:
                        key = f"{op}:{e.code}"
                        errors[key] = errors.get(key, 0) + 1
    finally:
        cl.close()
        with lock:
            for op in done:
                counts[op] += done[op]


def sample():
    with open(f"/proc/{d.proc.pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    return rss, fds


threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(a.clients)]
t0 = time.time()
for th in threads:
    th.start()
rows = []
rpc0 = None
while time.time() - t0 < a.seconds:
    time.sleep(min(a.every, max(0.0, a.seconds - (time.time() - t0))))
    rss, fds = sample()
    s = c.stats()
    rows.append((time.time() - t0, rss, fds, s.requests_total, s.errors_total))
    print(f"t={rows[-1][0]:6.0f}s rss={rss} kB fds={fds} requests={s.requests_total} errors={s.errors_total}", flush=True)
stop.set()
for th in threads:
    th.join(180)
alive = sum(th.is_alive() for th in threads)
final = c.stats()
for e in engines:
    c.unregister(e)
rss_end, fds_end = sample()
rc = d.stop()

with open(os.path.join(a.out, "soak.csv"), "w") as f:
    f.write("t_s,rss_kb,fds,requests_total,errors_total\n")
    for r in rows:
        f.write("%.1f,%d,%d,%d,%d\n" % r)

warm = [r for r in rows if r[0] >= a.warmup] or rows
rw, fw = warm[0][1], warm[0][2]
re_, fe = rows[-1][1], rows[-1][2]
rmax = max(r[1] for r in warm)


def svg(path):
    W, H, L, B = 640, 300, 60, 40
    tmax = max(r[0] for r in rows) or 1
    rtop = max(r[1] for r in rows) * 1.1
    ftop = max(r[2] for r in rows) * 1.1

    def x(t):
        return L + (W - 2 * L) * t / tmax

    def y(v, top):
        return H - B - (H - 2 * B) * v / top
    p_rss = " ".join(f"{x(r[0]):.1f},{y(r[1], rtop):.1f}" for r in rows)
    p_fd = " ".join(f"{x(r[0]):.1f},{y(r[2], ftop):.1f}" for r in rows)
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">\n'
                f'<rect width="{W}" height="{H}" fill="white"/>\n'
                f'<text x="{L}" y="18" font-size="13">cacheflowd soak: {a.clients} clients, {a.seconds:.0f} s, '
                f'mixed Lookup/Save/Restore</text>\n'
                f'<line x1="{L}" y1="{H-B}" x2="{W-L}" y2="{H-B}" stroke="black"/>\n'
                f'<line x1="{L}" y1="{B}" x2="{L}" y2="{H-B}" stroke="black"/>\n'
                f'<line x1="{W-L}" y1="{B}" x2="{W-L}" y2="{H-B}" stroke="black"/>\n'
                f'<text x="{W/2-20}" y="{H-10}">time (s), 0 .. {tmax:.0f}</text>\n'
                f'<text x="4" y="{B-6}" fill="#1f77b4">RSS MiB (0 .. {rtop/1024:.0f})</text>\n'
                f'<text x="{W-L-40}" y="{B-6}" fill="#d62728">fds (0 .. {ftop:.0f})</text>\n'
                f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{p_rss}"/>\n'
                f'<polyline fill="none" stroke="#d62728" stroke-width="2" points="{p_fd}"/>\n'
                f'<line x1="{x(a.warmup):.1f}" y1="{B}" x2="{x(a.warmup):.1f}" y2="{H-B}" stroke="gray" stroke-dasharray="4"/>\n'
                f'<text x="{x(a.warmup)+3:.1f}" y="{B+12}" fill="gray">warm-up ends</text>\n'
                '</svg>\n')


svg(os.path.join(a.out, "soak.svg"))
ops = sum(counts.values())
print(f"soak: {a.clients} clients x {rows[-1][0]:.0f} s: {ops} requests ({counts['lookup']} lookup, {counts['save']} save, "
      f"{counts['restore']} restore), {ops / rows[-1][0]:.0f}/s; errors {sum(errors.values())} {errors or ''}")
print(f"soak: daemon counters: requests_total {final.requests_total}, errors_total {final.errors_total}")
print(f"soak: RSS after warm-up {rw} kB, max {rmax} kB, end {re_} kB (drift {re_ - rw:+d} kB, "
      f"{100.0 * (re_ - rw) / rw:+.1f}%); fds after warm-up {fw}, end {fe} (drift {fe - fw:+d}); "
      f"after unregistering every engine: RSS {rss_end} kB, fds {fds_end}")
print(f"soak: clients still running after stop: {alive}; daemon exit {rc}; {a.out}/soak.csv, {a.out}/soak.svg")
sys.exit(0 if rc == 0 and alive == 0 and not errors else 1)
