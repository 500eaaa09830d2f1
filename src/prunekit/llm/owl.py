"""OWL (Yin et al. 2024): non-uniform, outlier-weighted layer-wise sparsity.

A dense pass over the calibration windows measures each block's *outlier ratio*: the fraction of
its Linear weights whose Wanda score ``|W_ij|·‖X_j‖₂`` exceeds ``m`` times the block's mean score.
Ratios are rescaled to ``[0, 2·lamda]``, centred, and a block's sparsity is
``target - (ratio - mean)``: blocks with more outliers are pruned less, the mean is the target.

>>> layer_sparsities([1.0, 2.0, 3.0], 0.5, OwlConfig(lamda=0.1))
[0.6, 0.5, 0.4]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class OwlConfig:
    """OWL's two hyper-parameters (the paper's defaults for LLaMA: ``m=5``, ``lamda=0.08``)."""

    m: float = field(default=5.0, metadata={"help": "outlier threshold: a score above m x the block's mean"})
    lamda: float = field(default=0.08, metadata={"help": "largest deviation of a block's sparsity from the target"})

    def __post_init__(self) -> None:
        for name, value, low, high in (("m", self.m, 0.0, 1e6), ("lamda", self.lamda, 0.0, 0.5)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"OwlConfig.{name} must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value) or not low < value <= high:
                raise ValueError(f"OwlConfig.{name} must be finite and in ({low}, {high}], got {value!r}")


def layer_sparsities(outlier_ratios: list[float], target: float, cfg: OwlConfig) -> list[float]:
    """Per-block sparsities from outlier ratios: rescaled to ``[0, 2·lamda]``, centred on the
    target (so they average to it), more outliers = less sparsity. Equal ratios give the target."""
    r = torch.tensor(outlier_ratios, dtype=torch.float64)
    span = float(r.max() - r.min())
    if span == 0:
        return [float(target)] * len(outlier_ratios)
    scaled = (r - r.min()) / span * (2 * cfg.lamda)
    s = target - (scaled - scaled.mean())  # (blocks,)
    if float(s.min()) < 0 or float(s.max()) >= 1:
        raise ValueError(f"OwlConfig.lamda={cfg.lamda} moves block sparsities out of [0, 1) around {target}")
    return [round(float(v), 12) for v in s]


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of all the scores (several tensors together) above ``m`` times their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(model: nn.Module, windows: torch.Tensor, target: float, cfg: OwlConfig, *,
                   device=None, source=None, progress: bool = True) -> list[float]:
    """Run the dense model block by block on ``windows``, measure each block's outlier ratio with
    Wanda scores, and return the per-block sparsities (mean = ``target``). The model is not changed."""
    from .arch import block_linears, weight_of
    from .pipeline import run_blocks

    ratios: list[float] = []

    def visit(i, block, inputs):
        linears = block_linears(block)
        sq = {n: None for n in linears}
        handles = []
        for n, mod in linears.items():
            def hook(m_, args, n=n):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in)
                s = (x * x).sum(0)
                sq[n] = s if sq[n] is None else sq[n] + s
            handles.append(mod.register_forward_pre_hook(hook))
        try:
            out = inputs.run(block, keep=True)  # dense block: its outputs are the next inputs
        finally:
            for h in handles:
                h.remove()
        scores = [weight_of(linears[n]).abs().float() * sq[n].sqrt().float().reshape(1, -1) for n in linears]
        ratios.append(outlier_ratio(scores, cfg.m))
        return out

    run_blocks(model, windows, visit, device=device, source=source, progress=progress)
    return layer_sparsities(ratios, target, cfg)
