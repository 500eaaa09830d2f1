"""ONNX export of a (pruned) model, checked against PyTorch, and ONNX Runtime as a module to measure.

A pruned model is an ordinary dense module, so it exports like any other. :func:`export_onnx`
writes the file atomically (a temporary file beside the target, renamed only once it is
complete and, by default, once ONNX Runtime reproduces the PyTorch outputs on the example
inputs): a failed export leaves no file and an existing file untouched.
:class:`OnnxRuntimeModule` runs an exported model through an ``onnxruntime.InferenceSession``
behind an ``nn.Module`` interface, so the latency protocols of :mod:`prunekit.measure.latency`
measure it like any model. Needs ``pip install prunekit[onnx]`` (``onnx``, ``onnxruntime``).

>>> import os, tempfile, torch, torchvision
>>> m = torchvision.models.resnet18().eval()
>>> path = os.path.join(tempfile.mkdtemp(), "resnet18.onnx")
>>> report = export_onnx(m, torch.randn(1, 3, 64, 64), path)
>>> report.max_abs_error < 1e-3, os.path.getsize(path) == report.bytes
(True, True)
>>> OnnxRuntimeModule(path, threads=2)(torch.randn(4, 3, 64, 64)).shape   # batch is dynamic by default
torch.Size([4, 1000])
"""
from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import PrunekitError
from .atomic import atomic_path
from ..graph.tracer import as_inputs, tensors_in
from ..graph.walk import eval_mode


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunekitError("ONNX Runtime is not installed: pip install 'prunekit[onnx]'") from e
    return onnxruntime


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = as_inputs(example_inputs)
    bad = [type(x).__name__ for x in inputs if not isinstance(x, torch.Tensor)]
    if bad:
        raise PrunekitError(f"export_onnx takes tensors as inputs, got {bad}")
    return inputs


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its size, and how far ONNX Runtime's outputs are
    from PyTorch's on the example inputs (``None`` when not checked)."""

    path: str
    bytes: int
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_error: float | None
    exporter: str = "dynamo"  # "dynamo", "legacy", or "legacy (dynamo failed: <reason>)"

    def __str__(self) -> str:
        err = "not checked" if self.max_abs_error is None else f"max |ORT - torch| {self.max_abs_error:.2e}"
        return f"{self.path}: {self.bytes:,} bytes, opset {self.opset}, {self.exporter} exporter, {err}"


