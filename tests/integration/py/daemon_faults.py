"""Faults around the real cacheflowd (issue 16.4), asserted on behaviour, never on timing:
  - SIGHUP during traffic: clients keep running Lookup/Save/Restore while the config is reloaded
    five times; every request succeeds and the reloaded setting is in effect;
  - a client that disconnects mid-stream, more times than an engine has readiness slots (64):
    each cut restore is cancelled in the daemon (ends CANCELLED, not run to its end into blocks
    the engine may have reused), restores_in_flight is back to 0, its readiness slot is given
    back (the next restore still gets one); the loaded KV is bit-exact afterwards;
  - an engine process killed (SIGKILL) while its restore streams: the daemon ends the restore,
    keeps serving, unregisters the engine itself (it registered with its pid: the daemon watches
    the process) — slot, buffer mappings and readiness file gone, counted in Stats and /metrics —
    and another engine's restore is bit-exact; a pid with no process is refused at registration.
Restores are slowed with cpu_read_gbps (a SIGHUP) so they are surely in flight when cut."""
import os
import re
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
from cfdaemon import CacheFlowError, Checks, Client, Daemon, pb, wait_for  # noqa: E402

T = Checks()
BS, CHUNK = 16, 16
d = Daemon(conf={"chunk_tokens": str(CHUNK), "batch_window_us": "1000", "cpu_tier_bytes": "64M",
                 "ssd_tier_bytes": "0"}).start()
