"""Random-network benchmark: prune 1,000 generated networks and judge every returned model independently.

Each network is drawn from ``tests/graph/random_nets.py`` (CNN blocks with residuals, concats, splits,
grouped convs, channel shuffles, LSTM/GRU/RNN layers, a module called twice, tied weights, layer-scale
parameters, permute and permute-then-view chains, partial residuals with a bound fixed in code or read from
the shape, index permutations). ``prune_`` prunes it; the checker compares the returned model with the
original whose removed slices are zeroed (exact plans) and requires finite outputs (every plan).

    python benchmarks/random_networks.py            # 1,000 networks
    python benchmarks/random_networks.py --n 100    # a quick run

Writes ``benchmarks/results/random_networks.{md,json}``. Target: 0 ``wrong`` (silently wrong models).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.graph.random_nets import BLOCKS, check_network, random_spec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "random_networks"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rng = random.Random(args.seed)
    rows, t0 = [], time.perf_counter()
    status = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for i in range(args.n):
        spec = random_spec(rng, 6)
        ratio = rng.choice([0.25, 0.5, 0.75])
        seed = rng.randrange(10_000)
        try:
            res = check_network(spec, seed, ratio)
        except Exception as exc:  # noqa: BLE001 - a crash outside prunekit's own errors is reported as such
            res = {"status": "crash", "reason": f"{type(exc).__name__}: {exc}"[:300]}
        status[res["status"]] += 1
        for kind in {k for k, _ in spec}:
            by_kind[kind][res["status"]] += 1
        rows.append({"i": i, "spec": spec, "ratio": ratio, "seed": seed, **res})
        if (i + 1) % 100 == 0:
            print(f"{i + 1} networks, {dict(status)}, {time.perf_counter() - t0:.0f} s", flush=True)
    seconds = time.perf_counter() - t0
    statuses = ["pruned", "nothing", "refused", "wrong", "crash"]
    lines = [f"# Random networks: {args.n} generated networks pruned by `prune_`, each returned model checked",
             "", f"{seconds:.0f} s on 1 thread; ratio drawn from 0.25 / 0.5 / 0.75; seed {args.seed}.", "",
             "| status | networks |", "|---|---|"]
    lines += [f"| {s} | {status[s]} |" for s in statuses]
    pruned = [r for r in rows if r["status"] == "pruned"]
    if pruned:
        ratios = sorted(r["macs_ratio"] for r in pruned)
        lines += ["", f"Of the pruned networks, {sum(1 for r in pruned if r['exact'])} had exact plans (the returned "
                  f"model compared numerically with the soft-zeroed original; the rest: finite outputs only). "
                  f"MACs ratio: median {ratios[len(ratios) // 2]:.3f}, max {ratios[-1]:.3f}."]
    lines += ["", "**wrong** = returned without error but non-finite, or (exact plan) not equal to the soft-zeroed "
              "original within 1e-4: silently wrong. **refused** = a PrunekitError (the model restored). "
              "**crash** = any other exception.", "", "By block kind (networks containing it):", "",
              "| kind | " + " | ".join(statuses) + " |", "|---|" + "---|" * len(statuses)]
    for kind in BLOCKS:
        c = by_kind[kind]
        lines.append(f"| {kind} | " + " | ".join(str(c[s]) for s in statuses) + " |")
    bad = [r for r in rows if r["status"] in ("wrong", "crash", "refused")]
    reasons = collections.Counter(r["reason"].split(":")[0] + ": " + r["reason"].split(":", 2)[-1][:90]
                                  for r in bad)
    if reasons:
        lines += ["", "Reasons (wrong, crash and refused), most common first:", ""]
        lines += [f"- {n} x {why}" for why, n in reasons.most_common(15)]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"n": args.n, "seconds": seconds, "status": dict(status), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
