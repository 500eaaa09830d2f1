"""Values of the example inputs beside the meta trace (graph.shadows): checks on the inputs' values run on
meta and are reported; anything that needs a weight's value still falls back to a real forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit import trace
from prunekit.graph.execute import meta_forward
from prunekit.graph.shadows import Shadows


class ChecksIds(nn.Module):
    """Hugging Face's patterns: ``pad_token_id in input_ids``, a mask built on the input's device and
    checked with ``torch.all(mask == 1)``, positions from ``arange``; the branch taken depends on the ids."""

    def __init__(self, pad: int = 0):
        super().__init__()
        self.pad = pad
        self.emb = nn.Embedding(10, 16)
        self.pos = nn.Embedding(8, 16)
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)
        self.register_buffer("offset", torch.tensor([1]))

    def forward(self, ids):
        mask = torch.ones(ids.shape, device=ids.device, dtype=torch.long)
        if self.pad in ids:
            mask = (ids != self.pad).long()
        pos = torch.arange(ids.shape[1], device=ids.device) + self.offset - 1
        h = self.emb(ids) + self.pos(pos)[None]
        if not torch.all(mask == 1):
            h = h * mask[..., None]
        return self.b(torch.relu(self.a(h)))


def _real_trace(model, x):
    import prunekit.graph.tracer as T

    run = T._traced_run
    try:
        T._traced_run = lambda m, i, k, meta, walked, counter: run(m, i, k, False, walked, counter)
        return T.trace(model, x)
    finally:
        T._traced_run = run


def test_value_checks_on_the_inputs_trace_on_meta_and_are_reported():
    x = torch.tensor([[3, 4, 0, 0, 5, 6]])
    model = ChecksIds().eval()
    g = trace(model, x)
    assert g.on_meta and g.meta_fallback is None
    assert {op for op, _ in g.value_reads} >= {"__contains__", "__bool__"}
    real = _real_trace(model, x)
    assert [(k.kind, len(k), k.exact) for k in g.groups()] == [(k.kind, len(k), k.exact) for k in real.groups()]
    assert g.output_shapes == real.output_shapes
    result = prunekit.prune_(model, x, ratio=0.5)
    assert any(w.startswith("the trace read values") and "__contains__" in w for w in result.warnings)
    assert "warning: the trace read values" in result.summary()
    assert result.verified["checked"] == "exact"
    # negative control: a model that reads no value says nothing
    plain = prunekit.prune_(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)).eval(), torch.randn(3, 4))
    assert not any("read values" in w for w in plain.warnings)


def test_meta_forward_follows_the_inputs_branch_and_counts_macs_as_a_real_forward():
    model = ChecksIds().eval()
    for ids in (torch.tensor([[3, 4, 1, 2]]), torch.tensor([[3, 0, 1, 2]])):  # without / with a pad token
        shadows = Shadows()
        out = meta_forward(model, (ids,), {}, shadows=shadows)
        assert out.is_meta and out.shape == (1, 4, 4)
        assert [op for op, _ in shadows.reads][:1] == ["__contains__"]
        assert ("__bool__" in [op for op, _ in shadows.reads]) is True


def test_values_that_depend_on_weights_still_fall_back():
    """Negative control: a branch on an activation's value cannot be answered from the inputs."""

    class ReadsActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) * (2.0 if bool((h > 1e9).any()) else 1.0)

    g = trace(ReadsActivation().eval(), torch.randn(3, 4))
    assert not g.on_meta and "meta" in g.meta_fallback and g.value_reads == []


class Writes(nn.Module):
    def __init__(self, stale: bool):
        super().__init__()
        self.stale = stale
        self.emb = nn.Embedding(10, 8)
        self.a = nn.Linear(8, 8)

    def forward(self, ids):
        ids[:, 0] = 9  # mirrored on the shadow: the check below sees the 9
        assert 9 in ids
        h = self.a(self.emb(ids))
        if not self.stale:
            return h
        flag = torch.zeros(ids.shape, dtype=torch.long, device=ids.device)
        flag += (h.sum(-1) > 0).long()  # an activation written into a shadowed tensor: its value is unknown
        return h * (1 + int(flag.max() > 5))


def test_inplace_writes_are_mirrored_on_copies_of_the_inputs():
    x = torch.tensor([[1, 2, 3]])
    g = trace(Writes(stale=False).eval(), x)
    assert g.on_meta and ("__contains__", "") in g.value_reads
    assert x.tolist() == [[1, 2, 3]]  # the shadows are copies: the caller's inputs are never written


def test_a_write_that_cannot_be_mirrored_drops_the_values():
    """Negative control: after ``flag += activation``, ``flag``'s value is unknown; it must not be answered
    from the stale shadow (which would say ``flag.max() == 0``)."""
    shadows = Shadows()
    with pytest.raises(RuntimeError, match="meta"):
        meta_forward(Writes(stale=True).eval(), (torch.tensor([[1, 2, 3]]),), {}, shadows=shadows)
    assert not shadows  # every shadow dropped at the write it could not mirror
    g = trace(Writes(stale=True).eval(), torch.tensor([[1, 2, 3]]))
    assert not g.on_meta and "meta" in g.meta_fallback  # the trace falls back to a real forward, and says so


def test_packed_lengths_and_large_inputs_keep_no_shadow():
    s = Shadows(limit=4)
    m, r = torch.empty(5, device="meta"), torch.zeros(5)
    s.add(m, r)
    assert s.of(m) is None  # over the limit: no shadow kept
    small = torch.empty(3, device="meta")
    s.add(small, torch.ones(3))
    assert s.of(small) is not None and s.of(torch.empty(3, device="meta")) is None
