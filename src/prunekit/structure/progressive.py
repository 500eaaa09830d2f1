"""Progressive pruning by sub-network: split the network into stages (blocks), prune them one
at a time -- least important first when an evaluation is given -- optionally recovering in
between, and end with one coherent model.

Each stage prunes only the groups that start inside it (``PruneConfig.ratios`` globs on the
stage's module path), after a fresh trace of the current model, so later stages see the
earlier ones already pruned and recovered.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..api import PruneResult, prune_
from ..decide.allocate import budget_of
from ..config import PruneConfig
from ..criteria import Criterion


@dataclass
class StageResult:
    stage: str
    result: PruneResult
    score: float | None  # evaluate(model) after this stage (and its recovery)


def default_stages(model: nn.Module) -> list[str]:
    """Top-level children that hold parameters (e.g. ``layer1`` ... ``layer4`` of a ResNet)."""
    return [name for name, child in model.named_children() if any(True for _ in child.parameters())]


def _stage_config(config: PruneConfig, stage: str) -> PruneConfig:
    r = config.ratio
    return replace(config, ratio=0.0, scope="local", ratios=((stage, r), (stage + ".*", r)) + tuple(config.ratios))


def progressive_prune_(model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *,
                       stages: Sequence[str] | None = None, evaluate: Callable[[nn.Module], float] | None = None,
                       recover: Callable[[nn.Module, str], None] | None = None,
                       criterion: Criterion | None = None, example_kwargs: Mapping[str, Any] | None = None,
                       optimizer: torch.optim.Optimizer | None = None, **overrides: Any) -> list[StageResult]:
    """Prune ``model`` stage by stage to the config's ratio (per stage). Returns one row per stage.

    With ``evaluate`` (higher = better), every stage is first tried alone on a copy and the
    stages are pruned in order of least damage; otherwise in the given order. ``recover(model,
    stage)`` runs after each stage (fine-tune, distill ...). ``optimizer`` (one that ``recover`` trains
    with) has its state sliced at every stage, as in :func:`~prunekit.prune_`.
    """
    config = replace(config, **overrides) if config is not None else PruneConfig(**overrides)
    stages = list(stages) if stages is not None else default_stages(model)
    modules = dict(model.named_modules())
    missing = [s for s in stages if s not in modules]
    if missing:
        raise KeyError(f"stages {missing} are not submodules of {type(model).__name__}")
    kw = {"criterion": criterion} if criterion is not None else {}
    if evaluate is not None:
        damage = {}
        for s in stages:
            trial = copy.deepcopy(model)
            prune_(trial, example_inputs, _stage_config(config, s), example_kwargs=example_kwargs, **kw)
            damage[s] = -evaluate(trial)
        stages = sorted(stages, key=lambda s: damage[s])
    out = []
    for s in stages:
        result = prune_(model, example_inputs, _stage_config(config, s), example_kwargs=example_kwargs,
                        optimizer=optimizer, **kw)
        if recover is not None:
            recover(model, s)
        out.append(StageResult(s, result, evaluate(model) if evaluate is not None else None))
    return out


@dataclass
class StepResult:
    step: int
    ratio: float  # the schedule's target after this step: fraction of the original units removed, or with
    # ``macs=`` the fraction of the original MACs kept
    result: PruneResult
    score: float | None


def iterative_prune_(model: nn.Module, example_inputs: Any, target: float | None = None, steps: int = 2, *,
                     config: PruneConfig | None = None, spacing: str = "geometric", macs: float | None = None,
                     params: float | None = None, recover: Callable[[nn.Module, int], None] | None = None,
                     evaluate: Callable[[nn.Module], float] | None = None, criterion: Criterion | None = None,
                     example_kwargs: Mapping[str, Any] | None = None, optimizer: torch.optim.Optimizer | None = None,
                     **overrides: Any) -> list[StepResult]:
    """Reach a channel ratio of ``target`` (or a budget, ``macs=`` / ``params=``) in ``steps`` prunes,
    re-tracing and re-scoring the current (recovered) model before each one.

    The schedule (:class:`~prunekit.schedules.Iterative`) gives the fraction of the original
    units removed after step ``k``; each step removes ``1 - (1 - s_k) / (1 - s_{k-1})`` of what
    is left, so per-group rounding aside the final model has ``1 - target`` of its units.

    ``macs=0.5`` instead ends at (at most) half the original MACs: step ``k`` prunes the current
    model to ``macs ** (k / steps)`` of the original MACs (``spacing="linear"``:
    ``1 - (1 - macs) * k / steps``) with :func:`prune_`'s ``macs=`` bisection, so each step
    removes about the same fraction of the remaining compute (geometric) and rounding errors do
    not add up; ``params=`` does the same for parameters. ``recover(model, k)`` runs after each step (e.g. a share of the fine-tuning);
    ``optimizer`` (one that ``recover`` trains with) has its state sliced at every step, as in
    :func:`~prunekit.prune_`.
    """
    from ..schedules import Iterative

    budget = budget_of(macs, params)
    if (target is None) == (budget is None):
        raise ValueError("iterative_prune_ takes one of target= (a channel ratio), macs= or params= (a fraction "
                         "of the model's MACs or parameters)")
    schedule = Iterative(1.0 - budget[1] if budget is not None else target, steps, spacing)
    config = replace(config, **overrides) if config is not None else PruneConfig(**overrides)
    kw = {"criterion": criterion} if criterion is not None else {}
    out: list[StepResult] = []
    for k in range(1, steps + 1):
        prev, cur = schedule.sparsity_at(k - 1), schedule.sparsity_at(k)
        if budget is None:
            step_ratio = 1.0 - (1.0 - cur) / (1.0 - prev)
            result = prune_(model, example_inputs, replace(config, ratio=step_ratio), example_kwargs=example_kwargs,
                            optimizer=optimizer, **kw)
        else:
            # geometric spacing of the kept fraction: macs ** (k / steps); Iterative(1 - macs) gives exactly that
            metric = budget[0]
            cur = 1.0 - cur  # the fraction of the original MACs (parameters) kept after this step
            # relative to the current model: the original count is the first step's "before"
            fraction = (cur * getattr(out[0].result.before, metric) / max(getattr(out[-1].result.after, metric), 1)
                        if out else cur)
            result = prune_(model, example_inputs, config, example_kwargs=example_kwargs,
                            **{metric: min(fraction, 1.0)}, optimizer=optimizer, **kw)
        if recover is not None:
            recover(model, k)
        out.append(StepResult(k, cur, result, evaluate(model) if evaluate is not None else None))
    return out
