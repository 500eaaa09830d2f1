"""Batches follow the model: one helper moves (nested) batches to a model's device.

>>> import torch
>>> batch = move_to({"x": torch.ones(2), "meta": "kept", "pair": (torch.zeros(1), 3)}, "cpu")
>>> batch["meta"], batch["pair"][1]
('kept', 3)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def move_to(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor inside tuples, lists, dicts (and dataclass-free mappings such as
    a tokenizer's ``BatchEncoding``) moved to ``device``; everything else is returned as is."""
    device = torch.device(device)
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(b, device) for b in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return type(batch)((k, move_to(v, device)) for k, v in batch.items())
    if hasattr(batch, "items") and hasattr(batch, "keys"):  # BatchEncoding and other mappings
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch
