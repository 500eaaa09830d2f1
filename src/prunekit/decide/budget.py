"""Per-group ratios for a budget: MACs, parameters, saved-file size or measured latency.

Given :func:`~prunekit.decide.sensitivity.sensitivity` curves, the search spends the budget
where it hurts least: greedily, the ratio step (or jump along one curve) with the smallest score
loss per unit saved, until the additive estimate meets the target; then a copy is really pruned
and measured, and the search goes on from the measured value until the measurement meets it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ..config import PruneConfig
from ..criteria import CachedScores, Criterion
from ..graph.tracer import as_inputs
from ..measure.latency import _batch_size, paired_latency
from ..measure.size import file_size as saved_file_size
from .curves import GroupCurve, Sensitivity

METRICS = ("macs", "params", "file_size", "latency")
_CURVE_FIELD = {"macs": "macs", "params": "params", "file_size": "file_bytes", "latency": "latency_ms"}


@dataclass(frozen=True)
class BudgetResult:
    """The chosen ratios and how the last verification measured them (fractions of the unpruned model)."""

    config: PruneConfig
    metric: str  # one of METRICS
    target: float  # the budget, a fraction of the unpruned model
    achieved: float  # the pruned copy's measured fraction (latency: median paired ratio)
    met: bool
    verifications: int  # copies pruned and measured

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "metric": self.metric, "target": self.target,
                "achieved": self.achieved, "met": self.met, "verifications": self.verifications}


def _budget(macs: float | None, params: float | None, latency: float | None,
            file_size: float | None) -> tuple[str, float]:
    given = {k: v for k, v in zip(METRICS, (macs, params, file_size, latency)) if v is not None}
    if len(given) != 1:
        raise ValueError("give exactly one of macs=, params=, file_size= or latency= "
                         f"(a fraction of the unpruned model); got {sorted(given) or 'none'}")
    (metric, fraction), = given.items()
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{metric} budget must be a fraction in (0, 1], got {fraction}")
    return metric, fraction


def _base(sens: Sensitivity, metric: str, batch: int | None) -> float:
    if metric == "macs":
        return sens.base_macs
    if metric == "params":
        return sens.base_params
    if metric == "file_size":
        if not sens.base_file_bytes or not all(c.file_bytes for c in sens.curves):
            raise ValueError("these sensitivity curves carry no file sizes; rerun sensitivity()")
        return sens.base_file_bytes
    if sens.latency_config is None or sens.base_latency_ms is None:
        raise ValueError("these sensitivity curves carry no latency; run sensitivity(..., latency=True) first")
    if batch != sens.latency_batch:
        raise ValueError(f"latency was measured at batch {sens.latency_batch}; the inputs here have batch {batch} "
                         "(use the same example inputs for sensitivity and the budget)")
    return sens.base_latency_ms


def _step_options(sens: Sensitivity, curves: dict[str, GroupCurve], level: dict[str, int],
                  field_: str) -> list[tuple[float, int, str]]:
    """(score loss per unit saved, levels jumped, key) for every move forward along every curve.

    Jumping more than one level lets the search pass a step whose measured saving is zero or
    negative (noise) or a non-convex stretch of a curve."""
    out = []
    for k, i in level.items():
        c = curves[k]
        saved = getattr(c, field_)
        prev_score = sens.base_score if i == 0 else c.scores[i - 1]
        prev_saved = saved[i - 1] if i else 0
        for j in range(i + 1, len(c.ratios) + 1):
            gain = saved[j - 1] - prev_saved
            if gain > 0:
                out.append(((prev_score - c.scores[j - 1]) / gain, j - i, k))
    return out


def budget_search(model: nn.Module, example_inputs: Any, sens: Sensitivity, *, macs: float | None = None,
                  params: float | None = None, latency: float | None = None, file_size: float | None = None,
                  config: PruneConfig | None = None, example_kwargs: Mapping[str, Any] | None = None,
                  criterion: Criterion | str | None = None) -> BudgetResult:
    """Per-group ratios meeting one budget, as a fraction of the unpruned model, verified by
    pruning a copy (with :func:`prunekit.prune_` and ``config``'s criterion) and measuring it:

    - ``macs`` / ``params``: counted on the pruned copy (exact);
    - ``file_size``: bytes of the pruned copy saved as safetensors (exact, :func:`~prunekit.measure.file_size`);
    - ``latency``: the pruned copy against the unpruned model in alternating rounds on
      ``example_inputs``, with the sensitivity run's :class:`~prunekit.measure.latency.LatencyConfig`
      (threads, warm-up, repeats, rounds), median ratio over rounds. Latency budgets are measured on
      this machine, hence noisy: another run (or a busier machine) may choose other ratios, and a
      budget near the noise can be met by chance. Needs ``sensitivity(..., latency=True)``.

    The search stops when the verified measurement meets the budget, or when every curve is
    exhausted (``met=False``). ``criterion`` (as in :func:`sensitivity`; default ``config.criterion``)
    ranks the units of every verification copy; it scores each group once.
    """
    metric, fraction = _budget(macs, params, latency, file_size)
    config = config or PruneConfig()
    inputs = as_inputs(example_inputs)
    field_ = _CURVE_FIELD[metric]
    base = float(_base(sens, metric, _batch_size(inputs, dict(example_kwargs or {}))))
    target = fraction * base
    curves = {c.key: c for c in sens.curves}
    level = {c.key: 0 for c in sens.curves}  # index into each curve's ratios; 0 = unpruned
    crit = CachedScores(criterion if criterion is not None else config.make_criterion())
    measure = _verifier(model, inputs, example_kwargs, metric, sens, config, crit)

    def current() -> PruneConfig:
        return config.only((k, curves[k].ratios[i - 1]) for k, i in level.items() if i > 0)

    estimate, verifications = base, 0
    while True:
        options = _step_options(sens, curves, level, field_)
        if estimate <= target or not options:  # the additive estimate says done (or nothing is left): measure
            cfg = current()
            achieved = measure(cfg)
            verifications += 1
            if achieved <= fraction or not options:
                return BudgetResult(cfg, metric, fraction, achieved, achieved <= fraction, verifications)
            estimate = achieved * base
        _, jump, k = min(options)
        saved = getattr(curves[k], field_)
        i = level[k]
        estimate -= saved[i + jump - 1] - (saved[i - 1] if i else 0)
        level[k] = i + jump


def ratios_for_budget(model: nn.Module, example_inputs: Any, sens: Sensitivity, *, macs: float | None = None,
                      params: float | None = None, latency: float | None = None, file_size: float | None = None,
                      config: PruneConfig | None = None, example_kwargs: Mapping[str, Any] | None = None,
                      criterion: Criterion | str | None = None) -> PruneConfig:
    """Deprecated: ``budget_search(...).config`` (warns when the budget could not be met). Use
    ``prune_(model, x, macs=..., allocate=sens)``, or :func:`budget_search` for the detailed result.

    >>> import torch
    >>> from prunekit.decide.sensitivity import sensitivity
    >>> net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    >>> x = torch.randn(2, 16)
    >>> s = sensitivity(net, x, lambda m: 0.0, ratios=(0.25, 0.5, 0.75), progress=False)
    >>> budget_search(net, x, s, file_size=0.6).config.ratios
    (('0.weight:0', 0.5),)
    """
    warnings.warn("ratios_for_budget is deprecated: use prune_(model, x, macs=..., allocate=sensitivity_curves) "
                  "or prunekit.decide.budget_search(...).config", DeprecationWarning, stacklevel=2)
    r = budget_search(model, example_inputs, sens, macs=macs, params=params, latency=latency, file_size=file_size,
                      config=config, example_kwargs=example_kwargs, criterion=criterion)
    if not r.met:
        warnings.warn(f"{r.metric} budget {r.target:.3f} not met: the most the sensitivity curves allow measured "
                      f"{r.achieved:.3f} of the unpruned model (try larger ratios in sensitivity())", stacklevel=2)
    return r.config


def _verifier(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any] | None, metric: str,
              sens: Sensitivity, config: PruneConfig, criterion: Criterion) -> Callable[[PruneConfig], float]:
    """``config -> measured fraction of the unpruned model`` for one metric, on a pruned copy
    (the model is traced once, for every verification)."""
    from ..api import PrunedCopies  # the api imports this room at call time; so does this module the api

    copies = PrunedCopies(model, inputs, config, kwargs, criterion)
    base_bytes = saved_file_size(model) if metric == "file_size" else 0

    def measured(cfg: PruneConfig) -> float:
        m, counts = copies.copy(cfg)
        if metric == "macs":
            return counts.macs / max(copies.before.macs, 1)
        if metric == "params":
            return counts.params / max(copies.before.params, 1)
        if metric == "file_size":
            return saved_file_size(m) / base_bytes
        return paired_latency(model, m, inputs, kwargs, config=sens.latency_config).ratio

    return measured
