"""SparseGPT (Frantar & Alistarh 2023): prune a Linear layer's weight with optimal-brain-surgeon
updates of the surviving weights, from the Hessian ``H = X Xᵀ`` of its inputs.

Columns are processed in blocks of ``blocksize`` (128); inside a block, each pruned weight's error
is spread over the not-yet-processed columns of its row (``W[:, i:] -= err ⊗ Hinv[i, i:]``), and the
block's accumulated error updates the later columns once, lazily (one matmul). The mask is chosen
on ``w² / diag(Hinv)²`` per column block (unstructured: over the whole block, or per row), or per
group of ``m`` columns for N:M, as in the reference code; ties go to the lower index.
"""
from __future__ import annotations

import torch

from .masks import prune_count, prune_lowest


def _hinv_upper(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the damped inverse Hessian, ``chol(H⁻¹)ᵀ`` (the reference's ``Hinv``).

    ``h`` is a private copy that is overwritten (damped, then reused for the inverse), so at most two
    ``[in, in]`` matrices exist at once besides the caller's statistics (the 1.1B-parameter down_proj
    Hessian is 121 MiB)."""
    cols = h.shape[0]
    diag = h.diagonal()
    mean = float(diag.mean())
    diag.add_(damp * mean)
    for scale in (1.0, 10.0, 100.0):
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            saved = h.diagonal().clone()  # (in,): to undo the overwrite if the inverse's factor fails
            torch.cholesky_inverse(lower, out=h)  # H⁻¹ into h's storage
            del lower
            upper, info = torch.linalg.cholesky_ex(h, upper=True)
            if int(info) == 0:
                return upper
            del upper
            torch.linalg.inv(h, out=h)  # back to the damped H (rare path)
            h.diagonal().copy_(saved)
        else:
            del lower
        diag = h.diagonal()
        diag.add_(damp * scale * mean)
    raise RuntimeError(f"llm.sparsegpt: the Hessian ({cols}x{cols}) is not positive definite even after 111x "
                       f"dampening")


def inverse_factor(hessian: torch.Tensor, damp: float = 0.01, *, inplace: bool = False,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Hinv, dead)``: the upper Cholesky factor of the damped inverse Hessian and the mask of inputs
    never active (``diag(H) == 0``; their weights carry nothing). Layers that read the same input (e.g.
    q/k/v) share one factor: pass it to :func:`sparsegpt_prune` as ``factor``. ``inplace``: overwrite
    ``hessian`` (a float32 tensor the caller no longer needs) instead of copying it: one ``[in, in]``
    matrix less at the peak."""
    if inplace and hessian.dtype != torch.float32:
        raise ValueError(f"llm.sparsegpt: inverse_factor(inplace=True) needs a float32 Hessian, got {hessian.dtype}")
    h = hessian.detach() if inplace else hessian.detach().float().clone()
    dead = torch.diag(h) == 0  # (in,)
    h[dead, dead] = 1
    return _hinv_upper(h, damp), dead  # h is overwritten by _hinv_upper


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor | None, sparsity: float, *,
                    pattern: tuple[int, int] | None = None, group: str = "tensor", blocksize: int = 128,
                    damp: float = 0.01, factor: tuple[torch.Tensor, torch.Tensor] | None = None,
                    parts: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` ``[out, in]`` given the input Hessian ``[in, in]`` (or its ``factor`` from
    :func:`inverse_factor`); returns the updated weight (float32, pruned entries exactly 0) and the keep mask.

    ``pattern=(n, m)``: keep ``n`` of every ``m`` consecutive inputs (``sparsity`` is ignored).
    ``group``: ``"tensor"`` chooses each column block's mask over all rows (the reference),
    ``"row"`` per output row (each row loses the same fraction).
    ``parts``: ``weight`` is several layers that read the same input, stacked by rows (e.g. q/k/v),
    with these row counts; each is pruned exactly as alone (the updates are row by row; the
    ``"tensor"`` mask is chosen per part), in one sweep over the columns instead of one per layer.
    """
    w = weight.detach().to(torch.float32, copy=True)
    rows, cols = w.shape
    if factor is None and hessian is None:
        raise ValueError("llm.sparsegpt: sparsegpt_prune needs the Hessian or its factor")
    hinv, dead = factor if factor is not None else inverse_factor(hessian, damp)
    if hinv.shape != (cols, cols):
        raise ValueError(f"llm.sparsegpt: weight {tuple(w.shape)} and inverse-Hessian factor {tuple(hinv.shape)} "
                         f"do not match")
    if parts is not None and (sum(parts) != rows or min(parts) < 1):
        raise ValueError(f"llm.sparsegpt: parts {parts} do not add up to the weight's {rows} rows")
    bounds = [0]
    for p in parts or [rows]:
        bounds.append(bounds[-1] + p)
    w[:, dead] = 0
    keep = torch.ones_like(w, dtype=torch.bool)
    if pattern is not None:
        n, m = pattern
        if blocksize % m:
            raise ValueError(f"llm.sparsegpt: blocksize ({blocksize}) must be a multiple of M ({m})")
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()  # (out, count)
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)  # (count,)
        if pattern is None:
            score = w1 ** 2 / d.reshape(1, -1) ** 2  # (out, count)
            if group == "row":
                prune1 = ~prune_lowest(score, prune_count(count, sparsity), dim=1)
            else:
                prune1 = torch.empty_like(score, dtype=torch.bool)
                for a, b in zip(bounds, bounds[1:]):  # each stacked layer's block: its own comparison group
                    flat = score[a:b].reshape(-1)
                    prune1[a:b] = ~prune_lowest(flat, prune_count(flat.numel(), sparsity), dim=0).view(b - a, count)
        else:
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            if pattern is not None and i % m == 0:
                score = w1[:, i:i + m] ** 2 / d[i:i + m].reshape(1, -1) ** 2  # (out, m)
                prune1[:, i:i + m] = ~prune_lowest(score, m - n, dim=1)
            q = col.masked_fill(prune1[:, i], 0.0)
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1.0)  # rank 1: (out,) ⊗ (count - i,)
            err1[:, i] = e
        w[:, i1:i2] = q1
        keep[:, i1:i2] = ~prune1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the later columns
    return w, keep
