"""Local vs global scope, thresholds and per-group bounds."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit import PruneConfig
from prunekit.selection import select_units


def _two_layer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
    with torch.no_grad():
        m[4].weight.mul_(100)  # the second hidden layer's units (read by m[4]) score far higher
    return m


def _removed(m, config):
    graph = prunekit.trace(m, torch.zeros(1, 8))
    groups = graph.groups()
    _, rows = select_units(m, groups, config, graph=graph)
    return {r["root"]: r["removed"] for r in rows}


def test_local_takes_the_ratio_from_every_group():
    assert _removed(_two_layer(), PruneConfig(ratio=0.5)) == {"0.weight:0": 5, "2.weight:0": 5}


def test_global_raw_scores_share_one_threshold():
    rm = _removed(_two_layer(), PruneConfig(ratio=0.4, scope="global", normalize="none"))
    assert sum(rm.values()) == 8
    assert rm.get("0.weight:0", 0) == 8  # the low-magnitude layer pays


def test_global_respects_max_and_min_ratio():
    rm = _removed(_two_layer(), PruneConfig(ratio=0.4, scope="global", normalize="none", max_ratio=0.6,
                                            min_ratio=0.1))
    assert rm["0.weight:0"] == 6 and rm["2.weight:0"] == 2


def test_threshold_rule():
    m = _two_layer()
    rm = _removed(m, PruneConfig(threshold=1.0, scope="global", normalize="mean"))
    assert 0 < sum(rm.values()) < 20
    assert _removed(m, PruneConfig(threshold=1e9, max_ratio=0.3)) == {"0.weight:0": 3, "2.weight:0": 3}


def test_prune_accepts_a_criterion_object_and_global_scope():
    m = _two_layer()
    data = [torch.randn(16, 8) for _ in range(2)]
    r = prunekit.prune_(m, torch.zeros(1, 8), ratio=0.3, scope="global",
                        criterion=prunekit.criteria.ActivationMeanCriterion(data=data))
    assert r.after.params < r.before.params
    assert m(torch.zeros(3, 8)).shape == (3, 2)


def test_config_validation():
    with pytest.raises(ValueError):
        PruneConfig(scope="everywhere")
    with pytest.raises(ValueError):
        PruneConfig(min_ratio=0.95)
    cfg = PruneConfig(scope="global", normalize="none", threshold=0.5, min_ratio=0.1)
    assert PruneConfig.from_json(cfg.to_json()) == cfg


def test_grouped_conv_loses_the_ratio_of_its_channels_not_more():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
                      nn.Conv2d(32, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).eval()
    x = torch.randn(1, 3, 6, 6)
    graph = prunekit.trace(m, x)
    kinds = {g.kind for g in graph.groups()}
    assert {"group", "channel"} <= kinds
    prunekit.prune_(m, x, ratio=0.5)
    # 32 channels in 4 groups of 8: keep ~half of them (3 of 4 groups x 6 of 8, or similar), not a quarter
    assert 14 <= m[2].out_channels <= 18 and m[0].out_channels == m[2].in_channels


@pytest.mark.parametrize("normalize, expected", [("none", {"0.weight:0": 8}),
                                                 ("mean", {"0.weight:0": 5, "2.weight:0": 3}),
                                                 ("max", {"0.weight:0": 3, "2.weight:0": 5}),
                                                 ("l2", {"0.weight:0": 4, "2.weight:0": 4})])
def test_global_ranking_uses_the_configured_normalization(normalize, expected):
    """Negative control for ``normalize``: the global counts are those of one ranking of each
    group's scores divided as configured (recomputed here), so a scope that ignores the setting
    gives the raw-score split (8 from the low-magnitude layer) or one fixed split for every mode."""
    from prunekit.criteria import get_criterion, normalize_scores

    m = _two_layer()
    config = PruneConfig(ratio=0.4, scope="global", normalize=normalize)
    graph = prunekit.trace(m, torch.zeros(1, 8))
    groups = [g for g in graph.groups() if len(g) >= 2]
    crit = get_criterion(config.criterion)
    crit.prepare(m, graph)
    ranked = sorted((float(s), f"{g.root[0]}:{g.root[1]}") for g in groups
                    for s in normalize_scores(crit.score(m, g).double(), normalize))
    want: dict[str, int] = {}
    for _, root in ranked[:8]:  # 0.4 of the 20 units
        want[root] = want.get(root, 0) + 1
    assert want == expected
    assert _removed(m, config) == expected
