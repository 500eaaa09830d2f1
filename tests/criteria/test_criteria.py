"""Every criterion against scores computed by hand on small tensors."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.criteria import (APoZCriterion, ActivationMaxCriterion, ActivationMeanCriterion, ActivationMinCriterion,
                               ActivationVarCriterion, BNScaleCriterion, CRITERIA, L1Criterion, MagnitudeCriterion,
                               RandomCriterion, TaylorCriterion, normalize_scores)


def _mlp():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
        m[2].bias.zero_()
    return m


def _hidden_group(model, x=torch.zeros(1, 2)):
    graph = prunekit.trace(model, x)
    groups = graph.groups()
    (g,) = [g for g in groups if g.root == ("0.weight", 0)]
    return graph, g


def test_magnitude_sums_every_coupled_slice():
    m = _mlp()
    graph, g = _hidden_group(m)
    # unit i: row i of fc1 (+ bias 0) and column i of fc2
    l2 = MagnitudeCriterion().score(m, g)
    assert l2.tolist() == pytest.approx([(1 + 4) ** 0.5, (1 + 1) ** 0.5, (2 + 0.25) ** 0.5])
    l1 = L1Criterion().score(m, g)
    assert l1.tolist() == pytest.approx([3.0, 2.0, 2.5])
    w = L1Criterion().score_weights(m, ["2.weight"])["2.weight"]
    assert w.tolist() == [[2.0, 1.0, 0.5]]


def test_activation_statistics_by_hand():
    m = _mlp()
    data = [torch.tensor([[1.0, 2.0], [3.0, -1.0]])]
    # hidden after ReLU: unit0 [1, 3], unit1 [2, 0], unit2 [0, 0]
    graph, g = _hidden_group(m)
    expected = {ActivationMeanCriterion: [2.0, 1.0, 0.0], ActivationMaxCriterion: [3.0, 2.0, 0.0],
                ActivationMinCriterion: [1.0, 0.0, 0.0], ActivationVarCriterion: [1.0, 1.0, 0.0],
                APoZCriterion: [1.0, 0.5, 0.0]}
    for cls, want in expected.items():
        crit = cls(data=data)
        crit.prepare(m, graph)
        assert crit.score(m, g).tolist() == pytest.approx(want), cls.__name__


def test_activation_statistics_stream_over_batches():
    m = _mlp()
    graph, g = _hidden_group(m)
    one = ActivationVarCriterion(data=[torch.tensor([[1.0, 2.0], [3.0, -1.0]])])
    two = ActivationVarCriterion(data=[torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]])])
    for c in (one, two):
        c.prepare(m, graph)
    assert one.score(m, g).tolist() == pytest.approx(two.score(m, g).tolist())


def test_taylor_accumulates_abs_weight_times_gradient():
    m = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[2.0, -3.0]]))
    data = [(torch.tensor([[1.0, 1.0]]), None), (torch.tensor([[2.0, 0.0]]), None)]
    crit = TaylorCriterion(data=data, loss_fn=lambda out, _: out.sum())
    crit.prepare(m)
    # dL/dw = x: |w*x| = [2, 3] then [4, 0]
    assert crit.score_weights(m, ["0.weight"])["0.weight"].tolist() == [[6.0, 3.0]]


def test_taylor_group_score_is_the_sum_over_the_unit():
    m = _mlp()
    graph, g = _hidden_group(m)
    data = [(torch.tensor([[1.0, 2.0]]), None)]
    crit = TaylorCriterion(data=data, loss_fn=lambda out, _: out.sum())
    crit.prepare(m, graph)
    # h = relu(W1 x) = [1, 2, 0]; dL/dW2 = h; dL/dh = W2 (0 where relu is off); dL/dW1[i] = W2[i] * x
    # unit0: |W1[0]*2*x| = [2, 0] -> 2, |W2[0]*h0| = 2 -> 4 ; unit1: |W1[1]*(-1)*x| = [0, 2], |-1*2| = 2 -> 4
    # unit2: relu off -> W1 gradient 0, |0.5 * 0| = 0 -> 0
    assert crit.score(m, g).tolist() == pytest.approx([4.0, 4.0, 0.0])


def test_bn_scale_and_groups_without_norms():
    m = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
    graph = prunekit.trace(m, torch.zeros(1, 1, 4, 4))
    (g,) = [g for g in graph.groups() if g.root == ("0.weight", 0)]
    crit = BNScaleCriterion()
    crit.prepare(m, graph)
    assert crit.score(m, g).tolist() == pytest.approx([0.5, 2.0, 1.0])
    mlp = _mlp()
    _, g2 = _hidden_group(mlp)
    assert torch.isinf(BNScaleCriterion().score(mlp, g2)).all()


def test_random_is_seeded_and_registry_is_complete():
    m = _mlp()
    _, g = _hidden_group(m)
    assert RandomCriterion(seed=3).score(m, g).tolist() == RandomCriterion(seed=3).score(m, g).tolist()
    assert {"l1", "l2", "random", "taylor", "bn_scale", "act_mean", "act_max", "act_min", "act_var",
            "apoz"} <= set(CRITERIA)


def test_normalize_scores():
    s = torch.tensor([1.0, 2.0, 3.0])
    assert normalize_scores(s, "mean").tolist() == pytest.approx([0.5, 1.0, 1.5])
    assert normalize_scores(s, "max").tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert normalize_scores(s, "none").tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError):
        normalize_scores(s, "median")


@pytest.mark.parametrize("shape,dims", [((3, 4, 2, 2), (1, 2, 3)), ((3, 4, 2, 2), (0, 2, 3)), ((5, 7), (0,)),
                                        ((5, 7), (1,)), ((2, 3, 4), (0, 1))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [1, 2])
def test_norm_pow_paths_agree_with_the_definition(shape, dims, dtype, p):
    from prunekit.criteria.magnitude import _norm_pow

    w = torch.randn(shape, dtype=dtype)
    ref = w.double().abs().pow(p).sum(dims)
    assert torch.allclose(_norm_pow(w, p, dims).double(), ref, rtol=1e-3)


@pytest.mark.parametrize("shape", [(6, 4, 1, 1), (6, 4, 3, 3), (6, 4), (6, 4, 3)])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_per_index_is_the_sum_of_abs_pow_over_other_dims(shape, dim, p):
    from prunekit.criteria.magnitude import MagnitudeCriterion

    w = torch.randn(shape)
    other = tuple(d for d in range(w.dim()) if d != dim)
    got = MagnitudeCriterion(p=p).per_index("w", w, dim)
    assert torch.allclose(got, w.double().abs().pow(p).sum(other), rtol=1e-5)


def test_magnitude_of_a_conv_bn_group_skips_the_running_statistics():
    """A group's buffers (running mean/var) are members with no importance; the score is the
    weight slices only: conv row + its bias + bn weight + bn bias + next conv column."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)).eval()
    with torch.no_grad():
        m[1].running_mean.fill_(100.0)
        m[1].running_var.fill_(100.0)
    graph = prunekit.trace(m, torch.zeros(1, 2, 4, 4))
    (g,) = [g for g in graph.groups() if g.root == ("0.weight", 0)]
    by_hand = (m[0].weight.reshape(3, -1).pow(2).sum(1) + m[0].bias.pow(2) + m[1].weight.pow(2) + m[1].bias.pow(2)
               + m[3].weight.reshape(2, 3).pow(2).sum(0)).sqrt()
    assert MagnitudeCriterion().score(m, g).tolist() == pytest.approx(by_hand.tolist())


