"""The correctness oracle: zeroing a plan's slices (soft) and removing them (hard) must agree.

Two entry points:

* :func:`soft_hard_error` replays a plan on two copies of a model and compares them (a test
  oracle: the model passed in is not changed).
* :func:`zeroed_outputs` + :func:`output_error` verify the model a user gets back, without a
  copy: the plan's slices are zeroed in place, the model is run, the slices are restored bit
  for bit; after the hard apply the pruned model's outputs must match those (exact plans) and
  be finite (every plan). :func:`first_divergence` names the first module whose output differs.

NaN or inf where the reference is finite (or any NaN) counts as an infinite error: a NaN never
wins a ``max()``, so it must be looked for.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .graph.tracer import as_inputs, iter_tensors
from .graph.walk import Walk, eval_mode, walk
from .plan import Plan, ZeroedSlices, apply_plan


def tolerance(outputs: Sequence[torch.Tensor], rtol: float = 1e-4) -> float:
    """``rtol`` for float32/float64 outputs; 1e-2 when any output is half precision."""
    low = any(t.dtype in (torch.float16, torch.bfloat16) for t in outputs)
    return max(rtol, 1e-2) if low else rtol


def output_error(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """Largest relative difference (``max|a - b| / max|a|``) over matching floating outputs.

    ``inf`` when either side holds a NaN, or an inf that the other side does not have at the same
    place with the same sign. Integer outputs must be equal (else ``inf``). Raises ``AssertionError``
    when the two differ in number or shape of tensors (that is a broken model, not a tolerance)."""
    if len(reference) != len(outputs):
        raise AssertionError(f"reference has {len(reference)} output tensors, the model returned {len(outputs)}")
    worst = 0.0
    for a, b in zip(reference, outputs):
        if a.shape != b.shape:
            raise AssertionError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if not (a.is_floating_point() or a.is_complex()):
            if not torch.equal(a, b.to(a.dtype)):
                return math.inf
            continue
        a, b = a.detach().double(), b.detach().double()
        if a.isnan().any() or b.isnan().any():
            return math.inf
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        if not torch.equal(fa, fb) or not torch.equal(a[~fa], b[~fb]):
            return math.inf
        if not fa.any():
            continue
        scale = a[fa].abs().max().clamp_min(1e-12)
        worst = max(worst, float((a[fa] - b[fa]).abs().max() / scale))
    return worst


def _run(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any], walked: Walk | None = None) -> list[torch.Tensor]:
    with torch.no_grad(), eval_mode(walked.modules.values() if walked is not None else model.modules()):
        return [t.detach().clone() for t in iter_tensors(model(*inputs, **dict(kwargs)))]


class NotVerifiable(Exception):
    """The norm-aware reference cannot be built for this model (e.g. a multi-dim normalized shape)."""


class NormAware(TorchFunctionMode):
    """During the zeroed reference run, every ``layer_norm`` / ``rms_norm`` whose weight loses indices in
    the plan normalizes over the *kept* indices only (and gives 0 at the removed ones): what the pruned
    model computes. With it, a plan that is approximate only because of such norms has an exact
    reference too."""

    def __init__(self, model: nn.Module, plan: Plan, walked: Walk | None = None) -> None:
        super().__init__()
        params = (walked if walked is not None else walk(model)).params
        self.removed = {id(params[n]): dims[0] for n, dims in plan.removed.items()
                        if n in params and 0 in dims and params[n].dim() == 1}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("layer_norm", "rms_norm"):
            names = ("input", "normalized_shape", "weight", "bias", "eps") if name == "layer_norm" else \
                ("input", "normalized_shape", "weight", "eps")
            a = dict(zip(names, args))
            a.update(kwargs)
            w = a.get("weight")
            gone = self.removed.get(id(w)) if isinstance(w, torch.Tensor) else None
            if gone:
                shape = a["normalized_shape"]
                if len(tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)) != 1:
                    raise NotVerifiable(f"{name} over {tuple(shape)} dims")
                x = a["input"]
                keep = torch.ones(x.shape[-1], dtype=torch.bool, device=x.device)
                keep[torch.tensor(gone, device=x.device)] = False
                out = torch.zeros_like(x)
                extra = {k: a[k] for k in ("eps",) if a.get(k) is not None}
                b = a.get("bias")
                if name == "layer_norm":
                    out[..., keep] = F.layer_norm(x[..., keep], (int(keep.sum()),), w[keep],
                                                  b[keep] if b is not None else None, **extra)
                else:
                    out[..., keep] = F.rms_norm(x[..., keep], (int(keep.sum()),), w[keep], **extra)
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def reference(model: nn.Module, plan: Plan, norm_aware: bool = False, walked: Walk | None = None) -> Iterator[None]:
    """The model as the pruned one should compute: the plan's slices zeroed in place (and, with
    ``norm_aware``, norms over the kept indices only); restored bit for bit afterwards. ``walked``:
    the model's :func:`~prunekit.graph.walk.walk`, if the caller has it."""
    w = walked if walked is not None else walk(model)
    with ZeroedSlices({**w.buffers, **w.params}, plan), \
            (NormAware(model, plan, w) if norm_aware else contextlib.nullcontext()):
        yield


