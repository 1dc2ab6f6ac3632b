"""Borrowed weights (OfferWeights, issue 18): put an engine's weight tensors in one shared-memory
file and offer them to cacheflowd, which then computes on them instead of its own copy.

    from cacheflow_client import Client
    from cacheflow_client.weights import pack_shm, WeightLease
    tensors, views = pack_shm("/dev/shm/my-engine.weights", {"model.layers.0.self_attn.qkv_proj.weight": a, ...})
    lease = client.offer_weights(engine_id, tensors)   # checked and in use once it returns
    ...                                                # the engine computes on `views` (the same pages)
    lease.close()                                      # or Unregister, or the process exits

The daemon maps the file read-only: the engine must keep it (and not change the tensors) while
the lease is open. Only contiguous row-major tensors are accepted (strides are sent so the
daemon can say so when they are not).
"""
import os
import threading

import numpy as np

from . import CacheFlowError, pb

_NP_DTYPE = {np.dtype(np.float32): pb.DTYPE_F32, np.dtype(np.float16): pb.DTYPE_F16}
_ALIGN = 64


def dtype_of(a):
    """The proto DType of a numpy array (bf16 is carried as uint16 arrays with dtype='bf16')."""
    if a.dtype in _NP_DTYPE:
        return _NP_DTYPE[a.dtype]
    raise ValueError(f"dtype {a.dtype}: offer float32 or float16 arrays")


def pack_shm(path, named, tp_rank=0, tp_size=1):
    """Write the arrays of `named` ({name: array}) into the file at `path` (created or replaced),
    each 64-byte aligned, and return (WeightTensors describing them, {name: a numpy view of the
    file}). The views are the shared pages the daemon will read: an engine computes on them
    instead of its private arrays (so the node holds one copy)."""
    offs, total = [], 0
    for name, a in named.items():
        a = np.ascontiguousarray(a)
        offs.append((name, a, total))
        total += (a.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, max(total, 1))
    finally:
        os.close(fd)
    mm = np.memmap(path, dtype=np.uint8, mode="r+", shape=(max(total, 1),))
    tensors, views = [], {}
    for name, a, off in offs:
        v = np.ndarray(a.shape, dtype=a.dtype, buffer=mm, offset=off)
        v[...] = a
        views[name] = v
        tensors.append(pb.WeightTensor(name=name, shape=list(a.shape), dtype=dtype_of(a),
                                       strides=[int(s) for s in a.strides], shm_path=path, offset=off,
                                       tp_rank=tp_rank, tp_size=tp_size))
    mm.flush()
    return tensors, views


class WeightLease:
    """An open OfferWeights call: the daemon computes on the offered tensors while it is open.
    .event: the first OfferWeightsEvent (what was checked). close(): end it (the daemon reloads
    its own copy first). The call also ends when the engine unregisters or its process exits."""

    def __init__(self, call, event):
        self._call = call
        self.event = event
        self.ended = threading.Event()
        self.code = self.details = None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        try:
            for _ in self._call:
                pass
            self.code = self._call.code()
        except Exception as e:  # noqa: BLE001 (grpc.RpcError: the call's final status)
            self.code = getattr(e, "code", lambda: None)()
            self.details = getattr(e, "details", lambda: str(e))()
        self.ended.set()

    def close(self):
        self._call.cancel()
        self.ended.wait(30)


def offer_weights(client, engine_id, tensors, fingerprint=None, samples=0):
    """Offer `tensors` (WeightTensors) as engine `engine_id`. Returns a WeightLease once the daemon
    checked them and computes on them; raises CacheFlowError on a refusal (the daemon keeps its
    own copy): FAILED_PRECONDITION for a mismatch (the tensor and element named), INVALID_ARGUMENT
    for a malformed offer, ALREADY_EXISTS while another engine's weights are borrowed."""
    if fingerprint is None:
        fingerprint = client.stats().model_fingerprint
    req = pb.OfferWeightsRequest(engine_id=engine_id, model_fingerprint=fingerprint, tensors=tensors, samples=samples)
    call = client.cf.OfferWeights(req)  # no deadline: the stream lives as long as the lease
    try:
        first = next(call)
    except StopIteration:
        raise CacheFlowError("OfferWeights", call.code(), call.details()) from None
    except Exception as e:  # noqa: BLE001
        code = getattr(e, "code", None)
        if code is None:
            raise
        raise CacheFlowError("OfferWeights", e.code(), e.details()) from None
    return WeightLease(call, first)
