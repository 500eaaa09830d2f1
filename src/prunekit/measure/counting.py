"""Parameters and MACs, counted by running the model under torch's own FLOP formulas.

``MacCounter`` is a lean ``TorchDispatchMode`` over ``torch.utils.flop_counter.flop_registry``
(the same per-op formulas ``FlopCounterMode`` uses, without its per-module bookkeeping), so
it is cheap enough to run on every prune; MACs = FLOPs / 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


_SHAPE_WRAPPED = shape_wrapper(lambda: None).__code__  # the wrapper torch puts around most formulas


def _shapes(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, (tuple, list)):
        return type(x)(_shapes(i) for i in x)
    return x


def flops_of(rule, args: tuple, kwargs: dict, out: Any) -> int:
    """``rule(*args, **kwargs, out_val=out)`` for a ``flop_registry`` formula, calling the formula
    on shapes directly when torch wrapped it (its pytree-based wrapper costs more than the op)."""
    if getattr(rule, "__code__", None) is _SHAPE_WRAPPED and hasattr(rule, "__wrapped__"):
        return rule.__wrapped__(*_shapes(args), out_shape=_shapes(out), **{k: _shapes(v) for k, v in kwargs.items()})
    return rule(*args, **kwargs, out_val=out)


class MacCounter(TorchDispatchMode):
    """Counts FLOPs of every ATen op that torch's flop counter knows (matmuls, convs, attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    @property
    def macs(self) -> int:
        return int(self.flops // 2)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = flop_registry.get(func._overloadpacket)
        if rule is not None:
            self.flops += flops_of(rule, args, kwargs, out)
        return out


def count(model: nn.Module, example_inputs: Any = (), example_kwargs: Mapping[str, Any] | None = None) -> Counts:
    """Parameters (unique tensors) and MACs of one eval forward (torch's FLOP formulas / 2)."""
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    params = sum(p.numel() for p in model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = MacCounter()
            with counter:
                model(*example_inputs, **dict(example_kwargs or {}))
    finally:
        model.train(was)
    return Counts(params=params, macs=counter.macs)
