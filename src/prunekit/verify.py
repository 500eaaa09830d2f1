"""The correctness oracle: soft-applied (zeroed) and hard-pruned (removed) models must agree."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from .graph.tracer import iter_tensors
from .plan import Plan, apply_plan


def soft_hard_error(model: nn.Module, plan: Plan, example_inputs: Any,
                    example_kwargs: Mapping[str, Any] | None = None) -> float:
    """Max relative difference between the soft- and hard-applied copies of ``model`` (eval mode).

    For a plan of *exact* groups (``plan.exact``) this is ~1e-7: removal is exactly
    equivalent to zeroing. ``model`` itself is not changed.
    """
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    soft = apply_plan(copy.deepcopy(model), plan, "soft").eval()
    hard = apply_plan(copy.deepcopy(model), plan, "hard").eval()
    with torch.no_grad():
        a = list(iter_tensors(soft(*example_inputs, **dict(example_kwargs or {}))))
        b = list(iter_tensors(hard(*example_inputs, **dict(example_kwargs or {}))))
    if len(a) != len(b):
        raise AssertionError(f"soft model returned {len(a)} tensors, hard model {len(b)}")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise AssertionError(f"output shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        if not x.is_floating_point():
            continue
        scale = x.abs().max().clamp_min(1e-12)
        worst = max(worst, float((x - y).abs().max() / scale))
    return worst
