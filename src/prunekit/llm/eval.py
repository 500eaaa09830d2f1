"""Perplexity of a causal LM on fixed windows, in the Wanda/SparseGPT ``eval_ppl`` convention.

Batch size 1; for each window the mean cross-entropy of tokens 1..T-1 predicted from their
prefixes, times T; summed over windows, divided by ``n * T``, exponentiated. On the protocol's
32 windows of 512 the dense SmolLM2-135M gives 23.41.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def window_nlls(model: nn.Module, windows: torch.Tensor, *, device: str | torch.device | None = None) -> list[float]:
    """Mean next-token cross-entropy (nats) of each window, one window at a time.

    ``device``: where the token ids go (default: the device of the model's first parameter);
    the model is not moved."""
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"llm.eval: windows must be a LongTensor [n, T], got {windows.dtype} {tuple(windows.shape)}")
    dev = torch.device(device) if device is not None else _device_of(model)
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for w in windows:
                ids = w.unsqueeze(0).to(dev)  # (1, T)
                logits = model(input_ids=ids).logits  # (1, T, V)
                loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])  # tokens 1..T-1
                out.append(float(loss))
    finally:
        model.train(was)
    return out


def perplexity(model: nn.Module, windows: torch.Tensor, *, device: str | torch.device | None = None) -> float:
    """Perplexity over ``windows`` (LongTensor [n, T]) in the ``eval_ppl`` convention
    (each window's mean loss weighted by T, sum / (n * T), exp).

    >>> perplexity(model, eval_windows(tok))   # doctest: +SKIP
    23.4095...
    """
    nlls = window_nlls(model, windows, device=device)
    n, seq = windows.shape
    return math.exp(sum(nll * seq for nll in nlls) / (n * seq))
