"""SparseGPT towards the dense model's outputs: a two-stream pipeline.

Plain SparseGPT fits each layer's own outputs on the *pruned* model's inputs X̃ (``W X̃``), so the
error the earlier blocks made is never corrected. Here a dense copy of each block runs on the
dense model's hidden states alongside, and each layer fits the dense outputs ``W X`` from the
pruned inputs X̃:

    min ‖W X − Ŵ X̃‖² + λ‖Ŵ − W‖²   ⇒   W' = (W C + λW)(H̃ + λI)⁻¹,  C = X X̃ᵀ, H̃ = X̃ X̃ᵀ

(λ = ``damp`` × mean diag H̃; W' = W when X̃ = X), then SparseGPT prunes W' with H̃. Because W' is
the least-squares optimum, ‖W X − Ŵ X̃‖² = const + ‖(W' − Ŵ) X̃‖², which SparseGPT minimizes.
Costs twice the block runs of plain (true-sequential) SparseGPT and one extra block in memory.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from .arch import DecoderLayout, block_linears, set_weight, weight_of
from .pipeline import BlockInputs, _first_tensor, _reporter, capture_inputs
from .sparsegpt import sparsegpt_prune


class _Stop(Exception):
    pass


def _stage_inputs(block: nn.Module, name: str, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The input of ``block``'s layer ``name`` on one window (the block stops right after it is read)."""
    box: list[torch.Tensor] = []

    def hook(m, args):
        box.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())  # (tokens, in)
        raise _Stop

    h = block.get_submodule(name).register_forward_pre_hook(hook)
    try:
        block(hidden, **kwargs)
    except _Stop:
        pass
    finally:
        h.remove()
    if not box:
        raise RuntimeError(f"llm.correct: layer {name} was not called by its block")
    return box[0]


def _corrected(w: torch.Tensor, cross: torch.Tensor, hess: torch.Tensor, damp: float) -> torch.Tensor:
    """W' = (W C + λW)(H̃ + λI)⁻¹ for ``w`` [out, in], C and H̃ [in, in] (float64 solve)."""
    lam = damp * float(torch.diag(hess).mean())
    eye = torch.eye(hess.shape[0], dtype=torch.float64, device=hess.device)
    a = hess.double() + lam * eye  # (in, in), symmetric positive definite
    rhs = w.double() @ cross.double() + lam * w.double()  # (out, in)
    return torch.linalg.solve(a, rhs.t()).t().float()  # rhs @ a⁻¹ (a symmetric)


def run_dense_target(model: nn.Module, windows: torch.Tensor, cfg, lay: DecoderLayout, block_sparsity: list[float], *,
                     device=None, source=None, progress: bool = True) -> None:
    """Prune every block with SparseGPT towards the dense outputs (see the module doc), in place."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    inputs = capture_inputs(model, windows, lay=lay, device=dev)
    pruned = inputs.hidden.to(dev)  # (n, T, d): inputs from the pruned blocks
    dense = pruned.clone()  # (n, T, d): inputs from the dense blocks
    kwargs = [{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()} for kw in inputs.kwargs]
    report = _reporter(len(lay.blocks), progress)
    for i in range(len(lay.blocks)):
        start = time.perf_counter()
        block = source.load(i) if source is not None else lay.blocks[i]
        home = next(block.parameters()).device
        block.to(dev).eval()
        reference = copy.deepcopy(block)  # the dense block, for the dense stream and the targets
        linears = block_linears(block)
        stages = [[n for n in st if n in linears] for st in lay.sequential] if cfg.sequential else [list(linears)]
        try:
            with torch.no_grad():
                for stage in stages:
                    keys = {stage[0]} if cfg.sequential else {st[0] for st in lay.sequential if st[0] in linears}
                    owner = {n: next(st[0] for st in lay.sequential if n in st) for n in stage}
                    hess = {k: 0 for k in keys}
                    cross = {k: 0 for k in keys}
                    for j in range(pruned.shape[0]):
                        for k in keys:
                            xt = _stage_inputs(block, k, pruned[j:j + 1], kwargs[j])  # (T, in) pruned stream
                            xd = _stage_inputs(reference, k, dense[j:j + 1], kwargs[j])  # (T, in) dense stream
                            hess[k] = hess[k] + xt.t() @ xt
                            cross[k] = cross[k] + xd.t() @ xt  # C = X X̃ᵀ
                    for n in stage:
                        k = owner[n]
                        w = _corrected(weight_of(linears[n]), cross[k], hess[k], cfg.damp)
                        new, _ = sparsegpt_prune(w, hess[k], block_sparsity[i], pattern=cfg.nm, group=cfg.group,
                                                 blocksize=cfg.blocksize, damp=cfg.damp)
                        set_weight(linears[n], new)
                step = BlockInputs(hidden=pruned, kwargs=kwargs)
                pruned = step.run(block, keep=True)
                step = BlockInputs(hidden=dense, kwargs=kwargs)
                dense = step.run(reference, keep=True)
        finally:
            del reference
            block.to(home)
            if source is not None:
                source.store(i, block)
        if report is not None:
            report(i, time.perf_counter() - start)
