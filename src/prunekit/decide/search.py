"""Per-group ratios for a budget by search: sample ratio profiles, score each one pruned for real.

Sensitivity curves prune one group at a time and add the losses up, which misjudges groups that
matter together. This search (after EagleEye, Li et al. 2020) scores whole candidate networks
instead: each candidate is a random profile of per-group ratios — uniform times a log-normal
factor per group — scaled (by bisection) until the pruned copy meets the MACs or parameter
budget; the copy's batch-norm statistics are re-estimated on calibration data (so its score
predicts how well it will recover) and it is scored with the user's ``evaluate``. Candidate 0
is the uniform ratio, so the winner scores at least as well as uniform on ``evaluate``'s data.
The second half of the candidates refine: each perturbs the best profile so far with half the
spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..config import PruneConfig
from ..criteria import Criterion
from ..progress import progress_bar
from ..recovery.batchnorm import recalibrate_bn

METRICS = ("macs", "params")


@dataclass(frozen=True)
class SearchResult:
    """The best candidate's ratios, its score and measured budget fraction, and every candidate tried."""

    config: PruneConfig
    metric: str  # "macs" or "params"
    target: float  # fraction of the unpruned model
    achieved: float
    score: float
    uniform_score: float  # candidate 0: one ratio for every group
    candidates: list[dict] = field(default_factory=list)  # {"score", "achieved", "scale", "ratios"}

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "metric": self.metric, "target": self.target,
                "achieved": self.achieved, "score": self.score, "uniform_score": self.uniform_score,
                "candidates": self.candidates}


def search_ratios(model: nn.Module, example_inputs: Any, evaluate: Callable[[nn.Module], float], *,
                  macs: float | None = None, params: float | None = None, candidates: int = 24,
                  spread: float = 0.5, calibrate: Iterable | None = None, calibrate_batches: int | None = None,
                  config: PruneConfig | None = None, criterion: Criterion | str | None = None, min_units: int = 8,
                  seed: int = 0, example_kwargs: Mapping[str, Any] | None = None,
                  progress: bool = True) -> SearchResult:
    """Search per-group ratios that meet a ``macs`` or ``params`` budget (a fraction of the unpruned
    model) and score best on ``evaluate`` (higher = better, e.g. validation accuracy).

    ``candidates`` profiles are tried (the first is uniform); in each, group ``g`` (of at least
    ``min_units`` units) gets ``min(max_ratio, s * w_g)`` with ``log w_g ~ N(0, spread²)`` (in the
    second half: the best profile so far times such a factor with half the spread) and ``s`` the
    smallest scale that meets the budget. With ``calibrate`` (batches of ``x`` or
    ``(x, y)``, a re-iterable such as a list or DataLoader), each candidate's batch norms are
    re-estimated on it first (:func:`~prunekit.recovery.recalibrate_bn`). ``config`` supplies the
    criterion, rounding, ``max_ratio`` and ignored modules; ``criterion`` overrides its criterion and
    scores each group once. Apply the result with ``prune_(model, x, result.config, criterion=...)``.
    """
    given = {k: v for k, v in (("macs", macs), ("params", params)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of macs= or params= (a fraction of the unpruned model); got {sorted(given)}")
    (metric, target), = given.items()
    if not 0.0 < target <= 1.0:
        raise ValueError(f"{metric} budget must be a fraction in (0, 1], got {target}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    from ..api import PrunedCopies  # the api imports this room at call time; so does this module the api

    config = config or PruneConfig()
    copies = PrunedCopies(model, example_inputs, config, example_kwargs,
                          criterion if criterion is not None else config.make_criterion())  # one trace for every candidate
    keys = sorted({f"{g.root[0]}:{g.root[1]}" for g in copies.groups if len(g) >= min_units})
    if not keys:
        raise ValueError(f"no group of at least {min_units} units to prune")
    cap = config.max_ratio * 0.999
    full = copies.before.macs if metric == "macs" else copies.before.params

    def pruned(ratios: dict[str, float]) -> tuple[nn.Module, float]:
        m, counts = copies.copy(_config(config, ratios))
        return m, (counts.macs if metric == "macs" else counts.params) / max(full, 1)

    gen = torch.Generator().manual_seed(seed)
    tried: list[dict] = []
    best: tuple[float, int] | None = None
    weights: list[dict[str, float]] = []
    bar = progress_bar(candidates, progress, "ratio search")
    for i in range(candidates):
        z = torch.randn(len(keys), generator=gen, dtype=torch.float64) if i else torch.zeros(len(keys))
        if best is not None and i >= (candidates + 1) // 2:  # refine around the best so far
            weight = {k: weights[best[1]][k] * math.exp(spread / 2 * float(v)) for k, v in zip(keys, z)}
        else:
            weight = {k: math.exp(spread * float(v)) for k, v in zip(keys, z)}
        weights.append(weight)
        profile = lambda s: {k: min(cap, s * w) for k, w in weight.items()}  # noqa: E731
        lo, hi = 0.0, cap / min(weight.values())
        m, at = pruned(profile(hi))
        if at > target:  # every group at max_ratio is not enough: this profile cannot meet the budget
            tried.append({"score": None, "achieved": at, "scale": hi, "ratios": profile(hi)})
            if bar is not None:
                bar.update(1)
            continue
        for _ in range(12):
            mid = (lo + hi) / 2
            m_mid, at_mid = pruned(profile(mid))
            if at_mid <= target:
                hi, m, at = mid, m_mid, at_mid
            else:
                lo = mid
        if calibrate is not None:
            recalibrate_bn(m, calibrate, max_batches=calibrate_batches)
        score = float(evaluate(m))
        tried.append({"score": score, "achieved": at, "scale": hi, "ratios": profile(hi)})
        if best is None or score > best[0]:
            best = (score, i)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if best is None:
        raise ValueError(f"no candidate met the {metric} budget {target}: raise max_ratio or the budget")
    win = tried[best[1]]
    uniform = tried[0]["score"]
    return SearchResult(_config(config, win["ratios"]), metric, target, win["achieved"], best[0],
                        float("nan") if uniform is None else uniform, tried)


def _config(config: PruneConfig, ratios: Mapping[str, float]) -> PruneConfig:
    return config.only((k, r) for k, r in ratios.items() if r > 0)


__all__ = ["SearchResult", "search_ratios"]
