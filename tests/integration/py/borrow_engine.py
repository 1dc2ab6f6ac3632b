"""A CPU "engine" process for borrow_weights.py (issue 18): it loads the checkpoint (safetensors,
numpy), lays its weights out as vLLM does (cacheflow_vllm.weights.fuse_hf_to_vllm: fused
qkv_proj / gate_up_proj) in a shared-memory file, registers its KV buffers, and:
  argv: ADDR MODEL_DIR WORK_DIR MODE [corrupt]
  MODE restore-only: restores TOKENS with policy recompute, writes the KV to WORK_DIR/kv-MODE.npy, exits;
  MODE offer: restores (before), offers the weights (the first event printed as JSON), restores
       again into other blocks (after), writes both KVs, prints "READY" and sleeps until killed
       (the test sends kill -9) or stdin closes (then it unregisters);
  MODE corrupt: offers with one element of layer 1's gate_up_proj (MoE: of expert 5 in its
       experts.w13_weight) changed and prints the refusal;
  MODE tp2: offers two tensor-parallel ranks' shards (vLLM's TP=2 layout, norms once) and prints the
       answer: every shard is checked, then refused as not computable by the CPU backend.
One line of JSON per event on stdout."""
import json
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "lib", "client", "python"))
sys.path.insert(0, os.path.join(ROOT, os.environ.get("BUILD", "build"), "py"))
from cacheflow_client import CacheFlowError, Client, pb  # noqa: E402
from cacheflow_vllm.weights import fuse_hf_to_vllm, read_safetensors, replicated  # noqa: E402

addr, model_dir, work, mode = sys.argv[1:5]
TOKENS = [(7 * i + 3) % 250 + 1 for i in range(200)]
BLOCK, NBLK = 16, 64


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

hf = read_safetensors(os.path.join(model_dir, "model.safetensors"))
geom = (cfg["num_attention_heads"], cfg["num_key_value_heads"],
        cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
from cacheflow_client.weights import pack_shm  # noqa: E402
wpath = f"/dev/shm/cf-borrow-test-{os.getpid()}.weights"
paths = [wpath]
if mode == "tp2":  # rank 0 and rank 1 shards, and the replicated norms once
    tensors = []
    for r in range(2):
        fr = fuse_hf_to_vllm(hf, *geom, tp_rank=r, tp_size=2)
        paths.append(f"{wpath}.r{r}")
        tensors += pack_shm(paths[-1], {k: v for k, v in fr.items() if not replicated(k)}, tp_rank=r, tp_size=2)[0]
    tensors += pack_shm(wpath, {k: v for k, v in fr.items() if replicated(k)})[0]
else:
    fused = fuse_hf_to_vllm(hf, *geom)
    if mode == "corrupt" and "model.layers.1.mlp.gate_up_proj.weight" in fused:
        fused["model.layers.1.mlp.gate_up_proj.weight"][0, 0] += 0.5
    elif mode == "corrupt":  # MoE (FusedMoE): expert 5's up rows, one element
        fused["model.layers.1.mlp.experts.w13_weight"][5, cfg["moe_intermediate_size"], 0] += 0.5  # always sampled
    tensors, views = pack_shm(wpath, fused)
    del fused
del hf
say(event="packed", path=wpath, tensors=len(tensors), bytes=sum(os.path.getsize(p) for p in paths))
try:
    lease = c.offer_weights(eng, tensors, samples=256)
except CacheFlowError as e:
    say(event="refused", code=e.code.name, details=e.details)
    for p in paths:
        os.unlink(p)
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
