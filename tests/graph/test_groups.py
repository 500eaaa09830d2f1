"""Resolver.closures (batched) must give exactly what Resolver.closure gives, root by root."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph.groups import InvalidRemoval, Resolver
from prunekit.graph.labels import LabelStore
from prunekit.graph.tracer import trace


class _FusedQKV(nn.Module):
    """timm-style attention: qkv Linear -> reshape(B, N, 3, H, D) -> permute -> unbind -> SDPA."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)  # (B, N, H*D)
        return self.fc(self.proj(y) + x)


def _as_comparable(x):
    return ("invalid", x.root, str(x)) if isinstance(x, InvalidRemoval) else x


def _one_by_one(res: Resolver, roots: np.ndarray) -> list:
    out = []
    for r in roots.tolist():
        try:
            out.append(res.closure([r]))
        except InvalidRemoval as exc:
            out.append(exc)
    return out


def _touched_free(res: Resolver) -> np.ndarray:
    free = res.free_roots()
    return free[np.isin(free, np.fromiter(res.touch, dtype=np.int64))]


def test_batched_closures_equal_one_by_one_on_attention():
    torch.manual_seed(0)
    m = _FusedQKV().eval()
    res = Resolver(trace(m, (torch.randn(2, 5, 32),)).store)
    roots = _touched_free(res)
    assert roots.size >= 8  # head and head-width roots
    want = [_as_comparable(x) for x in _one_by_one(res, roots)]
    got = [_as_comparable(x) for x in res.closures(roots)]
    assert got == want
    assert any(isinstance(x, set) and len(x) > 1 for x in got)  # closures that cross the products
    res._BATCH_WIDTH = 0  # the one-at-a-time path of closures() too
    assert [_as_comparable(x) for x in res.closures(roots)] == want


def _store_with_product(pin_element: bool) -> tuple[LabelStore, np.ndarray, np.ndarray]:
    """A (2 heads x 3 widths) product whose elements are a parameter dim of 6."""
    store = LabelStore()
    el = store.param_dim("w", 0, 6, active=True)
    heads, width = store.new(2, "head", True), store.new(3, "head_dim", True)
    store.add_product(el.reshape(2, 3), [heads, width])
    if pin_element:
        store.pin(el[4:5], "an output")
    return store, heads, width


def test_batched_closures_report_pinned_classes_like_closure():
    store, heads, width = _store_with_product(pin_element=True)
    res = Resolver(store)
    roots = np.concatenate([heads, width])
    got, want = res.closures(roots), _one_by_one(res, roots)
    assert [_as_comparable(x) for x in got] == [_as_comparable(x) for x in want]
    # negative control: head 1 and width 1 meet the pinned element (1, 1); head 0, widths 0 and 2 do not
    assert [isinstance(x, InvalidRemoval) for x in got] == [False, True, False, True, False]
    assert got[1].root == res.root[int(store.param_dims[("w", 0)][4])]


def test_batched_closures_of_a_free_product():
    store, heads, width = _store_with_product(pin_element=False)
    res = Resolver(store)
    got = res.closures(np.concatenate([heads, width]))
    el = res.root[store.param_dims[("w", 0)]]
    assert got[0] == {int(heads[0]), *el[:3].tolist()}  # a head: its row of elements
    assert got[2] == {int(width[0]), int(el[0]), int(el[3])}  # a width offset: its column


def _tiny_llama():
    transformers = __import__("pytest").importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 64, (1, 8))


def test_a_head_width_whose_attribute_also_counts_a_kept_width_is_not_a_group():
    """Llama's ``head_dim`` counts the value width and the query/key widths that rotary keeps: cutting the
    value width alone can never be applied (``prune_(macs=0.5)``'s copy at max_ratio failed on it, #13)."""
    import prunekit

    m, ids = _tiny_llama()
    graph = trace(m, (ids,))
    for kinds in (None, ("channel", "head")):
        got = {g.kind for g in graph.groups(kinds)}
        assert "head_dim" not in got and "head" in got
    assert set(graph._resolver.counter_blocked.values()) == {(f"model.layers.{i}.self_attn", "head_dim")
                                                             for i in range(2)}
    r = prunekit.prune_(m, ids, macs=0.5)
    assert r.macs_ratio <= 0.5 and r.verified
    # negative control: BERT's attention_head_size counts q, k and v widths, all cuttable: head_dim stays
    transformers = __import__("pytest").importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                          num_hidden_layers=1, num_attention_heads=4)).eval()
    g = trace(bert, (torch.randint(0, 64, (1, 8)),))
    assert "head_dim" in {x.kind for x in g.groups()}
    assert g._resolver.counter_blocked == {}
