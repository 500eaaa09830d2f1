"""Masks from scores: unstructured (per tensor or one global threshold), N:M, and threshold.

A mask is a bool tensor of the weight's shape, ``True`` = keep. Scores come from a criterion
(higher = keep). Ties at the cut are broken by position, so a mask always has exactly the
requested number of zeros.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch


def _keep_top(flat_scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask over a 1-D score vector removing exactly ``n_prune`` lowest scores."""
    keep = torch.ones(flat_scores.numel(), dtype=torch.bool, device=flat_scores.device)
    if n_prune > 0:
        idx = torch.argsort(flat_scores, stable=True)[:n_prune]
        keep[idx] = False
    return keep


def unstructured_masks(scores: Mapping[str, torch.Tensor], sparsity: float,
                       scope: str = "local") -> dict[str, torch.Tensor]:
    """Remove the fraction ``sparsity`` of lowest-scoring weights.

    ``scope="local"``: every tensor loses exactly ``floor(sparsity * numel)`` weights.
    ``scope="global"``: one ranking (one threshold) over all tensors together; scores must
    be comparable across tensors (raw magnitudes, Taylor scores ...).

    >>> m = unstructured_masks({"w": torch.tensor([[3., -1.], [0.5, 2.]])}, 0.5)
    >>> m["w"].tolist()
    [[True, False], [False, True]]
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope == "local":
        return {n: _keep_top(s.detach().reshape(-1).float(), math.floor(sparsity * s.numel() + 1e-9)).view(s.shape)
                for n, s in scores.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'local' or 'global', not {scope!r}")
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    keep = _keep_top(flat, math.floor(sparsity * flat.numel() + 1e-9))
    out, start = {}, 0
    for n in names:
        s = scores[n]
        out[n] = keep[start:start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
    return out


def threshold_masks(scores: Mapping[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Keep what scores at least ``threshold`` (e.g. ``|w| >= 1e-3`` with the magnitude criterion)."""
    return {n: s.detach() >= threshold for n, s in scores.items()}


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M sparsity: in every block of ``m`` consecutive weights along the input dimension,
    keep the ``n`` highest-scoring ones (``2:4`` keeps 2 of every 4).

    Blocks run along the flattened input of each output row (``(out, in * k * k)`` for a conv,
    the layout sparse kernels use), so the row length must be a multiple of ``m``.

    >>> nm_mask(torch.tensor([[4., 1., 3., 2.]]), 2, 4).tolist()
    [[True, False, True, False]]
    """
    if not (0 < n < m):
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    if scores.dim() < 2:
        raise ValueError(f"N:M needs a weight with an input dimension, got shape {tuple(scores.shape)}")
    rows = scores.detach().reshape(scores.shape[0], -1).float()  # (out, in * k...)
    if rows.shape[1] % m:
        raise ValueError(f"N:M {n}:{m} needs the input size ({rows.shape[1]}) to be a multiple of {m}")
    blocks = rows.reshape(rows.shape[0], -1, m)  # (out, in/m, m)
    top = torch.topk(blocks, n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(scores.shape)


def zero_masks(tensors: Mapping[str, torch.Tensor], tol: float = 0.0) -> dict[str, torch.Tensor]:
    """"Basic" pruning: the weights that are already zero (``|w| <= tol``) are marked pruned."""
    return {n: t.detach().abs() > tol for n, t in tensors.items()}


def sparsity_of(mask_or_tensor: torch.Tensor) -> float:
    """Fraction of zeros (of ``False`` for a mask)."""
    t = mask_or_tensor
    zeros = (~t).sum() if t.dtype == torch.bool else (t == 0).sum()
    return float(zeros) / max(t.numel(), 1)
