"""Accuracy at equal budget: prunekit vs Torch-Pruning on the demo network, same MACs, same recovery.

The demo's network (MobileNetV2 features with torchvision's ImageNet weights, average pool, a
new 10-class head fit on the frozen features) on Fashion-MNIST at 64x64, then trained end to end
for ``--pretrain-epochs`` (warm start as below, then plain cross-entropy): the trained model a
user brings to pruning. It is pruned to 1/2 and 1/3 of its MACs by:

- ``tp_l2_uniform``: Torch-Pruning's ``MagnitudePruner`` (L2 ``MagnitudeImportance``, classifier
  ignored, one ratio for every layer), its ratio found by bisection on the MACs;
- ``pk_l2_uniform``: ``prunekit.prune_`` with L2 magnitude, one ratio (bisection): the
  like-for-like baseline;
- ``pk_<best>_uniform``: the same with the criterion that scored best on the validation split
  (each candidate pruned to the budget, warm-started as below, accuracy on the validation split);
- ``pk_<best>_iterative``: prunekit's recipe, declared before the run (from 2026-11-29; before,
  it was ``pk_<best>_uniform``): ``prunekit.structure.progressive.iterative_prune_(macs=1/budget,
  steps=--steps)`` with the best criterion -- each step prunes to ``budget ** (k/steps)`` of the
  MACs (one uniform ratio by bisection, scores re-computed on the current network), then gets the
  warm start and ``epochs/steps`` of the recovery below. Same epochs, data and order as every
  other row, cut into pieces (the earlier pieces train a wider network, so it costs more compute
  than one-shot). The row the summary compares with Torch-Pruning and with the unpruned network;
- ``pk_<best>_search``: per-group ratios from ``prunekit.decide.search.search_ratios`` with the
  same best criterion: ``--candidates`` random ratio profiles (the first one uniform), each scaled
  to the budget, warm-started as below and scored by minus the cross-entropy on the validation
  split; the best one is kept. Compared with ``pk_<best>_uniform``: do budget ratios beat uniform?

With ``--inner`` it adds ``pk_<best>_inner``: the residual streams kept
(``prunekit.structure.streams.keep_residual_streams``) and only the widths inside the blocks pruned to the
budget with the best criterion (the profile whose MAC saving shows up best as CPU latency, see
``realized_speedup.py``). With ``--depth-blocks N ...`` it adds ``pk_<best>_depth<N>``: the N blocks of least influence on the
calibration images removed (``prunekit.structure.blocks.prune_blocks_``), then width with the best criterion
to the budget. ``--only depth`` runs just those rows (development runs: no summary).

MACs are counted the same way for every method (``prunekit.count`` on one 1x3x64x64 input).
Channels are kept in multiples of ``--round-to`` (1 by default: with 8, a uniform ratio's MACs
jump past both budgets, so no uniform method could meet them within 1%).
Every network then gets the identical recovery: a warm start -- BatchNorm statistics
re-estimated and the linear head refit (L-BFGS on the frozen features) on the first
``--refit`` training images -- then ``--epochs`` of distillation from the unpruned (trained)
network on the same training images in the same order, same optimizer (AdamW, cosine), same
learning rate, temperature 4, alpha 0.7 (the demo's recipe). ``--no-warm-start`` skips the
warm start (the demo as it is). In development runs (4,000 images, 1 epoch, validation split)
the warm start was worth about 2 points after recovery; refitting the head without the
BatchNorm statistics hurt (the head is fit to ImageNet-statistics features that the first
training steps replace with Fashion-MNIST statistics). "Within 1 point of the unpruned" is
judged against the stricter of two references: the trained network as it is, and the trained
network given the same recovery too (warm start, then distillation from its own copy).
``--pretrain-epochs 0`` prunes the head-only network instead (the protocol of the runs before
2026-11-29, where the recovery was also the task adaptation and the head-only teacher was weaker
than its students).

Splits (seed 0): ``--train`` images for the head fit and recovery, ``--val`` more training
images held out for every data-driven decision (calibration, criterion choice, the ratio search),
``--test`` test images only for the reported accuracies.

    python benchmarks/equal_budget_accuracy.py --threads 1   # the full run: about an hour on 2 shared cores
    python benchmarks/equal_budget_accuracy.py --quick    # small subsets, 1 epoch: a few minutes

Writes benchmarks/results/equal_budget_accuracy.{md,json} (``--quick``: ``..._quick``).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit.structure.blocks import prune_blocks_
from prunekit.config import PruneConfig
from prunekit.criteria import (APoZCriterion, ActivationMeanCriterion, ActivationVarCriterion, BNScaleCriterion,
                               Criterion, TaylorCriterion, get_criterion)
from prunekit.decide.search import search_ratios
from prunekit.structure.progressive import iterative_prune_
from prunekit.structure.streams import keep_residual_streams
from prunekit.recovery import Distillation, TrainConfig, extract_features, fit_linear_head, recalibrate_bn, train
from prunekit.zoo import demo_model
from prunekit.zoo import fashion_mnist as fm
from prunekit.zoo.demo import Transfer

RESULTS = Path(__file__).resolve().parent / "results"


class Clock:
    def __init__(self) -> None:
        self.t0 = time.time()

    def say(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)


def batches(x: torch.Tensor, bs: int = 250):
    return (x[i:i + bs] for i in range(0, len(x), bs))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float(sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in zip(batches(x), batches(y))) / len(y))


def neg_nll(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Minus the mean cross-entropy (higher = better): a smoother search score than accuracy."""
    net.eval()
    with torch.no_grad():
        return -float(sum(F.cross_entropy(net(xb), yb, reduction="sum") for xb, yb in
                          zip(batches(x), batches(y))) / len(y))


