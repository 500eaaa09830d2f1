"""Data-driven criteria: activation statistics, first-order Taylor, and BatchNorm scale."""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..graph.groups import Group
from .base import Criterion, register_criterion


class ActivationCriterion(Criterion):
    """Units scored by a statistic of their activations on calibration data.

    ``stat``: ``mean`` (mean |a|), ``max`` / ``min`` (of |a|), ``var`` (variance of a), or
    ``apoz`` (average percentage of zeros; scored as ``1 - apoz`` so that higher = keep).
    A unit's statistic is read at its activation outputs (after ReLU etc.), else at its
    normalization outputs, else at the linear/conv outputs that make it; a unit with no site
    at all scores +inf (kept). Structural only: a statistic of a unit is not a weight's score.
    """

    stat = "mean"

    def __init__(self, data: Iterable[Any] | None = None, max_batches: int | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None):
        self.data, self.max_batches, self.forward = data, max_batches, forward
        self.stats = None

    def prepare(self, model: nn.Module, graph=None) -> None:
        from ..calibration import collect_activation_stats

        if self.data is None:
            raise ValueError(f"criterion {self.name!r} needs calibration data: {type(self).__name__}(data=...)")
        if graph is None:
            raise ValueError(f"criterion {self.name!r} needs the traced graph")
        kw = {"forward": self.forward} if self.forward is not None else {}
        self.stats = collect_activation_stats(model, graph, self.data, max_batches=self.max_batches, **kw)

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        if self.stats is None:
            raise RuntimeError(f"criterion {self.name!r} was not prepared (no calibration run)")
        value, kind = self.stats.unit_values(group, self.stat)
        if self.stat == "apoz":
            value = 1.0 - value
        return torch.where(kind >= 0, value, torch.full_like(value, float("inf")))


def _activation(stat: str, doc: str) -> type[ActivationCriterion]:
    cls = type(f"Activation{stat.capitalize()}Criterion", (ActivationCriterion,), {"stat": stat, "__doc__": doc})
    return register_criterion(f"act_{stat}" if stat != "apoz" else "apoz")(cls)


ActivationMeanCriterion = _activation("mean", "Mean absolute activation of each unit (higher = keep).")
ActivationMaxCriterion = _activation("max", "Largest absolute activation of each unit.")
ActivationMinCriterion = _activation("min", "Smallest absolute activation of each unit.")
ActivationVarCriterion = _activation("var", "Variance of each unit's activation (constant units score 0).")
APoZCriterion = _activation("apoz", "Average percentage of zeros (Hu et al. 2016), scored as 1 - APoZ.")


def _canonical(name: str) -> str:
    """``fc.parametrizations.weight.original`` (a masked weight) -> ``fc.weight``."""
    return re.sub(r"(^|\.)parametrizations\.([^.]+)\.original$", r"\1\2", name)


def _default_batch(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    inputs, target = batch
    return model(inputs), target


@register_criterion("taylor")
class TaylorCriterion(Criterion):
    """First-order Taylor importance ``|w * dL/dw|``, accumulated (summed) over calibration
    batches, per weight; a unit scores the sum over all its parameter slices.

    Scores are raw loss-change estimates in one unit across all layers, so a global prune
    (``scope="global"``, ``normalize="none"``) applies one threshold shared by all layers.
    Gradients are taken in eval mode (running BatchNorm statistics), parameters unchanged.
    """

    def __init__(self, data: Iterable[Any] | None = None, loss_fn: Callable | None = None,
                 max_batches: int | None = None, step: Callable[[nn.Module, Any], tuple[Any, Any]] | None = None):
        self.data, self.max_batches = data, max_batches
        self.loss_fn = loss_fn or F.cross_entropy
        self.step = step or _default_batch
        self.acc: dict[str, torch.Tensor] = {}
        self.batches = 0

    def prepare(self, model: nn.Module, graph=None) -> None:
        if self.data is None:
            if not self.acc:
                raise ValueError("taylor needs calibration data: TaylorCriterion(data=..., loss_fn=...)")
            return
        self.acc, self.batches = {}, 0
        self.accumulate(model, self.data)

    def accumulate(self, model: nn.Module, data: Iterable[Any]) -> None:
        params = {_canonical(n): p for n, p in model.named_parameters() if p.is_floating_point()}
        names = list(params)
        was = model.training
        model.eval()
        try:
            for batch in data:
                if self.max_batches is not None and self.batches >= self.max_batches:
                    break
                out, target = self.step(model, batch)
                loss = self.loss_fn(out, target)
                grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
                with torch.no_grad():
                    for n, g in zip(names, grads):
                        if g is None:
                            continue
                        contrib = (params[n].detach() * g).abs()
                        self.acc[n] = self.acc[n] + contrib if n in self.acc else contrib
                self.batches += 1
        finally:
            model.train(was)
        if self.batches == 0:
            raise ValueError("no calibration batches")

    def score_weights_of(self, name: str, p: torch.Tensor) -> torch.Tensor:
        acc = self.acc.get(name)
        if acc is None or acc.shape != p.shape:
            return torch.zeros_like(p, dtype=torch.float32)  # no gradient reached it
        return acc.float()


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@register_criterion("bn_scale")
class BNScaleCriterion(Criterion):
    """Network slimming (Liu et al. 2017): a unit scores the |gamma| of the normalization
    layers (BatchNorm, GroupNorm, LayerNorm) in its group; groups with no normalization
    score +inf (kept). Train with an L1 penalty on gamma to make this criterion sharp."""

    def prepare(self, model: nn.Module, graph=None) -> None:
        self.norm_weights = {f"{path}.weight" if path else "weight" for path, m in model.named_modules()
                             if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None}

    def per_index(self, name: str, p: torch.Tensor, dim: int) -> torch.Tensor | None:
        return p.detach().abs().double() if name in self.norm_weights and p.dim() == 1 else None

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        if not hasattr(self, "norm_weights"):
            self.prepare(model)
        if not any(n in self.norm_weights for (n, _), _ in group.signature):
            return torch.full((len(group),), float("inf"), dtype=torch.float64)
        return super().score(model, group)
