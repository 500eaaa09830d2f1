"""PruneConfig validates itself and round-trips through JSON."""
from __future__ import annotations

import pytest

from prunekit import PruneConfig


def test_json_round_trip():
    cfg = PruneConfig(ratio=0.3, ratios={"layer4.*": 0.6}, round_to=8, ignore=("fc",), kinds=("channel",))
    again = PruneConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.ratios == (("layer4.*", 0.6),)


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=-0.1), dict(round_to=0), dict(max_ratio=1.0),
                                 dict(kinds=("neurons",)), dict(ratios={"x": 2.0})])
def test_invalid_values_rejected(bad):
    with pytest.raises(ValueError):
        PruneConfig(**bad)


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="unknown"):
        PruneConfig.from_dict({"ratio": 0.5, "ratoi": 0.1})


@pytest.mark.parametrize("overrides, error, match", [
    ({"ratio": "0.5"}, TypeError, "PruneConfig.ratio must be a number, got str '0.5'"),
    ({"ratio": float("nan")}, ValueError, "PruneConfig.ratio must be a finite number"),
    ({"ratio": 2}, ValueError, r"PruneConfig.ratio must be in \[0.0, 1.0\), got 2"),
    ({"round_to": 2.5}, TypeError, "PruneConfig.round_to must be an integer, got 2.5"),
    ({"round_to": -1}, ValueError, "PruneConfig.round_to must be in"),
    ({"threshold": float("nan")}, ValueError, "PruneConfig.threshold must be a finite number"),
    ({"ratios": {"layer*": "0.3"}}, TypeError, r"PruneConfig.ratios\['layer\*'\] must be a number"),
    ({"ratios": {3: 0.3}}, TypeError, "PruneConfig.ratios keys must be strings"),
    ({"max_ratio": float("inf")}, ValueError, "PruneConfig.max_ratio"),
    ({"strict": "yes"}, TypeError, "PruneConfig.strict"),
    ({"ignore": [1.5]}, TypeError, "PruneConfig.ignore must hold strings"),
])
def test_every_numeric_setting_is_checked_naming_the_field(overrides, error, match):
    with pytest.raises(error, match=match):
        PruneConfig(**overrides)


def test_unknown_criterion_names_are_rejected_when_the_config_is_built():
    from prunekit.sparsity import SparsityConfig

    with pytest.raises(ValueError, match="'l22' is not a registered criterion.*did you mean"):
        PruneConfig(criterion="l22")
    with pytest.raises(ValueError, match="SparsityConfig.criterion 'taylr'"):
        SparsityConfig(criterion="taylr")
    assert PruneConfig(criterion="taylor").criterion == "taylor"


def test_a_criterion_object_is_recorded_by_name_and_arguments():
    import torch
    from torch import nn

    import prunekit
    from prunekit.criteria import TaylorCriterion
    from prunekit.criteria.magnitude import MagnitudeCriterion

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    x, y = torch.randn(6, 8), torch.randint(0, 3, (6,))
    r = prunekit.prune_(net(), x, ratio=0.5, criterion=TaylorCriterion(data=[(x, y)], max_batches=1))
    assert r.config.criterion == "taylor"  # not the default "l2" (negative control: the old record)
    assert r.config.criterion_args["max_batches"] == 1
    assert r.config.criterion_args["data"] == {"__object__": "list"}
    again = PruneConfig.from_json(r.config.to_json())
    assert again == r.config
    with pytest.raises(ValueError, match=r"\['data', 'loss_fn', 'step'\].*TaylorCriterion"):
        prunekit.prune_(net(), x, again)  # the data is not in the record: asked for, not silently dropped

    r1 = prunekit.prune_(net(), x, ratio=0.5, criterion=MagnitudeCriterion(p=1))
    assert (r1.config.criterion, r1.config.criterion_args) == ("l2", {"p": 1})
    r2 = prunekit.prune_(net(), x, PruneConfig.from_json(r1.config.to_json()))  # plain arguments: replayed
    assert r2.plan.removed == r1.plan.removed
    assert prunekit.prune_(net(), x, ratio=0.5).config.criterion_args is None  # a name: its defaults


def test_an_unregistered_criterion_is_recorded_by_class_path():
    import torch
    from torch import nn

    import prunekit
    from prunekit.criteria import Criterion

    class Ones(Criterion):
        def score(self, model, group):
            return torch.arange(len(group), dtype=torch.float64)

    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    r = prunekit.prune_(m, torch.randn(2, 8), ratio=0.5, criterion=Ones())
    assert r.config.criterion.endswith("Ones") and r.config.criterion_args == {}
    with pytest.raises(ValueError, match="not a registered criterion"):
        r.config.make_criterion()
    with pytest.raises(ValueError, match="not a registered criterion"):
        PruneConfig(criterion="nope")  # a bare unknown name is still refused


def test_pruned_copies_build_the_recorded_criterion_with_its_arguments():
    import torch
    from torch import nn

    from prunekit.api import PrunedCopies

    m, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(2, 4)
    cfg = PruneConfig(criterion="l2", criterion_args={"p": 1})
    assert PrunedCopies(m, x, cfg).criterion.inner.p == 1
    assert PrunedCopies(m, x, cfg, criterion="l2").criterion.inner.p == 1  # the name as searches pass it
    assert PrunedCopies(m, x, PruneConfig()).criterion.inner.p == 2  # negative control: defaults without a record
