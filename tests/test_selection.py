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
    # 32 channels in 4 groups of 8: keep exactly half of them, as 4 groups of 4 (the narrower width of the two
    # pairs that keep 16; 3 x 6 = 18 would keep more than asked), not a quarter (both factors at 0.5)
    assert (m[2].out_channels, m[2].groups, m[2].weight.shape[1]) == (16, 4, 4)
    assert m[0].out_channels == m[2].in_channels


@pytest.mark.parametrize("n_groups, width, ratio, expected", [
    (46, 8, 0.5, (0, 4)),  # RegNetX's 368 channels: 184 kept, as 46 x 4 rather than 23 x 8
    (4, 8, 0.25, (0, 2)),  # 24 of 32 kept: 4 x 6
    (3, 5, 0.5, (1, 1)),  # floor(7.5) = 7 go: at most 8 kept; 2 x 4 = 8 beats 3 x 2 = 6
])
def test_factored_counts_remove_at_least_the_ratio_keeping_the_most(n_groups, width, ratio, expected):
    from prunekit.selection import _pair_counts

    a, b = _pair_counts(n_groups, width, ratio, PruneConfig(ratio=ratio))
    kept = (n_groups - a) * (width - b)
    assert kept <= n_groups * width - int(n_groups * width * ratio)
    assert (a, b) == expected


def test_factored_counts_fall_back_when_the_factors_have_different_ratios():
    """Negative control: a per-module ratio of 0 on module "0" covers the group factor and the grouped
    conv's input width (both rooted there) but not its output width: the pair search must not override it."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
                      nn.Conv2d(32, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).eval()
    x = torch.randn(1, 3, 6, 6)
    prunekit.prune_(m, x, ratio=0.5, ratios=(("0", 0.0),))
    # groups and input width (both rooted at module "0") stay; the output width loses 1 - sqrt(0.5) of 8
    assert (m[2].groups, m[2].in_channels, m[2].out_channels) == (4, 32, 24)


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


def _nested():
    from collections import OrderedDict

    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(blk=nn.Sequential(OrderedDict(fc=nn.Linear(8, 10), act=nn.ReLU())),
                                     mid=nn.Linear(10, 10), act=nn.ReLU(), out=nn.Linear(10, 2)))


def _rows(m, config, x=None):
    graph = prunekit.trace(m, torch.zeros(1, 8) if x is None else x)
    _, rows = select_units(m, graph.groups(), config, graph=graph)
    return {r["root"]: r["removed"] for r in rows}


def test_per_module_ratio_matches_the_groups_module_path():
    # "blk.fc" is the module of parameter "blk.fc.weight" (not "blk", not "weight")
    assert _rows(_nested(), PruneConfig(ratio=0.5, ratios=(("blk.fc", 0.2),))) == {"blk.fc.weight:0": 2,
                                                                                   "mid.weight:0": 5}
    assert _rows(_nested(), PruneConfig(ratio=0.5, ratios=(("blk", 0.2),))) == {"blk.fc.weight:0": 5,
                                                                                "mid.weight:0": 5}
    # a per-group key "<tensor>:<dim>", and globs; the first matching pattern wins
    assert _rows(_nested(), PruneConfig(ratio=0.5, ratios=(("mid.weight:0", 0.3), ("mid", 0.9)))) == {
        "blk.fc.weight:0": 5, "mid.weight:0": 3}
    assert _rows(_nested(), PruneConfig(ratio=0.0, ratios=(("blk.*", 0.4),))) == {"blk.fc.weight:0": 4}


def _widths(*widths):
    torch.manual_seed(0)
    layers, prev = [], 8
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, 2))


def test_round_to_rounds_the_kept_count_up_to_a_multiple():
    m = _widths(10, 4, 8)  # groups "0", "2", "4" of 10, 4 and 8 channels
    # 10 at 0.5: keep ceil(5 / 4) * 4 = 8; 4 (= round_to) at 0.5: keep 4; 8 losing 1: keep ceil(7 / 4) * 4 = 8
    assert _rows(m, PruneConfig(ratio=0.5, round_to=4, ratios=(("4", 0.125),))) == {"0.weight:0": 2}
    assert _rows(m, PruneConfig(ratio=0.5, ratios=(("4", 0.125),))) == {"0.weight:0": 5, "2.weight:0": 2,
                                                                        "4.weight:0": 1}
    assert _rows(m, PruneConfig(ratio=0.5, round_to=2)) == {"0.weight:0": 4, "2.weight:0": 2, "4.weight:0": 4}
    # a group smaller than round_to is not rounded (it would keep all of itself)
    assert _rows(m, PruneConfig(ratio=0.5, round_to=16)) == {"0.weight:0": 5, "2.weight:0": 2, "4.weight:0": 4}


def test_two_unit_groups_are_pruned_within_their_bounds():
    m = _widths(2, 6)
    assert _rows(m, PruneConfig(ratio=0.5)) == {"0.weight:0": 1, "2.weight:0": 3}
    # min_ratio 0.9 of 2 units is 2, but a group always keeps one unit
    assert _rows(m, PruneConfig(ratio=0.0, min_ratio=0.9)) == {"0.weight:0": 1, "2.weight:0": 5}
    # everything below the threshold, still within max_ratio (0.9) and one kept unit
    assert _rows(m, PruneConfig(threshold=1e9)) == {"0.weight:0": 1, "2.weight:0": 5}


def test_threshold_keeps_a_unit_scoring_exactly_the_threshold():
    m = nn.Sequential(nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # L2 scores of the 4 units: 0.5, 1, 2, 3 (the consumer's columns are zero)
        m[0].weight.copy_(torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
        m[2].weight.zero_()
    assert _rows(m, PruneConfig(threshold=1.0), torch.zeros(1, 2)) == {"0.weight:0": 1}
    assert _rows(m, PruneConfig(threshold=2.5), torch.zeros(1, 2)) == {"0.weight:0": 3}


def test_global_threshold_keeps_a_unit_scoring_exactly_the_threshold():
    m = nn.Sequential(nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
        m[2].weight.zero_()
    cfg = PruneConfig(threshold=1.0, scope="global", normalize="none")
    assert _rows(m, cfg, torch.zeros(1, 2)) == {"0.weight:0": 1}


def test_global_minimum_counts_are_not_topped_up_past_the_ratio():
    # min_ratio 0.3 of each 10-unit group already removes 6 > 0.1 of the 20 units: nothing more
    assert _removed(_two_layer(), PruneConfig(ratio=0.1, min_ratio=0.3, scope="global")) == {"0.weight:0": 3,
                                                                                             "2.weight:0": 3}
    assert _removed(_two_layer(), PruneConfig(ratio=0.0, scope="global")) == {}


def test_tied_scores_remove_the_first_units():
    """A stable sort: with all 32 scores equal the first 16 units go (an unstable CPU sort of more
    than 16 elements would pick others)."""
    import numpy as np

    m = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(0.5)
    graph = prunekit.trace(m, torch.zeros(1, 4))
    (g,) = graph.groups()
    chosen, _ = select_units(m, [g], PruneConfig(ratio=0.5), graph=graph)
    assert chosen == set(g.unit_roots(np.arange(16)))


def test_a_ratios_pattern_that_matches_nothing_raises_and_round_to_misfits_are_reported():
    import warnings

    import pytest
    import torch
    from torch import nn

    import prunekit

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="'layer4.\\*' matches no module path"):
        prunekit.prune_(model, x, ratio=0.5, ratios={"layer4.*": 0.3})
    assert model[0].out_channels == 8  # nothing changed
    prunekit.prune_(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)).eval(), x, ratio=0.5,
                    ratios={"0": 0.25, "1.weight:0": 0.1})  # a module path and a tensor key both match
    with pytest.warns(UserWarning, match="round_to=16 is larger than 1 of 1 channel groups"):
        prunekit.prune_(model, x, ratio=0.5, round_to=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prunekit.prune_(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)).eval(), x, ratio=0.5, round_to=8)
