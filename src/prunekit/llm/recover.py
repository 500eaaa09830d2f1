"""Recovery of a pruned causal LM on calibration text: distillation from the unpruned model, or LoRA merged back.

``recover_(student, windows, RecoverConfig(...), teacher=dense)`` trains in place and returns a
:class:`RecoverResult`. The loss is

    kl_weight * T^2 * KL(teacher || student) on the logits (per token)
  + ce_weight * next-token cross-entropy
  + hidden_weight * sum over (s, t) in hidden_pairs of MSE(student hidden_states[s], teacher hidden_states[t])

- ``method="distill"`` trains the parameters inside the decoder blocks (and the final norm;
  ``trainable="all"`` adds embeddings and head).
- ``method="lora"`` adds PEFT LoRA adapters to every Linear in the blocks (or ``lora_targets``), trains
  only those, then merges them into the weights (``merge_and_unload``): the result is a plain model
  with no peft modules.

Both work on structurally pruned models (any per-layer sizes: each Linear is trained or adapted as
it is) and on sparse ones. Sparsity: with ``keep_zeros`` (default) every weight of a block Linear that is
exactly zero before recovery is zero after it -- distillation re-applies the mask after each
optimizer step; a LoRA merge makes the weights dense, so ``sparse_merge="remask"`` (default)
re-applies the mask after merging and reports the fraction of the merged update that the mask
removed (``RecoverResult.lora_delta_masked``), and ``sparse_merge="refuse"`` raises instead of
merging into a sparse model.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the student and teacher are sharded with FSDP
(``torch.distributed.fsdp.fully_shard``, one unit per decoder block), gloo on CPU and NCCL on GPU;
the windows of each global batch are split across ranks. The model object stays sharded; rank 0
receives the plain full weights in ``RecoverResult.state_dict`` (LoRA merged and masked), ready
for ``save_pretrained(out, state_dict=...)``. ``prunekit llm-recover`` is that command (on GPUs,
NCCL; one process per GPU)::

    torchrun --nproc_per_node 8 -m prunekit.cli llm-recover --student PRUNED_DIR --teacher DENSE_DIR \\
        --calib protocol --out RECOVERED_DIR --method distill --steps 200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from ..progress import progress_bar

METHODS = ("distill", "lora")


@dataclass(frozen=True)
class RecoverConfig:
    """How to recover a pruned causal LM (see the module docstring for the loss)."""

    method: str = field(default="distill", metadata={"help": "distill (train the blocks) or lora (PEFT, merged back)"})
    steps: int = 100
    batch_size: int = field(default=1, metadata={"help": "windows per step, over all processes"})
    lr: float | None = field(default=None, metadata={"help": "default 1e-5 for distill, 1e-4 for lora"})
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    schedule: str = field(default="cosine", metadata={"help": "cosine or constant"})
    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_pairs: tuple[tuple[int, int], ...] = field(
        default=((-1, -1),), metadata={"help": "(student, teacher) indices into output_hidden_states"})
    trainable: str = field(default="blocks", metadata={"help": "distill: blocks (+ final norm) or all"})
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = field(default=(), metadata={"help": "module names; default every block Linear"})
    keep_zeros: bool = field(default=True, metadata={"help": "weights exactly zero before recovery stay zero"})
    sparse_merge: str = field(default="remask", metadata={"help": "lora on a sparse model: remask or refuse"})
    sparse_threshold: float = field(default=0.01, metadata={"help": "a block Linear with more zeros than this is sparse"})
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"RecoverConfig.{name}: {why}")

        if self.method not in METHODS:
            bad("method", f"{self.method!r} is not one of {METHODS}")
        if self.steps < 1 or self.batch_size < 1:
            bad("steps" if self.steps < 1 else "batch_size", "must be >= 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", f"must be a positive finite number, not {self.lr}")
        for name in ("kl_weight", "ce_weight", "hidden_weight", "temperature", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(name, f"must be a finite number >= 0, not {v}")
        if self.temperature <= 0:
            bad("temperature", "must be > 0")
        if self.kl_weight + self.ce_weight + self.hidden_weight == 0:
            bad("kl_weight", "every loss weight is 0: nothing to train on")
        if self.schedule not in ("cosine", "constant"):
            bad("schedule", f"{self.schedule!r} is not cosine or constant")
        if self.trainable not in ("blocks", "all"):
            bad("trainable", f"{self.trainable!r} is not blocks or all")
        if self.sparse_merge not in ("remask", "refuse"):
            bad("sparse_merge", f"{self.sparse_merge!r} is not remask or refuse")
        if self.lora_rank < 1:
            bad("lora_rank", "must be >= 1")
        if not 0 <= self.sparse_threshold < 1:
            bad("sparse_threshold", "must be in [0, 1)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-5 if self.method == "distill" else 1e-4)

    def needs_teacher(self) -> bool:
        return self.kl_weight > 0 or self.hidden_weight > 0


@dataclass
class RecoverResult:
    """What a recovery did. ``state_dict`` is set only under torchrun (rank 0: plain full weights)."""

    method: str
    steps: int
    losses: list[float]
    seconds: float
    world_size: int
    trainable_params: int
    sparse_layers: int  # block Linears whose zero pattern was kept
    lora_delta_masked: float | None = None  # LoRA on a sparse model: |masked part of the update| / |update|
    merge_loss: tuple[float, float] | None = None  # LoRA, one process: loss on the first batch before / after merging
    state_dict: dict[str, torch.Tensor] | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    from .arch import layout

    lay = layout(model)
    return lay.blocks_path, lay.blocks


def _block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Full module name -> Linear-like module, for every Linear inside the decoder blocks."""
    from .arch import block_linears

    path, blocks = _blocks(model)
    return {f"{path}.{i}.{name}": mod for i, block in enumerate(blocks) for name, mod in block_linears(block).items()}


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: the local shard of a DTensor (FSDP), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _zero_masks(linears: dict[str, nn.Module], threshold: float) -> tuple[dict[str, torch.Tensor], int]:
    """(masks of the non-zero weights of every block Linear, number of Linears sparser than threshold)."""
    masks, sparse = {}, 0
    for name, mod in linears.items():
        w = _local(mod.weight.detach())
        keep = w != 0
        masks[name] = keep
        if w.numel() and 1 - keep.float().mean().item() > threshold:
            sparse += 1
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([sparse], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        sparse = int(t.item())
    return masks, sparse


def _rank_world(device: torch.device) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard_fsdp(model: nn.Module) -> None:
    from torch.distributed.fsdp import fully_shard

    _, blocks = _blocks(model)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def _batch_rows(step: int, n: int, batch: int, rank: int, world: int) -> list[int]:
    """Rows of ``windows`` for this rank at ``step``: the global batch cycles through the windows in order."""
    per_rank = batch // world
    start = step * batch + rank * per_rank
    return [(start + j) % n for j in range(per_rank)]


def _loss(student: nn.Module, teacher: nn.Module | None, ids: torch.Tensor, cfg: RecoverConfig) -> torch.Tensor:
    want_hidden = cfg.hidden_weight > 0
    out = student(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
    logits = out.logits  # [B, T, V]
    total = logits.new_zeros(())
    if cfg.ce_weight > 0:
        total = total + cfg.ce_weight * F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    if teacher is None:
        return total
    with torch.no_grad():
        tout = teacher(input_ids=ids, output_hidden_states=want_hidden, use_cache=False)
    if cfg.kl_weight > 0:
        t = cfg.temperature
        s_logp = F.log_softmax(logits.float() / t, -1).flatten(0, 1)  # [B*T, V]
        t_logp = F.log_softmax(tout.logits.float() / t, -1).flatten(0, 1)  # [B*T, V]
        kl = F.kl_div(s_logp, t_logp, reduction="batchmean", log_target=True)  # mean over tokens
        total = total + cfg.kl_weight * t * t * kl
    if want_hidden:
        for s, k in cfg.hidden_pairs:
            hs, ht = out.hidden_states[s], tout.hidden_states[k]
            if hs.shape != ht.shape:
                raise ValueError(f"RecoverConfig.hidden_pairs: student hidden state {s} {tuple(hs.shape)} and teacher "
                                 f"{k} {tuple(ht.shape)} differ in shape (width-pruned residual?); use hidden_weight=0")
            total = total + cfg.hidden_weight * F.mse_loss(hs.float(), ht.float())
    return total


def _lora_targets(model: nn.Module, cfg: RecoverConfig) -> list[str]:
    if cfg.lora_targets:
        return list(cfg.lora_targets)
    return list(_block_linears(model))


def _merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """PEFT state (base_model.model.X.base_layer.weight + lora_A/B) -> plain state with W += scaling * B @ A."""
    prefix = "base_model.model."
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        plain = key.removeprefix(prefix).replace(".base_layer.", ".")
        if key.endswith(".base_layer.weight"):
            stem = key.removesuffix(".base_layer.weight")
            a, b = state[f"{stem}.lora_A.default.weight"], state[f"{stem}.lora_B.default.weight"]  # [r, in], [out, r]
            t = (t.float() + scaling * (b.float() @ a.float())).to(t.dtype)
        out[plain] = t
    return out


def recover_(student: nn.Module, windows: torch.Tensor, config: RecoverConfig = RecoverConfig(), *,
             teacher: nn.Module | None = None) -> RecoverResult:
    """Recover ``student`` in place on ``windows`` (LongTensor [n, T]); see the module docstring.

    >>> recover_(pruned, calib[:32], RecoverConfig(method="lora", steps=50), teacher=dense)  # doctest: +SKIP
    """
    cfg = config
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"llm.recover: windows must be a LongTensor [n, T], not {windows.dtype} {tuple(windows.shape)}")
    if cfg.needs_teacher() and teacher is None:
        raise ValueError("llm.recover: kl_weight/hidden_weight > 0 need the unpruned model as teacher=")
    if any("lora" in type(m).__module__.lower() and "peft" in type(m).__module__ for m in student.modules()):
        raise ValueError("llm.recover: the student already holds peft modules; merge or unload them first")
    device = next(student.parameters()).device
    rank, world = _rank_world(device)
    if cfg.batch_size % world:
        raise ValueError(f"RecoverConfig.batch_size: {cfg.batch_size} is not a multiple of the {world} processes")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()

    linears = _block_linears(student)
    masks, n_sparse = _zero_masks(linears, cfg.sparse_threshold) if world == 1 else ({}, 0)
    if cfg.method == "lora" and n_sparse and cfg.sparse_merge == "refuse":
        raise ValueError(f"llm.recover: {n_sparse} block Linears are sparse and a LoRA merge would make them dense "
                         "(sparse_merge='refuse'); use sparse_merge='remask' or method='distill'")

    net = student
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=_lora_targets(student, cfg), bias="none")
        net = get_peft_model(student, lcfg)
    else:
        for p in student.parameters():
            p.requires_grad_(cfg.trainable == "all")
        if cfg.trainable == "blocks":
            _, blocks = _blocks(student)
            for p in blocks.parameters():
                p.requires_grad_(True)
            from .arch import layout

            norm = layout(student).final_norm
            if norm is not None:
                for p in student.get_submodule(norm).parameters():
                    p.requires_grad_(True)
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    if world > 1:
        _shard_fsdp(net.base_model.model if cfg.method == "lora" else net)
        if teacher is not None:
            _shard_fsdp(teacher)
        if cfg.method == "distill":  # masks of the local shards, after sharding
            masks, n_sparse = _zero_masks(_block_linears(student), cfg.sparse_threshold)
        else:
            masks, n_sparse = {}, 0  # rank 0 masks the gathered weights below
    params = [p for p in net.parameters() if p.requires_grad]
    n_train = sum(_local(p).numel() for p in params)
    if not params:
        raise ValueError("llm.recover: nothing to train (every parameter is frozen)")
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    train_masks = ({n: (linears[n] if world == 1 else _block_linears(student)[n], m) for n, m in masks.items()}
                   if cfg.method == "distill" and cfg.keep_zeros else {})

    losses: list[float] = []
    bar = progress_bar(cfg.steps, cfg.progress and rank == 0, f"recover ({cfg.method})")
    net.train()
    try:
        for step in range(cfg.steps):
            if cfg.schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            ids = windows[_batch_rows(step, windows.shape[0], cfg.batch_size, rank, world)].to(device)
            loss = _loss(net, teacher, ids, cfg)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"llm.recover: loss is {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                for mod, keep in train_masks.values():
                    _local(mod.weight.data).mul_(keep)
            value = loss.detach()
            if world > 1:
                dist.all_reduce(value)
                value = value / world
            losses.append(float(value))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
    net.eval()

    result = RecoverResult(cfg.method, len(losses), losses, 0.0, world, n_train, n_sparse,
                           config=asdict(cfg))
    scaling = cfg.lora_alpha / cfg.lora_rank
    if world == 1:
        if cfg.method == "lora":
            before = {n: m.weight.detach().clone() for n, m in linears.items() if n in masks} if n_sparse else {}
            probe = windows[_batch_rows(0, windows.shape[0], cfg.batch_size, 0, 1)].to(device)
            with torch.no_grad():
                peft_loss = float(_loss(net, teacher, probe, cfg))
            merged = net.merge_and_unload()
            if merged is not student:
                raise RuntimeError("llm.recover: peft returned a new model object on merge; expected the student")
            if n_sparse and cfg.keep_zeros:
                delta_removed, delta_total = 0.0, 0.0
                for n, keep in masks.items():
                    w = student.get_submodule(n).weight.data
                    d = (w - before[n]).float()
                    delta_removed += float(d[~keep].pow(2).sum())
                    delta_total += float(d.pow(2).sum())
                    w.mul_(keep)
                result.lora_delta_masked = math.sqrt(delta_removed / delta_total) if delta_total else 0.0
            with torch.no_grad():
                result.merge_loss = (peft_loss, float(_loss(student, teacher, probe, cfg)))
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            if cfg.method == "lora":
                base = {k: v for k, v in state.items() if k.endswith(".base_layer.weight")}
                state = _merge_lora_state(state, scaling)
                if cfg.keep_zeros:
                    masks0 = {k.removeprefix("base_model.model.").removesuffix(".base_layer.weight"): v != 0
                              for k, v in base.items()}
                    n_sparse = sum(1 for m in masks0.values()
                                   if m.numel() and 1 - m.float().mean().item() > cfg.sparse_threshold)
                    if n_sparse:
                        removed = total = 0.0
                        for n, keep in masks0.items():
                            d = (state[f"{n}.weight"].float() - base[f"base_model.model.{n}.base_layer.weight"].float())
                            removed += float(d[~keep].pow(2).sum())
                            total += float(d.pow(2).sum())
                            state[f"{n}.weight"].mul_(keep)
                        result.lora_delta_masked = math.sqrt(removed / total) if total else 0.0
                    result.sparse_layers = n_sparse
            result.state_dict = state
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# the torchrun command


