"""Realized speed-up: does halving the MACs halve the CPU latency?

ResNet-50 and MobileNetV2 (224x224) pruned to at most half their MACs with L2 magnitude, two
ways: ``uniform`` (``prune_(..., macs=0.5)``: one channel ratio found by bisection; channel counts
rounded to multiples of 1, 8 or 16) and ``latency-searched`` (``search_ratios(..., macs=0.5)``
with minus the deployed model's batch-1 latency as the score, round_to 16: where the channels are
cut, at the same MACs, decides how much of the saving shows up as speed).

Latency is measured before and after at batch 1 and 16 on 2 threads, interleaved: 10 (batch 1)
or 5 (batch 16) rounds of (before, after) with the order flipped every round
(``prunekit.measure.latency.paired_latency``), each 2 warm-up + 5 (batch 1) or 3 (batch 16)
timed runs; speed-up = the median over rounds of the within-round ratio, latencies = the median
of the round medians. Two forms, the same for the unpruned and the pruned model: ``eager`` (the
torchvision module as is, NCHW inputs) and ``deployed`` (``prunekit.deploy.optimize_for_inference_``:
batch norm folded into the convs, channels-last weights and inputs).

efficiency = (latency speed-up) / (MACs reduction); 1.0 means the pruned model is exactly as
much faster as it is cheaper. Target >= 0.9.

Usage: python benchmarks/realized_speedup.py      Writes benchmarks/results/realized_speedup.{md,json}.
"""
from __future__ import annotations

import copy
import json
import platform
import time
from statistics import median
from pathlib import Path

import torch
import torchvision

import prunekit
from prunekit.deploy import optimize_for_inference_
from prunekit.config import PruneConfig
from prunekit.measure.latency import LatencyConfig, measure_latency, paired_latency
from prunekit.measure.search import search_ratios

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet50", "mobilenet_v2")
ROUNDS = {1: 10, 16: 5}  # interleaved rounds per batch size
FORMS = ("eager", "deployed")
SEARCH_CANDIDATES = 16


def _deployed_ms(model: torch.nn.Module, x1: torch.Tensor) -> float:
    """Batch-1 median latency of a deployed copy (the search's objective: lower is better)."""
    m = copy.deepcopy(model)
    optimize_for_inference_(m, x1)
    return measure_latency(m, x1.contiguous(memory_format=torch.channels_last), threads=2, warmup=3,
                           repeats=15).median_ms


def paired_speedup(base: torch.nn.Module, pruned: torch.nn.Module, batch: int, channels_last: bool) -> dict:
    """The one latency protocol of the speed-up benchmarks: 224x224 inputs, 2 threads, ``ROUNDS[batch]``
    interleaved rounds (before, after; the order flips each round, so drift hits both alike) of 5 (batch 1)
    or 3 (batch 16) runs after 2 warm-up; the speed-up is the median over rounds of the within-round ratio."""
    x = torch.randn(batch, 3, 224, 224)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    cfg = LatencyConfig(warmup=2, repeats=5 if batch == 1 else 3, rounds=ROUNDS[batch], threads=2)
    p = paired_latency(base, pruned, x, config=cfg)
    return {"latency_before_ms": median(p.base_ms), "latency_after_ms": median(p.other_ms),
            "rounds_before_ms": list(p.base_ms), "rounds_after_ms": list(p.other_ms), "speedup": 1.0 / p.ratio}


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    x1 = torch.randn(1, 3, 224, 224)
    for name in MODELS:
        torch.manual_seed(0)
        eager_base = torchvision.models.get_model(name).eval()
        deployed_base = copy.deepcopy(eager_base)
        optimize_for_inference_(deployed_base, x1)
        # uniform ratios at three roundings (16: the channel block of oneDNN on AVX-512), then per-group
        # ratios searched at the same MAC budget for the lowest batch-1 latency of the deployed model
        for profile, round_to in (("uniform", 1), ("uniform", 8), ("uniform", 16), ("latency-searched", 16)):
            eager = copy.deepcopy(eager_base)
            t = time.perf_counter()
            if profile == "uniform":
                r = prunekit.prune_(eager, x1, macs=0.5, round_to=round_to)
                ratio: float | str = r.config.ratio
            else:
                found = search_ratios(eager_base, x1, lambda m: -_deployed_ms(m, x1), macs=0.5,
                                      candidates=SEARCH_CANDIDATES, config=PruneConfig(round_to=round_to),
                                      progress=False)
                r, ratio = prunekit.prune_(eager, x1, found.config), "per group"
            prune_s = time.perf_counter() - t
            deployed = copy.deepcopy(eager)
            optimize_for_inference_(deployed, x1)
            for form, base, pruned in (("eager", eager_base, eager), ("deployed", deployed_base, deployed)):
                for batch in (1, 16):
                    t = paired_speedup(base, pruned, batch, channels_last=form == "deployed")
                    row = {"model": name, "form": form, "profile": profile, "ratio": ratio, "round_to": round_to,
                           "batch": batch, "prune_s": prune_s, "params_ratio": r.params_ratio,
                           "macs_ratio": r.macs_ratio, **t, "efficiency": t["speedup"] * r.macs_ratio}
                    rows.append(row)
                    print(f"{name} {form} {profile} round_to {round_to} batch {batch}: MACs x{r.macs_ratio:.3f}, "
                          f"{t['latency_before_ms']:.1f} -> {t['latency_after_ms']:.1f} ms, speed-up "
                          f"{t['speedup']:.2f}, efficiency {row['efficiency']:.2f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 2, "machine": platform.machine(), "processor": platform.processor()}
    (RESULTS / "realized_speedup.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Realized speed-up of pruned models on CPU", "",
             f"torch {meta['torch']}, 2 threads, {meta['machine']}; pruned to half the MACs (L2, channels in multiples "
             "of round_to); before and after measured interleaved, 10 (batch 1) or 5 "
             "(batch 16) rounds (order flipped each round) of 5 (batch 1) or 3 (batch 16) runs after 2 warm-up; latency = median of the "
             "round medians; speed-up = median over rounds of the within-round ratio. "
             "eager: the modules as they are, NCHW input; deployed: `optimize_for_inference_` (batch norm folded, "
             "channels-last) on both models, channels-last input. "
             "efficiency = latency speed-up x MACs ratio (1.0 = ideal). Profiles: `uniform` (one ratio, "
             "bisection on the MACs) and `latency-searched` (`search_ratios` at the same MAC budget, "
             f"{SEARCH_CANDIDATES} candidates, scored by minus the deployed model's batch-1 latency -- no accuracy "
             "term: it shows how much where the channels go changes the realized speed-up).", "",
             "| model | form | profile | round_to | batch | MACs ratio | params ratio | latency before ms | after ms | "
             "speed-up | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['form']} | {r['profile']} | {r['round_to']} | {r['batch']} | "
                     f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{r['latency_before_ms']:.1f} | {r['latency_after_ms']:.1f} | {r['speedup']:.2f} | "
                     f"{r['efficiency']:.2f} |")
    (RESULTS / "realized_speedup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
