"""llm/recover.py: distillation and LoRA (merged back) on sparse and structurally pruned tiny Llamas."""
from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from prunekit.llm.recover import RecoverConfig, recover_  # noqa: E402

V, T = 64, 16


def _teacher(hidden: int = 32):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                   initializer_range=0.3)  # peaked logits, so the KL is not ~0
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _windows(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))  # [n, T]


def _sparse(model):
    """50% per tensor by magnitude in every block Linear (independent of llm/sparse.py)."""
    with torch.no_grad():
        for mod in model.model.layers.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight
                w[w.abs() <= w.abs().flatten().kthvalue(w.numel() // 2).values] = 0
    return model


def _narrow_mlp(model, layer: int, keep: int):
    """Structured: layer's MLP keeps its first `keep` neurons (per-layer sizes differ afterwards)."""
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(old.in_features, keep, bias=False)
            new.weight.copy_(old.weight[:keep])  # [keep, d]
            setattr(mlp, name, new)
        old = mlp.down_proj
        new = torch.nn.Linear(keep, old.out_features, bias=False)
        new.weight.copy_(old.weight[:, :keep])  # [d, keep]
        mlp.down_proj = new
    return model


def _kl(student, teacher, ids) -> float:
    with torch.no_grad():
        s = torch.log_softmax(student(ids).logits, -1)
        t = torch.log_softmax(teacher(ids).logits, -1)
    return float(torch.nn.functional.kl_div(s.flatten(0, 1), t.flatten(0, 1), reduction="batchmean", log_target=True))


def _zero_masks(model):
    return {n: p == 0 for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n}


def _no_peft(model):
    assert not any("peft" in type(m).__module__ for m in model.modules())
    assert not any("lora" in k or "base_layer" in k for k in model.state_dict())


@pytest.mark.parametrize("method,lr", [("distill", 3e-3), ("lora", 1e-2)])
def test_sparse_recovery_keeps_zero_pattern_and_lowers_kl(method, lr):
    teacher = _teacher()
    student = _sparse(copy.deepcopy(teacher))
    masks = _zero_masks(student)
    calib = _windows()
    before = _kl(student, teacher, calib)
    res = recover_(student, calib, RecoverConfig(method=method, steps=25, lr=lr, batch_size=2, progress=False),
                   teacher=teacher)
    after = _kl(student, teacher, calib)  # measured 1.09 -> 0.45 (distill), 0.54 (lora, remasked)
    assert res.steps == 25 and res.sparse_layers == 14
    assert after < 0.8 * before, (before, after)
    assert _zero_masks(student).keys() == masks.keys()
    for n, m in _zero_masks(student).items():
        assert torch.equal(m, masks[n]), n  # exactly the same zeros, no more, no fewer
    _no_peft(student)
    if method == "lora":
        assert 0.5 < res.lora_delta_masked < 0.9  # a dense update on a 50% mask: about sqrt(0.5) of it is masked
        assert res.merge_loss[1] > res.merge_loss[0]  # the remask costs: reported, not hidden
        lin = [m for m in student.model.layers.modules() if isinstance(m, torch.nn.Linear)]
        assert res.trainable_params == sum(8 * (m.in_features + m.out_features) for m in lin)  # rank 8, A and B


@pytest.mark.parametrize("method,lr", [("distill", 3e-3), ("lora", 1e-2)])
def test_structured_per_layer_sizes(method, lr):
    teacher = _teacher()
    student = _narrow_mlp(copy.deepcopy(teacher), 0, 24)
    shapes = {n: p.shape for n, p in student.named_parameters()}
    calib = _windows()
    before = _kl(student, teacher, calib)
    cfg = RecoverConfig(method=method, steps=25, lr=lr, batch_size=2, hidden_weight=1.0, progress=False)
    res = recover_(student, calib, cfg, teacher=teacher)
    assert res.sparse_layers == 0 and res.lora_delta_masked is None
    assert {n: p.shape for n, p in student.named_parameters()} == shapes
    assert student.model.layers[0].mlp.up_proj.weight.shape == (24, 32)
    assert _kl(student, teacher, calib) < 0.8 * before
    _no_peft(student)


def test_lora_merge_is_the_trained_adapter():
    """The merged plain model computes what the peft model computed (dense student: nothing masked)."""
    teacher = _teacher()
    student = _narrow_mlp(copy.deepcopy(teacher), 1, 40)
    res = recover_(student, _windows(), RecoverConfig(method="lora", steps=5, lr=1e-2, progress=False),
                   teacher=teacher)
    assert res.merge_loss[0] == pytest.approx(res.merge_loss[1], rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                    _narrow_mlp(copy.deepcopy(teacher), 1, 40).state_dict().values()))
    _no_peft(student)


def test_negative_controls():
    teacher = _teacher()
    with pytest.raises(ValueError, match="RecoverConfig.method"):
        RecoverConfig(method="qlora")
    with pytest.raises(ValueError, match="RecoverConfig.lr"):
        RecoverConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="nothing to train"):
        RecoverConfig(kl_weight=0)
    with pytest.raises(ValueError, match="teacher"):
        recover_(copy.deepcopy(teacher), _windows(), RecoverConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="LongTensor"):
        recover_(copy.deepcopy(teacher), _windows().float(), RecoverConfig(steps=1, progress=False), teacher=teacher)
    # LoRA merge into a sparse model with sparse_merge="refuse": a clear error, the model untouched
    student = _sparse(copy.deepcopy(teacher))
    ref = copy.deepcopy(student.state_dict())
    with pytest.raises(ValueError, match="sparse_merge"):
        recover_(student, _windows(), RecoverConfig(method="lora", steps=1, sparse_merge="refuse", progress=False),
                 teacher=teacher)
    assert all(torch.equal(ref[k], v) for k, v in student.state_dict().items())
    # hidden-state matching across different widths: refused with the shapes named
    narrow = _teacher(hidden=24)
    with pytest.raises(ValueError, match="hidden_pairs"):
        recover_(narrow, _windows(), RecoverConfig(steps=1, hidden_weight=1.0, progress=False), teacher=teacher)
    # without keep_zeros the distilled sparse model loses its zeros: the mask is what keeps them
    student = _sparse(copy.deepcopy(teacher))
    masks = _zero_masks(student)
    recover_(student, _windows(), RecoverConfig(steps=3, lr=1e-3, keep_zeros=False, progress=False), teacher=teacher)
    assert any(not torch.equal(m, masks[n]) for n, m in _zero_masks(student).items())