def warm_(net: Transfer, x: torch.Tensor, y: torch.Tensor) -> Transfer:
    """The warm start, in place: BatchNorm statistics re-estimated on ``x`` (train-mode forwards,
    cumulative average) and the linear head refit on the frozen features."""
    recalibrate_bn(net, list(batches(x, 64)))
    net.eval()
    fit_linear_head(net.classifier, extract_features(net.backbone, batches(x)), y)
    return net


def warm_copy(net: Transfer, x: torch.Tensor, y: torch.Tensor) -> Transfer:
    return warm_(copy.deepcopy(net), x, y)


def bisect(macs_at, target: int, hi: float = 0.9, iters: int = 14, tol: float = 0.005) -> tuple[float, int, list]:
    """The uniform ratio whose MACs come closest to ``target`` without exceeding it by more than 1%."""
    lo, tried = 0.0, []
    for _ in range(iters):
        mid = (lo + hi) / 2
        m = macs_at(mid)
        tried.append((mid, m))
        if m > target:
            lo = mid
        else:
            hi = mid
        if abs(m / target - 1) < tol:
            break
    ok = [t for t in tried if t[1] <= target * 1.01] or tried
    r, m = min(ok, key=lambda t: abs(t[1] - target))
    return r, m, tried


def tp_prune(model: Transfer, x: torch.Tensor, ratio: float, round_to: int) -> None:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[model.classifier],
                                       round_to=round_to if round_to > 1 else None)
    pruner.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=10000, help="training images: head fit and recovery")
    ap.add_argument("--val", type=int, default=1024, help="held-out training images: calibration, choices")
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--refit", type=int, default=1000,
                    help="training images for the warm start (BatchNorm statistics, head refit)")
    ap.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                    help="recover from the pruned network as it is (the warm start is still measured)")
    ap.add_argument("--calib", type=int, default=512, help="validation images for the data-driven criteria")
    ap.add_argument("--candidates", type=int, default=24, help="ratio profiles the search tries per budget")
    ap.add_argument("--spread", type=float, default=0.5, help="the search's log-normal spread of per-group factors")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--budgets", type=float, nargs="*", default=[2.0, 3.0], help="MACs reduction factors")
    ap.add_argument("--criteria", nargs="*", default=["l2", "apoz", "taylor", "act_mean", "act_var"])
    ap.add_argument("--round-to", type=int, default=1,
                    help="keep channels in multiples of this (every method); 8 makes uniform ratios jump past the "
                         "budgets (e.g. x0.380 -> x0.288 at ratio 0.5), so budgets are not met within 1%%")
    ap.add_argument("--pretrain-epochs", type=int, default=2,
                    help="epochs of plain fine-tuning of the whole unpruned network before pruning (0: prune the "
                         "head-only network)")
    ap.add_argument("--epochs", type=int, default=2, help="recovery epochs, the same for every method")
    ap.add_argument("--steps", type=int, default=2,
                    help="prune steps of the iterative recipe; the recovery epochs are split evenly between them")
    ap.add_argument("--depth-blocks", type=int, nargs="*", default=[],
                    help="also prune depth first: for each n, remove the n blocks of least influence on the "
                         "calibration images (prunekit.blocks.prune_blocks_), then width with the best criterion "
                         "to the budget (rows pk_<best>_depth<n>)")
    ap.add_argument("--inner", action="store_true",
                    help="also prune only the widths inside the blocks, residual streams kept "
                         "(prunekit.streams.keep_residual_streams), best criterion, to the budget (row pk_<best>_inner)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only the pruned rows whose method name contains one of these (development runs; the "
                         "summary is left out)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; 1 is far faster (x10 and more) when other jobs share the cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small subsets, 1 epoch, 3 search candidates")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.train, args.val, args.test, args.refit, args.calib = 768, 256, 500, 256, 128
        args.candidates, args.epochs, args.criteria = 3, 2, ["l2", "apoz"]
    if args.epochs % args.steps:
        ap.error(f"--epochs ({args.epochs}) must be a multiple of --steps ({args.steps})")
    args.out = args.out or ("equal_budget_accuracy_quick" if args.quick else "equal_budget_accuracy")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    clock = Clock()

    # ---- data: train / validation (held out from train) / test, one seeded permutation each
    tr_x, tr_y = fm.load("train")
    te_x, te_y = fm.load("test")
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(tr_x), generator=g).numpy()
    train_idx, val_idx = perm[:args.train], perm[args.train:args.train + args.val]
    test_idx = torch.randperm(len(te_x), generator=g).numpy()[:args.test]
    x_train, y_train = fm.to_rgb_batch(tr_x[train_idx], args.size), torch.from_numpy(tr_y[train_idx])
    x_val, y_val = fm.to_rgb_batch(tr_x[val_idx], args.size), torch.from_numpy(tr_y[val_idx])
    x_test, y_test = fm.to_rgb_batch(te_x[test_idx], args.size), torch.from_numpy(te_y[test_idx])
    x_refit, y_refit = x_train[:args.refit], y_train[:args.refit]
    calib = [(x_val[i:i + 64], y_val[i:i + 64]) for i in range(0, min(args.calib, len(x_val)), 64)]
    x = x_test[:1]  # (1, 3, size, size): tracing and MAC counting for every method

    # ---- the demo's network: ImageNet features, new head fit on the frozen features, then (the model a user
    # brings to pruning) the whole network fine-tuned on the task
    mobilenet, _ = demo_model("mobilenet_v2")
    weights = getattr(mobilenet, "_prunekit_weights", "random init (offline weights not installed)")
    head_only = Transfer(mobilenet.features).eval()
    t0 = time.perf_counter()
    fit_linear_head(head_only.classifier, extract_features(head_only.backbone, batches(x_train)), y_train)
    head_s = time.perf_counter() - t0
    base_counts = prunekit.count(head_only, x)
    clock.say(f"data {len(x_train)} train / {len(x_val)} val / {len(x_test)} test at {args.size}x{args.size}; "
              f"head fit in {head_s:.0f}s; {base_counts.macs:,} MACs, {base_counts.params:,} params")

    def loader() -> DataLoader:
        return DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch, shuffle=True,
                          generator=torch.Generator().manual_seed(args.seed))

    rows: list[dict] = []
    head_acc = accuracy(head_only, x_test, y_test)
    rows.append({"budget": 1.0, "method": "unpruned_head_only", "criterion": "-", "acc_pruned": head_acc,
                 "acc_refit": head_acc, "acc": head_acc, "macs_ratio": 1.0, "params_ratio": 1.0,
                 "search_s": 0.0, "prune_s": 0.0, "recovery_s": 0.0})
    if args.pretrain_epochs:
        base = warm_copy(head_only, x_refit, y_refit)
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        train(base, loader(), TrainConfig(epochs=args.pretrain_epochs, lr=args.lr, progress=False))
        pre_s = time.perf_counter() - t
        base.eval()
        pre_acc = accuracy(base, x_test, y_test)
        rows.append({"budget": 1.0, "method": "unpruned_trained", "criterion": "-", "acc_pruned": pre_acc,
                     "acc_refit": pre_acc, "acc": pre_acc, "macs_ratio": 1.0, "params_ratio": 1.0,
                     "search_s": 0.0, "prune_s": 0.0, "recovery_s": pre_s})
        clock.say(f"unpruned: head only {head_acc:.4f}; trained ({args.pretrain_epochs} epochs, cross-entropy) "
                  f"{pre_acc:.4f} ({pre_s:.0f}s): the network every method prunes, and the teacher")
    else:
        base = head_only
    teacher = copy.deepcopy(base).eval()  # the unpruned network everything is pruned from

    def recover(net: nn.Module, epochs: int | None = None) -> tuple[float, float | None]:
        """The one recovery every network gets: same data order, optimizer, lr, teacher. With
        ``epochs`` (a share of the budget, for the iterative recipe) it does not test."""
        torch.manual_seed(args.seed)
        t = time.perf_counter()
        train(net, loader(), TrainConfig(epochs=epochs or args.epochs, lr=args.lr, progress=False),
              distill=Distillation(copy.deepcopy(teacher), temperature=args.temperature, alpha=args.alpha))
        return time.perf_counter() - t, accuracy(net, x_test, y_test) if epochs is None else None

    base_acc = accuracy(base, x_test, y_test)
    def wanted(method: str) -> bool:
        return args.only is None or any(o in method for o in args.only)

    if wanted("unpruned_recovered"):
        ft = warm_copy(base, x_refit, y_refit)
        warm_acc = accuracy(ft, x_test, y_test)
        rec_s, ft_acc = recover(ft if args.warm_start else copy.deepcopy(base))
        rows.append({"budget": 1.0, "method": "unpruned_recovered", "criterion": "-", "acc_pruned": base_acc,
                     "acc_refit": warm_acc, "acc": ft_acc, "macs_ratio": 1.0, "params_ratio": 1.0,
                     "search_s": 0.0, "prune_s": 0.0, "recovery_s": rec_s})
        clock.say(f"unpruned with the recovery budget too: warm start {warm_acc:.4f}, recovered {ft_acc:.4f} ({rec_s:.0f}s)")
        del ft

    def make_criterion(name: str) -> Criterion:
        return {"apoz": lambda: APoZCriterion(data=calib), "taylor": lambda: TaylorCriterion(data=calib),
                "act_mean": lambda: ActivationMeanCriterion(data=calib),
                "act_var": lambda: ActivationVarCriterion(data=calib),
                "bn_scale": BNScaleCriterion}.get(name, lambda: get_criterion(name))()

    def pk_macs(ratio: float) -> int:
        return prunekit.prune_(copy.deepcopy(base), x, ratio=ratio, round_to=args.round_to).after.macs

    def tp_macs(ratio: float) -> int:
        m = copy.deepcopy(base)
        tp_prune(m, x, ratio, args.round_to)
        return prunekit.count(m, x).macs

    # ---- per budget: the uniform ratios (bisection) and every candidate criterion on validation
    per_budget: dict[float, dict] = {}
    for b in args.budgets:
        target = int(base_counts.macs / b)
        t = time.perf_counter()
        pk_ratio, pk_m, pk_tried = bisect(pk_macs, target)
        pk_search = time.perf_counter() - t
        t = time.perf_counter()
        tp_ratio, tp_m, tp_tried = bisect(tp_macs, target)
        tp_search = time.perf_counter() - t
        clock.say(f"budget 1/{b:g} ({target:,} MACs): prunekit uniform ratio {pk_ratio:.4f} -> x"
                  f"{pk_m / base_counts.macs:.4f} ({len(pk_tried)} tries, {pk_search:.0f}s); Torch-Pruning ratio "
                  f"{tp_ratio:.4f} -> x{tp_m / base_counts.macs:.4f} ({len(tp_tried)} tries, {tp_search:.0f}s)")
        cand = {}
        for name in args.criteria:
            net = copy.deepcopy(base)
            t = time.perf_counter()
            r = prunekit.prune_(net, x, ratio=pk_ratio, round_to=args.round_to, criterion=make_criterion(name))
            prune_s = time.perf_counter() - t
            cand[name] = {"net": net, "prune_s": prune_s, "macs_ratio": r.macs_ratio, "params_ratio": r.params_ratio,
                          "val_refit": accuracy(warm_copy(net, x_refit, y_refit), x_val, y_val)}
            clock.say(f"  criterion {name:8s}: validation accuracy after the warm start {cand[name]['val_refit']:.4f}")
        per_budget[b] = {"target": target, "pk_ratio": pk_ratio, "pk_search": pk_search, "pk_tried": pk_tried,
                         "tp_ratio": tp_ratio, "tp_search": tp_search, "tp_tried": tp_tried, "cand": cand}

    # one criterion for the prunekit recipe: best mean validation accuracy over the budgets
    mean_val = {n: sum(per_budget[b]["cand"][n]["val_refit"] for b in args.budgets) / len(args.budgets)
                for n in args.criteria}
    best = max(args.criteria, key=lambda n: mean_val[n])
    clock.say(f"best criterion on validation: {best} ({mean_val[best]:.4f} mean over the budgets)")

    def val_score(m: nn.Module) -> float:
        """The search's score: minus the validation cross-entropy after the warm start."""
        return neg_nll(warm_copy(m, x_refit, y_refit), x_val, y_val)

    def iterative_row(b: float, crit_name: str, info: dict) -> dict:
        """prunekit's recipe: ``--steps`` prunes to the budget (geometric in MACs, re-scored on the
        recovered network each time), each followed by the warm start and an equal share of the
        recovery epochs -- the same epochs, data and order as every other row, cut into pieces."""
        net, parts = copy.deepcopy(base), []
        warms: list[float] = []
        pruned: list[float] = []

        def recover_part(m: nn.Module, k: int) -> None:
            pruned.append(accuracy(m, x_test, y_test))
            if args.warm_start:
                warm_(m, x_refit, y_refit)
            warms.append(accuracy(m, x_test, y_test))
            parts.append(recover(m, args.epochs // args.steps)[0])
            clock.say(f"  1/{b:g} iterative step {k}/{args.steps}: MACs x{prunekit.count(m, x).macs / base_counts.macs:.4f}, "
                      f"warm start {warms[-1]:.4f}, recovered {accuracy(m, x_test, y_test):.4f} ({parts[-1]:.0f}s)")

        t = time.perf_counter()
        steps = iterative_prune_(net, x, macs=1 / b, steps=args.steps, round_to=args.round_to,
                                 criterion=make_criterion(crit_name), recover=recover_part)
        total = time.perf_counter() - t
        c = prunekit.count(net, x)
        prune_s = total - sum(parts)
        row = {"budget": b, "method": f"pk_{crit_name}_iterative", "criterion": crit_name, **info,
               "search_s": 0.0, "prune_s": prune_s, "macs_ratio": c.macs / base_counts.macs,
               "params_ratio": c.params / base_counts.params,
               "step_macs_ratios": [s.result.after.macs / base_counts.macs for s in steps],
               "step_ratios": [s.result.config.ratio for s in steps], "step_pruned_acc": pruned,
               "step_warm_acc": warms, "acc_pruned": pruned[-1], "acc_refit": warms[-1],
               "acc": accuracy(net, x_test, y_test), "recovery_s": sum(parts)}
        clock.say(f"1/{b:g} {row['method']:22s} MACs x{row['macs_ratio']:.4f} params x{row['params_ratio']:.3f}: "
                  f"last step pruned {pruned[-1]:.4f}, warm start {warms[-1]:.4f}, recovered {row['acc']:.4f} "
                  f"({sum(parts):.0f}s)")
        return row

    def run_methods(b: float, methods: list) -> None:
        """Warm start and recover every pruned network of one budget, the same way; one row each."""
        for method, crit, net, info in methods:
            if method.endswith("_iterative"):
                rows.append(iterative_row(b, crit, info))
                continue
            info["acc_pruned"] = accuracy(net, x_test, y_test)
            refit = warm_copy(net, x_refit, y_refit)
            acc_refit = accuracy(refit, x_test, y_test)
            rec_s, acc = recover(refit if args.warm_start else net)
            rows.append({"budget": b, "method": method, "criterion": crit, **info, "acc_refit": acc_refit,
                         "acc": acc, "recovery_s": rec_s})
            clock.say(f"1/{b:g} {method:22s} MACs x{info['macs_ratio']:.4f} params x{info['params_ratio']:.3f}: "
                      f"pruned {info['acc_pruned']:.4f}, warm start {acc_refit:.4f}, recovered {acc:.4f} "
                      f"({rec_s:.0f}s)")

    # ---- prune, warm start, recover: every method the same
    budget_cfgs = {}
    for b in args.budgets:
        pb = per_budget[b]
        cand = pb["cand"]
        methods = []
        net = copy.deepcopy(base)
        t = time.perf_counter()
        tp_prune(net, x, pb["tp_ratio"], args.round_to)
        tp_s = time.perf_counter() - t
        c = prunekit.count(net, x)
        methods.append(("tp_l2_uniform", "l2 (Torch-Pruning)", net, {
            "ratio": pb["tp_ratio"], "search_s": pb["tp_search"], "prune_s": tp_s,
            "macs_ratio": c.macs / base_counts.macs, "params_ratio": c.params / base_counts.params}))
        for name in dict.fromkeys(["l2", best]):
            cd = cand[name]
            methods.append((f"pk_{name}_uniform", name, cd["net"], {
                "ratio": pb["pk_ratio"], "search_s": pb["pk_search"], "prune_s": cd["prune_s"],
                "macs_ratio": cd["macs_ratio"], "params_ratio": cd["params_ratio"]}))
        for n in args.depth_blocks:
            net = copy.deepcopy(base)
            t = time.perf_counter()
            scores = prune_blocks_(net, x, [xb for xb, _ in calib], n)
            depth_macs = prunekit.count(net, x).macs
            r = prunekit.prune_(net, x, macs=min(1.0, pb["target"] / depth_macs), round_to=args.round_to,
                                criterion=make_criterion(best))
            c = prunekit.count(net, x)
            methods.append((f"pk_{best}_depth{n}", best, net, {
                "ratio": r.config.ratio, "search_s": 0.0, "prune_s": time.perf_counter() - t,
                "blocks_removed": sorted(sorted(scores, key=scores.get)[:n]),
                "macs_after_depth": depth_macs / base_counts.macs,
                "macs_ratio": c.macs / base_counts.macs, "params_ratio": c.params / base_counts.params}))
        if args.inner:
            net = copy.deepcopy(base)
            t = time.perf_counter()
            keep = keep_residual_streams(net, prunekit.trace(net, x).groups())
            r = prunekit.prune_(net, x, macs=1 / b, round_to=args.round_to, criterion=make_criterion(best), ratios=keep)
            methods.append((f"pk_{best}_inner", best, net, {
                "ratio": r.config.ratio, "search_s": 0.0, "prune_s": time.perf_counter() - t,
                "streams_kept": [k for k, _ in keep], "macs_ratio": r.macs_ratio, "params_ratio": r.params_ratio}))
        methods.append((f"pk_{best}_iterative", best, None, {"ratio": f"{args.steps} steps"}))
        if not wanted(f"pk_{best}_search"):
            run_methods(b, [m for m in methods if wanted(m[0])])
            continue
        t = time.perf_counter()
        crit = make_criterion(best)
        found = search_ratios(base, x, val_score, macs=1 / b, candidates=args.candidates, spread=args.spread,
                              config=PruneConfig(round_to=args.round_to), criterion=crit, seed=args.seed,
                              progress=False)
        search_s = time.perf_counter() - t
        cfg = found.config
        budget_cfgs[b] = {**found.to_dict(), "config": replace(cfg, criterion=best).to_dict()}
        scored = [c["score"] for c in found.candidates if c["score"] is not None]
        clock.say(f"1/{b:g} search: {len(scored)} candidates in {search_s:.0f}s, validation -NLL uniform "
                  f"{found.uniform_score:.4f}, best {found.score:.4f} (median {sorted(scored)[len(scored) // 2]:.4f})")
        net = copy.deepcopy(base)
        t = time.perf_counter()
        r = prunekit.prune_(net, x, cfg, criterion=crit)
        prune_s = time.perf_counter() - t
        methods.append((f"pk_{best}_search", best, net, {
            "ratio": "per group", "search_s": search_s, "prune_s": prune_s,
            "macs_ratio": r.macs_ratio, "params_ratio": r.params_ratio, "ratios": [list(kv) for kv in cfg.ratios],
            "val_score": found.score, "val_score_uniform": found.uniform_score}))
        run_methods(b, [m for m in methods if wanted(m[0])])
        for cd in cand.values():
            cd.pop("net", None)
        del methods, net

    meta = {"weights": weights, "image_size": args.size, "train": args.train, "val": args.val, "test": args.test,
            "refit": args.refit, "warm_start": args.warm_start, "calib": args.calib, "candidates": args.candidates,
            "spread": args.spread, "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs,
            "batch": args.batch, "lr": args.lr, "temperature": args.temperature, "alpha": args.alpha,
            "round_to": args.round_to, "steps": args.steps, "depth_blocks": args.depth_blocks, "inner": args.inner, "only": args.only, "seed": args.seed, "quick": args.quick, "threads": args.threads,
            "torch": torch.__version__, "torch_pruning": _tp_version(), "machine": platform.machine(),
            "base_macs": base_counts.macs, "base_params": base_counts.params, "head_fit_s": head_s,
            "best_criterion": best, "minutes": (time.time() - clock.t0) / 60}
    criteria = [{"budget": b, "criterion": n, "val_refit": cd["val_refit"], "prune_s": cd["prune_s"]}
                for b in args.budgets for n, cd in per_budget[b]["cand"].items()]
    searches = {str(b): {"target_macs": pb["target"], "pk_tried": pb["pk_tried"], "tp_tried": pb["tp_tried"]}
                for b, pb in per_budget.items()}
    summary = _summary(rows, args.budgets, best) if args.only is None else []
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "summary": summary, "criteria_validation": criteria, "bisection": searches,
         "searches": {str(b): c for b, c in budget_cfgs.items()}}, indent=1))
    md = _markdown(meta, rows, criteria, summary)
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)


