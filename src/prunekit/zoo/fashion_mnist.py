"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (original idx files), offline.

Images come back as uint8 ``(N, 28, 28)`` arrays; :func:`to_rgb_batch` turns a slice into the
normalized 3-channel tensors an ImageNet backbone expects.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from .images import to_rgb_batch

__all__ = ["CLASSES", "ROOTS", "find_root", "load", "to_rgb_batch"]

NAME = "Fashion-MNIST"
ROOTS = ("/usr/share/datasets/fashion-mnist",)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def find_root() -> Path:
    for root in (os.environ.get("PRUNEKIT_FASHION_MNIST"), *ROOTS):
        if root and (Path(root) / "train-images-idx3-ubyte.gz").exists():
            return Path(root)
    raise FileNotFoundError("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist "
                            "(make data) or set PRUNEKIT_FASHION_MNIST to a folder with the idx .gz files")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()  # writable


def load(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of the ``train`` (60k) or ``test`` (10k) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = find_root()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels

