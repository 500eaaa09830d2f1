"""Per-weight sparsity for decoder LLMs, one block at a time: magnitude, Wanda and SparseGPT;
unstructured or N:M; comparison groups per output row, per tensor or global; optional OWL layer
ratios; true-sequential pruning inside each block, one pass per block (the default; or the
reference order, every layer scored on the unpruned block).

Only the decoder blocks' Linear layers are pruned (not the embeddings or the LM head), as in the
reference figures.

- ``magnitude``: score ``|W|`` (no calibration).
- ``wanda`` (Sun et al. 2023): score ``|W_ij| · ‖X_j‖₂`` over the calibration tokens.
- ``sparsegpt`` (Frantar & Alistarh 2023): OBS updates from ``H = X Xᵀ`` (see :mod:`.sparsegpt`).

>>> result = sparsify_llm_(model, calib[:32], method="sparsegpt", sparsity=0.5)   # doctest: +SKIP
>>> result.sparsity                                                               # doctest: +SKIP
0.5
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .admm import AdmmConfig, admm_prune
from .arch import DecoderLayout, block_linears, layout, set_weight, weight_of
from .gram import add_gram_
from .masks import global_keep, prune_count, select_keep
from .owl import OwlConfig, owl_sparsities
from .pipeline import BlockInputs, BlockSource, run_blocks
from .refit import refit_kept
from .sparsegpt import inverse_factor, sparsegpt_prune

METHODS = ("magnitude", "wanda", "sparsegpt")
GROUPS = ("row", "tensor", "global")
REFERENCE_GROUP = {"magnitude": "tensor", "wanda": "row", "sparsegpt": "tensor"}


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` or ``(2, 4)`` -> ``(2, 4)`` (keep N of every M); ``None`` stays ``None``."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        parts = pattern.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"SparsifyConfig.pattern must look like 'N:M' (e.g. '2:4'), got {pattern!r}")
        n, m = int(parts[0]), int(parts[1])
    elif isinstance(pattern, (tuple, list)) and len(pattern) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in pattern):
        n, m = pattern
    else:
        raise ValueError(f"SparsifyConfig.pattern must be 'N:M', (N, M) or None, got {pattern!r}")
    if not 0 < n < m:
        raise ValueError(f"SparsifyConfig.pattern needs 0 < N < M, got {n}:{m}")
    return n, m


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"SparsifyConfig.{name} must be {'an int' if integer else 'a number'}, "
                        f"got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"SparsifyConfig.{name} must be finite, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise ValueError(f"SparsifyConfig.{name} must be in {'(' if low_open else '['}{low}, {high}"
                         f"{')' if high_open else ']'}, got {value!r}")


@dataclass(frozen=True)
class SparsifyConfig:
    """How to sparsify a decoder LLM's Linear layers (validated on construction, JSON-friendly).

    >>> SparsifyConfig(method="wanda", sparsity=0.5).group
    'row'
    >>> SparsifyConfig(method="sparsegpt", pattern="2:4").nm
    (2, 4)
    """

    method: str = field(default="wanda", metadata={"help": f"per-weight method: one of {METHODS}"})
    sparsity: float = field(default=0.5, metadata={"help": "fraction of each layer's weights set to zero "
                                                           "(unstructured); ignored with a pattern"})
    pattern: str | None = field(default=None, metadata={"help": "N:M pattern (keep N of every M inputs), "
                                                                "e.g. '2:4'; None = unstructured"})
    group: str | None = field(default=None, metadata={
        "help": "comparison group: 'row' (per output row), 'tensor', 'global' (magnitude: the whole model; "
                "wanda: each block's layers together); None = the method's reference "
                "(magnitude tensor, wanda row, sparsegpt tensor = each 128-column block over all rows)"})
    owl: OwlConfig | None = field(default=None, metadata={"help": "outlier-weighted layer-wise sparsities "
                                                                  "(OWL); None = uniform"})
    sequential: bool = field(default=True, metadata={
        "help": "true-sequential inside each block: prune q/k/v, then o on inputs from the pruned q/k/v, then "
                "gate/up, then down. With every window in one block call (batch=None), this takes ONE pass of "
                "each block (each stage is pruned by a hook just before it runs); else a pass per stage. "
                "False = the reference papers' order: every layer scored on the unpruned block's inputs, then "
                "a second pass of the pruned block (SmolLM2 50%: Wanda 50.13 vs 49.67 sequential)"})
    batch: int | None = field(default=None, metadata={
        "help": "calibration windows per block call; None = all windows in one call (fastest; the activations "
                "of every window in one block are alive at once); 1 = one window at a time (least memory)"})
    dense_target: bool = field(default=False, metadata={
        "help": "sparsegpt: fit the dense block's outputs (W X_dense) from the pruned inputs X instead of "
                "W X (a least-squares correction before pruning)"})
    refit: bool = field(default=False, metadata={
        "help": "wanda/sparsegpt: after the mask is chosen, refit each row's kept weights to the least-squares fit "
                "of the layer's outputs on the calibration inputs (25 conjugate-gradient steps from the method's "
                "weights, llm/refit.py); the mask is unchanged"})
    admm: AdmmConfig | None = field(default=None, metadata={
        "help": "with refit: also prune each layer by gradual ADMM (llm/admm.py) and keep, per layer, whichever of "
                "the two has the lower reconstruction error ‖(W − Ŵ)X‖² on the calibration inputs; None = off"})
    blocksize: int = field(default=128, metadata={"help": "sparsegpt: columns per lazy-update block"})
    damp: float = field(default=0.01, metadata={"help": "sparsegpt: dampening, fraction of mean diag(H)"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"SparsifyConfig.method must be one of {METHODS}, got {self.method!r}")
        _check_number("sparsity", self.sparsity, 0.0, 1.0, high_open=True)
        nm = parse_pattern(self.pattern)
        object.__setattr__(self, "pattern", None if nm is None else f"{nm[0]}:{nm[1]}")
        if self.group is None:
            object.__setattr__(self, "group", REFERENCE_GROUP[self.method])
        if self.group not in GROUPS:
            raise ValueError(f"SparsifyConfig.group must be one of {GROUPS} or None, got {self.group!r}")
        if self.group == "global" and self.method == "sparsegpt":
            raise ValueError("SparsifyConfig.group='global' is not defined for sparsegpt (its mask is chosen "
                             "column block by column block during the updates); use 'row' or 'tensor'")
        if nm is not None and self.owl is not None:
            raise ValueError("SparsifyConfig.owl gives layers different sparsities; an N:M pattern fixes it "
                             "at N/M for all (use one or the other)")
        if isinstance(self.owl, dict):
            object.__setattr__(self, "owl", OwlConfig(**self.owl))
        if self.owl is not None and not isinstance(self.owl, OwlConfig):
            raise TypeError(f"SparsifyConfig.owl must be an OwlConfig, a dict or None, got {type(self.owl).__name__}")
        for name in ("sequential", "dense_target", "refit"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SparsifyConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.dense_target and self.method != "sparsegpt":
            raise ValueError("SparsifyConfig.dense_target applies to method='sparsegpt' only")
        if self.refit and self.method == "magnitude":
            raise ValueError("SparsifyConfig.refit needs calibration statistics: use method='wanda' or 'sparsegpt'")
        if self.refit and self.dense_target:
            raise ValueError("SparsifyConfig.refit and dense_target are two different weight updates; pick one")
        if isinstance(self.admm, dict):
            object.__setattr__(self, "admm", AdmmConfig(**self.admm))
        if self.admm is not None and not isinstance(self.admm, AdmmConfig):
            raise TypeError(f"SparsifyConfig.admm must be an AdmmConfig, a dict or None, got {type(self.admm).__name__}")
        if self.admm is not None and not self.refit:
            raise ValueError("SparsifyConfig.admm compares each layer's ADMM result with the refitted one: set refit=True")
        if self.admm is not None and self.group == "global":
            raise ValueError("SparsifyConfig.admm chooses each layer's mask on its own; group='global' ranks layers "
                             "together (use 'row' or 'tensor')")
        if self.batch is not None:
            _check_number("batch", self.batch, 1, 1 << 30, integer=True)
        _check_number("blocksize", self.blocksize, 1, 1 << 20, integer=True)
        _check_number("damp", self.damp, 0.0, 1e3, low_open=True)
        if nm is not None and self.method == "sparsegpt" and self.blocksize % nm[1]:
            raise ValueError(f"SparsifyConfig.blocksize ({self.blocksize}) must be a multiple of M ({nm[1]})")

    @property
    def nm(self) -> tuple[int, int] | None:
        """The N:M pattern as a tuple, or ``None``."""
        return parse_pattern(self.pattern)

    @property
    def needs_hessian(self) -> bool:
        """Whether the inputs' ``X Xᵀ`` is collected (SparseGPT's updates, or the refit)."""
        return self.method == "sparsegpt" or self.refit

    @property
    def needs_data(self) -> bool:
        return self.method != "magnitude" or self.owl is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SparsifyResult:
    """What :func:`sparsify_llm_` did: the config, the target sparsity of each block (OWL or uniform),
    the measured sparsity of each pruned layer, overall sparsity and wall time."""

    config: SparsifyConfig
    block_sparsity: list[float]
    layer_sparsity: dict[str, float]
    sparsity: float
    seconds: float
    admm_layers: list[str] = field(default_factory=list)  # with config.admm: the layers where ADMM won

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "block_sparsity": self.block_sparsity,
                "layer_sparsity": self.layer_sparsity, "sparsity": self.sparsity, "seconds": self.seconds,
                "admm_layers": self.admm_layers}


class _InputStats:
    """Running statistics of one input (shared by the Linear layers that read it): per-column sum of
    squares (Wanda's ‖X_j‖²), and optionally ``X Xᵀ`` (SparseGPT) and ``X_dense X̃ᵀ`` (dense target)."""

    def __init__(self, cols: int, device: torch.device, hessian: bool, squares: bool = True) -> None:
        self.tokens = 0
        self.sq = torch.zeros(cols, dtype=torch.float64, device=device) if squares else None
        self.hessian = torch.zeros(cols, cols, dtype=torch.float32, device=device) if hessian else None
        self.cross: torch.Tensor | None = None
        self._factor: tuple[torch.Tensor, torch.Tensor] | None = None

    def release(self) -> None:
        """Free ``X Xᵀ`` and the factor (``[in, in]`` each) once no layer needs them."""
        self.hessian, self._factor = None, None

    def factor(self, damp: float, *, keep_hessian: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SparseGPT's inverse-Hessian factor, computed once (with one config's ``damp``) for all the
        layers reading this input.
        Without ``keep_hessian`` (no refit needs ``X Xᵀ`` later) it is computed in the Hessian's own
        storage, which is then gone."""
        if self._factor is None:
            if self.hessian is None:
                raise RuntimeError("llm.sparse: the Hessian was released before its factor was computed")
            self._factor = inverse_factor(self.hessian, damp, inplace=not keep_hessian)
            if not keep_hessian:
                self.hessian = None
        return self._factor

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.tokens += x.shape[0]
        if self.sq is not None:
            self.sq += x.square().sum(0).double()  # fp32 squares, pairwise-summed (as the reference Wanda)
        if self.hessian is not None:
            add_gram_(self.hessian, x)  # (in, in), upper block triangle then mirrored


def _stage_of(lay: DecoderLayout, names: list[str]) -> dict[str, str]:
    """Map each Linear name to its input key (the first Linear of its stage: they read one input)."""
    key = {n: stage[0] for stage in lay.sequential for n in stage}
    missing = [n for n in names if n not in key]
    if missing:
        raise ValueError(f"llm.sparse: Linear layers {missing} of a {lay.family} block are in no stage of the "
                         f"family's layout; they would be left unpruned")
    return key


def _collect(block: nn.Module, inputs: BlockInputs, linears: dict[str, nn.Module], key: dict[str, str],
             hessian: bool, *, stop_after: nn.Module | None = None, keep: bool = False,
             last_key: str | None = None, squares: bool = True) -> tuple[dict[str, _InputStats], torch.Tensor | None]:
    """Run the block on every window with hooks on ``linears``; one statistics object per input key.
    ``last_key``: the input read last in the block; each window's run stops once it is recorded (the
    Linear layers reading it, e.g. ``down_proj``, are not computed: their outputs are not needed)."""
    stats: dict[str, _InputStats] = {}
    handles = []
    firsts = {}
    for name, mod in linears.items():
        firsts.setdefault(key[name], name)
    for k, name in firsts.items():
        mod = linears[name]

        def hook(m, args, k=k):
            x = args[0]
            if k not in stats:
                stats[k] = _InputStats(x.shape[-1], x.device, hessian, squares)
            stats[k].add(x)
        handles.append(mod.register_forward_pre_hook(hook))
    stop_before = linears[firsts[last_key]] if last_key is not None and not keep and stop_after is None else None
    try:
        out = inputs.run(block, keep=keep, stop_after=stop_after, stop_before=stop_before)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(firsts) - set(stats))
    if missing:
        raise RuntimeError(f"llm.sparse: the inputs of {missing} were not recorded (the block did not call them "
                           f"before {firsts.get(last_key, 'its end')}); the block's layout does not match its forward")
    return stats, out


def _wanda_scores(w: torch.Tensor, st: _InputStats) -> torch.Tensor:
    if st.sq is None:
        raise RuntimeError("llm.sparse: Wanda scores need the inputs' squared norms, which were not collected")
    return w.abs().float() * st.sq.sqrt().float().reshape(1, -1)  # (out, in)


def _prune_layer(cfg: SparsifyConfig, mod: nn.Module, st: _InputStats | None, sparsity: float,
                 pruned: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
    """Prune one Linear in place; returns whether ADMM's result was taken (``cfg.admm``). ``pruned``:
    the method's (weight, keep) already computed (SparseGPT on layers stacked by shared input)."""
    w = weight_of(mod)
    if pruned is not None:
        new, keep = pruned
    elif cfg.method == "sparsegpt":
        new, keep = sparsegpt_prune(w, None, sparsity, pattern=cfg.nm, group=cfg.group, blocksize=cfg.blocksize,
                                    damp=cfg.damp, factor=st.factor(cfg.damp, keep_hessian=cfg.refit))
    else:
        scores = w.abs().float() if cfg.method == "magnitude" else _wanda_scores(w, st)
        keep = select_keep(scores, sparsity, pattern=cfg.nm, group=cfg.group)
        new = w * keep
    if cfg.admm is None:
        _set(cfg, mod, w, new, keep, st)
        return False
    new = refit_kept(w, st.hessian, keep, damp=cfg.damp, start=new)
    other, _ = admm_prune(w, st.hessian, sparsity, pattern=cfg.nm, group="row", damp=cfg.damp, config=cfg.admm)
    wins = reconstruction_error(w, other, st.hessian) < reconstruction_error(w, new, st.hessian)
    set_weight(mod, (other if wins else new).to(w.dtype))
    return wins


