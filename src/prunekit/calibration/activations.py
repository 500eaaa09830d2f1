"""Streaming per-unit activation statistics, mapped onto the units of the traced graph.

The tracer records every call of an activation, normalization or linear/conv op as a *site*,
with the labels of its output's prunable dims. A calibration run repeats the forward under
:class:`SiteRecorder`, which counts the same ops in the same order and folds each site's
output into per-channel running sums (count, sum |a|, sum a, sum a^2, max |a|, min |a|,
zeros). Memory is a few numbers per channel, whatever the amount of data.

Because site labels live in the same label space as the groups, a unit's statistics are
found exactly: a channel's ReLU output carries the label of the conv channel that made it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..devices import device_of, move_to
from ..graph.registry import op_name
from ..graph.tracer import SITE_KINDS, DependencyGraph, Site

KIND_ORDER = ("activation", "norm", "linear")  # preferred site kind for a unit's statistics
STATS = ("mean", "max", "min", "var", "apoz")


@dataclass
class ChannelStats:
    """Running statistics of one dim of one site's output, per index of that dim."""

    size: int
    count: int = 0  # elements seen per channel
    abs_sum: torch.Tensor = field(init=False)
    total: torch.Tensor = field(init=False)
    sq_sum: torch.Tensor = field(init=False)
    abs_max: torch.Tensor = field(init=False)
    abs_min: torch.Tensor = field(init=False)
    zeros: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        z = lambda: torch.zeros(self.size, dtype=torch.float64)  # noqa: E731
        self.abs_sum, self.total, self.sq_sum, self.zeros = z(), z(), z(), z()
        self.abs_max = torch.zeros(self.size, dtype=torch.float64)
        self.abs_min = torch.full((self.size,), float("inf"), dtype=torch.float64)

    def update(self, x: torch.Tensor, dim: int) -> None:
        x = x.detach().movedim(dim, -1).reshape(-1, self.size).double()  # (elements, channels)
        a = x.abs()
        self.count += x.shape[0]
        self.abs_sum += a.sum(0).cpu()
        self.total += x.sum(0).cpu()
        self.sq_sum += (x * x).sum(0).cpu()
        self.abs_max = torch.maximum(self.abs_max, a.amax(0).cpu())
        self.abs_min = torch.minimum(self.abs_min, a.amin(0).cpu())
        self.zeros += (x == 0).sum(0).cpu().double()

    def stat(self, name: str) -> torch.Tensor:
        """``mean``: mean |a|; ``max``/``min``: max/min |a|; ``var``: variance of a;
        ``apoz``: average percentage of zeros; ``keep_apoz``: 1 - apoz (higher = keep)."""
        n = max(self.count, 1)
        if name == "mean":
            return self.abs_sum / n
        if name == "max":
            return self.abs_max
        if name == "min":
            return self.abs_min
        if name == "var":
            mean = self.total / n
            return (self.sq_sum / n - mean * mean).clamp_min(0)
        if name == "apoz":
            return self.zeros / n
        if name == "const":  # the value of a constant unit (meaningful where var == 0)
            return self.total / n
        raise KeyError(f"unknown statistic {name!r}; known: {STATS}")


class SiteRecorder(TorchFunctionMode):
    """Counts site ops in call order (as the tracer did) and updates their statistics."""

    def __init__(self, sites: list[Site], stats: dict[tuple[int, int], ChannelStats]):
        super().__init__()
        self.sites, self.stats, self.k = sites, stats, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if op_name(func) in SITE_KINDS:
            k, self.k = self.k, self.k + 1
            if k < len(self.sites) and isinstance(out, torch.Tensor):
                for d, labels in self.sites[k].labels.items():
                    if d < out.dim() and out.shape[d] == labels.size:
                        st = self.stats.get((k, d))
                        if st is None:
                            st = self.stats[(k, d)] = ChannelStats(labels.size)
                        st.update(out, d)
        return out


def _default_forward(model: nn.Module, batch: Any) -> Any:
    """The model on a batch's inputs (its first element for ``(inputs, target)``), moved to the model's device."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    x = move_to(x, device_of(model))
    if isinstance(x, dict):
        return model(**x)
    return model(x)


@dataclass
class ActivationStats:
    """Statistics per (site, dim) of one calibration, in the label space of ``graph``."""

    graph: DependencyGraph
    stats: dict[tuple[int, int], ChannelStats]
    batches: int

    def unit_values(self, group, stat: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit of ``group``: the statistic, averaged over the unit's channels at the most
        direct site kind available (activation > norm > linear output), and which kind was used
        (index into :data:`KIND_ORDER`, -1 where the unit has no site: value NaN)."""
        res = self.graph._resolver
        n = len(group)
        unit_of = np.full(len(res.root), -1, dtype=np.int64)
        for i, u in enumerate(group.units):
            unit_of[list(u)] = i
        value = torch.full((n,), float("nan"), dtype=torch.float64)
        kind_used = torch.full((n,), -1, dtype=torch.long)
        for kind_idx, kind in enumerate(KIND_ORDER):
            sums = np.zeros(n)
            counts = np.zeros(n)
            for (k, d), st in self.stats.items():
                site = self.graph.sites[k]
                if site.kind != kind:
                    continue
                roots = res.root[site.labels[d]]
                units = unit_of[roots]
                hit = units >= 0
                if not hit.any():
                    continue
                vals = st.stat(stat).numpy()
                if stat in ("max",):
                    np.maximum.at(sums, units[hit], vals[hit])
                    counts[units[hit]] = 1
                elif stat == "min":
                    first = counts[units[hit]] == 0
                    sums[units[hit][first]] = np.inf
                    np.minimum.at(sums, units[hit], vals[hit])
                    counts[units[hit]] = 1
                else:
                    np.add.at(sums, units[hit], vals[hit])
                    np.add.at(counts, units[hit], 1)
            fill = (kind_used < 0).numpy() & (counts > 0)
            value[torch.from_numpy(fill)] = torch.from_numpy(sums[fill] / counts[fill])
            kind_used[torch.from_numpy(fill)] = kind_idx
        return value, kind_used


def collect_activation_stats(model: nn.Module, graph: DependencyGraph, data: Iterable[Any], *,
                             max_batches: int | None = None,
                             forward: Callable[[nn.Module, Any], Any] = _default_forward) -> ActivationStats:
    """Run ``model`` (eval, no grad) on ``data`` and collect per-unit statistics at ``graph``'s sites.

    ``data`` yields batches: a tensor, an ``(inputs, targets)`` pair, or a dict of keyword
    inputs; ``forward(model, batch)`` can say how to call the model otherwise.
    """
    stats: dict[tuple[int, int], ChannelStats] = {}
    was = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in data:
                if max_batches is not None and n >= max_batches:
                    break
                recorder = SiteRecorder(graph.sites, stats)
                with recorder:
                    forward(model, batch)
                if recorder.k != len(graph.sites):
                    raise RuntimeError(f"the calibration forward made {recorder.k} site calls, the trace "
                                       f"{len(graph.sites)}: the model's control flow depends on its input")
                n += 1
    finally:
        model.train(was)
    if n == 0:
        raise ValueError("no calibration batches")
    return ActivationStats(graph, stats, n)
