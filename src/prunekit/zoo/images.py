"""Small grayscale images (uint8 ``(B, H, W)``) to the normalized RGB tensors an ImageNet backbone expects."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb_batch(images: np.ndarray, size: int = 64) -> torch.Tensor:
    """uint8 ``(B, H, W)`` -> float ``(B, 3, size, size)``, bilinear resize, ImageNet-normalized.

    >>> to_rgb_batch(np.zeros((2, 28, 28), dtype=np.uint8), size=32).shape
    torch.Size([2, 3, 32, 32])
    """
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)  # (B, 1, H, W)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (B, 1, size, size)
    return (x.expand(-1, 3, -1, -1) - mean) / std  # (B, 3, size, size)
