"""Norm folding (exact, with a negative control), residual rotation (exact) and slicing."""
from __future__ import annotations

import pytest
import torch
import transformers as T

from prunekit.errors import VerificationError
from prunekit.llm import hf
from prunekit.llm.fold import NORMS, fold_norms_, pca_rotation, residual_covariance, rotate_, slice_residual_
from prunekit.llm.structured import family

IDS = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))


def tiny(fam: str, tied: bool = True):
    kw = dict(vocab_size=97, num_hidden_layers=2, tie_word_embeddings=tied)
    if fam == "llama":
        cfg = T.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2, **kw)
    elif fam == "phi3":
        cfg = T.Phi3Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                           pad_token_id=0, **kw)
    elif fam == "gpt2":
        cfg = T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=48, vocab_size=97)
    elif fam == "opt":
        cfg = T.OPTConfig(hidden_size=32, ffn_dim=48, num_attention_heads=4, word_embed_proj_dim=32, **kw)
    else:
        cfg = T.GPTNeoXConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4, **kw)
    torch.manual_seed(0)
    m = T.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():   # norm scales and shifts that are not 1 and 0
        for n, p in m.named_parameters():
            if "norm" in n or "ln_" in n:
                p.add_(torch.randn_like(p) * 0.3)
    return m


def logits(m):
    with torch.no_grad():
        return m(input_ids=IDS).logits


@pytest.mark.parametrize("fam", ["llama", "phi3", "gpt2", "opt", "gpt_neox"])
def test_folding_is_exact(fam):
    m = tiny(fam)
    ref = logits(m)
    res = fold_norms_(m, final=True)
    assert res.error < 1e-5 and len(res.folded) == 5
    assert torch.allclose(logits(m), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    for path in res.folded:
        norm = m.get_submodule(path)
        assert torch.all(norm.weight == 1) and (getattr(norm, "bias", None) is None or torch.all(norm.bias == 0))


@pytest.mark.parametrize("fam", ["llama", "gpt2"])
def test_folding_the_wrong_scale_is_caught_and_restored(fam):
    m = tiny(fam)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    path = next(n for n in dict(m.named_modules()) if n.endswith(NORMS[family(m)][1][0]))
    with pytest.raises(VerificationError, match="changed the logits"):
        fold_norms_(m, scales={path: torch.ones(32)})
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert m.get_output_embeddings().weight is m.get_input_embeddings().weight or not m.config.tie_word_embeddings


def test_untying_is_reported_and_undone_on_failure():
    m = tiny("llama", tied=True)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    with pytest.raises(VerificationError):
        fold_norms_(m, final=True, scales={"model.norm": torch.ones(32) * 2})
    assert m.lm_head.weight is m.model.embed_tokens.weight and m.config.tie_word_embeddings
    res = fold_norms_(m, final=True)
    assert res.untied and m.lm_head.weight is not m.model.embed_tokens.weight


def test_rotation_exact_then_slice_reloads(tmp_path):
    m = tiny("llama")
    with pytest.raises(ValueError, match="fold_norms_"):
        rotate_(m, torch.eye(32))
    fold_norms_(m, final=True)
    q = pca_rotation(residual_covariance(m, IDS))
    assert torch.allclose(q.t() @ q, torch.eye(32, dtype=q.dtype), atol=1e-8)
    assert rotate_(m, q) < 1e-4
    ref = logits(m)
    slice_residual_(m, 28)
    out = logits(m)
    assert out.shape == ref.shape and m.model.embed_tokens.weight.shape == (97, 28)
    assert hf.save_pretrained(m, tmp_path) == "plain" and m.config.hidden_size == 28
    assert torch.equal(logits(T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()), out)


def test_rotation_refused_for_layernorm_families():
    m = tiny("gpt2")
    fold_norms_(m, final=True)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        rotate_(m, torch.eye(32))
