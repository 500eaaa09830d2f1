"""Depth pruning with least-squares compensation folded into the kept weights (training-free; in the
spirit of ReplaceMe, arXiv 2505.02819, and LLM-Streamline).

For every contiguous run of removed decoder blocks ``[s .. e]``, the nearest kept block before it,
``k = s - 1``, gets a new MLP output projection (``down_proj``; GPT-2 ``mlp.c_proj``, OPT ``fc2``,
GPT-NeoX ``dense_4h_to_h``) so that its output approximates the *dense* residual stream after block
``e``. With ``a`` the projection's input (the MLP intermediate activation, tokens x inter), ``y`` the
block's output minus the projection's output (the residual stream the MLP adds to) and ``h`` the
dense hidden state after block ``e`` (tokens x d), the target is ``r = h - y`` and:

- ``mode="down"``: the whole projection is refit, ridge-regularised toward the old weight,
  ``min_W' ||a W'^T - r||^2 + lam ||W' - W||^2`` so ``W'^T = (A^T A + lam I)^-1 (A^T R + lam W^T)``,
  ``lam = ridge * mean(diag(A^T A))``;
- ``mode="transform"``: ReplaceMe's linear map ``T`` (d x d) on the MLP output ``m = a W^T``,
  ``min_T ||m T - r||^2 + lam ||T - I||^2``, folded in as ``W' = T^T W``
  (``lam = ridge * mean(diag(M^T M))``).

No new parameters and the same shapes, so a plain ``save_pretrained`` / ``from_pretrained`` round
trip keeps working once the blocks are removed (``config.num_hidden_layers`` is rewritten).

``sequential=True``: the kept block's inputs come from the already compensated and pruned stack (so
each refit also corrects the drift of the refits before it); ``False``: from the dense model (one
shot). Targets always come from the dense model.

>>> res = compensate_depth_(model, calib[:32], removed=[13, 14, 17])   # doctest: +SKIP
>>> res.errors[12]     # (relative error of plain removal, after the refit) at block 12's output  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..structure.blocks import remove_blocks_
from .arch import layout, set_weight, weight_of
from .pipeline import BlockInputs, _first_tensor, capture_inputs
from .structured import model_units

MODES = ("down", "transform")


@dataclass(frozen=True)
class CompensateConfig:
    """How the kept block before each removed run is refit (see the module doc): ``mode`` ``"down"``
    (the whole MLP output projection) or ``"transform"`` (a d x d map on the MLP output folded into it);
    ``ridge``: the pull toward the old weight, relative to the mean diagonal of the Gram matrix
    (``inf``: no change, a control); ``sequential``: inputs from the pruned stack (else the dense one);
    ``token_weight``: ``"none"`` (plain least squares) or ``"norm"`` (each token's row divided by the norm
    of its dense target, so every token counts by its relative error, as the next RMSNorm sees it);
    ``follow``: the kept blocks after each run that are refit too, each toward its own dense output
    (0: only the block before the run)."""

    mode: str = "down"
    ridge: float = 0.1  # the benchmarked setting (llm_structured_compensate.py: 0.1 ~ 0.01 at 10%, held-out calibration)
    sequential: bool = True
    token_weight: str = "none"
    follow: int = 0


    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"CompensateConfig.mode must be one of {MODES}, not {self.mode!r}")
        if not self.ridge > 0:
            raise ValueError(f"CompensateConfig.ridge must be > 0, not {self.ridge}")
        if self.follow < 0:
            raise ValueError(f"CompensateConfig.follow must be >= 0, not {self.follow}")
        if self.token_weight not in ("none", "norm"):
            raise ValueError(f"CompensateConfig.token_weight must be 'none' or 'norm', not {self.token_weight!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompensateResult:
    """What :func:`compensate_depth_` did (block indices of the stack before the removal): the removed
    block paths, ``refit`` {kept block: last block
    of the removed run it stands in for, or itself for a ``follow`` block}, and ``errors`` {kept block:
    (plain removal, after refit)}:
    the relative error ``||out - h|| / ||h - mean(h)||`` of the kept block's output against the dense
    hidden state after the run, on the calibration windows."""

    config: CompensateConfig
    removed_layers: list[str]
    refit: dict[int, int] = field(default_factory=dict)
    errors: dict[int, tuple[float, float]] = field(default_factory=dict)


def removed_runs(removed: list[int], n_layers: int) -> dict[int, int]:
    """{kept block k: last removed block e} for every maximal run ``k+1 .. e`` of ``removed``. A run
    starting at block 0 (no kept block before it) or indices outside ``0 .. n_layers-1`` are errors;
    so is removing every block."""
    gone = sorted(set(removed))
    if any(i < 0 or i >= n_layers for i in gone):
        raise ValueError(f"compensate: removed blocks {gone} outside 0..{n_layers - 1}")
    if len(gone) >= n_layers:
        raise ValueError(f"compensate: removing all {n_layers} blocks")
    runs: dict[int, int] = {}
    for i in gone:
        if i - 1 in gone:
            continue
        if i == 0:
            raise ValueError("compensate: block 0 is removed and no kept block precedes it to take its update")
        e = i
        while e + 1 in gone:
            e += 1
        runs[i - 1] = e
    return runs


def _solve(w: torch.Tensor, gaa: torch.Tensor, gar: torch.Tensor, config: CompensateConfig) -> torch.Tensor:
    """The new ``[d, inter]`` weight from the old one ``w`` [d, inter] (float64), ``gaa = A^T A``
    [inter, inter] and ``gar = A^T R`` [inter, d] (see the module doc); ``ridge=inf`` returns ``w``."""
    if config.ridge == float("inf"):
        return w
    if config.mode == "down":
        lam = config.ridge * gaa.diagonal().mean()
        eye = torch.eye(gaa.shape[0], dtype=gaa.dtype)
        return torch.linalg.solve(gaa + lam * eye, gar + lam * w.t()).t()          # (d, inter)
    gmm = w @ gaa @ w.t()                                                           # M^T M, (d, d)
    gmr = w @ gar                                                                   # M^T R, (d, d)
    lam = config.ridge * gmm.diagonal().mean()
    eye = torch.eye(gmm.shape[0], dtype=gmm.dtype)
    t = torch.linalg.solve(gmm + lam * eye, gmr + lam * eye)                        # T, (d, d)
    return t.t() @ w                                                                # W' = T^T W, (d, inter)


def _run(block: nn.Module, inputs: BlockInputs, down: nn.Module | None = None,
         stats: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``block`` on every window; returns its outputs [n, T, d] and, when ``down`` is given, the
    projection's outputs [n, T, d] (``stats`` receives the projection inputs [b*T, inter] per call)."""
    out = torch.empty_like(inputs.hidden)
    proj = torch.empty_like(inputs.hidden) if down is not None else None
    seen: dict[str, torch.Tensor] = {}

    def hook(m, args, y):
        seen["a"] = args[0].detach()
        seen["y"] = y.detach()
    h = down.register_forward_hook(hook) if down is not None else None
    try:
        with torch.no_grad():
            for sl in inputs.calls():
                out[sl] = _first_tensor(block(inputs.hidden[sl], **inputs.kwargs[sl.start]))   # (b, T, d)
                if down is not None:
                    if "a" not in seen:
                        raise RuntimeError(f"compensate: {type(down).__name__} was not called by the block")
                    proj[sl] = seen.pop("y").reshape(out[sl].shape)
                    a = seen.pop("a")
                    if stats is not None:
                        stats.append(a.reshape(-1, a.shape[-1]))                           # (b*T, inter)
    finally:
        if h is not None:
            h.remove()
    return out, proj


