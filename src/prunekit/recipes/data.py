"""Data for a recipe's recovery stage, as honest as it can be offline.

Two sources are supported:

- ``random``: distillation from the unpruned model on random inputs drawn like the example inputs
  (same shapes; token ids in the vocabulary). No labels are needed and any model works; it pulls the
  pruned model's outputs back towards the original's, it does not teach the task. Batch norms keep
  their statistics and scales (noise has not the data's statistics).
- ``fashion-mnist``: the labelled images the demo uses (Debian package ``dataset-fashion-mnist``),
  resized to the model's example input and ImageNet-normalized, trained with cross-entropy (and,
  with ``distill: true``, distillation from the unpruned model). Only for image classifiers that
  take ``(B, 3, H, W)`` and return ``(B, classes)`` logits with at least 10 classes.

Anything else is an error that lists these two.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..validate import number

SOURCES = ("random", "fashion-mnist")


@dataclass(frozen=True)
class DataSpec:
    """Where recovery batches come from (see the module docstring)."""

    source: str = "random"
    batches: int = 16  # random: batches per epoch
    batch_size: int = 8
    samples: int = 512  # fashion-mnist: training images used
    distill: bool = True  # fashion-mnist: add distillation from the unpruned model (random: always)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source {self.source!r} is not supported; supported: 'random' (distillation "
                             "from the unpruned model on random inputs shaped like the example) or "
                             "'fashion-mnist' (labelled images from the Debian package dataset-fashion-mnist, "
                             "for image classifiers)")
        number("data.batches", self.batches, lo=1, integer=True)
        number("data.batch_size", self.batch_size, lo=1, integer=True)
        number("data.samples", self.samples, lo=1, integer=True)
        if not isinstance(self.distill, bool):
            raise TypeError(f"data.distill must be true or false, got {self.distill!r}")
        if self.source == "random" and not self.distill:
            raise ValueError("data.distill: false needs labels; source 'random' has none (use fashion-mnist)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_tensor(out: Any) -> torch.Tensor:
    from ..graph.tracer import iter_tensors

    t = next(iter(iter_tensors(out)), None)
    if t is None:
        raise ValueError("the model returned no tensor to recover against")
    return t


def random_batches(teacher: nn.Module, args: tuple, kwargs: dict, spec: DataSpec, seed: int = 0) -> list:
    """``spec.batches`` batches ``((args, kwargs), teacher_output)`` of random inputs shaped like the
    example (batch dim set to ``batch_size``; integer inputs drawn below their example's maximum + 1)."""
    g = torch.Generator().manual_seed(seed + 1)

    def draw(t: torch.Tensor) -> torch.Tensor:
        shape = (spec.batch_size, *t.shape[1:])
        if t.dtype.is_floating_point:
            return torch.randn(shape, generator=g).to(t.dtype)
        return torch.randint(0, int(t.max()) + 1, shape, generator=g).to(t.dtype)

    out = []
    teacher.eval()
    with torch.no_grad():
        for _ in range(spec.batches):
            a = tuple(draw(t) for t in args)
            k = {n: draw(t) for n, t in kwargs.items()}
            out.append(((a, k), _first_tensor(teacher(*a, **k)).detach()))
    return out


def fashion_batches(example: torch.Tensor, spec: DataSpec, seed: int = 0) -> list:
    """``(images, labels)`` batches from Fashion-MNIST at the example's height and width."""
    from ..zoo import fashion_mnist
    from ..zoo.images import to_rgb_batch

    if example.dim() != 4 or example.shape[1] != 3 or example.shape[2] != example.shape[3]:
        raise ValueError(f"data.source fashion-mnist needs a model taking square RGB images (B, 3, H, H); the "
                         f"example input is {tuple(example.shape)} (use source: random)")
    images, labels = fashion_mnist.load("train")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:spec.samples].numpy()
    x = to_rgb_batch(images[idx], int(example.shape[2]))  # (N, 3, H, H)
    y = torch.from_numpy(labels[idx]).long()
    return [(((x[i:i + spec.batch_size],), {}), y[i:i + spec.batch_size]) for i in range(0, len(x), spec.batch_size)]


def step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
    """The training step for these batches: ``((args, kwargs), target)`` -> (output, inputs, target);
    ``inputs`` is the one image tensor when there is one (what :class:`~prunekit.recovery.distill.Distillation`
    feeds its teacher)."""
    (args, kwargs), target = batch
    inputs = args[0] if len(args) == 1 and not kwargs else args
    return _first_tensor(model(*args, **kwargs)), inputs, target
