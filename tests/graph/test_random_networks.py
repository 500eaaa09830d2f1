"""Property-based: randomly generated CNNs with residuals, concats, splits, reshapes and grouped
convs -- soft-zeroing and hard-removing every exact group must give the same outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from tests.conftest import prune_exact_groups
from prunekit import soft_hard_error

BLOCKS = ("conv", "residual", "concat", "split", "grouped", "shuffle", "depthwise")


class Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int):
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.a = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.cout = width
        elif kind == "residual":
            self.a = nn.Sequential(nn.Conv2d(cin, width, 1), nn.ReLU(), nn.Conv2d(width, cin, 3, padding=1))
            self.cout = cin
        elif kind == "concat":
            self.a = nn.Conv2d(cin, width, 1)
            self.b = nn.Conv2d(cin, width // 2, 3, padding=1)
            self.cout = width + width // 2
        elif kind == "split":  # chunk in two halves, transform one, concatenate back
            self.a = nn.Conv2d(cin, 2 * width, 1)
            self.b = nn.Conv2d(width, width, 3, padding=1)
            self.cout = 2 * width
        elif kind == "grouped":
            self.a = nn.Conv2d(cin, 4 * width, 1)
            self.b = nn.Conv2d(4 * width, 4 * width, 3, padding=1, groups=4)
            self.cout = 4 * width
        elif kind == "shuffle":
            self.a = nn.Conv2d(cin, 2 * width, 1)
            self.cout = 2 * width
        elif kind == "depthwise":
            self.a = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
            self.b = nn.Conv2d(cin, width, 1)
            self.cout = width

    def forward(self, x):
        k = self.kind
        if k == "conv":
            return self.a(x)
        if k == "residual":
            return x + self.a(x)
        if k == "concat":
            return torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        if k == "split":
            y1, y2 = F.relu(self.a(x)).chunk(2, dim=1)
            return torch.cat([y1, self.b(y2)], dim=1)
        if k == "grouped":
            return F.relu(self.b(F.relu(self.a(x))))
        if k == "shuffle":
            y = F.relu(self.a(x))
            b, c, h, w = y.shape
            return y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle
        return F.relu(self.b(F.relu(self.a(x))))


class RandomNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        blocks, c = [], 3
        for kind, width in spec:
            blk = Block(kind, c, width)
            blocks.append(blk)
            c = blk.cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c * 4, 5)

    def forward(self, x):
        y = F.adaptive_avg_pool2d(self.blocks(x), 2)
        return self.head(y.flatten(1))  # (B, C*2*2)


specs = st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from([4, 6, 8])), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, ratio=st.sampled_from([0.25, 0.5, 0.75]), seed=st.integers(0, 1000))
def test_random_networks_soft_equals_hard(spec, ratio, seed):
    torch.manual_seed(seed)
    model = RandomNet(spec).eval()
    x = torch.randn(2, 3, 8, 8)
    graph, groups, plan = prune_exact_groups(model, x, ratio=ratio)
    assert groups, f"no prunable group in {spec}"
    if plan.is_empty():
        return
    assert soft_hard_error(model, plan, x) <= 1e-4