def _rel(out: torch.Tensor, target: torch.Tensor) -> float:
    t = target.double()
    return float((out.double() - t).norm() / (t - t.mean((0, 1))).norm().clamp_min(1e-30))


def compensate_depth_(model: nn.Module, windows: torch.Tensor, removed: list[int],
                      config: CompensateConfig | None = None, *, device: torch.device | str | None = None,
                      check_rtol: float = 1e-3) -> CompensateResult:
    """Refit the kept block before every run of ``removed`` blocks (indices of the current stack) on the
    calibration ``windows`` [n, T], then remove the blocks, in place (see the module doc).

    Errors: a run with no kept block before it, or a family whose block output is not the residual
    stream plus the MLP output projection's output (e.g. a post-norm OPT): after the refit, the block's
    output must change by exactly the projection's change (within ``check_rtol``), else a
    ``RuntimeError`` naming the block."""
    config = config or CompensateConfig()
    lay = layout(model)
    n_layers = len(lay.blocks)
    runs = removed_runs(removed, n_layers)
    gone = set(removed)
    units = model_units(model)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    dense = capture_inputs(model, windows, lay=lay, device=dev)
    dense.hidden = dense.hidden.to(dev)
    pruned: BlockInputs | None = None       # None while the pruned stream equals the dense one
    result = CompensateResult(config, [])
    homes = {}
    for i in range(n_layers):
        block = lay.blocks[i]
        homes[i] = next(block.parameters()).device
        block.to(dev).eval()
    def refit(i: int, target: torch.Tensor) -> None:
        """Refit block ``i``'s MLP output projection so its output on the pruned stream approximates
        ``target`` [n, T, d]; advances the pruned stream through it."""
        nonlocal pruned
        block = lay.blocks[i]
        path = units[i].mlp.out_module
        down = model.get_submodule(path)
        src = pruned if (pruned is not None and config.sequential) else dense
        acts: list[torch.Tensor] = []
        out0, proj0 = _run(block, src, down, acts)
        y = (out0 - proj0).reshape(-1, out0.shape[-1])                                     # (n*T, d)
        r = (target.reshape(-1, target.shape[-1]) - y).double()                            # (n*T, d)
        bias = getattr(down, "bias", None)
        if bias is not None:
            r = r - bias.detach().double()
        a = torch.cat(acts).double()                                                       # (n*T, inter)
        if config.token_weight == "norm":
            tw = 1.0 / target.reshape(-1, target.shape[-1]).double().norm(dim=1, keepdim=True).clamp_min(1e-12)
            a, r = a * tw, r * tw                                                          # tw: (n*T, 1)
        gaa = a.t() @ a                                                                    # (inter, inter)
        gar = a.t() @ r                                                                    # (inter, d)
        del a, r
        w = weight_of(down).double().cpu()                                                 # (d, inter)
        new = _solve(w, gaa.cpu(), gar.cpu(), config)
        with torch.no_grad():
            set_weight(down, new.to(dev))
        src_out, proj1 = _run(block, src, down)
        change = (src_out - out0) - (proj1 - proj0)
        if float(change.abs().max()) > check_rtol * max(float(src_out.abs().max()), 1e-12):
            raise RuntimeError(f"compensate: block {i}'s output ({lay.blocks_path}.{i}) is not the residual stream "
                               f"plus {path}'s output (family {lay.family}); cannot fold the compensation into it")
        base = pruned if pruned is not None else dense
        after = src_out if base is src else _run(block, base)[0]
        result.errors[i] = (_rel(out0, target), _rel(src_out, target))
        pruned = BlockInputs(after, dense.kwargs, dense.batch)

    try:
        i = 0
        left = 0                                   # following kept blocks still to refit (config.follow)
        while i < n_layers:
            block = lay.blocks[i]
            if i in gone:                          # unreachable: removed_runs gives every removed block a run
                raise RuntimeError(f"compensate: removed block {i} outside a run")
            if i in runs:                          # the dense target: the dense stream through blocks i .. e
                e = runs[i]
                target, _ = _run(block, dense)
                for j in range(i + 1, e + 1):
                    target, _ = _run(lay.blocks[j], BlockInputs(target, dense.kwargs, dense.batch))
                refit(i, target)
                result.refit[i] = e
                dense.hidden = target
                left = config.follow
                i = e + 1
                continue
            out, _ = _run(block, dense)
            if left > 0 and pruned is not None:    # a kept block after a run: pulled back onto its dense output
                refit(i, out)
                result.refit[i] = i
                left -= 1
            elif pruned is not None:
                pruned.hidden, _ = _run(block, pruned)
            dense.hidden = out
            i += 1
    finally:
        for j, home in homes.items():
            lay.blocks[j].to(home)
    names = [f"{lay.blocks_path}.{i}" for i in sorted(gone)]
    result.removed_layers = remove_blocks_(model, names)
    return result