def reconstruction_error(w: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor) -> float:
    """``‖(W − Ŵ) X‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` from the inputs' Hessian ``H = X Xᵀ``."""
    d = w.detach().float() - new.detach().float()  # (out, in)
    return float(((d @ hessian.float()) * d).sum())


def _set(cfg: SparsifyConfig, mod: nn.Module, w: torch.Tensor, new: torch.Tensor, keep: torch.Tensor,
         st: _InputStats | None) -> None:
    """Write the pruned weight, refitted on the kept entries when ``cfg.refit``."""
    if cfg.refit:
        new = refit_kept(w, st.hessian, keep, damp=cfg.damp, start=new).to(w.dtype)
    set_weight(mod, new)


class _Visitor:
    """The per-block step of the pipeline for one :class:`SparsifyConfig`."""

    def __init__(self, cfg: SparsifyConfig, lay: DecoderLayout, block_sparsity: list[float]) -> None:
        self.cfg, self.lay, self.block_sparsity = cfg, lay, block_sparsity
        self.block = -1
        self.admm_layers: list[str] = []

    def _last_key(self, linears: dict[str, nn.Module], key: dict[str, str]) -> str | None:
        """The input key of the block's last stage (its Linear layers run last and feed no other)."""
        for stage in reversed(self.lay.sequential):
            present = [n for n in stage if n in linears]
            if present:
                return key[present[0]]
        return None

    def __call__(self, i: int, block: nn.Module, inputs: BlockInputs) -> torch.Tensor | None:
        cfg = self.cfg
        self.block = i
        linears = block_linears(block)
        key = _stage_of(self.lay, list(linears))
        s = self.block_sparsity[i]
        stages = [[n for n in stage if n in linears] for stage in self.lay.sequential] if cfg.sequential \
            else [list(linears)]
        stages = [stage for stage in stages if stage]
        if cfg.sequential and cfg.method != "magnitude" and inputs is not None and inputs.one_call:
            return self._one_pass(block, inputs, linears, key, stages, s)
        for stage in stages:
            if cfg.method == "magnitude":
                stats: dict[str, _InputStats] = {}
            else:
                last = stage[-1] if cfg.sequential else None
                final = stage is stages[-1]
                stats, _ = _collect(block, inputs, {n: linears[n] for n in stage}, key, cfg.needs_hessian,
                                    squares=cfg.method == "wanda",
                                    stop_after=linears[last] if last and not final else None,
                                    last_key=self._last_key(linears, key) if final else None)
            self._prune_stage(linears, key, stage, stats, s)
        return None

    def _prune_stage(self, linears: dict[str, nn.Module], key: dict[str, str], stage: list[str],
                     stats: dict[str, _InputStats], s: float) -> None:
        cfg = self.cfg
        if cfg.group == "global" and cfg.nm is None:
            ws = {n: weight_of(linears[n]) for n in stage}
            scores = {n: (ws[n].abs().float() if cfg.method == "magnitude" else _wanda_scores(ws[n], stats[key[n]]))
                      for n in stage}
            for n, keep in global_keep(scores, s).items():
                _set(cfg, linears[n], ws[n], ws[n] * keep, keep, stats.get(key[n]))
            return
        last = {key[n]: n for n in stage}  # each input's last reader in this stage
        pruned = self._sparsegpt_shared(linears, key, stage, stats, s) if cfg.method == "sparsegpt" else {}
        for n in stage:
            st = stats.get(key[n])
            if _prune_layer(cfg, linears[n], st, s, pruned.get(n)):
                self.admm_layers.append(f"{self.lay.blocks_path}.{self.block}.{n}")
            if st is not None and last[key[n]] == n:
                st.release()  # its Hessian and factor are not needed by any later layer

    def _sparsegpt_shared(self, linears: dict[str, nn.Module], key: dict[str, str], stage: list[str],
                          stats: dict[str, _InputStats], s: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """SparseGPT on the stage's layers that share an input (q/k/v, gate/up), stacked by rows in one
        column sweep: {layer: (weight, keep)}; each equals the layer pruned alone."""
        cfg = self.cfg
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for k in dict.fromkeys(key[n] for n in stage):
            names = [n for n in stage if key[n] == k]
            if len(names) < 2:
                continue
            ws = [weight_of(linears[n]) for n in names]
            rows = [w.shape[0] for w in ws]
            new, keep = sparsegpt_prune(torch.cat([w.float() for w in ws]), None, s, pattern=cfg.nm, group=cfg.group,
                                        blocksize=cfg.blocksize, damp=cfg.damp, parts=rows,
                                        factor=stats[k].factor(cfg.damp, keep_hessian=cfg.refit))
            for n, nw, kp in zip(names, new.split(rows), keep.split(rows)):
                out[n] = (nw, kp)
        return out

    def _one_pass(self, block: nn.Module, inputs: BlockInputs, linears: dict[str, nn.Module], key: dict[str, str],
                  stages: list[list[str]], s: float) -> torch.Tensor:
        """True-sequential pruning in one pass of the block over every window (one call): a pre-hook on
        each Linear prunes its whole stage from the statistics of the input it is about to read (the
        stage's other Linears read the same input later), so every Linear runs once, already pruned,
        and the block's output is the next block's input."""
        done: list[int] = []
        stage_of = {n: k for k, stage in enumerate(stages) for n in stage}

        def hook(module, args, name):
            k = stage_of[name]
            if k in done:
                return None
            st = _InputStats(args[0].shape[-1], args[0].device, self.cfg.needs_hessian, self.cfg.method == "wanda")
            st.add(args[0])
            done.append(k)
            self._prune_stage(linears, key, stages[k], {key[name]: st}, s)
            return None

        handles = [linears[n].register_forward_pre_hook(lambda m, a, n=n: hook(m, a, n)) for n in stage_of]
        try:
            out = inputs.run(block, keep=True)
        finally:
            for h in handles:
                h.remove()
        if sorted(done) != list(range(len(stages))):
            missing = [stages[k] for k in range(len(stages)) if k not in done]
            raise RuntimeError(f"llm.sparse: the block's forward never called {missing}; they were not pruned")
        return out


def _magnitude_global(model: nn.Module, lay: DecoderLayout, sparsity: float) -> None:
    """One ranking of ``|W|`` over every decoder Linear of the model."""
    mods = {f"{lay.blocks_path}.{i}.{n}": m for i, b in enumerate(lay.blocks) for n, m in block_linears(b).items()}
    ws = {p: weight_of(m) for p, m in mods.items()}
    for p, keep in global_keep({p: w.abs() for p, w in ws.items()}, sparsity).items():
        set_weight(mods[p], ws[p] * keep)


def _layer_sparsity(lay: DecoderLayout) -> tuple[dict[str, float], float]:
    out, zeros, total = {}, 0, 0
    for i, b in enumerate(lay.blocks):
        for n, m in block_linears(b).items():
            w = weight_of(m)
            z = int((w == 0).sum())
            out[f"{lay.blocks_path}.{i}.{n}"] = z / w.numel()
            zeros, total = zeros + z, total + w.numel()
    return out, zeros / max(total, 1)


def sparsify_llm_(model: nn.Module, windows: torch.Tensor | None = None, method: str = "wanda",
                  sparsity: float = 0.5, pattern: str | tuple[int, int] | None = None, group: str | None = None,
                  owl: OwlConfig | dict | None = None, device: torch.device | str | None = None, *,
                  sequential: bool = True, refit: bool = False, config: SparsifyConfig | None = None,
                  progress: bool = True, source: BlockSource | None = None) -> SparsifyResult:
    """Sparsify the decoder Linear layers of a Hugging Face causal LM in place, block by block on the
    calibration ``windows`` (LongTensor [n, T]; not needed for uniform magnitude).

    ``config`` (a :class:`SparsifyConfig`) replaces the keyword settings when given. ``device``:
    where each block is processed (e.g. ``"cuda"``); ``source``: blocks loaded one at a time
    (see :class:`~prunekit.llm.pipeline.BlockSource`).

    >>> res = sparsify_llm_(model, calib[:32], method="wanda", sparsity=0.5)     # doctest: +SKIP
    """
    cfg = config if config is not None else SparsifyConfig(method=method, sparsity=sparsity, pattern=pattern,
                                                           group=group, owl=owl, sequential=sequential, refit=refit)
    if not isinstance(cfg, SparsifyConfig):
        raise TypeError(f"sparsify_llm_: config must be a SparsifyConfig, got {type(cfg).__name__}")
    lay = layout(model)
    if cfg.needs_data and (windows is None or not isinstance(windows, torch.Tensor)):
        raise ValueError(f"sparsify_llm_: method={cfg.method!r}{' with owl' if cfg.owl else ''} needs calibration "
                         f"windows (a LongTensor [n, T])")
    start = time.perf_counter()
    target = cfg.sparsity if cfg.nm is None else 1 - cfg.nm[0] / cfg.nm[1]
    n_blocks = len(lay.blocks)
    if cfg.owl is not None:
        block_sparsity = owl_sparsities(model, windows, cfg.sparsity, cfg.owl, device=device, source=source,
                                        progress=progress)
    else:
        block_sparsity = [target] * n_blocks
    if cfg.method == "magnitude" and cfg.group == "global":
        if source is not None:
            raise ValueError("sparsify_llm_: group='global' magnitude ranks the whole model at once; it cannot run "
                             "with a block source")
        _magnitude_global(model, lay, target)
    elif cfg.method == "magnitude":  # no calibration pass: each block is scored on its weights alone
        visit = _Visitor(cfg, lay, block_sparsity)
        with torch.no_grad():
            for i in range(n_blocks):
                block = source.load(i) if source is not None else lay.blocks[i]
                visit(i, block, None)
                if source is not None:
                    source.store(i, block)
    elif cfg.dense_target:
        from .correct import run_dense_target  # the two-stream pipeline (dense and pruned inputs)
        run_dense_target(model, windows, cfg, lay, block_sparsity, device=device, source=source, progress=progress)
    else:
        visit = _Visitor(cfg, lay, block_sparsity)
        run_blocks(model, windows, visit, device=device, source=source, progress=progress,
                   batch=cfg.batch or len(windows))
    seconds = time.perf_counter() - start
    layers, overall = ({}, float("nan")) if source is not None else _layer_sparsity(lay)
    return SparsifyResult(config=cfg, block_sparsity=block_sparsity, layer_sparsity=layers, sparsity=overall,
                          seconds=seconds, admm_layers=visit.admm_layers if cfg.admm is not None else [])