c = d.client
try:
    st = c.stats()
    esz = {pb.DTYPE_F32: 4, pb.DTYPE_BF16: 2, pb.DTYPE_F16: 2}[st.kv_dtype or pb.DTYPE_F32]
    row = st.model_kv_heads * st.model_head_dim * esz  # bytes of one token in one plane
    NB = 64
    shm = os.path.join(d.tmp, "a.kv")
    req, size = c.layout_request(shm, block_size=BS, num_blocks=NB, name="faults-a", stats=st)
    eng = c.register(req).engine_id
    plane = BS * row * NB

    def blocks_bytes(blocks):
        """The engine's bytes of these blocks, every layer, K and V."""
        with open(shm, "rb") as f:
            data = f.read()
        out = b""
        for l in range(st.model_layers):
            for kv in range(2):
                base = plane * (2 * l + kv)
                for b in blocks:
                    out += data[base + b * BS * row: base + (b + 1) * BS * row]
        return out

    # the engine's KV of 64 tokens in blocks 0..3: distinct bytes, saved into the CPU tier
    toks = [(7 * i + 3) % st.model_vocab for i in range(64)]
    src = [0, 1, 2, 3]
    with open(shm, "r+b") as f:
        for l in range(st.model_layers):
            for kv in range(2):
                for b in src:
                    f.seek(plane * (2 * l + kv) + b * BS * row)
                    # finite floats in any dtype: small positive values, distinct per block/layer
                    f.write(bytes(((b * 31 + l * 7 + kv * 3 + i) % 50) + 1 for i in range(BS * row)))
    want = blocks_bytes(src)
    r = c.save(eng, toks, src)
    T.check("save 64 tokens", r.saved_tokens == 64, str(r))

    def restore_exact(dst, what):
        evs = list(c.restore(eng, toks, dst, policy=pb.POLICY_LOAD))
        ok = evs and evs[-1].HasField("done")
        T.check(f"{what}: restore completes", ok, str(evs[-1:]))
        T.check(f"{what}: restored KV is bit-exact", blocks_bytes(dst) == want)

    restore_exact([4, 5, 6, 7], "before the faults")

    # ---------------------------------------------------------------- SIGHUP during traffic
    stop = threading.Event()
    errs, done = [], [0]

    def traffic(k):
        cl = Client(d.addr, timeout=60)
        dst = [8 + 4 * k + j for j in range(4)]
        while not stop.is_set():
            try:
                cl.lookup(eng, toks)
                cl.save(eng, toks, src)
                evs = list(cl.restore(eng, toks, dst, policy=pb.POLICY_LOAD))
                if not evs or not evs[-1].HasField("done"):
                    errs.append("restore without done")
                done[0] += 1
            except CacheFlowError as e:
                errs.append(f"{e.code}: {e.details}")
        cl.close()

    ths = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
    for th in ths:
        th.start()
    T.check("traffic running", wait_for(lambda: done[0] >= 4, 60))
    for i, gbps in enumerate(("40", "30", "20", "10", "50")):
        n0 = done[0]
        d.write_conf(cpu_read_gbps=gbps)
        d.signal(signal.SIGHUP)
        T.check(f"SIGHUP {i + 1} during traffic: cpu_read_gbps = {gbps} in effect",
                wait_for(lambda: c.config("cpu_read_gbps").get("cpu_read_gbps", "").startswith(gbps), 30))
        T.check(f"SIGHUP {i + 1}: traffic goes on", wait_for(lambda: done[0] > n0, 60))
    stop.set()
    for th in ths:
        th.join(120)
    T.check("SIGHUP during traffic: every request succeeded", not errs, "; ".join(errs[:5]))
    restore_exact([4, 5, 6, 7], "after the reloads")

    # ---------------------------------------------------------------- client disconnects mid-stream
    def rpc_status(code_name):
        code, body = d.http("/metrics")
        m = re.search(r'^cacheflow_rpc_status_total\{code="%s"\} (\d+)$' % code_name, body, re.M)
        return int(m.group(1)) if m else 0

    def cancelled():
        return rpc_status("CANCELLED")

    def died():
        """cacheflow_engines_died_total, as Stats and /metrics both report it (they must agree)."""
        st_ = {x.name: x.value for x in c.stats().counters}.get("cacheflow_engines_died_total", -1)
        m = re.search(r'^cacheflow_engines_died_total (\S+)$', d.http("/metrics")[1], re.M)
        return int(st_) if m and float(m.group(1)) == st_ else -2

    def daemon_maps(path):
        """The daemon still maps this file."""
        with open(f"/proc/{d.proc.pid}/maps") as f:
            return any(line.rstrip().endswith(path) for line in f)

    c0 = cancelled()
    d.write_conf(cpu_read_gbps="0.0002")  # 25 kB/s: a 64-token restore streams for seconds
    d.signal(signal.SIGHUP)
    T.check("slow reads in effect", wait_for(lambda: c.config("cpu_read_gbps").get("cpu_read_gbps", "").startswith("0.0002"), 30))
    cut, slots = 0, set()
    for i in range(70):  # more than the 64 readiness slots of an engine
        cl = Client(d.addr, timeout=60)
        it = cl.cf.Restore(pb.RestoreRequest(engine_id=eng, token_ids=toks, block_ids=[8, 9, 10, 11],
                                             policy=pb.POLICY_LOAD), timeout=60)
        ev = next(it)  # the plan: the restore is running
        if ev.HasField("plan"):
            slots.add(ev.plan.readiness_slot)
        it.cancel()
        cl.close()
        if wait_for(lambda: c.stats().restores_in_flight == 0, 60):
            cut += 1
    T.check("70 restores cut by their clients mid-stream all ended (restores_in_flight 0 each time)", cut == 70, f"{cut}")
    T.check("every cut restore had a readiness slot (none leaked: 70 > 64 slots)", 0xFFFFFFFF not in slots and len(slots) >= 1,
            str(sorted(slots)))
    T.check("the 70 cut restores ended CANCELLED in the daemon (not run to their end)", cancelled() - c0 == 70,
            f"{c0} -> {cancelled()}")
    T.check("still serving after the disconnects", c.health() == "SERVING")

    # ---------------------------------------------------------------- engine killed mid-restore
    child = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib")!r})
