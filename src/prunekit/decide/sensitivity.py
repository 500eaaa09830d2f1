"""Sensitivity analysis: accuracy versus ratio for every group, and what each step saves.

:func:`sensitivity` prunes each group alone at several ratios (on copies) and evaluates the
result: accuracy (or any score, higher = better) versus ratio per group, with the MACs,
parameters and saved-file bytes each step saves (exact), and optionally the latency it saves
(measured, paired against the unpruned model). The curves are :class:`~prunekit.decide.curves.Sensitivity`
(re-exported here); :func:`~prunekit.decide.budget.budget_search` spends a budget where they say it
hurts least, and ``prune_(model, x, macs=..., allocate=curves)`` applies it.
"""
from __future__ import annotations

import copy
import statistics
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..config import PruneConfig
from ..criteria import CachedScores, Criterion
from ..graph.tracer import as_inputs, trace
from ..measure.counting import count
from ..measure.latency import LatencyConfig, measure_latency, paired_latency
from ..measure.size import file_size
from ..plan import apply_plan, make_plan
from ..progress import progress_bar
from ..selection import select_units
from .curves import GroupCurve, Sensitivity  # re-exported: what sensitivity() returns


def _prune_copy(model, graph, groups, ratio_of: Mapping[int, float], config: PruneConfig, criterion: Criterion):
    m = copy.deepcopy(model)
    chosen = set()
    for g in groups:
        r = ratio_of.get(g.id, 0.0)
        if r <= 0:
            continue
        c, _ = select_units(m, [g], PruneConfig(ratio=r, max_ratio=max(config.max_ratio, r),
                                                criterion=config.criterion, criterion_args=config.criterion_args,
                                                round_to=config.round_to),
                            criterion, graph)
        chosen |= c
    if chosen:
        apply_plan(m, make_plan(graph, chosen), "hard")
    return m


def sensitivity(model: nn.Module, example_inputs: Any, evaluate: Callable[[nn.Module], float], *,
                ratios: Sequence[float] = (0.2, 0.4, 0.6, 0.8), config: PruneConfig | None = None,
                min_units: int = 8, example_kwargs: Mapping[str, Any] | None = None,
                latency: bool | LatencyConfig = False, progress: bool = True,
                criterion: Criterion | str | None = None) -> Sensitivity:
    """Score of ``model`` with each group (of at least ``min_units`` units) pruned alone at each ratio,
    and what each step saves: MACs and parameters (counted), file bytes (saved for real).

    ``latency=True`` (or a :class:`LatencyConfig`) also measures the latency each step saves on this
    machine: the pruned copy and the unpruned model in alternating rounds on ``example_inputs``
    (so batch size matters), saving = median over rounds of the difference. It is measured, hence
    noisy; steps whose saving is below the noise may come out as zero or negative.

    ``criterion`` (a name or a :class:`~prunekit.criteria.Criterion`, e.g. one carrying calibration
    data) ranks the units; it is prepared and scores every group once, on the unpruned model.
    Default: ``config.criterion``.
    """
    config = config or PruneConfig()
    crit = CachedScores(criterion if criterion is not None else config.make_criterion())
    lat_cfg = LatencyConfig() if latency is True else (latency or None)
    inputs = as_inputs(example_inputs)
    graph = trace(model, inputs, example_kwargs, ignore=config.ignore, keep_outputs=config.keep_outputs)
    groups = [g for g in graph.groups(config.kinds) if len(g) >= min_units]
    base = count(model, inputs, example_kwargs)
    base_bytes = file_size(model)
    out = Sensitivity(evaluate(model), base.macs, base.params, base_file_bytes=base_bytes, latency_config=lat_cfg)
    base_rounds: list[float] = []
    bar = progress_bar(len(groups) * len(ratios), progress, "sensitivity")
    for g in groups:
        curve = GroupCurve(g.id, f"{g.root[0]}:{g.root[1]}", len(g), [], [], [], [])
        for r in ratios:
            m = _prune_copy(model, graph, [g], {g.id: r}, config, crit)
            c = count(m, inputs, example_kwargs)
            curve.ratios.append(r)
            curve.scores.append(evaluate(m))
            curve.macs.append(base.macs - c.macs)
            curve.params.append(base.params - c.params)
            curve.file_bytes.append(base_bytes - file_size(m))
            if lat_cfg is not None:
                paired = paired_latency(model, m, inputs, example_kwargs, config=lat_cfg)
                curve.latency_ms.append(paired.saving_ms)
                base_rounds += paired.base_ms
                out.latency_batch = paired.batch_size
            if bar is not None:
                bar.update(1)
        out.curves.append(curve)
    if bar is not None:
        bar.close()
    if lat_cfg is not None and not base_rounds:  # no group to prune: still state the base latency
        base_rounds = [measure_latency(model, inputs, example_kwargs, threads=lat_cfg.threads, warmup=lat_cfg.warmup,
                                       repeats=lat_cfg.repeats).median_ms]
    if base_rounds:
        out.base_latency_ms = statistics.median(base_rounds)
    return out

__all__ = ["GroupCurve", "Sensitivity", "sensitivity"]
