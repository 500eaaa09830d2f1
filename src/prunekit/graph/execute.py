"""Run a model on the ``meta`` device: shapes and op sequence without computing anything.

Tracing and shape checks only need shapes, so we run the model through
``torch.func.functional_call`` with meta copies of its parameters, buffers and inputs. A model
that needs real values (data-dependent control flow, ``.item()``, ops without meta kernels)
raises there, and callers fall back to a real forward.
"""
from __future__ import annotations

from typing import Any, Mapping

import contextlib

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.flop_counter import flop_registry

from ..measure.counting import MacCounter, flops_of
from .walk import Walk, walk

# Ops whose output has the input's shape: on meta tensors we skip their (Python) meta kernels.
SHAPE_PRESERVING = frozenset({
    "batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm", "relu", "relu6", "hardtanh", "gelu",
    "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "mish", "dropout",
    "relu_", "hardtanh_", "silu_", "hardswish_", "hardsigmoid_", "sigmoid_", "tanh_", "leaky_relu_",
})


class ShapeOnly(TorchFunctionMode):
    """On meta tensors, answer shape-preserving ops with an empty tensor of the input's shape,
    and convolutions with one of the output's shape (after checking the channel counts, as
    torch does), skipping their Python meta kernels."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _CONV_DIMS and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            out = _meta_conv(_CONV_DIMS[name], *args, **kwargs)
            if out is not None:
                return out
        if name in SHAPE_PRESERVING and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            if name.endswith("_") or kwargs.get("inplace") or (name in ("relu", "relu6", "hardtanh", "silu",
                                                                        "hardswish", "leaky_relu", "elu", "selu",
                                                                        "mish", "hardsigmoid", "dropout")
                                                               and _inplace_arg(name, args)):
                return args[0]
            return torch.empty_like(args[0])
        return func(*args, **kwargs)


_CONV_DIMS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _meta_conv(nd: int, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv{nd}d`` on meta tensors by the output-size formula; ``None`` to let torch do it.

    FLOPs are still counted with torch's own formula when a :class:`MacCounter` is active.
    """
    if x.dim() != nd + 2 or weight.dim() != nd + 2 or not weight.is_meta:
        return None
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise RuntimeError(f"conv{nd}d: input with {x.shape[1]} channels does not fit weight "
                           f"{tuple(weight.shape)} with groups={groups}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(f"conv{nd}d: bias of shape {tuple(bias.shape)} for {weight.shape[0]} output channels")
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    spatial = x.shape[2:]
    kernel = weight.shape[2:]
    if padding == "same":
        size = tuple(spatial)
    else:
        pad = (0,) * nd if padding == "valid" else _tuple(padding, nd)
        size = tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                     for i, p, d, k, s in zip(spatial, pad, dilation, kernel, stride))
    if any(v <= 0 for v in size):
        return None  # let torch raise its own error
    out = torch.empty((x.shape[0], weight.shape[0], *size), device="meta", dtype=x.dtype)
    for mode in _get_current_dispatch_mode_stack():
        if isinstance(mode, MacCounter):
            mode.flops += flops_of(flop_registry[torch.ops.aten.convolution],
                                   (x, weight, bias, stride, padding, dilation, False, (0,) * nd, groups), {}, out)
    return out


def _inplace_arg(name: str, args: tuple) -> bool:
    pos = {"relu": 1, "relu6": 1, "silu": 1, "hardswish": 1, "mish": 1, "hardsigmoid": 1, "selu": 1,
           "elu": 2, "leaky_relu": 2, "hardtanh": 3, "dropout": 3}.get(name)
    return pos is not None and len(args) > pos and args[pos] is True


def _to_meta(x: Any) -> Any:
    return x.to("meta") if isinstance(x, torch.Tensor) else x


def meta_tensors(model: nn.Module, walked: Walk | None = None) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer (tied tensors share one stand-in)."""
    walked = walked if walked is not None else walk(model)
    out: dict[str, torch.Tensor] = {}
    for name, p in walked.params.items():
        out[name] = torch.empty_like(p, device="meta")
    for name, b in walked.buffers.items():
        out.setdefault(name, torch.empty_like(b, device="meta"))
    return out


def meta_forward(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any],
                 tensors: dict[str, torch.Tensor] | None = None, mode: TorchFunctionMode | None = None) -> Any:
    """``model(*inputs, **kwargs)`` on the meta device; ``tensors`` maps names to the stand-ins used.

    ``mode`` (e.g. the tracer) sees every op before the meta shortcuts do.
    """
    tensors = meta_tensors(model) if tensors is None else tensors
    args = tree_map(_to_meta, tuple(inputs))
    kw = tree_map(_to_meta, dict(kwargs))
    with torch.no_grad(), ShapeOnly(), (mode if mode is not None else contextlib.nullcontext()):
        return torch.func.functional_call(model, tensors, args, kw, tie_weights=True, strict=False)