def _calibration(spec: str, tokenizer_dir: str, n: int, seq_len: int) -> torch.Tensor:
    """``protocol`` (the protocol's calibration windows), or a text file cut into windows of seq_len."""
    from transformers import AutoTokenizer

    if spec == "protocol":
        from .data import calibration_windows, smollm2

        _, tok = smollm2()
        return calibration_windows(tok, n=n)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with open(spec, encoding="utf-8") as f:
        ids = tok(f.read(), add_special_tokens=False)["input_ids"]
    rows = len(ids) // seq_len
    if rows == 0:
        raise ValueError(f"--calib {spec}: {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)[:n]  # [rows, T]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``prunekit llm-recover`` arguments (every :class:`RecoverConfig` field as a flag)."""
    p.add_argument("--student", required=True, help="the pruned model's folder (save_pretrained)")
    p.add_argument("--teacher", default=None, help="the unpruned model's folder (needed for KL / hidden matching)")
    p.add_argument("--calib", required=True, help="'protocol' or a UTF-8 text file")
    p.add_argument("--windows", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", required=True)
    for f_name, f in RecoverConfig.__dataclass_fields__.items():
        if f_name in ("hidden_pairs", "lora_targets", "progress", "lr"):
            continue
        kind = type(f.default)
        if kind is bool:
            p.add_argument(f"--{f_name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=f.default, help=f.metadata.get("help"))
        else:
            p.add_argument(f"--{f_name.replace('_', '-')}", type=float if kind is type(None) else kind,
                           default=f.default, help=f.metadata.get("help"))
    p.add_argument("--lr", type=float, default=None)


def run_command(args: argparse.Namespace) -> int:
    """``[torchrun --nproc_per_node N -m] prunekit.cli llm-recover --student DIR --teacher DIR --calib ... --out DIR``."""
    from transformers import AutoModelForCausalLM

    from .loading import _dtype_kw

    cfg = RecoverConfig(**{k: getattr(args, k) for k in RecoverConfig.__dataclass_fields__
                           if k not in ("hidden_pairs", "lora_targets", "progress")}, progress=False)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"llm-recover: --out {args.out!r} exists and is not an empty folder")
    windows = _calibration(args.calib, args.student, args.windows, args.seq_len)
    student = AutoModelForCausalLM.from_pretrained(args.student, **_dtype_kw("auto"))
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, **_dtype_kw("auto")) if args.teacher else None
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        student.cuda()
        if teacher is not None:
            teacher.cuda()
    result = recover_(student, windows, cfg, teacher=teacher)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        state = result.state_dict
        if state is None:
            student.save_pretrained(out)
        else:
            from accelerate import init_empty_weights

            with init_empty_weights():
                plain = AutoModelForCausalLM.from_config(student.config)
            plain.save_pretrained(out, state_dict=state)
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(args.student).save_pretrained(out)
        except (OSError, ValueError):
            pass  # a folder without a tokenizer: the weights are what recovery makes
        (out / "recover.json").write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "state_dict"},
                                                     indent=1, default=str))
        print(f"recovered ({cfg.method}, {result.steps} steps, {result.world_size} processes): loss "
              f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}; saved to {out}")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


