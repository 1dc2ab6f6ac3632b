"""A CPU "engine" process for borrow_weights.py (issue 18): it loads the checkpoint (safetensors,
numpy), lays its weights out as vLLM does (cacheflow_vllm.weights.fuse_hf_to_vllm: fused
qkv_proj / gate_up_proj) in a shared-memory file, registers its KV buffers, and:
  argv: ADDR MODEL_DIR WORK_DIR MODE [corrupt]
  MODE restore-only: restores TOKENS with policy recompute, writes the KV to WORK_DIR/kv-MODE.npy, exits;
  MODE offer: restores (before), offers the weights (the first event printed as JSON), restores
       again into other blocks (after), writes both KVs, prints "READY" and sleeps until killed
       (the test sends kill -9) or stdin closes (then it unregisters);
  MODE corrupt: offers with one element of layer 1's gate_up_proj changed and prints the refusal.
One line of JSON per event on stdout."""
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "lib", "client", "python"))
sys.path.insert(0, os.path.join(ROOT, os.environ.get("BUILD", "build"), "py"))
from cacheflow_client import CacheFlowError, Client, pb  # noqa: E402
from cacheflow_vllm.weights import fuse_hf_to_vllm  # noqa: E402

addr, model_dir, work, mode = sys.argv[1:5]
TOKENS = [(7 * i + 3) % 250 + 1 for i in range(200)]
BLOCK, NBLK = 16, 64


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = np.frombuffer(data[a:b], dtype=np.uint16 if v["dtype"] == "BF16" else np.float32)
        if v["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[k] = raw.reshape(v["shape"])
    return out


def say(**kw):
    print(json.dumps(kw), flush=True)


cfg = json.load(open(os.path.join(model_dir, "config.json")))
c = Client(addr, timeout=120)
st = c.stats()
kvpath = os.path.join(work, f"kv-{mode}-{os.getpid()}")
req, total = c.layout_request(kvpath, block_size=BLOCK, num_blocks=NBLK, dtype=pb.DTYPE_F32, name=f"borrow-{mode}")
eng = c.register(req).engine_id
kvmm = np.memmap(kvpath, dtype=np.float32, mode="r")
L, H, D = st.model_layers, st.model_kv_heads, st.model_head_dim
nb = (len(TOKENS) + BLOCK - 1) // BLOCK


def restore_kv(first_block):
    blocks = list(range(first_block, first_block + nb))
    ev = list(c.restore(eng, TOKENS, blocks, policy=pb.POLICY_RECOMPUTE))
    done = [e.done for e in ev if e.HasField("done")]
    kv = np.array(kvmm).reshape(L, 2, NBLK, BLOCK, H, D)[:, :, first_block:first_block + nb]
    return kv.reshape(L, 2, nb * BLOCK, H, D)[:, :, :len(TOKENS)].copy(), done[0].cells_computed if done else -1


before, cells = restore_kv(0)
np.save(os.path.join(work, f"kv-{mode}-before.npy"), before)
say(event="restored", when="before", cells_computed=cells)
if mode == "restore-only":
    c.unregister(eng)
    sys.exit(0)

hf = load_safetensors(os.path.join(model_dir, "model.safetensors"))
hf = {k: v.astype(np.float32) for k, v in hf.items()}
fused = fuse_hf_to_vllm(hf, cfg["num_attention_heads"], cfg["num_key_value_heads"],
                        cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
del hf
if mode == "corrupt":
    fused["model.layers.1.mlp.gate_up_proj.weight"][0, 0] += 0.5
from cacheflow_client.weights import pack_shm  # noqa: E402
wpath = f"/dev/shm/cf-borrow-test-{os.getpid()}.weights"
tensors, views = pack_shm(wpath, fused)
del fused
say(event="packed", path=wpath, tensors=len(tensors), bytes=os.path.getsize(wpath))
try:
    lease = c.offer_weights(eng, tensors, samples=256)
except CacheFlowError as e:
    say(event="refused", code=e.code.name, details=e.details)
    os.unlink(wpath)
    c.unregister(eng)
    sys.exit(0)
ev = lease.event
say(event="borrowed", borrowed=ev.borrowed, weights_checked=ev.weights_checked, tensors_used=ev.tensors_used,
    elements_checked=ev.elements_checked, bytes_borrowed=ev.bytes_borrowed, own_bytes_released=ev.own_bytes_released)
after, cells = restore_kv(nb)
np.save(os.path.join(work, f"kv-{mode}-after.npy"), after)
say(event="restored", when="after", cells_computed=cells, equal=bool(np.array_equal(before, after)))
say(event="READY")
sys.stdin.read()  # until the test closes stdin (or kills this process)
c.unregister(eng)
lease.ended.wait(60)
say(event="lease-ended", code=str(lease.code))
os.unlink(wpath)
