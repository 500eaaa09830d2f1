"""An optimizer's per-parameter state, carried across a plan's apply: the same slices that leave a
parameter leave its state tensors (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, and any other state tensor shaped like its parameter).

A hard apply keeps every ``nn.Parameter`` object (only its data is replaced), so an optimizer built
before the prune still holds the model's parameters; with ``optimizer=`` its state is sliced too, and
training goes on exactly as with a fresh optimizer whose state was sliced by hand. Scalars (``step``)
are left as they are. State that cannot be sliced is refused before anything changes, naming the
parameter and the state key (:class:`~prunekit.errors.OptimizerStateError`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .errors import OptimizerStateError


def remove_indices(t: torch.Tensor, dims: Mapping[int, list[int]]) -> torch.Tensor:
    """``t`` without the given indices along each dim (a new tensor; ``t`` is unchanged)."""
    for dim, idx in sorted(dims.items()):
        keep = np.ones(t.shape[dim], dtype=bool)
        keep[idx] = False
        t = t.index_select(dim, torch.from_numpy(np.flatnonzero(keep)).to(t.device))
    return t


def zero_indices(t: torch.Tensor, dims: Mapping[int, list[int]]) -> torch.Tensor:
    """A copy of ``t`` with the given indices along each dim set to zero."""
    t = t.clone()
    for dim, idx in dims.items():
        t.index_fill_(dim, torch.tensor(idx, dtype=torch.long, device=t.device), 0)
    return t


def _state_owner(optimizer: torch.optim.Optimizer) -> str:
    return type(optimizer).__name__


def state_updates(optimizer: torch.optim.Optimizer, removed: Mapping[str, Mapping[int, list[int]]],
                  params: Mapping[str, nn.Parameter], mode: str, rescaled: set[str] = frozenset()
                  ) -> list[tuple[dict[str, Any], str, torch.Tensor]]:
    """The state entries to replace when a plan removing ``removed`` (state_dict name -> dim -> indices)
    is applied in ``mode`` ("hard": slice them out; "soft": zero them): ``(state, key, new_value)``
    triples, computed without changing anything.

    Raises :class:`~prunekit.errors.OptimizerStateError`, naming the parameter and key, for a state
    tensor of a pruned parameter that is not shaped like it (factored or flattened state), for a pruned
    parameter whose slices a hard apply also rescales, and for optimizers that keep state across
    parameters (L-BFGS)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.LBFGS):
        raise OptimizerStateError("LBFGS keeps its history as flat vectors over all parameters, which cannot be "
                                  "sliced per parameter; build a new LBFGS after pruning")
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    updates: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    for name, dims in removed.items():
        p = params.get(name)
        if p is None or id(p) not in in_optimizer:
            continue  # a buffer, or a parameter this optimizer does not train
        state = optimizer.state.get(p)
        if not state:
            continue
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                if value is None or isinstance(value, (int, float, bool)):
                    continue  # e.g. SGD's momentum_buffer before its first step, a step count
                raise OptimizerStateError(f"{_state_owner(optimizer)} state {key!r} of parameter {name!r} is a "
                                          f"{type(value).__name__}, which prunekit cannot slice")
            if value.dim() == 0:
                continue  # a scalar: Adam's step
            if tuple(value.shape) != tuple(p.shape):
                raise OptimizerStateError(
                    f"{_state_owner(optimizer)} state {key!r} of parameter {name!r} has shape {tuple(value.shape)}, "
                    f"not the parameter's {tuple(p.shape)}: prunekit cannot slice it along the pruned dims; "
                    "build a new optimizer after pruning")
            if mode == "hard" and name in rescaled:
                raise OptimizerStateError(
                    f"the plan rescales slices of {name!r} (a folded attention scale), so its {key!r} state would "
                    "no longer match; build a new optimizer after pruning")
            new = remove_indices(value, dims) if mode == "hard" else zero_indices(value, dims)
            updates.append((state, key, new.contiguous() if mode == "hard" else new))
    return updates
