"""Structured units of decoder LLMs (tiny configs, one per family): cuts verified soft-vs-hard."""
from __future__ import annotations

import pytest
import torch
import transformers as T

from prunekit.errors import ApplyError, PlanError
from prunekit.llm.structured import LayerCut, cut_, decoder_params, make_cut_plan, model_units

FAMILIES = ["llama", "mistral", "qwen2", "phi3", "gpt2", "opt", "gpt_neox"]


def tiny(fam: str, seed: int = 0):
    """A 2-layer model of ``fam``: hidden 32, 4 query heads (2 KV heads where the family has GQA), MLP 48."""
    kw = dict(vocab_size=97, num_hidden_layers=2)
    if fam in ("llama", "mistral", "qwen2"):
        cfg = T.AutoConfig.for_model(fam, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                     num_key_value_heads=2, **kw)
    elif fam == "phi3":
        cfg = T.Phi3Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                           pad_token_id=0, **kw)
    elif fam == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=48, vocab_size=97)
    elif fam == "opt":
        cfg = T.OPTConfig(hidden_size=32, ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=32, **kw)
    else:
        cfg = T.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, **kw)
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("fam", FAMILIES)
def test_heads_and_neurons_cut_verified(fam):
    m = tiny(fam)
    before = decoder_params(m)
    u = model_units(m)
    heads = (0, 3) if u[1].rep > 1 else (0,)   # one query head per KV group under GQA, else one head
    res = cut_(m, {0: LayerCut(kv_groups=(1,), neurons=(0, 5, 7)), 1: LayerCut(q_heads=heads, neurons=(1,))})
    assert res.error <= 1e-4
    after = model_units(m)
    assert (after[0].n_kv, after[0].mlp.size) == (u[0].n_kv - 1, 45)
    assert after[1].n_q == u[1].n_q - len(heads) and after[1].mlp.size == 47
    assert res.params_after == decoder_params(m) < before
    out = m(input_ids=torch.randint(0, 97, (2, 9))).logits
    assert out.shape == (2, 9, 97) and torch.isfinite(out).all()


@pytest.mark.parametrize("fam", ["llama", "phi3", "gpt2", "gpt_neox"])
def test_wrong_plan_is_caught_and_model_restored(fam):
    """Negative control: output-projection columns shifted by one are not the removed heads."""
    m = tiny(fam)
    u = model_units(m)
    cuts = {0: LayerCut(kv_groups=(1,))}
    plan = make_cut_plan(m, cuts)
    slot = u[0].q.slots[-1]   # the output projection's columns
    plan.removed[slot.tensor][slot.dim] = [(i + 1) % u[0].q.size for i in plan.removed[slot.tensor][slot.dim]]
    before = _state(m)
    with pytest.raises(ApplyError, match="differ from the zeroed model"):
        cut_(m, cuts, plan=plan)
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_gqa_keeps_whole_kv_groups():
    m = tiny("llama")
    a = m.model.layers[0].self_attn
    hd = a.head_dim
    k_before = a.k_proj.weight[hd:].clone()   # KV group 1 stays
    q_before = a.q_proj.weight[2 * hd:].clone()   # its query heads 2, 3
    cut_(m, {0: LayerCut(kv_groups=(0,))})
    assert a.k_proj.weight.shape[0] == hd and a.v_proj.weight.shape[0] == hd
    assert a.q_proj.weight.shape[0] == 2 * hd and a.o_proj.weight.shape[1] == 2 * hd
    assert torch.equal(a.k_proj.weight, k_before) and torch.equal(a.q_proj.weight, q_before)
    assert a.num_key_value_groups == 2


def test_query_heads_inside_groups_same_count_per_group():
    m = tiny("llama")
    with pytest.raises(PlanError, match="same number in every kept group"):
        cut_(m, {0: LayerCut(q_heads=(0,))})   # group 0 keeps 1, group 1 keeps 2
    res = cut_(m, {0: LayerCut(q_heads=(1, 2))})   # one per group
    assert res.error <= 1e-4
    assert m.model.layers[0].self_attn.num_key_value_groups == 1
    assert m.model.layers[0].self_attn.k_proj.out_features == 2 * m.model.layers[0].self_attn.head_dim


def test_refusals_name_the_problem():
    m = tiny("llama")
    with pytest.raises(PlanError, match="every KV group"):
        make_cut_plan(m, {0: LayerCut(kv_groups=(0, 1))})
    with pytest.raises(PlanError, match="every MLP neuron"):
        make_cut_plan(m, {0: LayerCut(neurons=tuple(range(48)))})
    with pytest.raises(PlanError, match="out of range"):
        make_cut_plan(m, {0: LayerCut(neurons=(48,))})
    with pytest.raises(NotImplementedError, match="BertForMaskedLM"):
        model_units(T.BertForMaskedLM(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, vocab_size=50)))
