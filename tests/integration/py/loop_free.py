"""The daemon's libuv loop keeps answering while slow work runs off it (issue 11 item 2, issue 13
item 3), on the real daemon:
  - a 256k-token Save (max_request_tokens; 128 MiB of f32 KV of the fixture model) is copied on
    the save worker: Lookup calls answered while the copy is under way see part of its chunks
    stored (impossible when the copy ran on the loop), and Health is answered meanwhile;
  - a batch of 64 restores is planned on the executor thread: with every planning step held
    (CF_TEST_PLAN_HOLD_MS, tests only) Health and Lookup are answered after all 64 were accepted
    and before any of their PlanSummaries arrives.
Each also prints p50/p99 Health latency during the work as a ratio to idle, measured in the
same run (a benchmark number, not asserted: this machine is shared)."""
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from cfdaemon import CacheFlowError, Checks, Client, Daemon, parse_prometheus, pb  # noqa: E402

T = Checks()
T0 = time.time()


def phase(name):
    print(f"  ({name}: {time.time() - T0:.1f} s)")
BS = 16
N_SAVE = 262144                  # max_request_tokens' default: the largest Save a request carries
N_BATCH = 64
N_RESTORE = 4096                 # per restore, in the check (planning held: any size shows it)
N_RESTORE_BENCH = int(os.environ.get("CF_LOOPFREE_BENCH_TOKENS", "32768"))  # per restore, in the benchmark
rng = np.random.default_rng(11)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))] if xs else float("nan")


def health_latencies(c, stop, out):
    """Health round trips (seconds) until stop() is true."""
    while not stop():
        t0 = time.perf_counter()
        c.health()
        out.append(time.perf_counter() - t0)


def idle_latencies(c, n=1000):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.health()
        out.append(time.perf_counter() - t0)
    return out


def engine(d, c, n_blocks, name):
    path = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else d.tmp, f"cf-loopfree-{os.getpid()}-{name}")
    req, total = c.layout_request(path, block_size=BS, num_blocks=n_blocks, name=name)
    with open(path, "r+b") as f:  # real bytes in every block, not a sparse file's holes
        step = 16 << 20
        for off in range(0, total, step):
            f.write(rng.integers(0, 255, min(step, total - off), dtype=np.uint8).tobytes())
    return c.register(req).engine_id, path


