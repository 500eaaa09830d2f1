"""Structural activation mode: remove the units that cannot affect the output, exactly.

A unit is a candidate when, on the calibration data, it is

- **dead**: every activation output it has (after ReLU, ReLU6, GELU ...) was exactly zero
  (``max |a| <= tol``);
- **constant**: its activation output never varied (variance 0) and is a non-zero ``c``: the
  unit is removed and ``c * W[:, i]`` is folded into the bias of every layer that reads it
  (Linear, or Conv without padding or groups, that already has a bias; otherwise the unit is
  kept and counted);
- **disconnected**: every layer that reads it (Linear/Conv input slices) has all-zero weights.

Candidates are *proven* group by group: on a copy, the folds are applied and the units zeroed
(soft apply), and the outputs on every calibration batch must not change. Only proven units
are removed (hard apply); the final model is checked against the original outputs once more,
and on any difference everything is rolled back.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .. import compat
from ..calibration.activations import KIND_ORDER, _default_forward, collect_activation_stats
from ..errors import ApplyError
from ..graph.groups import Group
from ..graph.tracer import as_inputs, iter_tensors, trace
from ..measure import Counts, count
from ..plan import Plan, apply_plan, make_plan

_READERS = (nn.Linear, compat.CONV)


@dataclass
class DeadUnitsResult:
    plan: Plan
    dead: int
    constant: int  # removed, their value folded into the readers' biases
    disconnected: int
    constant_kept: int  # constant units whose readers have no bias to fold into
    rejected: int  # candidates whose removal changed an output
    before: Counts
    after: Counts
    max_abs_diff: float
    per_group: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (f"removed {self.dead} dead, {self.constant} constant (folded) and {self.disconnected} disconnected "
                f"units ({self.rejected} candidates rejected, {self.constant_kept} constant units kept); params "
                f"{self.before.params:,} -> {self.after.params:,}, MACs {self.before.macs:,} -> {self.after.macs:,}; "
                f"max |output change| on the calibration data {self.max_abs_diff:.3g}")


def _readers(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{p}.weight" if p else "weight": m for p, m in model.named_modules() if isinstance(m, _READERS)}


def _foldable(m: nn.Module) -> bool:
    if getattr(m, "bias", None) is None:
        return False
    if isinstance(m, compat.CONV):
        pad = m.padding if isinstance(m.padding, tuple) else (m.padding,)
        return m.groups == 1 and not m.transposed and (m.padding == "valid" or all(p == 0 for p in pad))
    return True


def _reader_rows(group: Group, readers: dict[str, nn.Module]):
    """(unit, reader weight name, input index) for every input slice of a reader in ``group``."""
    units, keys, idx, names = group.member_rows()
    for k in np.unique(keys).tolist():
        name, dim = names[k]
        if name in readers and dim == 1:
            sel = keys == k
            yield units[sel], name, idx[sel]


def _classify(model: nn.Module, group: Group, readers: dict[str, nn.Module]) -> tuple[np.ndarray, np.ndarray]:
    """Per unit: disconnected (all reader slices zero) and foldable (every reader can take a bias fold)."""
    params = dict(model.named_parameters())
    n = len(group)
    has_reader = np.zeros(n, dtype=bool)
    nonzero = np.zeros(n, dtype=bool)
    blocked = np.zeros(n, dtype=bool)
    for units, name, idx in _reader_rows(group, readers):
        w = params[name].detach()
        mags = w.abs().sum(dim=[d for d in range(w.dim()) if d != 1]).numpy()  # (in,)
        has_reader[units] = True
        np.logical_or.at(nonzero, units, mags[idx] > 0)
        if not _foldable(readers[name]):
            blocked[units] = True
    return has_reader & ~nonzero, has_reader & ~blocked


def _fold(model: nn.Module, group: Group, units: np.ndarray, values: torch.Tensor) -> None:
    """Add ``c_i * W[:, i]`` (summed over kernel positions) to each reader's bias, for the units."""
    readers = _readers(model)
    chosen = set(units.tolist())
    with torch.no_grad():
        for unit_ids, name, idx in _reader_rows(group, readers):
            mod = readers[name]
            for u, i in zip(unit_ids.tolist(), idx.tolist()):
                if u in chosen:
                    w = mod.weight[:, i]  # (out, *kernel)
                    mod.bias.add_(float(values[u]) * w.reshape(w.shape[0], -1).sum(1))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float summation order (1e-5 of the output's scale)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool((a - b).abs().max() <= 1e-5 * a.abs().max().clamp_min(1e-12))


def _outputs(model: nn.Module, batches: list, forward) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().clone() for b in batches for t in iter_tensors(forward(model, b))]


