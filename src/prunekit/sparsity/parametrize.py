"""Masks as parametrizations: ``weight = original * mask`` during training, saved with the
model's checkpoints, and :func:`finalize`-d into plain zeroed weights on request.

Uses ``torch.nn.utils.parametrize``: the optimizer updates ``original``; the forward always
sees the masked weight, so pruned weights stay zero however the training goes. The mask is a
persistent bool buffer: a masked model's ``state_dict()`` holds ``<m>.parametrizations.weight.original``
and ``<m>.parametrizations.weight.0.mask``, and :func:`load_state_dict_` loads such a checkpoint
into a plain copy of the model (attaching the masks first) or into one already masked.
:func:`finalize` leaves an ordinary module with no parametrization or hook.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize


class WeightMask(nn.Module):
    """``X * mask`` (the parametrization); ``mask`` is a bool buffer, saved in checkpoints."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _mask_param(module: nn.Module, attr: str) -> WeightMask | None:
    if parametrize.is_parametrized(module, attr):
        for p in module.parametrizations[attr]:
            if isinstance(p, WeightMask):
                return p
    return None


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Attach (or update) a mask on each named parameter; masked weights are zeroed now too.

    Names are those of ``model.named_parameters()`` before masking (``"fc.weight"``).
    Everything is checked before anything changes.
    """
    targets = []
    for name, mask in masks.items():
        module, attr = _owner(model, name)
        current = getattr(module, attr)
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, the weight {tuple(current.shape)}")
        targets.append((module, attr, mask))
    for module, attr, mask in targets:
        existing = _mask_param(module, attr)
        if existing is not None:
            existing.mask = mask.to(device=existing.mask.device, dtype=torch.bool)
            orig = module.parametrizations[attr].original
        else:
            parametrize.register_parametrization(module, attr, WeightMask(mask.to(getattr(module, attr).device)))
            orig = module.parametrizations[attr].original
        with torch.no_grad():
            orig.mul_(mask.to(orig.device, orig.dtype))  # keeps optimizer state meaningful at the cut


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks currently attached, by parameter name."""
    out = {}
    for path, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                m = _mask_param(module, attr)
                if m is not None:
                    out[f"{path}.{attr}" if path else attr] = m.mask
    return out


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight and drop the parametrizations: a plain module again."""
    for path, module in list(model.named_modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                if _mask_param(module, attr) is not None:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


_MASK_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.\d+\.mask$")
_ORIGINAL_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")


def load_state_dict_(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a checkpoint of a masked model: attach the masks it holds (to a plain model, or update
    those already attached), then load every tensor strictly. A checkpoint with masked weights but
    no masks (written before masks were saved) is refused, naming the weights, unless ``model``
    already carries masks for them (e.g. from :meth:`GradualPruner.load_state_dict`)."""
    masks = {}
    for key, value in state.items():
        m = _MASK_KEY.match(key)
        if m:
            masks[f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)] = value
    apply_masks(model, masks)
    attached = masks_of(model)
    missing = []
    for key in state:
        m = _ORIGINAL_KEY.match(key)
        if m:
            name = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
            if name not in attached:
                missing.append(name)
    if missing:
        raise ValueError(f"checkpoint holds masked weights without their masks: {missing[:5]}; load the "
                         "GradualPruner's state first (it holds the masks), or attach them with apply_masks")
    model.load_state_dict(state)
    return model
