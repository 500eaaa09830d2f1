"""Residual streams: the channel groups that a residual addition joins, and the one-line way to keep them.

In a residual CNN, the channels a stage's blocks add into (MobileNetV2's 24/32/64/96/160-wide
streams, ResNet's 256…2048) are written by several dense convolutions: each block's last conv,
and the projection shortcut. Every block reads and writes them, so pruning them cuts both sides
of many convs (MACs fall with the square of the kept width) while the time of the
memory-bound ops around them falls only with the width. Keeping them and pruning only the
widths *inside* the blocks (MobileNetV2's expanded channels, ResNet's bottleneck widths)
makes a MAC saving show up as latency far better on CPUs (``benchmarks/realized_speedup.py``).

>>> import torch, torchvision, prunekit
>>> m = torchvision.models.mobilenet_v2().eval()
>>> x = torch.randn(1, 3, 64, 64)
>>> keep = keep_residual_streams(m, prunekit.trace(m, x).groups())
>>> len(keep), keep[0]
(5, ('features.2.conv.2.weight:0', 0.0))
>>> r = prunekit.prune_(m, x, macs=0.5, ratios=keep)   # only the widths inside the blocks are searched
"""
from __future__ import annotations

from torch import nn

from .. import compat
from ..graph.groups import Group


def _writers(model: nn.Module) -> dict[tuple[str, int], str]:
    """``(weight name, output dim) -> module path`` of every dense convolution (``groups == 1``;
    a depthwise or grouped conv passes its channels through, like a norm)."""
    out: dict[tuple[str, int], str] = {}
    for path, m in model.named_modules():
        if isinstance(m, compat.CONV) and m.groups == 1:
            out[(f"{path}.weight" if path else "weight", 1 if m.transposed else 0)] = path
    return out


def residual_groups(model: nn.Module, groups: list[Group]) -> list[Group]:
    """The channel groups that two or more dense convolutions write: the channels joined by a
    residual addition. Fully connected layers are not counted (an MLP's gate and up projections
    also write one width, joined by a product, not a sum), so transformers give none here."""
    writers = _writers(model)
    out = []
    for g in groups:
        if g.kind != "channel":
            continue
        written = {writers[key] for key, _ in g.signature if key in writers}
        if len(written) >= 2:
            out.append(g)
    return out


def keep_residual_streams(model: nn.Module, groups: list[Group]) -> tuple[tuple[str, float], ...]:
    """``PruneConfig.ratios`` entries (``"<tensor>:<dim>"``, 0.0) that keep every residual stream,
    so that a ratio or a ``macs=`` budget applies to the widths inside the blocks only."""
    return tuple((f"{g.root[0]}:{g.root[1]}", 0.0) for g in residual_groups(model, groups))
