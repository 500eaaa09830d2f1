"""Least-squares refit of kept weights: equals a direct least-squares solve per row, keeps the mask
(and N:M) exactly, never does worse than the weights it starts from, and improves a pruned tiny model."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.arch import block_linears, layout, weight_of
from prunekit.llm.masks import select_keep
from prunekit.llm.refit import refit_kept
from prunekit.llm.sparse import SparsifyConfig, sparsify_llm_
from prunekit.llm.sparsegpt import sparsegpt_prune
from prunekit.llm.tiny import tiny_model


def _data(rows=12, cols=32, tokens=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ (
        torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols ** 0.5 + 0.2 * torch.eye(cols, dtype=torch.float64))
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return x, w  # (tokens, in), (out, in)


def test_refit_equals_least_squares_per_row():
    x, w = _data()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) > 0.5  # rows keep different counts
    new = refit_kept(w.float(), (x.t() @ x).float(), keep, damp=0.0, iters=200)
    for r in range(w.shape[0]):
        k = keep[r].nonzero().squeeze(1)
        direct = torch.linalg.lstsq(x[:, k], x @ w[r]).solution  # min ‖X w − X_K ŵ_K‖
        assert torch.allclose(new[r, k].double(), direct, atol=1e-3, rtol=1e-3), r
    assert bool((new[~keep] == 0).all())


@pytest.mark.parametrize("pattern", [None, (2, 4)])
def test_refit_beats_masking_and_sparsegpt_keeps_mask(pattern):
    x, w = _data(rows=24, cols=64, tokens=2000)
    x, w = x.float(), w.float()
    h = x.t() @ x
    err = lambda v: float(((w - v) @ x.t()).norm())  # noqa: E731  ‖WX − ŴX‖
    sgpt, keep = sparsegpt_prune(w, h, 0.5, pattern=pattern, blocksize=16)
    new = refit_kept(w, h, keep, start=sgpt)
    assert torch.equal(new != 0, keep)  # same mask (and N:M) exactly
    assert err(new) < err(sgpt) < err(w * keep)
    assert err(refit_kept(w, h, keep, start=sgpt, iters=0)) == pytest.approx(err(sgpt), rel=1e-6)  # start kept
    wanda = select_keep(w.abs() * x.norm(dim=0)[None], 0.5, pattern=pattern, group="row")
    assert err(refit_kept(w, h, wanda)) < 0.9 * err(w * wanda)


def test_refit_negative_control_identity_hessian_changes_nothing():
    """With uncorrelated unit inputs the kept weights are already optimal: the refit returns w * keep."""
    _, w = _data()
    keep = torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    assert torch.allclose(refit_kept(w.float(), torch.eye(w.shape[1]), keep, damp=0.0), (w * keep).float(), atol=1e-6)
    # started elsewhere, it comes back to w * keep (and a wrong start alone would be far off)
    off = torch.randn(w.shape, dtype=torch.float32)
    assert not torch.allclose(off * keep, (w * keep).float(), atol=1e-1)
    assert torch.allclose(refit_kept(w.float(), torch.eye(w.shape[1]), keep, damp=0.0, start=off), (w * keep).float(),
                          atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        refit_kept(w.float(), torch.eye(w.shape[1] + 1), keep)


def test_sparsify_with_refit_is_closer_to_dense_and_keeps_sparsity():
    ids = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(0))
    test = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = tiny_model("llama", num_hidden_layers=4)(input_ids=test).logits
    errs = {}
    for refit in (False, True):
        model = tiny_model("llama", num_hidden_layers=4)
        res = sparsify_llm_(model, ids, method="wanda", pattern="2:4", refit=refit, progress=False)
        assert abs(res.sparsity - 0.5) < 1e-6
        for block in layout(model).blocks:
            for mod in block_linears(block).values():
                assert bool(((weight_of(mod) != 0).reshape(-1, 4).sum(-1) == 2).all())
        with torch.no_grad():
            errs[refit] = float((model(input_ids=test).logits - dense).pow(2).mean())
    assert errs[True] < 0.9 * errs[False], errs


@pytest.mark.parametrize("kwargs, field", [(dict(method="magnitude", refit=True), "refit"),
                                           (dict(method="sparsegpt", refit=True, dense_target=True), "refit"),
                                           (dict(method="wanda", refit=1), "refit")])
def test_refit_settings_checked(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        SparsifyConfig(**kwargs)
