"""llm/storage.py: a sparse causal LM saves dense and compressed, and both reload bit for bit."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunekit.llm import storage  # noqa: E402


def _tiny_sparse(tie: bool = True, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype).eval()
    with torch.no_grad():
        for name, mod in model.model.layers.named_modules():
            if isinstance(mod, torch.nn.Linear):  # 50% per tensor by magnitude
                w = mod.weight
                k = w.numel() // 2
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0
    return model


def _check_same(a, b):
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
        assert torch.equal(sa[k] == 0, sb[k] == 0), k


@pytest.mark.parametrize("tie", [True, False])
def test_dense_and_compressed_reload_exactly(tmp_path, tie):
    model = _tiny_sparse(tie)
    dense = storage.save_dense(model, tmp_path / "dense")
    comp = storage.save_compressed(model, tmp_path / "comp")
    assert comp.encodings.get("bitmask", 0) == 14  # the 7 Linears per block, 2 blocks, all 50% sparse
    assert comp.weight_bytes < dense.weight_bytes
    for folder in (tmp_path / "dense", tmp_path / "comp"):
        back = storage.load(folder)
        _check_same(model, back)
    back = storage.load_compressed(tmp_path / "comp")
    if tie:
        assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()


def test_bf16_compressed_reload(tmp_path):
    # built in bf16 (not .to(bf16), which would also cast the float32 rotary buffer that from_pretrained keeps)
    model = _tiny_sparse(dtype=torch.bfloat16)
    storage.save_compressed(model, tmp_path / "c")
    back = storage.load_compressed(tmp_path / "c")
    assert back.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    _check_same(model, back)


def test_negative_controls(tmp_path):
    model = _tiny_sparse()
    storage.save_dense(model, tmp_path / "dense")
    with pytest.raises(FileNotFoundError, match="prunekit_sparse.json"):
        storage.load_compressed(tmp_path / "dense")
    storage.save_compressed(model, tmp_path / "comp")
    with pytest.raises(OSError):  # plain transformers finds no weights: an error, never a random init
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "comp")
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "comp")
    cfg.num_hidden_layers = 3  # a config that no longer matches the weights
    cfg.save_pretrained(tmp_path / "comp")
    with pytest.raises(ValueError, match="does not match|unloaded"):
        storage.load_compressed(tmp_path / "comp")
    # the equality check itself flags a one-weight change
    other = _tiny_sparse()
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight[0, 0] += 1.0
    with pytest.raises(AssertionError):
        _check_same(model, other)
