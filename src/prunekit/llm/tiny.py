"""Tiny random-weight causal LMs of every supported family, for tests and examples (hidden 32-64,
2 layers, vocabulary 128; no downloads).

>>> tiny_model("llama").config.num_hidden_layers
2
"""
from __future__ import annotations

import torch
from torch import nn

TINY_FAMILIES = ("llama", "mistral", "qwen2", "phi3", "gpt2", "opt", "gpt_neox")


def tiny_config(family: str, **overrides):
    """A small Hugging Face config of ``family`` (hidden 64, 2 layers, 4 heads, vocabulary 128)."""
    import transformers as tf

    common = dict(vocab_size=128, max_position_embeddings=128)
    if family in ("llama", "mistral", "qwen2", "phi3"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
               "phi3": tf.Phi3Config}[family]
        kw = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, **common)
        if family == "phi3":
            kw.update(pad_token_id=0)
    elif family == "gpt2":
        cls, kw = tf.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, vocab_size=128)
    elif family == "opt":
        cls, kw = tf.OPTConfig, dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                     word_embed_proj_dim=64, pad_token_id=1, **common)
    elif family == "gpt_neox":
        cls, kw = tf.GPTNeoXConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, rotary_pct=0.5, **common)
    else:
        raise ValueError(f"llm.tiny: unknown family {family!r}; choose among {TINY_FAMILIES}")
    kw.update(overrides)
    return cls(**kw)


def tiny_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A random-weight causal LM of ``family`` from :func:`tiny_config`, float32, eval mode, SDPA attention."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG state
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.float().eval()
