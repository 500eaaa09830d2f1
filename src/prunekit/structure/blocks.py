"""Depth pruning: remove whole residual blocks or transformer layers.

A *block* is an entry of an ``nn.Sequential`` or ``nn.ModuleList`` whose output has its
input's shape, so the network still runs without it. Blocks are scored on calibration data,
higher = keep:

- ``"similarity"``: how much the block changes its input, ``1 - cos(input, output)`` averaged
  over positions and batches (the Block Influence of ShortGPT, Men et al. 2024);
- ``"loss"``: how much the loss rises when the block is skipped (measured, one block at a time).

:func:`remove_blocks_` deletes the chosen entries (renumbering what depends on the position:
``config.num_hidden_layers`` and each attention's ``layer_idx`` in Hugging Face decoders).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from .. import compat
from ..calibration.activations import _default_forward
from ..graph.tracer import as_inputs, iter_tensors


def _first_tensor(x: Any) -> torch.Tensor | None:
    return next(iter(iter_tensors(x)), None)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs.get("hidden_states") if isinstance(kwargs.get("hidden_states"), torch.Tensor) else None


def _is_block(m: nn.Module) -> bool:
    """A composite module (not a single layer) holding at least one Linear or Conv."""
    children = list(m.children())
    return bool(children) and any(isinstance(c, (nn.Linear, compat.CONV)) for c in m.modules())


def find_blocks(model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """Entries of Sequential/ModuleList containers that are blocks (composite modules with a
    Linear or Conv inside) and keep their input's shape: the outermost such entries."""
    inputs = as_inputs(example_inputs)
    candidates = {}
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            for name, child in mod.named_children():
                if _is_block(child):
                    candidates[f"{path}.{name}" if path else name] = child
    same: dict[str, bool] = {}
    handles = []
    for path, child in candidates.items():
        def hook(m, args, kwargs, out, path=path):
            x, y = _hidden(args, kwargs), _first_tensor(out)
            ok = x is not None and y is not None and x.shape == y.shape
            same[path] = same.get(path, True) and ok
        handles.append(child.register_forward_hook(hook, with_kwargs=True))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs, **dict(example_kwargs or {}))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    valid = [p for p in candidates if same.get(p)]
    return [p for p in valid if not any(p.startswith(q + ".") for q in valid)]  # outermost only


def _cos_change(x: torch.Tensor, y: torch.Tensor) -> float:
    dim = 1 if x.dim() == 4 else -1  # channels of (B, C, H, W); features of (B, T, C)
    return float((1 - F.cosine_similarity(x.double(), y.double(), dim=dim)).mean())


def _skip_hook(m, args, kwargs, out):
    x = _hidden(args, kwargs)
    if isinstance(out, tuple):
        return (x,) + tuple(out[1:])
    return x


def block_scores(model: nn.Module, blocks: Iterable[str], data: Iterable[Any], method: str = "similarity", *,
                 loss_fn: Callable | None = None, forward: Callable[[nn.Module, Any], Any] = _default_forward,
                 max_batches: int | None = None) -> dict[str, float]:
    """Score each block (higher = keep) on ``data``; see the module doc for the methods.

    ``method="loss"`` needs batches of ``(inputs, targets)`` and ``loss_fn(output, targets)``.
    """
    blocks = list(blocks)
    batches = list(data)[:max_batches] if max_batches is not None else list(data)
    modules = dict(model.named_modules())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if method == "similarity":
                sums = {b: 0.0 for b in blocks}
                handles = []
                for b in blocks:
                    def hook(m, args, kwargs, out, b=b):
                        sums[b] += _cos_change(_hidden(args, kwargs), _first_tensor(out))
                    handles.append(modules[b].register_forward_hook(hook, with_kwargs=True))
                try:
                    for batch in batches:
                        forward(model, batch)
                finally:
                    for h in handles:
                        h.remove()
                return {b: s / max(len(batches), 1) for b, s in sums.items()}
            if method == "loss":
                if loss_fn is None:
                    raise ValueError("method='loss' needs loss_fn(output, targets)")

                def loss() -> float:
                    return sum(float(loss_fn(forward(model, b), b[1])) for b in batches) / max(len(batches), 1)

                base = loss()
                out = {}
                for b in blocks:
                    h = modules[b].register_forward_hook(_skip_hook, with_kwargs=True)
                    try:
                        out[b] = loss() - base
                    finally:
                        h.remove()
                return out
            raise ValueError(f"method must be 'similarity' or 'loss', not {method!r}")
    finally:
        model.train(was)


def remove_blocks_(model: nn.Module, blocks: Iterable[str]) -> list[str]:
    """Delete ``blocks`` from their containers (in place); returns what was removed."""
    blocks = list(dict.fromkeys(blocks))
    modules = dict(model.named_modules())
    by_parent: dict[str, list[str]] = {}
    for b in blocks:
        parent, _, name = b.rpartition(".")
        container = modules.get(parent) if parent else model
        if b not in modules or not isinstance(container, (nn.Sequential, nn.ModuleList)):
            raise ValueError(f"{b!r} is not an entry of a Sequential or ModuleList")
        by_parent.setdefault(parent, []).append(name)
    for parent, names in by_parent.items():
        container = modules[parent] if parent else model
        if len(names) >= len(container):
            raise ValueError(f"removing {len(names)} blocks would empty {parent or type(model).__name__}")
    for parent, names in by_parent.items():
        container = modules[parent] if parent else model
        positions = [i for i, (n, _) in enumerate(container.named_children()) if n in set(names)]
        for i in sorted(positions, reverse=True):
            del container[i]  # Sequential and ModuleList renumber their entries
        if isinstance(container, nn.ModuleList):
            _renumber_layers(model, container, positions)
    return blocks


def _renumber_layers(model: nn.Module, layers: nn.ModuleList, removed: list[int]) -> None:
    """Hugging Face decoders: keep ``num_hidden_layers`` and per-layer ``layer_idx`` true."""
    for i, layer in enumerate(layers):
        for m in layer.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = i
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "num_hidden_layers", None) == len(layers) + len(removed):
            cfg.num_hidden_layers = len(layers)
            types = getattr(cfg, "layer_types", None)
            if isinstance(types, list) and len(types) == len(layers) + len(removed):
                cfg.layer_types = [t for i, t in enumerate(types) if i not in set(removed)]


def prune_blocks_(model: nn.Module, example_inputs: Any, data: Iterable[Any], n: int, method: str = "similarity",
                  **kwargs: Any) -> dict[str, float]:
    """Remove the ``n`` lowest-scoring blocks found by :func:`find_blocks`; returns all scores."""
    blocks = find_blocks(model, example_inputs)
    scores = block_scores(model, blocks, data, method, **kwargs)
    worst = sorted(scores, key=lambda b: scores[b])[:n]
    remove_blocks_(model, worst)
    return scores
