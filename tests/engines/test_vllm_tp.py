"""Tensor parallelism: a REAL vLLM engine with tensor_parallel_size=2 (CPU build, two worker
processes, gloo) and the CacheFlow connector against the REAL cacheflowd. Each rank registers
its shard (one of the model's two KV heads), saves its heads, and restores its heads; the daemon
stores whole cells. Prints `N passed, N failed`.

Checks: both shards registered as one tp_group; turn 1's saves from the two ranks assemble into
whole stored chunks; turn 2 restores through both ranks with greedy tokens identical to the same
engine recomputing; the whole cells assembled from the shards equal the daemon's own
computation of the same prefix within 1e-4 (restored into a standalone full-head engine of this
process: engines of different TP sizes share the store).
"""
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # TP on the CPU build uses the mp executor
# one NUMA node here: vLLM cannot place two CPU workers itself; rank r gets core r (mod cores)
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0|1" if (os.cpu_count() or 1) >= 2 else "0|0")
import harness as H  # noqa: E402

import numpy as np  # noqa: E402

CHUNK = 64


def main():
    t = H.Checks()
    check = t.check
    model = H.gen_model()
    d = H.start_daemon(model, policy="load")
    before = set(glob.glob("/dev/shm/cacheflow-vllm-*.engine"))
    llm = H.make_llm(model, connector={"addr": d.addr, "restore_timeout_s": 120}, max_len=2048,
                     tensor_parallel_size=2, distributed_executor_backend="mp")
    st = d.client.stats()
    check("two TP ranks registered with the daemon", st.engines == 2, f"engines {st.engines}")

    p1 = H.prompt(300, 21)
    o1 = H.generate(llm, [p1])[0]
    saved = ((len(p1) + len(o1) - 1) // CHUNK) * CHUNK
    # a standalone full-head engine of this process (the plain paged layout) for lookups and
    # for reading back what the store holds
    shm = os.path.join("/dev/shm", f"cfv-tp-probe-{os.getpid()}")
    req, total = d.client.layout_request(shm, block_size=H.BLOCK, num_blocks=64)
    probe = d.client.register(req).engine_id
    looked = d.client.lookup(probe, p1 + o1).cached_tokens
    check(f"turn 1: the two ranks' shard saves assembled into whole stored chunks ({looked} of {saved} tokens)",
          looked == saved, f"lookup {looked}")

    # the same TP=2 engine recomputing turn 2 (store emptied: a miss) gives the reference tokens
    p2 = p1 + o1 + H.prompt(29, 22)
    d.client.evict()
    llm.reset_prefix_cache()
    own = H.generate(llm, [p2])[0]
    hit = (((len(p2) - 1) // CHUNK) * CHUNK // H.BLOCK) * H.BLOCK
    # that run saved p2's chunks from both shards; restore them now
    r0 = H.counter(d, "cacheflow_restores_total")
    llm.reset_prefix_cache()
    got = H.generate(llm, [p2])[0]
    r1 = H.counter(d, "cacheflow_restores_total")
    check("turn 2: both ranks restored their heads through cacheflowd (2 restores)", r1 - r0 == 2,
          f"restores {r0} -> {r1}")
    check("turn 2: greedy tokens identical to the TP=2 engine recomputing", got == own, f"{got} vs {own}")

    # whole cells assembled from the shards vs the daemon's own computation of the prefix
    n = min(hit, 64 * H.BLOCK)
    blocks = list(range((n + H.BLOCK - 1) // H.BLOCK))
    import mmap
    lay = req.layers

    def read_probe():
        with open(shm, "r+b") as f:
            mm = mmap.mmap(f.fileno(), total)
            out = []
            for L in lay:
                def plane(off):
                    a = np.frombuffer(mm, dtype=np.float32, count=(L.block_stride // 4) * L.num_blocks,
                                      offset=off).reshape(L.num_blocks, L.block_size, L.num_kv_heads, L.head_dim)
                    return a[blocks].reshape(-1, L.num_kv_heads, L.head_dim)[:n].copy()
                out.append((plane(L.k.offset), plane(L.v.offset)))
            mm.close()
            return out

    from cacheflow_client import pb
    ev = list(d.client.restore(probe, p2[:n], blocks, policy=pb.POLICY_LOAD))
    done = [e.done for e in ev if e.WhichOneof("event") == "done"]
    loaded = read_probe()
    ev = list(d.client.restore(probe, p2[:n], blocks, policy=pb.POLICY_RECOMPUTE))
    computed = read_probe()
    ok = bool(done) and done[0].cells_loaded_cpu + done[0].cells_loaded_ssd == (n // CHUNK) * len(lay)
    worst = max(float(np.abs(a[i] - b[i]).max()) for a, b in zip(loaded, computed) for i in (0, 1))
    check(f"store: cells saved by the two shards, loaded whole into a TP=1 layout, equal the daemon's own "
          f"KV within 1e-4 (worst {worst:.1e})", ok and worst <= 1e-4, f"{done} worst {worst}")
    d.client.unregister(probe)
    os.unlink(shm)
    del llm
    d.stop()
    for p in set(glob.glob("/dev/shm/cacheflow-vllm-*.engine")) - before:
        try:
            os.unlink(p)
        except OSError:
            pass
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
