"""Which model the command line works on: ``torchvision:NAME``, ``timm:NAME``, a local Hugging Face
folder, or ``path/to/file.py:factory``; how to build it again, and its example inputs.

A :class:`ModelSpec` is checked when the command line is parsed (the name exists, the folder holds a
``config.json``, the file exists), so a typo is a usage error before any work. Weights given with
``--weights`` are read as safetensors, or as a state dict by ``torch.load(weights_only=True)``; a
pickle that holds anything but tensors is refused, never unpickled.

>>> ModelSpec.parse("torchvision:resnet18").kind
'torchvision'
>>> ModelSpec.parse("torchvision:resnet181")
Traceback (most recent call last):
...
prunekit.recipes.models.ModelSpecError: unknown torchvision model 'resnet181'; did you mean resnet18, resnet101, resnet152?
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

KINDS = ("torchvision", "timm", "hf", "file")
HELP = ("torchvision:NAME, timm:NAME (random init; --weights FILE loads a state dict), a local Hugging Face "
        "folder (with config.json), or path/to/file.py:factory (a function returning an nn.Module)")


class ModelSpecError(ValueError):
    """A MODEL argument that names no model that can be built (a usage error: exit code 2)."""


def _did_you_mean(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


@dataclass(frozen=True)
class ModelSpec:
    """A model to build: ``kind`` (one of :data:`KINDS`), ``name`` (registry name, folder or file) and,
    for a file, its ``factory`` function. Folders and files are kept as absolute paths."""

    kind: str
    name: str
    factory: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """A spec from its command-line form, checked (names exist, folders and files are there)."""
        if text.startswith("torchvision:"):
            import torchvision

            name = text.split(":", 1)[1]
            names = torchvision.models.list_models(module=torchvision.models)
            if name not in names:
                raise ModelSpecError(f"unknown torchvision model {name!r}" + _did_you_mean(name, names))
            return cls("torchvision", name)
        if text.startswith("timm:"):
            import timm

            name = text.split(":", 1)[1]
            if not timm.is_model(name):
                raise ModelSpecError(f"unknown timm model {name!r}" + _did_you_mean(name, timm.list_models()))
            return cls("timm", name)
        m = re.fullmatch(r"(.+\.py):([A-Za-z_][A-Za-z0-9_]*)", text)
        if m:
            path = Path(m.group(1))
            if not path.is_file():
                raise ModelSpecError(f"no such Python file {str(path)!r} (MODEL is path/to/file.py:factory)")
            return cls("file", str(path.resolve()), m.group(2))
        if text.endswith(".py"):
            raise ModelSpecError(f"{text!r}: name the function that builds the model, as {text}:factory")
        path = Path(text)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelSpecError(f"folder {text!r} has no config.json: not a Hugging Face model folder")
            return cls("hf", str(path.resolve()))
        raise ModelSpecError(f"cannot read MODEL {text!r}: expected {HELP}")

    def __str__(self) -> str:
        if self.kind == "file":
            return f"{self.name}:{self.factory}"
        return self.name if self.kind == "hf" else f"{self.kind}:{self.name}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(**d)

    def build(self) -> nn.Module:
        """A fresh instance: random init for torchvision and timm, the folder's weights for Hugging
        Face (offline), whatever the factory returns for a file."""
        if self.kind == "torchvision":
            import torchvision

            return torchvision.models.get_model(self.name, weights=None)
        if self.kind == "timm":
            import timm

            return timm.create_model(self.name, pretrained=False)
        if self.kind == "hf":
            return _hf_model(self.name)
        return _from_file(self.name, self.factory)()


def _hf_class(config: dict[str, Any]):
    """The class named in a config's ``architectures`` when transformers has it (a head model, e.g.
    ``BertForSequenceClassification``), else ``AutoModel``."""
    import transformers

    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    return cls if cls is not None and hasattr(cls, "from_pretrained") else transformers.AutoModel


def _hf_model(folder: str) -> nn.Module:
    """The folder's model, offline (``from_pretrained(..., local_files_only=True)``)."""
    with open(Path(folder) / "config.json") as f:
        config = json.load(f)
    return _hf_class(config).from_pretrained(folder, local_files_only=True).eval()


def hf_from_config(config: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of a saved Hugging Face config (weights are loaded afterwards)."""
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    cls = _hf_class(config)
    model = cls.from_config(cfg) if cls is transformers.AutoModel else cls(cfg)
    return model.eval()


def user_module(path: str):
    """Import the Python file at ``path`` (the user's own code, run as the user asked)."""
    spec = importlib.util.spec_from_file_location(f"prunekit_user_model_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_file(path: str, factory: str) -> Callable[[], nn.Module]:
    """The function ``factory`` of the Python file at ``path``, checked to return an ``nn.Module``."""
    module = user_module(path)
    fn = getattr(module, factory, None)
    if not callable(fn):
        names = [n for n in vars(module) if callable(vars(module)[n]) and not n.startswith("_")]
        raise ModelSpecError(f"{path} has no function {factory!r}" + _did_you_mean(factory, names))

    def build() -> nn.Module:
        model = fn()
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"{path}:{factory}() returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return build


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, or a state dict saved by ``torch.save`` read with
    ``weights_only=True`` (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- named: a pickle of more than tensors is refused here
        raise ModelSpecError(f"--weights {str(path)!r}: not a safetensors file, and torch.load(weights_only=True) "
                             f"refused it ({type(e).__name__}: {str(e).splitlines()[0][:160]}); save the "
                             "state_dict (or safetensors), not the pickled model") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelSpecError(f"--weights {str(path)!r} holds {type(obj).__name__}, not a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load ``--weights`` into ``model``; every key must match (missing or unexpected keys name them)."""
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelSpecError(f"--weights {str(path)!r} does not fit the model: {str(e)[:400]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelSpecError(f"--weights {str(path)!r} does not fit the model: missing {result.missing_keys[:5]}, "
                             f"unexpected {result.unexpected_keys[:5]}")
