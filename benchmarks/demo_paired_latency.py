"""The demo's paired latency, once on a quiet machine and once beside CPU-burning processes.

The demo network (MobileNetV2 features + 10-class head at 64x64, batch 1) is pruned as the demo does
(channel ratio 0.35, multiples of 8; L2 here instead of APoZ, which needs the data, so the widths may
differ slightly from the demo's), and its before/after latency is measured with the demo's own paired
method (alternating rounds, 1 thread, median of per-round ratios) in PyTorch and ONNX Runtime. Then
the same measurement runs while ``--burners`` processes spin on the CPU. Pairing is meant to make the
*ratio* robust to load: the two ratios should agree within about 20%.

    python benchmarks/demo_paired_latency.py [--burners 2] [--rounds 9]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import torch

from prunekit import prune_
from prunekit.zoo import demo_model
from prunekit.zoo.demo import DemoConfig, Transfer, _paired_latency

RESULTS = Path(__file__).parent / "results"


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(10000):
            x = (x * 1103515245 + 12345) % 2147483648


def _models():
    torch.manual_seed(0)
    mobilenet, _ = demo_model("mobilenet_v2")
    model = Transfer(mobilenet.features).eval()
    example = torch.randn(1, 3, 64, 64)
    import copy

    before = copy.deepcopy(model)
    result = prune_(model, example, ratio=0.35, round_to=8)
    return before, model, example, result.macs_ratio


def _measure(before, after, example, rounds):
    cfg = DemoConfig(latency_repeats=30, latency_rounds=rounds)
    paired = _paired_latency(before, after, example, cfg, time.time())
    return {k: p.to_dict() for k, p in paired.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    before, after, example, macs_ratio = _models()
    quiet = _measure(before, after, example, args.rounds)
    stop = mp.Event()
    procs = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)
        loaded = _measure(before, after, example, args.rounds)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
    rows = []
    for runtime in quiet:
        q, lo = quiet[runtime]["ratio"], loaded[runtime]["ratio"]
        rows.append({"runtime": runtime, "quiet_ratio": q, "loaded_ratio": lo, "agreement": lo / q,
                     "quiet_before_ms": sorted(quiet[runtime]["base_ms"])[len(quiet[runtime]["base_ms"]) // 2],
                     "loaded_before_ms": sorted(loaded[runtime]["base_ms"])[len(loaded[runtime]["base_ms"]) // 2]})
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
           "load_before": os.getloadavg(), "burners": args.burners, "rounds": args.rounds, "macs_ratio": macs_ratio,
           "rows": rows, "quiet": quiet, "loaded": loaded}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_paired_latency.json").write_text(json.dumps(out, indent=1))
    lines = ["# The demo's paired latency, quiet and beside CPU burners", "",
             f"{out['machine']}; demo network (MobileNetV2 features + head, 64x64, batch 1) pruned at ratio 0.35, "
             f"round_to 8 (L2): MACs x{macs_ratio:.3f}. Paired: {args.rounds} alternating rounds, 1 thread, median "
             f"of per-round after/before ratios. Loaded: {args.burners} busy-looping processes beside it.", "",
             "| runtime | quiet: before ms | quiet ratio | loaded: before ms | loaded ratio | loaded / quiet |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['quiet_before_ms']:.2f} | {r['quiet_ratio']:.3f} | "
                     f"{r['loaded_before_ms']:.2f} | {r['loaded_ratio']:.3f} | {r['agreement']:.2f} |")
    (RESULTS / "demo_paired_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
