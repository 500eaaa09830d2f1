"""One pass over a model's modules, parameters and buffers.

``named_parameters()``, ``named_buffers()`` and ``named_modules()`` each walk the whole module
tree; a prune needs all three several times, and on a model with a thousand modules every walk
costs milliseconds. :func:`walk` collects them in one pass, with the same names and the same
de-duplication (a shared module or tied tensor is listed once, under its first name).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from ..compat import MODULE_CALL_FRAME, module_slots


@dataclass(frozen=True)
class Walk:
    modules: dict[str, nn.Module]
    params: dict[str, nn.Parameter]
    buffers: dict[str, torch.Tensor]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = {n: tuple(p.shape) for n, p in self.params.items()}
        out.update({n: tuple(b.shape) for n, b in self.buffers.items()})
        return out


_NAMED_MODULES = nn.Module.named_modules


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``dict(model.named_modules())``: the same paths, order and de-duplication (a shared module under its
    first path in pre-order), from one loop over an explicit stack instead of a generator per module (each
    path passes up through every enclosing generator: a thousand modules cost ~0.7 ms). A module class
    that overrides ``named_modules`` gets its own."""
    out: dict[str, nn.Module] = {}
    memo: set[nn.Module] = set()  # like torch's memo: a set of modules (their own hash and eq)
    stack = [("", model)]
    while stack:
        prefix, mod = stack.pop()
        if mod in memo:
            continue
        if type(mod).named_modules is not _NAMED_MODULES:
            return dict(model.named_modules())
        memo.add(mod)
        out[prefix] = mod
        children = module_slots(mod)[2]
        if children:  # pushed last child first: popped in order, each subtree before the next child
            stack.extend([(f"{prefix}.{name}" if prefix else name, child)
                          for name, child in reversed(children.items()) if child is not None])
    return out


def walk(model: nn.Module) -> Walk:
    modules = named_modules(model)
    params: dict[str, nn.Parameter] = {}
    buffers: dict[str, torch.Tensor] = {}
    seen_p: set[int] = set()
    seen_b: set[int] = set()
    for path, mod in modules.items():
        prefix = path + "." if path else ""
        own_params, own_buffers, _ = module_slots(mod)
        for key, p in own_params.items():
            if p is not None and id(p) not in seen_p:
                seen_p.add(id(p))
                params[prefix + key] = p
        for key, b in own_buffers.items():
            if b is not None and id(b) not in seen_b:
                seen_b.add(id(b))
                buffers[prefix + key] = b
    return Walk(modules, params, buffers)


def nesting_depth(model: nn.Module) -> int:
    """How deep the module tree goes (1 for a module without children), found without recursion."""
    deepest, stack, seen = 0, [(model, 1)], set()
    while stack:
        mod, d = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in module_slots(mod)[2].values() if c is not None)
    return deepest


FRAMES_PER_LEVEL = 12  # a module call under prunekit's function mode and hooks takes a few Python frames


_HEADROOM: dict[int, int] = {}  # id(model) -> the recursion limit an enclosing recursion_headroom(model) needs


@contextlib.contextmanager
def recursion_headroom(model: nn.Module) -> Iterator[None]:
    """Raise Python's recursion limit while prunekit runs ``model``, so a deeply nested model that runs
    plainly also runs under the tracer and the verification (200 nested wrappers: ~600 frames plain,
    more with prunekit's per-call frames); the old limit is restored afterwards. Nested for the same
    model (``prune_`` around its trace and apply), an inner call whose room is already there does not
    measure the model again (:func:`nesting_depth` visits every module)."""
    outer = _HEADROOM.get(id(model))
    if outer is not None and sys.getrecursionlimit() >= outer:
        yield
        return
    old = sys.getrecursionlimit()
    need = 1000 + FRAMES_PER_LEVEL * nesting_depth(model)
    if need > old:
        sys.setrecursionlimit(need)
    _HEADROOM[id(model)] = need
    try:
        yield
    finally:
        if outer is None:
            _HEADROOM.pop(id(model), None)
        else:
            _HEADROOM[id(model)] = outer
        if need > old:
            sys.setrecursionlimit(old)


@contextlib.contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Every module in eval mode for the block, then each back to its own mode (a model whose
    root is in eval but a submodule in train keeps that mix; ``model.train(was)`` would not)."""
    flipped = [m for m in modules if m.training]
    for m in flipped:
        m.training = False
    try:
        yield
    finally:
        for m in flipped:
            m.training = True


def failing_module(model: nn.Module, tb) -> str | None:
    """The innermost module of ``model`` (by path) whose ``forward`` is on the traceback ``tb``: where
    an error raised during a forward came from; ``None`` if no module of the model is on it."""
    paths = {id(m): p for p, m in model.named_modules()}
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name in ("forward", MODULE_CALL_FRAME):
            obj = frame.f_locals.get("self")
            if obj is not None and id(obj) in paths:
                found = paths[id(obj)]
        tb = tb.tb_next
    return found
