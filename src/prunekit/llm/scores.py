"""Scores for structured LLM units (higher = keep): per query head, per KV group and per MLP neuron.

Criteria (``SCORERS``):

- ``"flap"`` (An et al. 2024, the default): the *fluctuation* of a channel entering the output
  projection (``o_proj`` / ``down_proj``), its variance over calibration tokens, times the squared
  norm of the weight column it multiplies; the removed channels' means can be folded into the
  projection's bias (:func:`compensation`), which is what makes a low-variance channel cheap.
- ``"wanda_sp"``: ``||X_c||_2 * sum_i |W[i, c]|`` on the same columns (structured Wanda).
- ``"taylor"``: ``|sum w * dL/dw|`` over every weight of the unit (first-order loss change).
- ``"l2"``: the unit's squared weight norm (every slot); ``"random"``: a seeded baseline.

A head's score sums its channels; a KV group's sums its query heads and its own K/V channels. For
MLP neurons of a SwiGLU model the statistic is taken on ``down_proj``'s input, i.e. on the gate·up
product itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from .structured import LayerUnits, Space, model_units

SCORERS = ("flap", "wanda_sp", "taylor", "l2", "random")
DEFAULT = "flap"


@dataclass
class ChannelStats:
    """Running sums of one output projection's input channels over calibration tokens (float64)."""

    total: torch.Tensor
    squares: torch.Tensor
    count: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()   # (tokens, channels)
        self.total += x.sum(0).cpu()
        self.squares += (x * x).sum(0).cpu()
        self.count += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        return (self.squares / max(self.count, 1) - self.mean ** 2).clamp_min(0)

    @property
    def norm(self) -> torch.Tensor:
        return self.squares.sqrt()


@dataclass
class LayerScores:
    """Scores of one layer's units (higher = keep)."""

    q_heads: torch.Tensor      # [n_q]
    kv_groups: torch.Tensor    # [n_kv]
    neurons: torch.Tensor      # [n_neurons]


@dataclass
class Calibration:
    """What the scorers read: channel statistics per (layer, "q" | "mlp") and, for Taylor, ``w * grad``
    summed per channel per (layer, "q" | "kv" | "mlp"), and each block's influence."""

    stats: dict[tuple[int, str], ChannelStats] = field(default_factory=dict)
    taylor: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    influence: dict[int, float] = field(default_factory=dict)   # block influence (1 - cos), prunekit.structure.blocks' measure
    delta: dict[int, torch.Tensor] = field(default_factory=dict)  # block's mean residual update E[out - in] [d], float64


def collect_stats(model: nn.Module, windows: torch.Tensor, units: list[LayerUnits] | None = None, *,
                  device: torch.device | str | None = None, progress: bool = False) -> Calibration:
    """Channel statistics of every output projection's input, every block's influence and mean residual update, over the
    calibration ``windows`` (int64 [n, T]), through the sequential pipeline (:func:`~prunekit.llm.pipeline.run_blocks`):
    one block and the hidden states on ``device`` at a time. The model is not changed."""
    from ..structure.blocks import _cos_change
    from .pipeline import run_blocks

    units = units or model_units(model)
    cal = Calibration()

    def visit(i: int, block: nn.Module, inputs) -> torch.Tensor:
        u = units[i]
        handles = []
        for key, space in (("q", u.q), ("mlp", u.mlp)):
            st = ChannelStats(torch.zeros(space.size, dtype=torch.float64), torch.zeros(space.size, dtype=torch.float64))
            cal.stats[(i, key)] = st
            mod = block.get_submodule(space.out_module[len(u.prefix) + 1:])
            handles.append(mod.register_forward_pre_hook(lambda m, a, st=st: st.add(a[0])))
        try:
            out = inputs.run(block, keep=True)   # (n, T, d)
        finally:
            for h in handles:
                h.remove()
        cal.influence[i] = sum(_cos_change(inputs.hidden[j:j + 1], out[j:j + 1]) for j in range(len(inputs))) / len(inputs)
        d = out.shape[-1]
        cal.delta[i] = (out - inputs.hidden).reshape(-1, d).double().mean(0).cpu()   # (tokens, d) -> (d,)
        return out

    run_blocks(model, windows, visit, device=device, progress=progress)
    return cal


def _per_channel(model: nn.Module, space: Space, fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                 grads: bool = False) -> torch.Tensor:
    """Sum over the space's slots of ``fn(weight, grad)`` reduced to one number per channel."""
    params = dict(model.named_parameters())
    out = torch.zeros(space.size, dtype=torch.float64)
    chans = list(range(space.size))
    for s in space.slots:
        p = params[s.tensor]
        idx = torch.tensor(s.indices(chans))
        w = p.detach().index_select(s.dim, idx).double()
        g = p.grad.detach().index_select(s.dim, idx).double() if grads else None
        v = fn(w, g)
        v = v.movedim(s.dim, 0).reshape(space.size, -1).sum(1)   # (channels,)
        out += v
    return out