def test_magnitude_p3_over_leading_dims():
    m = _mlp()
    _, g = _hidden_group(m)
    # unit i: |row i|^3 + |column i of fc2|^3, then the cube root
    want = [(1 + 8) ** (1 / 3), (1 + 1) ** (1 / 3), (2 + 0.125) ** (1 / 3)]
    assert MagnitudeCriterion(p=3).score(m, g).tolist() == pytest.approx(want)


def test_normalize_scores_leaves_zero_negative_or_infinite_denominators():
    z = torch.zeros(3)
    assert normalize_scores(z, "mean").tolist() == [0.0, 0.0, 0.0]  # not nan
    neg = torch.tensor([-1.0, -2.0])
    assert normalize_scores(neg, "mean").tolist() == [-1.0, -2.0]  # dividing by a negative mean flips the order
    inf = torch.tensor([1.0, float("inf")])
    assert normalize_scores(inf, "sum").tolist() == [1.0, float("inf")]  # not 0 / nan


def test_unknown_criterion_is_named():
    from prunekit.criteria import get_criterion

    with pytest.raises(KeyError, match="unknown criterion 'nope'"):
        get_criterion("nope")


def test_random_default_seed_and_weight_scores():
    m = _mlp()
    _, g = _hidden_group(m)
    assert RandomCriterion().score(m, g).tolist() == RandomCriterion(seed=0).score(m, g).tolist()
    w = RandomCriterion(seed=1).score_weights(m, ["0.weight", "2.weight"])
    assert w["0.weight"].shape == (3, 2) and w["2.weight"].shape == (1, 3)
    assert ((w["0.weight"] >= 0) & (w["0.weight"] < 1)).all()


