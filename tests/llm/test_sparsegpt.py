"""llm/sparsegpt.py: layers that share an input pruned stacked in one column sweep."""
from __future__ import annotations

import copy

import pytest
import torch

from prunekit.llm.sparse import SparsifyConfig, sparsify_llm_
from prunekit.llm.sparsegpt import sparsegpt_prune
from prunekit.llm.tiny import tiny_model


def _hessian(cols: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1000, cols, generator=g) @ (torch.eye(cols) + 0.1 * torch.randn(cols, cols, generator=g))
    return x.t() @ x


@pytest.mark.parametrize("pattern,group", [(None, "tensor"), (None, "row"), ((2, 4), "tensor")])
def test_stacked_equals_each_layer_alone(pattern, group):
    h = _hessian()
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(r, 128, generator=g) * s for r, s in ((48, 1.0), (16, 3.0), (16, 0.2))]
    alone = [sparsegpt_prune(w, h, 0.5, pattern=pattern, group=group, blocksize=64) for w in ws]
    new, keep = sparsegpt_prune(torch.cat(ws), h, 0.5, pattern=pattern, group=group, blocksize=64, parts=[48, 16, 16])
    assert torch.equal(keep, torch.cat([k for _, k in alone]))
    assert torch.allclose(new, torch.cat([w for w, _ in alone]), atol=1e-6)


def test_parts_matter_for_the_tensor_group():
    """Negative control: stacked without ``parts`` the layers share one comparison group, so the
    small-scale layer loses more than its half; with ``parts`` each loses exactly half."""
    h = _hessian()
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(32, 128, generator=g), 0.1 * torch.randn(32, 128, generator=g)]
    _, shared = sparsegpt_prune(torch.cat(ws), h, 0.5)
    _, own = sparsegpt_prune(torch.cat(ws), h, 0.5, parts=[32, 32])
    assert float((~shared[32:]).float().mean()) > 0.8
    assert float((~own[32:]).float().mean()) == 0.5


def test_parts_must_add_up():
    with pytest.raises(ValueError, match="add up"):
        sparsegpt_prune(torch.randn(10, 128), _hessian(), 0.5, parts=[4, 4])


@pytest.mark.parametrize("sequential", [False, True])
def test_sparsify_with_stacking_equals_layer_by_layer(sequential, monkeypatch):
    """The pipeline's stacked q/k/v and gate/up sweeps give the same model as one call per layer."""
    import prunekit.llm.sparse as sp

    torch.manual_seed(0)
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (4, 32))
    cfg = SparsifyConfig(method="sparsegpt", sparsity=0.5, sequential=sequential)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    sparsify_llm_(a, ids, config=cfg, progress=False)
    monkeypatch.setattr(sp._Visitor, "_sparsegpt_shared", lambda self, *args: {})
    sparsify_llm_(b, ids, config=cfg, progress=False)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5), n
