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

import functools

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..compat import CONV_TRANSPOSE, SharedHooks, module_slots
from ..errors import UnsupportedOpError
from ..measure.counting import MacCounter
from .info import TensorInfo
if TYPE_CHECKING:
    from .groups import Blocked
from .walk import Walk, eval_mode, failing_module, recursion_headroom, walk
from .labels import LabelStore
from .registry import NEUTRAL_OPS, OP_RULES, op_name
from . import rules  # noqa: F401  (registers the op rules)


def as_inputs(example_inputs: Any) -> tuple:
    """Example inputs as the tuple of positional arguments: a tensor (or any other single object)
    becomes ``(x,)``, a tuple or list is taken as the arguments themselves."""
    if isinstance(example_inputs, torch.Tensor) or not isinstance(example_inputs, (tuple, list)):
        return (example_inputs,)
    return tuple(example_inputs)


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
    on_meta: bool = True  # the trace ran on meta tensors (False: the model needed real values)
    # why the meta trace failed (module path and error) when it fell back to a real forward: that forward
    # followed the example's values, so value-dependent branches are traced for these inputs only
    meta_fallback: str | None = None
    # ops of the meta trace whose values were read from the example inputs (``(op, module path)``; see
    # graph.shadows): the branches that depend on them were followed for these inputs only
    value_reads: list[tuple[str, str]] = field(default_factory=list)

    def groups(self, kinds: Iterable[str] | None = None):
        from .groups import build_groups

        return build_groups(self, kinds)

    def blocked(self, include_inert: bool = False, include_buffers: bool = False,
                groups: list | None = None) -> list["Blocked"]:
        """Every parameter dim (or the part of it) that is in no group, with the op and module
        that kept it (:class:`~prunekit.graph.groups.Blocked`: tensor, dim, indices, op, module,
        reason; ``str()`` reads "`stem.weight` dim 0 (8 of 16 kept): pinned by op `getitem` in
        module `<top-level forward>`: ..."). Kernel-size dims and other dims no op couples are
        left out unless ``include_inert``. ``groups``: ``self.groups()`` (all kinds) if already
        built; otherwise the last all-kinds result is reused, or groups are built."""
        from .groups import blocked_dims

        return blocked_dims(self, include_inert, include_buffers, groups)


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
        # integer buffers (candidate index permutations) by name -> the real tensor (values are known
        # even when tracing on meta stand-ins); how often each was read by any op, and by a rule that
        # records it in ``store.renumber`` (a buffer read elsewhere too cannot be renumbered)
        self.index_buffers: dict[str, torch.Tensor] = {
            n: b for n, b in walked.buffers.items()
            if b.dim() == 1 and not b.is_floating_point() and not b.is_complex() and b.dtype != torch.bool}
        self.buffer_reads: dict[str, int] = {}
        self.renumber_reads: dict[str, int] = {}
        self.value_reads: list[tuple[str, str]] = []  # values read on the meta trace (graph.shadows)

    def current_module(self) -> nn.Module | None:
        return self.modules.get(self.module_path)

    def subtree(self, path: str) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of the module at ``path`` and every module below it, in ``modules`` order
        (every module for the root ``""``); built once per path and trace."""
        cache = self.__dict__.setdefault("_subtrees", {})
        found = cache.get(path)
        if found is None:
            prefix = path + "."
            found = cache[path] = [(p, m) for p, m in self.modules.items()
                                   if p == path or (p.startswith(prefix) if path else True)]
        return found

    @functools.cached_property
    def path_of(self) -> dict[int, str]:
        """Module object id -> its path (the first one, as in ``modules``); built once per trace."""
        return {id(m): p for p, m in self.modules.items()}

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

    def pin_info(self, inf: TensorInfo | None, reason: str, site: tuple[str, str] | None = None) -> None:
        if inf is not None:
            for lab in inf.all_labels():
                self.store.pin(lab, reason, site)

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
        kind = SITE_KINDS.get(name)
        if kind is not None:  # every call is a site, so calibration runs can count them in step
            inf = self.info(out) if isinstance(out, torch.Tensor) else None
            self.sites.append(Site(kind, name, self.module_stack[-1], {} if inf is None else dict(inf.labels)))
        return out

    def _handle(self, name, args, kwargs, out) -> None:
        if name in _SIZE_OPS and args:
            self._record_sizes(args[0])
        if name in NEUTRAL_OPS:
            return
        if name == "iter":
            outs = [args[0]] if args else []
        elif isinstance(out, torch.Tensor):
            outs = [out]
        else:
            outs = tensors_in(out)
        if not outs:
            return
        ins = tensors_in(args)
        if kwargs:
            tensors_in(kwargs, 1, ins)
        # every input's info, in order (a parameter's labels are created on its first use)
        infos, names = self.infos, self.names
        labelled = False
        for t in ins:
            inf = infos.get(id(t))
            if inf is None and id(t) in names:
                inf = self.info(t)
            if inf is not None and inf.labels:
                labelled = True
        if not labelled:
            for t in outs:
                if id(t) in infos and not any(t is i for i in ins):
                    self.set_info(t, None)
            return
        self.store.context = (name, self.module_stack[-1])
        if self.index_buffers:
            for t in ins:
                n = names.get(id(t))
                if n is not None and n in self.index_buffers:
                    self.buffer_reads[n] = self.buffer_reads.get(n, 0) + 1
        rule = OP_RULES.get(name)
        if rule is None or name == "iter":
            self.unsupported_op(name, ins, "no rule for this op")
            for t in outs:
                self.set_info(t, None)
            return
        try:
            rule(self, name, args, kwargs, out)
        except Exception as exc:  # a rule that cannot map these arguments: stay safe
            self.unsupported_op(name, ins, f"{type(exc).__name__}: {exc}")
            for t in outs:
                self.set_info(t, None)
        return


_SIZE_OPS = frozenset({"size", "attr.shape"})


def _call(func, args: tuple, kwargs: dict) -> Any:
    return func(*args, **kwargs)


def _module_hooks(tracer: Tracer) -> list:
    """Track the module path of every call of the model's modules in ``tracer.module_stack``: a pre-hook
    and a forward hook (``always_call``) on each distinct module of the model, two shared closures keyed
    by module object (no process-global hooks: another thread's forwards are never seen). Calls of
    modules outside the model are not tracked (they belong to the caller's path). Returns the handles
    (objects with ``remove()``)."""
    path_of = tracer.path_of
    stack = tracer.module_stack

    def pre(m, a):
        stack.append(path_of[id(m)])

    def post(m, a, o):
        if len(stack) > 1:
            stack.pop()

    return [SharedHooks(list({id(m): m for m in tracer.modules.values()}.values()), pre, post)]


def _traced_run(model: nn.Module, inputs: tuple, kwargs: dict, meta: bool, walked: Walk,
                counter: MacCounter | None):
    from .execute import counting, meta_forward, meta_tensors
    from .shadows import Shadows

    store = LabelStore()
    tensors = meta_tensors(model, walked) if meta else None
    tracer = Tracer(model, store, tensors, walked)
    handles = _module_hooks(tracer)
    try:
        if meta:
            shadows = Shadows(where=lambda: tracer.module_path)
            tracer.value_reads = shadows.reads
            out = meta_forward(model, inputs, kwargs, tensors, mode=tracer, counter=counter, walked=walked,
                               shadows=shadows)
        else:  # a real forward: its MACs counted per op as the meta trace counts them (execute.counting)
            if counter is not None:
                tracer.execute = counting(counter).call
            with torch.no_grad(), tracer:
                out = model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return tracer, out


def _module_paths(model: nn.Module, items: Iterable[str | nn.Module], option: str,
                  walked: Walk | None = None) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` for every module named or given in ``items`` (a module object registered
    under several paths is listed once per path); a name or object that matches nothing raises.
    ``walked``: the model's walk, whose paths answer names without a second pass over the model."""
    items = list(items)
    if not items:
        return []
    if walked is not None and all(isinstance(i, str) and i in walked.modules for i in items):
        return [(i, walked.modules[i]) for i in items]  # the same module as under that path in any walk
    every = list(model.named_modules(remove_duplicate=False))
    by_name = dict(every)
    out: list[tuple[str, nn.Module]] = []
    for item in items:
        if isinstance(item, nn.Module):
            found = [(p, m) for p, m in every if m is item]
            if not found:
                raise KeyError(f"{option}: the module object {type(item).__name__} is not a submodule of "
                               f"{type(model).__name__}")
            out.extend(found)
        else:
            if item not in by_name:
                raise KeyError(f"{option} module {item!r} is not a submodule of {type(model).__name__}")
            out.append((item, by_name[item]))
    return out


def output_dims(module: nn.Module, key: str, param: torch.Tensor) -> tuple[int, ...]:
    """The dims of ``module``'s own parameter ``key`` that index the module's *outputs*.

    Linear/Bilinear/Conv: weight dim 0; ConvTranspose: weight dim 1 (out_channels / groups); biases
    dim 0; Embedding/EmbeddingBag: weight dim 1 (embedding_dim; dim 0 is the vocabulary, an input
    range); MultiheadAttention: in_proj and q/k/v weights and biases dim 0, ``bias_k``/``bias_v``
    dim 2 (its out_proj is a submodule, a Linear). Per-channel modules (norms, PReLU, a layer-scale
    vector) have one channel dim that is both input and output: it is kept, so their inputs are kept
    too. Any other module: dim 0 of each parameter (PyTorch's out-first convention).
    """
    if param.dim() == 0:
        return ()
    if isinstance(module, CONV_TRANSPOSE) and key == "weight":
        return (1,)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and key == "weight":
        return (1,)
    if isinstance(module, nn.MultiheadAttention) and key in ("bias_k", "bias_v"):
        return (2,)
    return (0,)


def _trace(model: nn.Module, example_inputs: Any = (), example_kwargs: Mapping[str, Any] | None = None,
          ignore: Iterable[str | nn.Module] = (), strict: bool = False,
          counter: MacCounter | None = None, keep_outputs: Iterable[str | nn.Module] = (),
          walked: Walk | None = None) -> DependencyGraph:
    """Run ``model`` once on the example inputs and return its dependency graph.

    ``ignore`` lists modules (or their dotted paths) whose parameters must keep their shape:
    every dim of every parameter of the module and its submodules, inputs included (so ignoring
    a transformer's classifier keeps the whole residual width feeding it).
    ``keep_outputs`` lists modules (or paths) whose *outputs* keep their size while their inputs
    stay prunable -- Torch-Pruning's ``ignored_layers`` meaning. For the module and each of its
    submodules, the output dims of its own parameters are kept (see :func:`output_dims`: weight
    dim 0 of Linear/Conv, dim 1 of ConvTranspose and Embedding, bias dim 0; a norm's single
    channel dim is both its input and its output, so it is kept). A name or object that matches
    no submodule raises ``KeyError`` for either option; a ``keep_outputs`` module without
    parameters raises ``ValueError`` (there would be nothing to keep).

    Model inputs and outputs are never pruned. With ``strict=True`` an op without a rule
    raises :class:`UnsupportedOpError` naming the op and module path; otherwise the dims it
    touches are simply kept and listed in ``graph.unsupported``; ``graph.blocked()`` explains
    every parameter dim left out of all groups (op and module that kept it). With ``counter``
    the traced forward's MACs are counted too (one forward for both).

    >>> import torchvision
    >>> g = trace(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
    >>> len(g.groups()) > 0
    True
    """
    example_inputs = as_inputs(example_inputs)
    example_kwargs = dict(example_kwargs or {})
    walked = walk(model) if walked is None else walked  # ``walked``: the caller's walk of this model, as it is
    ignored = _module_paths(model, ignore, "ignored", walked)
    kept = _module_paths(model, keep_outputs, "keep_outputs", walked)
    scripted = [p for p, m in walked.modules.items() if isinstance(m, torch.jit.ScriptModule)]
    if scripted:
        where = f"module `{scripted[0]}`" if scripted[0] else type(model).__name__
        raise UnsupportedOpError(f"{where} is a TorchScript module: prunekit traces eager PyTorch; prune the "
                                 "eager nn.Module (before torch.jit.script / torch.jit.trace), then script the result")
    with eval_mode(walked.modules.values()):
        on_meta = True
        try:  # shapes are all we need: run on the meta device (no compute)
            tracer, out = _traced_run(model, example_inputs, example_kwargs, True, walked, counter)
        except Exception as exc:  # data-dependent code or an op without a meta kernel: run for real
            on_meta = False
            where = failing_module(model, exc.__traceback__)
            fallback = (f"module `{where}`" if where else "the model") + \
                f": {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
            if counter is not None:
                counter.flops = 0  # forget the partial meta count
            tracer, out = _traced_run(model, example_inputs, example_kwargs, False, walked, counter)
    store = tracer.store
    for k, t in enumerate(iter_tensors(out)):
        tracer.pin_info(tracer.infos.get(id(t)), f"model output {k} keeps its shape", site=("output", ""))
    _check_renumbered(tracer)
    name_of = {id(p): n for n, p in walked.params.items()}
    name_of.update({id(b): n for n, b in walked.buffers.items() if id(b) not in name_of})
    for path, mod in ignored:
        for sub_path, sub in mod.named_modules(prefix=path, remove_duplicate=False):
            own_params, own_buffers, _ = module_slots(sub)
            for key, t in list(own_params.items()) + list(own_buffers.items()):
                name = name_of.get(id(t)) if t is not None else None
                for d in range(t.dim() if name is not None else 0):
                    labels = store.param_dims.get((name, d))
                    if labels is not None:
                        store.pin(labels, f"module `{sub_path}` is ignored (ignore=): all its dims are kept",
                                  site=("ignore", sub_path))
    for path, mod in kept:
        found = False
        for sub_path, sub in mod.named_modules(prefix=path, remove_duplicate=False):
            for key, t in module_slots(sub)[0].items():
                name = name_of.get(id(t)) if t is not None else None
                if name is None:
                    continue
                found = True
                for d in output_dims(sub, key, t):
                    labels = store.param_dims.get((name, d))
                    if labels is not None:
                        store.pin(labels, f"output of `{sub_path}` is kept (keep_outputs=)",
                                  site=("keep_outputs", sub_path))
        if not found:
            raise ValueError(f"keep_outputs module {path!r} ({type(mod).__name__}) has no parameters: "
                             "there are no output dims to keep")
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
        on_meta=on_meta,
        meta_fallback=None if on_meta else fallback,
        value_reads=list(tracer.value_reads) if on_meta else [],
    )


def _check_renumbered(tracer: Tracer) -> None:
    """An index buffer that other ops read too (its values used as data) cannot be renumbered."""
    store = tracer.store
    keep = []
    for r in store.renumber:
        total, ours = tracer.buffer_reads.get(r.buffer, 0), tracer.renumber_reads.get(r.buffer, 0)
        if total != ours:
            store.pin(r.labels, f"index buffer `{r.buffer}` is also read by other ops, so it cannot be renumbered",
                      site=("index", r.buffer.rsplit(".", 1)[0] if "." in r.buffer else ""))
        else:
            keep.append(r)
    store.renumber[:] = keep


@functools.wraps(_trace)
def trace(model: nn.Module, *args: Any, **kwargs: Any):
    with recursion_headroom(model):  # a deeply nested model that runs plainly runs here too
        return _trace(model, *args, **kwargs)
