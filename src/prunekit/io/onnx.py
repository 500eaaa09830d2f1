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

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import PrunekitError
from .atomic import atomic_path
from ..graph.tracer import tensors_in
from ..graph.walk import eval_mode


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PrunekitError("ONNX Runtime is not installed: pip install 'prunekit[onnx]'") from e
    return onnxruntime


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
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

    def __str__(self) -> str:
        err = "not checked" if self.max_abs_error is None else f"max |ORT - torch| {self.max_abs_error:.2e}"
        return f"{self.path}: {self.bytes:,} bytes, opset {self.opset}, {err}"


def _session(source: str | bytes, threads: int | None, spinning: bool = True):
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int = 17,
                dynamic_batch: bool = True, check: bool = True, rtol: float = 1e-3, atol: float = 1e-4,
                input_names: Sequence[str] | None = None) -> OnnxExport:
    """Export ``model`` (traced in eval mode on ``example_inputs``) to ``path``.

    ``dynamic_batch`` marks dim 0 of every input and output as dynamic. With ``check`` the file
    is loaded in ONNX Runtime and its outputs compared with the model's
    (``|ort - torch| <= atol * max|torch| + rtol * |torch|``); a mismatch raises
    :class:`~prunekit.errors.PrunekitError` and nothing is written. The model's train/eval
    state is restored either way.
    """
    inputs = _as_inputs(example_inputs)
    path = Path(path)
    modules = list(model.modules())
    with eval_mode(modules), torch.no_grad():
        reference = tensors_in(model(*inputs))
        names_in = tuple(input_names) if input_names is not None else tuple(f"input_{i}" for i in range(len(inputs)))
        names_out = tuple(f"output_{i}" for i in range(len(reference)))
        if len(names_in) != len(inputs):
            raise PrunekitError(f"{len(names_in)} input names for {len(inputs)} inputs")
        dynamic = {n: {0: "batch"} for n in names_in + names_out} if dynamic_batch else None
        try:
            with atomic_path(path) as tmp:
                with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is legacy
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, inputs, tmp, dynamo=False, opset_version=opset,
                                      input_names=list(names_in), output_names=list(names_out), dynamic_axes=dynamic)
                err = _check(tmp, inputs, names_in, reference, rtol, atol) if check else None
        except BaseException as e:
            if isinstance(e, PrunekitError) or not isinstance(e, Exception):
                raise
            raise PrunekitError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    return OnnxExport(str(path), path.stat().st_size, opset, names_in, names_out, err)


def _check(file: str, inputs: tuple[torch.Tensor, ...], names: tuple[str, ...], reference: list[torch.Tensor],
           rtol: float, atol: float) -> float:
    got = _session(file, threads=None).run(None, {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)})
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
            raise PrunekitError(f"ONNX Runtime's output {i} differs from PyTorch's by up to {float(diff.max()):.3g} "
                                f"(allowed: atol {atol} x max|output| + rtol {rtol} x |output|)")
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

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise PrunekitError(f"the ONNX model takes {len(self.input_names)} inputs, got {len(inputs)}")
        feed = {n: x.detach().cpu().contiguous().numpy() for n, x in zip(self.input_names, inputs)}
        out = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return out[0] if len(out) == 1 else out
