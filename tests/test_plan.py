"""Plans: JSON round trip, replay on a fresh instance, all-or-nothing application."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision

import prunekit
from prunekit import ApplyError, Plan, PlanError, apply_plan


def _pruned_resnet():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = prunekit.prune_(model, x, ratio=0.5, round_to=8)
    return model, x, result


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_plan_json_round_trip(tmp_path):
    _, _, result = _pruned_resnet()
    path = tmp_path / "plan.json"
    result.plan.save(path)
    again = Plan.load(path)
    assert again.to_dict() == result.plan.to_dict()
    assert json.loads(path.read_text())["version"] == 1


def test_replay_on_fresh_instance_reloads_plain_weights(tmp_path):
    model, x, result = _pruned_resnet()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    result.plan.save(tmp_path / "plan.json")
    fresh = torchvision.models.resnet18(num_classes=10).eval()
    apply_plan(fresh, Plan.load(tmp_path / "plan.json"))
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))  # shapes match, no pickles
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    assert fresh.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels < 64


def test_channel_counts_rounded():
    model, _, _ = _pruned_resnet()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels > 3:
            assert m.out_channels % 8 == 0, m


def test_failed_apply_restores_model_exactly():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    graph = prunekit.trace(model, x)
    chosen, _ = prunekit.select_units(model, graph.groups(), prunekit.PruneConfig(ratio=0.5))
    plan = prunekit.make_plan(graph, chosen)
    before, text = _state(model), repr(model)
    params_before = [id(p) for p in model.parameters()]

    def boom(m):
        raise RuntimeError("check failed")

    for mode in ("hard", "soft"):
        with pytest.raises(ApplyError, match="check failed"):
            apply_plan(model, plan, mode, check=boom)
        assert repr(model) == text
        assert [id(p) for p in model.parameters()] == params_before
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k


def test_plan_for_other_model_is_refused_without_change():
    _, _, result = _pruned_resnet()
    other = torchvision.models.mobilenet_v2().eval()
    before = _state(other)
    with pytest.raises(PlanError, match="made for another model"):
        apply_plan(other, result.plan)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_plan_version_checked():
    with pytest.raises(PlanError, match="version"):
        Plan.from_dict({"version": 99, "removed": {}})


def test_trace_does_not_mutate_model():
    model = torchvision.models.resnet18().eval()
    before = _state(model)
    graph = prunekit.trace(model, torch.randn(1, 3, 64, 64))
    chosen, _ = prunekit.select_units(model, graph.groups(), prunekit.PruneConfig(ratio=0.5))
    prunekit.make_plan(graph, chosen)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_soft_apply_keeps_shapes_and_zeroes():
    model, x, result = _pruned_resnet()
    fresh = torchvision.models.resnet18(num_classes=10).eval()
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    apply_plan(fresh, result.plan, "soft")
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    rm = result.plan.removed["conv1.weight"][0]
    assert fresh.conv1.weight[rm].abs().sum() == 0


def test_tied_weights_stay_tied():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (1, 6))
    wte = model.transformer.wte.weight
    prunekit.prune_(model, (), example_kwargs={"input_ids": ids}, ratio=0.5)
    assert model.lm_head.weight is model.transformer.wte.weight is wte  # one object, pruned once
    assert model.transformer.wte.weight.shape[1] < 16


def test_plan_rewrites_one_element_of_a_tuple_attribute():
    """A stored view shape such as timm's ``Scale.shape = (C, 1, 1)``: ``shape[0]`` is rewritten alone."""
    from torch import nn as _nn

    class Scale(_nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _nn.Conv2d(3, 8, 1)
            self.scale = _nn.Parameter(torch.rand(8))
            self.shape = (8, 1, 1)
            self.out = _nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.out(self.conv(x) * self.scale.view(self.shape))  # (B, C, H, W) * (C, 1, 1)

    m = Scale()
    plan = prunekit.Plan(removed={"conv.weight": {0: [0, 3]}, "conv.bias": {0: [0, 3]}, "scale": {0: [0, 3]},
                                  "out.weight": {1: [0, 3]}}, attrs=[("", "shape[0]", 6)])
    prunekit.apply_plan(m, plan, example_inputs=torch.randn(1, 3, 2, 2))
    assert m.shape == (6, 1, 1) and isinstance(m.shape, tuple)
    with pytest.raises(prunekit.PlanError, match="shape"):
        prunekit.apply_plan(Scale(), prunekit.Plan(attrs=[("", "shape[5]", 6)]))


def test_plan_renumber_names_a_one_dimensional_integer_buffer():
    from torch import nn as _nn

    m = _nn.Sequential(_nn.Linear(4, 8), _nn.Linear(8, 2))
    m.register_buffer("perm", torch.arange(8))
    with pytest.raises(PlanError, match="not a 1-d integer buffer"):
        apply_plan(m, Plan(renumber={"0.weight": [1]}))
    with pytest.raises(PlanError, match="non-negative"):
        apply_plan(m, Plan(renumber={"perm": [-1]}))


class _SharedDim(torch.nn.Module):
    """Two widths reshaped with one attribute ``dim``: a counter written only when they are cut."""

    def __init__(self):
        super().__init__()
        self.dim = 8
        self.q, self.k = torch.nn.Linear(6, 8), torch.nn.Linear(6, 8)
        self.o, self.o2 = torch.nn.Linear(8, 2), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.o(self.q(x).reshape(-1, 1, self.dim).flatten(1)) + self.o2(self.k(x).reshape(-1, 1, self.dim).flatten(1))


def _units(graph, root):
    return [g for g in graph.groups() if g.root == root][0]


def test_counters_are_written_for_cut_groups_only_and_conflicts_raise():
    from prunekit.errors import CounterConflict

    m, x = _SharedDim().eval(), torch.randn(3, 6)
    graph = prunekit.trace(m, x)
    q, k = _units(graph, ("q.weight", 0)), _units(graph, ("k.weight", 0))
    assert prunekit.make_plan(graph, []).attrs == []  # nothing cut: no attribute written
    both = prunekit.make_plan(graph, q.unit_roots([0, 1]) + k.unit_roots([2, 3]))
    assert both.attrs == [("", "dim", 6)]
    with pytest.raises(CounterConflict, match="dim would need two values"):
        prunekit.make_plan(graph, q.unit_roots([0, 1]) + k.unit_roots([2]))
    with pytest.raises(PlanError, match="every index"):
        prunekit.make_plan(graph, q.unit_roots(range(8)) + k.unit_roots(range(8)))


def test_failed_apply_restores_counters_and_derived_attributes():
    m, x = _SharedDim().eval(), torch.randn(3, 6)
    graph = prunekit.trace(m, x)
    q, k = _units(graph, ("q.weight", 0)), _units(graph, ("k.weight", 0))
    plan = prunekit.make_plan(graph, q.unit_roots([0, 1]) + k.unit_roots([2, 3]))

    def check(model):
        assert model.dim == 6 and model.q.out_features == 6  # applied ...
        raise RuntimeError("then refused")

    with pytest.raises(ApplyError):
        apply_plan(m, plan, check=check)
    assert m.dim == 8 and m.q.out_features == 8 and m.o.in_features == 8 and m.q.weight.shape == (8, 6)
    apply_plan(m, plan, example_inputs=x)
    assert m.dim == 6 and m.o.in_features == 6


def test_out_of_range_and_malformed_plans_are_refused():
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    with pytest.raises(PlanError, match="out of range"):
        apply_plan(m, Plan(removed={"0.weight": {0: [8]}}))
    with pytest.raises(PlanError, match="dim 2"):
        apply_plan(m, Plan(removed={"0.weight": {2: [0]}}))
    assert Plan.from_dict({"version": 1, "removed": {}}).exact  # older files without the flag


def test_a_failed_save_leaves_no_file_and_raises(tmp_path, monkeypatch):
    import os

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        Plan(removed={"a": {0: [1]}}).save(tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []


def test_verify_defaults_on_with_example_inputs_and_off_without():
    m, x = _SharedDim().eval(), torch.randn(3, 6)
    graph = prunekit.trace(m, x)
    q, k = _units(graph, ("q.weight", 0)), _units(graph, ("k.weight", 0))
    plan = prunekit.make_plan(graph, q.unit_roots([0, 1]) + k.unit_roots([2, 3]))
    bad = Plan.from_dict(plan.to_dict())
    bad.removed["o.weight"][1] = [(i + 1) % 8 for i in bad.removed["o.weight"][1]]
    with pytest.raises(prunekit.VerificationError):
        apply_plan(copy.deepcopy(m), bad, example_inputs=x)  # verify defaults to True with inputs
    report = {}
    apply_plan(copy.deepcopy(m), bad, example_inputs=x, verify=False, report=report)  # asked not to
    assert report == {}
    report = {}
    apply_plan(copy.deepcopy(m), plan, "soft", example_inputs=x, report=report)
    assert report["checked"] == "finite"  # a soft apply is not compared with itself


def _mlp_and_plan():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    x = torch.randn(4, 6)
    plan = prunekit.prune_(copy.deepcopy(m), x, ratio=0.5).plan
    return m, x, plan


def test_hard_apply_keeps_parameter_objects_and_their_hooks():
    m, x, plan = _mlp_and_plan()
    params = list(m.parameters())
    seen = []
    m[0].weight.register_hook(lambda g: seen.append(tuple(g.shape)))
    m[2].weight.register_post_accumulate_grad_hook(lambda p: seen.append(("acc", tuple(p.grad.shape))))
    m(x).sum().backward()
    apply_plan(m, plan, example_inputs=x)
    assert all(a is b for a, b in zip(m.parameters(), params))
    assert m[0].weight.shape == (6, 6) and m[0].weight.grad.shape == (6, 6)  # the grad is sliced alike
    seen.clear()
    m.zero_grad()
    m(x).sum().backward()
    assert seen == [("acc", (3, 6)), (6, 6)] or seen == [(6, 6), ("acc", (3, 6))]


def test_rollback_restores_parameter_identity_data_and_grad_bit_for_bit():
    m, x, plan = _mlp_and_plan()
    m(x).sum().backward()
    params = list(m.parameters())
    data = [(p.data_ptr(), p.detach().clone(), p.grad.clone()) for p in params]
    for exc in (RuntimeError("refused"), KeyboardInterrupt()):
        def check(model, exc=exc):
            assert model[0].weight.shape == (6, 6)  # applied before the failure
            raise exc

        with pytest.raises((ApplyError, KeyboardInterrupt)):
            apply_plan(m, plan, check=check)
        assert all(a is b for a, b in zip(m.parameters(), params))
        for p, (ptr, v, g) in zip(params, data):
            assert p.data_ptr() == ptr and torch.equal(p, v) and torch.equal(p.grad, g)
    assert m[0].out_features == 12


def test_slicer_equals_remove_indices_and_shares_kept_indices():
    """The hard apply's slicer removes what ``remove_indices`` removes, along several dims, with one kept-index
    tensor per (size, indices) shared across tensors. Negative control: other indices give another tensor."""
    from prunekit.optimizer_state import remove_indices
    from prunekit.plan import _Slicer

    torch.manual_seed(0)
    s = _Slicer()
    w, b = torch.randn(6, 8, 3), torch.randn(6)
    dims = {0: [1, 4], 1: [0, 5, 7]}
    assert torch.equal(s.remove(w, dims), remove_indices(w, dims))
    assert torch.equal(s.remove(b, {0: [1, 4]}), remove_indices(b, {0: [1, 4]}))
    assert s.kept(6, [1, 4], w.device) is s.kept(6, [1, 4], b.device)  # built once
    assert not torch.equal(s.remove(b, {0: [1, 5]}), remove_indices(b, {0: [1, 4]}))  # negative control
