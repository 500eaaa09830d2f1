"""Parameters and MACs, counted by running the model under torch's own FlopCounterMode."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


def count(model: nn.Module, example_inputs: Any = (), example_kwargs: Mapping[str, Any] | None = None) -> Counts:
    """Parameters (unique tensors) and MACs of one eval forward (``FlopCounterMode`` FLOPs / 2)."""
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    params = sum(p.numel() for p in model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            mode = FlopCounterMode(display=False)
            with mode:
                model(*example_inputs, **dict(example_kwargs or {}))
    finally:
        model.train(was)
    return Counts(params=params, macs=int(mode.get_total_flops() // 2))
