"""Run a recipe on a model and write the output folder (see :mod:`.folder` for what it holds).

Each stage calls the library exactly as Python would (``prune_(model, example, stage.config,
macs=...)``, ``sparsify_(model, stage.config, finalize_now=True)``, ``train(...)``), so a recipe run
from the command line makes the same plan as the same config in Python. Progress is printed as
plain lines; the training loop draws a bar only on a terminal (:mod:`prunekit.progress`).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import compat
from .data import DataSpec, fashion_batches, random_batches, step
from .folder import write_folder
from .inputs import ExampleInputs, example_inputs
from .models import ModelSpec, load_weights
from .stages import ExportStage, MeasureStage, PruneStage, Recipe, RecoverStage, SparsifyStage


@dataclass
class RunState:
    """The model as the stages leave it, the unpruned original, and what each stage recorded."""

    spec: ModelSpec
    model: nn.Module
    original: nn.Module
    example: ExampleInputs
    recipe: Recipe
    plans: list = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    export: ExportStage | None = None
    measure: MeasureStage = field(default_factory=MeasureStage)
    source_config: dict[str, Any] | None = None


def _own_memory(model: nn.Module) -> None:
    """Give every parameter and buffer freshly allocated memory. ``from_pretrained`` leaves tensors as
    views into the memory-mapped file, at arbitrary alignment, and CPU kernels round differently on
    unaligned data (2e-8 on a BERT pooler): the saved reference outputs would then differ in the last
    bit from those of the reloaded model, whose tensors are fresh."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()


def load(spec: ModelSpec, recipe: Recipe, weights: str | None = None,
         input_shape: tuple[int, ...] | None = None) -> RunState:
    """Build the model (seeded by the recipe), load ``weights`` and draw its example inputs."""
    torch.manual_seed(recipe.seed)
    model = spec.build()
    if weights is not None:
        load_weights(model, weights)
    _own_memory(model)
    model.eval()
    example = example_inputs(spec, model, input_shape, recipe.seed)
    source_config = None
    if spec.kind == "hf":
        import json

        source_config = json.loads((Path(spec.name) / "config.json").read_text())
    return RunState(spec, model, copy.deepcopy(model), example, recipe, source_config=source_config)


def _prune(state: RunState, stage: PruneStage, say: Callable[[str], None]) -> None:
    from ..api import prune_

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune_(state.model, state.example.args, stage.config, example_kwargs=state.example.kwargs,
                        macs=stage.macs)
    state.plans.append(result.plan)
    notes = list(dict.fromkeys([str(w.message) for w in caught] + result.warnings))
    state.notes += notes
    say(f"MACs x{result.macs_ratio:.3f}, params x{result.params_ratio:.3f}, {len(result.plan.groups)} of "
        f"{len(result.groups)} groups pruned; {_verified_line(result.summary())}")
    for n in notes:
        say(f"warning: {n}")
    state.records.append({"stage": "prune", "config": result.config.to_dict(), "macs_target": stage.macs,
                          "before": {"params": result.before.params, "macs": result.before.macs},
                          "after": {"params": result.after.params, "macs": result.after.macs},
                          "groups_pruned": len(result.plan.groups), "groups": len(result.groups),
                          "verified": {k: v for k, v in result.verified.items() if k != "output_shapes"},
                          "summary": result.summary(), "warnings": notes})


def _verified_line(summary: str) -> str:
    return next((ln for ln in summary.splitlines() if ln.startswith(("verified", "returned model", "the model"))), "")


def _sparsify(state: RunState, stage: SparsifyStage, say: Callable[[str], None]) -> None:
    from ..sparsity import sparsify_

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sparsify_(state.model, stage.config, finalize_now=True)
    notes = [str(w.message) for w in caught]
    state.notes += notes
    say(f"{len(result.masks)} weights, overall sparsity {result.overall:.3f}"
        + (f", {len(result.skipped)} left dense (pattern does not fit)" if result.skipped else ""))
    state.records.append({"stage": "sparsify", "config": stage.to_fields(), "overall": result.overall,
                          "per_tensor": result.per_tensor, "skipped": result.skipped, "warnings": notes})


