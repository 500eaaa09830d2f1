import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.measure.sensitivity import ratios_for_budget, sensitivity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


def _fidelity(reference):
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference(x)

    def evaluate(m):
        with torch.no_grad():
            return -float((m(x) - ref).pow(2).mean())
    return evaluate


def test_sensitivity_curves_cover_every_group_and_ratio():
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, _fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False)
    assert s.base_score == 0.0
    assert [c.key for c in s.curves] == ["0.weight:0", "2.weight:0", "4.weight:0"]
    for c in s.curves:
        assert c.ratios == [0.25, 0.5, 0.75]
        assert all(b > a for a, b in zip(c.macs, c.macs[1:]))  # more pruning saves more
        assert all(v <= 0 for v in c.scores)
    assert sum(p.numel() for p in m.parameters()) == s.base_params  # the model itself is untouched


@pytest.mark.parametrize("budget", [0.7, 0.5])
def test_budget_ratios_meet_the_budget(budget):
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, _fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False)
    cfg = ratios_for_budget(m, x, s, macs=budget)
    pruned = copy.deepcopy(m)
    r = prunekit.prune_(pruned, x, cfg)
    assert r.after.macs <= budget * r.before.macs
    assert len({ratio for _, ratio in cfg.ratios}) >= 1
    with pytest.raises(ValueError):
        ratios_for_budget(m, x, s)
