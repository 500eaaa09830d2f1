"""The criterion interface and its registry."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..graph.groups import Group

CRITERIA: dict[str, type["Criterion"]] = {}


def register_criterion(name: str) -> Callable[[type["Criterion"]], type["Criterion"]]:
    def register(cls: type["Criterion"]) -> type["Criterion"]:
        CRITERIA[name] = cls
        cls.name = name
        return cls

    return register


class Criterion:
    """Scores the units of a group; higher means more important (keep)."""

    name = "base"

    def score(self, model: nn.Module, group: Group) -> torch.Tensor:  # (len(group),)
        raise NotImplementedError


def get_criterion(name_or_obj: "str | Criterion") -> Criterion:
    if isinstance(name_or_obj, Criterion):
        return name_or_obj
    if name_or_obj not in CRITERIA:
        raise KeyError(f"unknown criterion {name_or_obj!r}; known: {sorted(CRITERIA)}")
    return CRITERIA[name_or_obj]()
