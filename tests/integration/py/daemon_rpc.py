"""cacheflowd over its unix socket: health, Register/Unregister, every kind of bad input,
unknown methods, the Restore batcher, Unregister racing a Restore. The daemon must keep
serving after each bad request and change nothing."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))  # tests/lib: the harness
from cfdaemon import CacheFlowError, Checks, Daemon, pb, restore_in_thread, wait_for  # noqa: E402
import grpc  # noqa: E402

SC = grpc.StatusCode
T = Checks()
d = Daemon(conf={"max_message_bytes": "64k", "max_request_tokens": "1000", "batch_window_us": "300000"}).start()
c = d.client
try:
    T.check("health SERVING", c.health() == "SERVING")
    T.check("unix socket mode 0660", os.stat(d.sock).st_mode & 0o777 == 0o660, oct(os.stat(d.sock).st_mode))
    T.check("health of cacheflow.v1.CacheFlow SERVING", c.health("cacheflow.v1.CacheFlow") == "SERVING")
    T.status("health of an unknown service -> NOT_FOUND", lambda: c.health("no.such.Service"), SC.NOT_FOUND, "unknown service")

    st = c.stats()
    T.check("stats: model geometry of the fixture", (st.model_layers, st.model_kv_heads, st.model_head_dim, st.model_vocab) == (2, 2, 16, 300),
            str(st))
    shm = os.path.join(d.tmp, "engine.kv")
    req, size = c.layout_request(shm, block_size=16, num_blocks=64, name="test-engine", stats=st)
    eng = c.register(req).engine_id
    T.check("register -> engine id", eng != 0)
    T.check("stats: 1 engine", c.stats().engines == 1)

    def engines():
        return c.stats().engines

    def still_serving(what):
        T.check(f"still serving after {what}", c.health() == "SERVING" and engines() == 1, f"engines={engines()}")

    # ---- malformed protobuf bytes, raw
    for method in ("/cacheflow.v1.CacheFlow/RegisterEngine", "/cacheflow.v1.CacheFlow/Lookup", "/cacheflow.v1.CacheFlow/Restore",
                   "/cacheflow.v1.Admin/GetConfig"):
        T.status(f"malformed bytes to {method} -> INVALID_ARGUMENT", lambda: c.call_raw(method, b"\xff\xff\xff\xff\xff"),
                 SC.INVALID_ARGUMENT, "malformed request")
    T.status("truncated length-delimited field -> INVALID_ARGUMENT", lambda: c.call_raw("/cacheflow.v1.CacheFlow/Lookup", b"\x12\x05\x01"),
             SC.INVALID_ARGUMENT, "malformed")
    # ---- wrong field types on the wire
    T.status("engine_id sent as a string -> INVALID_ARGUMENT", lambda: c.call_raw("/cacheflow.v1.CacheFlow/Lookup", b"\x0a\x03abc"),
             SC.INVALID_ARGUMENT, "not a valid cacheflow.v1.LookupRequest")
    T.status("token_ids sent as fixed32 -> INVALID_ARGUMENT", lambda: c.call_raw("/cacheflow.v1.CacheFlow/Lookup", b"\x08\x01\x15\x01\x00\x00\x00"),
             SC.INVALID_ARGUMENT, "malformed")
    still_serving("malformed bytes")

    # ---- sizes
    T.status("message over max_message_bytes -> RESOURCE_EXHAUSTED", lambda: c.lookup(eng, [299] * 40000), SC.RESOURCE_EXHAUSTED)
    T.status("tokens over max_request_tokens -> INVALID_ARGUMENT", lambda: c.lookup(eng, [1] * 1001), SC.INVALID_ARGUMENT, "max_request_tokens")
    T.status("empty token_ids -> INVALID_ARGUMENT", lambda: c.lookup(eng, []), SC.INVALID_ARGUMENT, "empty")
    T.status("token id >= vocab -> INVALID_ARGUMENT", lambda: c.lookup(eng, [1, 2, 300]), SC.INVALID_ARGUMENT, "token_ids[2] = 300 out of range")
    still_serving("oversized requests")

    # ---- engine ids, block ids
    T.status("lookup unknown engine -> NOT_FOUND", lambda: c.lookup(eng + 12345, [1, 2]), SC.NOT_FOUND, "not registered")
    T.status("lookup engine 0 -> NOT_FOUND", lambda: c.lookup(0, [1, 2]), SC.NOT_FOUND)
    T.status("save: block id out of range -> INVALID_ARGUMENT", lambda: c.save(eng, list(range(20)), [3, 64]), SC.INVALID_ARGUMENT,
             "block_ids[1] = 64 out of range 0 .. 63")
    T.status("save: wrong block count -> INVALID_ARGUMENT", lambda: c.save(eng, list(range(20)), [3]), SC.INVALID_ARGUMENT, "need 2 blocks")
    T.status("restore: block id out of range -> INVALID_ARGUMENT", lambda: c.restore(eng, list(range(16)), [99]), SC.INVALID_ARGUMENT, "out of range")
    T.status("restore: unknown policy -> INVALID_ARGUMENT", lambda: c.restore(eng, list(range(16)), [0], policy=42), SC.INVALID_ARGUMENT, "policy")
    T.status("restore: priority out of range -> INVALID_ARGUMENT", lambda: c.restore(eng, list(range(16)), [0], priority=1000), SC.INVALID_ARGUMENT, "priority")
    T.status("restore: unknown engine -> NOT_FOUND", lambda: c.restore(eng + 1, list(range(16)), [0]), SC.NOT_FOUND)
    T.status("unregister unknown engine -> NOT_FOUND", lambda: c.unregister(eng + 999), SC.NOT_FOUND)
    still_serving("bad ids")

    # ---- registration: fingerprint and layout
    def bad_register(name, mutate, code, contains):
        r, _ = c.layout_request(shm, block_size=16, num_blocks=64, stats=st)
        mutate(r)
        T.status(name, lambda: c.register(r), code, contains)

    bad_register("fingerprint mismatch -> INVALID_ARGUMENT", lambda r: setattr(r, "model_fingerprint", bytes(16)), SC.INVALID_ARGUMENT, "does not match")
    bad_register("fingerprint of 15 bytes -> INVALID_ARGUMENT", lambda r: setattr(r, "model_fingerprint", bytes(15)), SC.INVALID_ARGUMENT, "16 bytes")
    bad_register("kv heads differ from the model -> INVALID_ARGUMENT", lambda r: [setattr(L, "num_kv_heads", 1) for L in r.layers], SC.INVALID_ARGUMENT, "the model has")
    bad_register("one layer missing -> INVALID_ARGUMENT", lambda r: r.layers.pop(), SC.INVALID_ARGUMENT, "the model has 2")
    bad_register("layer declared twice -> INVALID_ARGUMENT", lambda r: setattr(r.layers[1], "layer", 0), SC.INVALID_ARGUMENT, "twice")
    bad_register("dtype unspecified -> INVALID_ARGUMENT", lambda r: [setattr(L, "dtype", 0) for L in r.layers], SC.INVALID_ARGUMENT, "dtype")
    bad_register("overlapping strides -> INVALID_ARGUMENT", lambda r: [setattr(L, "token_stride", 8) for L in r.layers], SC.INVALID_ARGUMENT, "overlaps")
    bad_register("num_blocks over max_blocks -> INVALID_ARGUMENT", lambda r: [setattr(L, "num_blocks", 1 << 30) for L in r.layers], SC.INVALID_ARGUMENT, "max_blocks")
    bad_register("layout past the end of the shm file -> INVALID_ARGUMENT", lambda r: setattr(r.layers[1].v, "offset", size), SC.INVALID_ARGUMENT, "the layout needs")
    bad_register("missing shm file -> INVALID_ARGUMENT", lambda r: setattr(r.layers[0].k, "shm_path", d.tmp + "/nope"), SC.INVALID_ARGUMENT, "No such file")
    bad_register("relative shm path -> INVALID_ARGUMENT", lambda r: setattr(r.layers[0].k, "shm_path", "engine.kv"), SC.INVALID_ARGUMENT, "absolute")
    bad_register("directory as shm file -> INVALID_ARGUMENT", lambda r: setattr(r.layers[0].k, "shm_path", d.tmp), SC.INVALID_ARGUMENT, "not a regular file")
    bad_register("buffer without location -> INVALID_ARGUMENT", lambda r: r.layers[0].v.ClearField("shm_path"), SC.INVALID_ARGUMENT, "neither")
    bad_register("CUDA IPC handle of 10 bytes -> INVALID_ARGUMENT",
                 lambda r: r.layers[0].k.cuda_ipc.CopyFrom(pb.CudaIpcBuffer(ipc_handle=b"x" * 10, gpu_uuid="GPU-1")), SC.INVALID_ARGUMENT, "64 bytes")
    bad_register("CUDA IPC buffer with a malformed GPU UUID -> INVALID_ARGUMENT",
                 lambda r: r.layers[0].k.cuda_ipc.CopyFrom(pb.CudaIpcBuffer(ipc_handle=bytes(range(64)), gpu_uuid="GPU-1234")),
                 SC.INVALID_ARGUMENT, "expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    # well-formed CUDA IPC buffers on a daemon with gpu_executor = off (the default): refused, naming the key
    bad_register("CUDA IPC buffers with gpu_executor off -> FAILED_PRECONDITION",
                 lambda r: [b.cuda_ipc.CopyFrom(pb.CudaIpcBuffer(ipc_handle=bytes(range(64)), gpu_uuid="GPU-12345678-1234-1234-1234-123456789abc"))
                            for L in r.layers for b in (L.k, L.v)], SC.FAILED_PRECONDITION, "gpu_executor = off")
    still_serving("bad registrations (nothing registered)")

    # ---- mutated messages: bit flips, truncations, random bytes to every method. Each call must
    # end with a deliberate status (never INTERNAL/UNKNOWN) and the daemon must keep serving.
    import random
    rnd = random.Random(1234)
    seeds = {
        "/cacheflow.v1.CacheFlow/RegisterEngine": c.layout_request(shm, stats=st)[0].SerializeToString(),
        "/cacheflow.v1.CacheFlow/Lookup": pb.LookupRequest(engine_id=eng, token_ids=list(range(40))).SerializeToString(),
        "/cacheflow.v1.CacheFlow/Save": pb.SaveRequest(engine_id=eng, token_ids=list(range(20)), block_ids=[1, 2]).SerializeToString(),
        "/cacheflow.v1.CacheFlow/Unregister": pb.UnregisterRequest(engine_id=eng + 1000000).SerializeToString(),  # needs >= 7 bit flips to hit eng
        "/cacheflow.v1.Admin/GetConfig": pb.GetConfigRequest(name="policy").SerializeToString(),
        "/grpc.health.v1.Health/Check": b"",
    }
    allowed = {SC.OK, SC.INVALID_ARGUMENT, SC.NOT_FOUND, SC.RESOURCE_EXHAUSTED}
    bad_status, registered = [], []
    for method, seed in seeds.items():
        for i in range(150):
            m = bytearray(seed)
            kind = i % 3
            if kind == 0 and m:
                for _ in range(rnd.randint(1, 4)):
                    m[rnd.randrange(len(m))] ^= 1 << rnd.randrange(8)
            elif kind == 1 and m:
                m = m[:rnd.randrange(len(m))]
            else:
                m = bytearray(rnd.randbytes(rnd.randint(1, 64)))
            try:
                reply = c.call_raw(method, bytes(m))
                if method.endswith("RegisterEngine"):
                    registered.append(pb.RegisterEngineResponse.FromString(reply).engine_id)
            except CacheFlowError as e:
                if e.code not in allowed:
                    bad_status.append((method, e.code.name, e.details))
    T.check("900 mutated requests: only deliberate statuses", not bad_status, str(bad_status[:3]))
    for x in registered:  # a mutation that is still a valid registration is fine: undo it
        c.unregister(x)
    still_serving("900 mutated requests")

    # ---- unknown methods
    T.status("unknown method -> UNIMPLEMENTED", lambda: c.call_raw("/cacheflow.v1.CacheFlow/Frobnicate", b""), SC.UNIMPLEMENTED, "unknown method")
    T.status("unknown service -> UNIMPLEMENTED", lambda: c.call_raw("/nope.v9.Nope/Call", b"\x08\x01"), SC.UNIMPLEMENTED)

    # ---- admin
    T.check("GetConfig policy = optimal", c.config("policy") == {"policy": "optimal"}, str(c.config("policy")))
    T.check("GetConfig lists every setting", len(c.config()) >= 18, str(len(c.config())))
    T.status("GetConfig unknown name -> NOT_FOUND", lambda: c.config("nope"), SC.NOT_FOUND)
    T.status("Evict unknown tier -> INVALID_ARGUMENT", lambda: c.evict(tier=7), SC.INVALID_ARGUMENT, "tier 7")

    # ---- the parts lib/store and lib/exec provide: a clear FAILED_PRECONDITION until wired
    lk = c.lookup(eng, [1, 2, 3])
    T.check("lookup of an unseen prefix: 0 cached, both tiers reported", lk.cached_tokens == 0 and len(lk.per_tier) == 2, str(lk))
    t0 = time.time()
    evs = list(c.restore(eng, list(range(16)), [5]))
    T.check("restore of an unsaved prefix recomputes it: plan, layers, done",
            evs[0].WhichOneof("event") == "plan" and evs[-1].WhichOneof("event") == "done"
            and evs[-1].done.cells_computed > 0 and evs[-1].done.cells_loaded_cpu == 0, str(evs[-1]))
    T.check("restore waited for the batch window (0.3 s)", time.time() - t0 >= 0.25, f"{time.time() - t0:.3f} s")

    # ---- Unregister racing a batched Restore: the longest batch window (1 s, SIGHUP) holds the
    # restore in the batcher; the unregister goes once GetStats shows it there
    d.write_conf(batch_window_us="1000000")
    d.signal(signal.SIGHUP)
    wait_for(lambda: c.config("batch_window_us")["batch_window_us"] == "1000000")
    th, res = restore_in_thread(d.addr, eng, list(range(16)), [7])
    T.check("the restore waits in the batcher (GetStats: 1 in flight)", wait_for(lambda: c.stats().restores_in_flight >= 1))
    c.unregister(eng)
    th.join(30)
    T.check("restore raced by unregister -> ABORTED naming the unregister", res.get("code") == SC.ABORTED and "unregistered" in res.get("details", ""), str(res))
    T.check("engine gone after unregister", engines() == 0)
    T.status("unregister twice -> NOT_FOUND", lambda: c.unregister(eng), SC.NOT_FOUND)
    T.check("health SERVING at the end", c.health() == "SERVING")
    T.check("daemon process alive", d.proc.poll() is None)
finally:
    rc = d.stop()
T.check("exit status 0 after SIGTERM", rc == 0, f"rc={rc}\n{d.read_log()[-2000:]}")
sys.exit(T.summary())
