"""perplexity follows the eval_ppl convention (per-window mean loss over tokens 1..T-1, weighted by T)."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from prunekit.llm.eval import perplexity, window_nlls
from prunekit.llm.tiny import tiny_model


def test_perplexity_matches_manual_convention():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (3, 20, V)
    per_window = [float(F.cross_entropy(logits[i, :-1], ids[i, 1:])) for i in range(3)]
    expect = math.exp(sum(v * 20 for v in per_window) / (3 * 20))
    assert perplexity(model, ids) == pytest.approx(expect, rel=1e-5)
    assert window_nlls(model, ids) == pytest.approx(per_window, rel=1e-5)
    # negative control: predicting each token from itself (no shift) is a different number
    unshifted = math.exp(sum(float(F.cross_entropy(logits[i], ids[i])) for i in range(3)) / 3)
    assert abs(unshifted - expect) > 1e-3


def test_model_mode_restored_and_bad_windows():
    model = tiny_model("gpt2").train()
    perplexity(model, torch.zeros(1, 8, dtype=torch.long))
    assert model.training
    with pytest.raises(ValueError, match="LongTensor"):
        perplexity(model, torch.zeros(8, dtype=torch.long))