def remove_dead_units_(model: nn.Module, example_inputs: Any, data: Iterable[Any], *, tol: float = 0.0,
                       example_kwargs: Mapping[str, Any] | None = None, max_batches: int | None = None,
                       forward: Callable[[nn.Module, Any], Any] = _default_forward,
                       ignore: Iterable[str] = ()) -> DeadUnitsResult:
    """Find and remove dead, constant and disconnected units of ``model`` (in place); see the module doc."""
    inputs = as_inputs(example_inputs)
    was = model.training
    model.eval()
    batches = list(data)[:max_batches] if max_batches is not None else list(data)
    try:
        before = count(model, inputs, example_kwargs)
        graph = trace(model, inputs, example_kwargs, ignore=ignore)
        groups = [g for g in graph.groups(("channel",)) if g.exact and len(g) >= 2]
        stats = collect_activation_stats(model, graph, batches, forward=forward)
        readers = _readers(model)
        act = KIND_ORDER.index("activation")
        reference = _outputs(model, batches, forward)
        accepted: list[tuple[Group, np.ndarray, np.ndarray, np.ndarray, torch.Tensor]] = []
        rejected = constant_kept = 0
        for g in groups:
            mx, kind = stats.unit_values(g, "max")
            var, _ = stats.unit_values(g, "var")
            value, _ = stats.unit_values(g, "const")
            at_act = (kind == act).numpy()
            dead = at_act & (mx <= tol).numpy()
            disc, foldable = _classify(model, g, readers)
            disc &= ~dead
            const = at_act & (var == 0).numpy() & ~dead & ~disc
            constant_kept += int((const & ~foldable).sum())
            const &= foldable
            cand = dead | disc | const
            if cand.all():  # a tensor dim cannot be emptied: keep one unit
                keep = int(torch.argmax(torch.nan_to_num(mx, nan=0.0)))
                cand[keep] = dead[keep] = disc[keep] = const[keep] = False
            if not cand.any():
                continue
            units = np.flatnonzero(cand)
            trial = copy.deepcopy(model)
            if const.any():
                _fold(trial, g, np.flatnonzero(const), value)
            apply_plan(trial, make_plan(graph, set(g.unit_roots(units))), "soft")
            if all(_close(a, b) for a, b in zip(reference, _outputs(trial, batches, forward))):
                accepted.append((g, dead & cand, const & cand, disc & cand, value))
            else:
                rejected += len(units)
        roots: set[int] = set()
        rows = []
        for g, dead, const, disc, _ in accepted:
            roots.update(g.unit_roots(np.flatnonzero(dead | const | disc)))
            rows.append({"group": g.id, "root": f"{g.root[0]}:{g.root[1]}", "units": len(g),
                         "dead": int(dead.sum()), "constant": int(const.sum()), "disconnected": int(disc.sum())})
        plan = make_plan(graph, roots, rows)
        biases = {n: m.bias.detach().clone() for n, m in readers.items() if m.bias is not None}
        try:
            for g, _, const, _, value in accepted:
                if const.any():
                    _fold(model, g, np.flatnonzero(const), value)

            def check(m: nn.Module) -> None:
                if not all(_close(a, b) for a, b in zip(reference, _outputs(m, batches, forward))):
                    raise ApplyError("removing the proven units together changed the outputs")

            if not plan.is_empty():
                apply_plan(model, plan, "hard", check=check)
        except Exception:
            with torch.no_grad():
                for n, b in biases.items():
                    readers[n].bias.copy_(b)
            raise
        after = count(model, inputs, example_kwargs)
        diff = max((float((a - b).abs().max()) for a, b in zip(reference, _outputs(model, batches, forward))
                    if a.is_floating_point()), default=0.0)
    finally:
        model.train(was)
    return DeadUnitsResult(plan, sum(r["dead"] for r in rows), sum(r["constant"] for r in rows),
                           sum(r["disconnected"] for r in rows), constant_kept, rejected, before, after, diff, rows)
