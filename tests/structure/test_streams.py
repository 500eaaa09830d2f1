"""Residual streams: found in residual CNNs, none in MLPs, and kept by a budgeted prune."""
from __future__ import annotations

import torch
import torchvision
from torch import nn

import prunekit
from prunekit.structure.streams import keep_residual_streams, residual_groups


def test_mobilenet_v2_streams_are_the_stage_outputs_with_several_blocks():
    m = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 64, 64)
    found = residual_groups(m, prunekit.trace(m, x).groups())
    assert [(g.root[0], len(g)) for g in found] == [
        ("features.2.conv.2.weight", 24), ("features.4.conv.2.weight", 32), ("features.7.conv.2.weight", 64),
        ("features.11.conv.2.weight", 96), ("features.14.conv.2.weight", 160)]


def test_resnet_streams_include_the_projection_shortcuts():
    m = torchvision.models.resnet50().eval()
    x = torch.randn(1, 3, 64, 64)
    found = residual_groups(m, prunekit.trace(m, x).groups())
    assert [len(g) for g in found] == [256, 512, 1024, 2048]
    stage2 = dict(found[1].signature)
    assert ("layer2.0.downsample.0.weight", 0) in stage2 and ("layer2.3.conv3.weight", 0) in stage2


def test_gated_mlp_has_no_residual_stream():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.up, self.down = nn.Linear(8, 32), nn.Linear(8, 32), nn.Linear(32, 8)

        def forward(self, x):
            return self.down(torch.relu(self.gate(x)) * self.up(x))

    m = Gated()
    assert residual_groups(m, prunekit.trace(m, torch.randn(2, 8)).groups()) == []


def test_budgeted_prune_keeps_the_streams_and_meets_the_budget():
    m = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(1, 3, 64, 64)
    keep = keep_residual_streams(m, prunekit.trace(m, x).groups())
    r = prunekit.prune_(m, x, macs=0.5, round_to=8, ratios=keep)
    assert r.macs_ratio <= 0.5 + 1e-9 and r.macs_ratio > 0.45
    assert m.features[2].conv[2].out_channels == 24 and m.features[14].conv[2].out_channels == 160
    assert m.features[3].conv[0][0].out_channels < 144  # the expanded width inside the block is cut
    assert m.features[3].conv[0][0].out_channels % 8 == 0
