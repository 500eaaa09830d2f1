"""Compressed storage for sparse weights in a safetensors file, so the saving shows on disk.

Each tensor is stored in the smallest of three encodings (chosen per tensor):

- ``dense``:   the tensor as is;
- ``bitmask``: one bit per element (``numpy.packbits``, uint8) plus the non-zero values;
- ``index``:   the flat positions of the non-zeros (uint32, or uint16 when they fit) plus
  the values -- smaller than a bitmask above ~97% sparsity.

Keys are ``<name>`` (dense) or ``<name>::mask`` / ``<name>::index`` with ``<name>::values``;
the file's metadata records every tensor's encoding, shape and dtype. Loading restores the
exact tensors (bit for bit). The write is atomic: a failed save leaves no file behind.
Nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file

FORMAT = "prunekit.sparse/1"


def _encode(name: str, t: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    t = t.detach().cpu().contiguous()
    dense_bytes = t.numel() * t.element_size()
    flat = t.reshape(-1)
    nz = flat != 0
    n_nz = int(nz.sum())
    values = flat[nz]
    value_bytes = n_nz * t.element_size()
    mask_bytes = (t.numel() + 7) // 8
    idx_dtype = np.uint16 if t.numel() <= np.iinfo(np.uint16).max + 1 else np.uint32
    index_bytes = n_nz * np.dtype(idx_dtype).itemsize
    best = min((dense_bytes, "dense"), (mask_bytes + value_bytes, "bitmask"), (index_bytes + value_bytes, "index"))[1]
    if best == "dense" or t.dim() == 0:
        return "dense", {name: t}
    if best == "bitmask":
        bits = np.packbits(nz.numpy().astype(np.uint8))
        return "bitmask", {f"{name}::mask": torch.from_numpy(bits), f"{name}::values": values}
    positions = torch.nonzero(nz).reshape(-1).numpy().astype(idx_dtype)
    # safetensors has no uint16/uint32 for every torch version: store the raw bytes as uint8
    return "index", {f"{name}::index": torch.from_numpy(positions.view(np.uint8)), f"{name}::values": values}


def save_sparse(state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> dict[str, str]:
    """Save a model's ``state_dict()`` (or a dict of tensors) compressed; returns each tensor's encoding.

    Tied tensors (one storage under two names) are stored once per name.
    """
    tensors = state.state_dict() if isinstance(state, nn.Module) else dict(state)
    payload: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, t in tensors.items():
        if "::" in name:
            raise ValueError(f"tensor name {name!r} contains '::', which this format reserves")
        enc, parts = _encode(name, t)
        payload.update({k: v.clone() if v.data_ptr() == t.data_ptr() else v for k, v in parts.items()})
        meta[name] = {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".prunekit-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(payload, tmp, metadata={"format": FORMAT, "tensors": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {n: m["encoding"] for n, m in meta.items()}


def load_sparse(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` back into a plain ``state_dict``."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prunekit sparse file (format {header.get('format')!r})")
    meta = json.loads(header["tensors"])
    raw = load_file(os.fspath(path))
    out: dict[str, torch.Tensor] = {}
    for name, m in meta.items():
        dtype = getattr(torch, m["dtype"])
        shape = tuple(m["shape"])
        numel = int(np.prod(shape)) if shape else 1
        if m["encoding"] == "dense":
            t = raw[name]
        else:
            values = raw[f"{name}::values"]
            flat = torch.zeros(numel, dtype=dtype)
            if m["encoding"] == "bitmask":
                bits = np.unpackbits(raw[f"{name}::mask"].numpy(), count=numel).astype(bool)
                flat[torch.from_numpy(bits)] = values
            elif m["encoding"] == "index":
                idx_dtype = np.uint16 if numel <= np.iinfo(np.uint16).max + 1 else np.uint32
                pos = raw[f"{name}::index"].numpy().view(idx_dtype).astype(np.int64)
                flat[torch.from_numpy(pos)] = values
            else:
                raise ValueError(f"unknown encoding {m['encoding']!r} for {name}")
            t = flat.reshape(shape)
        out[name] = t.to(device)
    return out
