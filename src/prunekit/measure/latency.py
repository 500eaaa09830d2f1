"""CPU (or GPU) inference latency, measured the way it should be reported: fixed threads,
warm-up runs, many repeats, median and spread, batch size stated."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
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
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
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
