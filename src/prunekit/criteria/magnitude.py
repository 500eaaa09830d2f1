"""Magnitude (L1/L2 norm) and random criteria for groups."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..graph.groups import Group
from .base import Criterion, register_criterion


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


@register_criterion("l2")
class MagnitudeCriterion(Criterion):
    """Norm of all parameter slices of a unit: ``(sum_i |w_i|^p)^(1/p)`` over the whole closure.

    Buffers (running statistics) are ignored. Scores are comparable inside a group.
    """

    def __init__(self, p: int = 2):
        self.p = p
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        params = self._params_of(model)
        units, keys, idx, names = group.member_rows()
        totals = torch.zeros(len(group), dtype=torch.float64)
        if units.size == 0:
            return totals
        order = np.argsort(keys, kind="stable")
        units, keys, idx = torch.from_numpy(units[order]), keys[order], torch.from_numpy(idx[order])
        bounds = np.flatnonzero(np.diff(keys)) + 1
        starts, ends = [0, *bounds.tolist()], [*bounds.tolist(), keys.size]
        with torch.no_grad():
            for a, b, k in zip(starts, ends, keys[starts].tolist()):
                name, dim = names[k]
                p = params.get(name)
                if p is None:  # buffers (running statistics) carry no importance
                    continue
                per_index = self._per_index(p, dim)
                totals.index_add_(0, units[a:b], per_index[idx[a:b]])
        return totals.pow(1.0 / self.p)

    def _params_of(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Name -> parameter, built once per model (groups of one prune share it)."""
        cached = getattr(self, "_param_map", None)
        first = next(model.parameters(), None)
        if cached is None or cached[0] is not model or cached[1] is not first:  # rebuilt after pruning
            cached = (model, first, _params(model))
            self._param_map = cached
        return cached[2]

    def _per_index(self, p: torch.Tensor, dim: int) -> torch.Tensor:
        """``sum |w|^p`` over every dim but ``dim``, one pass per tensor, cached for the prune."""
        key = (id(p), p._version, dim)
        out = self._cache.get(key)
        if out is not None:
            return out
        w = p.detach().float()
        if w.dim() > 2 and dim < 2:  # reduce the (contiguous) kernel dims once, then rows or columns
            mkey = (id(p), p._version, "m")
            m = self._cache.get(mkey)
            if m is None:
                kernel = tuple(range(2, w.dim()))
                m = self._cache[mkey] = torch.linalg.vector_norm(w, ord=self.p, dim=kernel).pow(self.p)
            out = m.sum(dim=1 - dim)
        elif w.dim() == 2 and dim == 0:
            out = torch.linalg.vector_norm(w, ord=self.p, dim=1).pow(self.p)
        else:
            w = w * w if self.p == 2 else w.abs().pow(self.p)
            other = [d for d in range(w.dim()) if d != dim]
            out = w.sum(dim=other) if other else w
        out = self._cache[key] = out.double()
        return out


@register_criterion("l1")
class L1Criterion(MagnitudeCriterion):
    def __init__(self):
        super().__init__(p=1)


@register_criterion("random")
class RandomCriterion(Criterion):
    """Uniform random scores (the baseline every table needs); seeded for repeatability."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        return torch.rand(len(group), generator=self.generator, dtype=torch.float64)
