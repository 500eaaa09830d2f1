"""Sparsity schedules: how much is pruned at each step.

Each schedule maps a step (0, 1, 2 ...) to a target sparsity; pruners call
``sparsity_at(step)``. :class:`Cubic` is the gradual schedule of Zhu & Gupta (2017),
"To prune, or not to prune": ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3``,
updated every ``frequency`` steps, so pruning is fast early (when there are many redundant
weights) and slow near the end.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OneShot:
    """The whole target at once (step 0 on)."""

    target: float

    def sparsity_at(self, step: int) -> float:
        return self.target

    @property
    def last_step(self) -> int:
        return 0


@dataclass(frozen=True)
class Iterative:
    """``steps`` prune steps to ``target``, re-scoring in between.

    ``spacing="geometric"`` removes the same fraction of the *remaining* weights each step
    (``1 - (1 - target)^(k / steps)``, as in iterative magnitude pruning); ``"linear"`` the
    same amount each step (``target * k / steps``). Step 0 is unpruned; step ``steps`` reaches
    the target.

    >>> [round(Iterative(0.75, 2).sparsity_at(k), 3) for k in range(4)]
    [0.0, 0.5, 0.75, 0.75]
    """

    target: float
    steps: int
    spacing: str = "geometric"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("Iterative needs steps >= 1")
        if self.spacing not in ("geometric", "linear"):
            raise ValueError(f"spacing must be 'geometric' or 'linear', not {self.spacing!r}")

    def sparsity_at(self, step: int) -> float:
        k = min(max(step, 0), self.steps)
        if self.spacing == "linear":
            return self.target * k / self.steps
        return 1.0 - (1.0 - self.target) ** (k / self.steps)

    @property
    def last_step(self) -> int:
        return self.steps


@dataclass(frozen=True)
class Cubic:
    """Zhu & Gupta's gradual schedule from ``initial`` at ``begin_step`` to ``final`` at
    ``end_step``, changing only every ``frequency`` steps.

    >>> s = Cubic(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    >>> [round(s.sparsity_at(t), 4) for t in (0, 5, 10, 50, 100, 200)]
    [0.0, 0.0, 0.2168, 0.7, 0.8, 0.8]
    """

    initial: float
    final: float
    begin_step: int
    end_step: int
    frequency: int = 1

    def __post_init__(self) -> None:
        if self.end_step <= self.begin_step:
            raise ValueError("Cubic needs end_step > begin_step")
        if self.frequency < 1:
            raise ValueError("Cubic needs frequency >= 1")
        for v in (self.initial, self.final):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"sparsities must be in [0, 1), got {v}")

    def sparsity_at(self, step: int) -> float:
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step:
            return self.final
        t = self.begin_step + (step - self.begin_step) // self.frequency * self.frequency
        frac = (t - self.begin_step) / (self.end_step - self.begin_step)
        return self.final + (self.initial - self.final) * (1.0 - frac) ** 3

    @property
    def last_step(self) -> int:
        return self.end_step
