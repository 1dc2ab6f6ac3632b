"""Processes misbehaving around the real cacheflowd: kill -9 (real processes, real SIGKILL), asserted on behaviour, never
timing (the restores are slowed with cpu_read_gbps so they are surely in flight when the kill
lands; every wait has a generous bound for a wedged daemon, not a speed goal):
  - an engine process (it stated its pid) SIGKILLed while it Saves large prefixes in a loop: the
    daemon keeps serving, unregisters it (buffers unmapped), no call left in flight, the memory
    budget's use back to 0; every chunk it stored restores bit-exact with the bytes the dead
    engine held (a Save cut mid-copy stores whole chunks or nothing, never bytes of an unmapped
    buffer);
  - an engine that truncates its KV file while registered: its Save is refused naming the buffer
    (the SIGBUS of the lost pages absorbed, never stored), the daemon keeps serving;
  - a client process (no pid stated: only its connection tells) SIGKILLed mid-Restore of another
    engine's blocks: the restore ends CANCELLED, restores_in_flight and the budget's use back to
    0, the engine stays registered and its next restore is bit-exact;
  - the daemon SIGKILLed mid-Restore: the client's stream ends with an error (UNAVAILABLE), it
    does not hang; a daemon restarted on the same store serves the durable chunks bit-exact and
    removes the dead daemon's readiness files;
  - the daemon SIGKILLed while a client saves durably in a loop: after a restart every Save it
    answered durable is there whole, and restores bit-exact."""
import glob
import os
import signal
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib"))
from cfdaemon import CacheFlowError, Checks, Client, Daemon, parse_prometheus, pb, wait_for  # noqa: E402

LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "lib")
T = Checks()
BS, CHUNK = 16, 16
N_SAVE = 65536  # tokens a Save of the doomed engine carries (4096 blocks, 32 MiB of f32 KV)
d = Daemon(conf={"chunk_tokens": str(CHUNK), "cpu_tier_bytes": "160M", "ssd_tier_bytes": "64M",
                 "host_memory_bytes": "64M"}).start()
c = d.client
PATTERN = """
def pattern(b, l, kv, size):
    # one block's bytes of one layer's K or V: a byte per (block, layer, plane), finite floats
    return bytes([((b * 31 + l * 7 + kv * 3) % 50) + 1]) * size
def tokens(n, k, vocab):
    return [(k * 7919 + 13 * i + i // 97) % vocab for i in range(n)]
"""
exec(PATTERN)


def metric(name, labels=""):
    samples, _ = parse_prometheus(d.http("/metrics")[1])
    return samples.get((name, labels), -1)


def host_used():
    return metric("cacheflow_memory_used_bytes", '{pool="host"}')


def daemon_maps(path):
    with open(f"/proc/{d.proc.pid}/maps") as f:
        return any(line.rstrip().endswith(path) for line in f)


def restore_exact(cl, eng, toks, dst0):
    """Restore toks (16 blocks: 256 tokens) into blocks [dst0, dst0 + 16) with the load policy:
    True when it completes and every restored byte is the pattern of source blocks 0..15."""
    evs = list(cl.restore(eng, toks, list(range(dst0, dst0 + 16)), policy=pb.POLICY_LOAD))
    with open(vkv, "rb") as f:
        data = f.read()
    lo, hi = dst0 * BS * row, (dst0 + 16) * BS * row
    return bool(evs) and evs[-1].HasField("done") and all(
        data[plane * (2 * l + kv) + lo: plane * (2 * l + kv) + hi] ==
        b"".join(pattern(b, l, kv, BS * row) for b in range(16)) for l in range(st.model_layers) for kv in range(2))