def _tp_version() -> str:
    import torch_pruning as tp

    return getattr(tp, "__version__", "?")


def _summary(rows: list[dict], budgets: list[float], best: str) -> list[str]:
    # the unpruned reference: the better of the network as trained and the same network given the recovery
    refs = {r["method"]: r["acc"] for r in rows if r["budget"] == 1.0 and r["method"] != "unpruned_head_only"}
    ref_name = max(refs, key=refs.get)
    ft = refs[ref_name]
    head = next(r for r in rows if r["method"] == "unpruned_head_only")["acc"]
    out = []
    for b in budgets:
        rs = {r["method"]: r for r in rows if r["budget"] == b}
        tp_acc = rs["tp_l2_uniform"]["acc"]
        searched, oneshot = rs[f"pk_{best}_search"], rs[f"pk_{best}_uniform"]
        name = f"pk_{best}_iterative" if f"pk_{best}_iterative" in rs else f"pk_{best}_uniform"
        recipe = rs[name]
        acc, s_acc, u_acc = recipe["acc"], searched["acc"], oneshot["acc"]
        pk = {m: r for m, r in rs.items() if m.startswith("pk_")}
        top = max(pk, key=lambda m: pk[m]["acc"])
        out.append(
            f"1/{b:g} MACs: prunekit's recipe `{name}` {acc:.4f} vs Torch-Pruning {tp_acc:.4f} "
            f"({100 * (acc - tp_acc):+.2f} points; {'at least as accurate' if acc >= tp_acc else 'LESS accurate'}); "
            f"vs unpruned (`{ref_name}`, the stricter reference) {ft:.4f}: {100 * (acc - ft):+.2f} points"
            f"{' (within 1 point)' if acc >= ft - 0.01 else ' (NOT within 1 point)'}; "
            f"vs unpruned head-only {head:.4f}: {100 * (acc - head):+.2f} points. "
            f"One-shot `pk_{best}_uniform` {u_acc:.4f} ({100 * (u_acc - tp_acc):+.2f} vs Torch-Pruning). "
            f"Searched ratios vs uniform (one-shot, {best}): {s_acc:.4f} vs {u_acc:.4f} "
            f"({100 * (s_acc - u_acc):+.2f} points; MACs x{searched['macs_ratio']:.4f} vs x{oneshot['macs_ratio']:.4f}; "
            f"validation -NLL {searched['val_score']:.4f} vs {searched['val_score_uniform']:.4f}). "
            f"Best prunekit row after the fact: `{top}` {pk[top]['acc']:.4f}")
    return out


