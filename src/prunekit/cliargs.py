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
