"""cacheflow_vllm.layout on real torch tensors (no engine): the byte addresses the connector
registers for every (K/V, block, token, head, dim) equal the tensors' own element addresses, for
vLLM's GPU layouts (NHD, HND, blocks-first; built on the CPU here, the same strides as on a GPU)
and the CPU attention layout; what no stride describes is refused. Prints `N passed, N failed`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

import torch  # noqa: E402

from cacheflow_vllm import layout as L  # noqa: E402

NB, BS, NH, HD = 5, 32, 2, 64


def addr(base, off, strides, b, t, h, d):
    sb, st, sh, sd = strides
    return base + off + b * sb + t * st + h * sh + d * sd


def main():
    c = H.Checks()
    idx = [(b, t, h, d) for b in (0, 3, NB - 1) for t in (0, 7, BS - 1) for h in range(NH) for d in (0, 5, HD - 1)]

    def split_case(name, shape, pick):
        x = torch.zeros(shape, dtype=torch.float32)
        k_off, v_off, strides, nb = L.split_kv_layout(0, x, BS, HD, NH)
        base = x.data_ptr()
        ok = nb == NB and all(
            addr(base, k_off, strides, *i) == pick(x, 0, *i).data_ptr() and
            addr(base, v_off, strides, *i) == pick(x, 1, *i).data_ptr() for i in idx)
        c.check(f"{name} {tuple(shape)}: every K and V element at the registered address", ok,
                f"{k_off} {v_off} {strides} {nb}")

    split_case("NHD [2, blocks, tokens, heads, dim]", (2, NB, BS, NH, HD), lambda x, kv, b, t, h, d: x[kv, b, t, h, d])
    split_case("HND [2, blocks, heads, tokens, dim]", (2, NB, NH, BS, HD), lambda x, kv, b, t, h, d: x[kv, b, h, t, d])
    split_case("blocks-first [blocks, 2, tokens, heads, dim]", (NB, 2, BS, NH, HD),
               lambda x, kv, b, t, h, d: x[b, kv, t, h, d])
    # a permuted view: strides, not shapes, decide (vLLM's HND stride order on an NHD shape)
    y = torch.zeros((2, NB, NH, BS, HD)).permute(0, 1, 3, 2, 4)
    k_off, v_off, strides, nb = L.split_kv_layout(0, y, BS, HD, NH)
    c.check("NHD-shaped view of HND memory: addresses from strides",
            all(addr(y.data_ptr(), k_off, strides, *i) == y[0, i[0], i[1], i[2], i[3]].data_ptr() for i in idx),
            str(strides))

    # CPU attention: [blocks, heads, tokens, 2*dim]; K dimension-major, V token-major per (block, head)
    t = torch.zeros((NB, NH, BS, 2 * HD), dtype=torch.float32)
    lay = L.cpu_attn_layout(3, t, "/dev/shm/x", t.data_ptr(), BS, HD, NH)
    flat = t.view(NB, NH, BS * 2 * HD)
    ks = (lay.block_stride, lay.token_stride, lay.head_stride, lay.dim_stride)
    vs = (lay.v_strides.block_stride, lay.v_strides.token_stride, lay.v_strides.head_stride, lay.v_strides.dim_stride)
    ok = all(addr(t.data_ptr(), lay.k.offset, ks, b, tt, h, d) == flat[b, h, d * BS + tt].data_ptr() and
             addr(t.data_ptr(), lay.v.offset, vs, b, tt, h, d) == flat[b, h, BS * HD + tt * HD + d].data_ptr()
             for b, tt, h, d in idx)
    c.check("CPU attention float32: K (dim-major) and V (token-major) addresses", ok and lay.layer == 3, f"{ks} {vs}")
    for what, fn in (("bf16 KV", lambda: L.cpu_attn_layout(0, t.to(torch.bfloat16), "", 0, BS, HD, NH)),
                     ("the amx ISA", lambda: L.cpu_attn_layout(0, t, "", t.data_ptr(), BS, HD, NH, isa="amx")),
                     ("a wrong head count", lambda: L.cpu_attn_layout(0, t, "", t.data_ptr(), BS, HD, NH + 1))):
        try:
            fn()
            c.check(f"CPU attention: {what} refused", False, "accepted")
        except L.LayoutError as e:
            c.check(f"CPU attention: {what} refused ({e})", True)
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
