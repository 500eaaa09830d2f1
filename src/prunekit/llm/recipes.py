"""Structured LLM recipes on a parameter budget: which units go (uniform per layer or global across
layers), FLAP's bias compensation, and depth by block influence (prunekit.structure.blocks).

>>> cal = collect_stats(model, calib)                               # doctest: +SKIP
>>> res = prune_width_(model, WidthConfig(ratio=0.1), cal)         # doctest: +SKIP
>>> prune_depth_(model, calib, n=3)                                 # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..structure.blocks import block_scores, remove_blocks_
from .scores import SCORERS, Calibration, LayerScores, add_bias_, compensation, layer_scores
from .structured import BLOCKS_PATH, CutResult, LayerCut, LayerUnits, _channels, blocks, cut_, decoder_params, \
    family, model_units, normalize_cut, unit_costs


@dataclass(frozen=True)
class WidthConfig:
    """A width cut: remove ``ratio`` of the decoder-block parameters.

    ``units``: ``"neurons"`` (MLP only), ``"heads"`` (whole KV groups only), ``"q_heads"`` (the same
    number of query heads inside every KV group, uniform only) or ``"both"`` (KV groups and neurons).
    ``allocation``: ``"uniform"`` (the same count in every layer) or ``"global"`` (scores standardized
    per unit kind over all layers, the lowest go first wherever they are: per-layer sizes).
    ``compensate``: fold the removed channels' calibration means into the output projections' biases
    (FLAP). ``min_keep``: fraction of each layer's neurons / KV groups that always stays."""

    criterion: str = "flap"
    ratio: float = 0.1
    units: str = "neurons"
    allocation: str = "uniform"
    compensate: bool = False
    min_keep: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.criterion not in SCORERS:
            raise ValueError(f"WidthConfig.criterion must be one of {SCORERS}, not {self.criterion!r}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"WidthConfig.ratio must be in [0, 1), not {self.ratio}")
        if self.units not in ("neurons", "heads", "q_heads", "both"):
            raise ValueError(f"WidthConfig.units must be 'neurons', 'heads', 'q_heads' or 'both', not {self.units!r}")
        if self.units == "q_heads" and self.allocation != "uniform":
            raise ValueError("WidthConfig.units='q_heads' needs allocation='uniform'")
        if self.allocation not in ("uniform", "global"):
            raise ValueError(f"WidthConfig.allocation must be 'uniform' or 'global', not {self.allocation!r}")
        if not 0.0 < self.min_keep <= 1.0:
            raise ValueError(f"WidthConfig.min_keep must be in (0, 1], not {self.min_keep}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def all_scores(model: nn.Module, criterion: str, cal: Calibration | None, units: list[LayerUnits],
               seed: int = 0) -> dict[int, LayerScores]:
    g = torch.Generator().manual_seed(seed)
    return {u.index: layer_scores(model, u, criterion, cal, g) for u in units}


def select_cuts(model: nn.Module, scores: dict[int, LayerScores], config: WidthConfig, units: list[LayerUnits],
                budget: int) -> dict[int, LayerCut]:
    """The units to remove, ``budget`` parameters in all (the last unit may overshoot by less than
    its own size), lowest scores first."""
    costs = {u.index: unit_costs(model, u) for u in units}
    group_cost = {i: c.q_head * units[i].rep + c.kv_group for i, c in costs.items()}
    kinds = ["neurons", "heads"] if config.units == "both" else [config.units]
    if config.allocation == "uniform":
        if config.units == "both":
            raise ValueError("WidthConfig: allocation='uniform' takes units='neurons' or 'heads'")
        cuts = {}
        per_layer = budget / len(units)
        for u in units:
            s = scores[u.index]
            if config.units == "neurons":
                n = min(int(round(per_layer / costs[u.index].neuron)), int(u.mlp.size * (1 - config.min_keep)))
                cuts[u.index] = LayerCut(neurons=tuple(sorted(torch.argsort(s.neurons, stable=True)[:n].tolist())))
            elif config.units == "q_heads":   # k query heads out of every group: k * n_kv heads per layer
                k = min(int(round(per_layer / (costs[u.index].q_head * u.n_kv))), u.rep - 1)
                per_group = s.q_heads.reshape(u.n_kv, u.rep)                               # (groups, rep)
                low = torch.argsort(per_group, dim=1, stable=True)[:, :k]                  # (groups, k)
                heads = (low + torch.arange(u.n_kv)[:, None] * u.rep).flatten()
                cuts[u.index] = LayerCut(q_heads=tuple(sorted(heads.tolist())))
            else:
                n = min(int(round(per_layer / group_cost[u.index])), u.n_kv - max(1, int(u.n_kv * config.min_keep)))
                cuts[u.index] = LayerCut(kv_groups=tuple(sorted(torch.argsort(s.kv_groups, stable=True)[:n].tolist())))
        return cuts
    # global: z-scores per kind over every layer, lowest first, within min_keep
    cands: list[tuple[float, int, str, int]] = []
    for kind in kinds:
        vals = torch.cat([scores[u.index].neurons if kind == "neurons" else scores[u.index].kv_groups for u in units])
        mu, sd = vals.mean(), vals.std().clamp_min(1e-30)
        for u in units:
            v = scores[u.index].neurons if kind == "neurons" else scores[u.index].kv_groups
            cands += [(float((x - mu) / sd), u.index, kind, j) for j, x in enumerate(v.tolist())]
    cands.sort()
    removed: dict[tuple[int, str], list[int]] = {}
    total = 0
    for _, i, kind, j in cands:
        if total >= budget:
            break
        u = units[i]
        size = u.mlp.size if kind == "neurons" else u.n_kv
        floor = max(1, int(size * config.min_keep))
        have = removed.setdefault((i, kind), [])
        if size - len(have) - 1 < floor:
            continue
        have.append(j)
        total += costs[i].neuron if kind == "neurons" else group_cost[i]
    return {u.index: LayerCut(kv_groups=tuple(sorted(removed.get((u.index, "heads"), []))),
                              neurons=tuple(sorted(removed.get((u.index, "neurons"), [])))) for u in units}


@dataclass
class WidthResult:
    config: WidthConfig
    cut: CutResult
    cuts: dict[int, LayerCut]
    compensated: list[str] = field(default_factory=list)


def prune_width_(model: nn.Module, config: WidthConfig, cal: Calibration | None, *,
                 budget: int | None = None, scores: dict[int, LayerScores] | None = None,
                 example_ids: torch.Tensor | None = None) -> WidthResult:
    """Score, select and cut (verified) in place; ``budget`` (parameters) defaults to
    ``config.ratio`` of the decoder-block parameters now. ``scores`` reuses precomputed scores."""
    units = model_units(model)
    if budget is None:
        budget = int(round(config.ratio * decoder_params(model)))
    if scores is None:
        scores = all_scores(model, config.criterion, cal, units, config.seed)
    cuts = select_cuts(model, scores, config, units, budget)
    comp: dict[str, torch.Tensor] = {}
    if config.compensate:
        if cal is None or not cal.stats:
            raise ValueError("WidthConfig.compensate needs channel statistics (collect_stats)")
        for i, c in cuts.items():
            heads, _, neurons = normalize_cut(units[i], c)
            for path, vec in compensation(model, units[i], cal, _channels(heads, units[i].head_dim), neurons).items():
                comp[path] = vec
    res = cut_(model, cuts, example_ids=example_ids)
    for path, vec in comp.items():
        add_bias_(model, path, vec)
    return WidthResult(config, res, cuts, sorted(comp))


def depth_scores(model: nn.Module, windows: torch.Tensor) -> dict[str, float]:
    """Block influence (1 - cos(input, output), ShortGPT) of every decoder layer on ``windows`` [n, T]."""
    names = [f"{BLOCKS_PATH[family(model)]}.{i}" for i in range(len(blocks(model)))]
    return block_scores(model, names, [w[None] for w in windows], "similarity",
                        forward=lambda m, ids: m(input_ids=ids, use_cache=False))


def prune_depth_(model: nn.Module, scores: dict[str, float], n: int) -> list[str]:
    """Remove the ``n`` layers of lowest block influence (``config.num_hidden_layers`` and each
    attention's ``layer_idx`` are renumbered by prunekit.structure.blocks)."""
    worst = sorted(scores, key=lambda b: scores[b])[:n]
    return remove_blocks_(model, worst)


@dataclass(frozen=True)
class RefitConfig:
    """Sequential MLP-neuron pruning with a least-squares refit of ``down_proj`` (block by block on the
    calibration pipeline): ``neurons[i]`` (or ``ratio`` of every layer's neurons) go by FLAP's
    fluctuation on the block's actual (already pruned upstream) inputs, then the kept columns and a
    bias are refit to reproduce the dense block's ``down_proj`` output on those inputs:
    ``[W', b'] = [W, b] G[:, K] (G[K, K] + damp * mean(diag G[K, K]) I)^-1`` with ``G`` the Gram
    matrix of ``[x, 1]``."""

    ratio: float = 0.1
    damp: float = 1e-2

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"RefitConfig.ratio must be in [0, 1), not {self.ratio}")
        if self.damp < 0:
            raise ValueError(f"RefitConfig.damp must be >= 0, not {self.damp}")


