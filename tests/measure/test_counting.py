"""MAC counting: exact on known-size models and equal to torch's FlopCounterMode."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.measure import count


def test_known_sizes():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    c = count(model, torch.randn(2, 3, 8, 8))
    assert c.params == 3 * 8 * 9 + 8 * 36 * 10 + 10
    assert c.macs == 2 * (8 * 6 * 6 * 3 * 9) + 2 * (288 * 10)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_matches_flop_counter_mode(name):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    mode = FlopCounterMode(display=False)
    with mode, torch.no_grad():
        model(x)
    assert count(model, x).macs == mode.get_total_flops() // 2


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def test_attention_fast_paths_are_counted():
    """torch's registry has no formula for the CPU SDPA kernel nor MultiheadAttention's eval fast
    path (FlopCounterMode counts ViT-B/16 at 11.27 G); MacCounter counts both paths alike."""
    model = torchvision.models.vit_b_16().eval()
    x = torch.randn(1, 3, 224, 224)
    fast = count(model, x).macs
    with _mha_fastpath(False):
        slow = count(model, x).macs
    assert fast == slow == 17_563_828_224  # ViT-B/16 at 224: the published 17.56 GMACs
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    q, kv = torch.randn(2, 5, 64), torch.randn(2, 7, 64)  # (B, Tq, E), (B, Tk, E): cross-attention
    projections = 2 * 5 * 64 * 64 + 2 * (2 * 7 * 64 * 64) + 2 * 5 * 64 * 64  # q, k and v, out
    attention = 2 * 4 * 5 * 7 * 16 * 2  # scores and weighted values, 4 heads of 16
    with _mha_fastpath(True):
        assert count(mha, (q, kv, kv)).macs == projections + attention
    with _mha_fastpath(False):
        assert count(mha, (q, kv, kv)).macs == projections + attention
