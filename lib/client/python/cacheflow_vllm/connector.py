"""CacheFlowConnector: vLLM (v1 KV connector API, tested with vLLM 0.32) restores prefixes
through cacheflowd.

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "CacheFlowConnector",
        "kv_connector_module_path": "cacheflow_vllm", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"addr": "unix:/run/cacheflow/cacheflowd.sock"}}'

Scheduler side (one per engine): asks the daemon (Lookup) how much of a new request's prefix it
holds beyond what vLLM computed itself, rounds that down to whole vLLM blocks and keeps the last
token for vLLM to compute (it needs its logits); hands the destination blocks to the worker in
the step's metadata; asks the worker to Save each request's newly completed chunks.
Worker side (one per TP rank): registers vLLM's real KV buffers with the daemon (CPU: rebound
onto a /dev/shm file, no copy per restore; CUDA: IPC handles), starts one Restore per request
(present_tokens = the tokens vLLM already holds, which the daemon reads as context and never
writes), and before vLLM's attention of layer l waits for that layer only (the daemon's
readiness counter, a futex in shared memory), so vLLM's layer l runs while layers above still
restore. A restore that fails, times out or loses its daemon is reported through
get_block_ids_with_load_errors: vLLM recomputes those blocks (kv_load_failure_policy
"recompute", which the connector sets); vLLM's step never waits past `restore_timeout_s`.

kv_connector_extra_config keys (all optional):
  addr               daemon address (default $CACHEFLOW_ADDR or unix:/run/cacheflow/cacheflowd.sock)
  policy             default|recompute|load|cake|layerwise|cacheflow|optimal (default: the daemon's)
  load_mode          "layer" (wait per layer, overlapped with vLLM's forward; default) or
                     "step" (wait for whole restores before the forward starts)
  save               true (default): save computed chunks; false: restore only
  save_mode          "step" (default: Save inside wait_for_save, blocks untouched until it returns)
                     or "async" (Save on a thread; request_finished keeps the blocks until
                     get_finished reports the save done)
  durable            false (default); true: Save replies once on SSD
  restore_timeout_s  30: the most a step waits for one restore
  rpc_timeout_s      5: Save/Register deadline
  lookup_timeout_s   0.5: Lookup deadline (the scheduler waits on it); after a failed call no
                     lookups for 1 s
  shm_dir            /dev/shm: where CPU KV buffers are rebound
  holes              true (default): a hit reaches the last chunk the daemon stores, past chunks it
                     lost (Lookup's runs): the restore loads the stored ones and recomputes the
                     holes; false: the longest stored prefix only (cached_tokens)
  offer_weights      false (default); true: the worker offers the model's weights to the daemon
                     (OfferWeights, CPU engines: the float32 parameters moved into one file under
                     shm_dir, vLLM computing on the same pages), which then computes on them
                     instead of its own copy. The worker finds vLLM's model runner on the call
                     stack of register_kv_caches; where it cannot, call
                     LLM.collective_rpc(cacheflow_vllm.offer_weights) once the engine is up.
"""
import collections
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, field

import grpc
import inspect
import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                              KVConnectorRole)

from cacheflow_client import CacheFlowError, Client, pb, register_request

from . import layout as L
from .ready import Readiness

log = logging.getLogger("cacheflow_vllm")

POLICIES = {"default": pb.POLICY_DEFAULT, "recompute": pb.POLICY_RECOMPUTE, "load": pb.POLICY_LOAD,
            "cake": pb.POLICY_CAKE, "layerwise": pb.POLICY_LAYERWISE, "cacheflow": pb.POLICY_CACHEFLOW,
            "optimal": pb.POLICY_OPTIMAL}

# Worker connectors of this process, for tests and benchmarks (timestamps, registration).
WORKERS = []
SCHEDULERS = []


@dataclass
class LoadSpec:
    req_id: str
    tokens: list          # token ids [0, n): the restored prefix
    blocks: list          # vLLM block ids covering [0, n)
    present: int          # tokens [0, present) vLLM already holds (its prefix cache)


@dataclass
class SaveSpec:
    req_id: str
    tokens: list
    blocks: list


@dataclass
class CacheFlowMetadata(KVConnectorMetadata):
    loads: list = field(default_factory=list)
    saves: list = field(default_factory=list)
    preempted: list = field(default_factory=list)


