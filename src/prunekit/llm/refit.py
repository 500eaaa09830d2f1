"""Least-squares refit of the weights a mask keeps.

Given a layer ``W`` ``[out, in]``, the Hessian of its inputs ``H = X Xᵀ`` ``[in, in]`` and a keep
mask, each row's kept weights are set to the exact minimiser of SparseGPT's damped objective

    min over ŵ supported on the row's kept inputs K of  (w − ŵ)(H + λI)(w − ŵ)ᵀ
    ⇒  ŵ_K = (H_KK + λI)⁻¹ (H w + λ w)_K,   λ = damp · mean diag(H)

(SparseGPT's column-by-column OBS updates only approximate this for the mask they choose; Wanda
does not update at all). Pruned weights stay exactly 0, so the mask, its sparsity and any N:M
pattern are unchanged. Rows are solved in batches with a Cholesky factorisation; rows whose kept
counts differ (a per-tensor mask) are padded with identity rows.

>>> w = torch.tensor([[1.0, 2.0, 3.0, 4.0]]); h = torch.eye(4) + 0.5
>>> refit_kept(w, h, torch.tensor([[False, True, False, True]]), damp=0.0)
tensor([[0.0000, 3.0000, 0.0000, 5.0000]])
"""
from __future__ import annotations

import torch


def refit_kept(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, *, damp: float = 0.01,
               max_elements: int = 1 << 25) -> torch.Tensor:
    """The refitted weight (float32, same shape; zero where ``keep`` is False). ``max_elements``
    bounds the batch of ``[rows, k, k]`` systems held at once (memory)."""
    w = weight.detach().float()
    h = hessian.detach().float()
    rows, cols = w.shape
    if h.shape != (cols, cols) or keep.shape != w.shape:
        raise ValueError(f"llm.refit: weight {tuple(w.shape)}, hessian {tuple(h.shape)} and keep "
                         f"{tuple(keep.shape)} do not match")
    dead = torch.diag(h) == 0  # inputs never active: nothing to fit, their weights go
    keep = keep & ~dead.reshape(1, -1)
    lam = damp * float(torch.diag(h).mean())
    target = w @ h + lam * w  # (out, in): (H w + λ w) per row (H symmetric)
    counts = keep.sum(1)  # (out,)
    k = int(counts.max()) if rows else 0
    out = torch.zeros_like(w)
    if k == 0:
        return out
    # kept input indices of each row, padded at the end (stable sort puts True first in order)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]  # (out, k)
    valid = torch.arange(k, device=w.device).reshape(1, -1) < counts.reshape(-1, 1)  # (out, k)
    step = max(1, max_elements // (k * k))
    eye = torch.eye(k, dtype=torch.float32, device=w.device)
    for r0 in range(0, rows, step):
        idx = order[r0:r0 + step]  # (b, k)
        v = valid[r0:r0 + step].float()  # (b, k)
        a = h[idx.unsqueeze(2), idx.unsqueeze(1)]  # (b, k, k): H_KK of each row
        a = a * v.unsqueeze(2) * v.unsqueeze(1) + torch.diag_embed(1.0 - v) + lam * torch.diag_embed(v)
        rhs = torch.gather(target[r0:r0 + step], 1, idx) * v  # (b, k)
        sol = _solve(a, rhs, eye)
        out[r0:r0 + step].scatter_(1, idx, sol * v)
    return out


def _solve(a: torch.Tensor, rhs: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """Solve the symmetric positive definite systems ``a`` ``[b, k, k]`` for ``rhs`` ``[b, k]``; rows
    whose float32 factorisation fails are redone in float64."""
    lower, info = torch.linalg.cholesky_ex(a)
    sol = torch.cholesky_solve(rhs.unsqueeze(2), lower).squeeze(2)  # (b, k)
    bad = info != 0
    if bool(bad.any()):
        a64 = a[bad].double()
        lower64, info64 = torch.linalg.cholesky_ex(a64)
        if bool((info64 != 0).any()):
            raise RuntimeError("llm.refit: a kept-weight system is not positive definite; raise damp")
        sol[bad] = torch.cholesky_solve(rhs[bad].double().unsqueeze(2), lower64).squeeze(2).float()
    return sol
