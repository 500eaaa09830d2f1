"""Realized speed-up: does halving the MACs halve the CPU latency?

ResNet-50 and MobileNetV2 (224x224) pruned to at most half their MACs with L2 magnitude, three
ways: ``uniform`` (``prune_(..., macs=0.5)``: one channel ratio found by bisection; channel counts
rounded to multiples of 1, 8 or 16), ``inner`` (the same, with the residual streams kept:
``prunekit.structure.streams.keep_residual_streams``, so only the widths inside the blocks are cut;
round_to 8 and 16) and ``latency-searched`` (``search_ratios(..., macs=0.5)`` with minus the
deployed model's batch-1 latency as the score, round_to 16): where the channels are cut, at the
same MACs, decides how much of the saving shows up as speed.

Latency is measured before and after at batch 1 and 16 on 2 threads, interleaved: 10 (batch 1)
or 5 (batch 16) rounds of (before, after) with the order flipped every round
(``prunekit.measure.latency.paired_latency``), each 2 warm-up + 5 (batch 1) or 3 (batch 16)
timed runs (ONNX Runtime at batch 1: 10 warm-up + 20, see ``paired_speedup``); speed-up = the
median over rounds of the within-round ratio, latencies = the median of the round medians. Three
forms, the same for the unpruned and the pruned model: ``eager`` (the torchvision module as is,
NCHW inputs), ``deployed`` (``prunekit.deploy.optimize_for_inference_``:
batch norm folded into the convs, channels-last weights and inputs) and ``onnxruntime``
(``prunekit.io.export_onnx``, outputs checked, run by ONNX Runtime's CPU provider on 2 intra-op
threads through ``prunekit.io.OnnxRuntimeModule``).

efficiency = (latency speed-up) / (MACs reduction); 1.0 means the pruned model is exactly as
much faster as it is cheaper. Target >= 0.9.

Usage: python benchmarks/realized_speedup.py      Writes benchmarks/results/realized_speedup.{md,json}.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from statistics import median
from pathlib import Path

import torch
import torchvision

import prunekit
from prunekit.deploy import optimize_for_inference_
from prunekit.io import OnnxRuntimeModule, export_onnx
from prunekit.config import PruneConfig
from prunekit.measure.latency import LatencyConfig, measure_latency, paired_latency
from prunekit.decide.search import search_ratios
from prunekit.structure.streams import keep_residual_streams

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("resnet50", "mobilenet_v2")
ROUNDS = {1: 10, 16: 5}  # interleaved rounds per batch size
FORMS = ("eager", "deployed", "onnxruntime")
PROFILES = (("uniform", 1), ("uniform", 8), ("uniform", 16), ("inner", 8), ("inner", 16),
            ("latency-searched", 16))
SEARCH_CANDIDATES = 16


def _deployed_ms(model: torch.nn.Module, x1: torch.Tensor) -> float:
    """Batch-1 median latency of a deployed copy (the search's objective: lower is better)."""
    m = copy.deepcopy(model)
    optimize_for_inference_(m, x1)
    return measure_latency(m, x1.contiguous(memory_format=torch.channels_last), threads=2, warmup=3,
                           repeats=15).median_ms


def paired_speedup(base: torch.nn.Module, pruned: torch.nn.Module, batch: int, channels_last: bool,
                   onnxruntime: bool = False) -> dict:
    """The one latency protocol of the speed-up benchmarks: 224x224 inputs, 2 threads, ``ROUNDS[batch]``
    interleaved rounds (before, after; the order flips each round, so drift hits both alike) of 5 (batch 1)
    or 3 (batch 16) runs after 2 warm-up; the speed-up is the median over rounds of the within-round ratio.
    ONNX Runtime sessions (``onnxruntime``) get 10 warm-up and 20 runs per round at batch 1: the worker
    threads of the session that just ran keep spinning for a while (ONNX Runtime's default, which keeps its
    own back-to-back latency low) and take cores from the next session's first runs."""
    x = torch.randn(batch, 3, 224, 224)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if onnxruntime and batch == 1:
        cfg = LatencyConfig(warmup=10, repeats=20, rounds=ROUNDS[batch], threads=2)
    else:
        cfg = LatencyConfig(warmup=2, repeats=5 if batch == 1 else 3, rounds=ROUNDS[batch], threads=2)
    p = paired_latency(base, pruned, x, config=cfg)
    return {"latency_before_ms": median(p.base_ms), "latency_after_ms": median(p.other_ms),
            "rounds_before_ms": list(p.base_ms), "rounds_after_ms": list(p.other_ms), "speedup": 1.0 / p.ratio}


def _forms(eager_base: torch.nn.Module, x1: torch.Tensor, forms: tuple[str, ...], folder: str, tag: str) -> dict:
    """The model in each deployment form (``eager`` is the module itself)."""
    out: dict[str, torch.nn.Module] = {}
    for form in forms:
        if form == "eager":
            out[form] = eager_base
        elif form == "deployed":
            out[form] = copy.deepcopy(eager_base)
            optimize_for_inference_(out[form], x1)
        else:
            path = f"{folder}/{tag}.onnx"
            export_onnx(eager_base, x1, path)  # outputs checked against PyTorch's
            out[form] = OnnxRuntimeModule(path, threads=2)
    return out


def _prune(eager_base: torch.nn.Module, x1: torch.Tensor, profile: str, round_to: int):
    eager = copy.deepcopy(eager_base)
    if profile in ("uniform", "inner"):
        keep = keep_residual_streams(eager, prunekit.trace(eager, x1).groups()) if profile == "inner" else ()
        r = prunekit.prune_(eager, x1, macs=0.5, round_to=round_to, ratios=keep)
        return eager, r, r.config.ratio
    found = search_ratios(eager_base, x1, lambda m: -_deployed_ms(m, x1), macs=0.5, candidates=SEARCH_CANDIDATES,
                          config=PruneConfig(round_to=round_to), progress=False)
    return eager, prunekit.prune_(eager, x1, found.config), "per group"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--forms", nargs="*", default=list(FORMS), choices=FORMS)
    ap.add_argument("--out", default=None, help="results name (default realized_speedup, or realized_speedup_dev "
                                                "for a run of some models, forms or profiles)")
    ap.add_argument("--profiles", nargs="*", default=None,
                    help="only these profiles (uniform, inner, latency-searched); a development run writes "
                         "realized_speedup_dev.{md,json}")
    args = ap.parse_args()
    profiles = [p for p in PROFILES if args.profiles is None or p[0] in args.profiles]
    dev = args.profiles is not None or args.models != list(MODELS) or args.forms != list(FORMS)
    torch.set_num_threads(2)
    rows = []
    x1 = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory(prefix="realized_speedup_") as folder:  # the ONNX files
        for name in args.models:
            torch.manual_seed(0)
            eager_base = torchvision.models.get_model(name).eval()
            bases = _forms(eager_base, x1, tuple(args.forms), folder, f"{name}_base")
            # uniform ratios at three roundings (16: the channel block of oneDNN on AVX-512), the widths inside the
            # blocks only, then per-group ratios searched at the same MAC budget for the lowest deployed latency
            for profile, round_to in profiles:
                t = time.perf_counter()
                eager, r, ratio = _prune(eager_base, x1, profile, round_to)
                prune_s = time.perf_counter() - t
                pruned = _forms(eager, x1, tuple(args.forms), folder, f"{name}_{profile}_{round_to}")
                for form in args.forms:
                    for batch in (1, 16):
                        t = paired_speedup(bases[form], pruned[form], batch, channels_last=form == "deployed",
                                           onnxruntime=form == "onnxruntime")
                        row = {"model": name, "form": form, "profile": profile, "ratio": ratio, "round_to": round_to,
                               "batch": batch, "prune_s": prune_s, "params_ratio": r.params_ratio,
                               "macs_ratio": r.macs_ratio, **t, "efficiency": t["speedup"] * r.macs_ratio}
                        rows.append(row)
                        print(f"{name} {form} {profile} round_to {round_to} batch {batch}: MACs x{r.macs_ratio:.3f}, "
                              f"{t['latency_before_ms']:.1f} -> {t['latency_after_ms']:.1f} ms, speed-up "
                              f"{t['speedup']:.2f}, efficiency {row['efficiency']:.2f}", flush=True)
    out = args.out or ("realized_speedup_dev" if dev else "realized_speedup")
    RESULTS.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": 2, "machine": platform.machine(), "processor": platform.processor()}
    (RESULTS / f"{out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Realized speed-up of pruned models on CPU", "",
             f"torch {meta['torch']}, 2 threads, {meta['machine']}; pruned to half the MACs (L2, channels in multiples "
             "of round_to); before and after measured interleaved, 10 (batch 1) or 5 "
             "(batch 16) rounds (order flipped each round) of 5 (batch 1) or 3 (batch 16) runs after 2 warm-up (ONNX Runtime at batch 1: 20 runs after 10 warm-up, so the other "
             "session's spinning threads are idle); latency = median of the round medians; speed-up = median over rounds of the within-round ratio. "
             "eager: the modules as they are, NCHW input; deployed: `optimize_for_inference_` (batch norm folded, "
             "channels-last) on both models, channels-last input; onnxruntime: `prunekit.io.export_onnx` (outputs "
             "checked) run by ONNX Runtime's CPU provider, 2 intra-op threads, NCHW input. "
             "efficiency = latency speed-up x MACs ratio (1.0 = ideal). Profiles: `uniform` (one ratio, "
             "bisection on the MACs), `inner` (the same with the residual streams kept: "
             "`prunekit.streams.keep_residual_streams`) and `latency-searched` (`search_ratios` at the same MAC budget, "
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
    (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
