"""Which units to remove: a criterion's scores, a scope (local or global), and a rule
(a ratio, or an absolute threshold), within per-group minimum and maximum ratios.

- **local**: each group loses its own ratio (per module / per group ratios allowed) of its
  lowest-scoring units.
- **global**: one ranking over all groups; scores are first normalized per group
  (``config.normalize``: ``mean`` by default, ``none`` for raw scores such as Taylor, so that
  one threshold is shared by all layers). The lowest units go until ``ratio`` of all units
  are removed, never fewer than ``min_ratio`` nor more than ``max_ratio`` of any group.
- **threshold**: remove every unit scoring below ``config.threshold`` (after normalization
  in global scope), again within the per-group bounds.

``round_to`` then rounds each channel group's kept count up to a multiple. Where a channel
dimension is factored into groups x width (grouped convs, GroupNorm), the two factor groups
share the ratio so that ``r`` of the channels go, as asked: the pair of counts removing at least
``floor(r * channels)`` channels while keeping the most, ties going to the narrower width (the
grouped conv's cost per kept channel is its width; Torch-Pruning makes the same choice). A factor
shared by several pairs falls back to each losing ``1 - sqrt(1 - r)``.

Attention heads and their width (``head`` x ``head_dim``) are one such pair: ``r`` of the attention width
goes, whole heads first (ties remove heads), the rest from every head's width. 6 heads of 64 at 0.5 lose
3 heads; 3 heads of 64 lose 1 head and 16 of each remaining head's 64 (2 x 48 = 96 kept). The width
comes along with ``kinds=("head", ...)`` only where cutting it is verifiable: exact, or approximate
through 1-d norms only (see :func:`prunekit.graph.groups.build_groups`); ``"head_dim"`` in ``kinds`` also
prunes widths that are not (SDPA's default scale on a query that is not a projection's own rows, a
softmax over the width) and the widths of attentions whose heads cannot go.
"""
from __future__ import annotations

import fnmatch
import math

import numpy as np
import torch
from torch import nn

from .config import PruneConfig
from .criteria import Criterion, get_criterion, normalize_scores
from .graph.groups import Group, factor_pairs


def ratio_for(group: Group, config: PruneConfig) -> float:
    """Per-module (glob on the group's first module) or per-group (``"<tensor>:<dim>"``) ratio."""
    root_mod = group.root[0].rsplit(".", 1)[0] if "." in group.root[0] else ""
    root_key = f"{group.root[0]}:{group.root[1]}"
    for pattern, r in config.ratios:
        if fnmatch.fnmatchcase(root_mod, pattern) or fnmatch.fnmatchcase(root_key, pattern):
            return r
    return config.ratio


def check_settings_match(model: nn.Module, groups: list[Group], config: PruneConfig) -> None:
    """Nothing in the config is silently ignored: a ``ratios`` pattern that names no module and no
    ``<tensor>:<dim>`` of the model raises; a ``round_to`` larger than a channel group (which is then
    pruned unrounded) is reported as a warning naming how many groups it skips."""
    modules = [n for n, _ in model.named_modules()] if config.ratios else []
    tensors = [f"{n}:{d}" for n, t in [*model.named_parameters(), *model.named_buffers()] for d in range(t.dim())] \
        if config.ratios else []
    for pattern, _ in config.ratios:
        if not any(fnmatch.fnmatchcase(m, pattern) for m in modules) and \
                not any(fnmatch.fnmatchcase(k, pattern) for k in tensors):
            raise ValueError(f"PruneConfig.ratios pattern {pattern!r} matches no module path and no "
                             f"'<tensor>:<dim>' of {type(model).__name__}")
    if config.round_to > 1:
        channel = [g for g in groups if g.kind == "channel"]
        small = [g for g in channel if len(g) < config.round_to]
        if small:
            import warnings

            warnings.warn(f"round_to={config.round_to} is larger than {len(small)} of {len(channel)} channel groups "
                          f"(smallest {min(len(g) for g in small)} channels): those are pruned without rounding",
                          stacklevel=3)


def _bounds(n: int, config: PruneConfig) -> tuple[int, int]:
    lo = min(math.ceil(n * config.min_ratio - 1e-9), n - 1)
    hi = min(math.floor(n * config.max_ratio + 1e-9), n - 1)
    return lo, max(hi, lo)


def _rounded(g: Group, n_rm: int, config: PruneConfig) -> int:
    n = len(g)
    if config.round_to > 1 and g.kind == "channel" and n >= config.round_to and n_rm > 0:
        kept = min(n, math.ceil((n - n_rm) / config.round_to) * config.round_to)
        return n - kept
    return n_rm


