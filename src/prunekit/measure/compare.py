"""Everything measured about a model in one record (optionally per layer), and before/after
comparisons as tables (whole model; per layer, matched by module path) or JSON."""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from .counting import count
from .latency import Latency, PairedLatency, measure_latency
from .layers import LayerMeasurement, measure_layers
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
    layers: list[LayerMeasurement] | None = None  # per layer, in module order (measure(..., per_layer=True))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latency"] = self.latency.to_dict() if self.latency else None
        d["layers"] = [layer.to_dict() for layer in self.layers] if self.layers is not None else None
        return d


def measure(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None, *,
            evaluate: Callable[[nn.Module], float] | None = None, latency: bool = True, threads: int | None = 2,
            warmup: int = 5, repeats: int = 30, sparse_file: bool = False, per_layer: bool = False) -> Measurement:
    """Parameters, MACs, file size, peak inference memory, latency and (with ``evaluate``) accuracy.

    ``per_layer=True`` adds :func:`~prunekit.measure.layers.measure_layers` (params, MACs, file bytes
    and, with ``latency``, self latency per layer; same threads, warm-up and repeats), taken in
    separate runs so its hooks do not slow the whole-model latency.
    """
    counts = count(model, example_inputs, example_kwargs)
    layers = measure_layers(model, example_inputs, example_kwargs, latency=latency, threads=threads, warmup=warmup,
                            repeats=repeats) if per_layer else None
    return Measurement(
        params=counts.params, macs=counts.macs, file_bytes=file_size(model, sparse=sparse_file),
        peak_memory_bytes=peak_memory(model, example_inputs, example_kwargs),
        latency=measure_latency(model, example_inputs, example_kwargs, threads=threads, warmup=warmup,
                                repeats=repeats) if latency else None,
        accuracy=evaluate(model) if evaluate is not None else None, layers=layers)


@dataclass
class Comparison:
    """Before/after numbers. ``paired`` holds latency measured in alternating rounds (runtime name ->
    :class:`PairedLatency`, e.g. ``"PyTorch"``, ``"ONNX Runtime"``); when present, its rows replace
    the unpaired latency row, whose two numbers were taken minutes apart and drift with the load."""

    before: Measurement
    after: Measurement
    paired: dict[str, PairedLatency] = field(default_factory=dict)

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
        for runtime, p in self.paired.items():
            rows.append((f"latency ms, {runtime} (batch {p.batch_size}, {p.config.threads} thr, paired: median of "
                         f"{p.config.rounds} alternating rounds)", f"{statistics.median(p.base_ms):.2f}",
                         f"{statistics.median(p.other_ms):.2f}", f"{p.ratio:.3f}"))
        if b.latency and a.latency and not self.paired:
            rows.append((f"latency ms (batch {b.latency.batch_size}, {b.latency.threads} thr, median)",
                         f"{b.latency.median_ms:.2f}", f"{a.latency.median_ms:.2f}",
                         ratio(b.latency.median_ms, a.latency.median_ms)))
        rows += [("peak memory MB", f"{b.peak_memory_bytes / 2**20:.1f}", f"{a.peak_memory_bytes / 2**20:.1f}",
                  ratio(b.peak_memory_bytes, a.peak_memory_bytes)),
                 ("file MB", f"{b.file_bytes / 2**20:.2f}", f"{a.file_bytes / 2**20:.2f}",
                  ratio(b.file_bytes, a.file_bytes))]
        return rows

    def table(self) -> str:
        """The whole-model before/after table (the per-layer one is :meth:`layer_table`)."""
        return _align([("", "before", "after", "after/before"), *self.rows()])

    def layer_rows(self) -> list[tuple[str, ...]]:
        """One row per layer path (before's order, then layers only the after model has): type, then
        shape, params, MACs, file KB and self latency as ``before -> after`` (one value when equal;
        ``gone`` for a layer the pruned model no longer has). Empty without per-layer numbers."""
        columns = self._layer_columns()
        return [((b or a).path or "(model)", (b or a).type,
                 *(_change(cell(b) if b else "new", cell(a) if a else "gone") for _, cell in columns))
                for b, a in _layer_pairs(self.before, self.after)]

    def layer_header(self) -> tuple[str, ...]:
        return ("layer", "type", *(name for name, _ in self._layer_columns()))

    def _layer_columns(self) -> tuple[tuple[str, Callable[[LayerMeasurement], str]], ...]:
        """The per-layer columns; latency only when every layer on both sides was timed."""
        layers = [*(self.before.layers or ()), *(self.after.layers or ())]
        timed = all(layer.latency_ms is not None for layer in layers)
        return _LAYER_COLUMNS if timed else _LAYER_COLUMNS[:-1]

    def layer_table(self) -> str:
        """The per-layer before/after table as aligned text ("" without per-layer numbers)."""
        rows = self.layer_rows()
        return _align([self.layer_header(), *rows], left=2) if rows else ""

    def to_json(self) -> str:
        d = {"before": self.before.to_dict(), "after": self.after.to_dict()}
        if self.paired:
            d["paired_latency"] = {k: p.to_dict() for k, p in self.paired.items()}
        if self.before.layers is not None and self.after.layers is not None:
            d["layers"] = [{"path": (b or a).path, "type": (b or a).type, "before": _numbers(b), "after": _numbers(a)}
                           for b, a in _layer_pairs(self.before, self.after)]  # after None: the layer is gone
        return json.dumps(d, indent=1)

    __str__ = table


def _layer_pairs(before: Measurement, after: Measurement
                 ) -> list[tuple[LayerMeasurement | None, LayerMeasurement | None]]:
    """Layers matched by module path: before's order, then those only the after model has."""
    if before.layers is None or after.layers is None:
        return []
    b = {layer.path: layer for layer in before.layers}
    a = {layer.path: layer for layer in after.layers}
    return [(b[p], a.get(p)) for p in b] + [(None, a[p]) for p in a if p not in b]


_LAYER_COLUMNS: tuple[tuple[str, Callable[[LayerMeasurement], str]], ...] = (
    ("shape", lambda m: "x".join(map(str, m.shape)) if m.shape is not None else "-"),
    ("params", lambda m: f"{m.params:,}"),
    ("MACs", lambda m: f"{m.macs:,}"),
    ("file KB", lambda m: f"{m.file_bytes / 1024:.1f}"),
    ("ms (self, median)", lambda m: f"{m.latency_ms:.3f}" if m.latency_ms is not None else "-"),
)


def _numbers(layer: LayerMeasurement | None) -> dict | None:
    return {k: v for k, v in layer.to_dict().items() if k not in ("path", "type")} if layer else None


def _change(before: str, after: str) -> str:
    return before if before == after else f"{before} -> {after}"


def _align(rows: list[tuple[str, ...]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first ``left`` columns flush left, the rest right."""
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i < left else c.rjust(w[i]) for i, c in enumerate(r)).rstrip()
                     for r in rows)


def _fmt(v: float | None, f: str) -> str:
    return f.format(v) if v is not None else "-"
