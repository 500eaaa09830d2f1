"""Reach through indexing patterns: a module called twice, residuals over part of the channels,
channel permutations by an index buffer -- each prunes exactly where it can, and every dim it
keeps is explained by ``graph.blocked()`` (op and module)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import PruneConfig, apply_plan, make_plan, select_units, soft_hard_error, trace
from prunekit.graph.groups import index_renumbering
from prunekit.graph.rules import indexing
from tests.conftest import assert_oracle

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _group_with(groups, key):
    found = [g for g in groups if any(k == key for k, _ in g.signature)]
    assert found, f"no group holds {key}: {[g.signature for g in groups]}"
    return found[0]


def _moved(plan, tensors, by):
    """A deliberately wrong plan: the removed indices of ``tensors`` (name, dim) moved by ``by``
    (mod their largest index + 1) while every other tensor keeps its own."""
    bad = copy.deepcopy(plan)
    for name, d in tensors:
        idx = bad.removed[name][d]
        n = max(max(idx) + 1, len(idx) + abs(by))
        bad.removed[name][d] = sorted({(i + by) % n for i in idx})
    return bad


def _wrong(model, plan, inputs, tensors, by=1):
    try:
        return soft_hard_error(model, _moved(plan, tensors, by), inputs)
    except Exception:  # a wrong plan may also fail to run: as wrong as it gets
        return float("inf")


def _explained(graph):
    """Every index of every parameter dim coupled to anything is in a group or a blocked record."""
    groups = graph.groups()
    covered = {}
    for g in groups:
        for sl in g.slices:
            for key, idx in sl.items():
                covered.setdefault(key, set()).update(idx)
    for b in graph.blocked():
        covered.setdefault((b.tensor, b.dim), set()).update(b.indices)
        assert b.op and str(b).startswith(f"`{b.tensor}` dim {b.dim}")
    res = graph._resolver
    for (name, dim), labels in graph.store.param_dims.items():
        if name not in graph.param_names:
            continue
        roots = res.root[labels]
        coupled = (res.span[roots, 1] - res.span[roots, 0] > 1) | (res.kind_code[roots] >= 0)
        missing = set(map(int, (coupled.nonzero()[0]).tolist())) - covered.get((name, dim), set())
        assert not missing, f"{name} dim {dim}: indices {sorted(missing)[:5]} neither grouped nor explained"


# -- a module called twice ------------------------------------------------------------------------

class ConvTwice(nn.Module):
    """``self.block(self.block(x))``: the block's input and output are one coupled set."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block(F.relu(self.block(x)))
        return self.head(self.pool(x).flatten(1))


class Siamese(nn.Module):
    """The same Linear applied to two inputs; the outputs meet in a product."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, a, b):
        return self.out(F.relu(self.enc(a)) * torch.sigmoid(self.enc(b)))


class SharedMlp(nn.Module):
    """One MLP object used by two residual blocks."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(6, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.emb(x)
        x = x + self.mlp(x)
        x = x + self.mlp(x)
        return self.head(x)


def test_block_called_twice_prunes_its_hidden_and_shared_width():
    model = ConvTwice().eval()
    graph, groups, plan = assert_oracle(model, X, min_groups=2)
    hidden = _group_with(groups, ("block.0.weight", 0))
    assert ("block.2.weight", 1) in dict(hidden.signature)
    width = _group_with(groups, ("block.2.weight", 0))
    sig = dict(width.signature)
    assert sig[("block.0.weight", 1)] == 1 and sig[("stem.weight", 0)] == 1  # both call sites coupled
    assert _wrong(model, plan, X, [("head.weight", 1)]) > 1e-2  # negative control: one consumer moved


def test_linear_applied_to_two_inputs():
    model = Siamese().eval()
    inputs = (torch.randn(4, 6), torch.randn(4, 6))
    graph, groups, plan = assert_oracle(model, inputs)
    assert dict(_group_with(groups, ("enc.weight", 0)).signature)[("out.weight", 1)] == 1
    assert _wrong(model, plan, inputs, [("out.weight", 1)]) > 1e-2
    _explained(graph)


def test_shared_mlp_in_two_residual_blocks():
    model = SharedMlp().eval()
    x = torch.randn(2, 5, 6)
    graph, groups, plan = assert_oracle(model, x, min_groups=2)
    assert _group_with(groups, ("mlp.0.weight", 0))
    assert _group_with(groups, ("emb.weight", 0))  # the residual stream, through both uses
    assert _wrong(model, plan, x, [("mlp.2.weight", 1)]) > 1e-2
    _explained(graph)


# -- residuals over part of the channels ----------------------------------------------------------