def select_units(model: nn.Module, groups: list[Group], config: PruneConfig,
                 criterion: Criterion | str | None = None, graph=None) -> tuple[set[int], list[dict]]:
    """Lowest-scoring units by the config's scope, rule, bounds and rounding.

    Returns the chosen unit roots (for :func:`~prunekit.plan.make_plan`) and one summary
    row per pruned group.
    """
    crit = get_criterion(criterion) if criterion is not None else config.make_criterion()  # with its recorded args
    eligible = [g for g in groups if len(g) >= 2]
    check_settings_match(model, eligible, config)
    scores: dict[int, torch.Tensor] = {}

    def score(g: Group) -> torch.Tensor:  # scored on demand: a local ratio of 0 needs no scores or data
        if not scores:
            crit.prepare(model, graph)
        if g.id not in scores:
            scores[g.id] = crit.score(model, g).double()
        return scores[g.id]

    if config.scope == "global" or config.threshold is not None:
        for g in eligible:
            score(g)
    if config.scope == "global":
        removal = _global_counts(eligible, scores, config)
    else:
        removal = {}
        factored = _factored(eligible)
        pairs = [(p, False) for p in factor_pairs(eligible)] + [(p, True) for p in
                                                                 factor_pairs(eligible, "head", "head_dim")]
        for (gg, widths), heads in pairs:
            r = ratio_for(gg, config)
            if config.threshold is None and all(ratio_for(w, config) == r for w in widths):
                removal[gg.id], n_w = _pair_counts(len(gg), len(widths[0]), r, config, prefer_outer=heads)
                removal.update({w.id: n_w for w in widths})
        for g in eligible:
            if g.id in removal:
                continue
            lo, hi = _bounds(len(g), config)
            if config.threshold is not None:
                want = int((scores[g.id] < config.threshold).sum())
            else:
                r = ratio_for(g, config)
                if g.id in factored:  # groups x width: both axes share the ratio, the product keeps 1 - r
                    r = 1.0 - math.sqrt(1.0 - r)
                want = math.floor(len(g) * r + 1e-9)
            removal[g.id] = min(max(want, lo), hi)
    chosen: set[int] = set()
    summaries = []
    for g in eligible:
        n_rm = _rounded(g, removal.get(g.id, 0), config)
        if n_rm <= 0:
            continue
        order = torch.argsort(score(g), stable=True)[:n_rm].numpy()
        chosen.update(g.unit_roots(order))
        summaries.append({"group": g.id, "kind": g.kind, "root": f"{g.root[0]}:{g.root[1]}", "units": len(g),
                          "removed": n_rm, "exact": g.exact})
    return chosen, summaries


def _pair_counts(n_outer: int, width: int, r: float, config: PruneConfig,
                 prefer_outer: bool = False) -> tuple[int, int]:
    """Outer units (groups, heads) and per-unit width to remove from an ``n_outer x width`` dimension at
    ratio ``r``: at least ``floor(r * n_outer * width)`` channels go (as from any channel group), keeping
    the most channels possible within each factor's bounds; ties keep the narrower width (grouped convs) or,
    with ``prefer_outer``, remove whole outer units first (attention heads keep their width)."""
    n = n_outer * width
    keep_at_most = n - math.floor(n * r + 1e-9)
    (glo, ghi), (wlo, whi) = _bounds(n_outer, config), _bounds(width, config)
    fits = [((n_outer - a) * (width - b), a if prefer_outer else b, a, b)
            for a in range(glo, ghi + 1) for b in range(wlo, whi + 1) if (n_outer - a) * (width - b) <= keep_at_most]
    if not fits:  # the bounds cannot reach the ratio: remove as much as they allow
        return ghi, whi
    _, _, a, b = max(fits)  # most channels kept, then the preferred factor removed most
    return a, b


def _factored(groups: list[Group]) -> set[int]:
    """Ids of groups that are two factors of one channel dimension: a ``group``-kind group (whole
    conv or GroupNorm groups) and the ``channel``-kind group (the same offset in every group) that
    touch the same tensor dim. Pruning both at ``r`` would remove ``1 - (1 - r)^2`` of the channels."""
    channel_dims: dict[tuple[str, int], list[int]] = {}
    for g in groups:
        if g.kind == "channel":
            for key, _ in g.signature:
                channel_dims.setdefault(key, []).append(g.id)
    out: set[int] = set()
    for g in groups:
        if g.kind == "group":
            partners = {pid for key, _ in g.signature for pid in channel_dims.get(key, ())}
            if partners:
                out.add(g.id)
                out.update(partners)
    return out


def _global_counts(groups: list[Group], scores: dict[int, torch.Tensor], config: PruneConfig) -> dict[int, int]:
    """Units to remove per group under one global ranking of normalized scores."""
    if not groups:
        return {}
    norm = {g.id: normalize_scores(scores[g.id], config.normalize) for g in groups}
    counts = {}
    cand_scores, cand_group = [], []
    for g in groups:
        lo, hi = _bounds(len(g), config)
        counts[g.id] = lo  # the minimum, taken from the group's own lowest units
        s = torch.sort(norm[g.id]).values.numpy()
        cand_scores.append(s[lo:hi])  # the units the global ranking may add
        cand_group.append(np.full(hi - lo, g.id, dtype=np.int64))
    cs, cg = np.concatenate(cand_scores), np.concatenate(cand_group)
    order = np.argsort(cs, kind="stable")
    if config.threshold is not None:
        take = int((cs < config.threshold).sum())
    else:
        total = sum(len(g) for g in groups)
        take = max(0, math.floor(total * config.ratio + 1e-9) - sum(counts.values()))
    # within a group the candidates are sorted, so taking the k lowest overall takes each
    # group's lowest ones first: per-group counts are enough
    for gid, k in zip(*np.unique(cg[order[:take]], return_counts=True)):
        counts[int(gid)] += int(k)
    return counts
