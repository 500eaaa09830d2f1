"""Accuracy vs sparsity / MACs for every criterion, structured and unstructured, on a real network.

MobileNetV2 with torchvision's ImageNet weights (offline package) as a frozen backbone, a new
linear head for Fashion-MNIST (Debian ``dataset-fashion-mnist``). Each row prunes a fresh copy
of the backbone, then retrains only the head, identically for every criterion (L-BFGS on the
features of the same training images): no other recovery. Random is in the table so it shows
which criteria carry information. Alongside, ``torch.nn.utils.prune`` (the peer for the
unstructured magnitude case) runs on the same model and data: accuracy, finalized parameter
count, and file size (its ``prune.remove`` + ``torch.save`` vs prunekit's compressed save).

Usage: python benchmarks/criteria_mobilenetv2_fmnist.py [--train 6000 --test 2000 --size 64]
Writes benchmarks/results/criteria_mobilenetv2_fmnist.{md,json}.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import prunekit
from prunekit.criteria import (APoZCriterion, ActivationMaxCriterion, ActivationMeanCriterion, ActivationMinCriterion,
                               ActivationVarCriterion, BNScaleCriterion, TaylorCriterion, get_criterion)
from prunekit.recovery import extract_features, fit_linear_head, head_accuracy
from prunekit.sparsity import prunable_weights, save_sparse, sparsify_
from prunekit.zoo import demo_model
from prunekit.zoo.demo import Transfer
from prunekit.zoo import fashion_mnist as fm

RESULTS = Path(__file__).resolve().parent / "results"


def batches(images, size, bs=250):
    for i in range(0, len(images), bs):
        yield fm.to_rgb_batch(images[i:i + bs], size)


def evaluate(net: Transfer, data) -> dict:
    """Retrain the head on the (pruned) backbone's features; accuracy before and after."""
    (tr_x, tr_y), (te_x, te_y), size = data
    f_tr = extract_features(net.backbone, batches(tr_x, size))
    f_te = extract_features(net.backbone, batches(te_x, size))
    as_is = head_accuracy(net.classifier, f_te, torch.from_numpy(te_y))
    head = nn.Linear(f_tr.shape[1], 10)
    fit_linear_head(head, f_tr, torch.from_numpy(tr_y))
    net.classifier = head
    return {"acc_as_is": as_is, "acc": head_accuracy(head, f_te, torch.from_numpy(te_y))}


