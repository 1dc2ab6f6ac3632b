"""Borrowed weights end to end (issue 18): the REAL daemon on the demo model (f32, 8 layers) and
real engine processes (borrow_engine.py) that hold the model's weights in shared memory in vLLM's
fused layout and offer them with OfferWeights:
  - restores before and after the swap give bit-identical KV (the backend computes on the
    engine's pages, checked against the checkpoint), the daemon's own weight bytes go to 0 in
    Admin.Stats and /metrics, its file-backed resident memory drops by about the weight size;
  - a second offer while one is held: ALREADY_EXISTS; malformed offers: INVALID_ARGUMENT naming
    the field; another model's fingerprint: FAILED_PRECONDITION;
  - kill -9 of the engine: the daemon reloads its own copy (Stats say so) and restores still
    give the same KV; a corrupted tensor is refused naming it, the daemon keeps its own copy;
  - an engine that unregisters ends its lease with OK, the own copy back;
  - a mixture-of-experts model (the qwen3-moe fixture) in vLLM's FusedMoE layout (router,
    experts.w13_weight [E][2I][H], experts.w2_weight [E][H][I]): borrowed, KV on the engine's
    experts == own-weights KV; one changed expert element refused naming it; TP=2 checked."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))
from cfdaemon import BUILD, CTL, FIXTURES, ROOT, Checks, Daemon, parse_prometheus, wait_for  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from cacheflow_client import CacheFlowError, pb  # noqa: E402

T = Checks()
SPAWNED = []
ENGINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "borrow_engine.py")


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def mapped_kb(pid, needle):
    """Resident kB of the process's mappings whose path contains `needle` (/proc/PID/smaps)."""
    kb, cur = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:  # a mapping's header line
                cur = len(parts) >= 6 and needle in parts[5]
            elif cur and parts[0] == "Rss:":
                kb += int(parts[1])
    return kb


