"""The output folder of ``prunekit prune`` / ``sparsify``, written atomically, and how to reload it.

::

    out/
      prunekit.json        what to rebuild: the model spec, the plan files in order, the file names (written last)
      model.safetensors    the pruned (and recovered) weights
      model.sparse.safetensors  after a sparsify stage: the same weights in prunekit's compressed format
      plan.json            the plan (plan-2.json, ... for later prune stages), replayable on a fresh model
      recipe.yaml          the recipe that ran (flags on the command line become one)
      example.safetensors  the example inputs; outputs.safetensors: the final model's outputs on them
      source_config.json   a Hugging Face model's original config.json (rebuilt from it, not the hub)
      report.html          before/after table and plots (widths.png, latency.png); summary.json
      model.onnx           with an export stage (or ``prunekit export DIR --onnx``)

:func:`load_folder` rebuilds the model (random init), replays the plans (``apply_plan(..., "hard")``)
and loads the weights: its outputs on the example inputs equal ``outputs.safetensors``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .inputs import ExampleInputs, save_inputs
from .models import ModelSpec, hf_from_config
from .stages import ExportStage, MeasureStage

if TYPE_CHECKING:
    from .run import RunState

MANIFEST = "prunekit.json"
FORMAT = 1


class FolderError(ValueError):
    """A folder that is not a complete prunekit output folder."""


def _outputs(model: nn.Module, ex: ExampleInputs) -> dict[str, torch.Tensor]:
    from ..graph.tracer import iter_tensors

    model.eval()
    with torch.no_grad():
        return {f"out{i}": t.detach().contiguous() for i, t in enumerate(iter_tensors(model(*ex.args, **ex.kwargs)))}


def compare(before: nn.Module, after: nn.Module, ex: ExampleInputs, stage: MeasureStage):
    """Before/after :class:`~prunekit.measure.compare.Comparison` as the measure stage says (latency
    paired in alternating rounds, on ``stage.latency_config.threads`` threads)."""
    from ..measure.compare import Comparison, measure
    from ..measure.latency import paired_latency

    kw = dict(latency=False, per_layer=stage.per_layer, threads=stage.latency_config.threads)
    b = measure(before, ex.args, ex.kwargs, **kw)
    a = measure(after, ex.args, ex.kwargs, **kw)
    paired = {"PyTorch": paired_latency(before, after, ex.args, ex.kwargs, config=stage.latency_config)} \
        if stage.latency else {}
    return Comparison(b, a, paired)


def report(folder: Path, title: str, before: nn.Module, after: nn.Module, ex: ExampleInputs, stage: MeasureStage,
           notes: list[str], extra: dict[str, Any]) -> Path:
    """Measure before and after and write ``report.html``, its plots and ``summary.json`` into ``folder``."""
    from ..report import write_report
    from ..report.html import layer_widths

    cmp = compare(before, after, ex, stage)
    return write_report(folder, title, comparison=cmp, widths=(layer_widths(before), layer_widths(after)),
                        notes=notes, extra=extra)


def export(model: nn.Module, ex: ExampleInputs, path: Path, stage: ExportStage,
           say: Callable[[str], None]) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` (atomically; checked against ONNX Runtime unless
    ``stage.check`` is off) and return what was written."""
    from ..io import export_onnx

    res = export_onnx(model, ex.args, path, example_kwargs=ex.kwargs, exporter=stage.exporter, opset=stage.opset,
                      check=stage.check)
    err = f", max |ONNX Runtime - PyTorch| {res.max_abs_error:.1e}" if res.max_abs_error is not None else ""
    say(f"{path.name}: {res.exporter} exporter, {res.bytes:,} bytes{err}")
    return {"stage": "export", "file": path.name, "exporter": res.exporter, "bytes": res.bytes,
            "max_abs_error": res.max_abs_error}


