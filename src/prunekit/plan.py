"""Plans: what to remove, as plain data; applying one soft (zero) or hard (remove), all-or-nothing.

A :class:`Plan` names tensors by their ``state_dict`` keys, so it serializes to JSON and
replays on a fresh instance of the same architecture (no pickles, no tracing needed):

>>> plan = Plan.load("resnet18.plan.json")        # doctest: +SKIP
>>> model = torchvision.models.resnet18()          # doctest: +SKIP
>>> apply_plan(model, plan)                        # doctest: +SKIP
>>> model.load_state_dict(safetensors.torch.load_file("resnet18.pruned.safetensors"))  # doctest: +SKIP
"""
from __future__ import annotations

import functools

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from . import compat
from . import plan_schema
from .errors import ApplyError, CounterConflict, PlanError, PrunekitError, VerificationError
from .graph.execute import counting
from .graph.groups import Group, Resolver, index_renumbering, scale_folds
from .graph.rules.indexing import renumber_index
from .graph.tracer import as_inputs
from .graph.walk import Walk, failing_module, recursion_headroom, walk
from .io.atomic import write_text
from .layers import update_module
from .measure.counting import MacCounter
from .optimizer_state import state_updates

PLAN_VERSION = 1


@dataclass
class Plan:
    """Removed indices per tensor and dim, plus module attributes to rewrite."""

    removed: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    attrs: list[tuple[str, str, int]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    exact: bool = True
    version: int = PLAN_VERSION
    # index buffers (``x[:, perm]``) -> the values removed from the dim they index: a hard apply drops the
    # positions holding them and renumbers the rest; a soft apply leaves the buffer as it is
    renumber: dict[str, list[int]] = field(default_factory=dict)
    # approximate only because 1-d layer/RMS norms run over pruned dims: verifiable against the zeroed model
    # whose norms run over the kept indices (verify.norm_aware)
    norm_only: bool = False
    # (tensor, dim, indices, factor): a hard apply multiplies these slices (original numbering) by factor first;
    # an attention's query rows when its head width shrinks under a default softmax scale (graph.labels.ScaleFold)
    rescale: list[tuple[str, int, list[int], float]] = field(default_factory=list)
    # the fingerprint: name -> shape of every parameter and buffer of the model the plan was made for
    # (empty for a plan built by hand); a model that differs is refused (plan_schema.check_model)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    # SHA-256 of the content when prunekit made the plan (plan_schema.digest); None: not sealed
    digest: str | None = None

    def seal(self) -> "Plan":
        """Record the digest of the plan's current content (prunekit seals the plans it makes; re-seal
        a plan you edited on purpose). Returns the plan."""
        self.digest = plan_schema.digest(self)
        return self

    def is_empty(self) -> bool:
        return not self.removed

    # -- serialization ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed"] = {n: {str(k): v for k, v in dims.items()} for n, dims in self.removed.items()}
        d["attrs"] = [list(a) for a in self.attrs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        """A plan from its JSON form, checked against the schema (``PlanError`` names the field) and,
        when it carries one, its digest."""
        if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
            got = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise PlanError(f"unsupported plan version {got!r} (expected {PLAN_VERSION})")
        plan = cls(version=PLAN_VERSION, **plan_schema.parse(d))
        plan_schema.check_digest(plan)
        return plan

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"the plan is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a failed save leaves no half-written file (and an existing file keeps its mode)."""
        write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        with open(path) as f:
            return cls.from_json(f.read())


def make_plan(graph, units: Iterable[int], groups: Iterable[Group] = ()) -> Plan:
    """Resolve a set of unit roots (from ``Group.units``) into a :class:`Plan`."""
    res: Resolver = getattr(graph, "_resolver", None) or Resolver(graph.store)
    from .graph.groups import InvalidRemoval

    try:
        closure = res.closure(units)
    except InvalidRemoval as exc:
        raise PlanError(f"these units cannot be removed together: {exc}") from None
    removed: dict[str, dict[int, list[int]]] = {}
    for (name, dim), idx in res.slices(closure).items():
        if len(idx) >= graph.shapes[name][dim]:
            raise PlanError(f"plan would remove every index of {name} dim {dim}")
        removed.setdefault(name, {})[dim] = idx
    values: dict[tuple[str, str], int] = {}
    gone = np.zeros(len(res.root), dtype=bool)
    gone[np.fromiter(closure, dtype=np.int64, count=len(closure))] = True
    for c in graph.store.counters:
        roots = res.root[c.labels]
        kept = int((~gone[roots]).sum())
        if kept == len(roots):
            continue
        key = (c.module, c.attr)
        value = kept * c.scale
        if key in values and values[key] != value:
            roots_of = frozenset(int(r) for k in graph.store.counters if (k.module, k.attr) == key
                                 for r in np.unique(res.root[k.labels]).tolist())
            raise CounterConflict(f"{c.module}.{c.attr} would need two values ({values[key]} and {value}); "
                                  "prune the coupled groups by the same amount", c.module, c.attr, roots_of)
        values[key] = value
    attrs = sorted((m, a, v) for (m, a), v in values.items())
    exact = not (closure & res.inexact)
    norm_only = not exact and not (closure & res.inexact_other)
    return Plan(removed, attrs, [dict(g) for g in groups], exact, renumber=index_renumbering(res, closure),
                norm_only=norm_only, rescale=scale_folds(graph.store, res, gone),
                shapes={n: list(s) for n, s in graph.shapes.items()}).seal()


# -- applying -------------------------------------------------------------------------

def _tensor_slots(walked: Walk, names: Iterable[str]) -> dict[str, list[tuple[nn.Module, str, bool]]]:
    """state_dict-style name -> every (module, key, is_param) slot holding that tensor (tied weights), for
    ``names`` (parameters or buffers of ``walked``): one pass over the modules, looking up only those tensors."""
    of: dict[str, torch.Tensor] = {}
    for name in names:
        t = walked.params.get(name)
        of[name] = t if t is not None else walked.buffers[name]
    by_id: dict[int, list[tuple[nn.Module, str, bool]]] = {id(t): [] for t in of.values()}
    for mod in walked.modules.values():
        params, buffers, _ = compat.module_slots(mod)
        for key, p in params.items():
            held = by_id.get(id(p)) if p is not None else None
            if held is not None:
                held.append((mod, key, True))
        for key, b in buffers.items():
            held = by_id.get(id(b)) if b is not None else None
            if held is not None:
                held.append((mod, key, False))
    return {name: by_id[id(t)] for name, t in of.items()}


def _integer_types(types: set[type]) -> bool:
    """Are these (the types of a list's items) all integer types: ``int`` or numpy integers, not ``bool``?"""
    return all(t is int or (t is not bool and issubclass(t, (int, np.integer))) for t in types)


def _validate(model: nn.Module, plan: Plan, walked: Walk) -> dict[str, torch.Tensor]:
    tensors = dict(walked.params)
    tensors.update({n: b for n, b in walked.buffers.items() if n not in tensors})
    plan_schema.check_model(plan, model, tensors)
    bounds: dict[tuple, tuple[Any, Any]] = {}  # index list -> (min, max): coupled tensors lose equal lists
    for name, dims in plan.removed.items():
        t = tensors.get(name)
        if t is None:
            raise PlanError(f"plan names {name!r}, which {type(model).__name__} does not have")
        ndim = t.dim()
        for dim, idx in dims.items():
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
                raise PlanError(f"plan removes dim {dim!r} of {name}; dims are non-negative integers")
            if not _integer_types(set(map(type, idx))):  # the types seen, not every index (a plan holds many)
                raise PlanError(f"plan removes non-integer indices from {name} dim {dim}")
            if dim >= ndim:
                raise PlanError(f"plan removes dim {dim} of {name}, which has shape {tuple(t.shape)}")
            size = t.shape[dim]
            if idx:
                key = tuple(idx)  # integers only (checked above): equal tuples have equal bounds
                lo_hi = bounds.get(key)
                if lo_hi is None:
                    lo_hi = bounds[key] = (min(key), max(key))
                if lo_hi[0] < 0 or lo_hi[1] >= size:
                    raise PlanError(f"plan removes index out of range from {name} dim {dim} (size {size})")
            if len(idx) >= size and len(set(idx)) >= size:  # fewer indices: some are kept
                raise PlanError(f"plan removes every index of {name} dim {dim}")
    for name, dim, idx, factor in plan.rescale:
        t = tensors.get(name)
        if t is None or not 0 <= dim < t.dim() or any(not 0 <= i < t.shape[dim] for i in idx) \
                or not (math.isfinite(factor) and factor > 0):
            raise PlanError(f"plan rescales {name!r} dim {dim} by {factor}, which does not fit {type(model).__name__}")
    for name, values in plan.renumber.items():
        buf = walked.buffers.get(name)
        if buf is None or buf.dim() != 1 or buf.is_floating_point():
            raise PlanError(f"plan renumbers {name!r}, which is not a 1-d integer buffer of {type(model).__name__}")
        if name in plan.removed:
            raise PlanError(f"plan both slices and renumbers {name!r}")
        if any(not isinstance(v, int) or v < 0 for v in values):
            raise PlanError(f"plan renumbers {name!r} with values that are not non-negative integers")
    plan_schema.check_attrs(plan, walked.modules)
    return tensors


def _apply_plan(model: nn.Module, plan: Plan, mode: str = "hard",
               check: Callable[[nn.Module], None] | None = None, *, example_inputs: Any = None,
               example_kwargs: Mapping[str, Any] | None = None, verify: bool | None = None,
               rtol: float = 1e-4, report: dict[str, Any] | None = None,
               counter: MacCounter | None = None, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
    """Apply ``plan`` to ``model`` in place and return it.

    ``mode="hard"`` removes the slices (a smaller, ordinary dense model); ``mode="soft"``
    zeroes them in place (same shapes; for checking and masks). All-or-nothing: if anything
    fails -- the optional ``check(model)``, the verification, an interrupt -- the model is
    restored exactly (an interrupt is re-raised after the restore).

    With ``example_inputs`` (and ``example_kwargs``) the result is verified on them (``verify``
    defaults to True then): every output must be finite and, for an exact plan applied hard,
    equal within ``rtol`` (relative to the largest output) to the model's outputs with the removed
    slices zeroed, computed in place before the apply without copying the model. A failure raises
    :class:`~prunekit.errors.VerificationError` naming the first module whose output diverged.
    No parameter or buffer may end on the ``meta`` device. ``report`` (a dict), if given, receives
    what was verified: ``checked`` ("exact" or "finite"), ``error`` and ``tolerance``, and the
    verified outputs' ``output_shapes``. With ``counter`` (a :class:`~prunekit.measure.counting.MacCounter`)
    the verification forward of the applied model counts its MACs into it (per torch function, see
    :func:`~prunekit.graph.execute.counting`: the same count as running under the counter, cheaper), so
    one forward both verifies the model and counts its MACs; ``check`` runs after that forward.

    Parameters keep their identity: a hard apply replaces the ``.data`` (and slices the ``.grad``) of
    the same ``nn.Parameter`` objects, so optimizers and tensor hooks still hold the model's parameters.
    With ``optimizer`` (a ``torch.optim.Optimizer`` over the model's parameters), its per-parameter
    state tensors (SGD momentum, Adam moments) lose the same slices (``mode="soft"``: are zeroed there)
    within the same all-or-nothing step; state that cannot be sliced raises
    :class:`~prunekit.errors.OptimizerStateError` before anything changes. Without it, an optimizer
    that already holds state for a pruned parameter keeps the old shapes, and its next ``step()``
    fails on a size mismatch: pass it here, or build a new one.
    """
    if mode not in ("hard", "soft"):
        raise ValueError(f"mode must be 'hard' or 'soft', not {mode!r}")
    if verify is None:
        verify = example_inputs is not None or example_kwargs is not None
    if verify and example_inputs is None and example_kwargs is None:
        raise ValueError("verify=True needs example_inputs (and/or example_kwargs) to run the model on")
    walked = walk(model)
    tensors = _validate(model, plan, walked)
    opt_updates = () if optimizer is None else state_updates(
        optimizer, plan.removed, walked.params, mode, {name for name, *_ in plan.rescale})
    was_meta = {id(t) for t in tensors.values() if t.is_meta}
    inputs = () if example_inputs is None else as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    checks: list[Callable[[nn.Module], None]] = [lambda m: _no_meta(walked, was_meta)]
    failure: dict[str, Any] = {}
    if verify:
        from . import verify as V

        reference = None
        norm_aware = not plan.exact
        if mode == "hard" and (plan.exact or plan.norm_only):
            try:
                reference = V.zeroed_outputs(model, plan, inputs, kwargs, norm_aware=norm_aware, walked=walked)
            except V.NotVerifiable:
                reference = None  # finite outputs are what can be asked

        def numeric(m: nn.Module) -> None:
            with counting(counter) if counter is not None else contextlib.nullcontext():
                out = V._run(m, inputs, kwargs, walked)  # the same module objects after the apply
            if reference is not None:
                err = V.output_error(reference, out)
                tol = V.tolerance(out, rtol)
            else:  # approximate plan (or soft): finiteness is what can be asked
                err = 0.0 if all(torch.isfinite(t).all() for t in out if t.is_floating_point()) else float("inf")
                tol = rtol
            if report is not None:
                checked = "finite" if reference is None else "exact" if plan.exact else "exact-norm-aware"
                report.update(checked=checked, error=err, tolerance=tol,
                              output_shapes=[tuple(t.shape) for t in out])
            if not err <= tol:
                failure.update(error=err, tol=tol, pruned=V.module_outputs(m, inputs, kwargs))
                raise VerificationError(f"outputs differ from the zeroed model by {err:.3g} (tolerance {tol:.0e})"
                                        if math.isfinite(err) else "outputs are not finite (NaN or inf)", err)
        checks.append(numeric)
    if check is not None:  # after the verification forward, whose outputs (and MACs) it may read
        checks.append(check)

    def run_checks(m: nn.Module) -> None:
        for c in checks:
            try:
                c(m)
            except (PrunekitError, AssertionError):
                raise
            except Exception as exc:  # name the module whose forward failed (e.g. a size mismatch)
                path = failing_module(m, exc.__traceback__)
                if path is None:
                    raise
                where = f"in module `{path or '<root>'}` ({type(_module(m, path)).__name__})"
                raise RuntimeError(f"{where}: {type(exc).__name__}: {exc}") from exc

    try:
        if mode == "soft":
            return _apply_soft(model, plan, tensors, run_checks, opt_updates)
        slots = _tensor_slots(walked, [*plan.removed, *(n for n, *_ in plan.rescale if n not in plan.removed),
                                               *plan.renumber])
        return _apply_hard(model, plan, tensors, slots, walked.modules, run_checks, opt_updates)
    except ApplyError as exc:
        if not failure:
            raise
        from . import verify as V

        with V.reference(model, plan, norm_aware, walked):  # the model is restored: its zeroed run is the reference
            ref_modules = V.module_outputs(model, inputs, kwargs)
        where = V.first_divergence(ref_modules, failure["pruned"], failure["tol"]) if mode == "hard" else None
        err = failure["error"]
        msg = (f"verification failed, the model was restored: "
               f"{'outputs not finite (NaN or inf)' if not math.isfinite(err) else f'relative error {err:.3g}'}"
               f"{f'; first diverging module: {where}' if where else ''}")
        raise VerificationError(msg, err, where) from exc.__cause__


def _split_attr(attr: str) -> tuple[str, int | None]:
    """``"shape[0]"`` -> ``("shape", 0)``; ``"num_heads"`` -> ``("num_heads", None)``."""
    if attr.endswith("]") and "[" in attr:
        base, _, index = attr[:-1].partition("[")
        return base, int(index)
    return attr, None


def _module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path) if path else model


def _no_meta(walked: Walk, was_meta: set[int]) -> None:
    """No parameter or buffer in any module slot of the walked model may be left on the meta device
    by an apply (unless it was before); the module objects are the same after an apply."""
    for path, mod in walked.modules.items():
        params, buffers, _ = compat.module_slots(mod)
        if not any(t is not None and t.is_meta for t in (*params.values(), *buffers.values())):
            continue  # the common case: one pass over the slots, names only for a failure
        for slots in (params, buffers):
            for key, t in slots.items():
                if t is not None and t.is_meta and id(t) not in was_meta:
                    raise ApplyError(f"{path + '.' if path else ''}{key} is on the meta device after the apply")


class ZeroedSlices:
    """A plan's slices of ``tensors`` (state_dict names -> tensors) zeroed in place by :meth:`zero`
    and put back bit for bit by :meth:`restore`; only the removed slices are saved, so no copy of
    the model is made. As a context manager: zeroed for the block, restored after."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], plan: Plan) -> None:
        self.tensors, self.plan = tensors, plan
        self.saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def zero(self) -> None:
        index_of: dict[tuple[int, ...], torch.Tensor] = {}  # coupled tensors share index lists: one tensor each
        with torch.no_grad():
            for name, dims in self.plan.removed.items():
                t = self.tensors[name]
                for dim, idx in dims.items():
                    key = tuple(idx)
                    index = index_of.get(key)
                    if index is None:
                        index = index_of[key] = torch.from_numpy(np.asarray(idx, dtype=np.int64))
                    if index.device != t.device:
                        index = index.to(t.device)
                    self.saved.append((t, dim, index, t.index_select(dim, index)))  # a new tensor: a copy
            for t, dim, index, _ in self.saved:  # every slice saved before any is zeroed
                t.index_fill_(dim, index, 0)

    def restore(self) -> None:
        with torch.no_grad():
            for t, dim, index, old in reversed(self.saved):
                t.index_copy_(dim, index, old)
        self.saved.clear()

    def __enter__(self) -> "ZeroedSlices":
        self.zero()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _apply_soft(model, plan, tensors, check, opt_updates=()):
    zeroed = ZeroedSlices(tensors, plan)
    undo: list[tuple[dict, str, Any]] = []
    try:
        zeroed.zero()
        for state, key, value in opt_updates:  # the optimizer's state: the same slices zeroed
            undo.append((state, key, state[key]))
            state[key] = value
        if check is not None:
            check(model)
    except BaseException as exc:
        for state, key, old in reversed(undo):
            state[key] = old
        zeroed.restore()
        if not isinstance(exc, Exception):
            raise  # an interrupt: restored, and passed on as it was
        raise ApplyError(f"soft apply failed and was rolled back: {exc}") from exc
    return model


class _Slicer:
    """``remove_indices`` for the many tensors of one plan: the kept-index tensor of each (size, removed
    indices, device) is built once and shared by the coupled tensors that lose the same indices (a plan's
    conv weight, bias and norm entries of one group), instead of once per tensor and dim."""

    def __init__(self) -> None:
        self._kept: dict[tuple, torch.Tensor] = {}

    def kept(self, size: int, idx: list[int], device: torch.device) -> torch.Tensor:
        key = (size, tuple(idx), device)
        index = self._kept.get(key)
        if index is None:
            keep = np.ones(size, dtype=bool)
            keep[np.asarray(idx, dtype=np.int64)] = False
            index = self._kept[key] = torch.from_numpy(np.flatnonzero(keep)).to(device)
        return index

    def remove(self, t: torch.Tensor, dims: Mapping[int, list[int]]) -> torch.Tensor:
        """``t`` without the given indices along each dim (a new tensor; ``t`` is unchanged)."""
        if len(dims) == 1:  # most tensors lose indices along one dim
            for dim, idx in dims.items():
                return t.index_select(dim, self.kept(t.shape[dim], idx, t.device))
        for dim, idx in sorted(dims.items()):
            t = t.index_select(dim, self.kept(t.shape[dim], idx, t.device))
        return t


def _is_param(t: Any) -> bool:
    """``isinstance(t, nn.Parameter)``, without the metaclass's Python ``__instancecheck__`` for the common exact type."""
    return type(t) is nn.Parameter or isinstance(t, nn.Parameter)


_SLOT_DICTS = ("_parameters", "_buffers", "_modules")


def _apply_hard(model, plan, tensors, slots, modules, check, opt_updates=()):
    """Remove the plan's slices. Parameters keep their identity (the same ``nn.Parameter`` objects, so
    optimizers and tensor hooks still hold them): their ``.data`` (and ``.grad``, sliced alike) is
    replaced; buffers are replaced in their modules. On any failure everything is put back."""
    new: dict[str, torch.Tensor] = {}
    scaled: dict[str, list[tuple[int, list[int], float]]] = {}
    for name, dim, idx, factor in plan.rescale:
        scaled.setdefault(name, []).append((dim, idx, factor))
    grads: dict[str, torch.Tensor] = {}
    params: set[str] = set()  # the names whose tensor is an nn.Parameter
    slicer = _Slicer()
    removed = plan.removed
    with torch.no_grad():
        for name in [*removed, *(n for n in scaled if n not in removed)]:
            dims = removed.get(name)
            if dims is None:
                dims = {}
            src = tensors[name]
            t = src.detach()
            for dim, idx, factor in scaled.get(name, ()):  # on a copy: the original stays for a restore
                index = torch.tensor(idx, dtype=torch.long, device=t.device)
                t = t.index_copy(dim, index, t.index_select(dim, index) * factor)
            new[name] = slicer.remove(t, dims).contiguous() if dims else t.contiguous()
            if not _is_param(src):
                continue
            params.add(name)
            grad = src.grad
            if grad is not None:
                if name in scaled:  # d(loss)/d(w * f) = grad / f on the rescaled slices
                    for dim, idx, factor in scaled[name]:
                        index = torch.tensor(idx, dtype=torch.long, device=grad.device)
                        grad = grad.index_copy(dim, index, grad.index_select(dim, index) / factor)
                grads[name] = slicer.remove(grad, dims).contiguous() if dims else grad.contiguous()
    undo: list[tuple[Any, str, Any, str]] = []  # (container, key, old, kind)
    touched: set[str] = set()
    try:
        for name, t in new.items():
            old = tensors[name]
            if name in params:  # one object, however many modules hold it (tied weights)
                grad = old.grad
                undo.append((old, "grad", grad, "grad"))
                undo.append((old, "data", old.data, "data"))
                if grad is not None:
                    old.grad = None  # its old shape would not match the new data
                old.data = t
                grad = grads.get(name)
                if grad is not None:
                    old.grad = grad
            for mod, key, is_param in slots[name]:
                if not is_param:
                    buffers = compat.module_slots(mod)[1]
                    undo.append((buffers, key, old, "dict"))
                    buffers[key] = t
            cut = name.rfind(".")
            touched.add(name[:cut] if cut >= 0 else "")
        for name, values in plan.renumber.items():  # index buffers: positions dropped, values renumbered
            old = tensors[name]
            fresh = renumber_index(old, values)
            for mod, key, _ in slots[name]:
                undo.append((compat.module_slots(mod)[1], key, old, "dict"))
                compat.module_slots(mod)[1][key] = fresh
        for mod_path, attr, value in plan.attrs:
            mod = modules[mod_path]
            base, index = _split_attr(attr)
            old = getattr(mod, base)
            undo.append((mod, base, old, "attr"))
            if index is not None:  # one element of a tuple attribute, e.g. a stored view shape
                items = list(old)
                items[index] = value
                value = type(old)(items)
            setattr(mod, base, value)
            touched.add(mod_path)
        for path in sorted(touched):
            mod = modules.get(path)
            if mod is not None:
                attrs = vars(mod)
                before = dict(attrs)
                update_module(mod)
                for k, v in before.items():
                    if attrs.get(k) is not v and k not in _SLOT_DICTS:
                        undo.append((mod, k, v, "attr"))
        for state, key, value in opt_updates:  # the optimizer's state, sliced like its parameters
            undo.append((state, key, state[key], "dict"))
            state[key] = value
        if check is not None:
            check(model)
    except BaseException as exc:
        for container, key, old, kind in reversed(undo):
            if kind == "dict":
                container[key] = old
            elif kind == "data":
                container.data = old
            elif kind == "grad":
                container.grad = None  # shapes change with the data: clear first, then put back
                container.grad = old
            else:
                setattr(container, key, old)
        for path in touched:
            mod = modules.get(path)
            if isinstance(mod, nn.RNNBase):
                compat.refresh_rnn_flat_weights(mod)
        if not isinstance(exc, Exception):
            raise  # an interrupt: restored, and passed on as it was
        raise ApplyError(f"hard apply failed and the model was restored: {type(exc).__name__}: {exc}") from exc
    return model


@functools.wraps(_apply_plan)
def apply_plan(model: nn.Module, *args: Any, **kwargs: Any):
    with recursion_headroom(model):  # a deeply nested model that runs plainly runs here too
        return _apply_plan(model, *args, **kwargs)
