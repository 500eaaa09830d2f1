"""What a sensitivity analysis found: per group, the score and the savings at each ratio.

The data both :mod:`~prunekit.decide.sensitivity` (which measures the curves) and
:mod:`~prunekit.decide.budget` (which spends a budget along them) read, so neither imports the other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..measure.latency import LatencyConfig


@dataclass
class GroupCurve:
    """One group pruned alone at increasing ratios; every list is per ratio, savings are against
    the unpruned model (not the previous step)."""

    group: int
    key: str  # "<tensor>:<dim>" of the group's first tensor (usable in PruneConfig.ratios)
    units: int
    ratios: list[float]
    scores: list[float]
    macs: list[int]  # MACs saved
    params: list[int]  # parameters saved
    file_bytes: list[int] = field(default_factory=list)  # safetensors bytes saved (exact, as file_size reports)
    latency_ms: list[float] = field(default_factory=list)  # median paired latency saved (measured; empty if not)


@dataclass
class Sensitivity:
    """Every group's :class:`GroupCurve` and the unpruned model's score, counts, file bytes and
    (when measured) latency: what :func:`~prunekit.decide.sensitivity.sensitivity` returns."""

    base_score: float
    base_macs: int
    base_params: int
    curves: list[GroupCurve] = field(default_factory=list)
    base_file_bytes: int = 0
    base_latency_ms: float | None = None  # median of the unpruned model's rounds (when latency was measured)
    latency_config: LatencyConfig | None = None  # how latency was measured (None: it was not)
    latency_batch: int | None = None  # batch size of the latency runs

    def to_dict(self) -> dict:
        return {"base_score": self.base_score, "base_macs": self.base_macs, "base_params": self.base_params,
                "base_file_bytes": self.base_file_bytes, "base_latency_ms": self.base_latency_ms,
                "latency_config": self.latency_config.to_dict() if self.latency_config else None,
                "latency_batch": self.latency_batch, "curves": [vars(c) for c in self.curves]}


__all__ = ["GroupCurve", "Sensitivity"]
