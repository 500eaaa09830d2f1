"""Whole-unit strategies on top of the pruning engine: depth (remove residual blocks or transformer
layers, :mod:`~prunekit.structure.blocks`), dead units (remove what cannot affect the output,
:mod:`~prunekit.structure.dead`), progressive pruning stage by stage or in steps
(:mod:`~prunekit.structure.progressive`), and residual streams (the channel groups a residual
addition joins, :mod:`~prunekit.structure.streams`).

Each module is imported on first use (``prunekit.structure.blocks``), like ``prunekit``'s own.
"""
from __future__ import annotations

SUBMODULES = ("blocks", "dead", "progressive", "streams")


def __getattr__(name: str):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))
