"""budget_search: per-group ratios along sensitivity curves that meet a MACs, parameter, file-size or
latency budget, verified on a pruned copy; ratios_for_budget is its deprecated alias."""
import copy
import warnings

import pytest
import torch
from torch import nn

import prunekit
from prunekit.decide.budget import budget_search, ratios_for_budget
from prunekit.decide.sensitivity import sensitivity
from prunekit.measure import file_size
from prunekit.measure.latency import LatencyConfig, paired_latency
from tests.conftest import output_fidelity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("budget", [0.7, 0.5])
def test_budget_ratios_meet_the_budget(budget):
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False)
    cfg = budget_search(m, x, s, macs=budget).config
    pruned = copy.deepcopy(m)
    r = prunekit.prune_(pruned, x, cfg)
    assert r.after.macs <= budget * r.before.macs
    assert len({ratio for _, ratio in cfg.ratios}) >= 1
    with pytest.raises(ValueError):
        budget_search(m, x, s)


@pytest.mark.parametrize("budget", [0.8, 0.45])
def test_file_size_budget_is_met_as_file_size_measures_it(budget):
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the search itself is not deprecated
        result = budget_search(m, x, s, file_size=budget)
    pruned = copy.deepcopy(m)
    prunekit.prune_(pruned, x, result.config)
    assert result.met and result.metric == "file_size" and result.verifications >= 1
    assert file_size(pruned) <= budget * file_size(m)
    assert result.achieved == file_size(pruned) / file_size(m)
    with pytest.warns(DeprecationWarning, match="ratios_for_budget is deprecated"):  # the old name: a thin alias
        assert ratios_for_budget(m, x, s, file_size=budget) == result.config
    assert file_size(pruned) > (budget - 0.3) * file_size(m)  # it spends the budget, not everything


def test_unreachable_budget_says_so():
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25,), progress=False)
    result = budget_search(m, x, s, params=0.05)
    assert not result.met and result.achieved > 0.05
    assert sorted(r for _, r in result.config.ratios) == [0.25, 0.25, 0.25]  # every curve exhausted
    with pytest.warns(DeprecationWarning), pytest.warns(UserWarning, match="params budget 0.050 not met"):
        ratios_for_budget(m, x, s, params=0.05)


def _one_big_layer():
    """Latency dominated by one (64, 256) x (256, 2048) matmul pair; a small 32-unit group beside it."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _latency_budget_attempt(m, x, lat):
    s = sensitivity(m, x, output_fidelity(m, (64, 256)), ratios=(0.25, 0.5, 0.75), latency=lat, progress=False)
    assert s.latency_config == lat and s.latency_batch == 64 and s.base_latency_ms > 0
    big, small = s.curves
    assert (big.key, small.key) == ("0.weight:0", "2.weight:0")
    assert big.latency_ms[-1] > max(small.latency_ms)  # 3/4 of the big layer saves more than any small step
    result = budget_search(m, x, s, latency=0.7)
    assert result.met and result.metric == "latency" and result.achieved <= 0.7
    assert dict(result.config.ratios).get("0.weight:0", 0) >= 0.25  # the time is spent where the time is
    pruned = copy.deepcopy(m)
    prunekit.prune_(pruned, x, result.config)
    # an independent re-measurement, looser than the target: timing on a shared machine is noisy
    assert paired_latency(m, pruned, x, config=lat).ratio < 0.9


def test_latency_budget_is_verified_by_measuring():
    """Wall-clock timings on a shared machine can be disturbed by other work for a whole measurement, so
    the measured part gets up to three independent attempts; a budget search that ignored the measured
    latencies (or a prune that did not make the model faster) fails every one of them."""
    m = _one_big_layer()
    x = torch.randn(64, 256)
    lat = LatencyConfig(threads=1, warmup=2, repeats=10, rounds=3)
    failures = []
    for _ in range(3):
        try:
            _latency_budget_attempt(m, x, lat)
            return
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0] if str(exc) else "assertion failed")
    raise AssertionError(f"every attempt failed: {failures}")


def test_budget_arguments_are_checked():
    m = _one_big_layer()
    x = torch.randn(4, 256)
    s = sensitivity(m, x, lambda _: 0.0, ratios=(0.5,), progress=False)
    with pytest.raises(ValueError, match="exactly one"):
        budget_search(m, x, s, macs=0.5, file_size=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        budget_search(m, x, s, file_size=1.5)
    with pytest.raises(ValueError, match="latency=True"):
        budget_search(m, x, s, latency=0.5)
    s = sensitivity(m, x, lambda _: 0.0, ratios=(0.5,), progress=False,
                    latency=LatencyConfig(warmup=0, repeats=1, rounds=1))
    with pytest.raises(ValueError, match="batch 4"):
        budget_search(m, torch.randn(8, 256), s, latency=0.5)