def save_check(d):
    c = d.client
    eng, path = engine(d, c, N_SAVE // BS, "save")
    idle = idle_latencies(c)
    partial, health_during = [], []
    for attempt in range(3):  # a copy too quick to catch mid-way is tried again with new tokens
        tokens = [int(x) for x in rng.integers(0, 300, N_SAVE)]
        blocks = list(range(N_SAVE // BS))
        fut = c.cf.Save.future(pb.SaveRequest(engine_id=eng, token_ids=tokens, block_ids=blocks), timeout=120)
        hc = Client(d.addr, timeout=30)
        seen_partial = False
        while not fut.done():
            n = c.lookup(eng, tokens).cached_tokens
            if not fut.done() and 0 < n < N_SAVE:
                seen_partial = True
                # Health answered after the copy was seen under way, before the Save's reply
                if hc.health() == "SERVING" and not fut.done():
                    health_during.append(1)
        hc.close()
        r = fut.result()
        T.check(f"save {attempt + 1}: {N_SAVE} tokens saved", r.saved_tokens == N_SAVE, str(r))
        T.check(f"lookup after save {attempt + 1}: every token cached", c.lookup(eng, tokens).cached_tokens == N_SAVE)
        partial.append(seen_partial)
        if seen_partial and health_during:
            break
    T.check("Lookup answered while the Save's copy was under way (part of its chunks stored)", any(partial), str(partial))
    T.check("Health answered while the Save's copy was under way", len(health_during) > 0)
    # the benchmark: one more Save with nothing but Health calls beside it
    tokens = [int(x) for x in rng.integers(0, 300, N_SAVE)]
    fut = c.cf.Save.future(pb.SaveRequest(engine_id=eng, token_ids=tokens, block_ids=list(range(N_SAVE // BS))), timeout=120)
    during = []
    health_latencies(c, fut.done, during)
    T.check("benchmark save: every token saved", fut.result().saved_tokens == N_SAVE)
    i50, i99, d50, d99 = pct(idle, 50), pct(idle, 99), pct(during, 50), pct(during, 99)
    print(f"bench: Health during a {N_SAVE}-token Save ({len(during)} calls): p50 {d50 * 1e3:.2f} ms, "
          f"p99 {d99 * 1e3:.2f} ms, max {max(during) * 1e3:.2f} ms; idle p50 {i50 * 1e3:.2f} ms, p99 {i99 * 1e3:.2f} ms; "
          f"p99 ratio to idle {d99 / i99:.2f}")
    c.unregister(eng)
    os.unlink(path)


def restore_batch(d, eng, tokens_of, blocks, plans, errors):
    """N_BATCH restores on their own channels; plans[i] = arrival time of restore i's PlanSummary."""
    ths = []

    def one(i):
        cl = Client(d.addr, timeout=120)
        try:
            for ev in cl.restore(eng, tokens_of[i], blocks, policy=pb.POLICY_OPTIMAL):
                if ev.WhichOneof("event") == "plan" and i not in plans:
                    plans[i] = time.perf_counter()
        except CacheFlowError as e:
            errors.append(f"{e.code.name}: {e.details}")
        cl.close()

    for i in range(N_BATCH):
        th = threading.Thread(target=one, args=(i,))
        th.start()
        ths.append(th)
    return ths


def plan_check(hold_ms, n_restore):
    os.environ["CF_TEST_PLAN_HOLD_MS"] = str(hold_ms)
    d = Daemon(conf={"kv_dtype": "f32", "batch_max": str(N_BATCH), "batch_window_us": "1000000",
                     "cpu_tier_bytes": "512M", "ssd_tier_bytes": "512M"}).start()
    os.environ.pop("CF_TEST_PLAN_HOLD_MS")
    try:
        c = d.client
        eng, path = engine(d, c, n_restore // BS, "plan")
        blocks = list(range(n_restore // BS))
        base = [int(x) for x in rng.integers(0, 300, n_restore)]
        c.save(eng, base, blocks)  # every restore finds its prefix cached: loads and computes to plan
        tokens_of = [base for _ in range(N_BATCH)]
        idle = idle_latencies(c)
        plans, errors, lat = {}, [], []
        hc = Client(d.addr, timeout=30)
        end = time.time() + 60
        lt = threading.Thread(target=health_latencies, args=(hc, lambda: len(plans) == N_BATCH or time.time() > end, lat))
        if not hold_ms:  # the benchmark: Health from before the batch arrives until it is planned
            lt.start()
        ths = restore_batch(d, eng, tokens_of, blocks, plans, errors)
        # every restore accepted: the 64th fills the batch, which then goes to the executor
        while c.stats().restores_in_flight < N_BATCH and time.time() < end and not plans:
            time.sleep(0.002)
        accepted = c.stats().restores_in_flight
        answered = []
        if hold_ms:
            t = time.perf_counter()
            ok = hc.health() == "SERVING" and c.lookup(eng, base).cached_tokens == n_restore
            answered.append((ok, time.perf_counter(), t))
        for th in ths:
            th.join()
        if not hold_ms:
            lt.join()
        hc.close()
        T.check(f"hold {hold_ms} ms: 64 restores ended OK", not errors, "; ".join(errors[:3]))
        T.check(f"hold {hold_ms} ms: one PlanSummary per restore", len(plans) == N_BATCH, str(len(plans)))
        if hold_ms:
            first_plan = min(plans.values()) if plans else float("inf")
            T.check("all 64 restores accepted (in flight) before the Health/Lookup calls", accepted == N_BATCH, str(accepted))
            T.check("Health and Lookup answered while the batch was being planned (before any PlanSummary)",
                    answered and answered[0][0] and answered[0][1] < first_plan,
                    f"answered at {answered[0][1] if answered else None}, first plan at {first_plan}")
        else:
            i99, d99 = pct(idle, 99), pct(lat, 99)
            print(f"bench: Health while a {N_BATCH}-restore batch ({n_restore} tokens each, optimal) is accepted "
                  f"and planned ({len(lat)} calls): p50 {pct(lat, 50) * 1e3:.2f} ms, p99 {d99 * 1e3:.2f} ms, "
                  f"max {max(lat) * 1e3:.2f} ms; idle p50 "
                  f"{pct(idle, 50) * 1e3:.2f} ms, p99 {i99 * 1e3:.2f} ms; p99 ratio to idle {d99 / i99:.2f}")
        os.unlink(path)
    finally:
        T.check(f"hold {hold_ms} ms: daemon exits 0 on SIGTERM", d.stop() == 0)


d = Daemon(conf={"kv_dtype": "f32", "cpu_tier_bytes": "1G", "ssd_tier_bytes": "1G"}).start()
try:
    phase("started")
    # GetStats and /metrics report their shared counters from one table: every GetStats counter
    # is a /metrics sample, family{key="value"} spelled family_value (a trailing _total dropped)
    code, body = d.http("/metrics")
    samples, errs = parse_prometheus(body)
    flat = set()
    for (name, labels) in samples:
        if labels:
            stem = name[:-6] if name.endswith("_total") else name
            flat.add(stem + "_" + labels.split('"')[1])
        else:
            flat.add(name)
    missing = [ct.name for ct in d.client.stats().counters if ct.name not in flat]
    T.check("every GetStats counter is a /metrics sample under the same name", code == 200 and not errs and not missing,
            f"{code} {errs[:3]} missing {missing}")
    save_check(d)
    phase("save checks")
finally:
    T.check("daemon exits 0 on SIGTERM", d.stop() == 0)
plan_check(1000, N_RESTORE)
phase("plan check")
plan_check(0, N_RESTORE_BENCH)
phase("plan bench")
sys.exit(T.summary())
