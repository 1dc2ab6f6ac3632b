"""A cacheflow-sim workload with holes in odd places (issue 15, held-out inputs).

usage: holes_workload.py SEED CHUNK HOLES.json [N]  ->  JSON lines on stdout
Every line's "tiers" runs put ["none", N] where a trace writer might: first, last, the only run,
every other chunk, all but the last chunk, runs of 0 tokens, a run split into adjacent duplicates,
lengths not a multiple of CHUNK; prefix lengths 1, CHUNK-1, CHUNK, CHUNK+1 and random ones.
HOLES.json gets, per request, the chunks the simulator must treat as holes: every chunk with a
token in a "none" run (a chunk loads whole or not at all), computed here independently.
"""
import json
import random
import sys


def runs_for(rnd, P, chunk):
    kind = rnd.choice(["random", "first", "last", "only", "alternate", "lastonly"])
    if kind == "only":
        return [["none", P]]
    if kind == "alternate":
        return [["none" if (at // chunk) % 2 == 0 else "dram", min(chunk, P - at)] for at in range(0, P, chunk)]
    if kind == "lastonly":
        last = (P - 1) // chunk * chunk
        return ([["none", last]] if last else []) + [[rnd.choice(["dram", "ssd"]), P - last]]
    runs, at = [], 0
    while at < P:
        n = min(P - at, rnd.choice([0, 1, rnd.randint(1, 3 * chunk), chunk, rnd.randint(1, P)]))
        runs.append([rnd.choice(["none", "none", "dram", "ssd"]), n])
        at += n
    if kind == "first":
        runs.insert(0, ["none", 0])
        runs[1][0] = "none"
    if kind == "last":
        runs[-1][0] = "none"
        runs.append(["none", 0])
    return runs


def main():
    seed, chunk, holes_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 24
    rnd = random.Random(seed)
    holes = []
    for _ in range(n):
        P = rnd.choice([1, chunk - 1, chunk, chunk + 1, rnd.randint(1, 12 * chunk), rnd.randint(1, 40 * chunk)])
        runs = runs_for(rnd, P, chunk)
        if rnd.random() < 0.3:  # one run split into adjacent duplicates (one half may be empty)
            k = rnd.randrange(len(runs))
            t, m = runs[k]
            a = rnd.randint(0, m)
            runs[k:k + 1] = [[t, a], [t, m - a]]
        hole = [False] * ((P + chunk - 1) // chunk)
        at = 0
        for t, m in runs:
            if t == "none" and m:  # a run of 0 tokens marks no chunk
                for c in range(at // chunk, (at + m + chunk - 1) // chunk):
                    hole[c] = True
            at += m
        assert at == P
        holes.append([c for c, h in enumerate(hole) if h])
        arrival = 0 if rnd.random() < 0.5 else round(rnd.random() * 0.05, 4)
        print(json.dumps({"arrival_s": arrival, "prefix_tokens": P, "new_tokens": rnd.randint(1, 300), "tiers": runs}))
    with open(holes_path, "w") as f:
        json.dump(holes, f)


main()
