"""Depth pruning with least-squares compensation (prunekit.llm.compensate) on tiny random models."""
from __future__ import annotations

import copy

import pytest
import torch

from prunekit.llm import hf
from prunekit.llm.compensate import CompensateConfig, compensate_depth_, removed_runs
from prunekit.llm.recipes import prune_depth_compensated_
from prunekit.llm.tiny import tiny_model
from prunekit.structure.blocks import remove_blocks_

CAL = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(3))


def llama(layers: int = 4):
    return tiny_model("llama", num_hidden_layers=layers)


def hidden_after(model, i: int) -> torch.Tensor:
    """The residual stream after decoder block ``i`` on CAL (not the last block: HF applies the final norm there)."""
    with torch.no_grad():
        return model(input_ids=CAL, output_hidden_states=True, use_cache=False).hidden_states[i + 1]


def test_runs_group_contiguous_blocks_and_name_the_kept_block():
    assert removed_runs([2, 3, 6], 8) == {1: 3, 5: 6}
    with pytest.raises(ValueError, match="block 0"):
        removed_runs([0, 1], 4)
    with pytest.raises(ValueError, match="outside"):
        removed_runs([4], 4)


@pytest.mark.parametrize("mode", ["down", "transform"])
def test_refit_reduces_the_error_of_plain_removal(mode):
    m = llama()
    target = hidden_after(m, 2)                      # dense stream after the removed block 2
    plain = copy.deepcopy(m)
    remove_blocks_(plain, ["model.layers.2"])
    comp = copy.deepcopy(m)
    res = compensate_depth_(comp, CAL, [2], CompensateConfig(mode=mode, ridge=1e-3))
    assert res.removed_layers == ["model.layers.2"] and res.refit == {1: 2}
    assert comp.config.num_hidden_layers == 3
    e_plain = float((hidden_after(plain, 1) - target).norm())
    e_comp = float((hidden_after(comp, 1) - target).norm())
    assert e_comp < 0.8 * e_plain                    # measured here, independently of res.errors
    before, after = res.errors[1]
    assert after < before
    assert torch.equal(comp.model.layers[0].mlp.down_proj.weight, m.model.layers[0].mlp.down_proj.weight)


def test_huge_ridge_leaves_the_weight_unchanged():
    """Negative control: lam -> infinity pulls the refit onto the old weight."""
    m = llama()
    comp = copy.deepcopy(m)
    res = compensate_depth_(comp, CAL, [2], CompensateConfig(ridge=1e12))
    w0, w1 = m.model.layers[1].mlp.down_proj.weight, comp.model.layers[1].mlp.down_proj.weight
    assert torch.allclose(w0, w1, rtol=0, atol=1e-7 * float(w0.detach().abs().max()))
    assert res.errors[1][1] == pytest.approx(res.errors[1][0], rel=1e-4)
    exact = copy.deepcopy(m)
    res = compensate_depth_(exact, CAL, [2], CompensateConfig(ridge=float("inf")))
    assert torch.equal(exact.model.layers[1].mlp.down_proj.weight, w0) and res.errors[1][0] == res.errors[1][1]


def test_two_runs_sequential_and_one_shot_both_refit_each_run():
    m = llama(6)
    seq, one = copy.deepcopy(m), copy.deepcopy(m)
    r1 = compensate_depth_(seq, CAL, [2, 3, 5], CompensateConfig(sequential=True))
    r2 = compensate_depth_(one, CAL, [2, 3, 5], CompensateConfig(sequential=False))
    assert r1.refit == r2.refit == {1: 3, 4: 5}
    assert all(after < before for before, after in list(r1.errors.values()) + list(r2.errors.values()))
    # the first refit sees the same (dense) inputs either way; the second one differs
    assert torch.equal(seq.model.layers[1].mlp.down_proj.weight, one.model.layers[1].mlp.down_proj.weight)
    assert not torch.equal(seq.model.layers[2].mlp.down_proj.weight, one.model.layers[2].mlp.down_proj.weight)


@pytest.mark.parametrize("fam", ["qwen2", "gpt2"])
def test_other_families(fam):
    m = tiny_model(fam, **({"n_layer": 3} if fam == "gpt2" else {"num_hidden_layers": 3}))
    res = compensate_depth_(m, CAL, [2])
    before, after = res.errors[1]
    assert after < 0.8 * before
    assert len(res.removed_layers) == 1


def test_post_norm_block_is_an_error_naming_it():
    """OPT with do_layer_norm_before=False normalises after the residual add: nothing can be folded."""
    m = tiny_model("opt", num_hidden_layers=3, do_layer_norm_before=False)
    with pytest.raises(RuntimeError, match=r"block 1's .*fc2"):
        compensate_depth_(m, CAL, [2])


def test_recipe_picks_lowest_scores_and_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    m = llama(5)
    res = prune_depth_compensated_(m, CAL, 2, {0: 0.9, 1: 0.5, 2: 0.1, 3: 0.2, 4: 0.8}, CompensateConfig(mode="transform"))
    assert res.removed_layers == ["model.layers.2", "model.layers.3"] and res.refit == {1: 3}
    how = hf.save_pretrained(m, tmp_path, plans=[], base_config=copy.deepcopy(m.config))
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        a = m(input_ids=CAL[:2], use_cache=False).logits
        b = again(input_ids=CAL[:2], use_cache=False).logits
    assert how == "plain" and torch.equal(a, b)
    with pytest.raises(ValueError, match="no block score"):
        prune_depth_compensated_(llama(3), CAL, 1, {0: 1.0})


def test_recipe_never_removes_block_0():
    """Block 0 has no kept block before it: with the lowest score it still stays, the next lowest goes;
    asking for every block but one is an error."""
    res = prune_depth_compensated_(llama(3), CAL, 1, {0: 0.0, 1: 0.5, 2: 0.3})
    assert res.removed_layers == ["model.layers.2"]
    with pytest.raises(ValueError, match="block 0 stays"):
        prune_depth_compensated_(llama(3), CAL, 2, {0: 0.0, 1: 0.5, 2: 0.3})


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        CompensateConfig(mode="bias")
    with pytest.raises(ValueError, match="ridge"):
        CompensateConfig(ridge=0)
    with pytest.raises(ValueError, match="token_weight"):
        CompensateConfig(token_weight="cos")


def test_follow_refits_the_kept_blocks_after_a_run():
    m = llama(5)
    res = compensate_depth_(m, CAL, [1], CompensateConfig(follow=2))
    assert res.refit == {0: 1, 2: 2, 3: 3}            # indices before the removal; blocks 2, 3 refit onto themselves
    assert all(after <= before for before, after in res.errors.values())
    with pytest.raises(ValueError, match="follow"):
        CompensateConfig(follow=-1)
