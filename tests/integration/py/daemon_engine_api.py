"""The daemon API real engines need, against the real cacheflowd (CPU backend, f32), checked
against the KV transformers computed for the fixture (kv.safetensors):

- vLLM's CPU attention layout (one [blocks][heads][block_size][2*head_dim] tensor per layer,
  K dimension-major, V token-major) registers through per-plane strides and restores in place:
  loaded cells bit-exact, computed ones within 1e-4 of transformers;
- Restore of [k, n) into an engine already holding [0, k) (k neither block- nor chunk-aligned):
  the engine's own rows below k keep their bytes, rows from k are restored;
- two TP shards (one KV head each): restores fill each shard's heads; shard saves are stored
  only once both heads were saved, then a whole-head engine restores them bit-exact;
- Save(durable=True), and a plain Save followed by Admin.Flush, survive kill -9; without an SSD
  tier both are FAILED_PRECONDITION;
- layouts the daemon cannot address get INVALID_ARGUMENT naming the stride.
"""
import json
import mmap
import os
import signal
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
from cfdaemon import MODEL, Checks, Daemon  # noqa: E402
import grpc  # noqa: E402
from cacheflow_client import CacheFlowError, Client, layer_layout, pb, register_request  # noqa: E402

T = Checks()
E = 4  # f32
C = 32  # chunk_tokens of the daemons below
BS = 8  # engine block size


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack_from("<Q", data, 0)[0]
    hdr = json.loads(data[8:8 + n])
    out = {}
    for name, meta in hdr.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = (meta["dtype"], meta["shape"], data[8 + n + a:8 + n + b])
    return out


kvf = read_safetensors(os.path.join(MODEL, "kv.safetensors"))
TOK = list(struct.unpack(f"<{kvf['tokens'][1][0]}i", kvf["tokens"][2]))
L = sum(1 for k in kvf if k.startswith("layers.") and k.endswith(".k"))
_, (NT, H, HD), _ = kvf["layers.0.k"]
# REF[kv][l]: raw bytes [T][H][HD] f32 (transformers' KV)
REF = [[kvf[f"layers.{l}.{p}"][2] for l in range(L)] for p in ("k", "v")]


def ref_bytes(kv, l, t, h):
    o = ((t * H) + h) * HD * E
    return REF[kv][l][o:o + HD * E]


def floats(b):
    return struct.unpack(f"<{len(b) // 4}f", b)


def flip_low_bits(b):
    """Every f32's lowest mantissa bit flipped: the engine's 'own' KV, told apart bit for bit."""
    u = list(struct.unpack(f"<{len(b) // 4}I", b))
    return struct.pack(f"<{len(u)}I", *[x ^ 1 for x in u])