class HalfResidual(nn.Module):
    """``a, b = x.chunk(2, 1); cat([a + f(a), b])`` (or the same with slices fixed in the code)."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        cin = 16 if how == "slice_all" else 8
        self.f = nn.Sequential(nn.Conv2d(cin, 12, 1), nn.ReLU(), nn.Conv2d(12, 8, 1))
        self.out = nn.Conv2d(16, 10, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.how == "chunk":
            a, b = x.chunk(2, 1)
            x = torch.cat([a + self.f(a), b], 1)
        elif self.how == "slice":  # residual over the first half, bounds written in the code
            x = torch.cat([x[:, :8] + self.f(x[:, :8]), x[:, 8:]], 1)
        elif self.how == "slice_all":  # the branch reads every channel
            x = torch.cat([x[:, :8] + self.f(x), x[:, 8:]], 1)
        else:  # bound computed from the size: a pruned model would recompute it
            c = x.shape[1] // 2
            x = torch.cat([x[:, :c] + self.f(x[:, :c]), x[:, c:]], 1)
        return self.head(self.pool(F.relu(self.out(x))).flatten(1))


def test_chunked_half_residual_pairs_the_halves():
    model = HalfResidual("chunk").eval()
    graph, groups, plan = assert_oracle(model, X, min_groups=3)
    stem = dict(_group_with(groups, ("stem.weight", 0)).signature)
    assert stem[("stem.weight", 0)] == 2 and stem[("f.2.weight", 0)] == 1  # unit i: channels i and i + 8
    assert _wrong(model, plan, X, [("out.weight", 1)]) > 1e-2  # negative control: one consumer moved
    _explained(graph)


@pytest.mark.parametrize("how", ["slice", "slice_all"])
def test_fixed_slice_residual_prunes_the_free_half_and_the_branch(how):
    model = HalfResidual(how).eval()
    graph, groups, plan = assert_oracle(model, X, min_groups=3)
    stem = _group_with(groups, ("stem.weight", 0))
    assert sorted(i for sl in stem.slices for i in sl[("stem.weight", 0)]) == list(range(8, 16))
    assert _group_with(groups, ("f.0.weight", 0))  # inside the residual branch
    assert plan.removed["stem.weight"][0] and min(plan.removed["stem.weight"][0]) >= 8
    kept = [b for b in graph.blocked() if (b.tensor, b.dim) == ("stem.weight", 0)]
    assert len(kept) == 1 and kept[0].indices == list(range(8)) and kept[0].op == "getitem"
    assert "`[:8]`" in kept[0].reason and "fixed in the code" in kept[0].reason
    moved = [("stem.weight", 0), ("stem.bias", 0), ("out.weight", 1)]  # the fixed half removed instead
    assert _wrong(model, plan, X, moved, by=-8) > 1e-2
    _explained(graph)


def test_bound_read_from_the_size_keeps_the_dim_and_says_why():
    model = HalfResidual("shape").eval()
    graph = trace(model, X)
    groups = graph.groups()
    assert not any(("stem.weight", 0) in dict(g.signature) for g in groups)
    assert _group_with(groups, ("f.0.weight", 0))
    kept = [b for b in graph.blocked() if (b.tensor, b.dim) == ("stem.weight", 0)]
    assert kept and kept[0].indices == list(range(16)) and "read a size" in kept[0].reason
    assert_oracle(model, X)
    _explained(graph)


def test_bound_keeps_positions():
    assert indexing.bound_keeps(10, None, 4).tolist() == [True] * 4 + [False] * 6
    assert not indexing.bound_keeps(10, 4, None)[4:].any() and indexing.bound_keeps(10, 4, None)[:4].all()
    assert indexing.bound_keeps(10, None, -2).tolist() == [False] * 8 + [True] * 2
    assert indexing.bound_keeps(10, -3, None).tolist() == [False] * 7 + [True] * 3
    assert not indexing.bound_keeps(10, None, 99).any()
    assert indexing.bound_keeps(10, 0, 4, 2) is None
    assert indexing.index_keeps(5, 1).tolist() == [True, True, False, False, False]
    assert indexing.index_keeps(5, -1).tolist() == [False] * 4 + [True]


class NarrowTail(nn.Module):
    """``narrow`` and an integer position with fixed bounds: the positions after them are free."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 12)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.b(y.narrow(1, 0, 4)) + y[:, 5:6].sum() * y[:, 4:5]


def test_narrow_and_fixed_positions_free_the_tail():
    model = NarrowTail().eval()
    x = torch.randn(3, 5)
    graph, groups, plan = assert_oracle(model, x)
    g = _group_with(groups, ("a.weight", 0))
    assert sorted(i for sl in g.slices for i in sl[("a.weight", 0)]) == list(range(6, 12))
    assert _wrong(model, plan, x, [("a.weight", 0), ("a.bias", 0)], by=-6) > 1e-2  # the fixed head instead
    _explained(graph)


# -- channel permutation by an index buffer ---------------------------------------------------------