def refit_mlp_(model: nn.Module, windows: torch.Tensor, config: RefitConfig, *, neurons: dict[int, int] | None = None,
               device: torch.device | str | None = None, example_ids: torch.Tensor | None = None) -> WidthResult:
    """Prune MLP neurons layer by layer with a least-squares refit (see :class:`RefitConfig`), then cut
    them hard (verified: the refit leaves the removed columns at zero, so the cut equals zeroing)."""
    from .pipeline import run_blocks

    units = model_units(model)
    cuts: dict[int, LayerCut] = {}

    def visit(i: int, block: nn.Module, inputs) -> torch.Tensor:
        u = units[i]
        down = block.get_submodule(u.mlp.out_module[len(u.prefix) + 1:])
        n_in = u.mlp.size
        gram = torch.zeros(n_in + 1, n_in + 1, dtype=torch.float64)

        def hook(m, args):
            x = args[0].detach().reshape(-1, n_in).double()                 # (tokens, n_in)
            xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)  # (tokens, n_in + 1)
            gram.add_(xa.t() @ xa)
        h = down.register_forward_pre_hook(hook)
        try:
            inputs.run(block)
        finally:
            h.remove()
        k = neurons.get(i, 0) if neurons is not None else int(round(config.ratio * n_in))
        if k:
            count = gram[-1, -1]
            mean = gram[:-1, -1] / count
            var = (gram.diagonal()[:-1] / count - mean ** 2).clamp_min(0)
            view = down.weight.t() if u.mlp.out_transposed else down.weight    # (d, n_in); Conv1D stores [in, out]
            w = view.detach().double()
            score = var * (w * w).sum(0)
            removed = torch.argsort(score, stable=True)[:k]
            keep = torch.ones(n_in + 1, dtype=torch.bool)
            keep[removed] = False
            kept = keep.nonzero().squeeze(1)                                   # kept neurons + the constant
            b0 = down.bias.detach().double() if down.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
            wa = torch.cat([w, b0[:, None]], 1)                                 # (d, n_in + 1)
            a = gram[kept][:, kept]
            a = a + config.damp * a.diagonal().mean() * torch.eye(len(kept), dtype=a.dtype)
            new = torch.linalg.solve(a, (wa @ gram[:, kept]).t()).t()          # (d, kept) = wa G[:, K] A^-1
            with torch.no_grad():
                full = torch.zeros_like(w)
                full[:, kept[:-1]] = new[:, :-1]
                view.copy_(full.to(view.dtype))
                if down.bias is None:
                    down.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=down.weight.dtype, device=down.weight.device))
                down.bias.copy_(new[:, -1].to(down.bias.dtype))
            cuts[i] = LayerCut(neurons=tuple(sorted(removed.tolist())))
        return inputs.run(block, keep=True)

    run_blocks(model, windows, visit, device=device, progress=False)
    res = cut_(model, cuts, example_ids=example_ids)
    cfg = WidthConfig(criterion="flap", ratio=config.ratio, units="neurons", allocation="uniform", compensate=True)
    return WidthResult(cfg, res, cuts, [units[i].mlp.out_module for i in cuts])


