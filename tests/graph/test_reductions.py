"""The approximate flag is right both ways: reductions over other dims are exact, over the pruned dim are not."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.structure.dead import remove_dead_units_


class Reduce(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)
        self.norm = nn.LayerNorm(16)

    def forward(self, x):
        y = torch.relu(self.conv(x))  # (B, 16, H, W)
        if self.how == "mean":
            z = y.mean((2, 3))
        elif self.how == "sum":
            z = y.sum(dim=(-1, -2))
        elif self.how == "amax":
            z = y.amax((2, 3))
        elif self.how == "var":
            z = y.flatten(2).var(-1)
        elif self.how == "adaptive":
            z = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        elif self.how == "logsumexp":
            z = y.flatten(2).logsumexp(-1)  # a zeroed channel reduces to log(H*W), not 0
        elif self.how == "mean_channels":
            z = (y - y.mean(1, keepdim=True)).mean((2, 3))  # a mean over the pruned dim itself
        elif self.how == "layer_norm":
            z = self.norm(y.mean((2, 3)))  # normalization over the pruned dim
        return self.head(z)


def _conv_group(model, x):
    graph = prunekit.trace(model, x)
    return [g for g in graph.groups() if any(n == "conv.weight" for (n, _), _ in g.signature)]


@pytest.mark.parametrize("how", ["mean", "sum", "amax", "var", "adaptive", "logsumexp"])
def test_reduction_over_other_dims_is_exact(how):
    """(logsumexp maps a zeroed channel to log(H*W), not 0, but the head's column for it goes too.)"""
    torch.manual_seed(0)
    m, x = Reduce(how).eval(), torch.randn(2, 3, 6, 6)
    (g,) = _conv_group(m, x)
    assert g.exact
    r = prunekit.prune_(m, x, ratio=0.5)
    assert r.plan.exact and r.verified["checked"] == "exact" and m.conv.out_channels == 8


@pytest.mark.parametrize("how", ["layer_norm"])
def test_normalizations_over_the_pruned_dim_are_approximate(how):
    m, x = Reduce(how).eval(), torch.randn(2, 3, 6, 6)
    (g,) = _conv_group(m, x)
    assert not g.exact


def test_mean_over_the_pruned_dim_is_approximate():
    m = Reduce("mean_channels").eval()
    x = torch.randn(2, 3, 6, 6)
    groups = _conv_group(m, x)
    assert all(not g.exact for g in groups) and groups


@pytest.mark.parametrize("how", ["mean", "adaptive"])
def test_dead_channels_before_a_spatial_mean_are_removed(how):
    torch.manual_seed(0)
    m = Reduce(how).eval()
    with torch.no_grad():
        m.conv.bias[:8] = -1e4  # 8 of 16 channels never pass the ReLU
    data = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    r = remove_dead_units_(m, data[0][:1], data)
    assert r.dead == 8 and m.conv.out_channels == 8


class _Gated(nn.Module):
    """sigmoid / softmax-over-time before a Linear: the zeroed unit is non-zero there, but the Linear's
    input column is zeroed with it, so removal is still exactly zeroing."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x):  # x: (B, T, 6)
        h = self.a(x)
        h = torch.sigmoid(h) if self.how == "sigmoid" else torch.softmax(h, dim=1)  # over time, not features
        return self.b(h)


@pytest.mark.parametrize("how", ["sigmoid", "softmax_time"])
def test_a_nonzero_unit_read_by_a_weight_column_that_goes_with_it_is_exact(how):
    torch.manual_seed(0)
    m, x = _Gated(how).eval(), torch.randn(2, 5, 6)
    (g,) = [g for g in prunekit.trace(m, x).groups() if g.root == ("a.weight", 0)]
    assert g.exact
    r = prunekit.prune_(m, x, ratio=0.5)
    assert r.verified["checked"] == "exact" and m.a.out_features == 6


def test_a_nonzero_unit_in_an_activation_product_stays_approximate():
    class QK(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(6, 8), nn.Linear(6, 8)

        def forward(self, x):
            return torch.sigmoid(self.q(x)) @ torch.sigmoid(self.k(x)).transpose(-1, -2)  # (B, T, T)

    m, x = QK().eval(), torch.randn(2, 5, 6)
    groups = [g for g in prunekit.trace(m, x).groups() if g.root == ("q.weight", 0)]
    assert groups and not groups[0].exact  # 0.5 * 0.5 of a zeroed unit still adds to every score
