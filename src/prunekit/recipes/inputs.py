"""Example inputs for a model named on the command line: from ``--input-shape``, or from the model's
own config where it has one (timm's ``pretrained_cfg["input_size"]``; a Hugging Face config's
``image_size`` / ``num_channels`` for vision, ``vocab_size`` for text), or a ``example_inputs()``
function beside a file's factory. Drawn from a seeded generator, so two runs see the same inputs.

>>> ex = ExampleInputs.random([InputSpec("", (1, 3, 8, 8))], seed=0)
>>> ex.args[0].shape
torch.Size([1, 3, 8, 8])
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import ModelSpec, ModelSpecError, user_module

TEXT_LENGTH = 16  # tokens in a text model's example when no --input-shape says otherwise
TORCHVISION_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class InputSpec:
    """One input tensor: keyword ``name`` ("" for positional), shape, and for token ids the vocabulary
    size (``high``: ids drawn in ``[0, high)``; 0 for float inputs)."""

    name: str
    shape: tuple[int, ...]
    high: int = 0


@dataclass
class ExampleInputs:
    """Positional ``args`` and keyword ``kwargs`` for one forward, and where their shapes came from."""

    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def random(cls, specs: list[InputSpec], seed: int = 0, source: str = "") -> "ExampleInputs":
        g = torch.Generator().manual_seed(seed)
        args, kwargs = [], {}
        for s in specs:
            t = (torch.randint(0, s.high, s.shape, generator=g) if s.high else torch.randn(s.shape, generator=g))
            if s.name:
                kwargs[s.name] = t
            else:
                args.append(t)
        return cls(tuple(args), kwargs, source)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat names for saving: ``arg0, arg1, ...`` and ``kw.<name>``."""
        return {**{f"arg{i}": a for i, a in enumerate(self.args)}, **{f"kw.{k}": v for k, v in self.kwargs.items()}}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], source: str = "") -> "ExampleInputs":
        args = [tensors[f"arg{i}"] for i in range(sum(k.startswith("arg") for k in tensors))]
        return cls(tuple(args), {k[3:]: v for k, v in tensors.items() if k.startswith("kw.")}, source)

    def describe(self) -> str:
        parts = [f"{tuple(a.shape)}" for a in self.args] + [f"{k}={tuple(v.shape)}" for k, v in self.kwargs.items()]
        return ", ".join(parts) + (f" ({self.source})" if self.source else "")


def _hf_config(folder: str) -> dict[str, Any]:
    with open(Path(folder) / "config.json") as f:
        return json.load(f)


def input_specs(spec: ModelSpec, model: nn.Module, shape: tuple[int, ...] | None) -> tuple[list[InputSpec], str]:
    """The inputs ``model`` takes, and a note saying where they came from; ``ModelSpecError`` when
    nothing says (a file's factory without ``example_inputs()`` and no ``--input-shape``)."""
    if spec.kind == "hf":
        cfg = _hf_config(spec.name)
        if "image_size" in cfg and "vocab_size" not in cfg:
            size = cfg["image_size"] if isinstance(cfg["image_size"], int) else cfg["image_size"][0]
            default = (1, int(cfg.get("num_channels", 3)), int(size), int(size))
            return [InputSpec("pixel_values", shape or default)], (
                "--input-shape" if shape else "config.json image_size/num_channels")
        if "vocab_size" in cfg:
            return [InputSpec("input_ids", shape or (1, TEXT_LENGTH), int(cfg["vocab_size"]))], (
                "--input-shape, token ids" if shape else f"config.json vocab_size, {TEXT_LENGTH} tokens")
        if shape:
            return [InputSpec("", shape)], "--input-shape"
        raise ModelSpecError(f"{spec}: config.json has neither image_size nor vocab_size; give --input-shape")
    if shape:
        return [InputSpec("", shape)], "--input-shape"
    if spec.kind == "timm":
        size = getattr(model, "pretrained_cfg", {}).get("input_size")
        if size:
            return [InputSpec("", (1, *size))], "timm pretrained_cfg input_size"
        raise ModelSpecError(f"{spec}: timm gives no input_size; give --input-shape")
    if spec.kind == "torchvision":
        return [InputSpec("", TORCHVISION_SHAPE)], "torchvision default 224x224 (give --input-shape for another)"
    raise ModelSpecError(f"{spec}: give --input-shape (e.g. 1,3,32,32), or define example_inputs() returning "
                         "a tensor or a tuple of tensors beside the factory")


def example_inputs(spec: ModelSpec, model: nn.Module, shape: tuple[int, ...] | None, seed: int = 0) -> ExampleInputs:
    """Seeded example inputs for ``model`` (see :func:`input_specs`). A file's own ``example_inputs()``
    is used as it returns them when there is no ``--input-shape``."""
    if spec.kind == "file" and shape is None:
        fn = getattr(user_module(spec.name), "example_inputs", None)
        if callable(fn):
            torch.manual_seed(seed)
            out = fn()
            args = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            if not all(isinstance(a, torch.Tensor) for a in args):
                raise ModelSpecError(f"{spec.name}: example_inputs() must return a tensor or a tuple of tensors")
            return ExampleInputs(args, {}, "example_inputs() in the model file")
    specs, source = input_specs(spec, model, shape)
    return ExampleInputs.random(specs, seed, source)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` (or ``1x3x32x32``) -> ``(1, 3, 32, 32)``; every size a positive integer."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"not a shape: {text!r} (sizes separated by commas, e.g. 1,3,224,224)") from None
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"every size must be >= 1, got {text!r}")
    return shape


def save_inputs(ex: ExampleInputs, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ex.tensors().items()}, str(path), metadata={"source": ex.source})
