"""search_ratios: every scored candidate meets the budget, the winner is applied as found, uniform is candidate 0."""
import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.decide.search import search_ratios
from tests.conftest import output_fidelity


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def test_search_meets_the_budget_and_its_config_reproduces_the_winner():
    m = _bn_net()
    x = torch.randn(1, 3, 12, 12)
    before = copy.deepcopy(m.state_dict())
    r = search_ratios(m, x, output_fidelity(m), macs=0.5, candidates=6, progress=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the model itself is untouched
    scored = [c for c in r.candidates if c["score"] is not None]
    assert len(r.candidates) == 6 and scored
    assert all(c["achieved"] <= 0.5 for c in scored)
    assert r.score == max(c["score"] for c in scored) and r.score >= r.uniform_score
    assert len(set(r.candidates[0]["ratios"].values())) == 1  # candidate 0: one ratio everywhere
    pruned = copy.deepcopy(m)
    result = prunekit.prune_(pruned, x, r.config)
    assert result.macs_ratio == pytest.approx(r.achieved)
    assert output_fidelity(m)(pruned) == pytest.approx(r.score)


def test_search_recalibrates_batch_norm_on_the_given_data():
    m = _bn_net()
    x = torch.randn(1, 3, 12, 12)
    data = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    seen = []

    def evaluate(c):
        seen.append(float(c[1].running_mean.abs().sum()))
        return 0.0
    search_ratios(m, x, evaluate, params=0.6, candidates=3, calibrate=data, progress=False)
    assert all(s > 0 for s in seen)  # untrained BN has zero running mean; recalibrated ones do not


def test_search_rejects_bad_budgets():
    m = _bn_net()
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(ValueError, match="exactly one"):
        search_ratios(m, x, lambda c: 0.0, macs=0.5, params=0.5)
    with pytest.raises(ValueError, match="no candidate met"):
        search_ratios(m, x, lambda c: 0.0, macs=0.01, candidates=2, config=prunekit.PruneConfig(max_ratio=0.3),
                      progress=False)
