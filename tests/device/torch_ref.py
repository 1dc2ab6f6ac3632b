"""PyTorch baselines for tests/device/run.sh (runs on the device machine; never from make test).

Prints one `RESULT <name> <args...> <ms>` line per measurement (medians of CUDA-event-timed
repeats after warm-up), the same format the kernel benchmarks print:
  layer_torch T ms          transformers LlamaDecoderLayer (Llama-3-8B shape, bf16, SDPA), one
                            sequence of T tokens from position 0 (RoPE cos/sin computed outside)
  attn_torch chunk prefix ms  F.scaled_dot_product_attention of a chunk over prefix+chunk keys,
                            causal_lower_right (is_causal when prefix is 0), GQA expanded to 32 heads
"""
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def bench_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, num_hidden_layers=1, vocab_size=1024,
                      max_position_embeddings=131072, rope_theta=500000.0,
                      attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, layer_idx=0).to("cuda", torch.bfloat16).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, 0.0, 0.02)
    rope = LlamaRotaryEmbedding(cfg).to("cuda")
    for T in (1024, 4096, 16384, 32768):
        x = torch.randn(1, T, 4096, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(T, device="cuda").unsqueeze(0)
        cos, sin = rope(x, pos)
        with torch.no_grad():
            fn = lambda: layer(x, attention_mask=None, position_ids=pos,
                               position_embeddings=(cos, sin), use_cache=False)
            ms = median_ms(fn, 5 if T >= 16384 else 10)
        print(f"RESULT layer_torch {T} {ms:.4f}", flush=True)
        del x, cos, sin
        torch.cuda.empty_cache()


def bench_attn():
    from torch.nn.attention.bias import causal_lower_right

    H, KV, hd = 32, 8, 128
    for chunk in (256, 512, 2048):
        for prefix in (0, 4096, 16384, 32768):
            Tk = prefix + chunk
            q = torch.randn(1, H, chunk, hd, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(1, KV, Tk, hd, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(1, KV, Tk, hd, device="cuda", dtype=torch.bfloat16)
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            if prefix == 0:
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                mask = causal_lower_right(chunk, Tk)
                fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            with torch.no_grad():
                ms = median_ms(fn, 20)
            print(f"RESULT attn_torch {chunk} {prefix} {ms:.4f}", flush=True)


if __name__ == "__main__":
    what = sys.argv[1:] or ["layer", "attn"]
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    if "attn" in what:
        bench_attn()
    if "layer" in what:
        bench_layer()
