"""Shared modules, tied weights and parameters read by several modules are pruned consistently, in place."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit


class SharedConv(nn.Module):
    """One conv module object called from two blocks (as CoaT does with its positional convs)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        pos = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b1 = nn.Sequential(pos, nn.ReLU())
        self.b2 = nn.Sequential(pos, nn.ReLU())
        self.mid = nn.Conv2d(16, 24, 1)
        self.back = nn.Conv2d(24, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b1(x)
        x = x + self.back(F.relu(self.mid(x)))
        x = x + self.b2(x)
        return self.head(x.mean((2, 3)))  # (B, 16)


class TiedLM(nn.Module):
    """Embedding tied to the output projection, with an MLP in between."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        self.lm_head = nn.Linear(32, 50, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(F.gelu(self.up(h)))
        return self.lm_head(h)


class ReadsOther(nn.Module):
    """A parameter owned by one module and read by another through F.linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.b = nn.Linear(32, 8)
        self.c = nn.Linear(8, 4)

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        z = self.b(F.relu(F.linear(x, self.a.weight)))  # a's weight without its bias, read directly
        return self.c(y + z)


def _no_meta(model):
    return not any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _check(model, x, kwargs=None, **cfg):
    kwargs = kwargs or {}
    ref = copy.deepcopy(model)
    r = prunekit.prune_(model, x, example_kwargs=kwargs, **cfg)
    assert _no_meta(model)
    assert r.after.params < r.before.params
    if r.plan.exact:
        assert r.verified["checked"] == "exact" and r.verified["error"] < 1e-4
        assert prunekit.soft_hard_error(ref, r.plan, x, kwargs) < 1e-4
    # the plan replays on a fresh copy and the returned model's weights load into it
    fresh = copy.deepcopy(ref)
    prunekit.apply_plan(fresh, prunekit.Plan.from_json(r.plan.to_json()))
    fresh.load_state_dict(model.state_dict())
    inputs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        a, b = model(*inputs, **kwargs), fresh(*inputs, **kwargs)
    for u, v in zip(prunekit.graph.tracer.iter_tensors(a), prunekit.graph.tracer.iter_tensors(b)):
        assert torch.isfinite(u).all() and torch.equal(u, v)
    return r


def test_module_called_from_two_blocks():
    torch.manual_seed(0)
    m = SharedConv().eval()
    r = _check(m, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert r.plan.exact  # mean over space keeps zeros zero: exact, like adaptive pooling
    assert m.b1[0] is m.b2[0] and m.b1[0].weight.shape[0] == m.stem.out_channels < 16
    assert m.mid.out_channels == 12


def test_tied_embedding_and_lm_head():
    torch.manual_seed(0)
    m = TiedLM().eval()
    _check(m, torch.randint(0, 50, (2, 6)), ratio=0.5)
    assert m.lm_head.weight is m.emb.weight
    assert m.up.out_features == 32


def test_parameter_read_by_another_module():
    torch.manual_seed(0)
    m = ReadsOther().eval()
    r = _check(m, torch.randn(3, 8), ratio=0.5)
    assert m.a.out_features == 16 and m.b.in_features == 16 and r.plan.exact


def test_t5_shared_embedding():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    m = transformers.T5EncoderModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 7))
    _check(m, (), {"input_ids": ids}, ratio=0.5)
    assert m.shared.weight is m.encoder.embed_tokens.weight
    assert m.encoder.block[0].layer[1].DenseReluDense.wi.out_features == 32


def test_trace_leaves_a_shared_module_on_its_device():
    m = SharedConv().eval()
    prunekit.trace(m, torch.randn(1, 3, 8, 8))
    assert _no_meta(m)
