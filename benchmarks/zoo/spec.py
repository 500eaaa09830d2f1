"""What a zoo entry is: a name, a family and a builder returning the model, its inputs and its head."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


@dataclass
class Built:
    model: nn.Module  # in eval mode, seeded (torch.manual_seed(0) before construction)
    inputs: tuple  # positional example inputs: model(*inputs)
    heads: list[str] = field(default_factory=list)  # module paths of the classifier/head: outputs kept


@dataclass(frozen=True)
class Spec:
    name: str
    family: str  # timm | hf | rnn | custom
    build: Callable[[], Built]
