"""Everything measured about a model in one record, and before/after comparisons as a table or JSON."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from .counting import count
from .latency import Latency, measure_latency
from .memory import peak_memory
from .size import file_size


@dataclass
class Measurement:
    params: int
    macs: int
    file_bytes: int
    peak_memory_bytes: int
    latency: Latency | None = None
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = self.latency.to_dict() if self.latency else None
        return d


def measure(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None, *,
            evaluate: Callable[[nn.Module], float] | None = None, latency: bool = True, threads: int | None = 2,
            warmup: int = 5, repeats: int = 30, sparse_file: bool = False) -> Measurement:
    """Parameters, MACs, file size, peak inference memory, latency and (with ``evaluate``) accuracy."""
    counts = count(model, example_inputs, example_kwargs)
    return Measurement(
        params=counts.params, macs=counts.macs, file_bytes=file_size(model, sparse=sparse_file),
        peak_memory_bytes=peak_memory(model, example_inputs, example_kwargs),
        latency=measure_latency(model, example_inputs, example_kwargs, threads=threads, warmup=warmup,
                                repeats=repeats) if latency else None,
        accuracy=evaluate(model) if evaluate is not None else None)


@dataclass
class Comparison:
    before: Measurement
    after: Measurement

    def rows(self) -> list[tuple[str, str, str, str]]:
        b, a = self.before, self.after

        def ratio(x: float | None, y: float | None) -> str:
            return f"{y / x:.3f}" if x and y is not None else "-"

        rows = []
        if b.accuracy is not None or a.accuracy is not None:
            rows.append(("accuracy", _fmt(b.accuracy, "{:.4f}"), _fmt(a.accuracy, "{:.4f}"),
                         f"{a.accuracy - b.accuracy:+.4f}" if None not in (a.accuracy, b.accuracy) else "-"))
        rows += [("params", f"{b.params:,}", f"{a.params:,}", ratio(b.params, a.params)),
                 ("MACs", f"{b.macs:,}", f"{a.macs:,}", ratio(b.macs, a.macs))]
        if b.latency and a.latency:
            rows.append((f"latency ms (batch {b.latency.batch_size}, {b.latency.threads} thr, median)",
                         f"{b.latency.median_ms:.2f}", f"{a.latency.median_ms:.2f}",
                         ratio(b.latency.median_ms, a.latency.median_ms)))
        rows += [("peak memory MB", f"{b.peak_memory_bytes / 2**20:.1f}", f"{a.peak_memory_bytes / 2**20:.1f}",
                  ratio(b.peak_memory_bytes, a.peak_memory_bytes)),
                 ("file MB", f"{b.file_bytes / 2**20:.2f}", f"{a.file_bytes / 2**20:.2f}",
                  ratio(b.file_bytes, a.file_bytes))]
        return rows

    def table(self) -> str:
        rows = [("", "before", "after", "after/before"), *self.rows()]
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows)

    def to_json(self) -> str:
        return json.dumps({"before": self.before.to_dict(), "after": self.after.to_dict()}, indent=1)

    __str__ = table


def _fmt(v: float | None, f: str) -> str:
    return f.format(v) if v is not None else "-"
