"""Indexing ops: select/narrow, ``x[...]`` (getitem/setitem), index_select/gather/scatter and friends.

Fixed positions. A bound written in the code (``x[:, :8]``, ``x[:, 8:]``, ``x[:, -1]``,
``narrow(1, 0, 8)``) selects the same elements after other indices are removed as long as no
index *before* a front-anchored bound (``0 <= b``) and none *from* a back-anchored bound
(``b < 0``) is removed: only those are kept (:func:`bound_keeps`). So ``torch.cat([x[:, :8] +
f(x), x[:, 8:]], 1)`` prunes channels 8.. of ``x`` and the insides of ``f``; the first 8 stay.

Index permutations. ``x[:, perm]`` / ``x.index_select(1, perm)`` with ``perm`` a registered 1-d
integer buffer: output position ``i`` carries the label of input index ``perm[i]``, and the
buffer is recorded in ``store.renumber`` -- removing input index ``j`` removes the positions
``i`` with ``perm[i] == j`` and renumbers the remaining values (:func:`renumber_index`). That is
a value rewrite a plan must carry, so it is used only where :class:`prunekit.plan.Plan` has a
``renumber`` field (:func:`renumber_supported`); otherwise, and for an index that is not such a
buffer (a constant list, a tensor computed in ``forward``), the indexed dim is kept and the
reason says so.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..labels import Renumber
from ..registry import op_rule
from .common import arg, norm_dim, pin_all
from .shape import _set


def _where(tracer) -> str:
    return tracer.module_path or "<top>"


def bound_keeps(size: int, start, stop, step=None) -> np.ndarray | None:
    """Positions of a dim of ``size`` that must stay for ``x[start:stop:step]`` (the slice as
    written) to select the same elements after other positions are removed; ``None``: all of them."""
    if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (start, stop, step)):
        return None  # a bound computed from a tensor: unknown
    if step not in (None, 1):
        return None
    keep = np.zeros(size, dtype=bool)
    if start is not None:
        if start >= size:
            return None  # empty
        if start >= 0:
            keep[:start] = True
        elif size + start > 0:
            keep[size + start:] = True  # back-anchored: nothing from there on may go
    if stop is not None:
        if 0 <= stop < size:
            keep[:stop] = True
        elif stop < 0:
            if size + stop <= 0:
                return None  # empty
            keep[size + stop:] = True
    return keep


def index_keeps(size: int, index: int) -> np.ndarray:
    """Positions that must stay for ``x[index]`` (a fixed position) to pick the same element."""
    keep = np.zeros(size, dtype=bool)
    if index >= 0:
        keep[:index + 1] = True
    else:
        keep[size + index:] = True
    return keep


# Module attributes a hard apply rewrites (layer handlers, head counters): a bound read from one
# (``x[:, :self.conv.out_channels]``) changes with the pruned model.
REWRITTEN_ATTRS = frozenset({
    "in_features", "out_features", "in_channels", "out_channels", "num_features", "num_channels", "embed_dim",
    "embedding_dim", "hidden_size", "input_size", "proj_size", "head_dim", "kdim", "vdim", "nf", "nx",
    "num_parameters", "num_heads", "all_head_size"})


def _attribute_sizes(tracer) -> set[int]:
    """Values of the current module's own size attributes that a hard apply may rewrite, and of the
    head counters recorded so far. (A bound read from a *child's* attribute, ``self.conv.out_channels``,
    is not recognised: every ``self.f(x[:, :8])`` would match its consumer's ``in_channels``.)"""
    values: set[int] = set()
    mod = tracer.current_module()
    for m in ((mod,) if mod is not None else ()):
        for k in REWRITTEN_ATTRS & vars(m).keys():
            v = vars(m)[k]
            if isinstance(v, int) and not isinstance(v, bool):
                values.add(v)
            elif isinstance(v, (tuple, list)):
                values.update(x for x in v if isinstance(x, int))
    for c in tracer.store.counters:
        v = getattr(tracer.modules.get(c.module), c.attr, None)
        if isinstance(v, int):
            values.add(v)
    return values


def _maybe_computed(tracer, size: int, bounds: Sequence[int]) -> bool:
    """Could these bounds have been computed from a prunable size (``y.shape[1] // 2``, ``c =
    skip.size(1)``, ``self.hidden_size``)? A pruned model recomputes them. Conservative: any
    labelled size the forward read, or size attribute of the module, that equals this dim's size,
    equals a bound, or is a small multiple of one."""
    reads = set(tracer.size_sources) | _attribute_sizes(tracer)
    if not reads:
        return False
    pos = [b if b >= 0 else size + b for b in bounds]
    for v in reads:
        if v == size:
            return True
        for b in pos:
            if b > 1 and (v == b or (v % b == 0 and v // b <= 16)):
                return True
    return False


def _pin_kept(tracer, lab: np.ndarray, keep: np.ndarray | None, reason: str, bounds: Sequence[int] = ()) -> None:
    """Pin the ``keep`` positions of ``lab`` (all for ``None``). Where a bound may be computed from a
    size the forward read (:func:`_maybe_computed`), every position is kept."""
    if keep is not None and keep.any() and not keep.all() and _maybe_computed(tracer, int(lab.size), bounds):
        keep = None
        reason += "; the forward read a size these bounds may be computed from"
    if keep is None:
        tracer.store.pin(lab, reason)
    elif keep.any():
        tracer.store.pin(lab[keep], reason)


def renumber_supported() -> bool:
    """Can plans carry index-buffer renumbering (``Plan.renumber``)? Checked when tracing."""
    from ...plan import Plan

    return "renumber" in getattr(Plan, "__dataclass_fields__", {})


def renumber_index(index: torch.Tensor, removed: Sequence[int]) -> torch.Tensor:
    """``index`` (1-d, values into a dim of some size) after the dim's ``removed`` indices are gone:
    the positions holding a removed value are dropped and the remaining values renumbered, so
    ``x_pruned[..., renumber_index(perm, removed)]`` equals ``x[..., perm]`` without the removed
    columns. Negative values are not allowed (the tracer records only non-negative buffers)."""
    removed_t = torch.as_tensor(sorted(set(int(r) for r in removed)), dtype=index.dtype, device=index.device)
    if removed_t.numel() == 0:
        return index.clone()
    keep = ~torch.isin(index, removed_t)
    kept = index[keep]
    shift = torch.searchsorted(removed_t, kept)  # how many removed values lie below each kept value
    return (kept - shift).to(index.dtype)


def through_index(tracer, lab: np.ndarray, index, what: str) -> np.ndarray | str:
    """Labels of ``x[..., index]`` along a labelled dim (``lab``), or the reason ``lab`` was pinned."""
    store = tracer.store
    where = _where(tracer)
    name = tracer.name_of(index) if isinstance(index, torch.Tensor) else None
    real = tracer.index_buffers.get(name) if name is not None else None
    if real is None:
        kind = "a constant list" if isinstance(index, (list, tuple)) else \
            "not a registered integer buffer (e.g. computed in forward)"
        why = f"{what} in {where}: the index is {kind}, so it cannot be rewritten when indices go"
        store.pin(lab, why)
        return why
    values = real.detach().cpu().numpy().astype(np.int64).reshape(-1)
    if values.size == 0 or values.min() < 0 or values.max() >= lab.size:
        why = f"{what} by buffer `{name}` in {where}: values negative or out of range"
        store.pin(lab, why)
        return why
    if not renumber_supported():
        why = (f"{what} by buffer `{name}` in {where}: pruning through it needs the buffer renumbered, "
               "which plans cannot carry yet")
        store.pin(lab, why)
        return why
    for r in store.renumber:
        if r.buffer == name:
            if r.labels.size != lab.size:
                why = f"{what} in {where}: buffer `{name}` indexes dims of different sizes"
                store.pin(lab, why)
                store.pin(r.labels, why)
                return why
            store.unify(r.labels, lab)  # one buffer, one renumbering: the indexed dims go together
            break
    else:
        store.renumber.append(Renumber(name, lab.copy()))
    tracer.renumber_reads[name] = tracer.renumber_reads.get(name, 0) + 1
    return lab[values]

@op_rule("select", "narrow")
def select(tracer, name, args, kwargs, out):
    x = args[0]
    dim = norm_dim(arg(args, kwargs, 1, "dim"), x.dim())
    index = arg(args, kwargs, 2, "index", arg(args, kwargs, 2, "start"))
    inf = tracer.info(x)
    if dim in inf.labels and (name == "select" or out.shape[dim] != x.shape[dim]):
        size = x.shape[dim]
        if not isinstance(index, int) or isinstance(index, bool):
            keep = None
        elif name == "select":
            keep = index_keeps(size, index)
        else:  # narrow(dim, start, length): the length is fixed, so the stop is anchored where the start is
            start = index if index >= 0 else size + index
            keep = np.zeros(size, dtype=bool)
            if index >= 0:
                keep[:start + out.shape[dim]] = True
            else:
                keep[start:] = True
        _pin_kept(tracer, inf.labels[dim], keep,
                  f"{name} at a fixed {'index' if name == 'select' else 'range'} in {_where(tracer)}: "
                  "the indices up to it keep their positions",
                  [b for b in (index, arg(args, kwargs, 3, "length")) if isinstance(b, int)])
    if name == "select":
        labels = {(d if d < dim else d - 1): l for d, l in inf.labels.items() if d != dim}
    else:
        start = index if not isinstance(index, int) or index >= 0 else x.shape[dim] + index
        labels = {d: (l if d != dim else l[start:start + out.shape[dim]]) for d, l in inf.labels.items()}
    _set(tracer, out, labels, inf.nz)


def _expand_index(index, ndim):
    if not isinstance(index, tuple):
        index = (index,)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis and not isinstance(i, bool)
                 and not (isinstance(i, torch.Tensor) and i.dtype == torch.bool))
    n_real += sum(i.dim() for i in index if isinstance(i, torch.Tensor) and i.dtype == torch.bool)
    out = []
    for i in index:
        if i is Ellipsis:
            out.extend([slice(None)] * (ndim - n_real))
        else:
            out.append(i)
    if Ellipsis not in index:
        out.extend([slice(None)] * (ndim - n_real))
    return out


def _int_vector(it) -> bool:
    """A 1-d integer index (tensor or list of ints)."""
    if isinstance(it, torch.Tensor):
        return it.dim() == 1 and not it.is_floating_point() and not it.is_complex() and it.dtype != torch.bool
    return isinstance(it, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in it)


def _int_tensor(it) -> bool:
    """An integer index tensor of any rank."""
    return isinstance(it, torch.Tensor) and not it.is_floating_point() and not it.is_complex() \
        and it.dtype != torch.bool


def _fresh_pinned(tracer, size: int, reason: str) -> np.ndarray:
    """Labels for an output dim that cannot be pruned, pinned with ``reason`` (so its consumers say why)."""
    lab = tracer.store.new(size, "channel", False)
    tracer.store.pin(lab, reason)
    return lab


@op_rule("getitem")
def getitem(tracer, name, args, kwargs, out):
    x, index = args[0], args[1]
    inf = tracer.info(x)
    store = tracer.store
    where = _where(tracer)
    items = _expand_index(index, x.dim())
    adv = [k for k, it in enumerate(items) if isinstance(it, (torch.Tensor, list))]
    advanced = bool(adv)
    # one integer vector among plain slices (``x[:, perm]``): dims stay in place, the vector's dim is gathered;
    # one integer tensor of another rank (``biases[:, idxs]`` with (N, N) idxs, TinyViT's attention-bias
    # table): its dim is replaced by the index's dims, the other dims keep their labels
    one = items[adv[0]] if len(adv) == 1 else None
    rank = 1 if _int_vector(one) else (one.dim() if _int_tensor(one) else -1)
    gather = (rank >= 0 and out.dim() == x.dim() - 1 + rank
              and all(isinstance(it, slice) for k, it in enumerate(items) if k != adv[0]))
    labels: dict[int, np.ndarray] = {}
    d_in = 0
    d_out = 0
    for it in items:
        if it is None or isinstance(it, bool):
            d_out += 1
            continue
        lab = inf.labels.get(d_in)
        if isinstance(it, int):
            if lab is not None:
                _pin_kept(tracer, lab, index_keeps(x.shape[d_in], it),
                          f"`x[{it}]` on dim {d_in} in {where}: a position fixed in the code; "
                          "the indices up to it keep their positions", [it])
            d_in += 1
            continue
        if isinstance(it, slice):
            size = x.shape[d_in]
            start, stop, step = it.indices(size)
            if lab is not None:
                written = f"{'' if it.start is None else it.start}:{'' if it.stop is None else it.stop}" + \
                          ("" if it.step is None else f":{it.step}")
                _pin_kept(tracer, lab, bound_keeps(size, it.start, it.stop, it.step),
                          f"slice `[{written}]` on dim {d_in} in {where}: its bounds are fixed in the code, "
                          "so the indices that position them are kept",
                          [b for b in (it.start, it.stop) if isinstance(b, int)])
                if not advanced or gather:
                    labels[d_out] = lab[start:stop:step]
            d_in += 1
            d_out += 1
            continue
        # advanced (tensor / list) index
        if gather and rank != 1:
            if lab is not None:
                store.pin(lab, f"indexing dim {d_in} by a {rank}-d integer tensor (a lookup fixed in the model) "
                               f"in {where}")
            d_in += 1
            d_out += rank
            continue
        if gather:
            if lab is not None:
                new = through_index(tracer, lab, it, "`x[..., index]` by an integer vector")
                labels[d_out] = new if not isinstance(new, str) else _fresh_pinned(tracer, out.shape[d_out], new)
            d_in += 1
            d_out += 1
            continue
        nd = it.dim() if isinstance(it, torch.Tensor) and it.dtype == torch.bool else 1
        for k in range(nd):
            if (d_in + k) in inf.labels:
                store.pin(inf.labels[d_in + k], f"advanced indexing (mask or several index tensors) in {where}")
        d_in += nd
        d_out += 1
    if advanced and not gather:
        # only trailing full-slice dims keep their place (counted from the end)
        labels = {}
        trailing = 0
        for it in reversed(items):
            if isinstance(it, slice) and it == slice(None):
                trailing += 1
            else:
                break
        for k in range(1, trailing + 1):
            lab = inf.labels.get(x.dim() - k)
            if lab is not None:
                labels[out.dim() - k] = lab
        for d, lab in inf.labels.items():
            if d < x.dim() - trailing:
                store.pin(lab, f"advanced indexing (mask or several index tensors) in {where}")
    _set(tracer, out, labels, inf.nz)


@op_rule("setitem")
def setitem(tracer, name, args, kwargs, out):
    pin_all(tracer, [args[0], args[2] if len(args) > 2 else None], f"item assignment in {tracer.module_path}")


@op_rule("index_select", "gather", "take_along_dim", "index_add", "scatter", "scatter_add", "scatter_reduce",
         "index_fill", "index_copy", "masked_select", "take", "nonzero", "argwhere", "sort", "topk", "cumsum",
         "cumprod", "cummax", "cummin", "diff", "searchsorted", "bucketize")
def indexed(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    dim = arg(args, kwargs, 1, "dim", None)
    if name in ("index_select", "gather", "take_along_dim", "cumsum", "cumprod", "cummax", "cummin", "diff",
                "sort", "topk") and isinstance(dim, int) and inf is not None:
        dim = norm_dim(dim, x.dim())
        if name == "topk":
            dim = norm_dim(arg(args, kwargs, 2, "dim", -1), x.dim())
        if name == "sort":
            dim = norm_dim(arg(args, kwargs, 1, "dim", -1), x.dim())
        index = arg(args, kwargs, 2, "index")
        if name == "index_select" and dim in inf.labels and isinstance(out, torch.Tensor) and _int_vector(index):
            gathered = through_index(tracer, inf.labels[dim], index, "index_select")
            labels = {d: l for d, l in inf.labels.items() if d != dim}
            labels[dim] = gathered if not isinstance(gathered, str) else _fresh_pinned(tracer, out.shape[dim], gathered)
            _set(tracer, out, labels, inf.nz)
            return
        if dim in inf.labels:
            tracer.store.pin(inf.labels[dim], f"{name} along a prunable dim in {_where(tracer)}")
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.dim() == x.dim():
                labels = {d: l for d, l in inf.labels.items() if o.shape[d] == x.shape[d]}
                # data moved (or accumulated) along another dim: a zeroed unit's slice stays zero
                _set(tracer, o, labels, inf.nz)
        for other in args[1:]:
            if isinstance(other, torch.Tensor):
                tracer.pin_info(tracer.info(other), f"{name} index")
        return
    pin_all(tracer, list(args), f"{name} in {tracer.module_path}")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, torch.Tensor):
            _set(tracer, o, {})
