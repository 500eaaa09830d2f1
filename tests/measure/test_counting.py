"""MAC counting: exact on known-size models and equal to torch's FlopCounterMode."""
from __future__ import annotations

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


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit_b_16"])
def test_matches_flop_counter_mode(name):
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    mode = FlopCounterMode(display=False)
    with mode, torch.no_grad():
        model(x)
    assert count(model, x).macs == mode.get_total_flops() // 2
