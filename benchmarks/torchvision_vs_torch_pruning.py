"""Side-by-side: prunekit vs Torch-Pruning on every torchvision classification model.

Each (tool, model) runs in its own subprocess with a timeout, on the same random-init
model (seed 0) and the same input. Both prune channels at ratio 0.5 with L2 magnitude and
keep the final classifier's outputs. A run passes when the pruned model's forward works,
its output shape is unchanged and its MACs went down. MACs are counted for both tools the
same way, with torch's FLOP formulas (``prunekit.measure.MacCounter`` over
``torch.utils.flop_counter.flop_registry``; FLOPs / 2) on the meta device, params with
``sum(p.numel())``; the pruned model's forward is a real one. Prune time is the wall time of
the prune call only: ``prunekit.prune_`` (which also verifies the result and counts MACs)
versus Torch-Pruning's ``MagnitudePruner(...)`` construction plus ``step()``.

    python benchmarks/torchvision_vs_torch_pruning.py [--models resnet18 vit_b_16] [--timeout 300]

Writes benchmarks/results/torchvision_vs_torch_pruning.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _input_size(name: str) -> int:
    return 299 if name == "inception_v3" else 224


def _build(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    model = torchvision.models.get_model(name, **kwargs).eval()
    x = torch.randn(1, 3, _input_size(name), _input_size(name))
    return model, x


def _worker(tool: str, name: str, queue) -> None:
    import torch

    torch.set_num_threads(2)
    from prunekit.graph.execute import meta_forward
    from prunekit.measure import Counts
    from prunekit.measure.counting import MacCounter

    def count(model, x):
        counter = MacCounter()
        with counter:
            out = meta_forward(model, (x,), {})
        return Counts(sum(p.numel() for p in model.parameters()), counter.macs), tuple(out.shape)

    row = {"tool": tool, "model": name, "ok": False}
    try:
        _warm_up()  # one-time lazy initialisation of both tools, outside the timed call
        model, x = _build(name)
        before, ref_shape = count(model, x)
        t0 = time.perf_counter()
        if tool == "prunekit":
            import prunekit

            prunekit.prune_(model, x, ratio=0.5)
        else:
            import torch_pruning as tp

            ignored = [m for m in model.modules()
                       if (isinstance(m, torch.nn.Linear) and m.out_features == 1000)
                       or (isinstance(m, torch.nn.Conv2d) and m.out_channels == 1000)]
            pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                               pruning_ratio=0.5, ignored_layers=ignored)
            pruner.step()
        row["prune_s"] = time.perf_counter() - t0
        with torch.no_grad():
            shape = tuple(model(x).shape)  # a real forward of the pruned model
        after, _ = count(model, x)
        row.update(macs_ratio=after.macs / before.macs, params_ratio=after.params / before.params,
                   shape_ok=shape == ref_shape)
        row["ok"] = bool(shape == ref_shape and after.macs < before.macs)
        if not row["ok"]:
            row["error"] = "output shape changed" if shape != ref_shape else "MACs not reduced"
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures
        row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    queue.put(row)


def _warm_up() -> None:
    import torch
    import torch_pruning as tp

    import prunekit

    def small():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()

    x = torch.randn(1, 3, 16, 16)
    prunekit.prune_(small(), x, ratio=0.5)
    m = small()
    tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                              ignored_layers=[m[5]]).step()


def run_one(tool: str, name: str, timeout: float) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(tool, name, q))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return {"tool": tool, "model": name, "ok": False, "error": f"timeout > {timeout:.0f}s"}
    try:
        return q.get(timeout=5)
    except Exception:  # noqa: BLE001
        return {"tool": tool, "model": name, "ok": False, "error": f"crashed (exit {p.exitcode})"}


def main(argv=None) -> int:
    import torch  # noqa: F401  (imported once; each run forks from here)
    import torch_pruning  # noqa: F401
    import torchvision

    import prunekit  # noqa: F401  (no torch op runs in the parent: forking after one can deadlock)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--tools", nargs="*", default=["prunekit", "torch_pruning"])
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", default="torchvision_vs_torch_pruning")
    args = ap.parse_args(argv)
    models = args.models or torchvision.models.list_models(module=torchvision.models)
    rows = []
    for name in models:
        for tool in args.tools:
            row = run_one(tool, name, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows, args)
    return 0


def _fmt(row, key, spec):
    return format(row[key], spec) if key in row else "-"


def write(rows, args) -> None:
    import torch

    RESULTS.mkdir(exist_ok=True)
    tools = args.tools
    by = {(r["tool"], r["model"]): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = [f"# prunekit vs Torch-Pruning on torchvision classification models",
             "",
             f"Channel ratio 0.5 (L2 magnitude), final classifier outputs kept, random init (seed 0), batch 1, "
             f"224x224 (299 for inception_v3). {platform.machine()}, torch {torch.__version__}, 2 threads, "
             f"timeout {args.timeout:.0f}s per model. MACs ratio = after/before (torch FlopCounterMode).",
             ""]
    header = "| model | " + " | ".join(f"{t} pass | {t} MACs | {t} params | {t} prune s" for t in tools) + " |"
    lines += [header, "|" + "---|" * (1 + 4 * len(tools))]
    for m in models:
        cells = [m]
        for t in tools:
            r = by.get((t, m), {})
            cells += ["yes" if r.get("ok") else f"NO ({r.get('error', '?')})", _fmt(r, "macs_ratio", ".3f"),
                      _fmt(r, "params_ratio", ".3f"), _fmt(r, "prune_s", ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for t in tools:
        ok = [by[(t, m)] for m in models if by.get((t, m), {}).get("ok")]
        times = [r["prune_s"] for r in ok]
        lines.append(f"- **{t}**: {len(ok)} / {len(models)} pass; median prune time "
                     f"{statistics.median(times) if times else float('nan'):.2f}s over passing models; "
                     f"median MACs ratio {statistics.median([r['macs_ratio'] for r in ok]) if ok else float('nan'):.3f}")
    if len(tools) == 2:
        both = [m for m in models if all(by.get((t, m), {}).get("ok") for t in tools)]
        if both:
            ratio = statistics.median(by[(tools[0], m)]["prune_s"] / by[(tools[1], m)]["prune_s"] for m in both)
            lines.append(f"- median per-model prune-time ratio {tools[0]}/{tools[1]} over the {len(both)} models "
                         f"both pass: {ratio:.2f}")
            med = [statistics.median(by[(t, m)]["prune_s"] for m in both) for t in tools]
            faster = sum(by[(tools[0], m)]["prune_s"] < by[(tools[1], m)]["prune_s"] for m in both)
            lines.append(f"- over those {len(both)}: median prune time {tools[0]} {med[0]:.2f}s, {tools[1]} "
                         f"{med[1]:.2f}s (ratio of medians {med[0] / med[1]:.2f}); {tools[0]} faster on {faster}")
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{args.out}.md").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