class Permute(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
        if how == "attribute":
            self.perm = perm  # a plain attribute: not in the state dict, cannot be rewritten
        else:
            self.register_buffer("perm", perm)
        self.c2 = nn.Conv2d(16, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.how == "index_select":
            x = x.index_select(1, self.perm)
        elif self.how == "read_elsewhere":
            x = x[:, self.perm] + (self.perm.float().mean() * 0)
        else:
            x = x[:, self.perm]
        return self.head(self.pool(F.relu(self.c2(x))).flatten(1))


@pytest.mark.parametrize("how", ["getitem", "index_select"])
def test_permutation_without_plan_support_is_kept_with_its_reason(how, monkeypatch):
    monkeypatch.setattr(indexing, "renumber_supported", lambda: False)
    model = Permute(how).eval()
    graph = trace(model, X)
    assert not any(("stem.weight", 0) in dict(g.signature) for g in graph.groups())
    kept = {(b.tensor, b.dim): b for b in graph.blocked()}
    why = kept[("stem.weight", 0)]
    assert why.op == ("getitem" if how == "getitem" else "index_select")
    assert "buffer `perm`" in why.reason and "renumbered" in why.reason
    assert "buffer `perm`" in kept[("c2.weight", 1)].reason  # the consumer names the same cause
    _explained(graph)


@pytest.mark.parametrize("how, needle", [("attribute", "not a registered integer buffer"),
                                         ("read_elsewhere", "also read by other ops")])
def test_permutation_that_cannot_be_rewritten_says_why(how, needle, monkeypatch):
    monkeypatch.setattr(indexing, "renumber_supported", lambda: True)
    model = Permute(how).eval()
    graph = trace(model, X)
    assert not any(("stem.weight", 0) in dict(g.signature) for g in graph.groups())
    why = [b for b in graph.blocked() if (b.tensor, b.dim) == ("stem.weight", 0)]
    assert why and needle in why[0].reason
    _explained(graph)


def _soft_hard_renumbered(model, plan, renumber=True):
    """Soft vs hard, where the hard apply renumbers the index buffer (``plan.renumber``) or, as a
    negative control, is made to leave it as it was."""
    soft = apply_plan(copy.deepcopy(model), plan, "soft")
    if not renumber:
        plan = copy.deepcopy(plan)
        plan.renumber = {}
    hard = apply_plan(copy.deepcopy(model), plan, "hard")
    with torch.no_grad():
        a = soft(X)
        try:
            b = hard(X)
        except Exception:  # an index out of range: as wrong as it gets
            return float("inf")
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("how", ["getitem", "index_select"])
def test_permutation_by_buffer_prunes_through_with_renumbering(how, monkeypatch):
    monkeypatch.setattr(indexing, "renumber_supported", lambda: True)
    model = Permute(how).eval()
    graph = trace(model, X)
    groups = [g for g in graph.groups() if g.exact]
    g = _group_with(groups, ("stem.weight", 0))
    assert dict(g.signature)[("c2.weight", 1)] == 1
    perm = model.perm.tolist()
    for sl in g.slices:  # removing stem channel j removes c2 input i where perm[i] == j
        (j,), (i,) = sl[("stem.weight", 0)], sl[("c2.weight", 1)]
        assert perm[i] == j
    chosen, summaries = select_units(model, groups, PruneConfig(ratio=0.5))
    plan = make_plan(graph, chosen, summaries)
    assert "perm" not in plan.removed  # soft leaves the buffer; only the hard apply renumbers it
    res = graph._resolver
    assert plan.renumber == index_renumbering(res, res.closure(chosen)) and plan.renumber["perm"]
    assert prunekit.Plan.from_json(plan.to_json()).renumber == plan.renumber
    assert _soft_hard_renumbered(model, plan) <= 1e-4
    assert _soft_hard_renumbered(model, plan, renumber=False) > 1e-2  # negative control
    pruned = copy.deepcopy(model)
    r = prunekit.prune_(pruned, X, ratio=0.5)  # the one call, verified
    assert r.verified["checked"] == "exact" and pruned.perm.numel() == 8 and pruned.c2.in_channels == 8
    _explained(graph)


def test_renumber_index():
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert indexing.renumber_index(perm, [1, 3]).tolist() == [0, 2, 1]
    x = torch.randn(2, 5)
    keep = [0, 2, 4]
    assert torch.equal(x[:, keep][:, indexing.renumber_index(perm, [1, 3])], x[:, perm][:, [1, 2, 4]])


class AttrBound(nn.Module):
    """A bound read from a size attribute of the module (``hidden_size``, which a hard apply may
    rewrite): the dim is kept whole."""

    def __init__(self):
        super().__init__()
        self.hidden_size = 8
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.f = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        c = self.hidden_size
        x = torch.cat([x[:, :c] + self.f(x[:, :c]), x[:, c:]], 1)
        return self.head(self.pool(x).flatten(1))


def test_bound_from_a_size_attribute_keeps_the_dim():
    model = AttrBound().eval()
    graph = trace(model, X)
    assert not any(("stem.weight", 0) in dict(g.signature) for g in graph.groups())
    why = [b for b in graph.blocked() if (b.tensor, b.dim) == ("stem.weight", 0)]
    assert why and why[0].indices == list(range(16)) and "may be computed" in why[0].reason
    _explained(graph)
