"""Turn the RESULT/STEP lines of tests/device/run.sh into the markdown table (results.md)."""
import sys
from collections import defaultdict

res = defaultdict(dict)
steps = []
for line in open(sys.argv[1]):
    f = line.split()
    if not f:
        continue
    if f[0] == "STEP":
        steps.append(line.strip()[5:])
        continue
    if f[0] != "RESULT":
        continue
    name, args = f[1], f[2:]
    if name in ("layer_ours", "layer_torch"):
        res[name][int(args[0])] = float(args[1])
    elif name in ("attn_ours", "attn_torch", "attn_nw8"):
        res[name][(int(args[0]), int(args[1]))] = float(args[2])
    elif name == "load_contig":
        res[name]["ms"] = float(args[1])
        res[name]["bytes"] = int(args[0])
    elif name == "load_paged":
        res[name][int(args[0])] = (float(args[1]), float(args[2]),
                                   float(args[3]) if len(args) > 3 else None)
    elif name in ("overlap", "overlap_fullgrid"):
        res["overlap"][name] = tuple(map(float, args))

out = []
p = out.append
p("## CacheFlow CUDA backend on the device (ratios measured in the same run)\n")
p("### Checks\n")
p("| step | result |")
p("|---|---|")
for s in steps:
    name, rest = (s.split(" ", 1) + [""])[:2]
    p(f"| {name} | {rest} |")
lo, lt = res["layer_ours"], res["layer_torch"]
if lo:
    p("\n### (a) Llama-3-8B-shaped layer prefill (bf16; torch = transformers LlamaDecoderLayer, SDPA)\n")
    p("| tokens | torch ms | ours ms | torch/ours (goal >= 1.0) |")
    p("|---|---|---|---|")
    for T in sorted(lo):
        t = lt.get(T)
        p(f"| {T} | {t:.3f} | {lo[T]:.3f} | {t / lo[T]:.3f} |" if t else f"| {T} | - | {lo[T]:.3f} | - |")
ao, at = res["attn_ours"], res["attn_torch"]
if ao:
    p("\n### (b) Chunk-over-prefix attention, 32 heads / 8 KV heads / head_dim 128 (torch = SDPA, causal_lower_right)\n")
    a8 = res["attn_nw8"]
    p("| chunk | prefix | torch ms | ours ms | torch/ours | ours TFLOP/s | 8-warp variant ms |")
    p("|---|---|---|---|---|---|---|")
    for (c, pr) in sorted(ao):
        ms = ao[(c, pr)]
        fl = 4.0 * 128 * 32 * (c * pr + c * (c + 1) / 2) / ms / 1e9
        t = at.get((c, pr))
        v8 = f"{a8[(c, pr)]:.3f}" if (c, pr) in a8 else "-"
        p(f"| {c} | {pr} | {t:.3f} | {ms:.3f} | {t / ms:.3f} | {fl:.0f} | {v8} |" if t else
          f"| {c} | {pr} | - | {ms:.3f} | - | {fl:.0f} | {v8} |")
lc, lp = res["load_contig"], res["load_paged"]
if lp and lc:
    base, nb = lc["ms"], lc["bytes"]
    p(f"\n### (c) Load 1 GiB from pinned host memory into paged blocks (baseline: one contiguous 1 GiB cudaMemcpy, {base:.2f} ms = {nb / base / 1e6:.1f} GB/s)\n")
    p("| block | zero-copy kernel GB/s | contiguous/kernel (goal >= 0.9) | same, 64 CTAs | cudaMemcpyAsync per block GB/s | contiguous/per-block |")
    p("|---|---|---|---|---|---|")
    for b in sorted(lp):
        k, m, k64 = lp[b]
        s64 = f"{base / k64:.3f}" if k64 else "-"
        p(f"| {b // 1024} KiB | {nb / k / 1e6:.1f} | {base / k:.3f} | {s64} | {nb / m / 1e6:.1f} | {base / m:.3f} |")
if res["overlap"]:
    p("\n### (d) Compute ∥ load overlap (8192-token layer prefill ∥ zero-copy load into 32 KiB paged blocks)\n")
    p("| load kernel grid | compute ms | load ms | both ms | both / longer alone (goal <= 1.05) |")
    p("|---|---|---|---|---|")
    for key, what in (("overlap", "64 CTAs"), ("overlap_fullgrid", "full (1056 CTAs)")):
        if key in res["overlap"]:
            c, l, b = res["overlap"][key]
            p(f"| {what} | {c:.2f} | {l:.2f} | {b:.2f} | {b / max(c, l):.3f} |")
print("\n".join(out))
