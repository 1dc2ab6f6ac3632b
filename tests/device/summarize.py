"""Turn the RESULT/STEP lines of tests/device/run.sh into the markdown table (results.md)."""
import sys
from collections import defaultdict

res = defaultdict(dict)
steps = []
for line in open(sys.argv[1]):
    if "RESULT " in line and not line.startswith("RESULT "):
        line = line[line.index("RESULT "):]  # a RESULT printed after other text on its line
    f = line.split()
    if not f:
        continue
    if f[0] == "STEP":
        steps.append(line.strip()[5:])
        continue
    if f[0] != "RESULT":
        continue
    name, args = f[1], f[2:]
    if name in ("layer_ours", "layer_torch", "layer_wgmma") or name.startswith("layer_variant"):
        res[name][int(args[0])] = float(args[1])
    elif name in ("attn_ours", "attn_torch", "attn_mma16", "attn_mma32", "attn_bc32", "attn_wgmma",
                  "attn_wgmma_tma"):
        res[name][(int(args[0]), int(args[1]))] = float(args[2])
    elif name == "load_contig":
        res[name]["ms"] = float(args[1])
        res[name]["bytes"] = int(args[0])
    elif name in ("load_staged", "load_batched"):
        res[name][int(args[0])] = float(args[1])
    elif name == "load_paged":
        res[name][int(args[0])] = (float(args[1]), float(args[2]),
                                   float(args[3]) if len(args) > 3 else None)
    elif name == "overlap_ctas":
        res["overlap"][int(args[0])] = tuple(map(float, args[1:]))
    elif name == "load_ctas":
        res["load_ctas"][int(args[0])] = float(args[1])
    # lib/gpu (tests/kernels/kt_gpupath.c --bench)
    elif name == "gpuload_baseline":
        res["gpuload_base"]["ms"] = float(args[0])
    elif name == "gpuload":
        res["gpuload"][(int(args[1]), args[0])] = (float(args[2]), float(args[3]))
    elif name == "gpuoverlap":
        res["gpuoverlap"][int(args[0])] = tuple(map(float, args[1:]))
    elif name == "gpussd":
        res["gpussd"]["v"] = (float(args[0]), float(args[1]))
    # lib/exec's GPU executor (tests/kernels/kt_gpuexec.c --bench; cf-gpuengine end to end)
    # MoE expert GEMMs, grouped vs per-expert (tests/kernels/kt_backend.cu --bench)
    elif name == "moe_gemm":
        res["moe_gemm"][len(res["moe_gemm"])] = dict(zip(args[0::2], args[1::2]))
    elif name.startswith("gpuexec_") or name.startswith("e2e_"):
        res[name.split("_", 1)[0]][name.split("_", 1)[1]] = dict(a.split("=", 1) for a in args if "=" in a)

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
    vs = [("layer_variant5", "mma16"), ("layer_variant6", "mma32"), ("layer_variant4", "mma32-bc32")]
    p("| tokens | torch ms | ours ms | torch/ours (goal >= 1.0) | " + " | ".join(f"ours, {n} attention ms" for _, n in vs) + " |")
    p("|---|---|---|---|" + "---|" * len(vs))
    for T in sorted(lo):
        t = lt.get(T)
        v = " | ".join(f"{res[k][T]:.3f}" if T in res[k] else "-" for k, _ in vs)
        p(f"| {T} | {t:.3f} | {lo[T]:.3f} | {t / lo[T]:.3f} | {v} |" if t else f"| {T} | - | {lo[T]:.3f} | - | {v} |")
    lw = res["layer_wgmma"]
    if lw:
        p("\n(a') The same layer with the wgmma attention kernel (CF_ATTN_IMPL=wgmma; UNVERIFIED kernel: see the kt_attn / kt_backend-wgmma steps)\n")
        p("| tokens | torch ms | mma layer ms | wgmma layer ms | torch/wgmma (goal >= 1.0) | mma/wgmma |")
        p("|---|---|---|---|---|---|")
        for T in sorted(lw):
            t, o = lt.get(T), lo.get(T)
            f = lambda x, y: f"{x / y:.3f}" if x and y else "-"
            p(f"| {T} | {t or 0:.3f} | {o or 0:.3f} | {lw[T]:.3f} | {f(t, lw[T])} | {f(o, lw[T])} |")
