"""Shape ops: reshape/view/flatten, permute/transpose, expand/repeat, cat/stack, split/chunk,
pooling and resampling, pixel and channel shuffle."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..info import TensorInfo
from ..registry import op_rule
from .callsite import Attr, Expr, Literal, Name, SizeKind, size_kinds, split_size_kind
from .common import arg, couple, norm_dim

# Attribute names a module may use for the sizes a reshape splits a dim into.
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_key_value_heads",
                    "n_kv_heads", "num_kv_heads", "n_kv_head")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "dim_head", "d_head", "d_k", "d_kv")
TOTAL_ATTRS = ("all_head_size", "split_size", "inner_dim", "inner_size", "hidden_size_per_partition", "attn_dim")
WIDTH_ATTRS = TOTAL_ATTRS + ("hidden_dim", "hidden_size", "embed_dim", "dim", "d_model", "num_features", "channels",
                             "in_channels", "out_channels", "width", "n_embd", "num_channels", "nf")


def _flat_shape(args: Sequence[Any], start: int) -> list[int] | None:
    rest = list(args[start:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = list(rest[0])
    out = []
    for r in rest:
        if isinstance(r, torch.Tensor):
            r = int(r)
        if not isinstance(r, int):
            return None
        out.append(r)
    return out


def align(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Blocks of input dims and output dims with equal products (size-1 dims are skipped)."""
    blocks = []
    i = j = 0
    n, m = len(in_shape), len(out_shape)
    while True:
        while i < n and in_shape[i] == 1:
            i += 1
        while j < m and out_shape[j] == 1:
            j += 1
        if i >= n or j >= m:
            break
        ins, outs = [i], [j]
        pi, pj = in_shape[i], out_shape[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n:
                    raise ValueError("shapes do not align")
                pi *= in_shape[i]
                ins.append(i)
                i += 1
            else:
                if j >= m:
                    raise ValueError("shapes do not align")
                pj *= out_shape[j]
                outs.append(j)
                j += 1
        blocks.append((ins, outs))
    return blocks


def _module_attr(tracer, value: int, names: Sequence[str]) -> str | None:
    mod = tracer.current_module()
    if mod is None:
        return None
    for n in names:
        v = getattr(mod, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v == value:
            return n
    return None


class _Kinds:
    """Where each requested size of the call being traced came from (:mod:`.callsite`), read once, on demand."""

    def __init__(self, tracer, op: str, requested: list[int] | None):
        self._args = (tracer, op, requested)
        self._kinds: list[SizeKind] | None = None
        self._done = requested is None

    def __getitem__(self, d: int) -> SizeKind | None:
        if not self._done:
            tracer, op, requested = self._args
            self._kinds, self._done = size_kinds(tracer, op, len(requested)), True
        return self._kinds[d] if self._kinds is not None and d < len(self._kinds) else None


def _attr_value(tracer, kind: SizeKind | None, value: int) -> Attr | None:
    """``kind`` when it is ``self.name`` of a traced module holding the int ``value`` (rewritable by a plan)."""
    if not isinstance(kind, Attr):
        return None
    v = getattr(tracer.modules.get(kind.module), kind.name, None)
    return kind if isinstance(v, int) and not isinstance(v, bool) and v == value else None


def reshape_labels(tracer, inf: TensorInfo, in_shape: Sequence[int], out_shape: Sequence[int],
                   requested: list[int] | None, kinds: _Kinds | None = None) -> dict[int, np.ndarray]:
    store = tracer.store
    kinds = kinds if kinds is not None else _Kinds(tracer, "", None)
    labels: dict[int, np.ndarray] = {}
    if inf.empty:
        return labels
    blocks = align(list(in_shape), list(out_shape))
    covered = {d for ins, _ in blocks for d in ins}
    for d, lab in inf.labels.items():
        if d not in covered and in_shape[d] > 1:
            raise ValueError("labelled dim not aligned")
    for ins, outs in blocks:
        lab_in = [inf.labels.get(d) for d in ins]
        if all(lab is None for lab in lab_in):
            continue
        if len(ins) == 1 and len(outs) == 1:
            labels[outs[0]] = lab_in[0]
            _literal_width(tracer, lab_in[0], outs[0], out_shape, requested, kind=kinds[outs[0]])
            continue
        sizes_in = [in_shape[d] for d in ins]
        if len(ins) == 1:
            elements = lab_in[0]
        else:
            prod = store.product_with_axes(lab_in, tuple(sizes_in))
            if prod is not None:
                elements = prod.elements.reshape(-1)
            else:
                elements = store.new(int(np.prod(sizes_in)), "merge", False)
                store.add_product(elements.reshape(sizes_in), lab_in)
        if len(outs) == 1:
            labels[outs[0]] = elements
            _literal_width(tracer, elements, outs[0], out_shape, requested, merged=lab_in, kind=kinds[outs[0]])
            continue
        sizes_out = [out_shape[d] for d in outs]
        grid = elements.reshape(sizes_out)
        prod = store.product_with_elements(grid)
        if prod is not None:
            axes = prod.axes
        else:
            runtime = [sz for sz, lab in zip(sizes_in, lab_in) if lab is not None and tracer.size_read_from(sz, lab)]
            axes = _split_axes(tracer, grid, outs, sizes_out, requested, kinds, len(out_shape), runtime)
            store.add_product(grid, axes)
            total = _module_attr(tracer, int(grid.size), TOTAL_ATTRS) if requested is not None else None
            if total is not None:
                store.add_counter(tracer.module_path, total, grid.reshape(-1))
        for k, d in enumerate(outs):
            if axes[k] is not None:
                labels[d] = axes[k]
    return labels


def _literal_width(tracer, labels, d, out_shape, requested, merged=None, kind: SizeKind | None = None):
    """A prunable output dim whose size is written in the call must be rewritten after pruning.

    When the call's source is readable (``kind``): an integer written in the code keeps the dim
    (``view(-1, 2, 2, 16)``: 16 never follows a pruned dim, whatever else has 16 entries), and
    ``self.name`` is rewritten by a counter. Otherwise the size is found as a module attribute by its
    value (``self.all_head_size``) and rewritten; a merged dim (heads back into width, ``view(B, T, C)``)
    whose size was read from another tensor is coupled to it index by index; with no such read it is
    kept; a plain dim is assumed to come from its own shape unless another dim is inferred (``-1``),
    where a stale literal would go unnoticed. A local variable or expression equal both to an attribute
    and to a size read elsewhere (CLIP's ``reshape(B, T, embed_dim)``, ``embed_dim`` from the residual's
    shape) gets both: the coupling and the rewrite.
    """
    if requested is None or d >= len(requested) or requested[d] == -1:
        return
    value = int(out_shape[d])
    where = tracer.module_path or "<top>"
    if isinstance(kind, Literal):
        tracer.store.pin(labels, f"reshape to the size {value} written in the code in {where}")
        return
    attr_kind = _attr_value(tracer, kind, value)
    if attr_kind is not None:
        tracer.store.add_counter(attr_kind.module, attr_kind.name, labels)
        return
    if tracer.size_read_from(value, labels, merged):
        return  # the size was read from this very dim (``x.view(-1, x.size(-1))``) or its split parts
    attr = _module_attr(tracer, value, WIDTH_ATTRS + HEAD_COUNT_ATTRS + HEAD_DIM_ATTRS)
    sources = tracer.size_sources.get(value, ())
    if attr is not None:
        tracer.store.add_counter(tracer.module_path, attr, labels)
        if kind is None or not sources:
            return  # source unknown: the attribute is the best guess
    if merged is not None or -1 in requested or attr is not None:
        if sources:
            # the size was read from another dim (``view(B, T, C)`` with C from the residual
            # stream): both must keep equal widths, so couple them index by index
            for src in sources:
                tracer.store.unify(labels, src)
        else:
            tracer.store.pin(labels, f"reshape to a size fixed in code in {where}")


def _split_axes(tracer, grid, outs, sizes_out, requested, kinds: _Kinds, rank: int, runtime: Sequence[int] = ()):
    """Labels for the output dims a reshape splits a merged block into (None: the dim cannot change).

    ``runtime``: sizes of the block's labelled input dims that the code read from the tensor at run time.
    A leading split dim whose size is a product with a local factor equal to such a read (MobileViT's
    ``reshape(B * C * num_patch_h, patch_h, ...)`` with ``B, C, H, W = x.shape``) follows the pruned
    width when the code runs again: it gets an inactive label, so a unit's closure may remove whole
    rows of it (and nothing else: a removal that cuts a row in part breaks the reshape structure).
    ``B * 16 * num_patch_h`` (the width written in the code) stays fixed."""
    store = tracer.store
    n = len(outs)
    trailing = outs[-1] == rank - 1  # the split ends the tensor (attention's (..., heads, head_dim))
    # a literal last size is assumed read from the tensor's shape only when nothing is inferred: with a -1
    # anywhere (``view(B, heads, 3 * head_dim, -1)``) a stale literal would be absorbed silently
    block_has_infer = requested is not None and -1 in requested
    axes: list[np.ndarray | None] = []
    for k, d in enumerate(outs):
        size = sizes_out[k]
        kind = "head_dim" if k == n - 1 else ("head" if k == n - 2 else "split")
        if k == n - 1 and not trailing and all(a is None for a in axes):
            kind = "channel"  # (B, groups, C / groups, H, W): a channel shuffle's channels, not a head's width
        if size == 1:
            axes.append(None)
            continue
        if requested is None or d >= len(requested) or requested[d] == -1:
            axes.append(store.new(size, kind, True))
            continue
        source = kinds[d]
        if isinstance(source, Literal):
            axes.append(None)  # an integer written in the call (``reshape(B, N, 3, H, D)``'s 3): it cannot change
            continue
        attr_kind = _attr_value(tracer, source, size)
        if attr_kind is not None:  # ``self.num_heads`` of a traced module: rewritten
            ax = store.new(size, kind, True)
            store.add_counter(attr_kind.module, attr_kind.name, ax)
            axes.append(ax)
            continue
        names = HEAD_DIM_ATTRS if kind == "head_dim" else HEAD_COUNT_ATTRS
        attr = _module_attr(tracer, size, names)
        read = tracer.size_sources.get(size, ())
        if attr is None and isinstance(source, Name) and read and kind != "head_dim":
            # a local read from a tensor's shape (CoaT's ``B, num_heads, N, C = q.shape`` then
            # ``reshape(B, num_heads, C, H * W)``): the axis follows the dim it was last read from
            ax = store.new(size, kind, True)
            store.unify(ax, read[-1])
            axes.append(ax)
            continue
        if attr is not None and kind == "split" and n >= 2 and sizes_out[n - 2] == size:
            attr = None  # ``(3, heads, head_dim)`` with 3 heads: the count belongs to the head position
        if attr is not None:
            ax = store.new(size, kind, True)
            store.add_counter(tracer.module_path, attr, ax)
            axes.append(ax)
        elif not block_has_infer and k == n - 1:
            axes.append(store.new(size, kind, True))  # assumed computed from the tensor's shape
        elif isinstance(source, Expr) and k < n - 1 and any(size % r == 0 and size > r and r in source.local_factors
                                                            for r in runtime):
            axes.append(store.new(size, "merge", False))  # computed from a width read at run time
        else:
            axes.append(None)  # a size written into the code: it cannot change
    return axes


def _set(tracer, t, labels, nz=False):
    tracer.set_info(t, TensorInfo(labels, nz) if labels else None)


@op_rule("view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "squeeze", "squeeze_",
         "unsqueeze", "unsqueeze_", "ravel", "_unsafe_view", "atleast_2d", "atleast_3d", "attr.mT_like")
def reshape(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    if inf is None or not isinstance(out, torch.Tensor):
        return
    requested = None
    if name in ("view", "reshape"):
        if len(args) > 1 and isinstance(args[1], torch.dtype):
            raise ValueError("view as another dtype")
        requested = _flat_shape(args, 1) if len(args) > 1 else _flat_shape([kwargs.get("shape", kwargs.get("size"))], 0)
    elif name == "unflatten":
        dim = norm_dim(arg(args, kwargs, 1, "dim"), x.dim())
        sizes = list(arg(args, kwargs, 2, "sizes"))
        requested = [int(s) for s in x.shape[:dim]] + sizes + [int(s) for s in x.shape[dim + 1:]]
    if requested is not None and len(requested) != out.dim():
        requested = None
    labels = reshape_labels(tracer, inf, x.shape, out.shape, requested, _Kinds(tracer, name, requested))
    if requested is not None:
        _count_tuple_attr_shape(tracer, name, args, kwargs, requested, labels)
    target = x if name.endswith("_") else out
    _set(tracer, target, labels, inf.nz)


def _tuple_attr(tracer, shape: Any, fresh: bool = False) -> tuple[str, str, bool] | None:
    """The module path and attribute name holding the tuple ``shape`` (``view(self.bias_shape)``), and
    whether it is that very object. ``fresh``: ``shape`` was built by the caller (sizes given one by one),
    so no attribute can be that very object and only the current module's equal tuples are looked at."""
    mod = tracer.current_module()
    if mod is None or not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 2:
        return None
    here = tracer.module_path
    for path, m in () if fresh else tracer.subtree(here):  # the very object, here or in a submodule
        for n, v in vars(m).items():  # (``self.rel_pos.get_bias()``)
            if v is shape:
                return path, n, True
    for n, v in vars(mod).items():  # an equal tuple of the module itself (``view(*self.shape)``)
        if isinstance(v, (tuple, list, torch.Size)) and not n.startswith("_") and list(v) == list(shape):
            return here, n, False
    return None


def _count_tuple_attr_shape(tracer, name, args, kwargs, requested, labels) -> None:
    """A reshape to a shape stored as a tuple attribute (timm's ``Scale.shape``, ``RelPosBias.bias_shape``):
    the literal size of every prunable dim is one element of that tuple, rewritten after pruning by a
    counter on ``attr[d]`` (the plan replaces that element, see :func:`prunekit.plan._split_attr`)."""
    shape = args[1] if len(args) == 2 else (tuple(args[1:]) if len(args) > 2 else kwargs.get("shape", kwargs.get("size")))
    found = _tuple_attr(tracer, shape, fresh=len(args) > 2)
    if found is None:
        return
    owner, attr, same_object = found
    for d, lab in labels.items():
        if d < len(requested) and requested[d] != -1:
            if not same_object and _module_attr(tracer, requested[d], WIDTH_ATTRS + HEAD_COUNT_ATTRS + HEAD_DIM_ATTRS):
                continue  # equal sizes given one by one, this one from an int attribute (rewritten)
            tracer.store.add_counter(owner, f"{attr}[{d}]", lab)


def _permute(tracer, x, out, perm, target=None):
    inf = tracer.info(x)
    labels = {new: inf.labels[old] for new, old in enumerate(perm) if old in inf.labels}
    _set(tracer, target if target is not None else out, labels, inf.nz)


@op_rule("permute")
def permute(tracer, name, args, kwargs, out):
    dims = _flat_shape(args, 1) if len(args) > 1 else list(kwargs["dims"])
    n = args[0].dim()
    _permute(tracer, args[0], out, [norm_dim(d, n) for d in dims])


@op_rule("transpose", "swapaxes", "swapdims", "transpose_", "t", "attr.T", "attr.mT", "attr.H", "attr.mH",
         "adjoint", "movedim", "moveaxis", "numpy_T")
def transpose(tracer, name, args, kwargs, out):
    x = args[0]
    n = x.dim()
    perm = list(range(n))
    if name in ("t", "attr.T", "numpy_T"):
        perm = perm[::-1]
    elif name in ("attr.mT", "attr.mH", "adjoint"):
        perm[-1], perm[-2] = perm[-2], perm[-1]
    elif name in ("movedim", "moveaxis"):
        src = arg(args, kwargs, 1, "source")
        dst = arg(args, kwargs, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [norm_dim(s, n) for s in src]
        dst = [norm_dim(d, n) for d in dst]
        rest = [d for d in range(n) if d not in src]
        perm = [None] * n
        for s, d in zip(src, dst):
            perm[d] = s
        it = iter(rest)
        perm = [p if p is not None else next(it) for p in perm]
    else:
        a = norm_dim(arg(args, kwargs, 1, "dim0"), n)
        b = norm_dim(arg(args, kwargs, 2, "dim1"), n)
        perm[a], perm[b] = perm[b], perm[a]
    _permute(tracer, x, out, perm, x if name.endswith("_") else None)


@op_rule("expand", "expand_as", "broadcast_to")
def expand(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)  # None: nothing labelled in x (SE/ECA's gate after a conv over channels)
    off = out.dim() - x.dim()
    labels = {d + off: lab for d, lab in (inf.labels.items() if inf is not None else ())
              if x.shape[d] == out.shape[d + off]}
    if name == "expand_as":  # broadcast to another tensor: its labels on the grown dims only (a grown
        # dim holds the same value at every index, so it can be sliced like the other's; a full-size
        # unlabelled dim of x cannot, and must not borrow labels that would hide it)
        oinf = tracer.info(args[1])
        for d, lab in (oinf.labels.items() if oinf is not None else ()):
            if d < off or x.shape[d - off] == 1:
                labels.setdefault(d, lab)
    elif name == "expand":
        _expanded_counts(tracer, x, out, _flat_shape(args, 1), labels)
    _set(tracer, out, labels, bool(inf is not None and inf.nz))


def _expanded_counts(tracer, x, out, sizes: list[int] | None, labels: dict[int, np.ndarray]) -> None:
    """A dim grown from 1 to a module's count (``mask.expand(B, -1, self.num_heads, -1, -1)``, Swin's
    shifted-window mask) takes fresh labels tied to that attribute, so it couples with the heads it
    meets instead of pinning them; any other grown size stays unlabelled (kept)."""
    if sizes is None or len(sizes) != out.dim():
        return
    off = out.dim() - x.dim()
    for d, size in enumerate(sizes):
        grown = d < off or x.shape[d - off] == 1
        if d in labels or not grown or size in (-1, 1) or out.shape[d] != size:
            continue
        attr = _module_attr(tracer, size, HEAD_COUNT_ATTRS)
        if attr is not None:
            lab = tracer.store.new(size, "channel", False)
            tracer.store.add_counter(tracer.module_path, attr, lab)
            labels[d] = lab


@op_rule("repeat", "tile")
def repeat(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    reps = _flat_shape(args, 1) if len(args) > 1 else list(kwargs.get("repeats", kwargs.get("dims")))
    off = out.dim() - x.dim()
    if name == "tile" and len(reps) < x.dim():
        reps = [1] * (x.dim() - len(reps)) + reps
    r_off = len(reps) - x.dim()
    labels = {}
    for d, lab in inf.labels.items():
        labels[d + off] = np.tile(lab, reps[d + r_off])
    _set(tracer, out, labels, inf.nz)


@op_rule("repeat_interleave")
def repeat_interleave(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    reps = arg(args, kwargs, 1, "repeats")
    dim = arg(args, kwargs, 2, "dim")
    if dim is None or not isinstance(reps, int):
        raise ValueError("repeat_interleave without dim or with tensor repeats")
    dim = norm_dim(dim, x.dim())
    labels = dict(inf.labels)
    if dim in labels:
        labels[dim] = np.repeat(labels[dim], reps)
    _set(tracer, out, labels, inf.nz)


@op_rule("cat", "concat", "concatenate")
def cat(tracer, name, args, kwargs, out):
    tensors = [t for t in arg(args, kwargs, 0, "tensors") if t.numel() > 0 or t.dim() > 1]
    dim = norm_dim(arg(args, kwargs, 1, "dim", 0), out.dim())
    store = tracer.store
    labels: dict[int, np.ndarray] = {}
    infos = [tracer.info(t) for t in tensors]
    for d in range(out.dim()):
        if d == dim:
            parts = []
            if not any(i is not None and d in i.labels for i in infos):
                continue
            for t, inf in zip(tensors, infos):
                if inf is not None and d in inf.labels:
                    parts.append(inf.labels[d])
                else:
                    fresh = store.new(t.shape[d], "channel", False)
                    store.pin(fresh, f"concatenated with an unprunable tensor in {tracer.module_path or '<top>'}")
                    parts.append(fresh)
            labels[d] = np.concatenate(parts)
        elif out.shape[d] > 1:
            lab = couple(tracer, [(t, i, d) for t, i in zip(tensors, infos)], name)
            if lab is not None:
                labels[d] = lab
    nz = any(i.nz for i in infos if i is not None)
    _set(tracer, out, labels, nz)


@op_rule("stack", "hstack", "vstack")
def stack(tracer, name, args, kwargs, out):
    tensors = list(arg(args, kwargs, 0, "tensors"))
    if name != "stack":
        raise ValueError(f"{name} not supported on labelled tensors")
    dim = norm_dim(arg(args, kwargs, 1, "dim", 0), out.dim())
    infos = [tracer.info(t) for t in tensors]
    labels = {}
    for d in range(tensors[0].dim()):
        od = d if d < dim else d + 1
        if tensors[0].shape[d] > 1:
            lab = couple(tracer, [(t, i, d) for t, i in zip(tensors, infos)], name)
            if lab is not None:
                labels[od] = lab
    _set(tracer, out, labels, any(i.nz for i in infos if i is not None))


def _split_outputs(tracer, name, x, inf, dim, outs, attr_value: int | None):
    """Split ``x`` along ``dim`` into equal parts; a labelled dim becomes (parts, width)."""
    store = tracer.store
    sizes = [o.shape[dim] for o in outs]
    lab = inf.labels.get(dim)
    if lab is not None:
        if len(set(sizes)) != 1:
            store.pin(lab, f"{name} into unequal parts in {tracer.module_path or '<top>'}")
        elif len(outs) > 1:
            width = sizes[0]
            inner = store.new(width, "channel", True)
            store.add_product(lab.reshape(len(outs), width), [None, inner])
            if attr_value is not None:
                attr = _module_attr(tracer, attr_value, TOTAL_ATTRS + ("embed_dim", "hidden_size"))
                whole = None
                if attr is None and not isinstance(split_size_kind(tracer), (Literal, type(None))):
                    # computed in the call from the module's total width (SKNet's ``torch.split(x,
                    # self.in_channels // self.num_paths, 1)``): rewrite the total; the parts stay equal
                    whole = _module_attr(tracer, int(lab.size), WIDTH_ATTRS)
                if whole is not None:
                    store.add_counter(tracer.module_path, whole, lab)
                elif attr is None:
                    store.pin(lab, f"{name} by a size written in the code in {tracer.module_path or '<top>'}")
                else:
                    store.add_counter(tracer.module_path, attr, inner)
    start = 0
    for o, s in zip(outs, sizes):
        labels = {d: l for d, l in inf.labels.items() if d != dim}
        if lab is not None:
            labels[dim] = lab[start:start + s]
        start += s
        _set(tracer, o, labels, inf.nz)


@op_rule("chunk")
def chunk(tracer, name, args, kwargs, out):
    x = args[0]
    dim = norm_dim(arg(args, kwargs, 2, "dim", 0), x.dim())
    _split_outputs(tracer, name, x, tracer.info(x), dim, list(out), None)


@op_rule("split", "split_with_sizes", "tensor_split", "hsplit", "vsplit")
def split(tracer, name, args, kwargs, out):
    x = args[0]
    size = arg(args, kwargs, 1, "split_size_or_sections", arg(args, kwargs, 1, "split_size"))
    dim = norm_dim(arg(args, kwargs, 2, "dim", 0), x.dim())
    inf = tracer.info(x)
    outs = list(out)
    if name != "split" or not isinstance(size, int):
        by_attr = dim in inf.labels and len(outs) > 1 and _split_sizes_attr(tracer, name, size, inf.labels[dim], outs, dim)
        if dim in inf.labels and len(outs) > 1 and not by_attr:
            tracer.store.pin(inf.labels[dim], f"{name} by given sizes in {tracer.module_path or '<top>'}")
        # sizes from an attribute: each part shrinks on its own (no equal-parts structure)
        _split_outputs(tracer, name, x, inf, dim, outs, None) if len({o.shape[dim] for o in outs}) == 1 \
            and not by_attr else _unequal(tracer, x, inf, dim, outs)
        return
    _split_outputs(tracer, name, x, inf, dim, outs, size if len(outs) > 1 else None)


def _split_sizes_attr(tracer, name, sizes, lab, outs, dim) -> bool:
    """``torch.split(x, self.channel_splits, dim)`` (CoaT's per-window head groups): sizes held by a list
    or tuple attribute of a traced module are rewritten after pruning, one counter per element on that
    part's labels, so the parts may shrink unequally. False when the sizes are not such an attribute."""
    if name not in ("split", "split_with_sizes") or not isinstance(sizes, (list, tuple)):
        return False
    found = _tuple_attr(tracer, sizes)
    if found is None or not found[2]:  # the very object, not an equal tuple that happens to match
        return False
    owner, attr, _ = found
    start = 0
    for i, o in enumerate(outs):
        n = o.shape[dim]
        if n > 0:
            tracer.store.add_counter(owner, f"{attr}[{i}]", lab[start:start + n])
        start += n
    return True


def _unequal(tracer, x, inf, dim, outs):
    start = 0
    for o in outs:
        labels = {d: l for d, l in inf.labels.items() if d != dim}
        if dim in inf.labels:
            labels[dim] = inf.labels[dim][start:start + o.shape[dim]]
        start += o.shape[dim]
        _set(tracer, o, labels, inf.nz)


@op_rule("unbind")
def unbind(tracer, name, args, kwargs, out):
    x = args[0]
    dim = norm_dim(arg(args, kwargs, 1, "dim", 0), x.dim())
    inf = tracer.info(x)
    if dim in inf.labels:
        tracer.store.pin(inf.labels[dim], f"unbind in {tracer.module_path or '<top>'}")
    for o in out:
        labels = {(d if d < dim else d - 1): l for d, l in inf.labels.items() if d != dim}
        _set(tracer, o, labels, inf.nz)


@op_rule("flip", "fliplr", "flipud")
def flip(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    dims = arg(args, kwargs, 1, "dims", None)
    if name == "fliplr":
        dims = [1]
    elif name == "flipud":
        dims = [0]
    dims = [norm_dim(d, x.dim()) for d in ([dims] if isinstance(dims, int) else dims)]
    labels = {d: (l[::-1].copy() if d in dims else l) for d, l in inf.labels.items()}
    _set(tracer, out, labels, inf.nz)


@op_rule("roll")
def roll(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    dims = arg(args, kwargs, 2, "dims", None)
    dims = [norm_dim(d, x.dim()) for d in ([dims] if isinstance(dims, int) else (dims or range(x.dim())))]
    for d in dims:
        if d in inf.labels:
            tracer.store.pin(inf.labels[d], f"roll in {tracer.module_path}")
    _set(tracer, out, dict(inf.labels), inf.nz)


@op_rule("pad")
def pad(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    p = list(arg(args, kwargs, 1, "pad"))
    mode = arg(args, kwargs, 2, "mode", "constant")
    value = arg(args, kwargs, 3, "value", None)
    labels = dict(inf.labels) if out.dim() == x.dim() else {}
    for k in range(len(p) // 2):
        d = x.dim() - 1 - k
        if (p[2 * k] or p[2 * k + 1]) and d in inf.labels:
            tracer.store.pin(inf.labels[d], f"padding a prunable dim in {tracer.module_path}")
            labels.pop(d, None)  # the padded dim has another size: its old labels no longer index it
    nz = inf.nz or (mode == "constant" and bool(value))
    _set(tracer, out, labels, nz)


@op_rule("unfold")
def unfold(tracer, name, args, kwargs, out):
    """``Tensor.unfold(dim, size, step)`` (sliding windows: ``dim`` becomes (windows, ..., size), the window
    last) and ``F.unfold`` (im2col: (N, C, *spatial) -> (N, C * prod(kernel), L), channel-major).
    Channel and batch dims pass through; a labelled dim that is windowed is kept."""
    x = args[0]
    inf = tracer.info(x)
    where = tracer.module_path or "<top>"
    if out.dim() == x.dim() + 1:  # Tensor.unfold
        dim = norm_dim(arg(args, kwargs, 1, "dimension"), x.dim())
        if dim in inf.labels and x.shape[dim] > 1:
            tracer.store.pin(inf.labels[dim], f"unfold (sliding windows) over a prunable dim in {where}")
        _set(tracer, out, {d: l for d, l in inf.labels.items() if d != dim}, inf.nz)
        return
    if out.dim() != x.dim() - 1 or x.dim() not in (3, 4):
        raise ValueError(f"unfold from {tuple(x.shape)} to {tuple(out.shape)}")
    c = x.dim() - 3  # (N, C, H, W) or (C, H, W)
    for d, l in inf.labels.items():
        if d > c:
            tracer.store.pin(l, f"unfold (im2col) over a prunable spatial dim in {where}")
    labels = {d: l for d, l in inf.labels.items() if d < c}
    if c in inf.labels:
        per = out.shape[c] // x.shape[c]  # (C,) -> (C * kh * kw,): channel c owns rows c*kk .. c*kk+kk-1
        labels[c] = np.repeat(inf.labels[c], per)
    _set(tracer, out, labels, inf.nz)


# Ops that keep the channel dims as they are and mix only spatial/temporal dims.
SPATIAL_OPS = (
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", "lp_pool1d", "lp_pool2d",
    "lp_pool3d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "_upsample_bilinear2d_aa",
    "fractional_max_pool2d", "fractional_max_pool3d", "grid_sample",
)


@op_rule(*SPATIAL_OPS)
def spatial(tracer, name, args, kwargs, out):
    x = arg(args, kwargs, 0, "input")
    inf = tracer.info(x)
    nsp = next((int(c) for c in "123" if f"{c}d" in name), x.dim() - 2)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    keep = x.dim() - nsp  # leading dims (batch, channels) keep their labels
    for d in inf.labels:
        if d >= keep:
            tracer.store.pin(inf.labels[d], f"{name} over a prunable dim in {tracer.module_path}")
    labels = {d: l for d, l in inf.labels.items() if d < keep}
    if name == "grid_sample":
        grid_inf = tracer.info(args[1])
        if grid_inf is not None:
            tracer.pin_info(grid_inf, "grid_sample grid")
    _set(tracer, outs[0], labels, inf.nz)  # pooling a zero channel gives zeros
    for o in outs[1:]:
        _set(tracer, o, labels, True)


@op_rule("pixel_shuffle")
def pixel_shuffle(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    r = arg(args, kwargs, 1, "upscale_factor")
    c = x.dim() - 3
    labels = {d: l for d, l in inf.labels.items() if d < c}
    if c in inf.labels:
        store = tracer.store
        ax = store.new(out.shape[c], "channel", True)
        store.add_product(inf.labels[c].reshape(out.shape[c], r * r), [ax, None])
        labels[c] = ax
    for d in inf.labels:
        if d > c:
            tracer.store.pin(inf.labels[d], "pixel_shuffle spatial dim")
    _set(tracer, out, labels, inf.nz)


@op_rule("pixel_unshuffle")
def pixel_unshuffle(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    r = arg(args, kwargs, 1, "downscale_factor")
    c = x.dim() - 3
    labels = {d: l for d, l in inf.labels.items() if d < c}
    if c in inf.labels:
        labels[c] = np.repeat(inf.labels[c], r * r)
    _set(tracer, out, labels, inf.nz)


@op_rule("channel_shuffle", "native_channel_shuffle")
def channel_shuffle(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    g = arg(args, kwargs, 1, "groups")
    labels = dict(inf.labels)
    if 1 in inf.labels:
        store = tracer.store
        lab = inf.labels[1]
        inner = store.new(lab.size // g, "channel", True)
        store.add_product(lab.reshape(g, -1), [None, inner])
        labels[1] = lab.reshape(g, -1).T.reshape(-1).copy()
    _set(tracer, out, labels, inf.nz)
