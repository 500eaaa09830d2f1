"""Structural activation mode: remove the units that cannot affect the output, exactly.

A unit is a candidate when, on the calibration data, it is

- **dead**: every activation output it has (after ReLU, ReLU6, GELU ...) was exactly zero
  (``max |a| <= tol``), or
- **disconnected**: every layer that reads it (Linear/Conv input slices) has all-zero weights.

Candidates are then *proven*: the unit is zeroed (soft apply) on a copy and the outputs on
every calibration batch must not change. Only proven units are removed (hard apply), so the
pruned model gives the same outputs as before on that data. Units that are merely
*constant* (zero variance, non-zero value) are counted in the report but not removed: they
would need their value folded into the next layer's bias.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .calibration.activations import KIND_ORDER, _default_forward, collect_activation_stats
from .graph.groups import Group
from .graph.tracer import iter_tensors, trace
from .measure import Counts, count
from .plan import Plan, apply_plan, make_plan

_READERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class DeadUnitsResult:
    plan: Plan
    dead: int
    disconnected: int
    constant: int
    rejected: int  # candidates whose zeroing changed an output
    before: Counts
    after: Counts
    max_abs_diff: float
    per_group: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (f"removed {self.dead} dead and {self.disconnected} disconnected units "
                f"({self.rejected} candidates rejected, {self.constant} constant units kept); "
                f"params {self.before.params:,} -> {self.after.params:,}, MACs {self.before.macs:,} -> "
                f"{self.after.macs:,}; max |output change| on the calibration data {self.max_abs_diff:.3g}")


def _reader_inputs(model: nn.Module) -> set[str]:
    return {f"{p}.weight" if p else "weight" for p, m in model.named_modules() if isinstance(m, _READERS)}


def _disconnected(model: nn.Module, group: Group, readers: set[str]) -> np.ndarray:
    """Units whose every reading weight slice (dim 1 of a Linear/Conv weight) is all zero."""
    params = dict(model.named_parameters())
    units, keys, idx, names = group.member_rows()
    n = len(group)
    has_reader = np.zeros(n, dtype=bool)
    nonzero = np.zeros(n, dtype=bool)
    for k in np.unique(keys).tolist():
        name, dim = names[k]
        if name not in readers or dim != 1:
            continue
        w = params[name].detach()
        mags = w.abs().sum(dim=[d for d in range(w.dim()) if d != 1]).numpy()  # (in,)
        sel = keys == k
        has_reader[units[sel]] = True
        np.logical_or.at(nonzero, units[sel], mags[idx[sel]] > 0)
    return has_reader & ~nonzero


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float summation order (1e-6 of the output's scale)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return bool((a - b).abs().max() <= 1e-6 * a.abs().max().clamp_min(1e-12))


def _outputs(model: nn.Module, batches: list, forward) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().clone() for b in batches for t in iter_tensors(forward(model, b))]


def remove_dead_units_(model: nn.Module, example_inputs: Any, data: Iterable[Any], *, tol: float = 0.0,
                       example_kwargs: Mapping[str, Any] | None = None, max_batches: int | None = None,
                       forward: Callable[[nn.Module, Any], Any] = _default_forward,
                       ignore: Iterable[str] = ()) -> DeadUnitsResult:
    """Find and remove dead or disconnected units of ``model`` (in place); see the module doc."""
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    was = model.training
    model.eval()
    batches = list(data)[:max_batches] if max_batches is not None else list(data)
    try:
        before = count(model, inputs, example_kwargs)
        graph = trace(model, inputs, example_kwargs, ignore=ignore)
        groups = [g for g in graph.groups(("channel",)) if g.exact and len(g) >= 2]
        stats = collect_activation_stats(model, graph, batches, forward=forward)
        readers = _reader_inputs(model)
        act = KIND_ORDER.index("activation")
        chosen_by_group: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        n_constant = 0
        for g in groups:
            mx, kind = stats.unit_values(g, "max")
            dead = ((kind == act) & (mx <= tol)).numpy()
            var, vkind = stats.unit_values(g, "var")
            n_constant += int(((vkind == act) & (var == 0) & (mx > tol)).sum())
            disc = _disconnected(model, g, readers) & ~dead
            cand = dead | disc
            if cand.all():  # a tensor dim cannot be emptied: keep the unit that matters most
                keep = int(torch.argmax(torch.nan_to_num(mx, nan=0.0)))
                cand[keep] = dead[keep] = disc[keep] = False
            if cand.any():
                chosen_by_group[g.id] = (dead & cand, disc & cand)
        reference = _outputs(model, batches, forward)
        by_id = {g.id: g for g in groups}
        accepted: list[int] = []
        rejected = 0
        for gid, (dead, disc) in chosen_by_group.items():  # prove each group's candidates
            g = by_id[gid]
            units = np.flatnonzero(dead | disc)
            plan = make_plan(graph, set(g.unit_roots(units)))
            trial = apply_plan(copy.deepcopy(model), plan, "soft")
            same = all(_close(a, b) for a, b in zip(reference, _outputs(trial, batches, forward)))
            if same:
                accepted.append(gid)
            else:
                rejected += len(units)
        roots: set[int] = set()
        rows = []
        n_dead = n_disc = 0
        for gid in accepted:
            dead, disc = chosen_by_group[gid]
            g = by_id[gid]
            roots.update(g.unit_roots(np.flatnonzero(dead | disc)))
            n_dead += int(dead.sum())
            n_disc += int(disc.sum())
            rows.append({"group": gid, "root": f"{g.root[0]}:{g.root[1]}", "units": len(g),
                         "dead": int(dead.sum()), "disconnected": int(disc.sum())})
        plan = make_plan(graph, roots, rows)
        if not plan.is_empty():
            apply_plan(model, plan, "hard")
        after = count(model, inputs, example_kwargs)
        diff = max((float((a - b).abs().max()) for a, b in zip(reference, _outputs(model, batches, forward))
                    if a.is_floating_point()), default=0.0)
    finally:
        model.train(was)
    return DeadUnitsResult(plan, n_dead, n_disc, n_constant, rejected, before, after, diff, rows)
