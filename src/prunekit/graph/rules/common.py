"""Helpers shared by the op rules."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..info import TensorInfo


def arg(args: Sequence[Any], kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


def couple(tracer, entries: Sequence[tuple[Any, TensorInfo | None, int]], what: str) -> np.ndarray | None:
    """Couple dim ``k`` of every ``(tensor, info, k)`` index by index; return the shared labels.

    A tensor without labels on that dim that is not a parameter (a computed constant, a
    model input) cannot be sliced, so the labels it meets are pinned.
    """
    store = tracer.store
    labeled = [inf.labels[k] for _, inf, k in entries if inf is not None and k in inf.labels]
    if not labeled:
        return None
    base = labeled[0]
    if len(labeled) == 2:
        store.unify(base, labeled[1])
    elif len(labeled) > 2:  # one union pass for all of them (e.g. a norm's weight, bias and stats)
        store.unify(np.tile(base, len(labeled) - 1), np.concatenate(labeled[1:]))
    for t, inf, k in entries:
        if (inf is None or k not in inf.labels) and isinstance(t, torch.Tensor) and t.shape[k] > 1:
            store.pin(base, f"{what} with an unprunable tensor in {tracer.module_path or '<top>'}")
    return base


def elementwise(tracer, what: str, operands: Sequence[Any], out: torch.Tensor) -> dict[int, np.ndarray]:
    """Broadcasting elementwise coupling of ``operands`` into ``out``'s dims."""
    nd = out.dim()
    labels: dict[int, np.ndarray] = {}
    tensors = [t for t in operands if isinstance(t, torch.Tensor)]
    infos = [tracer.info(t) for t in tensors]
    for od in range(nd):
        size = out.shape[od]
        if size <= 1:
            continue
        entries = []
        for t, inf in zip(tensors, infos):
            k = od - (nd - t.dim())
            if k >= 0 and t.shape[k] == size:
                entries.append((t, inf, k))
        lab = couple(tracer, entries, what)
        if lab is not None:
            labels[od] = lab
    # a labelled dim that was broadcast away cannot happen (broadcast only grows size-1 dims)
    return labels


def pin_all(tracer, tensors: Sequence[Any], reason: str) -> None:
    for t in tensors:
        if isinstance(t, torch.Tensor):
            tracer.pin_info(tracer.info(t), reason)


def owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""