def engine(d, mode, work):
    p = subprocess.Popen([sys.executable, ENGINE, d.addr, model, work, mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=open(os.path.join(work, f"eng-{mode}.err"), "a"), text=True,
                         env=dict(os.environ, BUILD=BUILD))
    SPAWNED.append(p.pid)
    return p


def events_until(p, last, timeout=300):
    out, end = [], time.time() + timeout
    while time.time() < end:
        line = p.stdout.readline()
        if not line:
            break
        ev = json.loads(line)
        out.append(ev)
        if ev.get("event") in last:
            break
    return {e["event"] + ("-" + e["when"] if "when" in e else ""): e for e in out}


def refusal(d, mode, work):
    """Run an engine that is expected to be refused: its "refused" event ({} when it was not)."""
    x = engine(d, mode, work)
    try:
        ev = events_until(x, ("READY", "refused"))
    finally:
        if x.poll() is None and "READY" in ev:
            x.kill()  # accepted after all: the check fails, the test goes on
        x.wait(120)
    return ev.get("refused", {}), ev


def mem(d):
    return d.client.stats().memory


def metrics(d):
    return parse_prometheus(d.http("/metrics")[1])[0]


d = Daemon(conf={"model": "/dev/null"})  # replaced below once the model exists
model = os.path.join(d.tmp, "model")
subprocess.run([CTL, "gen-model", "--out", model, "--preset", "demo"], check=True, stdout=subprocess.DEVNULL)
d.write_conf(model=model)
d.start()
work = d.tmp
try:
    own0 = mem(d).weights_own_bytes
    T.check(f"Stats: own weights counted before any offer ({own0} bytes), nothing borrowed",
            own0 > 50e6 and mem(d).weights_borrowed == 0)
    rss_file0, rss_shm0 = status_kb(d.proc.pid, "RssFile"), status_kb(d.proc.pid, "RssShmem")
    ck0, vm0 = mapped_kb(d.proc.pid, "model.safetensors"), status_kb(d.proc.pid, "VmRSS")

    a = engine(d, "offer", work)
    ev = events_until(a, ("READY", "refused"))
    b = ev.get("borrowed", {})
    T.check("engine A: weights borrowed (every weight checked, own copy released)",
            b.get("borrowed") is True and b.get("weights_checked", 0) >= 8 * 9 and b.get("own_bytes_released") == own0, str(ev))
    T.check("engine A: restores before and after the swap compute every cell",
            ev.get("restored-before", {}).get("cells_computed", 0) > 0 and ev.get("restored-after", {}).get("cells_computed", 0) > 0, str(ev))
    T.check("engine A: KV after the swap == KV before it (bit-identical)", ev.get("restored-after", {}).get("equal") is True, str(ev))
    m = mem(d)
    T.check(f"Stats: weights_borrowed 1, own weight bytes 0, borrowed bytes {m.weights_borrowed_bytes} == the own copy's",
            m.weights_borrowed == 1 and m.weights_own_bytes == 0 and m.weights_borrowed_bytes == own0, str(m))
    mx = metrics(d)
    T.check("/metrics agrees: cacheflow_weights_borrowed 1, bytes{own} 0, bytes{borrowed}, offers{borrowed} 1",
            mx.get(("cacheflow_weights_borrowed", "")) == 1 and mx.get(("cacheflow_weights_bytes", '{source="own"}')) == 0
            and mx.get(("cacheflow_weights_bytes", '{source="borrowed"}')) == own0
            and mx.get(("cacheflow_weights_offers_total", '{result="borrowed"}')) == 1,
            str({k: v for k, v in mx.items() if "weights" in k[0]}))
    rss_file1, rss_shm1 = status_kb(d.proc.pid, "RssFile"), status_kb(d.proc.pid, "RssShmem")
    ck1, vm1 = mapped_kb(d.proc.pid, "model.safetensors"), status_kb(d.proc.pid, "VmRSS")
    print(f"  resident: the checkpoint's pages {ck0} -> {ck1} kB (own weights {own0 // 1024} kB, the rest never "
          f"touched: lm_head, unused embedding rows); RssFile {rss_file0} -> {rss_file1} kB; RssShmem {rss_shm0} -> "
          f"{rss_shm1} kB (the engine's pages, shared with it); VmRSS {vm0} -> {vm1} kB")
    T.check("the checkpoint's resident pages are gone from the daemon (its own copy unmapped)", ck0 > 0 and ck1 == 0,
            f"{ck0} -> {ck1} kB")
    T.check("its file-backed resident memory dropped by about those pages (>= 90%: other files' pages come and go)",
            rss_file0 - rss_file1 >= 0.9 * ck0, f"{rss_file0 - rss_file1} of {ck0} kB")

    # while A's weights are held: a second offer, malformed offers
    c = d.client
    fp = c.stats().model_fingerprint
    e2 = c.register_shm(os.path.join(work, "e2.kv"), block_size=16, num_blocks=8, dtype=pb.DTYPE_F32, name="probe")
    wt = pb.WeightTensor(name="model.norm.weight", shape=[512], dtype=pb.DTYPE_F32, shm_path=os.path.join(work, "e2.kv"))
    T.status("a second offer while A's are borrowed: ALREADY_EXISTS naming A",
             lambda: c.offer_weights(e2, [wt]), grpc.StatusCode.ALREADY_EXISTS, "borrow-offer")
    bad = pb.WeightTensor(name="model.embed_tokens.weight", shape=[300, 512], dtype=pb.DTYPE_F32, strides=[4, 1200],
                          shm_path=os.path.join(work, "e2.kv"))
    T.status("non-contiguous strides: INVALID_ARGUMENT naming the tensor and stride",
             lambda: c.offer_weights(e2, [bad]), grpc.StatusCode.INVALID_ARGUMENT, "stride[1]")
    T.status("tp_rank >= tp_size: INVALID_ARGUMENT",
             lambda: c.offer_weights(e2, [pb.WeightTensor(name="x", shape=[4], dtype=pb.DTYPE_F32, shm_path="/dev/null",
                                                          tp_rank=2, tp_size=2)]),
             grpc.StatusCode.INVALID_ARGUMENT, "tp_rank 2")
    T.status("a tensor offered twice: INVALID_ARGUMENT",
             lambda: c.offer_weights(e2, [wt, wt]), grpc.StatusCode.INVALID_ARGUMENT, "offered twice")
    T.status("unknown engine: NOT_FOUND", lambda: c.offer_weights(e2 + 1000, [wt]), grpc.StatusCode.NOT_FOUND)
    c.unregister(e2)
    T.check("refused offers changed nothing: still borrowing A's", mem(d).weights_borrowed == 1)

    # kill -9 of the engine: the daemon goes back to its own copy
    a.kill()
    a.wait()
    T.check("kill -9 of engine A: the daemon reloads its own copy (Stats: borrowed 0, own bytes back)",
            wait_for(lambda: mem(d).weights_borrowed == 0 and mem(d).weights_own_bytes == own0, 120), str(mem(d)))
    T.check("the log says the weights were given back", "given back" in d.read_log())
    for f in os.listdir("/dev/shm"):
        if f == f"cf-borrow-test-{a.pid}.weights":
            os.unlink(os.path.join("/dev/shm", f))
    r = engine(d, "restore-only", work)
    r.wait(300)
    ok = r.returncode == 0
    kv_a = np.load(os.path.join(work, "kv-offer-before.npy"))
    kv_r = np.load(os.path.join(work, "kv-restore-only-before.npy")) if ok else None
    T.check("after the revert: a new engine's restore gives the same KV as before the swap",
            ok and np.array_equal(kv_a, kv_r), f"rc {r.returncode}")

    # a corrupted tensor is refused, the own copy kept
    rf, ev = refusal(d, "corrupt", work)
    T.check("corrupted gate_up_proj: refused FAILED_PRECONDITION naming the tensor and element",
            rf.get("code") == "FAILED_PRECONDITION" and "model.layers.1.mlp.gate_up_proj.weight" in rf.get("details", "")
            and "element [0, 0]" in rf.get("details", ""), str(ev))
    m = mem(d)
    T.check("after the refusal: own copy kept, nothing borrowed", m.weights_borrowed == 0 and m.weights_own_bytes == own0, str(m))
    T.check("/metrics: offers{refused} 1, offers{given_back} 1 (so far)",
            metrics(d).get(("cacheflow_weights_offers_total", '{result="refused"}')) == 1
            and metrics(d).get(("cacheflow_weights_offers_total", '{result="given_back"}')) == 1)

    # vLLM's TP=2 layout (fuse_hf_to_vllm per rank): every shard resolved and checked, then refused
    # only because the CPU backend computes on whole fp32 tensors
    rf, ev = refusal(d, "tp2", work)
    T.check("TP=2 shards in vLLM's layout: all checked, refused FAILED_PRECONDITION (not viewable by the CPU backend)",
            rf.get("code") == "FAILED_PRECONDITION" and "tensor-parallel shards" in rf.get("details", ""), str(ev))

    # an engine that unregisters: its lease ends OK, own copy back
    bproc = engine(d, "offer", work)
    ev = events_until(bproc, ("READY", "refused"))
    T.check("engine B borrowed again after A's death, KV equal", ev.get("restored-after", {}).get("equal") is True, str(ev))
    bproc.stdin.close()
    ev = events_until(bproc, ("lease-ended",), 120)
    bproc.wait(60)
    T.check("engine B unregisters: its OfferWeights stream ends OK", ev.get("lease-ended", {}).get("code") == "StatusCode.OK", str(ev))
    T.check("after B: own copy back", wait_for(lambda: mem(d).weights_borrowed == 0 and mem(d).weights_own_bytes == own0, 60))
    # killed A stays registered: dead engines are detected elsewhere (not this test's); its lease ended
    T.check("only killed A's registration is left", d.client.stats().engines == 1)

    # the daemon stops while an engine's weights are borrowed: the lease ends, the daemon exits cleanly
    held = engine(d, "offer", work)
    ev = events_until(held, ("READY", "refused"))
    T.check("engine C borrowed (held while the daemon stops)", "READY" in ev and mem(d).weights_borrowed == 1, str(ev))
finally:
    for p in ("a", "x", "bproc", "held"):
        if p in globals() and globals()[p].poll() is None:
            globals()[p].kill()
    rc = d.stop()
T.check("SIGTERM: daemon exits 0 (with engine C's weights borrowed)", rc == 0, str(rc))
if "held" in globals() and held.poll() is None:
    held.stdin.close()  # its Unregister fails (daemon gone); the lease ended with the daemon
    held.wait(60)

# mixture of experts: another daemon on the qwen3-moe fixture (transformers' checkpoint)
d = Daemon(conf={"model": os.path.join(FIXTURES, "public-qwen3-moe")})
model = d.conf["model"]
d.start()
work = d.tmp
try:
    own0 = mem(d).weights_own_bytes
    a = engine(d, "offer", work)
    ev = events_until(a, ("READY", "refused"))
    b = ev.get("borrowed", {})
    T.check(f"MoE: FusedMoE experts borrowed (every weight checked: {b.get('weights_checked')}, own copy released)",
            b.get("borrowed") is True and b.get("weights_checked", 0) == 2 * (8 + 1 + 3 * 8) + 3
            and b.get("own_bytes_released") == own0 and mem(d).weights_own_bytes == 0, str(ev))
    T.check("MoE: KV on the engine's experts == own-weights KV (bit-identical)",
            ev.get("restored-after", {}).get("equal") is True and ev.get("restored-after", {}).get("cells_computed", 0) > 0,
            str(ev))
    a.stdin.close()
    events_until(a, ("lease-ended",), 120)
    a.wait(60)
    T.check("MoE: the engine unregisters, own copy back",
            wait_for(lambda: mem(d).weights_borrowed == 0 and mem(d).weights_own_bytes == own0, 60))
    rf, ev = refusal(d, "corrupt", work)
    T.check("MoE: one changed element of expert 5 refused FAILED_PRECONDITION naming experts.w13_weight",
            rf.get("code") == "FAILED_PRECONDITION" and "model.layers.1.mlp.experts.w13_weight" in rf.get("details", ""),
            str(ev))
    rf, ev = refusal(d, "tp2", work)
    T.check("MoE: TP=2 FusedMoE shards all checked, refused as not viewable by the CPU backend",
            rf.get("code") == "FAILED_PRECONDITION" and "tensor-parallel shards" in rf.get("details", ""), str(ev))
finally:
    if a.poll() is None:
        a.kill()
    rc = d.stop()
T.check("MoE daemon exits 0", rc == 0, str(rc))
for p in SPAWNED:  # the engines' weight files (a killed or failed engine leaves its own)
    for f in (f"/dev/shm/cf-borrow-test-{p}.weights", f"/dev/shm/cf-borrow-test-{p}.weights.r0",
              f"/dev/shm/cf-borrow-test-{p}.weights.r1"):
        if os.path.exists(f):
            os.unlink(f)
sys.exit(T.summary())