def prune_depth_compensated_(model: nn.Module, windows: torch.Tensor, n: int, scores: dict[int, float],
                             config: Any = None, *, device: torch.device | str | None = None) -> Any:
    """Remove the ``n`` decoder blocks of lowest ``scores`` (block index -> score, e.g. ``cal.influence``,
    block influence) with least-squares compensation: the kept block before each removed run gets its
    MLP output projection refit on the calibration ``windows`` to reproduce the dense hidden state after
    the run (:func:`prunekit.llm.compensate.compensate_depth_`, config a
    :class:`~prunekit.llm.compensate.CompensateConfig`). Block 0 is never a candidate: no kept block
    precedes it to take its update. Returns its :class:`CompensateResult`."""
    from .compensate import compensate_depth_

    n_layers = len(model_units(model))
    missing = [i for i in range(n_layers) if i not in scores]
    if missing:
        raise ValueError(f"prune_depth_compensated_: no block score for layers {missing}")
    if not 0 <= n < n_layers - 1:
        raise ValueError(f"prune_depth_compensated_: n={n} must be in 0..{n_layers - 2} (block 0 stays)")
    gone = sorted(sorted(range(1, n_layers), key=lambda i: (scores[i], i))[:n])
    return compensate_depth_(model, windows, gone, config, device=device)


