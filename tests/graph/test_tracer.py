"""Tracer behaviour: inputs/outputs kept, ignored modules, unsupported ops named with their path."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import UnsupportedOpError, trace


class Mixer(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x, dim=1).real  # no rule: mixes channels in an unknown way


class WithUnknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1))
        self.block.add_module("mix", Mixer())
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.block(F.relu(self.a(x))))))


def test_strict_names_op_and_module_path():
    with pytest.raises(UnsupportedOpError, match=r"fft_fft.*block\.mix"):
        trace(WithUnknown().eval(), torch.randn(1, 3, 4, 4), strict=True)


def test_unsupported_op_keeps_touched_dims_and_prunes_the_rest():
    model = WithUnknown().eval()
    graph = trace(model, torch.randn(1, 3, 4, 4))
    assert [u.module for u in graph.unsupported] == ["block.mix"]
    roots = {g.root[0] for g in graph.groups()}
    assert "block.0.weight" not in roots  # its output goes through fft: kept
    assert "b.weight" in roots  # after the unknown op, pruning is still exact and allowed
    with pytest.warns(UserWarning, match="block.mix"):
        result = prunekit.prune_(model, torch.randn(1, 3, 4, 4), ratio=0.5)
    assert model.block[0].out_channels == 8 and model.b.out_channels == 2


@dataclass
class Out:
    logits: torch.Tensor
    features: torch.Tensor


class DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 12)
        self.feat = nn.Linear(12, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x, *, scale=1.0):
        f = self.feat(F.relu(self.enc(x))) * scale
        return Out(self.head(f), f)


def test_outputs_in_dataclasses_are_kept_and_kwargs_are_traced():
    model = DictModel().eval()
    graph = trace(model, (torch.randn(2, 6),), {"scale": 2.0})
    roots = {g.root[0] for g in graph.groups()}
    assert roots == {"enc.weight"}  # feat's outputs are a model output: kept


def test_ignored_module_keeps_its_shape():
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    result = prunekit.prune_(model, torch.randn(3, 4), ratio=0.5, ignore=("2",))
    assert model[2].weight.shape == (16, 16)
    assert model[0].out_features == 16  # coupled to the ignored module's input


def test_model_inputs_and_outputs_never_change():
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    prunekit.prune_(model, torch.randn(3, 4), ratio=0.5)
    assert model[0].in_features == 4 and model[2].out_features == 2 and model[0].out_features == 8


def test_group_prints_members():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    (group,) = trace(model, torch.randn(1, 3, 4, 4)).groups()
    text = str(group)
    assert "8 channels (exact)" in text
    for member in ("0.weight[dim 0]", "1.running_mean[dim 0]", "3.weight[dim 1]"):
        assert member in text


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(16, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        if h.sum() > 0:  # needs real values: the meta run fails and tracing runs for real
            h = h * 2
        return self.b(h)


def test_data_dependent_control_flow_falls_back_to_a_real_run():
    model = DataDependent().eval()
    result = prunekit.prune_(model, torch.randn(3, 4), ratio=0.5)
    assert model.a.out_features == 8
    assert result.after.macs == 3 * (4 * 8 + 8 * 2)


def test_trace_and_prune_keep_each_modules_own_train_mode():
    import prunekit

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model.eval()
    model[1].train()  # a mix: the root in eval, one submodule in train
    x = torch.randn(1, 3, 12, 12)
    trace(model, x)
    assert [m.training for m in model] == [False, True, False, False]
    prunekit.prune_(model, x, ratio=0.5)
    assert [m.training for m in model] == [False, True, False, False]


def test_trace_says_whether_it_ran_on_meta_tensors():
    """A model that reads values (``.item()``) is traced for real, and the graph says so (later counts of
    the same model skip the meta attempt); an ordinary model is traced on meta tensors."""
    class ReadsValues(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) * (2.0 if float(h.sum().item()) > 1e9 else 1.0)

    x = torch.randn(3, 4)
    assert trace(ReadsValues(), x).on_meta is False
    assert trace(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), x).on_meta is True


def _global_hook_counts() -> tuple[int, int]:
    from torch.nn.modules import module as M

    return len(M._global_forward_pre_hooks), len(M._global_forward_hooks)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_module_paths_are_tracked_and_the_hooks_removed():
    """The trace tracks module paths with hooks on the model's modules (none process-global): sites carry
    the path of the module that ran them (a shared module: its first path), modules outside the model are
    ignored, and the hooks are gone after the trace -- also when the forward raises. Negative control: a
    hook left registered is seen by the same count."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.relu(self.fc(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Block(), Block()
            self.shared = nn.Linear(8, 8)
            self.outside = [nn.Linear(8, 8)]  # not a submodule: its calls belong to the caller's path

        def forward(self, x):
            x = self.shared(self.a(x))
            x = self.outside[0](self.shared(self.b(x)))
            return torch.sigmoid(x)

    before = _global_hook_counts()
    net = Net().eval()
    g = trace(net, torch.randn(2, 8))
    assert _global_hook_counts() == before and _hooks_left(net) == 0
    mods = [(s.op, s.module) for s in g.sites]
    assert mods == [("linear", "a.fc"), ("relu", "a"), ("linear", "shared"), ("linear", "b.fc"), ("relu", "b"),
                    ("linear", "shared"), ("linear", ""), ("sigmoid", "")]

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            raise ValueError("boom")

    fails = Fails()
    with pytest.raises(ValueError):
        trace(fails, torch.randn(2, 8))
    assert _global_hook_counts() == before and _hooks_left(fails) == 0
    handle = fails.fc.register_forward_hook(lambda m, a, o: None)  # negative control
    try:
        assert _hooks_left(fails) == 1
    finally:
        handle.remove()
