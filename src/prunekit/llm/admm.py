"""Gradual ADMM pruning of one Linear layer (Boža 2024, "Fast and Effective Weight Update for Pruned
Large Language Models"): the mask and the surviving weights are found together, instead of
SparseGPT's one greedy column sweep.

With the inputs' Hessian ``H = X Xᵀ``, the layer's reconstruction error is
``‖(W − Ŵ) X‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)``. ADMM splits ``Ŵ`` into a dense copy ``x`` (a ridge
step) and a sparse copy ``z`` (a projection on the mask), tied by the scaled dual ``u``:

    x ← (W H + ρ (z − u)) (H + ρ I)⁻¹      z ← (x + u) ⊙ mask      u ← u + x − z

in the space where every input has unit norm (``H`` scaled to unit diagonal, ``W`` by the input
norms ``‖X_j‖``), so ``|x + u|`` there is Wanda's score ``|W_ij| ‖X_j‖`` of the current weights. The
mask is re-chosen every ``every`` steps while the sparsity ramps up cubically to its target over
the first ``ramp`` steps, then held; the remaining steps settle the weights, and the kept weights
are finally refitted exactly (:func:`~prunekit.llm.refit.refit_kept`). ``(H + ρI)⁻¹`` is computed
once, so each step costs one ``[out, in] @ [in, in]`` product.

>>> w = torch.tensor([[4.0, -1.0, 0.5, 3.0]]); h = torch.eye(4)
>>> admm_prune(w, h, 0.5, config=AdmmConfig(iters=8, ramp=4, every=1))[1].tolist()
[[True, False, False, True]]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .masks import select_keep
from .refit import refit_kept


@dataclass(frozen=True)
class AdmmConfig:
    """Settings of :func:`admm_prune` (validated on construction).

    ``iters`` ADMM steps in all; the mask is re-chosen every ``every`` steps during the first
    ``ramp`` steps (sparsity ``s · (1 − (1 − t)³)``, reaching ``s`` at step ``ramp``); ``rho`` is the
    penalty relative to the unit-diagonal Hessian."""

    iters: int = 60
    ramp: int = 40
    every: int = 4
    rho: float = 1.0
    score: str = "obs"

    def __post_init__(self) -> None:
        for name in ("iters", "ramp", "every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdmmConfig.{name} must be an int >= 1, got {v!r}")
        if self.ramp > self.iters:
            raise ValueError(f"AdmmConfig.ramp ({self.ramp}) must not exceed iters ({self.iters})")
        if not isinstance(self.rho, (int, float)) or isinstance(self.rho, bool) or not 0 < self.rho < 1e6:
            raise ValueError(f"AdmmConfig.rho must be a number in (0, 1e6), got {self.rho!r}")
        if self.score not in ("wanda", "obs"):
            raise ValueError(f"AdmmConfig.score must be 'wanda' or 'obs', got {self.score!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedule(cfg: AdmmConfig) -> dict[int, float]:
    """Step -> fraction of the target sparsity at the mask updates (the last one is 1.0)."""
    steps = list(range(0, cfg.ramp, cfg.every))
    out = {k: 1.0 - (1.0 - (k + cfg.every) / cfg.ramp) ** 3 if k + cfg.every < cfg.ramp else 1.0 for k in steps}
    out[cfg.ramp - 1] = 1.0
    return out


def admm_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, *,
               pattern: tuple[int, int] | None = None, group: str = "row", damp: float = 0.01,
               config: AdmmConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` ``[out, in]`` from its inputs' Hessian ``[in, in]``; returns the new weight
    (float32, pruned entries exactly 0) and the keep mask (``sparsity`` per row or per tensor by
    ``group``, or N:M by ``pattern``). ``damp``: the final refit's dampening (fraction of mean diag H)."""
    cfg = config or AdmmConfig()
    w = weight.detach().float()
    h = hessian.detach().float()
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"llm.admm: weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match")
    diag = h.diagonal()
    dead = diag <= 0  # inputs never active: their weights carry nothing
    norm = diag.clamp_min(torch.finfo(torch.float32).tiny).sqrt().masked_fill(dead, 1.0)  # (in,): ‖X_j‖
    hn = h / norm.reshape(-1, 1) / norm.reshape(1, -1)  # (in, in), unit diagonal
    hn[dead] = 0
    hn[:, dead] = 0
    wn = (w * norm).masked_fill(dead.reshape(1, -1), 0.0)  # (out, in)
    a = hn.clone()
    a.diagonal().add_(cfg.rho)
    ainv = torch.cholesky_inverse(torch.linalg.cholesky(a))  # (in, in): (Hn + ρI)⁻¹
    del a
    if cfg.score == "obs":  # OBS saliency w² / [H⁻¹]_jj (damped as SparseGPT's), per input column
        hd = hn.clone()
        hd.diagonal().add_(damp)
        scale = torch.cholesky_inverse(torch.linalg.cholesky(hd)).diagonal().rsqrt()  # (in,)
        del hd
    else:
        scale = torch.ones(cols)
    b = wn @ hn  # (out, in)
    del hn
    z = wn.clone()
    u = torch.zeros_like(wn)
    keep = torch.ones_like(wn, dtype=torch.bool)
    updates = _schedule(cfg)
    for k in range(cfg.iters):
        v = (b + cfg.rho * (z - u)) @ ainv + u  # (out, in): x + u
        if k in updates:
            frac = sparsity * updates[k] if pattern is None else sparsity
            keep = select_keep((v.abs() * scale).masked_fill(dead.reshape(1, -1), -1.0), frac, pattern=pattern, group=group)
        z = v * keep
        u = v - z
    start = (z / norm).masked_fill(dead.reshape(1, -1), 0.0)
    keep = keep & ~dead.reshape(1, -1)
    return refit_kept(w, h, keep, damp=damp, start=start), keep