def remap_calibration(cal: Calibration, kept: list[int]) -> Calibration:
    """``cal`` (measured on the unpruned stack) re-indexed for a model that kept the layers ``kept``
    (in order): new layer ``i`` reads old layer ``kept[i]``'s statistics, Taylor sums, influence and
    mean update."""
    out = Calibration()
    for new, old in enumerate(kept):
        for (i, key), st in cal.stats.items():
            if i == old:
                out.stats[(new, key)] = st
        for (i, key), t in cal.taylor.items():
            if i == old:
                out.taylor[(new, key)] = t
        if old in cal.influence:
            out.influence[new] = cal.influence[old]
        if old in cal.delta:
            out.delta[new] = cal.delta[old]
    return out


def depth_bias_(model: nn.Module, cal: Calibration, removed: list[int]) -> dict[int, int]:
    """Before the blocks ``removed`` (indices in the current stack) are deleted: add each one's mean
    residual update ``cal.delta[i]`` to the MLP output projection's bias of the nearest kept block
    before it, so the residual stream keeps its calibration mean (FLAP's compensation applied to a
    whole block). Returns {removed block: block that took its mean}. A removed block with no kept block
    before it is an error (nothing can carry its mean)."""
    gone = set(removed)
    units = model_units(model)
    moved = {}
    for i in sorted(gone):
        if i not in cal.delta:
            raise ValueError(f"depth_bias_: no mean update for block {i} (collect_stats records Calibration.delta)")
        k = max((j for j in range(i) if j not in gone), default=None)
        if k is None:
            raise ValueError(f"depth_bias_: block {i} is removed and no kept block precedes it to carry its mean")
        add_bias_(model, units[k].mlp.out_module, cal.delta[i])
        moved[i] = k
    return moved