def _markdown(meta: dict, rows: list[dict], criteria: list[dict], summary: list[str]) -> str:
    out = ["# Accuracy at equal budget: MobileNetV2 -> Fashion-MNIST, prunekit vs Torch-Pruning", "",
           f"Network: the demo's (MobileNetV2 features, {meta['weights']}; avg-pool; new 10-class head fit with "
           f"L-BFGS on the frozen features), {meta['image_size']}x{meta['image_size']} inputs, "
           f"{meta['base_macs']:,} MACs, {meta['base_params']:,} params. Splits (seed {meta['seed']}): "
           f"{meta['train']} training images (head fit, recovery), {meta['val']} held-out training images "
           f"(calibration {meta['calib']}, criterion choice, ratio search), "
           f"{meta['test']} test images (the accuracies below, nothing else).", "",
           "Identical recovery for every row (the unpruned network's fine-tuning too): "
           + (f"a warm start (BatchNorm statistics re-estimated and the head refit on {meta['refit']} "
              "training images), then " if meta["warm_start"] else "")
           + f"{meta['epochs']} epoch(s) over the {meta['train']} training images, batch {meta['batch']}, same order, "
           f"AdamW lr {meta['lr']} cosine, distillation from the unpruned network (T={meta['temperature']}, "
           f"alpha={meta['alpha']}). The unpruned network: "
           + (f"the head-only network fine-tuned end to end for {meta['pretrain_epochs']} epoch(s) (warm start, then "
              f"plain cross-entropy, same optimizer) -- `unpruned_trained`; every method prunes it and it is the "
              f"teacher. `unpruned_recovered` is it given the same recovery as the pruned networks."
              if meta["pretrain_epochs"] else "the head-only network.")
           + f" Channels kept in multiples of "
           f"{meta['round_to']} for every method; MACs counted with `prunekit.count` on 1x3x{meta['image_size']}x"
           f"{meta['image_size']} for every method. 'acc pruned' is right after pruning (head not refit), 'acc warm' "
           f"after the warm start, before training. Search s: bisection on the ratio (uniform), `search_ratios` "
           f"({meta['candidates']} candidates, spread {meta['spread']}, each warm-started and scored by minus the "
           f"validation cross-entropy; search). Best criterion by validation accuracy after the warm start: "
           f"**{meta['best_criterion']}**. " + (f"Development run (`--only {' '.join(meta['only'])}`): no recipe "
           "declared, no summary. " if meta.get("only") else "prunekit's recipe, declared before the run: "
           f"`pk_<best>_iterative` "
           f"({meta.get('steps', 2)} prunes to the budget, geometric in MACs, each followed by the warm start and "
           f"1/{meta.get('steps', 2)} of the recovery epochs; its 'acc pruned' and 'acc warm' are after the last "
           f"prune). ")
           + f"`pk_<best>_depth<n>`: the n blocks of least influence removed, then width to the budget. "
           f"torch {meta['torch']}, "
           f"Torch-Pruning {meta['torch_pruning']}, {meta['threads']} torch thread(s), {meta['minutes']:.1f} min"
           f"{' (--quick: development sizes, not the result)' if meta['quick'] else ''}.", "",
           "| budget | method | ratio | MACs ratio | params ratio | acc pruned | acc warm | acc recovered | "
           "search s | prune s | recovery s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ratio", "-")
        ratio = f"{ratio:.4f}" if isinstance(ratio, float) else ratio
        out.append(f"| {'-' if r['budget'] == 1 else '1/' + format(r['budget'], 'g')} | {r['method']} | {ratio} | "
                   f"{r['macs_ratio']:.4f} | {r['params_ratio']:.3f} | {r['acc_pruned']:.4f} | {r['acc_refit']:.4f} | "
                   f"**{r['acc']:.4f}** | {r['search_s']:.0f} | {r['prune_s']:.1f} | {r['recovery_s']:.0f} |")
    n, p = meta["test"], rows[1]["acc"]
    out += ["", f"One test accuracy near {p:.2f} on {n} images has a standard error of about "
                f"{100 * (p * (1 - p) / n) ** 0.5:.1f} points; differences between rows (same images) are "
                "somewhat tighter, but a difference under 1 point is within noise."]
    out += ["", "## Summary", ""] + [f"- {s}" for s in summary]
    out += ["", "## Criterion choice (validation split, uniform ratio, warm start only, no fine-tuning)", "",
            "| budget | criterion | val accuracy after the warm start | prune s |", "|---|---|---|---|"]
    for c in criteria:
        out.append(f"| 1/{c['budget']:g} | {c['criterion']} | {c['val_refit']:.4f} | {c['prune_s']:.1f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
