"""Argument types for the command line: each checks its value when the command line is parsed,
so a bad value ends in argparse's usage message and exit code 2 before any work, not a traceback.

>>> fraction("0.35")
0.35
>>> fraction("2")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be in [0, 1), got 2.0
"""
from __future__ import annotations

import argparse
import math
import os


def fraction(text: str) -> float:
    """A finite number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def output_folder(text: str) -> str:
    """A folder to write into: may exist (files in it are replaced one by one), must not be a file,
    and its parent must be writable."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    parent = os.path.dirname(os.path.abspath(text))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {parent!r}")
    return text


def torchvision_model(text: str) -> str:
    """A torchvision classification model name."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if text not in names:
        import difflib

        close = difflib.get_close_matches(text, names, n=3)
        raise argparse.ArgumentTypeError(f"unknown torchvision model {text!r}" +
                                         (f"; did you mean {', '.join(close)}?" if close else ""))
    return text


def budget(text: str) -> float:
    """A finite number in (0, 1]: a fraction of the model's MACs to keep."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def model_spec(text: str):
    """MODEL: ``torchvision:NAME``, ``timm:NAME``, a Hugging Face folder or ``file.py:factory``
    (:class:`prunekit.recipes.models.ModelSpec`), checked to exist."""
    from .recipes.models import ModelSpec, ModelSpecError

    try:
        return ModelSpec.parse(text)
    except ModelSpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def model_or_folder(text: str):
    """A MODEL (see :func:`model_spec`) or a folder written by ``prunekit prune`` (returned as a path)."""
    from pathlib import Path

    from .recipes.folder import is_output_folder

    if is_output_folder(text):
        return Path(text)
    return model_spec(text)


def output_of_prunekit(text: str):
    """A folder written by ``prunekit prune`` / ``sparsify`` (it holds ``prunekit.json``)."""
    from pathlib import Path

    from .recipes.folder import MANIFEST, is_output_folder

    if not is_output_folder(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a prunekit output folder (no {MANIFEST}); make one with "
                                         "prunekit prune MODEL --out DIR")
    return Path(text)


def recipe_file(text: str):
    """A recipe YAML file, parsed and checked (errors name ``file:line``)."""
    from .recipes.yamlfile import RecipeError, load_recipe

    try:
        return load_recipe(text)
    except RecipeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def weights_file(text: str) -> str:
    """An existing weights file (``.safetensors``, or a state dict for ``torch.load(weights_only=True)``)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    return text


def shape(text: str) -> tuple[int, ...]:
    """An input shape such as ``1,3,224,224``."""
    from .recipes.inputs import parse_shape

    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def criterion_name(text: str) -> str:
    """A registered criterion's name."""
    from . import criteria  # noqa: F401  (registers the built-in criteria)
    from .criteria.base import CRITERIA

    if text not in CRITERIA:
        import difflib

        close = difflib.get_close_matches(text, list(CRITERIA), n=1)
        raise argparse.ArgumentTypeError(f"unknown criterion {text!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                                         + f" (known: {', '.join(sorted(CRITERIA))})")
    return text
