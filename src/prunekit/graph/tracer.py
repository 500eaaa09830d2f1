"""Trace a model into a dependency graph of prunable dimensions.

Technique: we run the model eagerly once under a ``TorchFunctionMode`` and let every
torch-level call (``F.conv2d``, ``torch.cat``, ``Tensor.view``, ``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward``, ``_VF.lstm`` ...) couple the labels of its inputs and
outputs through a registered rule. We chose this over torch.export / FX / the autograd graph
because it covers the most models: it needs no symbolic tracing (data-dependent Python
control flow, Hugging Face models, ``*args/**kwargs`` forwards and dataclass outputs just
run), it sees parameters by identity even when used outside their module (tied weights,
``class_token``, relative-position tables, functional ``F.linear``), and it sees ops at
the level where their semantics are known (one ``conv2d`` with ``groups``; one
``scaled_dot_product_attention`` with ``enable_gqa``) rather than decomposed ATen ops or
autograd nodes that lose attributes. Forward hooks only track the module path for messages.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedOpError
from ..measure.counting import MacCounter
from .info import TensorInfo
from .walk import Walk, eval_mode, walk
from .labels import LabelStore
from .registry import NEUTRAL_OPS, OP_RULES, op_name
from . import rules  # noqa: F401  (registers the op rules)


def iter_tensors(obj: Any, depth: int = 0) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclasses (e.g. HF ModelOutput)."""
    return iter(tensors_in(obj, depth))


_ATOMS = (int, float, bool, str, type(None), torch.dtype, torch.device, slice, type(Ellipsis))


