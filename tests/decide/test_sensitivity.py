"""sensitivity: every group pruned alone at each ratio, scored, with what each step saves."""
import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit import PruneConfig
from prunekit.decide.budget import budget_search
from prunekit.decide.sensitivity import sensitivity
from prunekit.measure import file_size
from tests.conftest import output_fidelity


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


def test_sensitivity_curves_cover_every_group_and_ratio():
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False)
    assert s.base_score == 0.0
    assert [c.key for c in s.curves] == ["0.weight:0", "2.weight:0", "4.weight:0"]
    for c in s.curves:
        assert c.ratios == [0.25, 0.5, 0.75]
        assert all(b > a for a, b in zip(c.macs, c.macs[1:]))  # more pruning saves more
        assert all(v <= 0 for v in c.scores)
    assert sum(p.numel() for p in m.parameters()) == s.base_params  # the model itself is untouched


def test_curves_record_the_exact_file_bytes_each_step_saves():
    m = _net()
    x = torch.randn(1, 3, 12, 12)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25, 0.5), progress=False)
    assert s.base_file_bytes == file_size(m)
    for c in s.curves:
        for r, saved in zip(c.ratios, c.file_bytes):
            pruned = copy.deepcopy(m)
            prunekit.prune_(pruned, x, PruneConfig(ratio=0.0, ratios=((c.key, r),)))
            assert saved == file_size(m) - file_size(pruned)
    assert s.latency_config is None and all(c.latency_ms == [] for c in s.curves)


def test_data_criteria_work_in_sensitivity_and_budget_search_and_calibrate_once():
    from prunekit.criteria import APoZCriterion

    class Counting(APoZCriterion):
        prepared = 0

        def prepare(self, model, graph=None):
            Counting.prepared += 1
            super().prepare(model, graph)

    m = _net()
    x = torch.randn(1, 3, 12, 12)
    calib = [torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    crit = Counting(data=calib)
    s = sensitivity(m, x, output_fidelity(m), ratios=(0.25, 0.5, 0.75), progress=False, criterion=crit)
    assert Counting.prepared == 1  # one calibration for every group and ratio
    assert len(s.curves) == 3
    result = budget_search(m, x, s, macs=0.6, criterion=crit)
    assert result.met and result.achieved <= 0.6
    pruned = copy.deepcopy(m)
    r = prunekit.prune_(pruned, x, result.config, criterion=APoZCriterion(data=calib))
    assert r.after.macs / r.before.macs == pytest.approx(result.achieved)  # the same units, chosen afresh


def _l1_l2_disagree():
    """Two channels: (1, 1, 1, 1) is smaller by L2 (2 < 3), (3, 0, 0, 0) by L1 (3 < 4)."""
    m = nn.Sequential(nn.Linear(4, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]]))
        m[2].weight.fill_(1.0)
    return m


def test_a_recorded_criterion_is_rebuilt_with_its_arguments():
    from prunekit.criteria import MagnitudeCriterion

    m, x = _l1_l2_disagree(), torch.ones(1, 4)
    kept = lambda p: float(p[0].weight.detach().abs().max())  # noqa: E731  1: the (1, 1, 1, 1) channel kept, 3: the other
    recorded = PruneConfig(criterion="l2", criterion_args={"p": 1})
    curve = lambda **kw: sensitivity(m, x, kept, ratios=(0.5,), min_units=2, progress=False, **kw).curves[0].scores  # noqa: E731
    assert curve(config=recorded) == curve(criterion=MagnitudeCriterion(p=1)) == [1.0]
    assert curve(config=PruneConfig()) == [3.0]  # negative control: the name alone means p=2
    groups = prunekit.trace(m, x).groups()
    chosen = lambda cfg: prunekit.select_units(m, groups, cfg)[0]  # noqa: E731
    assert chosen(PruneConfig(ratio=0.5, criterion="l2", criterion_args={"p": 1})) != chosen(PruneConfig(ratio=0.5))
    with pytest.raises(ValueError, match="by type only"):  # data recorded by type: asked for, not silently dropped
        sensitivity(m, x, kept, min_units=2, progress=False,
                    config=PruneConfig(criterion="taylor", criterion_args={"data": {"__object__": "list"}}))
