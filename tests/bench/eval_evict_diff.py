#!/usr/bin/env python3
"""Where two rows of the eviction evaluation differ: which chunks one keeps that the other loses.

Reads the files `bench_eval_evict --dump DIR` writes (one per replay: DIR/<row>_<capacity>.txt)
and compares two of them, e.g. cost against the value-weighted clairvoyant reference:

  tests/bench/eval_evict_diff.py DIR/cost_0.05.txt DIR/vbelady-exp32_0.05.txt

Prints (1) the value of the prompt chunks held locally (seconds of recompute - SSD load, the
bench's vssd) by chunk index and by whether a prompt before had already read the chunk, for
each file, and what the second keeps that the first misses and the reverse; (2) how each tier's
contents split, averaged over the requests' lookups: chunks never needed again (dead), needed
again and read before, needed again and never read yet, by index.
Diagnostics only: no assertion, no effect on the table.
"""
import collections
import sys

BUCKETS = ["<8", "8-31", "32-127", ">=128"]
CLASSES = ["dead", "read", "unread"]


def bucket(c):
    return 0 if c < 8 else 1 if c < 32 else 2 if c < 128 else 3


def load(path):
    prompt = {}  # (req, chunk) -> (tier, read_before, value_s)
    occ = collections.defaultdict(float)  # (tier, class, bucket) -> chunk-requests
    reqs = set()
    with open(path) as f:
        for line in f:
            p = line.split()
            if p[0] == "P":
                prompt[(int(p[1]), int(p[2]))] = (int(p[3]), int(p[4]), float(p[5]) / 1e3)
                reqs.add(int(p[1]))
            elif p[0] == "O":
                occ[(int(p[2]), int(p[3]), int(p[4]))] += int(p[5])
    return prompt, occ, len(reqs)


def main():
    if len(sys.argv) != 3:
        print("usage: eval_evict_diff.py FIRST_DUMP SECOND_DUMP", file=sys.stderr)
        return 2
    (pa, oa, na), (pb, ob, nb) = load(sys.argv[1]), load(sys.argv[2])
    if set(pa) != set(pb):
        print("eval_evict_diff: the two dumps are not of the same trace", file=sys.stderr)
        return 2
    A, B = sys.argv[1].rsplit("/", 1)[-1], sys.argv[2].rsplit("/", 1)[-1]
    held = {A: collections.defaultdict(float), B: collections.defaultdict(float)}
    only = {A: collections.defaultdict(float), B: collections.defaultdict(float)}
    only_tier = collections.defaultdict(float)
    for k, (ta, rd, v) in pa.items():
        tb = pb[k][0]
        key = (bucket(k[1]), rd)
        if ta < 2:
            held[A][key] += v
        if tb < 2:
            held[B][key] += v
        if ta < 2 and tb == 2:
            only[A][key] += v
        if tb < 2 and ta == 2:
            only[B][key] += v
            only_tier[tb] += v
    print(f"value of local hits, s (index bucket / read before): {A} | {B} | only {A} | only {B}")
    for b in range(4):
        for rd in (0, 1):
            key = (b, rd)
            print(f"  {BUCKETS[b]:>6} {'read' if rd else 'unread':>6}: {held[A][key]:7.1f} | {held[B][key]:7.1f} |"
                  f" {only[A][key]:6.1f} | {only[B][key]:6.1f}")
    tot = lambda d: sum(d.values())
    print(f"  total: {tot(held[A]):.1f} | {tot(held[B]):.1f} | {tot(only[A]):.1f} | {tot(only[B]):.1f};"
          f" {B} holds what {A} misses on CPU {only_tier[0]:.1f} s, on SSD {only_tier[1]:.1f} s")
    print("tier contents, mean chunks per lookup (class / index bucket):")
    for t, tn in ((0, "CPU"), (1, "SSD")):
        for name, occ, n in ((A, oa, na), (B, ob, nb)):
            total = sum(v for (tt, _, _), v in occ.items() if tt == t) / max(n, 1)
            parts = []
            for c in range(3):
                row = [occ[(t, c, b)] / max(n, 1) for b in range(4)]
                parts.append(f"{CLASSES[c]} {sum(row):.0f} ({'/'.join(f'{x:.0f}' for x in row)})")
            print(f"  {tn} {name}: {total:.0f} held: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