class Engine:
    """A CPU engine's KV buffer in a file, with the element addressing of its layout. kind:
    'vllm-cpu' ([blocks][heads][bs][2*hd] per layer, K dim-major) or 'nhd' ([2][blocks][bs]
    [heads][hd] per layer). heads = the heads it holds (a TP shard: fewer), head0 = first."""

    def __init__(self, path, kind, nb, heads=None, head0=0):
        self.path, self.kind, self.nb = path, kind, nb
        self.heads = heads if heads is not None else H
        self.head0 = head0
        nh = self.heads
        if kind == "vllm-cpu":
            blk = nh * BS * 2 * HD * E
            self.ks = (blk, E, BS * 2 * HD * E, BS * E)
            self.vs = (blk, HD * E, BS * 2 * HD * E, E)
            self.layer_bytes = nb * blk
            self.voff = BS * HD * E
        else:
            blk = BS * nh * HD * E
            self.ks = self.vs = (blk, nh * HD * E, HD * E, E)
            self.layer_bytes = 2 * nb * blk
            self.voff = nb * blk
        with open(path, "wb") as f:
            f.truncate(L * self.layer_bytes)
        self.f = open(path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), L * self.layer_bytes)

    def layouts(self, dtype=pb.DTYPE_F32):
        return [layer_layout(l, self.path, l * self.layer_bytes, self.path, l * self.layer_bytes + self.voff, BS, self.nb,
                             dtype, self.heads, HD, self.ks, self.vs) for l in range(L)]

    def addr(self, kv, l, b, t, h, d):
        s = self.vs if kv else self.ks
        return l * self.layer_bytes + (self.voff if kv else 0) + b * s[0] + t * s[1] + h * s[2] + d * s[3]

    def get(self, kv, l, blocks, t, h):
        """Raw bytes of token t's head h (local) vector."""
        b, s = blocks[t // BS], t % BS
        return b"".join(self.m[self.addr(kv, l, b, s, h, d):self.addr(kv, l, b, s, h, d) + E] for d in range(HD))

    def put(self, kv, l, blocks, t, h, raw):
        b, s = blocks[t // BS], t % BS
        for d in range(HD):
            a = self.addr(kv, l, b, s, h, d)
            self.m[a:a + E] = raw[d * E:(d + 1) * E]

    def fill(self, byte):
        self.m[:] = bytes([byte]) * len(self.m)

    def write_ref(self, blocks, t0, t1, mark=False):
        for l in range(L):
            for kv in (0, 1):
                for t in range(t0, t1):
                    for h in range(self.heads):
                        r = ref_bytes(kv, l, t, self.head0 + h)
                        self.put(kv, l, blocks, t, h, flip_low_bits(r) if mark else r)

    def check(self, blocks, n, exact_upto, present=0, what=""):
        """Rows < present: marked (the engine's own, untouched); [present, exact_upto): the
        stored bytes exactly; [exact_upto, n): within 1e-4 of transformers (max err / max ref)."""
        bad, worst = [], 0.0
        for l in range(L):
            for kv in (0, 1):
                mx = max(abs(x) for x in floats(REF[kv][l]))
                for t in range(n):
                    for h in range(self.heads):
                        got, ref = self.get(kv, l, blocks, t, h), ref_bytes(kv, l, t, self.head0 + h)
                        if t < present:
                            ok = got == flip_low_bits(ref)
                        elif t < exact_upto:
                            ok = got == ref
                        else:
                            err = max(abs(a - b) for a, b in zip(floats(got), floats(ref))) / mx
                            worst = max(worst, err)
                            ok = err <= 1e-4
                        if not ok and len(bad) < 3:
                            bad.append(f"layer {l} {'V' if kv else 'K'} token {t} head {h}")
        return T.check(f"{what}: rows <{present} untouched, <{exact_upto} exact, rest within 1e-4 "
                       f"(worst {worst:.1e})", not bad, "; ".join(bad))

    def close(self):
        self.m.close()
        self.f.close()


def restore(c, eng, toks, blocks, policy, present=0):
    plan, done = None, None
    for ev in c.restore(eng, toks, blocks, policy=policy, present_tokens=present):
        if ev.HasField("plan"):
            plan = ev.plan
        if ev.HasField("done"):
            done = ev.done
    return plan, done


def blocks_for(n, start, step=1):
    nb = (n + BS - 1) // BS
    return [(start + i * step) % 64 for i in range(nb)]


conf = {"chunk_tokens": str(C), "cpu_tier_bytes": "64M", "ssd_tier_bytes": "64M"}

# ---- 1. TP shard saves (fresh store): stored only when both heads were saved
d = Daemon(conf=conf).start()
try:
    c = d.client
    fp = c.stats().model_fingerprint
    N = 4 * C  # 128 tokens: four whole chunks
    sh = [Engine(os.path.join(d.tmp, f"shard{s}.kv"), "nhd", 64, heads=1, head0=s) for s in range(2)]
    sid = [c.register(register_request(fp, sh[s].layouts(), f"tp{s}", kv_head_start=s, kv_head_count=1,
                                       tp_group=77)).engine_id for s in range(2)]
    T.check("two TP shards (one KV head each) register", all(sid))
    sb = [blocks_for(N, 3 + s, 5) for s in range(2)]
    for s in range(2):
        sh[s].write_ref(sb[s], 0, N)
    r0 = c.save(sid[0], TOK[:N], sb[0])
    T.check("shard 0's save alone: pending, nothing stored", r0.pending_tokens == N and r0.saved_tokens == 0,
            str(r0))
    T.check("after shard 0 only: Lookup finds nothing", c.lookup(sid[1], TOK[:N]).cached_tokens == 0)
    r1 = c.save(sid[1], TOK[:N], sb[1], durable=True)
    T.check("shard 1's save completes the cells: stored, durable", r1.saved_tokens == N and r1.pending_tokens == 0
            and r1.durable, str(r1))
    T.check("Lookup (any engine) now finds the prefix", c.lookup(sid[0], TOK[:N]).cached_tokens == N)
    vl = Engine(os.path.join(d.tmp, "vllm0.kv"), "vllm-cpu", 64)
    ve = c.register(register_request(fp, vl.layouts(), "vllm-cpu")).engine_id
    vb = blocks_for(N, 9, 7)
    vl.fill(0xFF)
    plan, done = restore(c, ve, TOK[:N], vb, pb.POLICY_LOAD)
    T.check("whole-head (vLLM CPU layout) engine loads the assembled cells", done is not None
            and done.cells_loaded_cpu + done.cells_loaded_ssd == 4 * L and done.cells_computed == 0, str(done))
    vl.check(vb, N, N, what="assembled shard cells restored")
    for e in sh + [vl]:
        e.close()
finally:
    rc = d.stop()
T.check("daemon 1 exit 0", rc == 0)

# ---- 2. the stored prefix, the vLLM CPU layout, [k, n) restores, shard restores, durability
d = Daemon(conf=conf).start()
try:
    c = d.client
    fp = c.stats().model_fingerprint
    N = 150  # four whole chunks and a 22-token tail (computed)
    std = Engine(os.path.join(d.tmp, "std.kv"), "nhd", 64)
    se = c.register(register_request(fp, std.layouts(), "std")).engine_id
    sbk = blocks_for(N, 0)
    std.write_ref(sbk, 0, N)
    r = c.save(se, TOK[:N], sbk, durable=True)
    T.check("durable save: SaveResponse.durable true", r.durable and r.saved_tokens == N, str(r))

    vl = Engine(os.path.join(d.tmp, "vllm.kv"), "vllm-cpu", 64)
    ve = c.register(register_request(fp, vl.layouts(), "vllm-cpu")).engine_id
    T.check("vLLM CPU f32 layout (K dimension-major, V token-major) registers", ve > 0)
    vb = blocks_for(N, 11, 3)
    for pol, name in ((pb.POLICY_LOAD, "load"), (pb.POLICY_RECOMPUTE, "recompute"), (pb.POLICY_OPTIMAL, "optimal")):
        vl.fill(0xFF)
        plan, done = restore(c, ve, TOK[:N], vb, pol)
        exact = 4 * C if pol == pb.POLICY_LOAD else 0
        if pol == pb.POLICY_OPTIMAL:  # whatever it loads is exact, all of it within 1e-4
            exact = 0
        vl.check(vb, N, exact, what=f"vLLM layout, {name}")
    # [k, n): the engine holds [0, k) (marked), k = 45: block 5 slot 5, chunk 1
    for pol, name in ((pb.POLICY_LOAD, "load"), (pb.POLICY_RECOMPUTE, "recompute"), (pb.POLICY_OPTIMAL, "optimal")):
        for k in (45, 64, 1):
            vl.fill(0xFF)
            vl.write_ref(vb, 0, k, mark=True)
            plan, done = restore(c, ve, TOK[:N], vb, pol, present=k)
            T.check(f"[{k}, n) {name}: PlanSummary echoes present_tokens, {k // C} present chunk(s)",
                    plan is not None and plan.present_tokens == k and plan.present_chunks == k // C, str(plan))
            T.check(f"[{k}, n) {name}: no cell of a present chunk loaded or computed",
                    done.cells_loaded_cpu + done.cells_loaded_ssd + done.cells_computed == (5 - k // C) * L, str(done))
            vl.check(vb, N, 4 * C if pol == pb.POLICY_LOAD else k, present=k, what=f"vLLM layout [{k}, n) {name}")
    # TP shards restore their heads (also [k, n))
    sh = [Engine(os.path.join(d.tmp, f"rshard{s}.kv"), "vllm-cpu", 64, heads=1, head0=s) for s in range(2)]
    sid = [c.register(register_request(fp, sh[s].layouts(), f"tp{s}", kv_head_start=s, kv_head_count=1,
                                       tp_group=5)).engine_id for s in range(2)]
    for k in (0, 45):
        for s in range(2):
            sh[s].fill(0xFF)
            sh[s].write_ref(vb, 0, k, mark=True)
            plan, done = restore(c, sid[s], TOK[:N], vb, pb.POLICY_LOAD, present=k)
            T.check(f"shard {s} [{k}, n): no present chunks (its blocks lack the other head)",
                    plan.present_chunks == 0, str(plan))
            sh[s].check(vb, N, 4 * C, present=k, what=f"TP shard {s} (head {s}) [{k}, n)")
    # bad requests
    T.status("present_tokens = n -> INVALID_ARGUMENT", lambda: restore(c, ve, TOK[:N], vb, pb.POLICY_LOAD, present=N),
             grpc.StatusCode.INVALID_ARGUMENT, "present_tokens")
    bad = vl.layouts()
    for lay in bad:
        lay.dim_stride = 6
    T.status("dim_stride not a multiple of the element size -> INVALID_ARGUMENT naming it",
             lambda: c.register(register_request(fp, bad)), grpc.StatusCode.INVALID_ARGUMENT, "dim_stride 6")
    bad = vl.layouts()
    for lay in bad:
        lay.v_strides.head_stride = 8  # V heads overlap V's dims
    T.status("overlapping V strides -> INVALID_ARGUMENT naming the stride",
             lambda: c.register(register_request(fp, bad)), grpc.StatusCode.INVALID_ARGUMENT, "V head_stride 8 overlaps")
    T.status("a shard without tp_group -> INVALID_ARGUMENT",
             lambda: c.register(register_request(fp, sh[0].layouts(), kv_head_start=0, kv_head_count=1)),
             grpc.StatusCode.INVALID_ARGUMENT, "tp_group")
    T.status("kv heads past the model's -> INVALID_ARGUMENT",
             lambda: c.register(register_request(fp, sh[0].layouts(), kv_head_start=H, kv_head_count=1, tp_group=1)),
             grpc.StatusCode.INVALID_ARGUMENT, "kv_head_start")
    T.check("the daemon still serves after the refusals", c.health() == "SERVING")
    # Admin.Flush: a plain save, then a flush, makes it durable too
    tok2 = [TOK[0] ^ 1] + TOK[1:64]
    r = c.save(se, tok2, sbk[:8])
    T.check("plain save: not durable", r.saved_tokens == 64 and not r.durable, str(r))
    f = c.flush()
    T.check("Admin.Flush: OK, the chunks are on SSD", f.ssd_chunks >= 5 + 2, str(f))
    for e in sh + [vl, std]:
        e.close()
    # durability: kill -9, restart on the same store: the durable prefix is there
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.start()
    c = d.client
    std = Engine(os.path.join(d.tmp, "std2.kv"), "nhd", 64)
    se = c.register(register_request(fp, std.layouts(), "std")).engine_id
    T.check("after kill -9: the durable save is still stored", c.lookup(se, TOK[:N]).cached_tokens >= 4 * C,
            str(c.lookup(se, TOK[:N])))
    T.check("after kill -9: the flushed save is still stored", c.lookup(se, tok2).cached_tokens == 64,
            str(c.lookup(se, tok2)))
    std.close()
finally:
    rc = d.stop()
T.check("daemon 2 exit 0", rc == 0)

# ---- 3. no SSD tier: a durable save is refused, nothing saved
d = Daemon(conf=dict(conf, ssd_tier_bytes="0")).start()
try:
    c = d.client
    fp = c.stats().model_fingerprint
    std = Engine(os.path.join(d.tmp, "std.kv"), "nhd", 64)
    se = c.register(register_request(fp, std.layouts(), "std")).engine_id
    b = blocks_for(64, 0)
    std.write_ref(b, 0, 64)
    T.status("durable save without an SSD tier -> FAILED_PRECONDITION",
             lambda: c.save(se, TOK[:64], b, durable=True), grpc.StatusCode.FAILED_PRECONDITION, "SSD tier")
    T.check("... and nothing was saved", c.lookup(se, TOK[:64]).cached_tokens == 0)
    T.status("Admin.Flush without an SSD tier -> FAILED_PRECONDITION", lambda: c.flush(),
             grpc.StatusCode.FAILED_PRECONDITION, "SSD tier")
    r = c.save(se, TOK[:64], b)
    T.check("a plain save still works (durable false)", r.saved_tokens == 64 and not r.durable, str(r))
    std.close()
finally:
    rc = d.stop()
T.check("daemon 3 exit 0", rc == 0)
sys.exit(T.summary())