def _keep(lst, item, cap=50000):
    """Append, dropping the oldest half once `cap` is reached."""
    lst.append(item)
    if len(lst) > cap:
        del lst[:cap // 2]


def _engine_file(shm_dir, instance_id):
    return os.path.join(shm_dir, f"cacheflow-vllm-{instance_id or 'default'}.engine")


def _windowed(vllm_config, kv_cache_config):
    """Why this engine's attention is windowed (sliding window, chunked local attention), or None.
    vLLM frees the blocks of tokens that fell out of the window and hands the null block (id 0)
    in their place: a restore of [0, n) has nowhere to put them (and recomputing them after a
    failed load writes several blocks' KV into the one null block: wrong tokens), and a save
    would read blocks vLLM already gave to another request. The connector stays out."""
    for g in getattr(kv_cache_config, "kv_cache_groups", None) or ():
        spec = getattr(g, "kv_cache_spec", None)
        for key in ("sliding_window", "attention_chunk_size"):
            if getattr(spec, key, None):
                return f"{key} {getattr(spec, key)} ({type(spec).__name__})"
    mc = getattr(vllm_config, "model_config", None)
    try:
        w = mc.get_sliding_window() if mc is not None else None
    except Exception:
        w = None
    return f"sliding_window {w}" if w else None


def _channel_options():
    # A daemon that restarts must be found again within a second, not after grpc's default
    # exponential backoff (up to 120 s).
    return [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000)]


class _Restore:
    """One in-flight Restore: a thread reads its event stream; waiters use the readiness slot
    (fast path) and the stream (ground truth for completion and failure)."""

    def __init__(self, client, engine_id, spec, policy, timeout_s):
        self.spec = spec
        self.layers = 0
        self.slot = None
        self.done = False
        self.error = None
        self.stats = None
        self.plan = None
        self.t_start = time.monotonic()
        self.t_layers = {}      # layers_ready count -> time first seen on the stream
        self.t_end = None
        self.finished = False   # stream thread ended (ok or not)
        self.failed = False     # given up: its blocks were reported to vLLM as load errors
        self.seen = 0           # most layers a waiter saw complete (counter or stream; 1 << 30 once done)
        self.cv = threading.Condition()
        self._call = None
        self._timeout_s = timeout_s
        self._thread = threading.Thread(target=self._run, args=(client, engine_id, policy), daemon=True,
                                        name=f"cf-restore-{spec.req_id}")
        self._thread.start()

    def _run(self, client, engine_id, policy):
        req = pb.RestoreRequest(engine_id=engine_id, token_ids=self.spec.tokens, block_ids=self.spec.blocks,
                                policy=policy, present_tokens=self.spec.present)
        try:
            self._call = client.cf.Restore(req, timeout=self._timeout_s)
            for ev in self._call:
                with self.cv:
                    kind = ev.WhichOneof("event")
                    if kind == "plan":
                        self.plan = ev.plan
                        if ev.plan.readiness_slot != 0xFFFFFFFF:
                            self.slot = ev.plan.readiness_slot
                    elif kind == "layers":
                        self.layers = max(self.layers, ev.layers.layers_ready)
                        self.t_layers.setdefault(self.layers, time.monotonic())
                    elif kind == "done":
                        self.stats = ev.done
                    self.cv.notify_all()
            with self.cv:
                if self.stats is None:
                    self.error = "stream ended without RestoreStats"
                self.done = True
        except grpc.RpcError as e:
            with self.cv:
                self.error = f"{e.code().name}: {e.details()}"
        except Exception as e:  # never let a thread die silently with waiters behind it
            with self.cv:
                self.error = repr(e)
        finally:
            with self.cv:
                self.t_end = time.monotonic()
                self.finished = True
                self.cv.notify_all()

    def cancel(self):
        if self._call is not None:
            try:
                self._call.cancel()
            except Exception:
                pass

    def wait(self, need_layers, ready, deadline):
        """True once layers [0, need_layers) hold their final KV; False on failure or timeout."""
        while True:
            with self.cv:
                if self.error is not None:
                    return False
                if self.done or self.layers >= need_layers:
                    self.seen = max(self.seen, self.layers if not self.done else 1 << 30)
                    return True
                slot = self.slot
            if slot is not None and ready is not None:
                # the counter may run ahead of the stream: it is written as each layer lands.
                # A slot reused by a later restore of this engine means ours already finished.
                n, _status, seq = ready.read(slot)
                if n >= need_layers:
                    self.seen = max(self.seen, n)
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                ready.futex_wait(slot, seq, min(left, 0.02))
            else:
                with self.cv:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if not (self.finished or self.layers >= need_layers):
                        self.cv.wait(min(left, 0.05))

    def join(self, timeout):
        self._thread.join(timeout)
        return not self._thread.is_alive()


