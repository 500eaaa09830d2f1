"""Structured LLM scores: each criterion against its definition computed directly, FLAP compensation."""
from __future__ import annotations

import pytest
import torch
import transformers as T

from prunekit.structure.blocks import block_scores
from prunekit.llm.scores import add_bias_, collect_stats, collect_taylor, compensation, layer_scores
from prunekit.llm.structured import LayerCut, cut_, model_units

WINDOWS = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(1))


def tiny(seed: int = 0):
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                        num_hidden_layers=2, vocab_size=97)
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def direct_inputs(model, path):
    """Every token's input to module ``path`` over WINDOWS (plain forward, one window at a time)."""
    seen = []
    h = model.get_submodule(path).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for w in WINDOWS:
            model(input_ids=w[None])
    h.remove()
    return torch.cat(seen).double()   # (tokens, channels)


@pytest.fixture(scope="module")
def model_and_cal():
    m = tiny()
    return m, collect_stats(m, WINDOWS)


def test_flap_and_wanda_sp_match_their_definitions(model_and_cal):
    m, cal = model_and_cal
    u = model_units(m)[1]
    x = direct_inputs(m, "model.layers.1.mlp.down_proj")
    w = m.model.layers[1].mlp.down_proj.weight.double()
    flap = layer_scores(m, u, "flap", cal).neurons
    assert torch.allclose(flap, x.var(0, unbiased=False) * (w * w).sum(0), rtol=1e-6)
    wanda = layer_scores(m, u, "wanda_sp", cal).neurons
    assert torch.allclose(wanda, x.norm(dim=0) * w.abs().sum(0), rtol=1e-6)
    xo = direct_inputs(m, "model.layers.1.self_attn.o_proj")
    wo = m.model.layers[1].self_attn.o_proj.weight.double()
    heads = (xo.var(0, unbiased=False) * (wo * wo).sum(0)).reshape(4, 8).sum(1)   # (heads, head_dim) -> heads
    s = layer_scores(m, u, "flap", cal)
    assert torch.allclose(s.q_heads, heads, rtol=1e-6)
    assert torch.allclose(s.kv_groups, heads.reshape(2, 2).sum(1), rtol=1e-6)


def test_block_influence_is_prunekit_blocks_measure(model_and_cal):
    m, cal = model_and_cal
    ref = block_scores(m, ["model.layers.0", "model.layers.1"], [w[None] for w in WINDOWS],
                       forward=lambda mdl, ids: mdl(input_ids=ids))
    assert cal.influence[0] == pytest.approx(ref["model.layers.0"], rel=1e-9)
    assert cal.influence[1] == pytest.approx(ref["model.layers.1"], rel=1e-9)


def test_taylor_is_first_order_loss_change():
    m = tiny()
    cal = collect_taylor(m, WINDOWS)
    u = model_units(m)[0]
    m.zero_grad()
    for w in WINDOWS:
        m(input_ids=w[None], labels=w[None]).loss.backward()
    mlp = m.model.layers[0].mlp
    j = 5
    with torch.no_grad():
        direct = sum(float((p.weight * p.weight.grad)[j].sum()) for p in (mlp.gate_proj, mlp.up_proj)) \
            + float((mlp.down_proj.weight * mlp.down_proj.weight.grad)[:, j].sum())
    assert layer_scores(m, u, "taylor", cal).neurons[j] == pytest.approx(abs(direct), rel=1e-5)


def test_random_and_l2_are_defined_and_unknown_refused(model_and_cal):
    m, cal = model_and_cal
    u = model_units(m)[0]
    a, b = layer_scores(m, u, "random", None), layer_scores(m, u, "random", None)
    assert torch.equal(a.neurons, b.neurons)   # seeded
    mlp = m.model.layers[0].mlp
    l2 = (mlp.gate_proj.weight[3] ** 2).sum() + (mlp.up_proj.weight[3] ** 2).sum() + (mlp.down_proj.weight[:, 3] ** 2).sum()
    assert float(layer_scores(m, u, "l2", None).neurons[3]) == pytest.approx(float(l2), rel=1e-5)
    with pytest.raises(ValueError, match="unknown criterion"):
        layer_scores(m, u, "magic", cal)
    with pytest.raises(ValueError, match="collect_taylor"):
        layer_scores(m, u, "taylor", cal)


def test_compensation_equals_mean_replacement():
    """Cut + FLAP bias == the dense model with the removed channels held at their calibration mean;
    without the bias (negative control) it is not."""
    m = tiny()
    cal = collect_stats(m, WINDOWS)
    u = model_units(m)[1]
    removed = [2, 9, 30]
    mean = cal.stats[(1, "mlp")].mean.float()

    def hold(mod, args):
        x = args[0].clone()
        x[..., removed] = mean[removed]
        return (x,)
    h = m.model.layers[1].mlp.down_proj.register_forward_pre_hook(hold)
    with torch.no_grad():
        ref = m(input_ids=WINDOWS).logits
    h.remove()
    comp = compensation(m, u, cal, [], removed)
    cut_(m, {1: LayerCut(neurons=tuple(removed))})
    with torch.no_grad():
        plain = m(input_ids=WINDOWS).logits
    for path, vec in comp.items():
        add_bias_(m, path, vec)
    with torch.no_grad():
        out = m(input_ids=WINDOWS).logits
    scale = ref.abs().max()
    assert float((out - ref).abs().max() / scale) < 1e-5
    assert float((plain - ref).abs().max() / scale) > 1e-3
