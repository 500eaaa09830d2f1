"""Hugging Face transformers built from small configs (no downloads): heads and MLP neurons."""
from __future__ import annotations

import copy

import pytest
import torch

import prunekit
from prunekit.measure import count
from tests.conftest import assert_oracle

transformers = pytest.importorskip("transformers")


def _bert():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return transformers.BertModel(cfg, add_pooling_layer=False), {"input_ids": torch.randint(0, 100, (2, 9))}


def _gpt2():
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 100, (2, 9))}


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg), {"input_ids": torch.randint(0, 100, (2, 9))}


def _vit():
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, attn_implementation="sdpa")
    return transformers.ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


MODELS = {"bert": _bert, "gpt2": _gpt2, "llama_gqa": _llama, "vit": _vit}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_and_neurons_oracle(name):
    model, kwargs = MODELS[name]()
    model.eval()
    graph, groups, plan = assert_oracle(model, (), kinds=("channel", "head"), kwargs=kwargs, min_groups=2)
    kinds = {g.kind for g in groups}
    assert {"channel", "head"} <= kinds, f"{name}: exact groups {kinds}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prune_runs_and_shrinks(name):
    model, kwargs = MODELS[name]()
    model.eval()
    with torch.no_grad():
        ref = model(**kwargs)
    result = prunekit.prune_(model, (), example_kwargs=kwargs, ratio=0.5)
    # HF models often need values while tracing (`pad_token_id in input_ids`, autocast in rotary embeddings):
    # the values read from the inputs, or a fallback to a real forward, are reported, and are the only notes allowed
    others = [w for w in result.warnings if not w.startswith(("traced with a real forward", "the trace read values"))]
    assert not others, others
    heads = [g for g in result.plan.groups if g["kind"] == "head"]
    assert heads, f"{name}: no head group was pruned"
    with torch.no_grad():
        out = model(**kwargs)
    first = next(iter(ref.values()))
    assert next(iter(out.values())).shape == first.shape
    assert result.after.macs < 0.6 * result.before.macs


def test_llama_heads_respect_kv_groups():
    model, kwargs = _llama()
    model.eval()
    result = prunekit.prune_(model, (), example_kwargs=kwargs, ratio=0.5, kinds=("head",))
    attn = model.model.layers[0].self_attn
    # 2 KV heads x 3 query heads each: one KV group goes, with its 3 query heads
    assert attn.k_proj.out_features == 1 * attn.head_dim
    assert attn.q_proj.out_features == 3 * attn.head_dim
    assert attn.o_proj.in_features == 3 * attn.head_dim
    with torch.no_grad():
        model(**kwargs)
