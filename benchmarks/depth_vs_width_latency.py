"""Depth vs width at batch 1: how much of a MAC saving shows up as CPU latency?

At batch 1 a small network's CPU time is largely per-op cost (memory-bound depthwise convs,
activations, layout copies, kernel launch), which width pruning does not remove: every op is
still there, only narrower. Removing whole blocks removes their ops. This benchmark prunes
ResNet-50 and MobileNetV2 (224x224, random init: latency does not depend on the weights) to half
their MACs with ``n`` blocks removed first (``prunekit.structure.blocks.prune_blocks_``, block influence on
random calibration images; ``n`` from 0 to as many as fit in the budget) and the rest by uniform
width (``prune_(macs=...)``, round_to 16), deployed (``optimize_for_inference_``: batch norm folded,
channels-last) like the unpruned model, and measures both in interleaved rounds
(``paired_latency``: 10 rounds at batch 1, 5 at batch 16, speed-up = median of within-round ratios).

efficiency = speed-up x MACs ratio (1.0: exactly as much faster as cheaper). It measures speed only:
accuracy is not measured here, and deep cuts usually cost more of it than width at equal MACs.

Usage: python benchmarks/depth_vs_width_latency.py   Writes benchmarks/results/depth_vs_width_latency.{md,json}.
"""
from __future__ import annotations

import copy
import json
import platform
from pathlib import Path

import torch
import torchvision

import prunekit
from prunekit.structure.blocks import find_blocks, prune_blocks_
from prunekit.deploy import optimize_for_inference_
from realized_speedup import ROUNDS, paired_speedup  # the same latency protocol (benchmarks/ is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = 0.5


def depth_steps(base: torch.nn.Module, x: torch.Tensor, data: list) -> list[int]:
    """Block counts to try: 0, then quarters of the most blocks that can go while MACs stay above the budget."""
    b0 = prunekit.count(base, x).macs
    n_max = 0
    for n in range(1, len(find_blocks(base, x)) + 1):
        m = copy.deepcopy(base)
        prune_blocks_(m, x, data, n)
        if prunekit.count(m, x).macs < BUDGET * b0:
            break
        n_max = n
    return sorted({0, *(round(n_max * q) for q in (0.25, 0.5, 0.75, 1.0))})


def main() -> None:
    torch.set_num_threads(2)
    x1 = torch.randn(1, 3, 224, 224)
    data = [torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        torch.manual_seed(0)
        base = torchvision.models.get_model(name).eval()
        b0 = prunekit.count(base, x1)
        deployed_base = copy.deepcopy(base)
        optimize_for_inference_(deployed_base, x1)
        n_blocks = len(find_blocks(base, x1))
        for n in depth_steps(base, x1, data):
            m = copy.deepcopy(base)
            removed = sorted(s for s, _ in sorted(prune_blocks_(m, x1, data, n).items(), key=lambda kv: kv[1])[:n])
            depth_macs = prunekit.count(m, x1).macs / b0.macs
            r = prunekit.prune_(m, x1, macs=min(1.0, BUDGET / depth_macs), round_to=16)
            c = prunekit.count(m, x1)
            optimize_for_inference_(m, x1)
            for batch in (1, 16):
                t = paired_speedup(deployed_base, m, batch, channels_last=True)
                row = {"model": name, "blocks_removed": n, "blocks": n_blocks, "removed": removed,
                       "macs_after_depth": depth_macs, "width_ratio": r.config.ratio, "batch": batch,
                       "macs_ratio": c.macs / b0.macs, "params_ratio": c.params / b0.params,
                       **t, "efficiency": t["speedup"] * c.macs / b0.macs}
                rows.append(row)
                print(f"{name} {n}/{n_blocks} blocks removed (MACs x{depth_macs:.3f}), width ratio "
                      f"{r.config.ratio:.3f}, batch {batch}: MACs x{row['macs_ratio']:.3f}, speed-up "
                      f"{t['speedup']:.2f}, efficiency {row['efficiency']:.2f}", flush=True)
    meta = {"torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
            "threads": 2, "budget": BUDGET, "round_to": 16, "rounds": ROUNDS}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "depth_vs_width_latency.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = ["# Depth vs width at half the MACs: realized CPU speed-up (deployed form)", "",
          f"torch {meta['torch']}, 2 threads, {meta['machine']}; 224x224, random init; n blocks removed by block "
          "influence (random calibration images), then uniform width (round_to 16) to half the MACs; both models "
          "`optimize_for_inference_`; interleaved rounds (10 at batch 1, 5 at batch 16), speed-up = median of "
          "within-round ratios; efficiency = speed-up x MACs ratio. Speed only: accuracy is not measured here.", "",
          "| model | blocks removed | MACs after depth | width ratio | MACs ratio | params ratio | batch | speed-up | "
          "efficiency |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['blocks_removed']} / {r['blocks']} | {r['macs_after_depth']:.3f} | "
                  f"{r['width_ratio']:.3f} | {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | {r['batch']} | "
                  f"{r['speedup']:.2f} | **{r['efficiency']:.2f}** |")
    (RESULTS / "depth_vs_width_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