class _CountingCriterion(MagnitudeCriterion):
    def __init__(self):
        super().__init__()
        self.prepared: list = []

    def prepare(self, model, graph=None):
        self.prepared.append(graph)


def test_cached_scores_prepare_once_and_again_only_for_a_new_group_of_another_graph():
    from prunekit.criteria import CachedScores

    inner = _CountingCriterion()
    crit = CachedScores(inner)
    m = _mlp()
    graph1, g1 = _hidden_group(m)
    crit.prepare(m, graph1)
    first = crit.score(m, g1)
    assert inner.prepared == [graph1]
    graph2, g2 = _hidden_group(m)  # a re-trace: the same group again, scored from the cache
    crit.prepare(m, graph2)
    assert crit.score(m, g2) is first and inner.prepared == [graph1]
    wide = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    graph3, g3 = _hidden_group(wide)  # a group not seen before, from another graph: prepare with it
    crit.prepare(wide, graph3)
    assert crit.score(wide, g3).shape == (5,)
    assert inner.prepared == [graph1, graph3]
    crit.score(wide, g3)
    assert inner.prepared == [graph1, graph3]


def test_data_criteria_need_data_and_a_graph():
    m = _mlp()
    graph, _ = _hidden_group(m)
    with pytest.raises(ValueError, match="needs calibration data"):
        ActivationMeanCriterion().prepare(m, graph)
    with pytest.raises(ValueError, match="needs the traced graph"):
        ActivationMeanCriterion(data=[torch.zeros(1, 2)]).prepare(m, None)
    with pytest.raises(ValueError, match="taylor needs calibration data"):
        TaylorCriterion().prepare(m, graph)
    with pytest.raises(ValueError, match="no calibration batches"):
        TaylorCriterion(data=[]).prepare(m, graph)


def test_taylor_keeps_the_mode_stops_at_max_batches_and_skips_unused_parameters():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.net(x)

    m = WithUnused().train()
    data = [(torch.randn(4, 2), torch.randn(4, 1)) for _ in range(3)]
    crit = TaylorCriterion(data=data, loss_fn=nn.functional.mse_loss, max_batches=2)
    crit.prepare(m, None)
    assert m.training and crit.batches == 2
    assert "unused.weight" not in crit.acc and "net.0.weight" in crit.acc
    one = TaylorCriterion(data=data[:2], loss_fn=nn.functional.mse_loss)
    one.prepare(m, None)
    torch.testing.assert_close(crit.acc["net.0.weight"], one.acc["net.0.weight"])  # batches 0 and 1 only
    # accumulate() continues from the prepared state: a prepare without data keeps it
    crit.data = None
    crit.prepare(m, None)
    assert crit.batches == 2


def test_register_criterion_with_and_without_a_name():
    import pytest

    from prunekit import Criterion, get_criterion, register_criterion
    from prunekit.criteria.base import CRITERIA

    try:
        @register_criterion
        class PlainDecorated(Criterion):
            pass

        @register_criterion()
        class EmptyCall(Criterion):
            name = "empty_call_named"

        @register_criterion("given_name")
        class Named(Criterion):
            pass

        assert isinstance(PlainDecorated, type) and issubclass(PlainDecorated, Criterion)
        assert isinstance(get_criterion("plaindecorated"), PlainDecorated)
        assert isinstance(get_criterion("empty_call_named"), EmptyCall)
        assert isinstance(get_criterion("given_name"), Named) and Named.name == "given_name"
        with pytest.raises(ValueError, match="taken by"):
            @register_criterion("given_name")
            class Other(Criterion):
                pass
        with pytest.raises(TypeError, match="register_criterion"):
            register_criterion(lambda m: m)
    finally:
        for key in ("plaindecorated", "empty_call_named", "given_name"):
            CRITERIA.pop(key, None)
