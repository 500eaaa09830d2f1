import pytest
import torch
import torchvision

from prunekit.structure.progressive import default_stages, progressive_prune_


def test_stages_are_pruned_one_at_a_time_into_one_model():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    before = {n: p.shape for n, p in m.named_parameters()}
    seen = []
    rows = progressive_prune_(m, x, stages=["layer1", "layer2", "layer3", "layer4"], ratio=0.5,
                              recover=lambda model, stage: seen.append(stage))
    assert [r.stage for r in rows] == seen == ["layer1", "layer2", "layer3", "layer4"]
    assert all(r.result.after.params < r.result.before.params for r in rows)
    for stage in ("layer1", "layer2", "layer3", "layer4"):  # every stage's inner convs shrank
        assert m.get_parameter(f"{stage}.0.conv1.weight").shape[0] < before[f"{stage}.0.conv1.weight"][0]
    assert m(x).shape == (1, 10)


def test_evaluate_orders_stages_by_least_damage():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    # a made-up evaluation: fewer parameters in layer4 hurts most, in layer2 least
    weight = {"layer1": 2.0, "layer2": 1.0, "layer3": 3.0, "layer4": 4.0}

    def evaluate(model):
        return -sum(w * (1 - sum(p.numel() for p in model.get_submodule(s).parameters()) / 1e7)
                    for s, w in weight.items())

    rows = progressive_prune_(m, x, stages=list(weight), ratio=0.3, evaluate=evaluate)
    assert [r.stage for r in rows][0] in ("layer1", "layer2")
    assert all(r.score is not None for r in rows)
    assert default_stages(m)[:2] == ["conv1", "bn1"]


def test_iterative_reaches_the_target_in_steps_with_recovery_between():
    import torch.nn as nn

    from prunekit.structure.progressive import iterative_prune_

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    calls = []
    rows = iterative_prune_(m, torch.randn(1, 16), target=0.75, steps=2, recover=lambda model, k: calls.append(k),
                            evaluate=lambda model: float(model[0].out_features))
    assert calls == [1, 2]
    assert [r.ratio for r in rows] == [0.5, 0.75]
    assert [r.score for r in rows] == [32.0, 16.0]
    assert m[0].out_features == 16 and m[2].out_features == 16


def test_iterative_to_a_macs_budget_steps_geometrically_and_ends_within_it():
    import torch.nn as nn

    import prunekit
    from prunekit.structure.progressive import iterative_prune_

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                      nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(1, 3, 16, 16)
    before = prunekit.count(m, x).macs
    seen = []
    rows = iterative_prune_(m, x, macs=0.25, steps=2, recover=lambda model, k: seen.append(prunekit.count(model, x).macs))
    assert [r.ratio for r in rows] == [0.5, 0.25]
    # each step lands at (at most) its share of the *original* MACs, and the steps ran in order
    assert seen[0] <= 0.5 * before and seen[0] > 0.4 * before
    assert seen[1] <= 0.25 * before and seen[1] > 0.2 * before
    assert rows[1].result.before.macs == seen[0]
    assert m[-1].out_features == 10 and m(x).shape == (1, 10)


def test_iterative_needs_exactly_one_target():
    import torch.nn as nn

    from prunekit.structure.progressive import iterative_prune_

    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="one of target"):
        iterative_prune_(m, torch.randn(1, 4), target=0.5, macs=0.5)
    with pytest.raises(ValueError, match="one of target"):
        iterative_prune_(m, torch.randn(1, 4))
    with pytest.raises(ValueError, match="macs must be"):
        iterative_prune_(m, torch.randn(1, 4), macs=1.5)


def test_evaluate_order_overrides_the_given_order():
    """Negative control for the damage ordering: the given order (a, b, c) is the worst one, so a
    prune that ignores ``evaluate`` keeps it and fails here."""
    from collections import OrderedDict

    import torch.nn as nn

    torch.manual_seed(0)

    def block():
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU())

    m = nn.Sequential(OrderedDict(stem=nn.Linear(8, 16), a=block(), b=block(), c=block(), head=nn.Linear(16, 2)))
    weight = {"a": 3.0, "b": 1.0, "c": 2.0}  # units lost in "a" cost most, in "b" least

    def evaluate(model):
        return -sum(w * (16 - model.get_submodule(s)[0].out_features) for s, w in weight.items())

    rows = progressive_prune_(m, torch.randn(1, 8), stages=["a", "b", "c"], ratio=0.5, evaluate=evaluate)
    assert [r.stage for r in rows] == ["b", "c", "a"]
    # each row's score is taken after its own stage: 8 units of b, then of c, then of a are gone
    assert [r.score for r in rows] == [-8.0, -24.0, -48.0]
    assert [m.get_submodule(s)[0].out_features for s in "abc"] == [8, 8, 8]


def test_iterative_to_a_params_budget_and_with_an_optimizer_training_on():
    import torch.nn as nn

    from prunekit.structure.progressive import iterative_prune_

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(4, 8)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def recover(model, k):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()  # the sliced momentum fits the pruned parameters

    recover(m, 0)
    rows = iterative_prune_(m, x, params=0.3, steps=2, recover=recover, optimizer=opt)
    assert rows[-1].result.after.params <= 0.3 * rows[0].result.before.params
    assert all(opt.state[p]["momentum_buffer"].shape == p.shape for p in m.parameters())
    with pytest.raises(ValueError, match="not both"):
        iterative_prune_(m, x, macs=0.5, params=0.5)