def collect_taylor(model: nn.Module, windows: Iterable[torch.Tensor], units: list[LayerUnits] | None = None) -> Calibration:
    """``sum(w * dL/dw)`` per channel of every unit space, the causal-LM loss summed over ``windows``."""
    units = units or model_units(model)
    was = model.training
    model.eval()
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        for w in windows:
            ids = w.reshape(-1, w.shape[-1])
            out = model(input_ids=ids, labels=ids, use_cache=False)
            out.loss.backward()
        cal = Calibration()
        for u in units:
            for key, space in (("q", u.q), ("kv", u.kv), ("mlp", u.mlp)):
                cal.taylor[(u.index, key)] = _per_channel(model, space, lambda w, g: w * g, grads=True)
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(req[n])
        model.train(was)
    return cal


def _out_weight(model: nn.Module, space: Space) -> torch.Tensor:
    """The output projection's weight as [out, in] (float64)."""
    w = dict(model.named_parameters())[space.out_weight].detach().double()
    return w.t() if space.out_transposed else w


def _heads(ch: torch.Tensor, hd: int) -> torch.Tensor:
    return ch.reshape(-1, hd).sum(1)   # (heads,)


def layer_scores(model: nn.Module, u: LayerUnits, criterion: str, cal: Calibration | None,
                 generator: torch.Generator | None = None) -> LayerScores:
    """Scores of one layer's units by ``criterion`` (see the module doc)."""
    if criterion == "random":
        g = generator or torch.Generator().manual_seed(u.index)
        return LayerScores(torch.rand(u.n_q, generator=g, dtype=torch.float64),
                           torch.rand(u.n_kv, generator=g, dtype=torch.float64),
                           torch.rand(u.mlp.size, generator=g, dtype=torch.float64))
    if criterion == "l2":
        sq = lambda w, g: w * w   # noqa: E731
        q, kv, mlp = (_per_channel(model, s, sq) for s in (u.q, u.kv, u.mlp))
    elif criterion == "taylor":
        if cal is None or not cal.taylor:
            raise ValueError("llm.scores: criterion 'taylor' needs collect_taylor(...) first")
        q, kv, mlp = (cal.taylor[(u.index, k)] for k in ("q", "kv", "mlp"))
        heads = _heads(q, u.head_dim)
        groups = heads.reshape(u.n_kv, u.rep).sum(1) + _heads(kv, u.head_dim)
        return LayerScores(heads.abs(), groups.abs(), mlp.abs())
    elif criterion in ("flap", "wanda_sp"):
        if cal is None or not cal.stats:
            raise ValueError(f"llm.scores: criterion {criterion!r} needs collect_stats(...) first")
        out = []
        for key, space in (("q", u.q), ("mlp", u.mlp)):
            st, w = cal.stats[(u.index, key)], _out_weight(model, space)
            if criterion == "flap":
                out.append(st.var * (w * w).sum(0))
            else:
                out.append(st.norm * w.abs().sum(0))
        q, mlp = out
        kv = torch.zeros(u.kv.size, dtype=torch.float64)
    else:
        raise ValueError(f"llm.scores: unknown criterion {criterion!r}; known: {SCORERS}")
    heads = _heads(q, u.head_dim)
    groups = heads.reshape(u.n_kv, u.rep).sum(1) + _heads(kv, u.head_dim)   # (n_kv, rep) -> (n_kv,)
    return LayerScores(heads, groups, mlp)


def compensation(model: nn.Module, u: LayerUnits, cal: Calibration, q_channels: list[int],
                 neurons: list[int]) -> dict[str, torch.Tensor]:
    """FLAP's bias compensation: for each output projection, ``W[:, removed] @ mean(X[removed])``, the
    expected contribution of the removed channels, to be added to its bias after the cut
    (module path -> [out] vector)."""
    out = {}
    for key, space, chans in (("q", u.q, q_channels), ("mlp", u.mlp, neurons)):
        if chans:
            w = _out_weight(model, space)
            idx = torch.tensor(chans)
            out[space.out_module] = w[:, idx] @ cal.stats[(u.index, key)].mean[idx]   # (out,)
    return out


def add_bias_(model: nn.Module, path: str, vector: torch.Tensor) -> None:
    """Add ``vector`` to the bias of the Linear-like module at ``path``, creating the bias if it has none."""
    mod = model.get_submodule(path)
    w = mod.weight
    with torch.no_grad():
        if getattr(mod, "bias", None) is None:
            mod.bias = nn.Parameter(torch.zeros(vector.numel(), dtype=w.dtype, device=w.device))
        mod.bias.add_(vector.to(w.dtype).to(w.device))
