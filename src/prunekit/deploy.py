"""The deployment form of a (pruned) model: exact rewrites that make its saving show up as latency.

Pruning halves a convolution's MACs, but on a CPU the ops around it — batch norm, the layout
reorders oneDNN does for NCHW tensors — scale with the channel count, not its square, so the
latency falls less than the MACs. :func:`fold_batchnorm_` folds every eval-mode batch norm into
the convolution or linear layer that alone feeds it (the BN becomes ``nn.Identity``);
:func:`optimize_for_inference_` does that and moves 4-D weights to channels-last, oneDNN's
native layout (feed it channels-last inputs: ``x.to(memory_format=torch.channels_last)``).
Both check the outputs on the example inputs and leave the model as it was if they differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights
from torch.overrides import TorchFunctionMode

from . import compat
from .errors import PrunekitError
from .graph.tracer import as_inputs, tensors_in
from .graph.walk import eval_mode

_PRODUCERS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                        "linear"})


@dataclass
class FoldReport:
    """Which batch norms were folded into which layer, and which were kept (with the reason)."""

    folded: list[tuple[str, str]] = field(default_factory=list)  # (producer path, batch-norm path)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (batch-norm path, reason)

    def __str__(self) -> str:
        return f"folded {len(self.folded)} batch norms, kept {len(self.kept)}"


class _Recorder(TorchFunctionMode):
    """Records, for one forward: which layer produced each tensor, how often each tensor is used
    by a tensor-returning op, and the input of each batch-norm call."""

    def __init__(self, weight_owner: Mapping[int, str], stats_owner: Mapping[int, str]):
        super().__init__()
        self.weight_owner, self.stats_owner = weight_owner, stats_owner
        self.producer: dict[int, str] = {}  # id(tensor) -> layer path
        self.uses: dict[int, int] = {}
        self.calls: dict[str, int] = {}  # layer or BN path -> number of calls
        self.bn_input: dict[str, tuple[int, bool]] = {}  # BN path -> (id(input), training)
        self.keep: list[Any] = []  # keeps recorded tensors alive so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = tensors_in(out)
        if not outs:
            return out
        ins = tensors_in(args)
        tensors_in(kwargs, 1, ins)
        for t in ins:
            self.uses[id(t)] = self.uses.get(id(t), 0) + 1
        self.keep.append((ins, outs))
        name = getattr(func, "__name__", "")
        if name in _PRODUCERS and len(ins) > 1 and id(ins[1]) in self.weight_owner:
            path = self.weight_owner[id(ins[1])]
            self.calls[path] = self.calls.get(path, 0) + 1
            self.producer[id(outs[0])] = path
        elif name == "batch_norm" and len(args) > 1 and id(args[1]) in self.stats_owner:
            path = self.stats_owner[id(args[1])]
            self.calls[path] = self.calls.get(path, 0) + 1
            training = args[5] if len(args) > 5 else kwargs.get("training", False)
            self.bn_input[path] = (id(args[0]), bool(training))
        return out


def _run(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any]) -> Any:
    with torch.no_grad():
        return model(*inputs, **kwargs)


def _same(a: Any, b: Any, rtol: float) -> bool:
    ta, tb = tensors_in(a), tensors_in(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return False
        if x.is_floating_point():
            scale = float(x.abs().max()) if x.numel() else 0.0
            if not torch.allclose(x, y, rtol=rtol, atol=rtol * max(scale, 1e-12)):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def fold_batchnorm_(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None, *,
                    rtol: float = 1e-4) -> FoldReport:
    """Fold each eval-mode batch norm into the conv/linear layer whose output only it reads.

    One forward on ``example_inputs`` finds the pairs: the layer is called once, its output feeds
    nothing but the batch norm, and the batch norm (called once, with running statistics) reads
    nothing else. Its scale and shift go into the layer's weight and bias
    (``torch.nn.utils.fusion``) and the batch norm becomes ``nn.Identity``. The outputs are then
    compared with the unfolded model's (relative tolerance ``rtol``); if they differ, or anything
    fails, the model is restored and :class:`~prunekit.errors.PrunekitError` raised. For inference:
    a folded model has no batch norm left to train.

    >>> import torchvision
    >>> m = torchvision.models.resnet18().eval()
    >>> report = fold_batchnorm_(m, torch.randn(1, 3, 64, 64))
    >>> len(report.folded), any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    (20, False)
    """
    inputs = as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    named = dict(model.named_modules())
    weight_owner = {id(m.weight): p for p, m in named.items()
                    if isinstance(m, (compat.CONV, nn.Linear)) and isinstance(m.weight, torch.Tensor)}
    stats_owner = {id(m.running_mean): p for p, m in named.items()
                   if isinstance(m, compat.BATCH_NORM) and m.running_mean is not None}
    report = FoldReport()
    if not stats_owner:
        return report
    modules = list(named.values())
    with eval_mode(modules):
        rec = _Recorder(weight_owner, stats_owner)
        with rec:
            reference = _run(model, tuple(inputs), kwargs)
        pairs = []
        for bn_path, (x_id, training) in rec.bn_input.items():
            layer = rec.producer.get(x_id)
            reason = ("not called once" if rec.calls[bn_path] != 1 else "in training mode" if training
                      else "its input is not a conv/linear output" if layer is None
                      else f"{layer} is called more than once" if rec.calls[layer] != 1
                      else f"{layer}'s output is also read elsewhere" if rec.uses.get(x_id, 0) != 1 else "")
            if reason:
                report.kept.append((bn_path, reason))
            else:
                pairs.append((layer, bn_path))
        report.kept += [(p, "not called in the forward") for p in stats_owner.values() if p not in rec.bn_input]
        del rec
        paths_of: dict[int, list[str]] = {}  # a module may be registered under several paths
        for p, m in model.named_modules(remove_duplicate=False):
            paths_of.setdefault(id(m), []).append(p)
        undo = []
        try:
            for layer_path, bn_path in pairs:
                layer, bn = named[layer_path], named[bn_path]
                paths = paths_of[id(bn)]
                undo.append((layer, layer.weight, layer.bias, paths, bn))
                _fold(layer, bn)
                _put(model, paths, nn.Identity())
                report.folded.append((layer_path, bn_path))
            if pairs and not _same(reference, _run(model, tuple(inputs), kwargs), rtol):
                raise PrunekitError("folding batch norm changed the model's outputs; nothing was folded")
        except Exception:
            for layer, w, b, paths, bn in reversed(undo):
                layer.weight, layer.bias = w, b
                _put(model, paths, bn)
            raise
    return report


def _fold(layer: nn.Module, bn: compat.BATCH_NORM) -> None:
    n = bn.num_features
    w = bn.weight if bn.weight is not None else torch.ones(n, device=bn.running_mean.device)
    b = bn.bias if bn.bias is not None else torch.zeros(n, device=bn.running_mean.device)
    if isinstance(layer, nn.Linear):
        new_w, new_b = fuse_linear_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, w, b)
    else:
        transposed = isinstance(layer, compat.CONV_TRANSPOSE)
        new_w, new_b = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, w, b,
                                            transpose=transposed)
    layer.weight, layer.bias = new_w, new_b


def _put(model: nn.Module, paths: list[str], module: nn.Module) -> None:
    """Register ``module`` at every one of ``paths``."""
    for p in paths:
        parent_path, _, name = p.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, module)


def optimize_for_inference_(model: nn.Module, example_inputs: Any,
                            example_kwargs: Mapping[str, Any] | None = None) -> FoldReport:
    """Fold batch norms (:func:`fold_batchnorm_`) and, if the model has 4-D weights, move them to
    channels-last; returns the fold report. Feed the model channels-last inputs afterwards."""
    report = fold_batchnorm_(model, example_inputs, example_kwargs)
    if any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return report


__all__ = ["FoldReport", "fold_batchnorm_", "optimize_for_inference_"]
