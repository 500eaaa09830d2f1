"""Layouts of every supported family from tiny configs; weight views as [out, in]."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.llm.arch import FAMILIES, block_linears, layout, set_weight, weight_of
from prunekit.llm.tiny import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layout_finds_parts(family):
    model = tiny_model(family)
    lay = layout(model)
    assert lay.family == family
    assert len(lay.blocks) == 2
    assert lay.blocks is model.get_submodule(lay.blocks_path)
    linears = block_linears(lay.blocks[0])
    assert set(linears) == {n for stage in lay.sequential for n in stage}  # every Linear in exactly one stage
    for m in linears.values():
        w = weight_of(m)
        assert w.dim() == 2 and w.shape[1] == (m.in_features if isinstance(m, nn.Linear) else m.weight.shape[0])


def test_conv1d_weight_is_transposed_view():
    block = layout(tiny_model("gpt2")).blocks[0]
    fc = block_linears(block)["mlp.c_fc"]  # Conv1D, weight stored (in, out)
    assert tuple(weight_of(fc).shape) == (fc.nf, fc.weight.shape[0])
    x = torch.randn(3, fc.weight.shape[0])
    assert torch.allclose(fc(x), x @ weight_of(fc).t() + fc.bias, atol=1e-5)
    new = torch.zeros_like(weight_of(fc))
    set_weight(fc, new)
    assert fc.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="shape"):
        set_weight(fc, new.t())  # negative control: [in, out] is refused


def test_unknown_family_names_class():
    class Foo(nn.Module):
        config = type("C", (), {"model_type": "mamba"})()
    with pytest.raises(ValueError, match="Foo.*mamba"):
        layout(Foo())
    assert "bert" not in FAMILIES
