"""CPU (or GPU) inference latency, measured the way it should be reported: fixed threads,
warm-up runs, many repeats, median and spread, batch size stated.

:func:`paired_latency` compares two models on a busy machine: rounds alternate between them
(A B, B A, A B, ...) so drift in the machine's load hits both alike, and the answer is the
median of the per-round differences and ratios.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterator, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    warmup: int
    threads: int
    batch_size: int | None

    def __str__(self) -> str:
        return (f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}; batch {self.batch_size}, "
                f"{self.threads} threads, {self.repeats} runs after {self.warmup} warm-up)")

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch ops on ``n`` threads (restored afterwards)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batch_size(inputs: tuple, kwargs: Mapping[str, Any]) -> int | None:
    for x in (*inputs, *kwargs.values()):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return None


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None, *,
                    threads: int | None = 2, warmup: int = 5, repeats: int = 30) -> Latency:
    """Median wall time of ``model(*inputs)`` in eval mode under ``torch.inference_mode``."""
    from ..graph.tracer import as_inputs  # the graph imports measure.counting: import at call time

    inputs = as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was = model.training
    model.eval()
    times = []
    try:
        with num_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(*inputs, **kwargs)
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*inputs, **kwargs)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        model.train(was)
    s = sorted(times)
    return Latency(statistics.median(s), _quantile(s, 0.1), _quantile(s, 0.9), statistics.fmean(s), repeats, warmup,
                   threads if threads is not None else torch.get_num_threads(), _batch_size(inputs, kwargs))


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured for comparisons and budgets (stated with every number).

    >>> LatencyConfig.from_dict(LatencyConfig(threads=1, rounds=5).to_dict()) == LatencyConfig(threads=1, rounds=5)
    True
    """

    threads: int = 1  # one thread: the least disturbed by other work on a shared machine
    warmup: int = 3  # forwards before each round's timed runs
    repeats: int = 15  # timed forwards per round (the round's number is their median)
    rounds: int = 5  # alternating rounds per model; the result is the median over rounds

    def __post_init__(self) -> None:
        if self.threads < 1 or self.warmup < 0 or self.repeats < 1 or self.rounds < 1:
            raise ValueError(f"need threads >= 1, warmup >= 0, repeats >= 1, rounds >= 1; got {self}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyConfig":
        extra = set(d) - {f.name for f in fields(cls)}
        if extra:
            raise ValueError(f"unknown LatencyConfig fields {sorted(extra)}")
        return cls(**d)


@dataclass(frozen=True)
class PairedLatency:
    """Per-round median latencies (ms) of a base model and another, measured alternately."""

    base_ms: tuple[float, ...]
    other_ms: tuple[float, ...]
    config: LatencyConfig
    batch_size: int | None

    @property
    def saving_ms(self) -> float:
        """Median over rounds of (base - other): what the other model saves, in ms."""
        return statistics.median(b - o for b, o in zip(self.base_ms, self.other_ms))

    @property
    def ratio(self) -> float:
        """Median over rounds of other / base: the other model's latency as a fraction of the base's."""
        return statistics.median(o / b for b, o in zip(self.base_ms, self.other_ms))

    def to_dict(self) -> dict:
        return {"base_ms": list(self.base_ms), "other_ms": list(self.other_ms), "saving_ms": self.saving_ms,
                "ratio": self.ratio, "config": self.config.to_dict(), "batch_size": self.batch_size}


def paired_latency(base: nn.Module, other: nn.Module, example_inputs: Any,
                   example_kwargs: Mapping[str, Any] | None = None, *,
                   config: LatencyConfig = LatencyConfig()) -> PairedLatency:
    """Latency of ``base`` and ``other`` on the same inputs, in ``config.rounds`` alternating rounds
    (the order flips every round), each round the median of ``config.repeats`` timed forwards.

    >>> p = paired_latency(nn.Linear(64, 64), nn.Linear(64, 8), torch.randn(4, 64),
    ...                    config=LatencyConfig(warmup=1, repeats=3, rounds=2))
    >>> len(p.base_ms), len(p.other_ms), p.batch_size
    (2, 2, 4)
    """
    base_ms, other_ms = [], []
    for r in range(config.rounds):
        order = ((base, base_ms), (other, other_ms)) if r % 2 == 0 else ((other, other_ms), (base, base_ms))
        for model, out in order:
            lat = measure_latency(model, example_inputs, example_kwargs, threads=config.threads,
                                  warmup=config.warmup, repeats=config.repeats)
            out.append(lat.median_ms)
    from ..graph.tracer import as_inputs  # the graph imports measure.counting: import at call time

    inputs = as_inputs(example_inputs)
    return PairedLatency(tuple(base_ms), tuple(other_ms), config, _batch_size(inputs, dict(example_kwargs or {})))