def write_folder(state: "RunState", out: str | Path, say: Callable[[str], None]) -> Path:
    """Write everything (see the module docstring) into ``out`` through a staging folder."""
    from safetensors.torch import save_model

    from ..io.atomic import staged_folder

    out = Path(out)
    with staged_folder(out, last=MANIFEST) as stage:
        save_model(state.model, str(stage / "model.safetensors"))
        plans = []
        for i, plan in enumerate(state.plans, 1):
            name = "plan.json" if i == 1 else f"plan-{i}.json"
            (stage / name).write_text(plan.to_json())
            plans.append(name)
        save_inputs(state.example, stage / "example.safetensors")
        from safetensors.torch import save_file

        save_file(_outputs(state.model, state.example), str(stage / "outputs.safetensors"))
        (stage / "recipe.yaml").write_text(state.recipe.to_yaml())
        if state.source_config is not None:
            (stage / "source_config.json").write_text(json.dumps(state.source_config, indent=1))
        files = ["model.safetensors", *plans, "example.safetensors", "outputs.safetensors", "recipe.yaml"]
        sparse = None
        if any(r["stage"] == "sparsify" for r in state.records):  # the zeros pay off on disk only compressed
            from ..sparsity import save_sparse

            sparse = "model.sparse.safetensors"
            save_sparse(state.model, stage / sparse)
            dense_bytes, sparse_bytes = (stage / "model.safetensors").stat().st_size, (stage / sparse).stat().st_size
            say(f"{sparse}: {sparse_bytes:,} bytes (prunekit's compressed format; dense {dense_bytes:,})")
            files.append(sparse)
        if state.export is not None:
            state.records.append(export(state.model, state.example, stage / "model.onnx", state.export, say))
            files.append("model.onnx")
        manifest = {"format": FORMAT, "model": state.spec.to_dict(), "plans": plans, "weights": "model.safetensors",
                    "sparse_weights": sparse,
                    "example": "example.safetensors", "outputs": "outputs.safetensors",
                    "source_config": "source_config.json" if state.source_config is not None else None,
                    "seed": state.recipe.seed, "inputs": state.example.source}
        say("measuring before/after for the report")
        report(stage, f"prunekit: {state.spec}", state.original, state.model, state.example, state.measure,
               notes=[f"model: {state.spec}", f"inputs: {state.example.describe()}", *state.notes],
               extra={"model": str(state.spec), "inputs": state.example.describe(), "stages": state.records,
                      "files": files + ["report.html", "summary.json"], "manifest": manifest})
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out


@dataclass
class Loaded:
    """A reloaded output folder: the pruned model, its example inputs and reference outputs, the manifest."""

    model: nn.Module
    example: ExampleInputs
    outputs: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    folder: Path

    def original(self) -> nn.Module:
        """A fresh, unpruned instance of the same model (random init; the folder keeps no original weights)."""
        return _build(self.manifest, self.folder)


def is_output_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _build(manifest: dict[str, Any], folder: Path) -> nn.Module:
    spec = ModelSpec.from_dict(manifest["model"])
    torch.manual_seed(int(manifest.get("seed", 0)))
    if spec.kind == "hf" and manifest.get("source_config"):
        return hf_from_config(json.loads((folder / manifest["source_config"]).read_text()))
    return spec.build().eval()


def load_folder(folder: str | Path) -> Loaded:
    """Rebuild the model of an output folder: fresh instance, plans replayed hard, weights loaded."""
    from safetensors.torch import load_file, load_model

    from ..plan import Plan, apply_plan

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FolderError(f"{folder} is not a prunekit output folder ({MANIFEST}: {e})") from None
    if manifest.get("format") != FORMAT:
        raise FolderError(f"{folder / MANIFEST}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    model = _build(manifest, folder)
    for name in manifest["plans"]:
        apply_plan(model, Plan.load(folder / name), "hard")
    load_model(model, str(folder / manifest["weights"]), strict=True)
    model.eval()
    example = ExampleInputs.from_tensors(load_file(str(folder / manifest["example"])), manifest.get("inputs", ""))
    outputs = load_file(str(folder / manifest["outputs"]))
    return Loaded(model, example, outputs, manifest, folder)


def check_reload(loaded: Loaded) -> float:
    """Largest absolute difference between the reloaded model's outputs and the saved ones (0.0: exact)."""
    now = _outputs(loaded.model, loaded.example)
    if list(now) != list(loaded.outputs) or any(now[k].shape != loaded.outputs[k].shape for k in now):
        raise FolderError(f"{loaded.folder}: the reloaded model's outputs have other shapes than outputs.safetensors")
    return max((float((now[k].double() - loaded.outputs[k].double()).abs().max()) for k in now if now[k].numel()),
               default=0.0)