from cfdaemon import Client, pb
c = Client({d.addr!r}, timeout=60)
st = c.stats()
req, _ = c.layout_request({os.path.join(d.tmp, "b.kv")!r}, block_size={BS}, num_blocks=32, name="doomed", stats=st)
req.pid = os.getpid()  # the daemon watches this process
r = c.register(req)
eng = r.engine_id
toks = [(11 * i + 5) % st.model_vocab for i in range(256)]  # 256 tokens: seconds to stream at the slow rate
c.save(eng, toks, list(range(16)))
print(eng, r.readiness_shm_path, flush=True)
for ev in c.restore(eng, toks, list(range(16, 32)), policy=pb.POLICY_LOAD):
    print("event", flush=True)
    time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True)
    doomed_s, ready_path = child.stdout.readline().split()
    doomed = int(doomed_s)
    bkv = os.path.join(d.tmp, "b.kv")
    T.check("doomed engine's restore streams", child.stdout.readline().strip() == "event")
    T.check("its restore is in flight", c.stats().restores_in_flight >= 1)
    T.check("the live engine stays registered, its buffers mapped, its readiness file there",
            c.stats().engines == 2 and daemon_maps(bkv) and os.path.exists(ready_path), ready_path)
    T.check("no engine died yet", died() == 0, str(died()))
    ended0 = cancelled() + rpc_status("ABORTED")
    child.kill()  # SIGKILL: no goodbye, no Unregister; the connection just drops
    child.wait()
    T.check("engine killed mid-restore: the daemon ends its restore", wait_for(lambda: c.stats().restores_in_flight == 0, 60))
    # the call's close (CANCELLED) or the engine's removal (ABORTED) ends it, whichever the daemon sees first
    T.check("engine killed mid-restore: its restore ended CANCELLED or ABORTED, once",
            cancelled() + rpc_status("ABORTED") - ended0 == 1, f"{ended0} -> {cancelled() + rpc_status('ABORTED')}")
    T.check("still serving after the engine died", c.health() == "SERVING")
    T.check("the dead engine is unregistered by the daemon (its process exited)", wait_for(lambda: c.stats().engines == 1, 60),
            str(c.stats().engines))
    T.check("counted once in Stats and /metrics (cacheflow_engines_died_total)", died() == 1, str(died()))
    T.check("its buffers are unmapped", not daemon_maps(bkv))
    T.check("its readiness file is removed", not os.path.exists(ready_path), ready_path)
    try:
        c.unregister(doomed)
        T.check("Unregister of the dead engine: NOT_FOUND", False, "accepted")
    except CacheFlowError as e:
        T.check("Unregister of the dead engine: NOT_FOUND", e.code.name == "NOT_FOUND", str(e))
    try:
        c.lookup(doomed, toks[:16])
        T.check("Lookup on the dead engine: NOT_FOUND", False, "accepted")
    except CacheFlowError as e:
        T.check("Lookup on the dead engine: NOT_FOUND", e.code.name == "NOT_FOUND", str(e))
    # a pid naming no process: refused, naming the pid
    gone = subprocess.Popen(["true"])
    gone.wait()
    req2, _ = c.layout_request(os.path.join(d.tmp, "c.kv"), block_size=BS, num_blocks=8, name="no-process", stats=st)
    req2.pid = gone.pid
    try:
        c.register(req2)
        T.check("RegisterEngine with a pid of no process: refused", False, "accepted")
    except CacheFlowError as e:
        T.check("RegisterEngine with a pid of no process: FAILED_PRECONDITION naming it",
                e.code.name == "FAILED_PRECONDITION" and f"pid {gone.pid}" in str(e), str(e))
    T.check("the refused registration holds nothing", c.stats().engines == 1 and died() == 1)
    # an idle engine (no call open, its channel closed) killed: nothing but its pid tells the daemon
    idle = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
sys.path.insert(0, {os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib")!r})
from cfdaemon import Client
c = Client({d.addr!r}, timeout=60)
req, _ = c.layout_request({os.path.join(d.tmp, "d.kv")!r}, block_size={BS}, num_blocks=8, name="idle")
req.pid = os.getpid()
print(c.register(req).engine_id, flush=True)
c.close()
time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True)
    int(idle.stdout.readline())  # its engine id: registered
    T.check("an idle engine registered", c.stats().engines == 2 and daemon_maps(os.path.join(d.tmp, "d.kv")))
    idle.kill()
    idle.wait()
    T.check("the idle engine killed: unregistered too, its buffers unmapped",
            wait_for(lambda: c.stats().engines == 1, 60) and not daemon_maps(os.path.join(d.tmp, "d.kv")))
    T.check("two engines died, counted", died() == 2, str(died()))
    restore_exact([12, 13, 14, 15], "after the killed engine")
    c.unregister(eng)
    T.check("no engine left", c.stats().engines == 0)
finally:
    rc = d.stop()
T.check("exit 0 on SIGTERM after the faults", rc == 0, f"rc={rc}")
sys.exit(T.summary())
