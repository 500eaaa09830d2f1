"""How :func:`prunekit.prune_` spends a MAC or parameter budget (``macs=`` / ``params=``) across groups.

``prune_(model, x, macs=0.5)`` is the one entry for budgets. ``allocate=`` says how the per-group
ratios are chosen:

- ``None`` (default): one ratio for every group (or one global fraction with ``scope="global"``),
  the smallest that meets the budget, by bisection on pruned copies;
- a :class:`~prunekit.decide.curves.Sensitivity` (from ``sensitivity(model, x, evaluate)``):
  the ratios that lose the least score per unit saved along the measured curves, verified on a
  pruned copy (:func:`~prunekit.decide.budget.budget_search`);
- a :class:`RatioSearch`: whole candidate networks scored by your ``evaluate`` (after EagleEye,
  :func:`~prunekit.decide.search.search_ratios`); uniform is always one of the candidates.

The lower-level searches stay importable for their detailed results (``BudgetResult``,
``SearchResult``); applying what they found is ``prune_(model, x, found.config)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from ..config import PruneConfig
from ..errors import PlanError
from .curves import Sensitivity


@dataclass(frozen=True)
class RatioSearch:
    """``allocate=`` for :func:`prunekit.prune_`: search per-group ratio profiles, each scaled to the
    budget, and keep the one ``evaluate`` (higher = better) scores best; the fields are
    :func:`~prunekit.decide.search.search_ratios`'s."""

    evaluate: Callable[[nn.Module], float]
    candidates: int = 24
    spread: float = 0.5
    calibrate: Iterable | None = None
    calibrate_batches: int | None = None
    min_units: int = 8
    seed: int = 0
    progress: bool = True


def budget_of(macs: float | None, params: float | None) -> tuple[str, float] | None:
    """``("macs" | "params", fraction)`` from ``prune_``'s keywords, or None when neither is given."""
    given = {k: v for k, v in (("macs", macs), ("params", params)) if v is not None}
    if not given:
        return None
    if len(given) > 1:
        raise ValueError("give one of macs= or params= (a fraction of the unpruned model), not both")
    (metric, fraction), = given.items()
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"{metric} must be a fraction of the model's {metric} in (0, 1], got {fraction!r}")
    return metric, float(fraction)


def allocated_config(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any], config: PruneConfig,
                     criterion: Any, metric: str, fraction: float, allocate: Any) -> tuple[PruneConfig, dict]:
    """The per-group config a ``Sensitivity`` or a :class:`RatioSearch` chooses for the budget, and what
    the search reports (``allocation`` and its own measurements). Raises ``PlanError`` when the
    budget cannot be met, ``TypeError`` for an ``allocate`` of another kind."""
    if isinstance(allocate, Sensitivity):
        from .budget import budget_search

        found = budget_search(model, inputs, allocate, **{metric: fraction}, config=config,
                              example_kwargs=kwargs, criterion=criterion)
        if not found.met:
            raise PlanError(f"{metric} budget {fraction:.3f} not met: the most the sensitivity curves allow measured "
                            f"{found.achieved:.3f} of the unpruned model (try larger ratios in sensitivity())")
        return found.config, {"allocation": "sensitivity", "verifications": found.verifications}
    if isinstance(allocate, RatioSearch):
        from .search import search_ratios

        found = search_ratios(model, inputs, allocate.evaluate, **{metric: fraction}, candidates=allocate.candidates,
                              spread=allocate.spread, calibrate=allocate.calibrate,
                              calibrate_batches=allocate.calibrate_batches, config=config, criterion=criterion,
                              min_units=allocate.min_units, seed=allocate.seed, example_kwargs=kwargs,
                              progress=allocate.progress)
        return found.config, {"allocation": "search", "score": found.score, "uniform_score": found.uniform_score,
                              "candidates": len(found.candidates)}
    raise TypeError("allocate must be None (one ratio), a Sensitivity (prunekit.decide.sensitivity.sensitivity) "
                    f"or a prunekit.decide.RatioSearch, got {type(allocate).__name__}")
