"""Per-weight sparsity: N:M exactness, Wanda's definition, SparseGPT's reconstruction gain, groups,
deterministic ties, validation naming the field."""
from __future__ import annotations

import pytest
import torch

from prunekit.llm.arch import block_linears, layout, weight_of
from prunekit.llm.masks import nm_keep, select_keep
from prunekit.llm.owl import OwlConfig
from prunekit.llm.sparse import SparsifyConfig, sparsify_llm_
from prunekit.llm.sparsegpt import sparsegpt_prune
from prunekit.llm.tiny import tiny_model


def _ids(n=4, t=32):
    return torch.randint(0, 128, (n, t), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_holds_exactly(method, pattern):
    n, m = map(int, pattern.split(":"))
    model = tiny_model("llama")
    sparsify_llm_(model, _ids(), method=method, pattern=pattern, progress=False)
    for block in layout(model).blocks:
        for name, mod in block_linears(block).items():
            w = weight_of(mod)
            nonzero = (w != 0).reshape(w.shape[0], -1, m).sum(-1)  # (out, in/m)
            assert bool((nonzero == n).all()), (name, nonzero.unique())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_wanda_mask_equals_definition(family):
    """Block 0's inputs do not depend on pruning: its masks must be |W_ij|·‖X_j‖₂, lowest half per row."""
    model = tiny_model(family)
    ids = _ids()
    block = layout(model).blocks[0]
    linears = block_linears(block)
    sq = {}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, n=n: sq.__setitem__(n, sq.get(n, 0) + (args[0].reshape(-1, args[0].shape[-1]) ** 2).sum(0)))
        for n, m in linears.items()]
    with torch.no_grad():
        for w in ids:
            model(input_ids=w[None], use_cache=False)
    for h in hooks:
        h.remove()
    dense = {n: weight_of(m).clone() for n, m in linears.items()}
    sparsify_llm_(model, ids, method="wanda", sparsity=0.5, sequential=False, progress=False)
    for n, m in linears.items():
        score = dense[n].abs() * sq[n].sqrt()[None, :]  # (out, in)
        k = dense[n].shape[1] // 2
        expect = torch.ones_like(score, dtype=torch.bool)
        expect.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], False)
        assert torch.equal(weight_of(m) != 0, expect), n
        assert torch.equal(weight_of(m)[expect], dense[n][expect])  # kept weights untouched


def _correlated(cols=64, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + 0.1 * torch.eye(cols)
    return torch.randn(tokens, cols, generator=g) @ mix  # (tokens, in), strongly correlated inputs


def test_sparsegpt_reduces_reconstruction_error():
    x = _correlated()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(1))
    h = x.t() @ x  # (in, in)
    new, keep = sparsegpt_prune(w, h, 0.5, blocksize=16)
    assert float((~keep).float().mean()) == 0.5 and bool((new[~keep] == 0).all())
    err = lambda v: float(((w - v) @ x.t()).norm())  # noqa: E731  ‖WX − ŴX‖
    masked_same = err(w * keep)  # plain masking with SparseGPT's own mask
    wanda = select_keep(w.abs() * x.norm(dim=0)[None], 0.5, group="row")
    assert err(new) < 0.85 * masked_same
    assert err(new) < 0.85 * err(w * wanda)
    # negative control: an identity Hessian carries no information: the result is plain magnitude masking
    ident, keep_i = sparsegpt_prune(w, torch.eye(64), 0.5, blocksize=16)
    assert torch.allclose(ident, w * keep_i, atol=1e-6)
    assert err(ident) > 1.15 * err(new)


def test_sparsegpt_row_group_prunes_each_row_equally():
    x = _correlated()
    w = torch.randn(8, 64)
    _, keep = sparsegpt_prune(w, x.t() @ x, 0.5, group="row", blocksize=32)
    assert bool(((~keep).sum(1) == 32).all())


def test_groups_tensor_and_global():
    model = tiny_model("llama")
    sparsify_llm_(model, _ids(), method="magnitude", sparsity=0.5, group="tensor", progress=False)
    ws = [weight_of(m) for b in layout(model).blocks for m in block_linears(b).values()]
    assert all(abs(float((w == 0).float().mean()) - 0.5) < 1e-3 for w in ws)
    model = tiny_model("llama")
    res = sparsify_llm_(model, _ids(), method="magnitude", sparsity=0.5, group="global", progress=False)
    ws = [weight_of(m) for b in layout(model).blocks for m in block_linears(b).values()]
    per = [float((w == 0).float().mean()) for w in ws]
    assert abs(res.sparsity - 0.5) < 1e-3 and max(per) - min(per) > 0.01  # one threshold: uneven layers


def test_ties_are_deterministic():
    scores = torch.tensor([[1., 1., 1., 1., 2., 2.], [0., 0., 0., 0., 0., 0.]])
    keep = select_keep(scores, 0.5, group="row")
    assert keep.tolist() == [[False, False, False, True, True, True], [False, False, False, True, True, True]]
    assert nm_keep(torch.ones(1, 8), 2, 4).tolist() == [[False, False, True, True] * 2]