ao, at = res["attn_ours"], res["attn_torch"]
if ao:
    p("\n### (b) Chunk-over-prefix attention, 32 heads / 8 KV heads / head_dim 128 (torch = SDPA, causal_lower_right)\n")
    a16, a32, ab = res["attn_mma16"], res["attn_mma32"], res["attn_bc32"]
    p("| chunk | prefix | torch ms | ours ms | torch/ours | ours TFLOP/s | mma16 ms | mma32 ms | mma32-bc32 ms |")
    p("|---|---|---|---|---|---|---|---|---|")
    for (c, pr) in sorted(ao):
        ms = ao[(c, pr)]
        fl = 4.0 * 128 * 32 * (c * pr + c * (c + 1) / 2) / ms / 1e9
        t = at.get((c, pr))
        v = " | ".join(f"{d[(c, pr)]:.3f}" if (c, pr) in d else "-" for d in (a16, a32, ab))
        p(f"| {c} | {pr} | {t:.3f} | {ms:.3f} | {t / ms:.3f} | {fl:.0f} | {v} |" if t else
          f"| {c} | {pr} | - | {ms:.3f} | - | {fl:.0f} | {v} |")
    aw, awt = res["attn_wgmma"], res["attn_wgmma_tma"]
    if aw:
        p("\n(b') The wgmma attention kernels on the same shapes (cp.async and TMA loads; UNVERIFIED: see the kt_attn step)\n")
        p("| chunk | prefix | torch ms | mma ms | wgmma ms | torch/wgmma | mma/wgmma | wgmma TFLOP/s | wgmma-tma ms | torch/wgmma-tma |")
        p("|---|---|---|---|---|---|---|---|---|---|")
        for (c, pr) in sorted(aw):
            ms, t, o, mt = aw[(c, pr)], at.get((c, pr)), ao.get((c, pr)), awt.get((c, pr))
            fl = 4.0 * 128 * 32 * (c * pr + c * (c + 1) / 2) / ms / 1e9
            f = lambda x, y: f"{x / y:.3f}" if x and y else "-"
            p(f"| {c} | {pr} | {t or 0:.3f} | {o or 0:.3f} | {ms:.3f} | {f(t, ms)} | {f(o, ms)} | {fl:.0f} | "
              f"{mt or 0:.3f} | {f(t, mt)} |")
lc, lp = res["load_contig"], res["load_paged"]
if lp and lc:
    base, nb = lc["ms"], lc["bytes"]
    p(f"\n### (c) Load 1 GiB from pinned host memory into paged blocks (baseline: one contiguous 1 GiB cudaMemcpy, {base:.2f} ms = {nb / base / 1e6:.1f} GB/s)\n")
    st, bt = res["load_staged"], res["load_batched"]
    p("| block | zero-copy kernel GB/s | contiguous/kernel (goal >= 0.9) | same, 64 CTAs | copy engine + scatter (staged ring) | cudaMemcpyBatchAsync | cudaMemcpyAsync per block GB/s | contiguous/per-block |")
    p("|---|---|---|---|---|---|---|---|")
    for b in sorted(lp):
        k, m, k64 = lp[b]
        s64 = f"{base / k64:.3f}" if k64 else "-"
        sst = f"{nb / st[b] / 1e6:.1f} GB/s ({base / st[b]:.3f})" if b in st else "-"
        sbt = f"{nb / bt[b] / 1e6:.1f} GB/s ({base / bt[b]:.3f})" if b in bt else "-"
        p(f"| {b // 1024} KiB | {nb / k / 1e6:.1f} | {base / k:.3f} | {s64} | {sst} | {sbt} | {nb / m / 1e6:.1f} | {base / m:.3f} |")
if res["load_ctas"] and lc:
    p("\n32 KiB blocks, zero-copy kernel by grid size: " + ", ".join(
        f"{k or 'full'} CTAs {lc['bytes'] / v / 1e6:.1f} GB/s ({lc['ms'] / v:.3f})"
        for k, v in sorted(res["load_ctas"].items(), key=lambda kv: kv[0] or 1 << 30)))
if res["overlap"]:
    p("\n### (d) Compute ∥ load overlap (8192-token layer prefill ∥ zero-copy load into 32 KiB paged blocks)\n")
    p("| load path | compute ms | load ms | both ms | both / longer alone (goal <= 1.05) |")
    p("|---|---|---|---|---|")
    for key in sorted(res["overlap"], key=lambda k: (k < 0, k or 1 << 30)):
        c, l, b = res["overlap"][key]
        what = {-1: "copy engine + scatter (staged ring, 132 CTAs)", -2: "cudaMemcpyBatchAsync (DMA only)",
                -3: "copy engine + scatter (staged ring, 16 CTAs)", 0: "zero-copy, full grid",
                -4: "reference: contiguous cudaMemcpy, no paging",
                -5: "DMA into whole-load staging ∥ compute, then scatter on the compute stream"}.get(
                    key, f"zero-copy, {key} CTAs")
        p(f"| {what} | {c:.2f} | {l:.2f} | {b:.2f} | {b / max(c, l):.3f} |")
