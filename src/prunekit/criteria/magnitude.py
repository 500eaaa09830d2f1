"""Magnitude (L1/L2 norm) and random criteria."""
from __future__ import annotations

import torch
from torch import nn

from ..graph.groups import Group
from .base import Criterion, register_criterion


@register_criterion("l2")
class MagnitudeCriterion(Criterion):
    """Norm of all parameter slices of a unit: ``(sum_i |w_i|^p)^(1/p)`` over the whole closure;
    per weight, ``|w|^p``. Buffers (running statistics) are ignored.

    >>> lin = nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[3., 4.], [1., 0.]]))
    >>> MagnitudeCriterion().score_weights(lin, ["weight"])["weight"].tolist()
    [[9.0, 16.0], [1.0, 0.0]]
    """

    def __init__(self, p: int = 2):
        self.p = p
        self._cache: dict[tuple, torch.Tensor] = {}

    def prepare(self, model: nn.Module, graph=None) -> None:
        self._cache.clear()  # keyed by tensor id: valid for one prune only

    def score_weights_of(self, name: str, p: torch.Tensor) -> torch.Tensor:
        w = p.detach().float()
        return w * w if self.p == 2 else w.abs().pow(self.p)

    def finish(self, totals: torch.Tensor) -> torch.Tensor:
        return totals.pow(1.0 / self.p)

    def per_index(self, name: str, p: torch.Tensor, dim: int) -> torch.Tensor:
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
            w = self.score_weights_of(name, p)
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

    def score_weights_of(self, name: str, p: torch.Tensor) -> torch.Tensor:
        return torch.rand(p.shape, generator=self.generator).to(p.device)
