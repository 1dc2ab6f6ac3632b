"""Borrowed weights for vLLM (issue 18): vLLM's parameter layout, and offering a loaded model's
weights to cacheflowd through shared memory (the CPU engine).

vLLM keeps a Llama-family model's attention projections fused (QKVParallelLinear:
`model.layers.N.self_attn.qkv_proj.weight` = the rank's q rows, then its k rows, then its v rows)
and the MLP's gate and up fused (MergedColumnParallelLinear: `mlp.gate_up_proj.weight` = gate
rows, then up rows); o_proj / down_proj are row-parallel (a rank holds its input columns); norms
whole. Mixture-of-experts layers (FusedMoE: qwen3_moe, mixtral) keep the router whole
(`mlp.gate.weight` [E][H]) and every expert in two 3-D tensors: `mlp.experts.w13_weight`
[E][2I/tp][H] (each expert's gate rows, then its up rows: w1, w3) and `mlp.experts.w2_weight`
[E][H][I/tp] (shards hold columns); mixtral's module is `block_sparse_moe`. Its parameter names are what cacheflowd's checker (lib/model/cf_borrow) resolves, so
offering `model.named_parameters()` as they are is enough: no renaming.

How the connector reaches vLLM's model: LMCache's blending path needs the same and registers it
with VLLMModelTracker.register_model(ENGINE_NAME, model_runner.model) from a patched worker
(vLLM never calls it itself; LMCache issue #4131). Without patching vLLM, cacheflow_vllm takes
the model through `LLM.collective_rpc(cacheflow_vllm.offer_weights)`: vLLM calls the function in
every worker with the worker object, whose `model_runner.model` is the loaded model, and the
worker's connector instance (get_kv_transfer_group()) offers it.
"""
import json
import os
import struct

import numpy as np


def fuse_hf_to_vllm(hf, n_heads, n_kv_heads, head_dim, tp_rank=0, tp_size=1):
    """The tensors a vLLM rank holds, from a transformers state dict `hf` ({name: array}):
    q/k/v fused into qkv_proj (each split by heads over tp_size), gate/up into gate_up_proj
    (split by rows), o_proj / down_proj split by columns, the embedding and lm_head by vocabulary
    rows (VocabParallelEmbedding, ParallelLMHead; vocab divisible by tp_size), norms whole
    (replicated: replicated(name)); MoE experts (per expert, or transformers 5's fused
    gate_up_proj / down_proj) into FusedMoE's w13_weight / w2_weight (each expert's rows, resp.
    columns, split over tp_size), the router whole. Returns {vllm name: array} for rank tp_rank."""
    out = {}
    nq, nkv = n_heads * head_dim, n_kv_heads * head_dim

    def rows(a, total):
        per = total // tp_size
        return a[tp_rank * per:(tp_rank + 1) * per]

    def cols(a):
        per = a.shape[1] // tp_size
        return a[:, tp_rank * per:(tp_rank + 1) * per]

    experts = {}  # MoE: (module prefix) -> {expert: {"gate"|"up"|"down": array}}
    for name, a in hf.items():
        moe = _expert_part(name)
        if moe:
            pre, e, part = moe
            experts.setdefault(pre, {}).setdefault(e, {})[part] = a
            continue
        base = name.rsplit(".", 1)
        if name.endswith((".self_attn.k_proj.weight", ".self_attn.v_proj.weight", ".mlp.up_proj.weight",
                          ".self_attn.k_proj.bias", ".self_attn.v_proj.bias")):
            continue  # fused with their q / gate below
        if ".self_attn.q_proj." in name:
            pre, kind = name.split(".self_attn.q_proj.")
            parts = [rows(hf[f"{pre}.self_attn.{p}_proj.{kind}"], t) for p, t in (("q", nq), ("k", nkv), ("v", nkv))]
            out[f"{pre}.self_attn.qkv_proj.{kind}"] = np.concatenate(parts, axis=0)
        elif name.endswith(".mlp.gate_proj.weight"):
            pre = name[:-len(".mlp.gate_proj.weight")]
            g, u = hf[name], hf[f"{pre}.mlp.up_proj.weight"]
            out[f"{pre}.mlp.gate_up_proj.weight"] = np.concatenate([rows(g, g.shape[0]), rows(u, u.shape[0])], axis=0)
        elif name.endswith((".self_attn.o_proj.weight", ".mlp.down_proj.weight")):
            out[name] = cols(a)
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            out[name] = rows(a, a.shape[0])
        else:
            out[name] = a
        del base
    for pre, ex in experts.items():  # FusedMoE: w13 [E][2I/tp][H], w2 [E][H][I/tp]
        if "all" in ex:  # transformers 5 holds them fused already: [E][2I][H] (gate, up), [E][H][I]
            gu, dn = ex["all"]["gate_up"], ex["all"]["down"]
            i = gu.shape[1] // 2
            g, u = gu[:, :i], gu[:, i:]
        else:
            es = sorted(ex)
            g, u = np.stack([ex[e]["gate"] for e in es]), np.stack([ex[e]["up"] for e in es])
            dn = np.stack([ex[e]["down"] for e in es])
        per = g.shape[1] // tp_size  # a rank's rows of each expert's gate and of its up
        w13 = np.concatenate([g[:, tp_rank * per:(tp_rank + 1) * per], u[:, tp_rank * per:(tp_rank + 1) * per]], axis=1)
        per = dn.shape[2] // tp_size
        out[f"{pre}.experts.w13_weight"] = w13
        out[f"{pre}.experts.w2_weight"] = dn[:, :, tp_rank * per:(tp_rank + 1) * per]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _expert_part(name):
    """(module prefix, expert, part) of a transformers MoE expert tensor, else None: per expert
    `<pre>.experts.<e>.{gate,up,down}_proj.weight` (qwen3_moe) or `.{w1,w3,w2}.weight` (mixtral),
    or transformers 5's fused `<pre>.experts.gate_up_proj` / `.down_proj` (expert "all")."""
    if ".experts." not in name:
        return None
    pre, rest = name.split(".experts.", 1)
    rest = rest[:-len(".weight")] if rest.endswith(".weight") else rest
    if rest in ("gate_up_proj", "down_proj"):
        return pre, "all", {"gate_up_proj": "gate_up", "down_proj": "down"}[rest]
    e, _, kind = rest.partition(".")
    part = {"gate_proj": "gate", "w1": "gate", "up_proj": "up", "w3": "up", "down_proj": "down", "w2": "down"}.get(kind)
    return (pre, int(e), part) if part and e.isdigit() else None


