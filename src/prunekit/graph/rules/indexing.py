"""Indexing ops: select/narrow, ``x[...]`` (getitem/setitem), index_select/gather/scatter and friends."""
from __future__ import annotations

import numpy as np
import torch

from ..registry import op_rule
from .common import arg, norm_dim, pin_all
from .shape import _set

@op_rule("select", "narrow")
def select(tracer, name, args, kwargs, out):
    x = args[0]
    dim = norm_dim(arg(args, kwargs, 1, "dim"), x.dim())
    index = arg(args, kwargs, 2, "index", arg(args, kwargs, 2, "start"))
    inf = tracer.info(x)
    if name == "select" and inf.joint is not None and inf.joint[0] == dim and isinstance(index, int):
        _, b, grid = inf.joint
        labels = {(d if d < dim else d - 1): l for d, l in inf.labels.items() if d != dim}
        labels[b if b < dim else b - 1] = grid[index]
        _set(tracer, out, labels, inf.nz)
        return
    if dim in inf.labels and (name == "select" or out.shape[dim] != x.shape[dim]):
        tracer.store.pin(inf.labels[dim], f"{name} at a fixed index in {tracer.module_path or '<top>'}")
    if name == "select":
        labels = {(d if d < dim else d - 1): l for d, l in inf.labels.items() if d != dim}
    else:
        labels = {d: (l if d != dim else l[index:index + out.shape[dim]]) for d, l in inf.labels.items()}
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


@op_rule("getitem")
def getitem(tracer, name, args, kwargs, out):
    x, index = args[0], args[1]
    inf = tracer.info(x)
    store = tracer.store
    where = tracer.module_path or "<top>"
    items = _expand_index(index, x.dim())
    advanced = any(isinstance(i, (torch.Tensor, list)) for i in items)
    labels: dict[int, np.ndarray] = {}
    joint_pick = None
    d_in = 0
    d_out = 0
    for it in items:
        if it is None:
            d_out += 1
            continue
        lab = inf.labels.get(d_in)
        if isinstance(it, int):
            if inf.joint is not None and inf.joint[0] == d_in:
                joint_pick = (inf.joint[1], inf.joint[2][it])
            if lab is not None:
                store.pin(lab, f"indexing at a fixed position in {where}")
            d_in += 1
            continue
        if isinstance(it, slice):
            size = x.shape[d_in]
            start, stop, step = it.indices(size)
            full = start == 0 and stop >= size and step == 1
            if lab is not None:
                if not full:
                    store.pin(lab, f"slicing with fixed bounds in {where}")
                if not advanced:
                    labels[d_out] = lab[start:stop:step]
            d_in += 1
            d_out += 1
            continue
        # advanced (tensor / list) index
        nd = it.dim() if isinstance(it, torch.Tensor) and it.dtype == torch.bool else 1
        for k in range(nd):
            if (d_in + k) in inf.labels:
                store.pin(inf.labels[d_in + k], f"advanced indexing in {where}")
        d_in += nd
        d_out += 1
    if advanced:
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
                store.pin(lab, f"advanced indexing in {where}")
    if inf.joint is not None and joint_pick is not None:
        b, grid = joint_pick
        # position of dim b in the output = count of kept dims before it
        kept_before = 0
        di = 0
        for it in items:
            if it is None:
                kept_before += 1
                continue
            if di == b:
                break
            if not isinstance(it, int):
                kept_before += 1
            di += 1
        labels[kept_before] = grid
    elif inf.joint is not None:
        store.pin(inf.joint[2], f"indexing stacked RNN state in {where}")
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
        if dim in inf.labels:
            tracer.store.pin(inf.labels[dim], f"{name} along a prunable dim in {tracer.module_path}")
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for o in outs:
            if isinstance(o, torch.Tensor) and o.dim() == x.dim():
                labels = {d: l for d, l in inf.labels.items() if o.shape[d] == x.shape[d]}
                _set(tracer, o, labels, True)
        for other in args[1:]:
            if isinstance(other, torch.Tensor):
                tracer.pin_info(tracer.info(other), f"{name} index")
        return
    pin_all(tracer, list(args), f"{name} in {tracer.module_path}")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, torch.Tensor):
            _set(tracer, o, {})