try:
    st = c.stats()
    row = st.model_kv_heads * st.model_head_dim * 4
    T.check("host memory budget in use: 0 at rest", host_used() == 0, str(host_used()))

    # ------------------------------------------------------------ engine killed while it Saves
    nb = N_SAVE // BS
    dkv = os.path.join(d.tmp, "doomed.kv")
    child = subprocess.Popen([sys.executable, "-c", f"""
import os, sys
sys.path.insert(0, {LIB!r})
from cfdaemon import Client, pb
{PATTERN}
c = Client({d.addr!r}, timeout=120)
st = c.stats()
req, _ = c.layout_request({dkv!r}, block_size={BS}, num_blocks={nb}, name="doomed-saver", stats=st)
req.pid = os.getpid()
eng = c.register(req).engine_id
row = st.model_kv_heads * st.model_head_dim * 4
plane = {BS} * row * {nb}
with open({dkv!r}, "r+b") as f:
    for l in range(st.model_layers):
        for kv in range(2):
            f.seek(plane * (2 * l + kv))
            f.write(b"".join(pattern(b, l, kv, {BS} * row) for b in range({nb})))
print("registered", eng, flush=True)
k = 0
while True:
    print("saving", k, flush=True)
    c.save(eng, tokens({N_SAVE}, k, st.model_vocab), list(range({nb})))
    k += 1
"""], stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().split()
    T.check("the saving engine registered", line[:1] == ["registered"], str(line))
    seen = []
    while len(seen) < 3:  # two whole Saves, then the kill lands in (or right before) the third
        line = child.stdout.readline()
        if not line:
            break
        seen.append(line.split()[1])
    T.check("it saved twice and started a third Save", len(seen) == 3, str(seen))
    T.check("its buffers are mapped by the daemon", daemon_maps(dkv))
    # kill while the daemon handles that Save when we see it (not asserted: it may be done first)
    mid = wait_for(lambda: metric("cacheflow_rpc_in_flight") >= 1, 5)
    print(f"     the kill landed with {'a call' if mid else 'no call'} in flight")
    child.kill()
    child.wait()
    T.check("engine SIGKILLed mid-Save: the daemon keeps serving", c.health() == "SERVING")
    T.check("... unregisters it (engines 0) and unmaps its buffers",
            wait_for(lambda: c.stats().engines == 0 and not daemon_maps(dkv), 60),
            f"engines {c.stats().engines}, mapped {daemon_maps(dkv)}")  # a Save in flight holds them until it ends
    T.check("... no call left in flight (cacheflow_rpc_in_flight 0)",
            wait_for(lambda: metric("cacheflow_rpc_in_flight") == 0, 60), str(metric("cacheflow_rpc_in_flight")))
    T.check("... the memory budget's use back to 0", wait_for(lambda: host_used() == 0, 60), str(host_used()))
    # a new engine restores whatever the dead one stored: bit-exact with the dead engine's bytes
    vkv = os.path.join(d.tmp, "verify.kv")
    req, _ = c.layout_request(vkv, block_size=BS, num_blocks=nb, name="verifier", stats=st)
    veng = c.register(req).engine_id
    plane = BS * row * nb
    for k in range(3):
        toks = tokens(N_SAVE, k, st.model_vocab)
        n = c.lookup(veng, toks).cached_tokens
        if k < 2:
            T.check(f"save {k} (completed before the kill) is stored whole", n == N_SAVE, f"{n}")
        if n == 0:
            T.check(f"save {k}: nothing stored (cut before its first chunk)", True)
            continue
        evs = list(c.restore(veng, toks[:n], list(range(n // BS)), policy=pb.POLICY_LOAD))
        T.check(f"save {k}: restore of its {n} stored tokens completes", bool(evs) and evs[-1].HasField("done"))
        with open(vkv, "rb") as f:
            data = f.read()
        bad = []
        for l in range(st.model_layers):
            for kv in range(2):
                base = plane * (2 * l + kv)
                got = data[base: base + (n // BS) * BS * row]
                want = b"".join(pattern(b, l, kv, BS * row) for b in range(n // BS))
                if got != want:
                    bad.append((l, kv))
        T.check(f"save {k}: every stored cell bit-exact with the dead engine's bytes", not bad, str(bad))
    T.check("the memory budget's use back to 0 after the restores", wait_for(lambda: host_used() == 0, 60), str(host_used()))

    # ------------------------------------------------------------ an engine truncates its KV file
    # (a buggy engine, or one that frees its buffers while still registered): touching the lost
    # pages raised SIGBUS and killed the daemon; now the Save is refused naming the buffer
    tkv = os.path.join(d.tmp, "trunc.kv")
    req, _ = c.layout_request(tkv, block_size=BS, num_blocks=16, name="truncator", stats=st)
    treg = c.register(req)
    teng = treg.engine_id
    ttoks = tokens(256, 7, st.model_vocab)
    T.check("an engine saves from its buffers", c.save(teng, ttoks[:64], list(range(4))).saved_tokens == 64)
    os.truncate(tkv, 0)
    try:
        c.save(teng, ttoks, list(range(16)))
        T.check("its buffer truncated: the Save is refused", False, "accepted")
    except CacheFlowError as e:
        T.check("its buffer truncated: the Save is refused INVALID_ARGUMENT naming the buffer",
                e.code.name == "INVALID_ARGUMENT" and "trunc.kv was truncated" in e.details, str(e))
    T.check("... the daemon keeps serving", d.proc.poll() is None and c.health() == "SERVING")
    T.check("... nothing of the refused Save was stored", c.lookup(veng, ttoks).cached_tokens <= 64,
            str(c.lookup(veng, ttoks).cached_tokens))
    os.truncate(treg.readiness_shm_path, 0)  # the readiness file the daemon writes, too
    try:
        list(c.restore(teng, ttoks[:64], list(range(8, 12)), policy=pb.POLICY_LOAD))
        ended = "done"
    except CacheFlowError as e:
        ended = f"{e.code.name}: {e.details}"
    T.check("a restore into the truncated buffers and readiness file fails INVALID_ARGUMENT naming the buffer",
            ended.startswith("INVALID_ARGUMENT") and "trunc.kv was truncated" in ended, ended)
    T.check("... the daemon keeps serving", d.proc.poll() is None and c.health() == "SERVING")
    c.unregister(teng)
    T.check("... another engine's restore is still bit-exact", restore_exact(c, veng, tokens(N_SAVE, 0, st.model_vocab)[:256], 32))

    # ------------------------------------------------------------ client killed mid-Restore
    d.write_conf(cpu_read_gbps="0.0002")  # 25 kB/s: a 256-token restore streams for many seconds
    d.signal(signal.SIGHUP)
    T.check("slow reads in effect", wait_for(lambda: c.config("cpu_read_gbps").get("cpu_read_gbps", "").startswith("0.0002"), 30))
    toks0 = tokens(N_SAVE, 0, st.model_vocab)[:256]
    CANC = '{code="CANCELLED"}'
    cancelled0 = max(metric("cacheflow_rpc_status_total", CANC), 0)
    cl = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {LIB!r})
from cfdaemon import Client, pb
c = Client({d.addr!r}, timeout=120)
for ev in c.restore({veng}, {toks0!r}, list(range(16, 32)), policy=pb.POLICY_LOAD):
    print("event", flush=True)
    time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True)
    T.check("a client's restore streams", cl.stdout.readline().strip() == "event")
    T.check("... in flight", c.stats().restores_in_flight == 1, str(c.stats().restores_in_flight))
    cl.kill()
    cl.wait()
    T.check("client SIGKILLed mid-Restore: the restore ends (restores_in_flight 0)",
            wait_for(lambda: c.stats().restores_in_flight == 0, 120), str(c.stats().restores_in_flight))
    T.check("... ended CANCELLED in the daemon",
            wait_for(lambda: metric("cacheflow_rpc_status_total", CANC) == cancelled0 + 1, 60),
            f"{cancelled0} -> {metric('cacheflow_rpc_status_total', CANC)}")
    T.check("... the memory budget's use back to 0", wait_for(lambda: host_used() == 0, 60), str(host_used()))
    T.check("... the engine stays registered", c.stats().engines == 1)
    d.write_conf(cpu_read_gbps="0")
    d.signal(signal.SIGHUP)
    T.check("reads at full speed again", wait_for(lambda: not c.config("cpu_read_gbps").get("cpu_read_gbps", "x").startswith("0.0002"), 30))
    T.check("... and its next restore is bit-exact", restore_exact(c, veng, toks0, 64))
    # nothing the killed engine and client held stays pinned: the whole CPU tier can be evicted
    # (Admin.Evict writes dirty chunks back; the SSD tier evicts only by itself)
    c.evict()
    st3 = c.stats()
    T.check("after the kills every CPU-tier chunk is evictable (no pin left behind: the tier empties)",
            st3.cpu_tier_bytes_used == 0, f"cpu {st3.cpu_tier_bytes_used}")

    # ------------------------------------------------------------ daemon killed mid-Restore
    r = c.save(veng, toks0, list(range(16)), durable=True)
    T.check("256 tokens saved durably", r.saved_tokens == 256 and r.durable, str(r))
    ready = glob.glob(f"/dev/shm/cacheflowd-{d.proc.pid}-ready-*")
    T.check("the daemon's readiness file exists", len(ready) == 1, str(ready))
    d.write_conf(cpu_read_gbps="0.0002")
    d.signal(signal.SIGHUP)
    T.check("slow reads in effect again", wait_for(lambda: c.config("cpu_read_gbps").get("cpu_read_gbps", "").startswith("0.0002"), 30))
    res = {}
    it = Client(d.addr, timeout=120).restore(veng, toks0, list(range(32, 48)), policy=pb.POLICY_LOAD)
    first = next(it)
    T.check("a restore streams", first.HasField("plan"), str(first))
    old_pid = d.proc.pid
    d.proc.kill()
    d.proc.wait()
    try:
        for ev in it:
            pass
        res["code"] = "OK"
    except CacheFlowError as e:
        res["code"], res["details"] = e.code.name, e.details
    T.check("daemon SIGKILLed mid-Restore: the client's stream ends with an error, not a hang",
            res.get("code") in ("UNAVAILABLE", "CANCELLED", "INTERNAL", "UNKNOWN"), str(res))
    try:
        c.lookup(veng, toks0)
        T.check("... a call to the dead daemon fails UNAVAILABLE", False, "answered")
    except CacheFlowError as e:
        T.check("... a call to the dead daemon fails UNAVAILABLE", e.code.name == "UNAVAILABLE", str(e))
    d.write_conf(cpu_read_gbps="0")
    d.start()
    c = d.client
    T.check("a daemon restarted on the same store removed the dead one's readiness file",
            not glob.glob(f"/dev/shm/cacheflowd-{old_pid}-ready-*"), str(glob.glob(f"/dev/shm/cacheflowd-{old_pid}-ready-*")))
    st2 = c.stats()
    T.check("... starts with no engine and nothing in flight", st2.engines == 0 and st2.restores_in_flight == 0)
    req, _ = c.layout_request(vkv, block_size=BS, num_blocks=nb, name="verifier-2", stats=st2)
    veng = c.register(req).engine_id
    T.check("... finds the durable prefix", c.lookup(veng, toks0).cached_tokens == 256)
    T.check("... and restores it bit-exact", restore_exact(c, veng, toks0, 96))
    T.check("... the memory budget's use 0", wait_for(lambda: host_used() == 0, 60), str(host_used()))

    # ------------------------------------------------------------ daemon killed amid durable Saves
    # another connection saves distinct 256-token prefixes durably, one after another; the daemon
    # is SIGKILLed among them: every Save it answered durable must be there after a restart
    acked, stop_err = [], []

    def saver():
        cl = Client(d.addr, timeout=60)
        k = 100
        while True:
            try:
                r = cl.save(veng, tokens(256, k, st2.model_vocab), list(range(16)), durable=True)
            except CacheFlowError as e:
                stop_err.append(e.code.name)
                break
            if r.durable and r.saved_tokens == 256:
                acked.append(k)
            k += 1

    th = threading.Thread(target=saver)
    th.start()
    T.check("durable saves acknowledged", wait_for(lambda: len(acked) >= 5, 120), str(acked))
    d.proc.kill()
    d.proc.wait()
    th.join(120)
    T.check("daemon SIGKILLed amid durable Saves: the saver's next call fails (not a hang)", bool(stop_err) and not th.is_alive(),
            str(stop_err))
    d.start()
    c = d.client
    req, _ = c.layout_request(vkv, block_size=BS, num_blocks=nb, name="verifier-3", stats=st2)
    veng = c.register(req).engine_id
    whole = [k for k in acked if c.lookup(veng, tokens(256, k, st2.model_vocab)).cached_tokens == 256]
    T.check(f"after the restart every Save answered durable is there whole ({len(acked)})", whole == acked,
            f"missing {sorted(set(acked) - set(whole))}")
    T.check("... the last one restores bit-exact", restore_exact(c, veng, tokens(256, acked[-1], st2.model_vocab), 128))
    c.unregister(veng)
finally:
    rc = d.stop()
T.check("exit 0 on SIGTERM after the faults", rc == 0, f"rc={rc}")
sys.exit(T.summary())
