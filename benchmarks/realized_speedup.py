"""Realized speed-up: does halving the MACs halve the CPU latency?

ResNet-50 and MobileNetV2 (224x224) pruned to at most half their MACs (``prune_(..., macs=0.5)``:
uniform channel ratio found by bisection, L2 magnitude; channel counts rounded to multiples of 1,
8 or 16), latency measured before and after at batch 1 and 16 on 2 threads, interleaved: 6 rounds
of (before, after), each 2 warm-up + 5 (batch 1) or 3 (batch 16) timed runs; the median of the
round medians. Two forms, the same for the unpruned and the pruned model: ``eager`` (the
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
from pathlib import Path

import torch
import torchvision

import prunekit
from prunekit.deploy import optimize_for_inference_
from prunekit.measure import measure_latency

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet50", "mobilenet_v2")
ROUNDS = 6
FORMS = ("eager", "deployed")


def _pooled(runs):
    """Median of the per-round medians, spread from the rounds' p10/p90."""
    from statistics import median

    from prunekit.measure.latency import Latency

    r0 = runs[0]
    return Latency(median(r.median_ms for r in runs), min(r.p10_ms for r in runs), max(r.p90_ms for r in runs),
                   sum(r.mean_ms for r in runs) / len(runs), sum(r.repeats for r in runs), r0.warmup, r0.threads,
                   r0.batch_size)


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    x1 = torch.randn(1, 3, 224, 224)
    for name in MODELS:
        torch.manual_seed(0)
        eager_base = torchvision.models.get_model(name).eval()
        deployed_base = copy.deepcopy(eager_base)
        optimize_for_inference_(deployed_base, x1)
        for round_to in (1, 8, 16):  # 16: the channel block of oneDNN on AVX-512
            eager = copy.deepcopy(eager_base)
            r = prunekit.prune_(eager, x1, macs=0.5, round_to=round_to)
            deployed = copy.deepcopy(eager)
            optimize_for_inference_(deployed, x1)
            for form, base, pruned in (("eager", eager_base, eager), ("deployed", deployed_base, deployed)):
                for batch in (1, 16):
                    x = torch.randn(batch, 3, 224, 224)
                    if form == "deployed":
                        x = x.contiguous(memory_format=torch.channels_last)
                    reps = 5 if batch == 1 else 3
                    # interleaved: before, after, before, after ... so drift hits both alike
                    bs, as_ = [], []
                    for _ in range(ROUNDS):
                        bs.append(measure_latency(base, x, threads=2, warmup=2, repeats=reps))
                        as_.append(measure_latency(pruned, x, threads=2, warmup=2, repeats=reps))
                    lb, la = _pooled(bs), _pooled(as_)
                    speedup = lb.median_ms / la.median_ms
                    row = {"model": name, "form": form, "ratio": r.config.ratio, "round_to": round_to, "batch": batch,
                           "macs_ratio": r.macs_ratio, "latency_before_ms": lb.median_ms, "latency_after_ms": la.median_ms,
                           "p10_p90_before": [lb.p10_ms, lb.p90_ms], "p10_p90_after": [la.p10_ms, la.p90_ms],
                           "speedup": speedup, "efficiency": speedup * r.macs_ratio}
                    rows.append(row)
                    print(f"{name} {form} round_to {round_to} batch {batch}: MACs x{r.macs_ratio:.3f}, "
                          f"{lb.median_ms:.1f} -> {la.median_ms:.1f} ms, speed-up {speedup:.2f}, "
                          f"efficiency {row['efficiency']:.2f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 2, "machine": platform.machine(), "processor": platform.processor()}
    (RESULTS / "realized_speedup.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Realized speed-up of pruned models on CPU", "",
             f"torch {meta['torch']}, 2 threads, {meta['machine']}; pruned with `prune_(..., macs=0.5, round_to=N)` "
             "(L2, uniform ratio found by bisection); before and after measured interleaved, 6 rounds "
             "of 5 (batch 1) or 3 (batch 16) runs after 2 warm-up; latency = median of the round medians. "
             "eager: the modules as they are, NCHW input; deployed: `optimize_for_inference_` (batch norm folded, "
             "channels-last) on both models, channels-last input. "
             "efficiency = latency speed-up x MACs ratio (1.0 = ideal).", "",
             "| model | form | round_to | batch | MACs ratio | latency before ms | after ms | speed-up | efficiency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['form']} | {r['round_to']} | {r['batch']} | {r['macs_ratio']:.3f} | "
                     f"{r['latency_before_ms']:.1f} | {r['latency_after_ms']:.1f} | {r['speedup']:.2f} | "
                     f"{r['efficiency']:.2f} |")
    (RESULTS / "realized_speedup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
