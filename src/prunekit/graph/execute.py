"""Run a model on the ``meta`` device: shapes and op sequence without computing anything.

Tracing and shape checks only need shapes, so we run the model through
``torch.func.functional_call`` with meta copies of its parameters, buffers and inputs. A model
that needs real values (data-dependent control flow, ``.item()``, ops without meta kernels)
raises there, and callers fall back to a real forward.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.utils._pytree import tree_map


def _to_meta(x: Any) -> Any:
    return x.to("meta") if isinstance(x, torch.Tensor) else x


def meta_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer (tied tensors share one stand-in)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        out[name] = torch.empty_like(p, device="meta")
    for name, b in model.named_buffers():
        out.setdefault(name, torch.empty_like(b, device="meta"))
    return out


def meta_forward(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any],
                 tensors: dict[str, torch.Tensor] | None = None) -> Any:
    """``model(*inputs, **kwargs)`` on the meta device; ``tensors`` maps names to the stand-ins used."""
    tensors = meta_tensors(model) if tensors is None else tensors
    args = tree_map(_to_meta, tuple(inputs))
    kw = tree_map(_to_meta, dict(kwargs))
    with torch.no_grad():
        return torch.func.functional_call(model, tensors, args, kw, tie_weights=True, strict=False)