def test_owl_block_sparsities_average_to_target():
    model = tiny_model("llama", num_hidden_layers=4)
    res = sparsify_llm_(model, _ids(), method="wanda", sparsity=0.6, owl=OwlConfig(lamda=0.1), progress=False)
    assert abs(sum(res.block_sparsity) / 4 - 0.6) < 1e-9
    assert len(set(res.block_sparsity)) > 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(method="obs"), "method"), (dict(sparsity=1.0), "sparsity"), (dict(sparsity=float("nan")), "sparsity"),
    (dict(sparsity="0.5"), "sparsity"), (dict(pattern="2-4"), "pattern"), (dict(pattern="4:2"), "pattern"),
    (dict(group="block"), "group"), (dict(method="sparsegpt", group="global"), "group"),
    (dict(method="sparsegpt", blocksize=0), "blocksize"), (dict(method="sparsegpt", damp=-0.1), "damp"),
    (dict(method="sparsegpt", damp=float("inf")), "damp"), (dict(sequential=1), "sequential"),
    (dict(owl=OwlConfig(), pattern="2:4"), "owl"), (dict(owl=3), "owl"),
    (dict(method="sparsegpt", pattern="2:3", blocksize=128), "blocksize"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        SparsifyConfig(**kwargs)


def test_config_defaults_and_missing_windows():
    assert SparsifyConfig(method="magnitude").group == "tensor"
    assert SparsifyConfig(method="sparsegpt", pattern=(2, 4)).pattern == "2:4"
    with pytest.raises(ValueError, match="windows"):
        sparsify_llm_(tiny_model("llama"), None, method="wanda", progress=False)
    model = tiny_model("gpt2")  # magnitude needs no data; the LM head and embeddings stay dense
    head = model.lm_head.weight.clone()
    res = sparsify_llm_(model, None, method="magnitude", sparsity=0.5, progress=False)
    assert abs(res.sparsity - 0.5) < 1e-3 and torch.equal(model.lm_head.weight, head)


def test_dense_target_fits_dense_outputs_better():
    """SparseGPT towards the dense outputs (sequential) ends closer to the dense model than plain SparseGPT
    (tiny llama, 4 layers, 60%); at sparsity 0 it leaves the weights as they were (W' = W when X̃ = X)."""
    ids = _ids(8, 64)
    test = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(1))
    ref = tiny_model("llama", num_hidden_layers=4)
    with torch.no_grad():
        dense = ref(input_ids=test).logits
    errs = {}
    for name, kw in {"plain": {}, "dense_target": dict(sequential=True, dense_target=True)}.items():
        model = tiny_model("llama", num_hidden_layers=4)
        sparsify_llm_(model, ids, config=SparsifyConfig(method="sparsegpt", sparsity=0.6, **kw), progress=False)
        with torch.no_grad():
            errs[name] = float((model(input_ids=test).logits - dense).pow(2).mean())
    assert errs["dense_target"] < 0.8 * errs["plain"], errs
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify_llm_(model, ids, config=SparsifyConfig(method="sparsegpt", sparsity=0.0, dense_target=True), progress=False)
    assert all(torch.allclose(before[k], v, atol=1e-4) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_one_pass_sequential_equals_stage_by_stage(method, family):
    """True-sequential pruning in one batched pass of each block gives the masks of the stage-by-stage
    passes (one window per call), up to float rounding of batched GEMMs (>99% of mask entries agree)."""
    ids = _ids()
    models = {}
    for batch in (None, 1):
        model = tiny_model(family)
        sparsify_llm_(model, ids, config=SparsifyConfig(method=method, sparsity=0.5, sequential=True, batch=batch),
                      progress=False)
        models[batch] = model
    plain = tiny_model(family)
    sparsify_llm_(plain, ids, method=method, sparsity=0.5, sequential=False, progress=False)
    differs_from_plain = 0
    for (name, a), b, c in zip(_weights(models[None]).items(), _weights(models[1]).values(), _weights(plain).values()):
        agree = float(((a != 0) == (b != 0)).float().mean())
        assert agree > 0.99, (name, agree)
        if method == "wanda":  # kept weights are untouched; SparseGPT's updates follow its (near-equal) masks
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), name
        differs_from_plain += int(not torch.equal(a != 0, c != 0))
    assert differs_from_plain > 0  # negative control: sequential is a different method from plain


def _weights(model):
    lay = layout(model)
    return {f"{i}.{n}": weight_of(m) for i, b in enumerate(lay.blocks) for n, m in block_linears(b).items()}


def test_one_pass_names_a_stage_the_forward_never_calls():
    """Negative control: a Linear listed in the layout but never called by the block is an error, not a
    silently unpruned layer."""
    model = tiny_model("llama")
    block = layout(model).blocks[0]
    block.mlp.forward = lambda x: x  # the MLP Linears are never called
    with pytest.raises(RuntimeError, match="never called"):
        sparsify_llm_(model, _ids(), config=SparsifyConfig(method="wanda", sequential=True), progress=False)


def test_inverse_factor_in_place_equals_copy_and_sparsegpt_results_unchanged():
    """The in-place factor (used when no refit needs X Xᵀ later) is the copied one, bit for bit; a shared
    factor gives the same pruned weights as the layer's own Hessian."""
    from prunekit.llm.sparsegpt import inverse_factor
    x = _correlated()
    h = x.t() @ x  # (in, in)
    copied, dead = inverse_factor(h, 0.01)
    h2 = h.clone()
    in_place, dead2 = inverse_factor(h2, 0.01, inplace=True)
    assert torch.equal(copied, in_place) and torch.equal(dead, dead2)
    assert not torch.equal(h2, h)  # the caller's matrix was used as storage
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(3))
    a, ka = sparsegpt_prune(w, h, 0.5, blocksize=16)
    b, kb = sparsegpt_prune(w, None, 0.5, blocksize=16, factor=(copied, dead))
    assert torch.equal(a, b) and torch.equal(ka, kb)
    with pytest.raises(ValueError, match="float32"):
        inverse_factor(h.double(), inplace=True)
    with pytest.raises(ValueError, match="do not match"):
        sparsegpt_prune(w[:, :32], None, 0.5, factor=(copied, dead))
    with pytest.raises(ValueError, match="Hessian or its factor"):
        sparsegpt_prune(w, None, 0.5)
