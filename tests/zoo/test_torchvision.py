"""torchvision classification models, one or more per family, random init: prune at channel ratio
0.5 (final classifier kept) -- forward works, output shape unchanged, MACs reduced, and the
soft-vs-hard oracle holds on every exact group. The full 80-model sweep is a benchmark."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import prunekit
from prunekit import soft_hard_error
from tests.conftest import prune_exact_groups

# model -> (input side, MACs ratio it must reach at channel ratio 0.5)
FAMILIES = {
    "alexnet": (64, 0.35),
    "convnext_tiny": (64, 0.35),
    "densenet121": (64, 0.35),
    "efficientnet_b0": (64, 0.35),
    "efficientnet_v2_s": (64, 0.35),
    "googlenet": (64, 0.35),
    "inception_v3": (96, 0.35),
    "maxvit_t": (224, 0.75),
    "mnasnet0_5": (64, 0.35),
    "mobilenet_v2": (64, 0.35),
    "mobilenet_v3_small": (64, 0.35),
    "regnet_y_400mf": (64, 0.35),
    "resnet18": (64, 0.35),
    "resnext50_32x4d": (64, 0.35),
    "shufflenet_v2_x0_5": (64, 0.6),
    "squeezenet1_1": (64, 0.35),
    "swin_t": (224, 0.7),
    "swin_v2_t": (224, 0.75),
    "vgg11_bn": (64, 0.35),
    "vit_b_16": (224, 0.35),
}


def _model(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return torchvision.models.get_model(name, **kwargs).eval()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prune_half_channels(name):
    side, target = FAMILIES[name]
    model = _model(name)
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        ref_shape = model(x).shape
    result = prunekit.prune_(model, x, ratio=0.5)
    with torch.no_grad():
        assert model(x).shape == ref_shape
    assert result.after.params < result.before.params
    assert result.macs_ratio < target, f"{name}: MACs ratio {result.macs_ratio:.3f}"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_oracle_on_exact_groups(name):
    side, _ = FAMILIES[name]
    model = _model(name)
    x = torch.randn(1, 3, side, side)
    graph, groups, plan = prune_exact_groups(model, x, kinds=("channel", "group", "head"))
    assert groups, f"{name}: no exact group"
    assert soft_hard_error(model, plan, x) <= 1e-4