class CacheFlowConnector(KVConnectorBase_V1):

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        tc = self._kv_transfer_config
        ex = dict(tc.kv_connector_extra_config or {})
        self.addr = ex.get("addr") or os.environ.get("CACHEFLOW_ADDR", "unix:/run/cacheflow/cacheflowd.sock")
        pol = str(ex.get("policy", "default")).lower()
        if pol not in POLICIES:
            raise ValueError(f"CacheFlowConnector: policy {pol!r} unknown ({', '.join(POLICIES)})")
        self.policy = POLICIES[pol]
        self.load_mode = ex.get("load_mode", "layer")
        if self.load_mode not in ("layer", "step"):
            raise ValueError(f"CacheFlowConnector: load_mode {self.load_mode!r} is not 'layer' or 'step'")
        self.save_mode = ex.get("save_mode", "step")
        if self.save_mode not in ("step", "async"):
            raise ValueError(f"CacheFlowConnector: save_mode {self.save_mode!r} is not 'step' or 'async'")
        self.do_save = bool(ex.get("save", True))
        self.durable = bool(ex.get("durable", False))
        self.restore_timeout_s = float(ex.get("restore_timeout_s", 30.0))
        self.rpc_timeout_s = float(ex.get("rpc_timeout_s", 5.0))
        self.lookup_timeout_s = float(ex.get("lookup_timeout_s", 0.5))
        self.holes = bool(ex.get("holes", True))
        self.offer_weights_cfg = bool(ex.get("offer_weights", False))
        self._down_until = 0.0
        self.shm_dir = ex.get("shm_dir", "/dev/shm")
        self.block_size = vllm_config.cache_config.block_size
        self.instance_id = getattr(vllm_config, "instance_id", "") or ""
        self.engine_file = _engine_file(self.shm_dir, self.instance_id)
        self.client = Client(self.addr, timeout=self.rpc_timeout_s, options=_channel_options())
        self._chunk = None
        if role == KVConnectorRole.SCHEDULER:
            # A restore that fails is a cache miss: vLLM recomputes the blocks we report
            # (get_block_ids_with_load_errors) instead of failing the request. The scheduler
            # reads this right after constructing its connector.
            if getattr(tc, "kv_load_failure_policy", "recompute") != "recompute":
                log.info("CacheFlowConnector: kv_load_failure_policy set to 'recompute' (a failed restore is a miss)")
                tc.kv_load_failure_policy = "recompute"
            self._reqs = {}          # req_id -> Request (token ids grow as vLLM samples)
            self._blocks = {}        # req_id -> vLLM block ids (group 0)
            self._pending = {}       # req_id -> (present, hit) between lookup and alloc
            self._loads = []         # LoadSpecs for the next metadata
            self._saved = {}         # req_id -> tokens the daemon holds of it
            self._had_save = set()
            self.lookups = self.hits = 0
            self.enabled = True      # False: no lookups (benchmarks measure vLLM recomputing)
            self.disabled = None
            win = _windowed(vllm_config, kv_cache_config)
            if win:
                self.disabled = f"windowed attention ({win}): out-of-window blocks are vLLM's null block"
                self.enabled = self.do_save = False
                log.warning("CacheFlowConnector disabled: %s (vLLM runs without it)", self.disabled)
            self.finished = collections.OrderedDict()  # req_id -> (token ids, block ids), last 256
            SCHEDULERS.append(self)
        else:
            self.engine_id = 0
            self.ready = None
            self.registered = False
            self.layouts = None
            self._next_register = 0.0
            self._layer_index = {}
            self._restores = []
            self._failed_blocks = set()
            self._files = {}
            # for tests and benchmarks, bounded (a server runs for months): (time, event, detail),
            # finished _Restore objects (stats, timestamps), (tokens, seconds) per Save
            self.trace = []
            self.restores_done = []
            self.save_times = []
            self._save_q = []
            self._save_cv = threading.Condition()
            self._save_pending = {}  # req_id -> saves queued or running (async mode)
            self._finished_waiting = set()
            self._async_saved = set()
            self._save_thread = None
            self.disabled = None
            self.weights_model = None   # the vLLM model whose weights are offered (offer_weights)
            self.weight_lease = None    # cacheflow_client.weights.WeightLease while the daemon borrows them
            self.weight_tensors = None  # the WeightTensors (the shm file holds them while vLLM runs)
            self.weights_error = None   # why the last offer was not made or refused
            WORKERS.append(self)

    # ------------------------------------------------------------------ shared helpers
    def chunk_tokens(self):
        if self._chunk is None:
            self._chunk = int(self.client.config("chunk_tokens").get("chunk_tokens", "256"))
        return self._chunk

    # ------------------------------------------------------------------ scheduler side
    def _lookup_engine(self):
        try:
            with open(self.engine_file) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        rid = request.request_id
        self._reqs[rid] = request
        toks = list(request.all_token_ids)
        limit = len(toks) - 1          # vLLM computes the last token itself (its logits)
        self._saved.setdefault(rid, 0)
        if limit <= num_computed_tokens or not self.enabled or not self._cacheable(request):
            return 0, False
        eid = self._lookup_engine()
        if not eid or time.monotonic() < self._down_until:
            return 0, False
        self.lookups += 1
        try:
            r = self.client.cf.Lookup(pb.LookupRequest(engine_id=eid, token_ids=toks[:limit]),
                                      timeout=self.lookup_timeout_s)
        except grpc.RpcError as e:
            # a dead or hung daemon costs one short call, then no calls for a second: the
            # scheduler never waits on it request after request
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._down_until = time.monotonic() + 1.0
            log.debug("CacheFlow Lookup failed (%s): no hit", e.code().name)
            return 0, False
        cached = end = r.cached_tokens
        if self.holes:  # to the end of the last stored run (a daemon without runs: cached_tokens)
            at = 0
            for run in r.runs:
                at += run.tokens
                if run.tier != pb.TIER_UNSPECIFIED:
                    end = max(end, at)
        self._saved[rid] = max(self._saved[rid], cached)  # the holes get saved again
        hit = (min(end, limit) // self.block_size) * self.block_size
        if hit <= num_computed_tokens:
            return 0, False
        self._pending[rid] = (num_computed_tokens, hit)
        return hit - num_computed_tokens, False

    @staticmethod
    def _cacheable(request):
        """Token ids alone name this KV: not so with images/audio (placeholder tokens), a LoRA
        adapter (other weights) or prompt embeddings (no ids). Those are neither looked up nor saved."""
        return not (getattr(request, "mm_features", None) or getattr(request, "lora_request", None)
                    or getattr(request, "prompt_embeds", None) is not None)

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        rid = request.request_id
        pend = self._pending.pop(rid, None)
        if num_external_tokens <= 0 or pend is None:
            return
        present, hit = pend
        if present + num_external_tokens != hit:
            log.warning("CacheFlow: request %s: vLLM allocated %d external tokens after %d, expected up to %d; "
                        "not restoring", rid, num_external_tokens, present, hit)
            return
        bids = list(blocks.get_block_ids()[0])
        nb = (hit + self.block_size - 1) // self.block_size
        if len(bids) < nb:
            log.warning("CacheFlow: request %s has %d blocks, %d needed; not restoring", rid, len(bids), nb)
            return
        toks = list(request.all_token_ids)[:hit]
        self._loads.append(LoadSpec(rid, toks, bids[:nb], present))
        self.hits += 1

    def build_connector_meta(self, scheduler_output):
        meta = CacheFlowMetadata(loads=self._loads)
        self._loads = []
        so = scheduler_output
        ends = {}
        for nr in so.scheduled_new_reqs:
            self._blocks[nr.req_id] = list(nr.block_ids[0])
            ends[nr.req_id] = nr.num_computed_tokens + so.num_scheduled_tokens.get(nr.req_id, 0)
        cr = so.scheduled_cached_reqs
        for i, rid in enumerate(cr.req_ids):
            nb = cr.new_block_ids[i]
            if rid in cr.resumed_req_ids:
                self._blocks[rid] = list(nb[0]) if nb else []
            elif nb:
                self._blocks.setdefault(rid, []).extend(nb[0])
            ends[rid] = cr.num_computed_tokens[i] + so.num_scheduled_tokens.get(rid, 0)
        meta.preempted = list(getattr(so, "preempted_req_ids", None) or ())
        if self.do_save and ends:
            C = self._chunk_or_none()
            for rid, end in ends.items():
                req = self._reqs.get(rid)
                if C is None or req is None or not self._cacheable(req):
                    continue
                toks = req.all_token_ids
                m = (min(end, len(toks)) // C) * C
                if m <= self._saved.get(rid, 0):
                    continue
                nb = (m + self.block_size - 1) // self.block_size
                bids = self._blocks.get(rid, [])
                if len(bids) < nb:
                    continue
                meta.saves.append(SaveSpec(rid, list(toks[:m]), bids[:nb]))
                self._saved[rid] = m
                self._had_save.add(rid)
        return meta

    def _chunk_or_none(self):
        try:
            return self.chunk_tokens()
        except CacheFlowError:
            return None

    def request_finished(self, request, block_ids):
        rid = request.request_id
        self.finished[rid] = (list(request.all_token_ids), list(block_ids[0] if block_ids and isinstance(block_ids[0], (list, tuple)) else block_ids))
        while len(self.finished) > 256:
            self.finished.popitem(last=False)
        for d in (self._reqs, self._blocks, self._pending, self._saved):
            d.pop(rid, None)
        had = rid in self._had_save
        self._had_save.discard(rid)
        # async saves may still read this request's blocks: vLLM keeps them until the worker
        # reports the request in get_finished (step mode saves finished inside the step).
        return (self.save_mode == "async" and had), None

    # ------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches):
        try:
            self._register_kv_caches(kv_caches)
        except (L.LayoutError, CacheFlowError, OSError) as e:
            self.disabled = str(e)
            log.warning("CacheFlowConnector disabled on this worker: %s (vLLM runs without it)", e)
            return
        if self.offer_weights_cfg and self.weights_model is None:
            model = _model_on_stack()
            if model is None:
                self.weights_error = ("vLLM's model runner is not on register_kv_caches' call stack: call "
                                      "LLM.collective_rpc(cacheflow_vllm.offer_weights)")
                log.warning("CacheFlowConnector: offer_weights: %s", self.weights_error)
            else:
                self.offer_model_weights(model)

    # ------------------------------------------------------------------ borrowed weights (issue 18)
    def offer_model_weights(self, model):
        """Offer `model`'s weights to the daemon (OfferWeights): its float32 CPU parameters move
        into one file under shm_dir (vLLM then computes on those pages: one copy on the node) and
        the daemon checks them against its checkpoint and computes on them until this worker
        unregisters or exits. Returns True when the daemon borrows them; False (logged, in
        self.weights_error) when refused or not offerable — vLLM runs on either way."""
        from .weights import cuda_ipc_tensors, repacked, share_parameters
        self.weights_model = model
        gone = repacked(model.named_parameters())
        if gone:
            self.weights_error = (f"vLLM repacked {len(gone)} linear weights for its CPU GEMM kernels and dropped the "
                                  f"row-major tensors (e.g. {gone[0]}): nothing to share; the daemon keeps its own copy")
            log.warning("CacheFlowConnector: weights not offered: %s", self.weights_error)
            return False
        if getattr(self, "tp_size", 1) > 1:
            self.weights_error = "tensor-parallel shards: the daemon's CPU backend computes on whole fp32 tensors only"
            log.warning("CacheFlowConnector: weights not offered: %s", self.weights_error)
            return False
        if not self.registered and not self._try_register(force=True):
            self.weights_error = "not registered with the daemon"
            return False
        try:
            if self.weight_tensors is None and next(model.parameters()).device.type == "cuda":
                # GPU engine: CUDA IPC handles of its own parameters (no copy); written, not run on a GPU
                import torch
                uuid = "GPU-" + str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
                self.weight_tensors = cuda_ipc_tensors(model.named_parameters(), uuid)
            if self.weight_tensors is None:
                path = os.path.join(self.shm_dir, f"cacheflow-vllm-{os.getpid()}-r{getattr(self, 'tp_rank', 0)}.weights")
                self.weight_tensors, skipped = share_parameters(model.named_parameters(), path)
                self._files[path] = None
                if skipped:
                    log.info("CacheFlowConnector: %d parameters not offered (%s)", len(skipped), skipped[0][1])
            self.weight_lease = self.client.offer_weights(self.engine_id, self.weight_tensors)
        except (CacheFlowError, OSError, ValueError) as e:
            self.weights_error = str(e)
            log.warning("CacheFlowConnector: the daemon did not take vLLM's weights: %s (it keeps its own copy)", e)
            return False
        ev = self.weight_lease.event
        self.weights_error = None
        _keep(self.trace, (time.monotonic(), "weights_borrowed", ev.bytes_borrowed))
        log.info("CacheFlowConnector: the daemon computes on vLLM's weights (%d checked, %d bytes; it dropped %d of "
                 "its own)", ev.weights_checked, ev.bytes_borrowed, ev.own_bytes_released)
        return True

    def _register_kv_caches(self, kv_caches):
        pc = self._vllm_config.parallel_config
        if getattr(pc, "pipeline_parallel_size", 1) > 1:
            raise L.LayoutError("pipeline parallelism: each stage holds some layers; the daemon restores whole models")
        groups = getattr(self._kv_cache_config, "kv_cache_groups", None) or ()
        win = _windowed(self._vllm_config, self._kv_cache_config)
        if win:
            raise L.LayoutError(f"windowed attention ({win}): out-of-window blocks are vLLM's null block")
        if len(groups) > 1:
            raise L.LayoutError(f"{len(groups)} KV cache groups (hybrid / sliding-window model): one group supported")
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
        mc = self._vllm_config.model_config
        try:
            tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        except Exception:
            tp_rank, tp_size = 0, 1
        self.tp_rank, self.tp_size = tp_rank, tp_size
        total_heads = mc.get_total_num_kv_heads()
        head_dim = mc.get_head_size()
        local_heads = mc.get_num_kv_heads(pc)
        names = sorted(kv_caches, key=lambda n: (int(m.group(1)) if (m := re.search(r"layers\.(\d+)\.", n)) else 1 << 30, n))
        self._layer_index = {n: i for i, n in enumerate(names)}
        ts = [kv_caches[n] for n in names]
        if tp_size > 1:
            if total_heads >= tp_size:
                head_start = tp_rank * local_heads
            else:  # vLLM replicates KV heads when there are fewer than TP ranks
                head_start = tp_rank * total_heads // tp_size
            head_count = local_heads
            group = zlib.crc32(f"{self.instance_id}".encode()) | 1
        else:
            head_start, head_count, group = 0, 0, 0
        layers = []
        if ts[0].device.type == "cpu":
            ctx = self._vllm_config.compilation_config.static_forward_context
            isa = getattr(ctx.get(names[0]), "isa", None)
            for i, t in enumerate(ts):  # refuse (LayoutError) before moving any memory
                L.cpu_attn_layout(i, t, "", t.untyped_storage().data_ptr(), self.block_size, head_dim, local_heads, isa)
            tag = f"{os.getpid()}-r{tp_rank}"
            paths, self._files = L.rebind_to_shm(ts, self.shm_dir, tag)
            for i, t in enumerate(ts):
                base = t.untyped_storage().data_ptr()
                layers.append(L.cpu_attn_layout(i, t, paths[base], base, self.block_size, head_dim, local_heads, isa))
        elif ts[0].device.type == "cuda":
            for i, t in enumerate(ts):
                layers.append(L.cuda_layout(i, t, self.block_size, head_dim, local_heads))
        else:
            raise L.LayoutError(f"KV tensors on device {ts[0].device.type}: only cpu and cuda are supported")
        self.layouts = layers
        self.head_range = (head_start, head_count or total_heads)
        self._reg_args = dict(layers=layers, name=f"vllm-{self.instance_id}-tp{tp_rank}", kv_head_start=head_start,
                              kv_head_count=head_count, tp_group=group,
                              pid=os.getpid())  # the daemon unregisters this worker if it dies
        self._try_register(force=True)

    def _try_register(self, force=False):
        """(Re-)register with the daemon; rate-limited so a dead daemon costs one failed call a
        second, never a stall."""
        if self.disabled or self.layouts is None:
            return False
        now = time.monotonic()
        if not force and now < self._next_register:
            return False
        self._next_register = now + 1.0
        try:
            st = self.client.stats()
            req = register_request(st.model_fingerprint, **self._reg_args)
            resp = self.client.register(req)
        except CacheFlowError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT or e.code == grpc.StatusCode.FAILED_PRECONDITION:
                self.disabled = str(e)
                log.warning("CacheFlowConnector: the daemon refused vLLM's KV buffers: %s", e)
            else:
                log.info("CacheFlowConnector: daemon not reachable (%s); vLLM recomputes", e.code.name)
            self.registered = False
            return False
        if self.ready is not None:
            self.ready.close()
        self.ready = Readiness(resp.readiness_shm_path) if resp.readiness_shm_path else None
        self.engine_id = resp.engine_id
        self.registered = True
        if self.weight_tensors is not None and self.weights_model is not None:
            # a restarted daemon forgot the lease with the registration: offer again (its check is cheap)
            threading.Thread(target=self.offer_model_weights, args=(self.weights_model,), daemon=True).start()
        if self.tp_rank == 0:
            tmp = self.engine_file + f".{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{self.engine_id}\n")
            os.replace(tmp, self.engine_file)
        _keep(self.trace, (time.monotonic(), "registered", self.engine_id))
        return True

    def _lost_daemon(self, e):
        # NOT_FOUND: a restarted daemon forgot this engine; UNAVAILABLE: it is gone or draining.
        # Either way register again (rate-limited) before the next restore or save. A timeout
        # leaves the registration alone: the daemon still holds it.
        if e and ("NOT_FOUND" in e or "UNAVAILABLE" in e):
            self.registered = False

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._get_connector_metadata()
        if not isinstance(meta, CacheFlowMetadata) or self.disabled:
            self._fail_all(meta)
            return
        if not meta.loads:
            return
        if not self.registered:
            self._try_register()
        if not self.registered:
            self._fail_all(meta)
            return
        for spec in meta.loads:
            r = _Restore(self.client, self.engine_id, spec, self.policy, self.restore_timeout_s)
            self._restores.append(r)
            _keep(self.trace, (r.t_start, "restore_start", spec.req_id))
        if self.load_mode == "step":
            for r in self._restores:
                self._wait_restore(r, len(self._layer_index))

    def _fail_all(self, meta):
        for spec in getattr(meta, "loads", ()) or ():
            self._mark_failed(spec, "daemon not registered")

    def _mark_failed(self, spec, why):
        bs = self.block_size
        first = spec.present // bs  # blocks vLLM held itself stay valid
        self._failed_blocks.update(spec.blocks[first:])
        _keep(self.trace, (time.monotonic(), "restore_failed", (spec.req_id, why)))
        log.warning("CacheFlow: restore of %s failed (%s): vLLM recomputes %d blocks", spec.req_id, why,
                    len(spec.blocks) - first)

    def _wait_restore(self, r, need):
        if r.failed:
            return False
        deadline = r.t_start + self.restore_timeout_s
        if r.wait(need, self.ready, deadline):
            return True
        r.failed = True
        if r.error is None:
            # timed out with the stream open: cancel it; the daemon stops at its next layer.
            r.cancel()
            r.join(2.0)
            why = "timeout"
        else:
            why = r.error
        self._lost_daemon(r.error)
        self._mark_failed(r.spec, why)
        return False

    def wait_for_layer_load(self, layer_name):
        if not self._restores:
            return
        idx = self._layer_index.get(layer_name)
        if idx is None:
            return
        seen = 1 << 30
        for r in self._restores:
            if self._wait_restore(r, idx + 1):
                seen = min(seen, r.seen)
        now = time.monotonic()
        _keep(self.trace, (now, "layer_seen", (idx, seen)))
        _keep(self.trace, (now, "layer_start", idx))

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        # Saves are per request (wait_for_save): one Save RPC copies every layer of the new
        # chunks, where per-layer saves would cost L round trips for the same bytes.
        return

    def wait_for_save(self):
        # Every restore of this step ends here: its layers were all awaited by the forward (or
        # it failed); join the stream threads so the final stats are in.
        if self._restores:
            for r in self._restores:
                self._wait_restore(r, len(self._layer_index))
                r.join(5.0)  # all layers are in: only the final stats are still on the wire
                _keep(self.restores_done, r, 256)
                _keep(self.trace, (time.monotonic(), "restore_end", r.spec.req_id))
            self._restores = []
        meta = self._connector_metadata
        if not isinstance(meta, CacheFlowMetadata) or not meta.saves or self.disabled:
            return
        if not self.registered and not self._try_register():
            return
        if self.save_mode == "async":
            with self._save_cv:
                for s in meta.saves:
                    self._async_saved.add(s.req_id)
                    self._save_pending[s.req_id] = self._save_pending.get(s.req_id, 0) + 1
                    self._save_q.append(s)
                if self._save_thread is None:
                    self._save_thread = threading.Thread(target=self._save_loop, daemon=True, name="cf-save")
                    self._save_thread.start()
                self._save_cv.notify_all()
            return
        for s in meta.saves:
            self._save_one(s)

    def _save_one(self, s):
        t0 = time.monotonic()
        if t0 < self._down_until:
            return  # the daemon just failed a call: a lost save is only a future miss
        try:
            self.client.save(self.engine_id, s.tokens, s.blocks, durable=self.durable)
        except CacheFlowError as e:
            self._lost_daemon(e.code.name)
            if e.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self._down_until = time.monotonic() + 1.0
            log.info("CacheFlow Save of %s failed: %s", s.req_id, e)
        _keep(self.save_times, (len(s.tokens), time.monotonic() - t0))

    def _save_loop(self):
        while True:
            with self._save_cv:
                while not self._save_q:
                    self._save_cv.wait()
                s = self._save_q[0]
            self._save_one(s)
            with self._save_cv:
                self._save_q.pop(0)
                self._save_pending[s.req_id] -= 1
                if not self._save_pending[s.req_id]:
                    del self._save_pending[s.req_id]
                self._save_cv.notify_all()

    def handle_preemptions(self, kv_connector_metadata):
        # A preempted request's blocks are freed and reused: async saves reading them finish first.
        if self.save_mode == "async" and getattr(kv_connector_metadata, "preempted", None):
            self._drain_saves()

    def _drain_saves(self, timeout=None):
        with self._save_cv:
            self._save_cv.wait_for(lambda: not self._save_q, timeout)

    def get_finished(self, finished_req_ids):
        if self.save_mode != "async":
            return None, None
        with self._save_cv:
            # only requests that had saves were kept by the scheduler (request_finished True)
            self._finished_waiting.update(r for r in finished_req_ids if r in self._async_saved)
            done = {r for r in self._finished_waiting if r not in self._save_pending}
            self._finished_waiting -= done
            self._async_saved -= done
        if done:
            _keep(self.trace, (time.monotonic(), "saves_finished", sorted(done)))
        return (done or None), None

    def get_block_ids_with_load_errors(self):
        out, self._failed_blocks = self._failed_blocks, set()
        return out

    def shutdown(self):
        if self.role == KVConnectorRole.WORKER:
            if self.save_mode == "async" and self._save_thread is not None:
                self._drain_saves(self.rpc_timeout_s)
            if self.registered:
                try:
                    self.client.unregister(self.engine_id)  # ends a weight lease too (the daemon reloads its copy)
                except CacheFlowError:
                    pass
            if self.weight_lease is not None:
                self.weight_lease.close()
            for p in list(self._files):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            if self.tp_rank == 0 if hasattr(self, "tp_rank") else False:
                try:
                    os.unlink(self.engine_file)
                except OSError:
                    pass
        self.client.close()


def _model_on_stack():
    """vLLM's loaded model, from the model runner whose initialize_kv_cache called
    register_kv_caches (a frame's `self` with a torch module in `.model`); None if none is."""
    for fr in inspect.stack(0):
        obj = fr.frame.f_locals.get("self")
        m = getattr(obj, "model", None) if obj is not None else None
        if isinstance(m, torch.nn.Module) and hasattr(m, "named_parameters"):
            return m
    return None


def offer_weights(worker):
    """For LLM.collective_rpc(cacheflow_vllm.offer_weights): vLLM calls it in each worker with the
    worker object; the worker's CacheFlow connector offers worker.model_runner.model's weights
    (see CacheFlowConnector.offer_model_weights). Returns True when the daemon borrows them."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group
    conn = get_kv_transfer_group()
    if not isinstance(conn, CacheFlowConnector):
        raise RuntimeError("offer_weights: this vLLM's KV connector is not CacheFlowConnector")
    mr = getattr(worker, "model_runner", worker)
    model = mr.get_model() if hasattr(mr, "get_model") else mr.model
    return conn.offer_model_weights(model)
