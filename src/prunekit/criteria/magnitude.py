"""Magnitude (L1/L2 norm) and random criteria for groups."""
from __future__ import annotations

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

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        params = _params(model)
        totals = torch.zeros(len(group), dtype=torch.float64)
        flat: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for unit, sl in enumerate(group.slices):
            for key, idx in sl.items():
                ids, units = flat.setdefault(key, ([], []))
                ids.extend(idx)
                units.extend([unit] * len(idx))
        with torch.no_grad():
            for (name, dim), (ids, units) in flat.items():
                p = params.get(name)
                if p is None:  # buffers (running statistics) carry no importance
                    continue
                other = [d for d in range(p.dim()) if d != dim]
                w = p.detach().float()
                w = w * w if self.p == 2 else w.abs().pow(self.p)
                per_index = (w.sum(dim=other) if other else w).double()
                totals.index_add_(0, torch.tensor(units), per_index[torch.tensor(ids)])
        return totals.pow(1.0 / self.p)


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
