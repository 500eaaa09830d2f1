"""Saving sparse causal LMs two ways -- dense (``save_pretrained``) and compressed -- both reloading exactly.

The compressed folder holds the model's ``config.json`` (and ``generation_config.json``), one
``model.sparse.safetensors`` written by :func:`prunekit.sparsity.storage.save_sparse` (each tensor
stored as dense, bitmask + values or index + values, whichever is smallest) and a
``prunekit_sparse.json`` that says so. :func:`load_compressed` rebuilds the model from its config
on the meta device and assigns the decoded tensors, so no random initialisation is paid and the
weights are bit for bit those saved. Plain ``from_pretrained`` on a compressed folder fails
clearly (transformers finds no weights file); :func:`load` reads either kind.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..sparsity.storage import load_sparse, save_sparse
from .loading import _dtype_kw

COMPRESSED_FILE = "model.sparse.safetensors"
MARKER_FILE = "prunekit_sparse.json"


@dataclass(frozen=True)
class SavedSparse:
    """What a save wrote: the folder, the bytes of the weight file(s) and the encodings used."""

    folder: str
    kind: str  # "dense" or "compressed"
    weight_bytes: int
    encodings: dict[str, int]  # encoding -> number of tensors (compressed only)


def _weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def save_dense(model: nn.Module, folder: str | os.PathLike, *, max_shard_size: str = "5GB") -> SavedSparse:
    """``model.save_pretrained(folder)`` in safetensors: zeros stored as zeros, reloads with plain transformers."""
    out = Path(folder)
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard_size)
    return SavedSparse(str(out), "dense", _weight_bytes(out), {})


def save_compressed(model: nn.Module, folder: str | os.PathLike) -> SavedSparse:
    """Save ``model`` (a transformers causal LM) with every tensor in its smallest sparse encoding.

    Reload with :func:`load_compressed` (or :func:`load`). Tied weights are written under each name
    and re-tied on load.
    """
    if not hasattr(model, "config") or not hasattr(model.config, "to_json_file"):
        raise TypeError(f"llm.storage.save_compressed: {type(model).__name__} has no transformers config")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(out)
    encodings = save_sparse(model.state_dict(), out / COMPRESSED_FILE)
    counts: dict[str, int] = {}
    for enc in encodings.values():
        counts[enc] = counts.get(enc, 0) + 1
    (out / MARKER_FILE).write_text(json.dumps({"format": "prunekit.llm.compressed/1", "file": COMPRESSED_FILE,
                                               "encodings": counts}, indent=1))
    return SavedSparse(str(out), "compressed", (out / COMPRESSED_FILE).stat().st_size, counts)


def is_compressed(folder: str | os.PathLike) -> bool:
    """True when ``folder`` was written by :func:`save_compressed`."""
    return (Path(folder) / MARKER_FILE).exists()


def load_compressed(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved by :func:`save_compressed`: config -> meta skeleton -> assign the exact tensors."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    src = Path(folder)
    if not is_compressed(src):
        raise FileNotFoundError(f"llm.storage.load_compressed: {src} has no {MARKER_FILE}; "
                                "a dense folder loads with from_pretrained")
    config = AutoConfig.from_pretrained(src)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, **_dtype_kw(config.torch_dtype))
    state = load_sparse(src / COMPRESSED_FILE, device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"llm.storage.load_compressed: {src / COMPRESSED_FILE} does not match the config's model "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    meta = [n for n, p in model.named_parameters() if p.is_meta] + [n for n, b in model.named_buffers() if b.is_meta]
    if meta:
        raise ValueError(f"llm.storage.load_compressed: tensors left unloaded: {meta[:5]}")
    return model.to(device).eval()


def load(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a folder written by :func:`save_dense` or :func:`save_compressed`."""
    if is_compressed(folder):
        return load_compressed(folder, device=device)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **_dtype_kw("auto")).to(device).eval()
