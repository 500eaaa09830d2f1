"""Knowledge distillation from the unpruned model: softened logits, and optionally features.

``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * task_loss
         + feature_weight * sum_k MSE(adapter_k(student_k), teacher_k)``

Feature pairs name a student module and a teacher module; after pruning the student's
channels are fewer, so each pair gets a learned 1x1 adapter (a Linear over the channel dim)
from student width to teacher width, trained with the student.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. (2015): KL between softened distributions, scaled by T^2."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                    reduction="batchmean", log_target=True) * t * t


class ChannelAdapter(nn.Module):
    """Maps student channels to teacher channels: a Linear over dim 1 (NCHW) or the last dim."""

    def __init__(self, c_in: int, c_out: int, channel_dim: int):
        super().__init__()
        self.proj = nn.Linear(c_in, c_out, bias=False)
        self.channel_dim = channel_dim
        with torch.no_grad():  # start as the identity on the kept channels
            self.proj.weight.zero_()
            self.proj.weight[:min(c_in, c_out), :min(c_in, c_out)] = torch.eye(min(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.movedim(self.channel_dim, -1)).movedim(-1, self.channel_dim)


@dataclass
class Distillation:
    """How the student learns from ``teacher`` (kept frozen, eval mode)."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 0.5
    features: Mapping[str, str] = field(default_factory=dict)  # student module -> teacher module
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.adapters = nn.ModuleDict()
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def attach(self, student: nn.Module, example_batch_inputs: Any) -> list[nn.Parameter]:
        """Hook the feature pairs, build the adapters from one batch; returns their parameters."""
        smods, tmods = dict(student.named_modules()), dict(self.teacher.named_modules())
        for s, t in self.features.items():
            if s not in smods or t not in tmods:
                raise KeyError(f"feature pair {s!r} -> {t!r}: no such module")
            self._handles.append(smods[s].register_forward_hook(self._capture(f"s:{s}")))
            self._handles.append(tmods[t].register_forward_hook(self._capture(f"t:{t}")))
        if self.features:
            with torch.no_grad():
                student(example_batch_inputs)
                self.teacher(example_batch_inputs)
            for s, t in self.features.items():
                xs, xt = self._captured[f"s:{s}"], self._captured[f"t:{t}"]
                cdim = 1 if xs.dim() == 4 else -1
                self.adapters[s.replace(".", "__")] = ChannelAdapter(xs.shape[cdim], xt.shape[cdim], cdim)
        return list(self.adapters.parameters())

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _capture(self, key: str):
        def hook(m, args, out):
            self._captured[key] = out if isinstance(out, torch.Tensor) else out[0]
        return hook

    def loss(self, student_logits: torch.Tensor, inputs: Any, task_loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        total = self.alpha * kd_loss(student_logits, teacher_logits, self.temperature) + (1 - self.alpha) * task_loss
        for s, t in self.features.items():
            adapted = self.adapters[s.replace(".", "__")](self._captured[f"s:{s}"])
            total = total + self.feature_weight * F.mse_loss(adapted, self._captured[f"t:{t}"].detach())
        return total
