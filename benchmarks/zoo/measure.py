"""Measurements shared by both tools: MACs of a real forward, output comparison, meta-tensor check."""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def tensors(out: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) output: tensors, tuples, lists, dicts (HF ModelOutput), PackedSequence."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, nn.utils.rnn.PackedSequence):
        yield out.data
    elif isinstance(out, dict):
        for v in out.values():
            yield from tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from tensors(v)


def forward(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().float() for t in tensors(model(*inputs))]


def _rnn_macs(model: nn.Module, inputs: tuple) -> tuple[int, list]:
    """Hooks adding the MACs of nn.LSTM/GRU/RNN on padded input (FlopCounterMode has no formula for the
    fused aten.lstm/gru: it counts 0): every weight matrix is applied once per (time step, sequence).
    Packed input runs a decomposed kernel whose addmm's FlopCounterMode does count (checked: 2-layer
    bidirectional LSTM, 1.72 M counted), so it is not added twice."""
    total = [0]

    def hook(mod: nn.RNNBase, args: tuple, _out: Any) -> None:
        x = args[0]
        if isinstance(x, nn.utils.rnn.PackedSequence):
            return
        if x.dim() == 2:
            steps = int(x.shape[0])  # unbatched (T, F)
        else:
            steps = int(x.shape[0] * x.shape[1])  # (T, B, F) or (B, T, F)
        total[0] += steps * sum(p.numel() for n, p in mod.named_parameters() if n.startswith("weight_"))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.RNNBase)]
    return total, handles


def macs(model: nn.Module, inputs: tuple) -> int:
    """MACs of one real forward: torch FlopCounterMode (FLOPs / 2) plus analytic RNN MACs."""
    rnn, handles = _rnn_macs(model, inputs)
    try:
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                model(*inputs)
        except AssertionError:  # FlopCounterMode's module tracker trips on some models under no_grad
            rnn[0] = 0
            with FlopCounterMode(display=False) as fc:
                model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return fc.get_total_flops() // 2 + rnn[0]


def relative_error(out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """max |out - ref| / max |ref| over all outputs; inf when shapes differ or anything is not finite."""
    if len(out) != len(ref) or any(a.shape != b.shape for a, b in zip(out, ref)):
        return math.inf
    if not all(bool(torch.isfinite(a).all()) for a in out + ref):
        return math.inf
    if not out:
        return 0.0
    diff = max(float((a - b).abs().max()) if a.numel() else 0.0 for a, b in zip(out, ref))
    scale = max(float(b.abs().max()) if b.numel() else 0.0 for b in ref)
    return diff / max(scale, 1e-12)


def finite(out: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in out)


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of parameters and buffers left on the meta device."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return [n for n, t in named if t is not None and t.device.type == "meta"]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def safe_ratio(after: int, before: int) -> float:
    return after / before if before else math.nan
