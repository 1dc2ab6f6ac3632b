"""vLLM KV tensors -> cacheflowd LayerLayouts, read from the tensors' strides.

Two buffer kinds:
- CPU tensors: rebound in place (Tensor.set_) onto a shared-memory file so the daemon maps the
  very memory vLLM's attention reads and writes: one copy at registration, none per restore.
- CUDA tensors: exported with CUDA IPC (allocation base handle + byte offset, device UUID).
  Written against torch's documented storage-sharing call; NOT run here (no GPU on this machine).

Element layouts handled (E = element size, all strides in bytes):
- vLLM CPU attention backend, one tensor per layer [num_blocks, num_kv_heads, block_size,
  2*head_size]: per (block, head) a K area stored dimension-major [head_size][block_size] then a
  V area stored token-major [block_size][head_size] (float32 on the "vec"/"vec16"/"neon" ISAs).
  The tensor's shape does not say which half is which or how K is ordered inside its area: that
  is the backend's convention, verified against the daemon's own KV by tests/engines.
  bf16 on AMX packs element pairs: not expressible as strides, refused.
- GPU backends, [2, num_blocks, block_size, num_kv_heads, head_size] (NHD) or
  [2, num_blocks, num_kv_heads, block_size, head_size] (HND, found from stride order) or
  blocks-first [num_blocks, 2, ...]: fully described by tensor.stride().
"""
import os

import torch

from cacheflow_client import layer_layout, pb

DTYPES = {torch.float32: pb.DTYPE_F32, torch.bfloat16: pb.DTYPE_BF16, torch.float16: pb.DTYPE_F16}


class LayoutError(ValueError):
    """The engine's KV tensors have a layout the daemon cannot address (named in the message)."""


def rebind_to_shm(tensors, shm_dir, tag):
    """Move every tensor's storage onto a shared-memory file, in place (Tensor.set_ keeps the
    Tensor objects that vLLM's attention layers hold). Tensors sharing one storage stay views of
    one file. Returns {storage data_ptr (new): (path, base data_ptr)} and rebinds `tensors`."""
    files = {}
    by_storage = {}
    for t in tensors:
        st = t.untyped_storage()
        by_storage.setdefault(st.data_ptr(), (st, []))[1].append(t)
    out = {}
    for i, (old_ptr, (st, ts)) in enumerate(sorted(by_storage.items())):
        nbytes = st.nbytes()
        path = os.path.join(shm_dir, f"cacheflow-vllm-{tag}-{i}")
        with open(path, "wb") as f:
            f.truncate(nbytes)
        big = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
        new = big.untyped_storage()
        # copy what vLLM already put there (zeros at start-up), once
        new.copy_(st)
        for t in ts:
            t.set_(new, t.storage_offset(), t.size(), t.stride())
        out[new.data_ptr()] = path
        files[path] = big  # keep the mapping alive
    return out, files


def cpu_attn_layout(layer, t, path, file_base_ptr, block_size, head_dim, num_kv_heads, isa=None):
    """LayerLayout of one vLLM CPU-attention tensor [nb, nh, bs, 2*hd] living in `path`."""
    if t.dtype not in DTYPES:
        raise LayoutError(f"layer {layer}: KV dtype {t.dtype} not supported")
    if t.dtype != torch.float32:
        raise LayoutError(f"layer {layer}: {t.dtype} KV on vLLM's CPU attention (ISA {isa or '?'}): only float32's "
                          f"layout is verified against the daemon (16-bit KV is packed in element pairs on AMX)")
    if isa == "amx":
        raise LayoutError(f"layer {layer}: CPU attention ISA amx packs KV pairs; not addressable by strides")
    if t.dim() != 4 or t.shape[1] != num_kv_heads or t.shape[2] != block_size or t.shape[3] != 2 * head_dim:
        raise LayoutError(f"layer {layer}: CPU KV tensor shape {tuple(t.shape)} is not "
                          f"[num_blocks, {num_kv_heads}, {block_size}, {2 * head_dim}]")
    E = t.element_size()
    s = t.stride()
    if s[3] != 1 or s[2] != 2 * head_dim:
        raise LayoutError(f"layer {layer}: CPU KV tensor strides {s}: the (block_size, 2*head_size) area "
                          f"of one head must be dense")
    k_off = t.data_ptr() - file_base_ptr
    v_off = k_off + block_size * head_dim * E
    k = (s[0] * E, E, s[1] * E, block_size * E)           # block, token, head, dim
    v = (s[0] * E, head_dim * E, s[1] * E, E)
    return layer_layout(layer, path, k_off, path, v_off, block_size, t.shape[0], DTYPES[t.dtype], num_kv_heads,
                        head_dim, k, v)


