"""Freeze the backbone, retrain only a linear head: the cheapest recovery, and the fair way
to compare pruning criteria (every criterion gets exactly the same head training).

The backbone's features are computed once (eval mode, no grad); the head is fit full-batch
with L-BFGS on the cross-entropy plus a small L2 penalty, from a fixed start, so the result
is deterministic for given features.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F


def extract_features(backbone: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenated ``backbone(x)`` over ``batches`` (eval mode, no grad), flattened per sample."""
    was = backbone.training
    backbone.eval()
    out = []
    try:
        with torch.no_grad():
            for x in batches:
                out.append(backbone(x).flatten(1))  # (B, features)
    finally:
        backbone.train(was)
    return torch.cat(out)


def fit_linear_head(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor, *, weight_decay: float = 1e-4,
                    max_iter: int = 200) -> nn.Linear:
    """Fit ``head`` (in place) to ``features -> labels``; its input size must match the features."""
    if head.in_features != features.shape[1]:
        raise ValueError(f"head takes {head.in_features} features, the backbone gives {features.shape[1]}")
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std  # standardized: L-BFGS converges in far fewer steps
    w = torch.zeros(head.out_features, head.in_features, requires_grad=True)
    b = torch.zeros(head.out_features, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardization into the head
        head.weight.copy_(w / std)
        head.bias.copy_(b - (w / std) @ mean)
    return head


def head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(features).argmax(1) == labels).float().mean())