if res["gpuload"]:
    b = res["gpuload_base"].get("ms")
    p(f"\n### (e) lib/gpu loader: 1 GiB of 1 MiB cells from pinned memory into paged blocks (baseline: one contiguous 1 GiB pinned cudaMemcpy, {b:.2f} ms = {(1 << 30) / b / 1e6:.1f} GB/s)\n")
    modes = ["staged", "zerocopy", "arena"]
    p("| block | " + " | ".join(f"{m} GB/s (x contiguous, goal >= 0.9)" for m in modes) + " |")
    p("|---|" + "---|" * len(modes))
    for kib in sorted({k for k, _ in res["gpuload"]}):
        cells = []
        for m in modes:
            v = res["gpuload"].get((kib, m))
            cells.append(f"{(1 << 30) / v[0] / 1e6:.1f} ({v[1] / v[0]:.3f})" if v else "-")
        p(f"| {kib} KiB | " + " | ".join(cells) + " |")
if res["gpuoverlap"]:
    names = {0: "staged ring (copy engine + high-priority scatter)", 1: "zero-copy kernel, 32 CTAs",
             2: "arena: copy engine during compute, scatter on the compute stream after it",
             3: "reference: one contiguous cudaMemcpy, no paging"}
    p("\n### (f) lib/gpu loader: compute ∥ load (8192-token Llama-3-8B-shaped layer ∥ loads into 32 KiB blocks)\n")
    p("| load path | compute ms | load ms | both ms | both / longer alone (goal <= 1.05) |")
    p("|---|---|---|---|---|")
    for k in sorted(res["gpuoverlap"]):
        c, l, b = res["gpuoverlap"][k]
        p(f"| {names.get(k, k)} | {c:.2f} | {l:.2f} | {b:.2f} | {b / max(c, l):.3f} |")
if res["gpussd"]:
    m, g = res["gpussd"]["v"]
    p(f"\n### (g) SSD tier -> staging ring -> sink, 256 MiB of 1 MiB cells\n")
    p("| memcpy sink ms | GPU sink (H2D + scatter) ms | GPU / memcpy throughput |")
    p("|---|---|---|")
    p(f"| {m:.1f} | {g:.1f} | {m / g:.3f} |")
if res["gpuexec"]:
    rows = {k: v for k, v in res["gpuexec"].items() if not k.startswith("vs_")}
    p("\n### (h) lib/exec GPU executor: restore of a long prefix on 4 Llama-3-8B-shaped layers (pinned host cells)\n")
    p("| policy | tokens | executed ms | predicted ms | bound ms | executed / predicted | executed / bound | vs load-only | vs recompute-only | cells loaded / computed |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        vs = res["gpuexec"].get("vs_" + k, {})
        p(f"| {k} | {v.get('tokens')} | {v.get('executed_ms')} | {v.get('predicted_ms')} | {v.get('bound_ms')} | "
          f"{v.get('exec/pred')} | {v.get('exec/bound')} | {vs.get('vs_load_only', '-')} | {vs.get('vs_recompute_only', '-')} | "
          f"{v.get('loaded')} / {v.get('computed')} |")
if res["e2e"]:
    p("\n### (i) cacheflowd gpu_executor = on, GPU engine over CUDA IPC: Save then Restore per policy\n")
    p("| policy | tokens | restore ms (client) | cells exact (loaded) | close (recomputed) | bad |")
    p("|---|---|---|---|---|---|")
    for k, v in res["e2e"].items():
        p(f"| {k} | {v.get('tokens')} | {v.get('ms')} | {v.get('exact')} | {v.get('close')} | {v.get('bad')} |")
if res["moe_gemm"]:
    p("\n### (j) MoE expert GEMMs of a Qwen3-30B-A3B layer, 4096 tokens x top-8 (cublasGemmGroupedBatchedEx vs one cublasGemmEx per expert)\n")
    p("| run | grouped ms | per-expert ms | grouped / per-expert (< 1 is better) | path (3: both grouped) |")
    p("|---|---|---|---|---|")
    for i, v in res["moe_gemm"].items():
        p(f"| {i} | {v.get('grouped_ms')} | {v.get('loop_ms')} | {v.get('ratio')} | {v.get('path')} |")

print("\n".join(out))
