"""What the tracer knows about one traced tensor: the labels of its prunable dims."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TensorInfo:
    """Labels per dim (``dim -> int64 array of len size(dim)``) of one traced tensor.

    ``nz`` is True when the labelled elements may be non-zero after their units are
    soft-zeroed (e.g. after ``sigmoid`` or ``+ 1``); consuming such elements in a
    contraction makes the units *inexact* (soft and hard results differ).
    ``joint`` holds labels that depend on the index of another dim, as in stacked RNN
    states ``h_n[layer * dirs + d, :, hidden]``: ``(dim_a, dim_b, labels[size_a, size_b])``.
    """

    labels: dict[int, np.ndarray] = field(default_factory=dict)
    nz: bool = False
    joint: tuple[int, int, np.ndarray] | None = None

    def all_labels(self) -> list[np.ndarray]:
        out = list(self.labels.values())
        if self.joint is not None:
            out.append(self.joint[2].reshape(-1))
        return out

    @property
    def empty(self) -> bool:
        return not self.labels and self.joint is None
