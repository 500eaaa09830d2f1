"""Structured recipes: budgets, uniform/global selection, FLAP compensation, sequential refit, depth."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

from prunekit.llm.recipes import RefitConfig, WidthConfig, prune_depth_, prune_width_, refit_mlp_, select_cuts, all_scores
from prunekit.llm.scores import collect_stats
from prunekit.llm.structured import decoder_params, model_units, unit_costs

CAL = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(4))


def tiny(layers: int = 3):
    cfg = T.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                        num_hidden_layers=layers, vocab_size=97)
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def cal():
    return collect_stats(tiny(), CAL)


def test_uniform_neurons_same_count_and_budget(cal):
    m = tiny()
    units = model_units(m)
    cost = unit_costs(m, units[0]).neuron
    budget = 3 * 10 * cost
    cuts = select_cuts(m, all_scores(m, "flap", cal, units), WidthConfig(), units, budget)
    assert [len(c.neurons) for c in cuts.values()] == [10, 10, 10]


def test_global_respects_min_keep_and_budget(cal):
    m = tiny()
    units = model_units(m)
    costs = unit_costs(m, units[0])
    budget = int(0.3 * decoder_params(m))
    cfg = WidthConfig(units="both", allocation="global", min_keep=0.5)
    cuts = select_cuts(m, all_scores(m, "flap", cal, units), cfg, units, budget)
    removed = sum(len(c.neurons) * costs.neuron + len(c.kv_groups) * (2 * costs.q_head + costs.kv_group)
                  for c in cuts.values())
    assert budget <= removed < budget + 2 * costs.q_head + costs.kv_group
    assert all(len(c.neurons) <= 24 and len(c.kv_groups) <= 1 for c in cuts.values())


def test_prune_width_compensated_is_verified(cal):
    m = tiny()
    res = prune_width_(m, WidthConfig(ratio=0.2, compensate=True), cal)
    assert res.cut.error <= 1e-4 and len(res.compensated) == 3
    assert all(m.model.layers[i].mlp.down_proj.bias is not None for i in range(3))
    assert res.cut.params_after < res.cut.params_before


def test_config_validation():
    with pytest.raises(ValueError, match="criterion"):
        WidthConfig(criterion="nope")
    with pytest.raises(ValueError, match="ratio"):
        WidthConfig(ratio=1.0)
    with pytest.raises(ValueError, match="uniform"):
        m = tiny()
        select_cuts(m, {}, WidthConfig(units="both"), model_units(m), 10)


def test_refit_beats_mean_compensation_on_its_calibration_tokens():
    """Least squares over [x, 1] contains FLAP's mean compensation as one solution: with no damping its
    error on the calibration tokens of layer 0 (whose inputs no pruning changed) is no larger."""
    m = tiny()
    down = m.model.layers[0].mlp.down_proj
    xs = []
    h = down.register_forward_pre_hook(lambda mod, a: xs.append(a[0].reshape(-1, 48)))
    with torch.no_grad():
        for w in CAL:
            m(input_ids=w[None])
    h.remove()
    x = torch.cat(xs).double()                                     # (tokens, 48)
    y = x @ down.weight.double().t()                               # dense output (tokens, 32)
    a = copy.deepcopy(m)
    res = refit_mlp_(a, CAL, RefitConfig(ratio=0.25, damp=0.0))
    removed = list(res.cuts[0].neurons)
    kept = [j for j in range(48) if j not in removed]
    d2 = a.model.layers[0].mlp.down_proj
    y_refit = x[:, kept] @ d2.weight.double().t() + d2.bias.double()
    w = down.weight.double()
    y_mean = x[:, kept] @ w[:, kept].t() + w[:, removed] @ x[:, removed].mean(0)
    e_refit, e_mean = (y_refit - y).pow(2).sum(), (y_mean - y).pow(2).sum()
    assert e_refit <= e_mean * (1 + 1e-6) and e_refit < 0.9 * e_mean
    assert res.cut.error <= 1e-4 and res.cut.layers[0]["neurons"] == 36


def test_depth_removes_lowest_influence():
    m = tiny()
    removed = prune_depth_(m, {"model.layers.0": 0.5, "model.layers.1": 0.1, "model.layers.2": 0.3}, 1)
    assert removed == ["model.layers.1"] and m.config.num_hidden_layers == 2
    assert [l.self_attn.layer_idx for l in m.model.layers] == [0, 1]


def test_query_heads_inside_groups(cal):
    m = tiny()
    units = model_units(m)
    budget = 3 * 2 * unit_costs(m, units[0]).q_head   # one query head per group (2 groups) in each of 3 layers
    res = prune_width_(m, WidthConfig(units="q_heads"), cal, budget=budget)
    assert res.cut.error <= 1e-4
    assert all(l["q_heads"] == 2 and l["kv_groups"] == 2 for l in res.cut.layers)
    assert all(layer.self_attn.num_key_value_groups == 1 for layer in m.model.layers)
    assert all(len({h // 2 for h in c.q_heads}) == 2 for c in res.cuts.values())   # one from each group


def test_combined_removes_lowest_blocks_then_neurons_to_budget(cal):
    from prunekit.llm.recipes import CombinedConfig, prune_combined_
    m = tiny()
    before = decoder_params(m)
    res = prune_combined_(m, CombinedConfig(ratio=0.5, blocks=1), cal, example_ids=CAL[:1])
    low = min(cal.influence, key=cal.influence.get)
    assert res.removed_layers == [f"model.layers.{low}"] and len(m.model.layers) == 2
    removed = before - decoder_params(m)
    neuron = unit_costs(m, model_units(m)[0]).neuron
    assert 0.5 * before - 2 * neuron <= removed <= 0.5 * before + 2 * neuron   # depth + width meet the budget
    assert res.width is not None and res.width.cut.error <= 1e-4
    assert all(len(c.neurons) == len(res.width.cuts[0].neurons) > 0 for c in res.width.cuts.values())
    with pytest.raises(ValueError, match="blocks is None"):
        prune_combined_(tiny(), CombinedConfig(ratio=0.5), cal)


def test_depth_bias_keeps_the_residual_mean():
    """Removing a block with its mean update folded into the previous block's down_proj bias keeps the
    mean of the hidden states after it (on the calibration tokens) closer to the unpruned model's than
    removing it bare (negative control)."""
    from prunekit.llm.recipes import depth_bias_
    from prunekit.structure.blocks import remove_blocks_
    m = tiny(4)
    with torch.no_grad():   # a block with a large constant-ish update, so its mean matters
        m.model.layers[2].mlp.down_proj.weight.mul_(8)
    c = collect_stats(m, CAL)
    assert set(c.delta) == {0, 1, 2, 3} and c.delta[2].shape == (32,)

    def mean_after(model, layer):   # mean hidden state entering ``layer`` over the calibration tokens
        got = []
        h = model.model.layers[layer].register_forward_pre_hook(lambda mod, a: got.append(a[0].reshape(-1, 32).mean(0)))
        with torch.no_grad():
            model(input_ids=CAL, use_cache=False)
        h.remove()
        return got[0]

    want = mean_after(m, 3)
    bare, comp = copy.deepcopy(m), copy.deepcopy(m)
    remove_blocks_(bare, ["model.layers.2"])
    assert depth_bias_(comp, c, [2]) == {2: 1}
    remove_blocks_(comp, ["model.layers.2"])
    err_bare = (mean_after(bare, 2) - want).norm()
    err_comp = (mean_after(comp, 2) - want).norm()
    assert err_comp < 0.05 * err_bare
    with pytest.raises(ValueError, match="no kept block precedes"):
        depth_bias_(copy.deepcopy(m), c, [0])


def test_choose_blocks_ranks_candidates_on_the_given_windows(cal):
    from prunekit.llm.recipes import CombinedConfig, choose_blocks
    m = tiny()
    best, trials = choose_blocks(m, CombinedConfig(ratio=0.34), cal, CAL[:2])
    assert sorted(trials) == [0, 1] and trials[best] == min(trials.values())
    assert len(m.model.layers) == 3   # the model itself is not cut


def test_removal_perplexity_orders_the_combined_cut(cal):
    from prunekit.llm.eval import perplexity
    from prunekit.llm.recipes import CombinedConfig, prune_combined_, removal_perplexity
    from prunekit.structure.blocks import remove_blocks_
    m = tiny()
    rp = removal_perplexity(m, CAL[:2])
    ref = copy.deepcopy(m)
    remove_blocks_(ref, ["model.layers.1"])
    assert sorted(rp) == [0, 1, 2] and rp[1] == pytest.approx(perplexity(ref, CAL[:2]), rel=1e-6)
    scores = {0: 3.0, 1: 1.0, 2: 2.0}   # block 1 lowest: it goes, whatever its influence
    res = prune_combined_(m, CombinedConfig(ratio=0.34, blocks=1, depth_bias=False), cal, block_scores=scores)
    assert res.removed_layers == ["model.layers.1"]
    with pytest.raises(ValueError, match="no block score"):
        prune_combined_(tiny(), CombinedConfig(ratio=0.34, blocks=1), cal, block_scores={0: 1.0})
