"""Hugging Face round trip of structurally pruned decoders: config rewrite, plain reload, per-layer path."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T

from prunekit.llm import hf
from prunekit.llm.recipes import prune_depth_
from prunekit.llm.structured import LayerCut, cut_

FAMILIES = ["llama", "mistral", "qwen2", "phi3", "gpt2", "opt", "gpt_neox"]
IDS = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(3))


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


def logits(m):
    with torch.no_grad():
        return m(input_ids=IDS).logits


@pytest.mark.parametrize("fam", FAMILIES)
def test_uniform_neurons_reload_with_plain_transformers(fam, tmp_path):
    m = tiny(fam)
    cut_(m, {0: LayerCut(neurons=(0, 5, 7)), 1: LayerCut(neurons=(1, 2, 40))})
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path) == "plain"
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(again), ref)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.get("intermediate_size", cfg.get("ffn_dim", cfg.get("n_inner"))) == 45


@pytest.mark.parametrize("fam", ["llama", "mistral", "qwen2", "phi3"])
def test_uniform_heads_rewrite_config(fam, tmp_path):
    m = tiny(fam)
    cut_(m, {i: LayerCut(kv_groups=(1,), neurons=(3,)) for i in range(2)})
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path) == "plain"
    assert (m.config.num_attention_heads, m.config.num_key_value_heads, m.config.head_dim) == (2, 1, 8)
    assert torch.equal(logits(T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()), ref)


def test_depth_rewrites_num_hidden_layers(tmp_path):
    m = tiny("llama")
    prune_depth_(m, {"model.layers.0": 0.1, "model.layers.1": 0.9}, 1)
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path) == "plain" and m.config.num_hidden_layers == 1
    assert torch.equal(logits(T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()), ref)


@pytest.mark.parametrize("fam", FAMILIES)
def test_per_layer_sizes_reload_through_prunekit(fam, tmp_path):
    m = tiny(fam)
    base = copy.deepcopy(m.config)
    res = cut_(m, {0: LayerCut(kv_groups=(1,), neurons=(0, 5, 7)), 1: LayerCut(neurons=(1,))})
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path, plans=[res.plan], base_config=base) == "prunekit"
    import prunekit
    again = prunekit.llm.from_pretrained(tmp_path)
    assert torch.equal(logits(again), ref)
    # the clear error, never a silent re-initialisation
    for kwargs in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(ValueError, match="prunekit.llm.from_pretrained"):
            T.AutoModelForCausalLM.from_pretrained(tmp_path, **kwargs)


def test_per_layer_sizes_refused_by_the_family_class_too(tmp_path):
    m = tiny("llama")
    base = copy.deepcopy(m.config)
    res = cut_(m, {0: LayerCut(neurons=(0,))})
    hf.save_pretrained(m, tmp_path, plans=[res.plan], base_config=base)
    with pytest.raises(OSError):   # no weights file under a name transformers reads
        T.LlamaForCausalLM.from_pretrained(tmp_path, ignore_mismatched_sizes=True)


def test_bias_compensation_round_trip(tmp_path):
    """Biases added after the cut (FLAP) go through both paths: mlp_bias in the config, or the replay."""
    from prunekit.llm.scores import add_bias_
    m = tiny("llama")
    cut_(m, {i: LayerCut(neurons=(2,)) for i in range(2)})
    for i in range(2):
        add_bias_(m, f"model.layers.{i}.mlp.down_proj", torch.full((32,), 0.01 * (i + 1)))
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path / "a") == "plain" and m.config.mlp_bias
    assert torch.equal(logits(T.AutoModelForCausalLM.from_pretrained(tmp_path / "a").eval()), ref)
    m = tiny("llama")
    base = copy.deepcopy(m.config)
    res = cut_(m, {0: LayerCut(neurons=(2,))})
    add_bias_(m, "model.layers.0.mlp.down_proj", torch.full((32,), 0.5))
    ref = logits(m)
    assert hf.save_pretrained(m, tmp_path / "b", plans=[res.plan], base_config=base) == "prunekit"
    assert torch.equal(logits(hf.from_pretrained(tmp_path / "b")), ref)


def test_per_layer_save_needs_the_plan(tmp_path):
    m = tiny("llama")
    cut_(m, {0: LayerCut(neurons=(0,))})
    with pytest.raises(ValueError, match="plans="):
        hf.save_pretrained(m, tmp_path)


def test_wrong_weights_are_refused(tmp_path):
    """Negative control: a folder whose plan does not match its weights fails loudly."""
    m = tiny("llama")
    base = copy.deepcopy(m.config)
    res = cut_(m, {0: LayerCut(neurons=(0,))})
    hf.save_pretrained(m, tmp_path, plans=[res.plan], base_config=base)
    meta = json.loads((tmp_path / hf.PRUNEKIT_FILE).read_text())
    meta["plans"] = []
    (tmp_path / hf.PRUNEKIT_FILE).write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="size mismatch"):
        hf.from_pretrained(tmp_path)
