"""Freeze-and-retrain (transfer): keep chosen layers fixed, train the rest, unfreeze on request.

Frozen means bit-for-bit unchanged: parameters get ``requires_grad=False`` and modules whose
parameters are all frozen are kept in eval mode during training, so BatchNorm running
statistics do not drift either (see :func:`train_mode`).
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Iterable, Iterator

from torch import nn


def _match(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def freeze(model: nn.Module, modules: Iterable[str] = ("",), *, except_: Iterable[str] = ()) -> list[str]:
    """Freeze the parameters under ``modules`` (paths or globs; ``""`` = everything) except
    those under ``except_``; returns the frozen parameter names."""
    modules, except_ = list(modules), list(except_)
    frozen = []
    for name, p in model.named_parameters():
        inside = "" in modules or _match(name, modules)
        if inside and not _match(name, except_):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def unfreeze(model: nn.Module, modules: Iterable[str] = ("",)) -> list[str]:
    """Make the parameters under ``modules`` trainable again; returns their names."""
    modules = list(modules)
    names = []
    for name, p in model.named_parameters():
        if "" in modules or _match(name, modules):
            p.requires_grad_(True)
            names.append(name)
    return names


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that have parameters or buffers of their own and no trainable parameter."""
    out = []
    for m in model.modules():
        own = list(m.parameters(recurse=False))
        if (own or list(m.buffers(recurse=False))) and not any(p.requires_grad for p in own):
            if own or not any(p.requires_grad for p in m.parameters()):
                out.append(m)
    return out


@contextlib.contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.train()`` with the frozen modules left in eval mode; the previous mode is restored."""
    was = model.training
    model.train()
    for m in frozen_modules(model):
        m.eval()
    try:
        yield model
    finally:
        model.train(was)
