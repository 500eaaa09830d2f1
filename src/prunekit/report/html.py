"""One HTML page per run: the before/after table (and the per-layer one when the measurements
have it), PNG plots (sensitivity curves, layer widths before/after, accuracy vs MACs across
prune-recover cycles, latency before/after), and the JSON summary beside it (``summary.json``).
Plots use matplotlib's Agg backend (no display)."""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .. import compat
from ..io.atomic import staged_folder
from ..measure.compare import Comparison
from ..decide.curves import Sensitivity


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width (channels / features) of every Linear and Conv layer, by module path."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, compat.CONV):
            out[name] = m.out_channels
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    _plt().close(fig)
    return name


def _sensitivity_plot(sens: Sensitivity, folder: Path, top: int = 12) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    worst = sorted(sens.curves, key=lambda c: min(c.scores))[:top]  # the most sensitive groups
    for c in worst:
        ax.plot([0.0, *c.ratios], [sens.base_score, *c.scores], marker="o", label=c.key)
    ax.set_xlabel("ratio of the group removed")
    ax.set_ylabel("score (higher = better)")
    ax.set_title(f"Sensitivity, {len(worst)} most sensitive of {len(sens.curves)} groups")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, folder, "sensitivity.png")


def _widths_plot(before: dict[str, int], after: dict[str, int], folder: Path) -> str:
    plt = _plt()
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.12), 4))
    ax.bar(range(len(names)), [before[n] for n in names], color="#bbbbbb", label="before")
    ax.bar(range(len(names)), [after.get(n, 0) for n in names], color="#1f77b4", label="after")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("output channels / features")
    ax.set_title("Layer widths before and after")
    ax.legend()
    return _save(fig, folder, "widths.png")


def _cycles_plot(cycles: Sequence[dict], folder: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c["macs"] / 1e6 for c in cycles], [c["accuracy"] for c in cycles], marker="o")
    for c in cycles:
        ax.annotate(str(c.get("step", "")), (c["macs"] / 1e6, c["accuracy"]), fontsize=7)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs MACs across prune-recover cycles")
    ax.invert_xaxis()
    return _save(fig, folder, "cycles.png")


def _latency_plot(cmp: Comparison, folder: Path) -> str:
    plt = _plt()
    if cmp.paired:  # paired rounds: before/after per runtime, bars at the median, whiskers min-max over rounds
        import statistics

        fig, ax = plt.subplots(figsize=(1.5 + 2.2 * len(cmp.paired), 4))
        for i, (runtime, p) in enumerate(cmp.paired.items()):
            for j, (vals, color) in enumerate(((p.base_ms, "#bbbbbb"), (p.other_ms, "#1f77b4"))):
                med = statistics.median(vals)
                ax.bar(i + 0.38 * (j - 0.5), med, width=0.36, color=color,
                       yerr=[[med - min(vals)], [max(vals) - med]], capsize=5,
                       label=("before", "after")[j] if i == 0 else None)
        ax.set_xticks(range(len(cmp.paired)), list(cmp.paired))
        ax.legend()
        first = next(iter(cmp.paired.values()))
        ax.set_ylabel("ms (median of rounds, min-max)")
        ax.set_title(f"Paired latency, batch {first.batch_size}, {first.config.threads} thr, {first.config.rounds} rounds",
                     fontsize=9)
        return _save(fig, folder, "latency.png")
    fig, ax = plt.subplots(figsize=(4.5, 4))
    b, a = cmp.before.latency, cmp.after.latency
    ax.bar(["before", "after"], [b.median_ms, a.median_ms], color=["#bbbbbb", "#1f77b4"],
           yerr=[[b.median_ms - b.p10_ms, a.median_ms - a.p10_ms], [b.p90_ms - b.median_ms, a.p90_ms - a.median_ms]],
           capsize=6)
    ax.set_ylabel("ms (median, p10-p90)")
    ax.set_title(f"Latency, batch {b.batch_size}, {b.threads} threads")
    return _save(fig, folder, "latency.png")


def _layer_table(cmp: Comparison) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cmp.layer_header())
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cmp.layer_rows())
    return ("<h2>Per layer</h2><p>Matched by module path; cells read before -&gt; after (one value when "
            "unchanged, <i>gone</i> when the layer was removed). MACs and latency are each layer's own "
            "(children excluded).</p>"
            f"<table border=1 cellpadding=3 style='font-size: small'><tr>{head}</tr>{rows}</table>")


def write_report(folder: str | os.PathLike, title: str, *, comparison: Comparison | None = None,
                 sensitivity: Sensitivity | None = None, widths: tuple[dict, dict] | None = None,
                 cycles: Sequence[dict] | None = None, notes: Sequence[str] = (),
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``report.html``, its PNGs and ``summary.json`` into ``folder``; returns the HTML path.

    Everything is written into a staging folder first and then moved in file by file (the page
    last), so an interrupted or failed write (a full disk) leaves the previous report as it was,
    never a truncated ``summary.json``; other files in ``folder`` are left alone.
    """
    target = Path(folder)
    with staged_folder(target, last="report.html") as stage:
        parts = [f"<h1>{html.escape(title)}</h1>"]
        parts += [f"<p>{html.escape(n)}</p>" for n in notes]
        summary: dict[str, Any] = {"title": title, **(extra or {})}
        if comparison is not None:
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                           for r in comparison.rows())
            parts.append("<h2>Before and after</h2><table border=1 cellpadding=4><tr><th></th><th>before</th>"
                         f"<th>after</th><th>after/before</th></tr>{rows}</table>")
            summary["comparison"] = json.loads(comparison.to_json())
            if comparison.paired or (comparison.before.latency and comparison.after.latency):
                parts.append(f'<img src="{_latency_plot(comparison, stage)}">')
            if comparison.layer_rows():
                parts.append(_layer_table(comparison))
        if widths is not None:
            parts.append(f'<h2>Layer widths</h2><img src="{_widths_plot(*widths, stage)}">')
            summary["widths"] = {"before": widths[0], "after": widths[1]}
        if sensitivity is not None:
            parts.append(f'<h2>Sensitivity</h2><img src="{_sensitivity_plot(sensitivity, stage)}">')
            summary["sensitivity"] = sensitivity.to_dict()
        if cycles:
            parts.append(f'<h2>Prune-recover cycles</h2><img src="{_cycles_plot(cycles, stage)}">')
            summary["cycles"] = list(cycles)
        (stage / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (stage / "report.html").write_text(
            "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
            "</title></head><body style='font-family: sans-serif'>" + "\n".join(parts) +
            "<p>JSON: <a href='summary.json'>summary.json</a></p></body></html>\n")
    return target / "report.html"
