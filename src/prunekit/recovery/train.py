"""A small, dependable training loop for recovery: fine-tuning, distillation, freeze-and-retrain.

It runs on one CPU or GPU, and unchanged under ``torchrun`` with several processes: when the
``WORLD_SIZE`` / ``RANK`` environment says so, it joins the process group (gloo on CPU, NCCL on
GPU), wraps the model in DistributedDataParallel and shards a ``DataLoader`` with a
``DistributedSampler``. Frozen modules stay in eval mode (see :mod:`.freeze`).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch import distributed as dist
from torch.nn import functional as F
from torch.utils.data import DataLoader, DistributedSampler

from ..devices import device_of, move_to
from ..progress import progress_bar
from ..validate import number
from .distill import Distillation
from .freeze import train_mode


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = field(default="adamw", metadata={"help": "adamw or sgd"})
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps in total"})
    grad_clip: float | None = None
    schedule: str = field(default="cosine", metadata={"help": "cosine or constant learning rate"})
    progress: bool = True
    amp: str | None = field(default=None, metadata={"help": "mixed precision: None, 'bf16' or 'fp16' (fp16 with a "
                                                            "gradient scaler on CUDA)"})

    def __post_init__(self) -> None:
        number("TrainConfig.epochs", self.epochs, lo=1, integer=True)
        number("TrainConfig.lr", self.lr, lo=0.0, lo_open=True)
        number("TrainConfig.momentum", self.momentum, lo=0.0, hi=1.0)
        number("TrainConfig.weight_decay", self.weight_decay, lo=0.0)
        if self.max_steps is not None:
            number("TrainConfig.max_steps", self.max_steps, lo=1, integer=True)
        if self.grad_clip is not None:
            number("TrainConfig.grad_clip", self.grad_clip, lo=0.0, lo_open=True)
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"TrainConfig.amp must be None, 'bf16' or 'fp16', not {self.amp!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', not {self.schedule!r}")


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    world_size: int


def _maybe_init_distributed(device: torch.device) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(loader: Iterable, rank: int, world: int, epoch: int) -> Iterable:
    if world == 1 or not isinstance(loader, DataLoader):
        return loader
    if not isinstance(loader.sampler, DistributedSampler):
        shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
        loader = DataLoader(loader.dataset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                            collate_fn=loader.collate_fn, drop_last=loader.drop_last,
                            sampler=DistributedSampler(loader.dataset, world, rank, shuffle=shuffle, seed=0))
    loader.sampler.set_epoch(epoch)
    return loader


def _default_step(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
    inputs, target = batch
    return model(inputs), inputs, target


def train(model: nn.Module, loader: Iterable, config: TrainConfig = TrainConfig(), *,
          loss_fn: Callable = F.cross_entropy, distill: Distillation | None = None,
          step: Callable[[nn.Module, Any], tuple[torch.Tensor, Any, Any]] = _default_step) -> TrainResult:
    """Train the trainable parameters of ``model`` on ``loader`` (batches of ``(inputs, targets)``).

    Every batch is moved to the model's device first (so recovery runs on a GPU with a CPU data
    loader, and under torchrun DDP). With ``distill``, the loss is the distillation loss against the
    teacher (plus features). ``config.amp`` runs the forward under autocast.
    """
    device = device_of(model)
    rank, world = _maybe_init_distributed(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if distill is not None:
        first = move_to(next(iter(loader)), device)
        params += distill.attach(model, first[0])
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        for a in (distill.adapters.parameters() if distill is not None else ()):
            dist.broadcast(a.data, 0)
    opt = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if config.optimizer == "adamw"
           else torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay))
    try:
        per_epoch = len(_shard(loader, rank, world, 0))  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = config.max_steps or (per_epoch * config.epochs if per_epoch else None)
    losses: list[float] = []
    steps = 0
    bar = progress_bar(total, config.progress and rank == 0, "recovery")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp or "")
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    # fp16 needs loss scaling on CUDA; elsewhere (and for bf16) the scaler is a pass-through
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16" and device.type == "cuda")
    try:
        with train_mode(model):
            for epoch in range(config.epochs):
                for batch in _shard(loader, rank, world, epoch):
                    if config.max_steps is not None and steps >= config.max_steps:
                        break
                    if total and config.schedule == "cosine":
                        for g in opt.param_groups:
                            g["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * steps / total))
                    batch = move_to(batch, device)
                    with autocast:
                        out, inputs, target = step(net, batch)
                        loss = loss_fn(out, target)
                        if distill is not None:
                            loss = distill.loss(out, inputs, loss)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if distill is not None and world > 1:  # adapters live outside DDP: average by hand
                        for a in distill.adapters.parameters():
                            if a.grad is not None:
                                dist.all_reduce(a.grad)
                                a.grad /= world
                    if config.grad_clip is not None:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(params, config.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    steps += 1
                    losses.append(float(loss.detach()))
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
        if distill is not None:
            distill.detach()
    return TrainResult(steps, losses, world)
