"""Save and Lookup through the real daemon over lib/store: the engine's blocks (a non-trivial
paged layout with padding, head-major inside a block, K and V in separate files, permuted block
ids) are copied byte-exactly into the store's cells; Lookup reports the cached prefix per tier;
Evict moves chunks to SSD; a restart keeps the cache; another chunk size is refused."""
import os
import shutil
import subprocess
import tempfile
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))  # tests/lib: the harness
from cfdaemon import CTL, CacheFlowError, Checks, Daemon, parse_prometheus, pb  # noqa: E402
import grpc  # noqa: E402

SC = grpc.StatusCode
T = Checks()
BS, NB, C = 8, 16, 16          # block size, blocks, chunk tokens
STORE_TMP = tempfile.mkdtemp(prefix="cfd-store-")   # outlives each daemon's temp dir
store_dir = os.path.join(STORE_TMP, "store")
# f32 pinned: the checks below read the engine file as float32 (auto would be bf16 on a cuda backend)
conf = {"chunk_tokens": str(C), "cpu_tier_bytes": "1M", "ssd_tier_bytes": "64M", "store_dir": store_dir, "kv_dtype": "f32"}
d = Daemon(conf=conf).start()
c = d.client
rng = np.random.default_rng(7)


def engine_request(st, dtype=pb.DTYPE_F32, where=None):
    """Head-major blocks with padding: element (b, t, h, x) at
    off + b*block_stride + h*head_stride + t*token_stride + x*4."""
    L, H, D = st.model_layers, st.model_kv_heads, st.model_head_dim
    token_stride = D * 4
    head_stride = BS * token_stride + 64
    block_stride = H * head_stride + 128
    layer_bytes = NB * block_stride
    files = {}
    layers = []
    for kv in ("k", "v"):
        path = os.path.join(where or d.tmp, f"engine.{kv}")
        data = rng.standard_normal((4096 + L * layer_bytes) // 4).astype(np.float32)
        data.tofile(path)
        files[kv] = (path, data.view(np.uint8))
    for l in range(L):
        layers.append(pb.LayerLayout(
            layer=l, k=pb.KvBuffer(shm_path=files["k"][0], offset=4096 + l * layer_bytes),
            v=pb.KvBuffer(shm_path=files["v"][0], offset=4096 + l * layer_bytes),
            block_size=BS, num_blocks=NB, block_stride=block_stride, token_stride=token_stride,
            head_stride=head_stride, dtype=dtype, num_kv_heads=H, head_dim=D))
    geo = (L, H, D, token_stride, head_stride, block_stride, layer_bytes)
    return pb.RegisterEngineRequest(model_fingerprint=st.model_fingerprint, layers=layers, name="store-test"), files, geo


def expected_cells(files, geo, blocks, n):
    """What the store must hold: per chunk, per layer, [2][nt][H][D] f32."""
    L, H, D, ts, hs, bstr, lb = geo
    out = bytearray()
    for first in range(0, n, C):
        nt = min(C, n - first)
        for l in range(L):
            for kv in ("k", "v"):
                raw = files[kv][1]
                for j in range(nt):
                    p = first + j
                    b, t = blocks[p // BS], p % BS
                    for h in range(H):
                        o = 4096 + l * lb + b * bstr + h * hs + t * ts
                        out += raw[o:o + D * 4].tobytes()
    return bytes(out)


try:
    st = c.stats()
    T.status("BF16 engine refused: the store holds F32", lambda: c.register(engine_request(st, pb.DTYPE_BF16)[0]),
             SC.FAILED_PRECONDITION, "engine KV dtype BF16, but this daemon's store holds F32")
    T.check("nothing registered after the refusal", c.stats().engines == 0)
    req, files, geo = engine_request(st)
    eng = c.register(req).engine_id
    tokens = [int(x) for x in rng.integers(0, 300, 40)]   # 2 full chunks + 8
    blocks = [3, 11, 0, 7, 15]
    r = c.save(eng, tokens, blocks)
    T.check("save: 40 tokens copied, not yet durable", r.saved_tokens == 40 and not r.durable, str(r))
    lk = c.lookup(eng, tokens)
    tiers = {t.tier: t.tokens for t in lk.per_tier}
    T.check("lookup: all 40 tokens cached, in the CPU tier", lk.cached_tokens == 40 and tiers == {pb.TIER_CPU: 40, pb.TIER_SSD: 0}, str(lk))
    T.check("lookup of the first 20 tokens: 16 (the full first chunk)", c.lookup(eng, tokens[:20]).cached_tokens == 16)
    other = list(tokens)
    other[20] = (other[20] + 1) % 300
    T.check("lookup with token 20 changed: 16", c.lookup(eng, other).cached_tokens == 16)
    T.check("lookup of a longer prefix: the 32 full-chunk tokens", c.lookup(eng, tokens + [5] * 10).cached_tokens == 32)
    T.check("lookup of an unrelated prefix: 0", c.lookup(eng, [(t + 1) % 300 for t in tokens]).cached_tokens == 0)
    T.check("save again: already stored, counted", c.save(eng, tokens, blocks).saved_tokens == 40)
    ev = c.evict(tier=pb.TIER_CPU)
    T.check("evict cpu: bytes and 3 chunks moved out", ev.bytes_evicted > 0 and ev.chunks_evicted == 3, str(ev))
    lk = c.lookup(eng, tokens)
    tiers = {t.tier: t.tokens for t in lk.per_tier}
    T.check("lookup after evict: 40 tokens, on SSD", lk.cached_tokens == 40 and tiers[pb.TIER_SSD] == 40, str(lk))
    T.check("stats: SSD bytes used", c.stats().ssd_tier_bytes_used > 0)
    T.status("save: block id out of range changes nothing", lambda: c.save(eng, tokens, [3, 11, 0, 7, 16]), SC.INVALID_ARGUMENT, "out of range")
    # ---- the batcher looks the prefix up and plans it: a PlanSummary; lib/exec (cf_dataplane)
    # then executes it and the stream ends OK with the stats
    done = {}

    def plan_of(toks, blks, policy):
        events, end = [], None
        try:
            for ev in c.restore(eng, toks, blks, policy=policy):
                events.append(ev)
        except CacheFlowError as e:
            end = e
        plans = [ev.plan for ev in events if ev.WhichOneof("event") == "plan"]
        dones = [ev.done for ev in events if ev.WhichOneof("event") == "done"]
        done["last"] = dones[-1] if dones else None
        return (plans[0] if len(plans) == 1 else None), end

    L = st.model_layers
    for pol, name in ((pb.POLICY_RECOMPUTE, "recompute"), (pb.POLICY_LOAD, "load"), (pb.POLICY_OPTIMAL, "optimal"),
                      (pb.POLICY_CAKE, "cake")):
        plan, end = plan_of(tokens, blocks, pol)
        ok = plan is not None and plan.policy == pol and plan.chunks == 3 and \
            plan.cells_load_cpu + plan.cells_load_ssd + plan.cells_compute == 3 * L and plan.cells_load_cpu == 0 and \
            0 < plan.bound_us <= plan.predicted_us * 1.000001
        if pol == pb.POLICY_RECOMPUTE:
            ok = ok and plan.cells_compute == 3 * L
        if pol == pb.POLICY_LOAD:
            # the full chunks sit on SSD since the evict; the partial last one (8 of 40 tokens) is
            # stored too but lib/exec computes it (h = L): planned as computed, as it is executed
            ok = ok and plan.cells_load_ssd == 2 * L and plan.cells_compute == L
        T.check(f"restore ({name}): PlanSummary of the cached prefix", ok, str(plan))
        dn = done["last"]
        if pol == pb.POLICY_LOAD:
            T.check("restore (load): the executor computed exactly the planned cells (the partial chunk)",
                    dn is not None and dn.cells_computed == plan.cells_compute and dn.cells_loaded_ssd == plan.cells_load_ssd,
                    f"{plan} {dn}")
        T.check(f"restore ({name}): executed, ends OK with every cell loaded or computed",
                end is None and dn is not None and dn.cells_loaded_cpu + dn.cells_loaded_ssd + dn.cells_computed == 3 * L,
                f"{end} {dn}")
    plan, _ = plan_of([(t + 1) % 300 for t in tokens], blocks, pb.POLICY_LOAD)
    T.check("restore of an uncached prefix: every cell computed, even with policy load",
            plan is not None and plan.cells_compute == 3 * L and plan.cells_load_cpu + plan.cells_load_ssd == 0, str(plan))
    plan, _ = plan_of(tokens, blocks, pb.POLICY_DEFAULT)
    T.check("restore without a policy: the configured default (optimal)", plan is not None and plan.policy == pb.POLICY_OPTIMAL, str(plan))

    code, body = d.http("/metrics")
    m, errs = parse_prometheus(body)
    T.check("/metrics: store counters (3 new chunks, 3 already there, 3 on SSD)",
            not errs and m.get(("cacheflow_store_saves_total", '{result="new"}')) == 3 and
            m.get(("cacheflow_store_saves_total", '{result="exists"}')) == 3 and
            m.get(("cacheflow_store_chunks", '{tier="ssd"}')) == 3, str(errs[:3]) + str({k: v for k, v in m.items() if "store" in k[0]}))
    tokens2 = [int(x) for x in rng.integers(0, 300, 16)]
    c.save(eng, tokens2, [1, 2])     # stays in the CPU tier: the shutdown flush must keep it
finally:
    rc = d.stop()
T.check("daemon exit 0", rc == 0, d.read_log()[-1000:])

# byte-exact: the stopped daemon's store holds exactly the engine's blocks, regathered
for name, toks, blks in (("prefix 1 (from SSD after evict)", tokens, blocks), ("prefix 2 (flushed at shutdown)", tokens2, [1, 2])):
    dump = os.path.join(STORE_TMP, "dump")
    p = subprocess.run([CTL, "dump", "--store", store_dir, "--tokens", ",".join(map(str, toks)), "--out", dump],
                       capture_output=True, text=True)
    got = open(dump, "rb").read() if p.returncode == 0 else b""
    want = expected_cells(files, geo, blks, len(toks))
    T.check(f"stored cells of {name} == the engine's blocks, byte for byte", p.returncode == 0 and got == want,
            f"rc={p.returncode} {p.stderr.strip()} got {len(got)} want {len(want)} bytes")
    os.unlink(dump) if os.path.exists(dump) else None

# a restart keeps the cache; another chunk size is refused
d2 = Daemon(conf=conf).start()
try:
    eng = d2.client.register(engine_request(d2.client.stats(), where=d2.tmp)[0]).engine_id
    lk = d2.client.lookup(eng, tokens)
    T.check("after a restart: prefix 1 still cached (SSD)", lk.cached_tokens == 40, str(lk))
    T.check("after a restart: prefix 2 (was CPU-only) kept by the shutdown flush", d2.client.lookup(eng, tokens2).cached_tokens == 16)
finally:
    d2.stop()
d3 = Daemon(conf=dict(conf, chunk_tokens="32"))
try:
    d3.start()
    T.check("another chunk size: refused at start", False, "started")
except RuntimeError as e:
    T.check("another chunk size: refused at start, naming what differs", "chunk" in str(e) and "exited 1" in str(e), str(e)[-400:])
d3.stop()
shutil.rmtree(STORE_TMP, ignore_errors=True)
sys.exit(T.summary())