def file_bytes(save) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m")
        save(path)
        return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--ratios", type=float, nargs="*", default=[0.25, 0.5])
    ap.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.7, 0.9])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="criteria_mobilenetv2_fmnist")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.time()

    tr_x, tr_y = fm.load("train")
    te_x, te_y = fm.load("test")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(tr_x), generator=g).numpy()
    train_idx, calib_idx = perm[:args.train], perm[args.train:args.train + args.calib]
    test_idx = torch.randperm(len(te_x), generator=g).numpy()[:args.test]
    data = ((tr_x[train_idx], tr_y[train_idx]), (te_x[test_idx], te_y[test_idx]), args.size)
    calib = [(fm.to_rgb_batch(tr_x[calib_idx[i:i + 64]], args.size), torch.from_numpy(tr_y[calib_idx[i:i + 64]]))
             for i in range(0, len(calib_idx), 64)]
    x = calib[0][0][:1]

    mobilenet, _ = demo_model("mobilenet_v2")
    weights = getattr(mobilenet, "_prunekit_weights", "random init (offline weights not installed)")
    base = Transfer(mobilenet.features).eval()  # the demo's network: features, pool, new 10-class head
    ref = evaluate(base, data)  # trains the head of the unpruned network
    base_counts = prunekit.count(base, x)
    rows = [{"kind": "none", "criterion": "unpruned", "target": 0.0, "acc": ref["acc"], "acc_as_is": ref["acc"],
             "macs_ratio": 1.0, "params_ratio": 1.0}]
    print(f"unpruned: acc {ref['acc']:.4f}, MACs {base_counts.macs:,}, params {base_counts.params:,}", flush=True)

    structured = {
        "random": lambda: get_criterion("random"), "l1": lambda: get_criterion("l1"),
        "l2": lambda: get_criterion("l2"), "bn_scale": BNScaleCriterion,
        "taylor": lambda: TaylorCriterion(data=calib), "act_mean": lambda: ActivationMeanCriterion(data=calib),
        "act_max": lambda: ActivationMaxCriterion(data=calib), "act_min": lambda: ActivationMinCriterion(data=calib),
        "act_var": lambda: ActivationVarCriterion(data=calib), "apoz": lambda: APoZCriterion(data=calib),
    }
    for ratio in args.ratios:
        for name, make in structured.items():
            net = copy.deepcopy(base)
            t0 = time.perf_counter()
            r = prunekit.prune_(net, x, ratio=ratio, criterion=make())
            secs = time.perf_counter() - t0
            acc = evaluate(net, data)
            rows.append({"kind": "structured", "criterion": name, "target": ratio, **acc,
                         "macs_ratio": r.macs_ratio, "params_ratio": r.params_ratio, "prune_s": secs})
            print(f"structured {name:9s} ratio {ratio}: acc {acc['acc']:.4f} (as is {acc['acc_as_is']:.4f}), "
                  f"MACs x{r.macs_ratio:.3f}, {secs:.1f}s", flush=True)

    dense_file = file_bytes(lambda p: torch.save(base.state_dict(), p))
    unstructured = {
        "random": lambda: dict(criterion="random"), "l1": lambda: dict(criterion="l1"),
        "l1_global": lambda: dict(criterion="l1", scope="global"),
        "taylor_global": lambda: dict(criterion=TaylorCriterion(data=calib), scope="global"),
    }
    for sparsity in args.sparsities:
        for name, make in unstructured.items():
            net = copy.deepcopy(base)
            kw = make()
            crit = kw.pop("criterion")
            crit = crit if not isinstance(crit, str) else get_criterion(crit)
            sparsify_(net, sparsity=sparsity, criterion=crit, ignore=("classifier",), finalize_now=True, **kw)
            acc = evaluate(net, data)
            rows.append({"kind": "unstructured", "criterion": name, "target": sparsity, **acc,
                         "nonzero_ratio": _nonzero(net) / _nonzero(base),
                         "file_ratio": file_bytes(lambda p: save_sparse(net, p)) / dense_file})
            print(f"unstructured {name:13s} {sparsity}: acc {acc['acc']:.4f}, file x{rows[-1]['file_ratio']:.3f}",
                  flush=True)
        for scope in ("local", "global"):  # the peer: torch.nn.utils.prune, same weights, same data
            net = copy.deepcopy(base)
            targets = [(m, "weight") for n, m in net.named_modules()
                       if f"{n}.weight" in prunable_weights(net, ("classifier",))]
            if scope == "local":
                for m, attr in targets:
                    torch_prune.l1_unstructured(m, attr, amount=sparsity)
            else:
                torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=sparsity)
            masked_file = file_bytes(lambda p: torch.save(net.state_dict(), p))  # weight_orig + mask
            for m, attr in targets:
                torch_prune.remove(m, attr)
            acc = evaluate(net, data)
            rows.append({"kind": "unstructured", "criterion": f"torch.nn.utils.prune l1 {scope}", "target": sparsity,
                         **acc, "nonzero_ratio": _nonzero(net) / _nonzero(base),
                         "file_ratio": file_bytes(lambda p: torch.save(net.state_dict(), p)) / dense_file,
                         "masked_file_ratio": masked_file / dense_file})
            print(f"torch prune l1 {scope} {sparsity}: acc {acc['acc']:.4f}, file x{rows[-1]['file_ratio']:.3f} "
                  f"(while masked x{masked_file / dense_file:.3f})", flush=True)

    meta = {"weights": weights, "image_size": args.size, "train": args.train, "test": args.test,
            "calibration": args.calib, "threads": args.threads, "torch": torch.__version__,
            "machine": platform.machine(), "minutes": (time.time() - t_start) / 60}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(_markdown(meta, rows))
    print(_markdown(meta, rows))


def _nonzero(net: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in net.parameters())


def _markdown(meta: dict, rows: list[dict]) -> str:
    out = ["# Pruning criteria on MobileNetV2 -> Fashion-MNIST", "",
           f"Backbone: MobileNetV2, {meta['weights']}; {meta['image_size']}x{meta['image_size']} inputs; head "
           f"retrained (L-BFGS, frozen backbone) on {meta['train']} training images after every prune, no other "
           f"recovery; accuracy on {meta['test']} test images; {meta['calibration']} calibration images for the "
           f"data-driven criteria. torch {meta['torch']}, {meta['threads']} threads, {meta['minutes']:.1f} min.", "",
           "## Structured (channels removed; MACs and params measured)", "",
           "| criterion | channel ratio | accuracy | accuracy before head retraining | MACs ratio | params ratio |",
           "|---|---|---|---|---|---|"]
    unpruned = rows[0]
    out.append(f"| unpruned | 0 | {unpruned['acc']:.4f} | {unpruned['acc']:.4f} | 1.000 | 1.000 |")
    for r in rows:
        if r["kind"] == "structured":
            out.append(f"| {r['criterion']} | {r['target']} | {r['acc']:.4f} | {r['acc_as_is']:.4f} | "
                       f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} |")
    out += ["", "## Unstructured (weights zeroed in the backbone's conv layers; dense MACs unchanged)", "",
            "| criterion | sparsity | accuracy | non-zero params ratio | file ratio vs dense |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "unstructured":
            extra = f" (x{r['masked_file_ratio']:.2f} while masked)" if "masked_file_ratio" in r else ""
            out.append(f"| {r['criterion']} | {r['target']} | {r['acc']:.4f} | {r['nonzero_ratio']:.3f} | "
                       f"{r['file_ratio']:.3f}{extra} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
