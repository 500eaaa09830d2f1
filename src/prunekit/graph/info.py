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
    """

    labels: dict[int, np.ndarray] = field(default_factory=dict)
    nz: bool = False

    def all_labels(self) -> list[np.ndarray]:
        return list(self.labels.values())

    @property
    def empty(self) -> bool:
        return not self.labels
