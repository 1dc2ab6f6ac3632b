#!/usr/bin/python3
"""Writes the seed corpus of tests/fuzz/fuzz_wire.c into tests/fuzz/corpus/wire/.

Each seed is a session a client could run, serialized with the same generated message classes
the Python client (lib/client/python) sends: byte 0 the starting engine table (fuzz_wire.c's
baseline engines), then records [kind][len lo][len hi][serialized request]. The model is the
fuzzer's (2 layers, 4 KV heads, head_dim 8, vocab 32000, fingerprint c0..cf); baseline engines
get ids 0x5eed0001.. in bit order, a newly registered one the next id.

valid_* seeds must have every record accepted, bad_* at least one refused (test_fuzz_corpus).
Run from the repository root after `make` (it needs build/py):
    /usr/bin/python3 tests/fuzz/make_wire_corpus.py
"""
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.environ.get("BUILD", "build"), "py"))
from cacheflow.v1 import cacheflow_pb2 as pb  # noqa: E402

OUT = "tests/fuzz/corpus/wire"
SHM = "/tmp/cf-fuzz-wire.kv"  # fuzz_wire.c's CF_FW_SHM
FP = bytes(range(0xC0, 0xD0))
BASE = 0x5EED0000
REG, UNREG, LOOKUP, SAVE, RESTORE, EVICT, GETCONFIG, HEALTH, STATS, TRACE, FLUSH, OFFER = range(12)


def rec(kind, msg):
    b = msg if isinstance(msg, bytes) else msg.SerializeToString()
    return bytes([kind]) + struct.pack("<H", len(b)) + b


def health(service):
    s = service.encode()
    return bytes([0x0A, len(s)]) + s  # HealthCheckRequest{service}: field 1, length-delimited


def nhd_register(dtype=pb.DTYPE_BF16, block_size=16, num_blocks=64, esz=2, heads=4, head0=0, count=0, tp=0,
                 fp=FP, layers=(0, 1), ipc=False, koff=0, name="seed-engine", strides=None):
    r = pb.RegisterEngineRequest(model_fingerprint=fp, name=name, kv_head_start=head0, kv_head_count=count,
                                 tp_group=tp)
    tok = heads * 8 * esz
    st = strides or dict(block_stride=block_size * tok, token_stride=tok, head_stride=8 * esz, dim_stride=0)
    for i, l in enumerate(layers):
        L = r.layers.add(layer=l, block_size=block_size, num_blocks=num_blocks, dtype=dtype, num_kv_heads=heads,
                         head_dim=8, **st)
        for kv, buf in ((0, L.k), (1, L.v)):
            if ipc:
                buf.cuda_ipc.ipc_handle = bytes(64)
                buf.cuda_ipc.gpu_uuid = "GPU-01234567-89ab-cdef-0123-456789abcdef"
            else:
                buf.shm_path = SHM
            buf.offset = koff + (2 * i + kv) * (1 << 18)
    return r


def blocks(n, bs, first=0):
    return [first + i for i in range((n + bs - 1) // bs)]


SEEDS = {}
toks40 = list(range(100, 140))
SEEDS["valid_lookup_each_engine"] = bytes([0x0F]) + b"".join(
    rec(LOOKUP, pb.LookupRequest(engine_id=BASE + i, token_ids=toks40)) for i in range(1, 5))
SEEDS["valid_save_restore_nhd"] = bytes([0x01]) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 63], durable=True)) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[5, 6, 7], policy=pb.POLICY_OPTIMAL,
                               priority=5, deadline_us=20000, present_tokens=16))
SEEDS["valid_save_restore_hnd_bs1"] = bytes([0x02]) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=[1, 2, 3, 4, 5], block_ids=[4095, 0, 1, 2, 3])) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=[1, 2, 3, 4, 5], block_ids=[9, 8, 7, 6, 5]))
SEEDS["valid_tp_shard"] = bytes([0x04]) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[15, 0])) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[3, 4], priority=-100))
SEEDS["valid_vllm_cpu_f32"] = bytes([0x08]) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=toks40[:16], block_ids=[7])) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40[:16], block_ids=[0]))
SEEDS["valid_register_save_unregister"] = bytes([0x00]) + rec(REG, nhd_register()) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=blocks(40, 16))) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=blocks(40, 16, 10))) + rec(
    UNREG, pb.UnregisterRequest(engine_id=BASE + 1))
SEEDS["valid_register_tp_pair"] = bytes([0x00]) + rec(
    REG, nhd_register(heads=2, head0=0, count=2, tp=9, name="rank0")) + rec(
    REG, nhd_register(heads=2, head0=2, count=2, tp=9, name="rank1")) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 2, token_ids=toks40, block_ids=blocks(40, 16)))
SEEDS["valid_register_hnd_f32_offset"] = bytes([0x00]) + rec(REG, nhd_register(
    dtype=pb.DTYPE_F32, esz=4, block_size=8, num_blocks=32, koff=4096,
    strides=dict(block_stride=4 * 8 * 8 * 4, token_stride=8 * 4, head_stride=8 * 8 * 4, dim_stride=4)))