def _session(source: str | bytes, threads: int | None, spinning: bool = True):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _export(model: nn.Module, inputs: tuple, kwargs: dict, file: str, exporter: str, opset: int,
            names_in: Sequence[str] | None, names_out: Sequence[str], dynamic_batch: bool) -> None:
    with warnings.catch_warnings():  # both exporters are chatty (legacy warnings, dynamo progress notes)
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dynamic = None
            if dynamic_batch:  # dim 0 of every input may vary (AUTO: kept static where the model needs it)
                bound = inspect.signature(model.forward).bind(*inputs, **kwargs)
                dynamic = {k: ({0: torch.export.Dim.AUTO} if isinstance(v, torch.Tensor) and v.dim() else None)
                           for k, v in bound.arguments.items()}
            torch.onnx.export(model, inputs, file, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                              input_names=list(names_in) if names_in is not None else None,
                              output_names=list(names_out), dynamic_shapes=dynamic, external_data=False,
                              verbose=False)
        else:
            names = list(names_in) if names_in is not None else [f"input_{i}" for i in range(len(inputs) + len(kwargs))]
            dynamic = {n: {0: "batch"} for n in names + list(names_out)} if dynamic_batch else None
            args = (*inputs, kwargs) if kwargs else inputs
            torch.onnx.export(model, args, file, dynamo=False, opset_version=opset, input_names=names,
                              output_names=list(names_out), dynamic_axes=dynamic)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
                example_kwargs: Mapping[str, torch.Tensor] | None = None, exporter: str = "dynamo", opset: int = 18,
                dynamic_batch: bool = True, check: bool = True, rtol: float = 1e-3, atol: float = 1e-4,
                input_names: Sequence[str] | None = None) -> OnnxExport:
    """Export ``model`` (in eval mode, on ``example_inputs`` and keyword ``example_kwargs``) to ``path``.

    ``exporter="dynamo"`` (default) goes through ``torch.export`` (``torch.onnx.export(..., dynamo=True)``);
    if that fails, the legacy TorchScript exporter is tried and a warning says so (the result's
    ``exporter`` records it). ``exporter="legacy"`` uses the TorchScript exporter only (much faster
    to export on CPU). ``dynamic_batch`` marks dim 0 of every input and output as dynamic. With
    ``check`` the file is loaded in ONNX Runtime and its outputs compared with the model's
    (``|ort - torch| <= atol * max|torch| + rtol * |torch|``); a mismatch raises
    :class:`~prunekit.errors.PrunekitError` and nothing is written. The model's train/eval
    state is restored either way.
    """
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', not {exporter!r}")
    inputs = _as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    bad = [k for k, v in kwargs.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PrunekitError(f"export_onnx takes tensors as keyword inputs, got non-tensors for {bad}")
    path = Path(path)
    modules = list(model.modules())
    with eval_mode(modules), torch.no_grad():
        reference = tensors_in(model(*inputs, **kwargs))
        if input_names is not None and len(input_names) != len(inputs) + len(kwargs):
            raise PrunekitError(f"{len(input_names)} input names for {len(inputs) + len(kwargs)} inputs")
        if input_names is None and exporter == "legacy":
            input_names = tuple(f"input_{i}" for i in range(len(inputs))) + tuple(kwargs)
        names_out = tuple(f"output_{i}" for i in range(len(reference)))
        used = exporter
        try:
            with atomic_path(path) as tmp:
                try:
                    _export(model, inputs, kwargs, tmp, exporter, opset, input_names, names_out, dynamic_batch)
                except Exception as e:  # noqa: BLE001 -- reported, then the legacy exporter is tried
                    if exporter != "dynamo":
                        raise
                    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
                    reason = f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"
                    warnings.warn(f"export_onnx: torch.export could not export {type(model).__name__} ({reason}); "
                                  "used the legacy TorchScript exporter", stacklevel=2)
                    used = f"legacy (dynamo failed: {reason})"
                    names = input_names or tuple(f"input_{i}" for i in range(len(inputs))) + tuple(kwargs)
                    _export(model, inputs, kwargs, tmp, "legacy", min(opset, 17) if opset > 17 else opset, names,
                            names_out, dynamic_batch)
                session_names = tuple(i.name for i in _session(tmp, threads=1).get_inputs())
                if len(session_names) != len(inputs) + len(kwargs):
                    raise PrunekitError(f"the exported graph takes {len(session_names)} inputs, the model was called "
                                        f"with {len(inputs) + len(kwargs)}: the exporter dropped inputs it could not "
                                        "follow (values computed outside torch, e.g. .numpy() or .item())")
                err = None
                if check:  # on the example inputs and on a second draw: an export that baked the example's
                    # values in (data-dependent Python, .numpy(), .item()) matches the first only
                    second_in, second_kw = _redraw(inputs), dict(zip(kwargs, _redraw(tuple(kwargs.values()))))
                    second_ref = tensors_in(model(*second_in, **second_kw))
                    err = _check(tmp, _feed(session_names, inputs, kwargs), reference, rtol, atol)
                    err = max(err, _check(tmp, _feed(session_names, second_in, second_kw), second_ref, rtol, atol,
                                          " on a second random input (the export fixed values that depend on the input)"))
        except BaseException as e:
            if isinstance(e, PrunekitError) or not isinstance(e, Exception):
                raise
            raise PrunekitError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    return OnnxExport(str(path), path.stat().st_size, opset, session_names, names_out, err, used)


def _feed(names: Sequence[str], inputs: tuple[torch.Tensor, ...], kwargs: Mapping[str, torch.Tensor]) -> dict:
    """ONNX input name -> array: keyword inputs by their names, positional ones in order in the rest."""
    feed, rest = {}, [n for n in names if n not in kwargs]
    for n in names:
        if n in kwargs:
            feed[n] = kwargs[n].detach().cpu().numpy()
    positional = list(inputs) + [v for k, v in kwargs.items() if k not in names]
    if len(rest) != len(positional):
        raise PrunekitError(f"the ONNX model takes inputs {list(names)}, got {len(inputs)} positional and "
                            f"keywords {list(kwargs)}")
    feed.update({n: x.detach().cpu().numpy() for n, x in zip(rest, positional)})
    return feed


def _redraw(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Other values of the same shapes: floating tensors redrawn (same mean and spread), others kept."""
    g = torch.Generator().manual_seed(12345)
    out = []
    for t in tensors:
        if t.is_floating_point() and t.numel() > 1:
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype)
            out.append(t.mean() + noise * t.float().std().clamp_min(1e-3).to(t.dtype))
        else:
            out.append(t)
    return tuple(out)


def _check(file: str, feed: dict, reference: list[torch.Tensor], rtol: float, atol: float, where: str = "") -> float:
    got = _session(file, threads=None).run(None, feed)
    if len(got) != len(reference):
        raise PrunekitError(f"ONNX model has {len(got)} outputs, the module {len(reference)}")
    worst = 0.0
    for i, (g, r) in enumerate(zip(got, reference)):
        g = torch.from_numpy(g)
        r = r.detach().cpu()
        if g.shape != r.shape:
            raise PrunekitError(f"ONNX output {i} has shape {tuple(g.shape)}, the module's {tuple(r.shape)}")
        diff = (g.double() - r.double()).abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
        bound = atol * float(r.abs().max() if r.numel() else 0.0) + rtol * r.double().abs()
        if bool((diff > bound + 1e-12).any()):
            raise PrunekitError(f"ONNX Runtime's output {i} differs from PyTorch's by up to {float(diff.max()):.3g}"
                                f"{where} (allowed: atol {atol} x max|output| + rtol {rtol} x |output|)")
    return worst


class OnnxRuntimeModule(nn.Module):
    """An exported model run by ONNX Runtime on the CPU, called like the module it came from
    (tensors in, tensors out; one output comes back as a tensor). ``threads`` sets ONNX Runtime's
    intra-op threads (torch's thread setting does not reach it). ``spinning=False`` makes its idle
    worker threads sleep instead of spinning after each run: slower for back-to-back calls of one
    model, but needed when two sessions alternate on few cores (a paired comparison), where one
    session's spinning threads would steal the other's cores. It has no parameters and does not
    train."""

    def __init__(self, source: str | os.PathLike | bytes, threads: int | None = 2, spinning: bool = True):
        super().__init__()
        self.session = _session(source if isinstance(source, bytes) else str(source), threads, spinning)
        self.threads = threads
        self.input_names = tuple(i.name for i in self.session.get_inputs())

    def forward(self, *inputs: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feed = _feed(self.input_names, tuple(x.contiguous() for x in inputs), kwargs)
        out = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return out[0] if len(out) == 1 else out
