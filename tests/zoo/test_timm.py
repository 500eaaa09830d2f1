"""timm models (random init, small inputs): a representative subset of the zoo benchmark
(benchmarks/zoo_vs_torch_pruning.py runs 58). prune_ at channel ratio 0.5 with the classifier's
outputs kept must succeed, and the model it returns -- not a replay on a copy -- must be finite,
equal the soft-zeroed original within 1e-4 for an exact plan, and reach the MACs ratio measured
with torch's FlopCounterMode on real forwards."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import prunekit
from prunekit import PruneConfig

timm = pytest.importorskip("timm")

TOL = 1e-4

# name -> (create_model kwargs, input side, MACs ratio bound at channel ratio 0.5, xfail reason or None).
# Bounds: the ratio measured on 2026-12-02 plus a small margin.
MODELS: dict[str, tuple[dict, int, float, str | None]] = {
    "vit_tiny_patch16_224": ({"img_size": 32}, 32, 0.31, None),  # 0.284 (approximate: LayerNorm)
    "convnext_atto": ({}, 32, 0.30, None),  # 0.273 (approximate: LayerNorm)
    "mixer_s32_224": ({"img_size": 64}, 64, 0.30, None),  # 0.271 (approximate)
    "resmlp_12_224": ({"img_size": 32}, 32, 0.29, None),  # 0.257, exact
    "poolformer_s12": ({}, 32, 0.29, None),  # 0.257 (layer scale x * scale.view(C, 1, 1); 0.570 before the fix)
    "mobilevit_xxs": ({}, 64, 0.40, None),  # 0.363 (approximate)
    "ghostnet_050": ({}, 32, 0.40, None),  # 0.373, exact
    "pvt_v2_b0": ({}, 64, 0.32, None),  # 0.288 (approximate); PlanError before the shape-rule fix
    "nf_resnet26": ({}, 32, 0.30, None),  # 0.265 (approximate); nothing pruned before the computed-weight rule
}


def _keep(heads: list[str]) -> dict:
    """Keep only the head's outputs where prunekit has ``keep_outputs`` (Torch-Pruning's ignored_layers)."""
    key = "keep_outputs" if "keep_outputs" in PruneConfig.__dataclass_fields__ else "ignore"
    return {key: tuple(heads)}


def _macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|; inf when either is not finite or the shapes differ."""
    if out.shape != ref.shape or not (torch.isfinite(out).all() and torch.isfinite(ref).all()):
        return math.inf
    return float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-12)


def _build(name: str):
    kwargs, side, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    heads = model.get_classifier()
    paths = {id(m): p for p, m in model.named_modules()}
    return model, torch.randn(1, 3, side, side), [paths[id(h)] for h in (heads if isinstance(heads, tuple) else (heads,))]


def _params(name: str):
    reason = MODELS[name][3]
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=reason)) if reason else name


@pytest.mark.parametrize("name", [_params(n) for n in MODELS])
def test_returned_model_equals_soft_reference(name):
    model, x, heads = _build(name)
    original = copy.deepcopy(model)
    result = prunekit.prune_(model, x, ratio=0.5, **_keep(heads))
    assert not result.plan.is_empty(), f"{name}: nothing pruned; unsupported {result.unsupported}"
    assert not [n for n, t in model.state_dict().items() if t.device.type == "meta"], "tensors left on meta"
    with torch.no_grad():
        out = model(x)
        assert torch.isfinite(out).all(), "returned model outputs NaN/inf"
        if result.plan.exact:
            soft = prunekit.apply_plan(copy.deepcopy(original), result.plan, "soft")
            err = _rel_error(out, soft(x))
            assert err <= TOL, f"{name}: returned model differs from the soft-zeroed original by {err:.3g}"
    ratio = _macs(model, x) / _macs(original, x)
    assert ratio <= MODELS[name][2], f"{name}: MACs ratio {ratio:.3f} > {MODELS[name][2]}"


def test_checker_flags_a_wrong_model_and_nan():
    """Negative controls for the check above: a plan applied hard with its indices shifted by one,
    and a NaN output, are both far outside the tolerance."""
    model, x, heads = _build("ghostnet_050")
    original = copy.deepcopy(model)
    result = prunekit.prune_(model, x, ratio=0.5, **_keep(heads))
    assert result.plan.exact
    shifted = copy.deepcopy(result.plan)
    for name, dims in shifted.removed.items():
        t = original.get_parameter(name) if name in dict(original.named_parameters()) else original.get_buffer(name)
        shifted.removed[name] = {d: sorted({(i + 1) % t.shape[d] for i in idx}) for d, idx in dims.items()}
    wrong = prunekit.apply_plan(copy.deepcopy(original), shifted, "hard")
    soft = prunekit.apply_plan(copy.deepcopy(original), result.plan, "soft")
    with torch.no_grad():
        ref = soft(x)
        assert _rel_error(wrong(x), ref) > 1e-2
        assert _rel_error(torch.full_like(ref, float("nan")), ref) == math.inf
        assert _rel_error(model(x), ref) <= TOL  # and the real one passes
