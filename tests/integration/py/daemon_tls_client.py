"""The Python client (cacheflow_client) over TLS against a daemon tests/integration/daemon_tls.sh
started; one scenario per run, one line of output, exit 0 = served, 1 = refused (the line says
how), 2 = anything else.

  daemon_tls_client.py health ADDR [--ca F] [--cert F --key F]
      health() over the TCP listener.
  daemon_tls_client.py roundtrip ADDR [--ca F] [--cert F --key F] [--hup PID --log FILE]
      register a shared-memory engine, Save 2 chunks of random KV, Lookup them, Restore them
      (policy load) into other blocks and compare the bytes, Unregister. With --hup: after the
      first call, SIGHUP the daemon and wait for its TLS reload line, then go on on the SAME
      channel (a connection made before a certificate rotation keeps working).
"""
import argparse
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lib"))  # tests/lib: the harness
import cfdaemon  # noqa: E402,F401  (sets the paths of the client package and the stubs)
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from cacheflow_client import CacheFlowError, Client, pb  # noqa: E402

BS = 16  # block size; the daemon runs chunk_tokens = 16, so a block is a chunk


def wait_reload_line(log, before, timeout=60):
    """Until the log holds one more 'reload: tls:' line than `before` (a limit, not a speed goal)."""
    end = time.time() + timeout
    while time.time() < end:
        with open(log) as f:
            if f.read().count("reload: tls:") > before:
                return True
        time.sleep(0.05)
    return False


def roundtrip(c, args):
    st = c.stats()
    tmp = tempfile.mkdtemp(prefix="cf-tls-py-")
    path = os.path.join(tmp, "engine.kv")
    eng = c.register_shm(path, block_size=BS, num_blocks=8, name="tls-py")
    if args.hup:
        with open(args.log) as f:
            before = f.read().count("reload: tls:")
        os.kill(args.hup, signal.SIGHUP)
        if not wait_reload_line(args.log, before):
            return 2, "no 'reload: tls:' line in the daemon log after SIGHUP"
    L, H, D = st.model_layers, st.model_kv_heads, st.model_head_dim
    kv = np.memmap(path, dtype=np.float32, mode="r+").reshape(L, 2, 8, BS, H, D)
    kv[:, :, 0:2] = np.random.default_rng(5).standard_normal(kv[:, :, 0:2].shape).astype(np.float32)
    kv[:, :, 2:4] = 0
    kv.flush()
    tokens = [(7 * i + 3) % 250 for i in range(2 * BS)]
    saved = c.save(eng, tokens, [0, 1]).saved_tokens
    cached = c.lookup(eng, tokens).cached_tokens
    events = list(c.restore(eng, tokens, [2, 3], policy=pb.POLICY_LOAD))
    done = [ev for ev in events if ev.WhichOneof("event") == "done"]
    same = np.array_equal(kv[:, :, 2:4], kv[:, :, 0:2])
    c.unregister(eng)
    del kv
    os.unlink(path)
    os.rmdir(tmp)
    if saved != 2 * BS or cached != 2 * BS or not done or not same:
        return 2, f"saved {saved}, cached {cached}, done events {len(done)}, restored KV equal to saved: {same}"
    return 0, f"served: saved {saved} tokens, lookup {cached}, restore wrote the saved KV back" + \
        (" (across a SIGHUP certificate reload on the same channel)" if args.hup else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("health", "roundtrip"))
    ap.add_argument("addr")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--hup", type=int)
    ap.add_argument("--log")
    args = ap.parse_args()
    # short backoffs: a refused handshake is retried by gRPC until the deadline otherwise
    c = Client(args.addr, timeout=20, tls=True, tls_ca=args.ca, tls_cert=args.cert, tls_key=args.key,
               options=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 500)])
    try:
        if args.mode == "health":
            h = c.health()
            return (0, "served: " + h) if h == "SERVING" else (2, h)
        return roundtrip(c, args)
    except CacheFlowError as e:
        return (1 if e.code == grpc.StatusCode.UNAVAILABLE else 2), f"refused: {e.code.name}: {e.details}"
    finally:
        c.close()


if __name__ == "__main__":
    rc, line = main()
    print(line)
    sys.exit(rc)