def zeroed_outputs(model: nn.Module, plan: Plan, example_inputs: Any,
                   example_kwargs: Mapping[str, Any] | None = None, norm_aware: bool = False,
                   walked: Walk | None = None) -> list[torch.Tensor]:
    """Outputs of ``model`` (eval mode) with the plan's slices zeroed; the model is unchanged after.
    ``norm_aware``: norms losing indices normalize over the kept ones (see :class:`NormAware`); raises
    :class:`NotVerifiable` where that reference cannot be built."""
    with reference(model, plan, norm_aware, walked):
        return _run(model, as_inputs(example_inputs), example_kwargs or {}, walked)


def module_outputs(model: nn.Module, example_inputs: Any,
                   example_kwargs: Mapping[str, Any] | None = None) -> list[tuple[str, list[torch.Tensor]]]:
    """Every module call's output tensors (cloned), in completion order, as ``(path, tensors)``."""
    rec: list[tuple[str, list[torch.Tensor]]] = []
    handles = []
    for path, mod in model.named_modules():
        def hook(m, a, o, path=path):
            rec.append((path, [t.detach().clone() for t in iter_tensors(o) if isinstance(t, torch.Tensor)]))
        handles.append(mod.register_forward_hook(hook))
    try:
        _run(model, as_inputs(example_inputs), example_kwargs or {})
    finally:
        for h in handles:
            h.remove()
    return rec


def _matches_with_removed(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Does ``b`` equal ``a`` with some indices of the one dim where their sizes differ removed (in order)?"""
    diff = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
    if len(diff) != 1 or b.shape[diff[0]] > a.shape[diff[0]]:
        return False
    d = diff[0]
    a2 = a.detach().double().movedim(d, 0).reshape(a.shape[d], -1)  # (size_d, rest)
    b2 = b.detach().double().movedim(d, 0).reshape(b.shape[d], -1)  # (kept, rest)
    if not (torch.isfinite(a2).all() and torch.isfinite(b2).all()):
        return False
    scale = float(a2.abs().max().clamp_min(1e-12))
    i = 0
    for j in range(b2.shape[0]):
        while i < a2.shape[0] and float((a2[i] - b2[j]).abs().max()) > tol * scale:
            i += 1
        if i == a2.shape[0]:
            return False
        i += 1
    return True


def first_divergence(reference: list[tuple[str, list[torch.Tensor]]],
                     pruned: list[tuple[str, list[torch.Tensor]]], tol: float = 1e-4) -> str | None:
    """The first module call (in completion order, so the innermost first) whose pruned output
    differs from the reference's: a NaN/inf, a value off by more than ``tol`` relative, or, where
    a dim shrank, values that are not the reference's with some indices of that dim removed."""
    for (path, ref), (path2, out) in zip(reference, pruned):
        if path != path2 or len(ref) != len(out):
            return f"{path or '<root>'} (the module calls no longer line up)"
        for a, b in zip(ref, out):
            if not (a.is_floating_point() and b.is_floating_point()):
                continue
            if a.shape == b.shape:
                bad = output_error([a], [b]) > tol
            else:
                bad = not _matches_with_removed(a, b, tol)
            if bad:
                return path or "<root>"
    return None


def soft_hard_error(model: nn.Module, plan: Plan, example_inputs: Any,
                    example_kwargs: Mapping[str, Any] | None = None) -> float:
    """Max relative difference between the soft- and hard-applied copies of ``model`` (eval mode).

    For a plan of *exact* groups (``plan.exact``) this is ~1e-7: removal is exactly equivalent to
    zeroing. NaN or a misplaced inf in either is ``inf``. ``model`` itself is not changed.
    """
    inputs = as_inputs(example_inputs)
    soft = apply_plan(copy.deepcopy(model), plan, "soft")
    hard = apply_plan(copy.deepcopy(model), plan, "hard")
    return output_error(_run(soft, inputs, example_kwargs or {}), _run(hard, inputs, example_kwargs or {}))
