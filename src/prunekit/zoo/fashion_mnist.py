"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (original idx files), offline.

Images come back as uint8 ``(N, 28, 28)`` arrays; :func:`to_rgb_batch` turns a slice into the
normalized 3-channel tensors an ImageNet backbone expects.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOTS = ("/usr/share/datasets/fashion-mnist",)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


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


def to_rgb_batch(images: np.ndarray, size: int = 64) -> torch.Tensor:
    """uint8 ``(B, 28, 28)`` -> float ``(B, 3, size, size)``, ImageNet-normalized."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)  # (B, 1, 28, 28)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (B, 1, size, size)
    return (x.expand(-1, 3, -1, -1) - _MEAN) / _STD  # (B, 3, size, size)
