"""cacheflow_client — Python client of cacheflowd (grpcio + stubs generated from the proto).

    from cacheflow_client import Client, CacheFlowError
    with Client("unix:/run/cacheflow/cacheflowd.sock") as c:
        print(c.health())                       # "SERVING"
        eng = c.register_shm("/dev/shm/my-engine", block_size=16, num_blocks=64)
        for event in c.restore(eng, tokens, blocks):
            ...
        c.unregister(eng)

TLS (a daemon's tcp_listen with tls_cert_file set; the unix socket is always plaintext):
    Client("10.0.0.5:7000", tls_ca="/etc/cacheflow/ca.pem",              # verify the daemon
           tls_cert="/etc/cacheflow/engine.pem", tls_key="/etc/cacheflow/engine.key")  # mutual TLS

Stubs: `make` writes them to build/py; this package finds them there (or on PYTHONPATH, or in
$CACHEFLOW_PYSTUBS). Errors raise CacheFlowError with .code (grpc.StatusCode) and .details.
"""
import os
import sys

import grpc


def _import_stubs():
    try:
        from cacheflow.v1 import cacheflow_pb2, cacheflow_pb2_grpc  # noqa: F401
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        for cand in (os.environ.get("CACHEFLOW_PYSTUBS"),
                     os.path.join(here, "..", "..", "..", "..", os.environ.get("BUILD", "build"), "py")):
            if cand and os.path.isdir(os.path.join(cand, "cacheflow")):
                sys.path.insert(0, os.path.abspath(cand))
                break
        from cacheflow.v1 import cacheflow_pb2, cacheflow_pb2_grpc  # noqa: F401
    return cacheflow_pb2, cacheflow_pb2_grpc


pb, pb_grpc = _import_stubs()

HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
DTYPE_SIZE = {pb.DTYPE_F32: 4, pb.DTYPE_BF16: 2, pb.DTYPE_F16: 2}


class CacheFlowError(Exception):
    """A call ended with a non-OK gRPC status."""

    def __init__(self, method, code, details):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


def _encode_health_request(service=""):
    # grpc.health.v1.HealthCheckRequest{service}: field 1, length-delimited.
    b = service.encode()
    if not b:
        return b""
    assert len(b) < 128
    return bytes([0x0A, len(b)]) + b


def _decode_health_response(data):
    # HealthCheckResponse{status}: field 1 varint (values < 128).
    if len(data) >= 2 and data[0] == 0x08:
        return data[1]
    return 0