@dataclass(frozen=True)
class CombinedConfig:
    """prunekit's combined structured recipe on one parameter budget: ``blocks`` decoder blocks of lowest
    block influence go first (their mean residual updates kept as biases when ``depth_bias``), then
    MLP neurons by ``criterion`` (the same count in every remaining layer, FLAP's bias compensation
    when ``compensate``) take the rest of ``ratio`` of the decoder-block parameters. ``blocks=None``:
    :func:`choose_blocks` picks it on calibration windows."""

    ratio: float = 0.1
    blocks: int | None = None
    criterion: str = "flap"
    compensate: bool = True
    depth_bias: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"CombinedConfig.ratio must be in (0, 1), not {self.ratio}")
        if self.blocks is not None and self.blocks < 0:
            raise ValueError(f"CombinedConfig.blocks must be >= 0 or None, not {self.blocks}")
        if self.criterion not in SCORERS:
            raise ValueError(f"CombinedConfig.criterion must be one of {SCORERS}, not {self.criterion!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CombinedResult:
    config: CombinedConfig
    removed_layers: list[str]
    depth_bias: dict[int, int]
    width: WidthResult | None
    params_before: int
    params_after: int
    base_config: Any = None          # the model config after the depth cut (what the width plan replays on)
    trials: dict[int, float] = field(default_factory=dict)   # blocks -> calibration perplexity (choose_blocks)


def removal_perplexity(model: nn.Module, windows: torch.Tensor, candidates: list[int] | None = None) -> dict[int, float]:
    """Perplexity on calibration ``windows`` with each candidate decoder block (default: every one)
    removed alone: the block order of :func:`prune_combined_` when given as ``block_scores`` (lowest
    first), a direct measure of what removing the block costs, instead of block influence's cosine."""
    import copy

    from .eval import perplexity

    prefix = BLOCKS_PATH[family(model)]
    out = {}
    for i in candidates if candidates is not None else range(len(blocks(model))):
        m = copy.deepcopy(model)
        remove_blocks_(m, [f"{prefix}.{i}"])
        out[i] = perplexity(m, windows)
        del m
    return out


def prune_combined_(model: nn.Module, config: CombinedConfig, cal: Calibration, *,
                    example_ids: torch.Tensor | None = None, block_scores: dict[int, float] | None = None) -> CombinedResult:
    """Depth then width in place (see :class:`CombinedConfig`); ``cal`` is :func:`collect_stats` of the
    unpruned model (re-indexed for the width step after the depth cut). Needs ``config.blocks`` set.
    Blocks go in the order of ``block_scores`` (lowest first, e.g. :func:`removal_perplexity`; every
    block must have one), by default of ``cal.influence``."""
    import copy

    if config.blocks is None:
        raise ValueError("prune_combined_: CombinedConfig.blocks is None (use choose_blocks to pick it)")
    n_layers = len(model_units(model))
    if config.blocks >= n_layers:
        raise ValueError(f"CombinedConfig.blocks={config.blocks} would remove all {n_layers} layers")
    before = decoder_params(model)
    target = int(round(config.ratio * before))
    scores = cal.influence if block_scores is None else block_scores
    missing = [i for i in range(n_layers) if i not in scores]
    if missing:
        raise ValueError(f"prune_combined_: no block score for layers {missing}")
    order = sorted(range(n_layers), key=lambda i: (scores[i], i))
    gone = sorted(order[: config.blocks])
    moved = depth_bias_(model, cal, gone) if config.depth_bias and gone else {}
    prefix = BLOCKS_PATH[family(model)]
    removed = remove_blocks_(model, [f"{prefix}.{i}" for i in gone]) if gone else []
    kept = [i for i in range(n_layers) if i not in set(gone)]
    base = copy.deepcopy(model.config)
    rest = target - (before - decoder_params(model))
    width = None
    if rest > 0:
        wcfg = WidthConfig(criterion=config.criterion, units="neurons", allocation="uniform", compensate=config.compensate)
        width = prune_width_(model, wcfg, remap_calibration(cal, kept), budget=rest, example_ids=example_ids)
    return CombinedResult(config, removed, moved, width, before, decoder_params(model), base)


def choose_blocks(model: nn.Module, config: CombinedConfig, cal: Calibration, windows: torch.Tensor,
                  candidates: list[int] | None = None, *, recover: Any = None, text: torch.Tensor | None = None,
                  teacher: nn.Module | None = None, block_scores: dict[int, float] | None = None) -> tuple[int, dict[int, float]]:
    """The block count for :func:`prune_combined_` with the lowest perplexity on calibration ``windows``
    (never the evaluation text): each candidate (default 0 .. the count the whole budget would remove)
    is cut from a copy and, when ``recover`` (a :class:`~prunekit.llm.recover.RecoverConfig`) is given,
    first recovered on the calibration ``text`` (with ``teacher``, the unpruned model, when it distills),
    so the choice ranks what a short recovery makes of each split. Returns (best, {candidate: perplexity})."""
    import copy
    from dataclasses import replace

    from .eval import perplexity
    from .recover import recover_

    if recover is not None and text is None:
        raise ValueError("choose_blocks: recover= needs the calibration text= to recover on")
    n_layers = len(model_units(model))
    if candidates is None:
        candidates = list(range(int(round(config.ratio * n_layers)) + 1))
    trials = {}
    for n in candidates:
        m = copy.deepcopy(model)
        prune_combined_(m, replace(config, blocks=n), cal, block_scores=block_scores)
        if recover is not None:
            recover_(m, text, recover, teacher=teacher)
        trials[n] = perplexity(m, windows)
        del m
    best = min(trials, key=lambda n: (trials[n], n))
    return best, trials