def tensors_in(obj: Any, depth: int = 0, out: list | None = None) -> list[torch.Tensor]:
    """:func:`iter_tensors` as a list (the tracer calls it for every op's inputs and outputs)."""
    out = [] if out is None else out
    if depth > 6 or type(obj) in _ATOMS:
        return out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif type(obj) in (tuple, list):
        for o in obj:
            if isinstance(o, torch.Tensor):
                out.append(o)
            elif type(o) not in _ATOMS:
                tensors_in(o, depth + 1, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            tensors_in(o, depth + 1, out)
    elif isinstance(obj, (list, tuple)):  # subclasses (named tuples, torch.Size ...)
        for o in obj:
            tensors_in(o, depth + 1, out)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            tensors_in(o, depth + 1, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            tensors_in(getattr(obj, f.name, None), depth + 1, out)
    return out


@dataclass
class Unsupported:
    """An op the tracer could not prune through; its labels were pinned."""

    op: str
    module: str
    reason: str

    def __str__(self) -> str:
        where = self.module or "<top-level forward>"
        return f"op `{self.op}` in module `{where}`: {self.reason}"


@dataclass
class DependencyGraph:
    """The result of :func:`trace`: label store plus names, for building groups."""

    store: LabelStore
    param_names: list[str]
    buffer_names: list[str]
    shapes: dict[str, tuple[int, ...]]
    unsupported: list[Unsupported] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    sites: list["Site"] = field(default_factory=list)  # activation/norm/linear outputs, in call order

    def groups(self, kinds: Iterable[str] | None = None):
        from .groups import build_groups

        return build_groups(self, kinds)


# Ops whose outputs are *sites* for activation statistics, and the kind of each site.
SITE_KINDS: dict[str, str] = {
    **{n: "activation" for n in ("relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_", "gelu", "silu",
                                 "silu_", "hardswish", "hardswish_", "leaky_relu", "leaky_relu_", "elu", "elu_",
                                 "selu", "selu_", "mish", "celu", "softplus", "prelu", "sigmoid", "tanh")},
    **{n: "norm" for n in ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm")},
    **{n: "linear" for n in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                             "conv_transpose3d", "matmul", "addmm")},
}


@dataclass
class Site:
    """One call of a site op in trace order: its kind, op, module path, and the labels of its
    output's prunable dims (``dim -> labels``; empty if none)."""

    kind: str
    op: str
    module: str
    labels: dict[int, np.ndarray]


class Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, store: LabelStore, tensors: Mapping[str, torch.Tensor] | None = None,
                 walked: Walk | None = None):
        super().__init__()
        walked = walked if walked is not None else walk(model)
        self.store = store
        self.names: dict[int, str] = {}
        if tensors is not None:  # stand-ins (meta tensors) used instead of the model's own
            for n, t in tensors.items():
                self.names.setdefault(id(t), n)
        for n, p in walked.params.items():
            self.names.setdefault(id(p), n)
        for n, b in walked.buffers.items():
            self.names.setdefault(id(b), n)
        self.infos: dict[int, TensorInfo] = {}
        self._alive: dict[int, torch.Tensor] = {}
        self.modules: dict[str, nn.Module] = walked.modules
        self.module_stack: list[str] = [""]
        self.unsupported: list[Unsupported] = []
        self.size_sources: dict[int, list[np.ndarray]] = {}
        self.sites: list[Site] = []
        self.execute: Callable[[Any, tuple, dict], Any] = _call  # meta_forward swaps in the shape-only executor

    def current_module(self) -> nn.Module | None:
        return self.modules.get(self.module_path)

    # -- context ------------------------------------------------------------------
    @property
    def module_path(self) -> str:
        return self.module_stack[-1]

    def name_of(self, t: Any) -> str | None:
        return self.names.get(id(t)) if isinstance(t, torch.Tensor) else None

    def info(self, t: Any) -> TensorInfo | None:
        if not isinstance(t, torch.Tensor):
            return None
        inf = self.infos.get(id(t))
        if inf is not None:
            return inf
        name = self.names.get(id(t))
        if name is None:
            return None
        labels = {d: self.store.param_dim(name, d, s) for d, s in enumerate(t.shape) if s > 1}
        inf = TensorInfo(labels)
        self.set_info(t, inf)
        return inf

    def set_info(self, t: torch.Tensor, inf: TensorInfo | None) -> None:
        if inf is None or inf.empty:
            if id(t) in self.infos and id(t) not in self.names:
                del self.infos[id(t)]
            return
        self.infos[id(t)] = inf
        self._alive[id(t)] = t

    def pin_info(self, inf: TensorInfo | None, reason: str) -> None:
        if inf is not None:
            for lab in inf.all_labels():
                self.store.pin(lab, reason)

    def unsupported_op(self, name: str, tensors: Sequence[torch.Tensor], reason: str) -> None:
        for t in tensors:
            self.pin_info(self.info(t), f"{name} in {self.module_path or '<top>'}")
        self.unsupported.append(Unsupported(name, self.module_path, reason))

    def _record_sizes(self, t: Any) -> None:
        """Remember which labelled dims sizes were read from, to recognise ``view(-1, x.size(-1))``."""
        inf = self.infos.get(id(t)) if isinstance(t, torch.Tensor) else None
        if inf is None:
            return
        for d, lab in inf.labels.items():
            self.size_sources.setdefault(int(t.shape[d]), []).append(lab)

    def size_read_from(self, value: int, labels: np.ndarray, axes: list | None = None) -> bool:
        """Was ``value`` read from a dim with these labels (or, for a merge, over the same axes)?"""
        root = self.store.find(int(labels[0]))
        for src in self.size_sources.get(value, ()):
            if self.store.find(int(src[0])) == root:
                return True
            if axes is not None and self.store.same_axes(src, axes):
                return True
        return False

    # -- dispatch -----------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = self.execute(func, args, kwargs)
        name = op_name(func)
        self._handle(name, args, kwargs, out)
        if name in SITE_KINDS:  # every call is a site, so calibration runs can count them in step
            inf = self.info(out) if isinstance(out, torch.Tensor) else None
            self.sites.append(Site(SITE_KINDS[name], name, self.module_path,
                                   {} if inf is None else dict(inf.labels)))
        return out

    def _handle(self, name, args, kwargs, out) -> None:
        if name in ("size", "attr.shape") and args:
            self._record_sizes(args[0])
        if name in NEUTRAL_OPS:
            return
        outs = tensors_in(out)
        if name == "iter":
            outs = [args[0]] if args else []
        if not outs:
            return
        ins = tensors_in(args)
        if kwargs:
            tensors_in(kwargs, 1, ins)
        infos = [self.info(t) for t in ins]
        if not any(i is not None and not i.empty for i in infos):
            for t in outs:
                if not any(t is i for i in ins):
                    self.set_info(t, None)
            return
        rule = OP_RULES.get(name)
        if rule is None or name == "iter":
            self.unsupported_op(name, ins, "no rule for this op")
            for t in outs:
                self.set_info(t, None)
            return
        if name not in _JOINT_AWARE:
            for t, inf in zip(ins, infos):
                if inf is not None and inf.joint is not None:
                    self.pin_info(TensorInfo(joint=inf.joint), f"{name} on stacked RNN state")
                    self.set_info(t, TensorInfo(dict(inf.labels), inf.nz)) if inf.labels else self.set_info(t, None)
        try:
            rule(self, name, args, kwargs, out)
        except Exception as exc:  # a rule that cannot map these arguments: stay safe
            self.unsupported_op(name, ins, f"{type(exc).__name__}: {exc}")
            for t in outs:
                self.set_info(t, None)
        return


_JOINT_AWARE = frozenset({"getitem", "select"})


def _call(func, args: tuple, kwargs: dict) -> Any:
    return func(*args, **kwargs)


def _module_hooks(tracer: Tracer) -> list:
    handles = []
    for path, mod in tracer.modules.items():
        def pre(m, a, path=path):
            tracer.module_stack.append(path)

        def post(m, a, o):
            if len(tracer.module_stack) > 1:
                tracer.module_stack.pop()

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post, always_call=True))
    return handles


