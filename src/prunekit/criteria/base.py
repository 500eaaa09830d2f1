"""The criterion interface and its registry.

A criterion answers one question: "score these" (higher = keep). It scores the units of a
structural :class:`~prunekit.graph.groups.Group` (``score``) and, where it has a per-weight
meaning, individual weights (``score_weights``). Criteria that need data (activations,
gradients) are given it when constructed and read it in :meth:`Criterion.prepare`, which
runs once per prune, before any scoring, with the graph the groups came from.

Group scores aggregate over every parameter slice of a unit (all coupled tensors), so a
channel's score counts the conv that makes it, its norm, and the layers that read it. Scores
are comparable inside a group; :func:`normalize_scores` makes them comparable across groups
for global pruning.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..graph.groups import Group

CRITERIA: dict[str, type["Criterion"]] = {}


def register_criterion(name: "str | type[Criterion] | None" = None):
    """Register a :class:`Criterion` subclass under ``name``; usable as ``@register_criterion``,
    ``@register_criterion()`` or ``@register_criterion("my_name")``. Without a name the class's own
    ``name`` attribute is used if it set one, else its class name in lower case. A name already
    taken by another class raises (re-registering the same class is allowed)."""

    def register(cls: type["Criterion"], key: str | None = None) -> type["Criterion"]:
        if not (isinstance(cls, type) and issubclass(cls, Criterion)):
            raise TypeError(f"register_criterion decorates a Criterion subclass, not {cls!r}")
        key = key or (cls.__dict__.get("name") if isinstance(cls.__dict__.get("name"), str) else None) \
            or cls.__name__.lower()
        if key in CRITERIA and CRITERIA[key].__qualname__ != cls.__qualname__:
            raise ValueError(f"criterion name {key!r} is taken by {CRITERIA[key].__qualname__}")
        CRITERIA[key] = cls
        cls.name = key
        return cls

    if isinstance(name, type):  # @register_criterion without parentheses
        return register(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"register_criterion name must be a non-empty string, got {name!r}")
    return lambda cls: register(cls, name)


class Criterion:
    """Scores units of a group (and, where meaningful, single weights); higher = keep."""

    name = "base"

    def prepare(self, model: nn.Module, graph=None) -> None:
        """Called once per prune before scoring (collect statistics, gradients ...)."""

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:  # (len(group),)
        """Default: sum of :meth:`per_index` over every parameter slice of each unit.

        One gather and one ``bincount`` over all of the group's rows (ordered by tensor, then row, so
        each unit's sum is added up in the same order as a per-tensor ``index_add_`` would)."""
        params = _param_map(self, model)
        units, keys, idx, names = group.member_rows()
        if units.size == 0:
            return self.finish(torch.zeros(len(group), dtype=torch.float64))
        # each unit's rows are contiguous; bincount adds them in array order, so they must come by tensor
        # (key) within each unit, as a stable sort by key would put them: sort only where they do not already
        same_unit = units[1:] == units[:-1]
        if (same_unit & (keys[1:] < keys[:-1])).any():
            order = np.argsort(keys, kind="stable")
            units, keys, idx = units[order], keys[order], idx[order]
        present = np.zeros(len(names), dtype=bool)
        present[keys] = True
        used = np.flatnonzero(present).tolist()
        offset = np.full(len(names), -1, dtype=np.int64)  # key -> start of its per-index vector in ``flat``
        vectors, n = [], 0
        with torch.no_grad():
            items = []
            for k in used:
                name, dim = names[k]
                p = params.get(name)
                if p is not None:  # buffers (running statistics) carry no importance
                    items.append((k, name, p, dim))
            for (k, name, p, dim), per_index in zip(items, self.per_index_many([it[1:] for it in items])):
                if per_index is not None:
                    offset[k] = n
                    n += per_index.numel()
                    vectors.append(per_index.detach().reshape(-1))
        if not vectors:
            return self.finish(torch.zeros(len(group), dtype=torch.float64))
        flat = (torch.cat(vectors) if len(vectors) > 1 else vectors[0]).double().cpu().numpy()
        start = offset[keys]
        rows = start >= 0
        if not rows.all():
            units, start, idx = units[rows], start[rows], idx[rows]
        totals = np.bincount(units, weights=flat[start + idx], minlength=len(group))
        return self.finish(torch.from_numpy(totals))

    def per_index_many(self, items: list[tuple[str, torch.Tensor, int]]) -> list[torch.Tensor | None]:
        """:meth:`per_index` of each ``(name, p, dim)``, in order (a criterion may compute them together)."""
        return [self.per_index(name, p, dim) for name, p, dim in items]

    def per_index(self, name: str, p: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Importance of each index of ``p`` along ``dim`` (``None``: this tensor does not count)."""
        w = self.score_weights_of(name, p)
        other = [d for d in range(w.dim()) if d != dim]
        return w.sum(dim=other) if other else w

    def finish(self, totals: torch.Tensor) -> torch.Tensor:
        return totals

    def score_weights_of(self, name: str, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"criterion {self.name!r} does not score single weights")

    def score_weights(self, model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Per-weight scores (same shape as each parameter) for parameter pruning."""
        params = _param_map(self, model)
        with torch.no_grad():
            return {n: self.score_weights_of(n, params[n]) for n in names}


class CachedScores(Criterion):
    """Another criterion's group scores, computed once per group and reused: for analyses that
    prune many copies of one unpruned model (sensitivity curves, budget searches), so a data
    criterion calibrates once instead of once per copy.

    Groups are keyed by kind, first tensor dim and size, which a re-trace of the same model
    reproduces. The inner criterion is prepared on the first graph it sees, and again only if
    a group it has not scored comes from another graph.
    """

    def __init__(self, inner: "Criterion | str"):
        self.inner = get_criterion(inner)
        self.name = f"cached({self.inner.name})"
        self._scores: dict[tuple, torch.Tensor] = {}
        self._prepared_for = None  # the graph the inner criterion last prepared with
        self._current: tuple | None = None  # (model, graph) of the latest prepare call

    def prepare(self, model: nn.Module, graph=None) -> None:
        self._current = (model, graph)
        if self._prepared_for is None:
            self.inner.prepare(model, graph)
            self._prepared_for = graph

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:
        key = (group.kind, group.root, len(group))
        if key not in self._scores:
            if self._current is not None and self._current[1] is not self._prepared_for:
                self.inner.prepare(*self._current)
                self._prepared_for = self._current[1]
            self._scores[key] = self.inner.score(model, group)
        return self._scores[key]

    def score_weights_of(self, name: str, p: torch.Tensor) -> torch.Tensor:
        return self.inner.score_weights_of(name, p)


def _param_map(crit: Criterion, model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> parameter, built once per model (groups of one prune share it)."""
    cached = getattr(crit, "_param_cache", None)
    first = next(model.parameters(), None)
    if cached is None or cached[0] is not model or cached[1] is not first:  # rebuilt after pruning
        cached = (model, first, dict(model.named_parameters()))
        crit._param_cache = cached
    return cached[2]


def normalize_scores(scores: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Make one group's (or layer's) scores comparable with another's for a global ranking.

    ``"mean"`` divides by the group's mean score (a unit scoring 0.5 is half as important as
    its group's average unit), ``"max"`` by its largest, ``"sum"`` by its total, ``"l2"`` by
    its L2 norm (Molchanov et al. 2017), ``"none"`` keeps raw scores -- one global threshold
    over raw values, as for Taylor importance.
    """
    s = scores.double()
    if how == "none":
        return s
    denom = {"mean": lambda: s.mean(), "max": lambda: s.abs().max(), "sum": lambda: s.sum(),
             "l2": lambda: s.norm()}.get(how)
    if denom is None:
        raise ValueError(f"unknown normalization {how!r}; choose mean, max, sum, l2 or none")
    d = float(denom())
    return s / d if d > 0 and np.isfinite(d) else s


def get_criterion(name_or_obj: "str | Criterion") -> Criterion:
    if isinstance(name_or_obj, Criterion):
        return name_or_obj
    if name_or_obj not in CRITERIA:
        raise KeyError(f"unknown criterion {name_or_obj!r}; known: {sorted(CRITERIA)}")
    return CRITERIA[name_or_obj]()