def _recover(state: RunState, stage: RecoverStage, say: Callable[[str], None]) -> None:
    from torch.nn import functional as F

    from ..recovery import train
    from ..recovery.distill import Distillation

    spec: DataSpec = stage.data
    teacher = state.original
    distill = None
    if spec.source == "random":
        batches = random_batches(teacher, state.example.args, state.example.kwargs, spec, state.recipe.seed)
        loss_fn = F.mse_loss
    else:
        if state.example.kwargs or len(state.example.args) != 1:
            raise ValueError("recover data source fashion-mnist needs a model with one image input; use "
                             "source: random")
        batches = fashion_batches(state.example.args[0], spec, state.recipe.seed)
        with torch.no_grad():
            out = state.model(*batches[0][0][0])
        if out.dim() != 2 or out.shape[1] < 10:
            raise ValueError(f"recover data source fashion-mnist needs (B, classes >= 10) logits; the model "
                             f"returns {tuple(out.shape)} (use source: random)")
        loss_fn = F.cross_entropy
        distill = Distillation(teacher, temperature=4.0, alpha=0.5) if spec.distill else None
    # random inputs do not have the data's statistics: batch norms keep theirs (frozen, so train() leaves
    # them in eval mode) instead of drifting to the noise's
    frozen = [p for m in state.model.modules() if isinstance(m, compat.BATCH_NORM)
              for p in m.parameters(recurse=False) if p.requires_grad] if spec.source == "random" else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        result = train(state.model, batches, stage.config, loss_fn=loss_fn, distill=distill, step=step)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    state.model.eval()
    first, last = (result.losses[0], result.losses[-1]) if result.losses else (None, None)
    say(f"{result.steps} steps on {spec.source} data, loss {first:.4g} -> {last:.4g}" if result.losses
        else "no steps")
    state.records.append({"stage": "recover", "config": stage.to_fields(), "steps": result.steps,
                          "loss_first": first, "loss_last": last, "losses": result.losses[:1000]})


def _measure(state: RunState, stage: MeasureStage, say: Callable[[str], None]) -> None:
    from ..measure import count
    from ..measure.size import file_size

    state.measure = stage
    c = count(state.model, state.example.args, state.example.kwargs)
    size = file_size(state.model)
    say(f"params {c.params:,}, MACs {c.macs:,}, file {size / 2**20:.2f} MB")
    state.records.append({"stage": "measure", "params": c.params, "macs": c.macs, "file_bytes": size})


def _export(state: RunState, stage: ExportStage, say: Callable[[str], None]) -> None:
    state.export = stage if stage.onnx else None
    say("ONNX export after the last stage (model.onnx)" if stage.onnx else "no ONNX export (onnx: false)")


RUNNERS = {PruneStage: _prune, SparsifyStage: _sparsify, RecoverStage: _recover, MeasureStage: _measure,
           ExportStage: _export}


def run_recipe(spec: ModelSpec, recipe: Recipe, out: str | Path, *, weights: str | None = None,
               input_shape: tuple[int, ...] | None = None, say: Callable[[str], None] = print) -> Path:
    """Build ``spec``'s model, run the recipe's stages on it in order, and write ``out``
    (atomically: on any failure ``out`` is left as it was). Returns the folder."""
    t0 = time.perf_counter()

    def log(prefix: str) -> Callable[[str], None]:
        return lambda msg: say(f"[{time.perf_counter() - t0:6.1f}s] {prefix}{msg}")

    state = load(spec, recipe, weights, input_shape)
    log("")(f"model {spec} ({sum(p.numel() for p in state.model.parameters()):,} params), inputs "
            f"{state.example.describe()}")
    n = len(recipe.stages)
    for i, stage in enumerate(recipe.stages, 1):
        RUNNERS[type(stage)](state, stage, log(f"{i}/{n} {Recipe.stage_name(stage)}: "))
    folder = write_folder(state, out, log("write: "))
    log("")(f"done: {folder}")
    return folder