class Client:
    """One channel to cacheflowd. Thread-safe (grpcio channels are)."""

    def __init__(self, addr="unix:/run/cacheflow/cacheflowd.sock", timeout=30.0, options=(), tls=None, tls_ca=None,
                 tls_cert=None, tls_key=None, tls_server_name=None):
        """`options`: extra grpcio channel options, e.g. short reconnect backoffs while
        waiting for a daemon that is starting.
        TLS: `tls_ca` (PEM file of the CAs the daemon's certificate must chain to; None = gRPC's
        default roots), `tls_cert` + `tls_key` (PEM files of a client certificate, for daemons
        with tls_client_ca_file), `tls_server_name` (the name checked against the daemon's
        certificate instead of addr's host). Any of them, or tls=True, makes the channel TLS."""
        self.addr, self.timeout = addr, timeout
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        opts = [("grpc.max_receive_message_length", 64 << 20)] + list(options)
        if tls or tls_ca or tls_cert or tls_server_name:
            def read(path):
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(root_certificates=read(tls_ca), private_key=read(tls_key),
                                                 certificate_chain=read(tls_cert))
            if tls_server_name:
                opts.append(("grpc.ssl_target_name_override", tls_server_name))
            self.channel = grpc.secure_channel(addr, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(addr, options=opts)
        self.cf = pb_grpc.CacheFlowStub(self.channel)
        self.admin = pb_grpc.AdminStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn, name, req):
        try:
            return fn(req, timeout=self.timeout)
        except grpc.RpcError as e:
            raise CacheFlowError(name, e.code(), e.details()) from None

    # -- raw access (tests send malformed bytes this way)
    def call_raw(self, method, data):
        """Unary call of `method` with raw request bytes; returns the raw reply bytes."""
        try:
            return self.channel.unary_unary(method)(data, timeout=self.timeout)
        except grpc.RpcError as e:
            raise CacheFlowError(method, e.code(), e.details()) from None

    # -- health
    def health(self, service=""):
        """'SERVING' or 'NOT_SERVING' (grpc.health.v1.Health/Check)."""
        data = self.call_raw("/grpc.health.v1.Health/Check", _encode_health_request(service))
        return HEALTH_STATUS.get(_decode_health_response(data), "UNKNOWN")

    # -- CacheFlow
    def register(self, request):
        return self._call(self.cf.RegisterEngine, "RegisterEngine", request)

    def unregister(self, engine_id):
        self._call(self.cf.Unregister, "Unregister", pb.UnregisterRequest(engine_id=engine_id))

    def lookup(self, engine_id, tokens):
        """LookupResponse: cached_tokens (the longest stored prefix) and per_tier; runs (tier,
        tokens) over every chunk, TIER_UNSPECIFIED where none is stored (a restore loads the stored
        chunks past such holes and recomputes the holes), stored_tokens."""
        return self._call(self.cf.Lookup, "Lookup", pb.LookupRequest(engine_id=engine_id, token_ids=tokens))

    def save(self, engine_id, tokens, blocks, durable=False):
        """SaveResponse (saved_tokens, durable, pending_tokens). durable=True: replies once the
        chunks are on the SSD tier (FAILED_PRECONDITION when the daemon has none). A TP shard's
        save reports pending_tokens until the group's other shards saved their heads."""
        return self._call(self.cf.Save, "Save", pb.SaveRequest(engine_id=engine_id, token_ids=tokens, block_ids=blocks,
                                                                durable=durable))

    def restore(self, engine_id, tokens, blocks, policy=pb.POLICY_DEFAULT, priority=0, present_tokens=0):
        """Yields RestoreEvent messages (plan, layers ready, done); raises CacheFlowError.
        present_tokens=k: the engine already holds tokens [0, k) in `blocks` (its own prefix
        cache): the daemon reads them as context and writes only [k, len(tokens))."""
        req = pb.RestoreRequest(engine_id=engine_id, token_ids=tokens, block_ids=blocks, policy=policy, priority=priority,
                                present_tokens=present_tokens)
        try:
            for ev in self.cf.Restore(req, timeout=self.timeout):
                yield ev
        except grpc.RpcError as e:
            raise CacheFlowError("Restore", e.code(), e.details()) from None

    # -- Admin
    def stats(self):
        return self._call(self.admin.Stats, "Stats", pb.StatsRequest())

    def evict(self, tier=pb.TIER_UNSPECIFIED, nbytes=0):
        return self._call(self.admin.Evict, "Evict", pb.EvictRequest(tier=tier, bytes=nbytes))

    def flush(self):
        """Admin.Flush: every chunk saved so far written through to SSD and fsynced (durable).
        Returns FlushResponse (ssd_chunks). FAILED_PRECONDITION without an SSD tier."""
        return self._call(self.admin.Flush, "Flush", pb.FlushRequest())

    def config(self, name=""):
        """{name: value} of the settings in effect."""
        r = self._call(self.admin.GetConfig, "GetConfig", pb.GetConfigRequest(name=name))
        return {e.name: e.value for e in r.entries}

    # -- helpers for CPU engines
    def layout_request(self, shm_path, block_size=16, num_blocks=64, dtype=None, name="", stats=None):
        """A RegisterEngineRequest for a standard paged layout in one shared-memory file (per
        layer K then V, each [num_blocks][block_size][kv_heads][head_dim]); creates/sizes the
        file. dtype None: the daemon's kv_dtype (Stats), the only one it accepts. Returns
        (request, file_bytes)."""
        st = stats or self.stats()
        if dtype is None:
            dtype = st.kv_dtype or pb.DTYPE_F32
        esz = DTYPE_SIZE[dtype]
        head = st.model_head_dim * esz
        tok = head * st.model_kv_heads
        blk = tok * block_size
        buf = blk * num_blocks
        total = buf * 2 * st.model_layers
        with open(shm_path, "ab") as f:
            f.truncate(total)
        layers = []
        for l in range(st.model_layers):
            layers.append(pb.LayerLayout(
                layer=l, k=pb.KvBuffer(shm_path=shm_path, offset=buf * 2 * l),
                v=pb.KvBuffer(shm_path=shm_path, offset=buf * (2 * l + 1)), block_size=block_size,
                num_blocks=num_blocks, block_stride=blk, token_stride=tok, head_stride=head, dtype=dtype,
                num_kv_heads=st.model_kv_heads, head_dim=st.model_head_dim))
        return pb.RegisterEngineRequest(model_fingerprint=st.model_fingerprint, layers=layers, name=name), total

    def offer_weights(self, engine_id, tensors, fingerprint=None, samples=0):
        """OfferWeights: the daemon computes on these WeightTensors instead of its own copy while
        the returned WeightLease is open (cacheflow_client.weights)."""
        from .weights import offer_weights
        return offer_weights(self, engine_id, tensors, fingerprint, samples)

    def register_shm(self, shm_path, block_size=16, num_blocks=64, dtype=None, name=""):
        req, _ = self.layout_request(shm_path, block_size, num_blocks, dtype, name)
        return self.register(req).engine_id