def replicated(name):
    """Every rank holds the whole tensor (norms, a MoE router): offered once, as tp_rank 0 of 1."""
    return name.endswith(("norm.weight", ".gate.weight"))


def repacked(named_params):
    """Names of 2-D-declared linear parameters vLLM emptied after loading. vLLM's CPU GEMM dispatch
    (dispatch_cpu_unquantized_gemm(layer, remove_weight=True), vLLM 0.32) repacks every linear
    layer's weight for oneDNN / the sgl kernels and replaces layer.weight with an empty tensor: a
    CPU engine then holds no row-major weights to share. Empty list: every parameter is whole."""
    return [n for n, p in named_params if n.endswith(".weight") and p.numel() == 0]


def share_parameters(named_params, path):
    """Move a torch model's float32 CPU parameters into one shared-memory file at `path`: each
    parameter's data becomes a view of the file (the engine computes on the shared pages, so the
    node holds one copy). Returns (WeightTensors to offer, names skipped with why)."""
    import torch  # the engine's; not needed for the rest of this module
    from cacheflow_client.weights import pack_shm

    arrays, skipped, params = {}, [], {}
    for name, p in named_params:
        if p.device.type != "cpu" or p.dtype != torch.float32 or p.numel() == 0:
            skipped.append((name, f"{p.device.type} {p.dtype} {tuple(p.shape)}: the daemon's CPU backend borrows "
                                  "whole float32 CPU tensors"))
            continue
        arrays[name] = p.detach().contiguous().numpy()
        params[name] = p
    tensors, views = pack_shm(path, arrays)
    with torch.no_grad():
        for name, p in params.items():
            p.data = torch.from_numpy(views[name])  # the engine now reads the shared pages
    return tensors, skipped


def cuda_ipc_tensors(named_params, gpu_uuid):
    """WeightTensors for a GPU engine's bf16/f16/f32 CUDA parameters: each one's storage exported
    with CUDA IPC (legacy handles name an allocation's base: torch's storage._share_cuda_() gives
    the handle and the storage's offset in it), offset = that plus the tensor's own. Written for
    the daemon's cuda backend; not run on a GPU here."""
    import torch
    from cacheflow_client import pb
    dt = {torch.float32: pb.DTYPE_F32, torch.bfloat16: pb.DTYPE_BF16, torch.float16: pb.DTYPE_F16}
    out = []
    for name, p in named_params:
        if p.device.type != "cuda" or p.dtype not in dt or p.numel() == 0 or not p.is_contiguous():
            continue
        st = p.untyped_storage()
        shared = st._share_cuda_()  # (device, handle, storage size, storage offset in the allocation, ...)
        handle, st_off = shared[1], shared[3]
        out.append(pb.WeightTensor(name=name, shape=list(p.shape), dtype=dt[p.dtype],
                                   strides=[s * p.element_size() for s in p.stride()],
                                   cuda_ipc=pb.CudaIpcBuffer(ipc_handle=bytes(handle), gpu_uuid=gpu_uuid),
                                   offset=int(st_off) + p.storage_offset() * p.element_size()))
    return out


def read_safetensors(path):
    """{name: float32 array} of a single-file safetensors checkpoint (F32, BF16 or F16), with
    numpy alone: what a test engine that is not vLLM loads."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        if v["dtype"] == "BF16":
            raw = (np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raw = np.frombuffer(data[a:b], dtype={"F32": np.float32, "F16": np.float16}[v["dtype"]]).astype(np.float32)
        out[k] = raw.reshape(v["shape"])
    return out


def default_path(engine_name):
    return os.path.join("/dev/shm", f"cacheflow-weights-{os.getpid()}-{engine_name or 'engine'}")
