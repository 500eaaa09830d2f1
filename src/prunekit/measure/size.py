"""Saved file size: what the model really costs on disk."""
from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import save_file
from torch import nn


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with tied tensors kept once (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype) if v.numel() else (k,)
        if key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    return out


def state_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes each state_dict entry takes in the saved safetensors file (tied tensors once, under their
    first key). Their sum plus the header (8 bytes + its JSON) is :func:`file_size`."""
    return {k: v.numel() * v.element_size() for k, v in _unique_state(model).items()}


def file_size(model: nn.Module, sparse: bool = False) -> int:
    """Bytes of the model's weights saved as safetensors (``sparse=True``: prunekit's compressed format)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        if sparse:
            from ..sparsity import save_sparse

            save_sparse(model, path)
        else:
            save_file(_unique_state(model), path)
        return os.path.getsize(path)