SEEDS["valid_admin"] = bytes([0x01]) + rec(EVICT, pb.EvictRequest(tier=pb.TIER_CPU, bytes=1 << 20)) + rec(
    EVICT, pb.EvictRequest()) + rec(GETCONFIG, pb.GetConfigRequest(name="max_blocks")) + rec(
    GETCONFIG, pb.GetConfigRequest()) + rec(HEALTH, health("cacheflow.v1.CacheFlow")) + rec(STATS, b"")
# Admin.Trace of the latest and of a kept restore (fuzz_wire.c records ids 7 and 9), Flush,
# Stats (its record's bytes become the response's MemoryStats values: empty = all zero)
SEEDS["valid_trace_flush_stats"] = bytes([0x01]) + rec(TRACE, pb.TraceRequest()) + rec(
    TRACE, pb.TraceRequest(restore_id=7)) + rec(TRACE, pb.TraceRequest(restore_id=9)) + rec(
    FLUSH, pb.FlushRequest()) + rec(STATS, b"") + rec(STATS, pb.StatsRequest())
SEEDS["bad_trace_unknown_id"] = bytes([0x01]) + rec(TRACE, pb.TraceRequest(restore_id=8))
SEEDS["bad_trace_not_kept"] = bytes([0x41]) + rec(TRACE, pb.TraceRequest())
SEEDS["valid_store_bf16"] = bytes([0x85]) + rec(
    LOOKUP, pb.LookupRequest(engine_id=BASE + 1, token_ids=[0, 31999])) + rec(
    LOOKUP, pb.LookupRequest(engine_id=BASE + 2, token_ids=[7] * 100))

SEEDS["bad_restore_after_unregister"] = bytes([0x01]) + rec(UNREG, pb.UnregisterRequest(engine_id=BASE + 1)) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 2]))
SEEDS["bad_block_out_of_range"] = bytes([0x01]) + rec(
    SAVE, pb.SaveRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 64]))
SEEDS["bad_block_count"] = bytes([0x01]) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1]))
SEEDS["bad_token_vocab"] = bytes([0x01]) + rec(LOOKUP, pb.LookupRequest(engine_id=BASE + 1, token_ids=[1, 32000]))
SEEDS["bad_tokens_empty"] = bytes([0x01]) + rec(LOOKUP, pb.LookupRequest(engine_id=BASE + 1))
SEEDS["bad_register_fingerprint"] = bytes([0x00]) + rec(REG, nhd_register(fp=bytes(16)))
SEEDS["bad_register_overlap"] = bytes([0x00]) + rec(REG, nhd_register(
    strides=dict(block_stride=1024, token_stride=32, head_stride=16, dim_stride=0)))
SEEDS["bad_register_shm_small"] = bytes([0x00]) + rec(REG, nhd_register(koff=(4 << 20) - 1024))
SEEDS["bad_register_ipc_no_gpu"] = bytes([0x00]) + rec(REG, nhd_register(ipc=True))
SEEDS["bad_register_store_dtype"] = bytes([0x80]) + rec(REG, nhd_register(dtype=pb.DTYPE_F16))
SEEDS["bad_register_layer_twice"] = bytes([0x00]) + rec(REG, nhd_register(layers=(1, 1)))
SEEDS["bad_register_shard_no_group"] = bytes([0x00]) + rec(REG, nhd_register(heads=2, head0=1, count=2))
SEEDS["bad_restore_present"] = bytes([0x01]) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 2], present_tokens=40))
SEEDS["bad_restore_priority"] = bytes([0x01]) + rec(
    RESTORE, pb.RestoreRequest(engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 2], priority=101))
SEEDS["bad_evict_tier"] = bytes([0x01]) + rec(EVICT, pb.EvictRequest(tier=pb.TIER_REMOTE))
SEEDS["bad_malformed"] = bytes([0x01]) + rec(SAVE, pb.SaveRequest(
    engine_id=BASE + 1, token_ids=toks40, block_ids=[0, 1, 2]).SerializeToString()[:-3])


def offer(engine=BASE + 1, fp=FP, **t):
    """OfferWeights of one tensor in the fuzz shm file (a vLLM fused qkv_proj of the fuzz model)."""
    w = dict(name="model.layers.0.self_attn.qkv_proj.weight", shape=[64, 32], dtype=pb.DTYPE_F32, shm_path=SHM)
    w.update(t)
    return pb.OfferWeightsRequest(engine_id=engine, model_fingerprint=fp, tensors=[pb.WeightTensor(**w)])


SEEDS["valid_offer_weights"] = bytes([0x01]) + rec(OFFER, offer()) + rec(OFFER, offer(strides=[128, 4], offset=4096))
SEEDS["valid_offer_weights_tp"] = bytes([0x01]) + rec(OFFER, offer(tp_rank=1, tp_size=2, dtype=pb.DTYPE_BF16))
SEEDS["bad_offer_strides"] = bytes([0x01]) + rec(OFFER, offer(strides=[4, 256]))
SEEDS["bad_offer_past_file"] = bytes([0x01]) + rec(OFFER, offer(offset=(4 << 20) - 64))
SEEDS["bad_offer_fingerprint"] = bytes([0x01]) + rec(OFFER, offer(fp=bytes(16)))
SEEDS["bad_offer_no_engine"] = bytes([0x00]) + rec(OFFER, offer())
SEEDS["bad_offer_tp_rank"] = bytes([0x01]) + rec(OFFER, offer(tp_rank=2, tp_size=2))

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {OUT}")