def layer_layout(layer, k_path, k_offset, v_path, v_offset, block_size, num_blocks, dtype, num_kv_heads, head_dim,
                 k_strides, v_strides=None):
    """A LayerLayout from byte strides: k_strides / v_strides are (block, token, head, dim) in
    BYTES (tensor.stride() of the block, slot, head and dim axes times the element size). V uses
    K's strides when v_strides is None. Element (b, t, h, d) of K is at k_offset + b*block +
    t*token + h*head + d*dim of k_path (V likewise)."""
    kb, kt, kh, kd = (int(x) for x in k_strides)
    lay = pb.LayerLayout(layer=layer, k=pb.KvBuffer(shm_path=k_path, offset=int(k_offset)),
                         v=pb.KvBuffer(shm_path=v_path, offset=int(v_offset)), block_size=block_size,
                         num_blocks=num_blocks, block_stride=kb, token_stride=kt, head_stride=kh, dim_stride=kd,
                         dtype=dtype, num_kv_heads=num_kv_heads, head_dim=head_dim)
    if v_strides is not None and tuple(int(x) for x in v_strides) != (kb, kt, kh, kd):
        vb, vt, vh, vd = (int(x) for x in v_strides)
        lay.v_strides.CopyFrom(pb.KvStrides(block_stride=vb, token_stride=vt, head_stride=vh, dim_stride=vd))
    return lay


def register_request(fingerprint, layers, name="", kv_head_start=0, kv_head_count=0, tp_group=0, pid=0):
    """A RegisterEngineRequest. A TP shard holding model KV heads [kv_head_start, +kv_head_count)
    passes them with a nonzero tp_group shared by the engine's ranks (its LayerLayouts then
    have num_kv_heads = kv_head_count). pid: the engine's process (os.getpid()); over the unix
    socket the daemon unregisters the engine when that process exits (0: never)."""
    return pb.RegisterEngineRequest(model_fingerprint=fingerprint, layers=layers, name=name, kv_head_start=kv_head_start,
                                    kv_head_count=kv_head_count, tp_group=tp_group, pid=pid)


__all__ = ["Client", "CacheFlowError", "layer_layout", "register_request", "pb", "pb_grpc"]
