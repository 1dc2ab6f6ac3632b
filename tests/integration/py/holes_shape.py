"""Punch holes into a stored prefix through the daemon's own eviction (no files touched).

usage: holes_shape.py SOCK MODEL_DIR SEED N_CHUNKS C TIER REMOVE
  SEED: cf-refengine's --seed (its token stream is recomputed here, the same LCG);
  N_CHUNKS x C tokens: the prefix, saved before (by cf-refengine --turns 0, every chunk stored);
  TIER: cpu (the chunks are in the CPU tier, no SSD tier) or ssd (an SSD-only daemon whose
        ssd_tier_bytes holds exactly N_CHUNKS chunks);
        or lookup (nothing evicted: only the runs printed, e.g. after holes made behind the
        daemon's back in the remote tier);
  REMOVE: chunk indices to make holes of, comma-separated ("" for none).
With eviction = lru, a restore pins (touches) every stored chunk of its prefix, in order. So to
evict chunk d alone: restore the whole prefix (the stored chunks in ascending recency), then the
prefix of d chunks (all stored chunks before d, now newer than d): d is then the least recent
stored chunk. cpu: Admin.Evict of one chunk's bytes takes exactly it. ssd (Admin.Evict does not
evict that tier: it evicts by itself under its cap): the filler chunks saved so far are restored
between the two (newer than d), then one more filler chunk is saved, and the tier, full, evicts
its least recent chunk: d. Holes are made from the highest index down. Prints the Lookup runs
of the whole prefix ("tier:tokens ..."). Exit 1 naming what went wrong.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join("lib", "client", "python"))
sys.path.insert(0, os.path.join(os.environ.get("BUILD", "build"), "py"))
from cacheflow_client import Client, pb  # noqa: E402

TIERS = {pb.TIER_UNSPECIFIED: "none", pb.TIER_CPU: "cpu", pb.TIER_SSD: "ssd", pb.TIER_REMOTE: "remote"}


def tokens(seed, n, vocab):
    """cf-refengine's conversation tokens (tests/engine/cf_refengine.c: an LCG seeded by --seed)."""
    m = (1 << 64) - 1
    s = (seed * 0x9E3779B97F4A7C15 + 1) & m
    out = []
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & m
        out.append((s >> 33) % vocab)
    return out


def chunk_tier(c, eng, toks, d, C):
    """The tier Lookup reports for chunk d."""
    at = 0
    for x in c.lookup(eng, toks).runs:
        if at <= d * C < at + x.tokens:
            return x.tier
        at += x.tokens
    return pb.TIER_UNSPECIFIED


def runs(c, eng, toks):
    r = c.lookup(eng, toks)
    return " ".join("%s:%d" % (TIERS.get(x.tier, "?"), x.tokens) for x in r.runs)


def main():
    sock, model, seed, n, C, tier = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    remove = sorted({int(x) for x in sys.argv[7].split(",") if x != ""}, reverse=True)
    with open(os.path.join(model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    c = Client("unix:" + sock, timeout=120)
    shm = os.path.join(os.path.dirname(sock), "holes_shape.kv")
    blocks = (n * C + 15) // 16
    eng = c.register_shm(shm, block_size=16, num_blocks=blocks)
    toks = tokens(seed, n * C, vocab)
    chunk_bytes = 0
    if tier == "lookup":
        try:
            print(runs(c, eng, toks))
        finally:
            c.unregister(eng)
            os.unlink(shm)
        return
    fillers = []
    load = lambda t: [None for _ in c.restore(eng, t, list(range((len(t) + 15) // 16)), policy=pb.POLICY_LOAD)]
    try:
        for d in remove:
            load(toks)
            if tier == "ssd":
                for f in fillers:
                    load(f)
            if d > 0:
                load(toks[:d * C])
            if tier == "cpu":
                r = c.evict(tier=pb.TIER_CPU, nbytes=max(chunk_bytes, 1))
                if r.chunks_evicted != 1:
                    sys.exit("holes_shape: evicting chunk %d took %d chunks" % (d, r.chunks_evicted))
                chunk_bytes = r.bytes_evicted  # one chunk's bytes: the next eviction asks for exactly that
            else:
                fillers.append(tokens(seed + 1000 + len(fillers), C, vocab))
                if c.save(eng, fillers[-1], list(range(C // 16))).saved_tokens != C:
                    sys.exit("holes_shape: filler chunk %d not saved" % len(fillers))
            for _ in range(600):  # an SSD eviction may land after the Save's reply
                if chunk_tier(c, eng, toks, d, C) == pb.TIER_UNSPECIFIED:
                    break
                time.sleep(0.05)
            else:
                sys.exit("holes_shape: chunk %d still stored (%s)" % (d, runs(c, eng, toks)))
        print(runs(c, eng, toks))
    finally:
        c.unregister(eng)
        os.unlink(shm)


main()
