"""cacheflow_client against the real daemon: every public method, errors as CacheFlowError."""
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))  # tests/lib: the harness
from cfdaemon import Checks, Daemon  # noqa: E402
import grpc  # noqa: E402
import cacheflow_client  # noqa: E402
from cacheflow_client import CacheFlowError, Client, pb  # noqa: E402

T = Checks()
# kv_dtype = bf16: register_shm() without a dtype registers bf16 buffers (half the bytes);
# an explicit F32 layout is refused with FAILED_PRECONDITION naming both dtypes
d = Daemon(conf={"kv_dtype": "bf16"}).start()
try:
    with Client(d.addr, timeout=10) as c:
        T.check("bf16 daemon: stats().kv_dtype == DTYPE_BF16", c.stats().kv_dtype == pb.DTYPE_BF16)
        eng = c.register_shm(os.path.join(d.tmp, "b.kv"), block_size=8, num_blocks=32, name="py-bf16")
        T.check("bf16 daemon: register_shm() defaults to bf16 (file of 2-byte elements)",
                eng > 0 and os.path.getsize(os.path.join(d.tmp, "b.kv")) == 2 * 2 * 32 * 8 * 2 * 16 * 2)
        try:
            c.register_shm(os.path.join(d.tmp, "f.kv"), block_size=8, num_blocks=32, dtype=pb.DTYPE_F32)
            T.check("bf16 daemon: F32 engine refused", False, "registered")
        except CacheFlowError as e:
            T.check("bf16 daemon: F32 engine refused with FAILED_PRECONDITION naming both dtypes",
                    e.code == grpc.StatusCode.FAILED_PRECONDITION and "F32" in e.details and "BF16" in e.details, str(e))
finally:
    d.stop()
d = Daemon().start()
try:
    with Client(d.addr, timeout=10) as c:
        T.check("health() == SERVING", c.health() == "SERVING")
        st = c.stats()
        T.check("stats(): fingerprint of 16 bytes and model dir", len(st.model_fingerprint) == 16 and st.model_dir.endswith("public-llama-gqa"))
        eng = c.register_shm(os.path.join(d.tmp, "e.kv"), block_size=8, num_blocks=32, name="py")
        T.check("register_shm() -> id", eng > 0)
        T.check("file sized for the layout (2 layers x K,V x 32 blocks x 8 tok x 2 heads x 16 x f32)",
                os.path.getsize(os.path.join(d.tmp, "e.kv")) == 2 * 2 * 32 * 8 * 2 * 16 * 4)
        T.check("config() returns every setting", c.config()["policy"] == "optimal" and "cpu_tier_bytes" in c.config())
        T.check("stats().kv_dtype: auto on the CPU backend is F32, config() says auto",
                st.kv_dtype == pb.DTYPE_F32 and c.config("kv_dtype") == {"kv_dtype": "auto"})
        T.check("lookup() of an unseen prefix", c.lookup(eng, [1, 2, 3]).cached_tokens == 0)
        C = int(c.config("chunk_tokens")["chunk_tokens"])
        if C <= 256:  # a saved chunk (32 blocks of 8 tokens hold 256), then tokens not stored: runs say which is where
            toks = [1 + i % 250 for i in range(2 * C)]  # ids below the fixture's vocab (300)
            c.save(eng, toks[:C], list(range((C + 7) // 8)))
            r = c.lookup(eng, toks)
            T.check("lookup(): runs [(cpu, C), (none, C)], stored_tokens C (issue 15 fields)",
                    r.cached_tokens == C and r.stored_tokens == C and
                    [(x.tier, x.tokens) for x in r.runs] == [(pb.TIER_CPU, C), (pb.TIER_UNSPECIFIED, C)],
                    str(r))
        try:
            c.lookup(eng + 1, [1, 2, 3])
            T.check("lookup() error", False, "no error")
        except CacheFlowError as e:
            T.check("lookup() raises CacheFlowError with code and details", e.code == grpc.StatusCode.NOT_FOUND and "not registered" in e.details, str(e))
        try:
            list(c.restore(eng, list(range(9)), [0]))
            T.check("restore() error", False, "no error")
        except CacheFlowError as e:
            T.check("restore() streams and raises on its final status", e.code == grpc.StatusCode.INVALID_ARGUMENT and "need 2 blocks" in e.details, str(e))
        # one channel, many threads
        errs = []

        def worker():
            try:
                for _ in range(20):
                    assert c.health() == "SERVING"
                    c.stats()
            except Exception as ex:  # noqa: BLE001
                errs.append(ex)

        ths = [threading.Thread(target=worker) for _ in range(8)]
        [t.start() for t in ths]
        [t.join() for t in ths]
        T.check("8 threads share one Client", not errs, str(errs[:2]))
        c.unregister(eng)
        T.check("unregister()", c.stats().engines == 0)
        try:
            c.unregister(eng)
            T.check("unregister twice", False)
        except CacheFlowError as e:
            T.check("unregister twice -> NOT_FOUND", e.code == grpc.StatusCode.NOT_FOUND)
        T.check("package exports pb enums", cacheflow_client.pb.POLICY_OPTIMAL == 6 and pb.TIER_SSD == 2)
finally:
    rc = d.stop()
T.check("daemon exit 0", rc == 0)

# TCP, only when configured: gRPC and the HTTP side on 127.0.0.1 ports
import socket  # noqa: E402
import urllib.request  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


gport, hport = free_port(), free_port()
d = Daemon(conf={"tcp_listen": f"127.0.0.1:{gport}", "metrics_listen": f"127.0.0.1:{hport}"}).start()
try:
    with Client(f"127.0.0.1:{gport}", timeout=10) as tc:
        T.check("gRPC over tcp_listen: SERVING", tc.health() == "SERVING")
    T.check("unix socket still served next to TCP", d.client.health() == "SERVING")
    body = urllib.request.urlopen(f"http://127.0.0.1:{hport}/healthz", timeout=5).read()
    T.check("/healthz over metrics_listen host:port", body == b"ok\n", repr(body))
finally:
    rc = d.stop()
T.check("daemon (TCP) exit 0", rc == 0)
sys.exit(T.summary())
