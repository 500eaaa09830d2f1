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
