"""Borrowed weights for vLLM (issue 18): vLLM's parameter layout, and offering a loaded model's
weights to cacheflowd through shared memory (the CPU engine).

vLLM keeps a Llama-family model's attention projections fused (QKVParallelLinear:
`model.layers.N.self_attn.qkv_proj.weight` = the rank's q rows, then its k rows, then its v rows)
and the MLP's gate and up fused (MergedColumnParallelLinear: `mlp.gate_up_proj.weight` = gate
rows, then up rows); o_proj / down_proj are row-parallel (a rank holds its input columns); norms
whole. Its parameter names are what cacheflowd's checker (lib/model/cf_borrow) resolves, so
offering `model.named_parameters()` as they are is enough: no renaming.

How the connector reaches vLLM's model: LMCache's blending path needs the same and registers it
with VLLMModelTracker.register_model(ENGINE_NAME, model_runner.model) from a patched worker
(vLLM never calls it itself; LMCache issue #4131). Without patching vLLM, cacheflow_vllm takes
the model through `LLM.collective_rpc(cacheflow_vllm.offer_weights)`: vLLM calls the function in
every worker with the worker object, whose `model_runner.model` is the loaded model, and the
worker's connector instance (get_kv_transfer_group()) offers it.
"""
import os

import numpy as np


def fuse_hf_to_vllm(hf, n_heads, n_kv_heads, head_dim, tp_rank=0, tp_size=1):
    """The tensors a vLLM rank holds, from a transformers state dict `hf` ({name: array}):
    q/k/v fused into qkv_proj (each split by heads over tp_size), gate/up into gate_up_proj
    (split by rows), o_proj / down_proj split by columns, everything else whole. Returns
    {vllm name: array} for rank tp_rank."""
    out = {}
    nq, nkv = n_heads * head_dim, n_kv_heads * head_dim

    def rows(a, total):
        per = total // tp_size
        return a[tp_rank * per:(tp_rank + 1) * per]

    def cols(a):
        per = a.shape[1] // tp_size
        return a[:, tp_rank * per:(tp_rank + 1) * per]

    for name, a in hf.items():
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
        else:
            out[name] = a
        del base
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def share_parameters(named_params, path):
    """Move a torch model's float32 CPU parameters into one shared-memory file at `path`: each
    parameter's data becomes a view of the file (the engine computes on the shared pages, so the
    node holds one copy). Returns (WeightTensors to offer, names skipped with why)."""
    import torch  # the engine's; not needed for the rest of this module
    from cacheflow_client.weights import pack_shm

    arrays, skipped, params = {}, [], {}
    for name, p in named_params:
        if p.device.type != "cpu" or p.dtype != torch.float32:
            skipped.append((name, f"{p.device.type} {p.dtype}: the daemon's CPU backend borrows float32 CPU tensors"))
            continue
        arrays[name] = p.detach().contiguous().numpy()
        params[name] = p
    tensors, views = pack_shm(path, arrays)
    with torch.no_grad():
        for name, p in params.items():
            p.data = torch.from_numpy(views[name])  # the engine now reads the shared pages
    return tensors, skipped


def default_path(engine_name):
    return os.path.join("/dev/shm", f"cacheflow-weights-{os.getpid()}-{engine_name or 'engine'}")
