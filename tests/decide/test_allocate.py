"""prune_(macs= / params=) is the one entry for budgets; allocate= picks how the ratios are spent."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.decide import RatioSearch
from prunekit.decide.budget import budget_search
from prunekit.decide.search import search_ratios
from prunekit.decide.sensitivity import sensitivity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


X = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))


def _fidelity(reference):
    with torch.no_grad():
        ref = reference(X)

    def evaluate(m):
        with torch.no_grad():
            return -float((m(X) - ref).pow(2).mean())
    return evaluate


def test_params_budget_finds_the_smallest_uniform_ratio():
    r = prunekit.prune_(_net(), X, params=0.5)
    assert r.params_ratio <= 0.5
    assert r.budget == {"metric": "params", "target": 0.5, "achieved": r.params_ratio, "allocation": "uniform"}
    less = prunekit.prune_(_net(), X, ratio=r.config.ratio - 0.02)
    assert less.params_ratio > 0.5  # a slightly smaller ratio misses it: the smallest was found
    assert "budget: params <= 0.500" in r.summary()


def test_allocate_a_sensitivity_gives_budget_searchs_ratios_applied():
    net = _net()
    s = sensitivity(net, X, _fidelity(net), ratios=(0.25, 0.5, 0.75), progress=False)
    expected = budget_search(net, X, s, macs=0.6).config
    r = prunekit.prune_(net, X, macs=0.6, allocate=s)
    assert r.config.ratios == expected.ratios and r.config.ratios
    assert r.macs_ratio <= 0.6 and r.budget["allocation"] == "sensitivity"
    with pytest.raises(prunekit.PlanError, match="not met"):  # an unreachable budget: the model is left alone
        fresh = _net()
        state = copy.deepcopy(fresh.state_dict())
        prunekit.prune_(fresh, X, params=0.01, allocate=s)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_allocate_a_ratio_search_gives_search_ratios_config_applied():
    net = _net()
    evaluate = _fidelity(net)
    found = search_ratios(net, X, evaluate, macs=0.5, candidates=3, progress=False, min_units=4)
    r = prunekit.prune_(net, X, macs=0.5, allocate=RatioSearch(evaluate, candidates=3, min_units=4, progress=False))
    assert r.config.ratios == found.config.ratios
    assert r.macs_ratio <= 0.5 and r.budget["allocation"] == "search" and r.budget["candidates"] == 3


def test_budget_arguments_are_checked_before_anything_changes():
    net = _net()
    with pytest.raises(ValueError, match="not both"):
        prunekit.prune_(net, X, macs=0.5, params=0.5)
    with pytest.raises(ValueError, match="allocate= spends a budget"):
        prunekit.prune_(net, X, allocate=RatioSearch(lambda m: 0.0))
    with pytest.raises(ValueError, match=r"params must be a fraction"):
        prunekit.prune_(net, X, params=1.5)
    with pytest.raises(TypeError, match="allocate must be"):
        prunekit.prune_(net, X, macs=0.5, allocate="sensitivity")
    assert net[0].out_features == 64