def split_kv_layout(layer, t, block_size, head_dim, num_kv_heads):
    """(k_offset_bytes, v_offset_bytes, strides, num_blocks) of a K/V-split tensor: one axis of size 2
    (K, V) and the block, token, head, dim axes found by size and stride. Used for GPU tensors."""
    E = t.element_size()
    shape, st = list(t.shape), list(t.stride())
    if t.dim() != 5:
        raise LayoutError(f"layer {layer}: KV tensor shape {tuple(shape)} is not 5-D (2, blocks, tokens, heads, dim)")
    # axis of K/V: size 2 and either first or second
    kv_axis = 0 if shape[0] == 2 else 1 if shape[1] == 2 else None
    if kv_axis is None:
        raise LayoutError(f"layer {layer}: KV tensor shape {tuple(shape)} has no K/V axis of size 2 first or second")
    blk_axis = 1 - kv_axis
    rest = [a for a in range(2, 5)]
    dim_axis = [a for a in rest if shape[a] == head_dim and st[a] == 1]
    if not dim_axis:
        raise LayoutError(f"layer {layer}: no dense head_dim axis of size {head_dim} in {tuple(shape)} / {tuple(st)}")
    dim_axis = dim_axis[-1]
    others = [a for a in rest if a != dim_axis]
    tok_axis = [a for a in others if shape[a] == block_size]
    head_axis = [a for a in others if shape[a] == num_kv_heads and a not in tok_axis[:1]]
    if not tok_axis or not head_axis:
        raise LayoutError(f"layer {layer}: cannot tell token and head axes in {tuple(shape)}")
    tok_axis, head_axis = tok_axis[0], head_axis[0]
    if tok_axis == head_axis:
        raise LayoutError(f"layer {layer}: block_size == num_kv_heads and ambiguous axes in {tuple(shape)}")
    strides = (st[blk_axis] * E, st[tok_axis] * E, st[head_axis] * E, st[dim_axis] * E)
    return 0, st[kv_axis] * E, strides, shape[blk_axis]


def cuda_layout(layer, t, block_size, head_dim, num_kv_heads):
    """LayerLayout of a CUDA KV tensor through CUDA IPC: the handle names the caching
    allocator's allocation, KvBuffer.offset locates the tensor inside it. NOT run here (no GPU)."""
    k_rel, v_rel, strides, nb = split_kv_layout(layer, t, block_size, head_dim, num_kv_heads)
    st = t.untyped_storage()
    # (device, handle, storage size, storage offset within the allocation, ref counter, ...)
    info = st._share_cuda_()
    handle, alloc_off = info[1], int(info[3])
    base = alloc_off + (t.data_ptr() - st.data_ptr())
    uuid = "GPU-" + str(torch.cuda.get_device_properties(t.device).uuid)
    ipc = pb.CudaIpcBuffer(ipc_handle=bytes(handle), gpu_uuid=uuid)
    lay = layer_layout(layer, "", base + k_rel, "", base + v_rel, block_size, nb, DTYPES[t.dtype], num_kv_heads,
                       head_dim, strides)
    lay.k.cuda_ipc.CopyFrom(ipc)
    lay.v.cuda_ipc.CopyFrom(ipc)
    return lay