def _traced_run(model: nn.Module, inputs: tuple, kwargs: dict, meta: bool, walked: Walk,
                counter: MacCounter | None):
    from .execute import meta_forward, meta_tensors

    store = LabelStore()
    tensors = meta_tensors(model, walked) if meta else None
    tracer = Tracer(model, store, tensors, walked)
    handles = _module_hooks(tracer)
    try:
        if meta:
            out = meta_forward(model, inputs, kwargs, tensors, mode=tracer, counter=counter)
        else:
            with torch.no_grad(), (counter if counter is not None else contextlib.nullcontext()), tracer:
                out = model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return tracer, out


def trace(model: nn.Module, example_inputs: Any = (), example_kwargs: Mapping[str, Any] | None = None,
          ignore: Iterable[str | nn.Module] = (), strict: bool = False,
          counter: MacCounter | None = None) -> DependencyGraph:
    """Run ``model`` once on the example inputs and return its dependency graph.

    ``ignore`` lists modules (or their dotted paths) whose parameters must keep their shape.
    Model inputs and outputs are never pruned. With ``strict=True`` an op without a rule
    raises :class:`UnsupportedOpError` naming the op and module path; otherwise the dims it
    touches are simply kept and listed in ``graph.unsupported``. With ``counter`` the traced
    forward's MACs are counted too (one forward for both).

    >>> import torchvision
    >>> g = trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    >>> len(g.groups()) > 0
    True
    """
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    example_kwargs = dict(example_kwargs or {})
    walked = walk(model)
    with eval_mode(walked.modules.values()):
        try:  # shapes are all we need: run on the meta device (no compute)
            tracer, out = _traced_run(model, example_inputs, example_kwargs, True, walked, counter)
        except Exception:  # data-dependent code or an op without a meta kernel: run for real
            if counter is not None:
                counter.flops = 0  # forget the partial meta count
            tracer, out = _traced_run(model, example_inputs, example_kwargs, False, walked, counter)
    store = tracer.store
    for t in iter_tensors(out):
        tracer.pin_info(tracer.infos.get(id(t)), "model output")
    ignore_paths = set()
    modules = walked.modules
    for item in ignore:
        if isinstance(item, nn.Module):
            ignore_paths.update(p for p, m in modules.items() if m is item)
        else:
            if item not in modules:
                raise KeyError(f"ignored module {item!r} is not a submodule of {type(model).__name__}")
            ignore_paths.add(item)
    if ignore_paths:
        for (name, dim), labels in store.param_dims.items():
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            if any(owner == p or owner.startswith(p + ".") or p == "" for p in ignore_paths):
                store.pin(labels, f"ignored module {owner}")
    if strict and tracer.unsupported:
        raise UnsupportedOpError("; ".join(str(u) for u in tracer.unsupported))
    return DependencyGraph(
        store=store,
        param_names=list(walked.params),
        buffer_names=list(walked.buffers),
        shapes=walked.shapes(),
        unsupported=tracer.unsupported,
        output_shapes=[tuple(t.shape) for t in iter_tensors(out)],
        sites=tracer.sites,
    )
