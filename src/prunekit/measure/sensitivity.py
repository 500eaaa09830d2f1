"""Sensitivity analysis and automatic per-group ratios for a budget.

:func:`sensitivity` prunes each group alone at several ratios (on copies) and evaluates the
result: accuracy (or any score, higher = better) versus ratio per group, with the MACs and
parameters each step saves. :func:`ratios_for_budget` then spends a MACs or parameter budget
where it hurts least: greedily, the next ratio step with the smallest score loss per unit
saved, until the budget is met -- checked by really pruning a copy and counting.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..config import PruneConfig
from ..graph.tracer import trace
from ..plan import apply_plan, make_plan
from ..selection import select_units
from ..progress import progress_bar
from .counting import count


@dataclass
class GroupCurve:
    group: int
    key: str  # "<tensor>:<dim>" of the group's first tensor (usable in PruneConfig.ratios)
    units: int
    ratios: list[float]
    scores: list[float]
    macs: list[int]
    params: list[int]


@dataclass
class Sensitivity:
    base_score: float
    base_macs: int
    base_params: int
    curves: list[GroupCurve] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"base_score": self.base_score, "base_macs": self.base_macs, "base_params": self.base_params,
                "curves": [vars(c) for c in self.curves]}


def _prune_copy(model, graph, groups, ratio_of: Mapping[int, float], config: PruneConfig):
    m = copy.deepcopy(model)
    chosen = set()
    for g in groups:
        r = ratio_of.get(g.id, 0.0)
        if r <= 0:
            continue
        c, _ = select_units(m, [g], PruneConfig(ratio=r, max_ratio=max(config.max_ratio, r),
                                                criterion=config.criterion, round_to=config.round_to))
        chosen |= c
    if chosen:
        apply_plan(m, make_plan(graph, chosen), "hard")
    return m


def sensitivity(model: nn.Module, example_inputs: Any, evaluate: Callable[[nn.Module], float], *,
                ratios: Sequence[float] = (0.2, 0.4, 0.6, 0.8), config: PruneConfig | None = None,
                min_units: int = 8, example_kwargs: Mapping[str, Any] | None = None,
                progress: bool = True) -> Sensitivity:
    """Score of ``model`` with each group (of at least ``min_units`` units) pruned alone at each ratio."""
    config = config or PruneConfig()
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    graph = trace(model, inputs, example_kwargs, ignore=config.ignore)
    groups = [g for g in graph.groups(config.kinds) if len(g) >= min_units]
    base = count(model, inputs, example_kwargs)
    out = Sensitivity(evaluate(model), base.macs, base.params)
    bar = progress_bar(len(groups) * len(ratios), progress, "sensitivity")
    for g in groups:
        curve = GroupCurve(g.id, f"{g.root[0]}:{g.root[1]}", len(g), [], [], [], [])
        for r in ratios:
            m = _prune_copy(model, graph, [g], {g.id: r}, config)
            c = count(m, inputs, example_kwargs)
            curve.ratios.append(r)
            curve.scores.append(evaluate(m))
            curve.macs.append(base.macs - c.macs)
            curve.params.append(base.params - c.params)
            if bar is not None:
                bar.update(1)
        out.curves.append(curve)
    if bar is not None:
        bar.close()
    return out


def ratios_for_budget(model: nn.Module, example_inputs: Any, sens: Sensitivity, *, macs: float | None = None,
                      params: float | None = None, config: PruneConfig | None = None,
                      example_kwargs: Mapping[str, Any] | None = None) -> PruneConfig:
    """A :class:`PruneConfig` with per-group ratios that meets ``macs`` (or ``params``) as a
    fraction of the unpruned model, spending the budget where the sensitivity curves say it
    costs least. The result is verified by pruning a copy; the greedy search continues until the
    real count meets the budget (or every curve is exhausted)."""
    if (macs is None) == (params is None):
        raise ValueError("give exactly one of macs= or params= (a fraction of the unpruned model)")
    config = config or PruneConfig()
    what = "macs" if macs is not None else "params"
    target = (macs if macs is not None else params) * (sens.base_macs if what == "macs" else sens.base_params)
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    level = {c.key: 0 for c in sens.curves}  # index into each curve's ratios; 0 = unpruned
    curves = {c.key: c for c in sens.curves}

    def step_cost(c: GroupCurve, i: int) -> float:
        prev_score = sens.base_score if i == 0 else c.scores[i - 1]
        saved = getattr(c, what)
        gain = saved[i] - (saved[i - 1] if i else 0)
        return (prev_score - c.scores[i]) / gain if gain > 0 else math.inf

    def current() -> PruneConfig:
        ratios = tuple((k, curves[k].ratios[i - 1]) for k, i in level.items() if i > 0)
        return PruneConfig(**{**config.to_dict(), "ratio": 0.0, "ratios": ratios,
                              "max_ratio": max([config.max_ratio, *(r for _, r in ratios)])})

    estimate = sens.base_macs if what == "macs" else sens.base_params
    while True:
        options = [(step_cost(curves[k], i), k) for k, i in level.items() if i < len(curves[k].ratios)]
        options = [o for o in options if o[0] < math.inf]
        if estimate <= target:  # the additive estimate says done: check for real
            cfg = current()
            m = copy.deepcopy(model)
            from ..api import prune_

            r = prune_(m, inputs, cfg, example_kwargs=example_kwargs)
            real = r.after.macs if what == "macs" else r.after.params
            if real <= target or not options:
                return cfg
            estimate = real
        if not options:
            return current()
        _, k = min(options)
        c, i = curves[k], level[k]
        saved = getattr(c, what)
        estimate -= saved[i] - (saved[i - 1] if i else 0)
        level[k] = i + 1
