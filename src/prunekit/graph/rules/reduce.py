"""Reductions, softmax and normalization layers."""
from __future__ import annotations

import torch

from ..info import TensorInfo
from ..registry import op_rule
from .common import arg, couple, norm_dim

EXACT_REDUCE = ("sum", "nansum")
INEXACT_REDUCE = ("mean", "nanmean", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
                  "median", "nanmedian", "std_mean", "var_mean", "linalg_vector_norm", "aminmax", "all", "any",
                  "count_nonzero", "mode")
INDEX_REDUCE = ("argmax", "argmin")
# Reductions that map an all-zero slice to a non-zero value: after them, soft-zeroed units are no longer zero.
NONZERO_REDUCE = ("logsumexp",)


def _dims(args, kwargs, ndim, name):
    dim = arg(args, kwargs, 1, "dim", None)
    if name in ("linalg_vector_norm", "norm"):
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return list(range(ndim))
    if isinstance(dim, int):
        return [norm_dim(dim, ndim)]
    return [norm_dim(d, ndim) for d in dim]


@op_rule(*EXACT_REDUCE, *INEXACT_REDUCE, *INDEX_REDUCE)
def reduction(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    if len(args) > 1 and isinstance(args[1], torch.Tensor) and name in ("max", "min"):
        from .elementwise import binary

        return binary(tracer, "maximum" if name == "max" else "minimum", args, kwargs, out)
    reduced = _dims(args, kwargs, x.dim(), name)
    store = tracer.store
    for d in reduced:
        lab = inf.labels.get(d)
        if lab is None:
            continue
        if name in INDEX_REDUCE or name in ("max", "min", "median", "mode", "nanmedian"):
            store.pin(lab, f"{name} over a prunable dim in {tracer.module_path}")
        elif name not in EXACT_REDUCE or inf.nz:
            store.mark_inexact(lab)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    # Over the *other* dims, a zeroed unit's slice reduces to zero (sum, mean, max, norm, var ... of
    # zeros), so its elements stay zero unless they were non-zero already: exact, like adaptive pooling.
    nz = inf.nz or name in NONZERO_REDUCE
    for o in outs:
        if not isinstance(o, torch.Tensor):
            continue
        labels = {}
        if o.dim() == x.dim():  # keepdim
            labels = {d: l for d, l in inf.labels.items() if d not in reduced}
        else:
            kept = [d for d in range(x.dim()) if d not in reduced]
            if o.dim() == len(kept):
                labels = {i: inf.labels[d] for i, d in enumerate(kept) if d in inf.labels}
        tracer.set_info(o, TensorInfo(labels, nz) if labels else None)


@op_rule("softmax", "log_softmax", "_softmax", "softmin", "gumbel_softmax")
def softmax(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    dim = arg(args, kwargs, 1, "dim", None)
    dim = norm_dim(dim if dim is not None else -1, x.dim())
    if dim in inf.labels:
        tracer.store.mark_inexact(inf.labels[dim])
    tracer.set_info(out, TensorInfo(dict(inf.labels), True))


@op_rule("normalize")
def normalize(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    dim = norm_dim(arg(args, kwargs, 2, "dim", 1), x.dim())
    if dim in inf.labels:
        tracer.store.mark_inexact(inf.labels[dim])
    tracer.set_info(out, TensorInfo(dict(inf.labels), inf.nz))


def _affine(tracer, x, inf, dims, params):
    """Couple per-feature affine parameters with ``x``'s dims (params have shape x.shape[dims])."""
    labels = dict(inf.labels) if inf is not None else {}
    for p in params:
        if p is None or not isinstance(p, torch.Tensor):
            continue
        pinf = tracer.info(p)
        for k, d in enumerate(dims):
            if p.dim() == len(dims) and p.shape[k] == x.shape[d] and x.shape[d] > 1:
                lab = couple(tracer, [(x, inf, d), (p, pinf, k)], "normalization")
                if lab is not None:
                    labels[d] = lab
    return labels


@op_rule("layer_norm", "rms_norm")
def layer_norm(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    shape = list(arg(args, kwargs, 1, "normalized_shape"))
    weight = arg(args, kwargs, 2, "weight")
    bias = arg(args, kwargs, 3, "bias") if name == "layer_norm" else None
    dims = list(range(x.dim() - len(shape), x.dim()))
    if inf is not None:
        for d in dims:
            if d in inf.labels:
                # 1-d with a weight: the verification can normalize over the kept indices (exact reference)
                tracer.store.mark_inexact(inf.labels[d], norm=len(shape) == 1 and weight is not None)
                if weight is None:
                    tracer.store.pin(inf.labels[d], f"{name} without weight (its shape is fixed) in {tracer.module_path}")
    labels = _affine(tracer, x, inf, dims, [weight, bias])
    tracer.set_info(out, TensorInfo(labels, False) if labels else None)


@op_rule("batch_norm", "instance_norm")
def batch_norm(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    if name == "batch_norm":
        rm, rv = arg(args, kwargs, 1, "running_mean"), arg(args, kwargs, 2, "running_var")
        w, b = arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias")
    else:
        rm, rv = arg(args, kwargs, 1, "running_mean"), arg(args, kwargs, 2, "running_var")
        w, b = arg(args, kwargs, 3, "weight"), arg(args, kwargs, 4, "bias")
    c = 1 if x.dim() > 1 else 0
    labels = dict(inf.labels) if inf is not None else {}
    params = [p for p in (rm, rv, w, b) if isinstance(p, torch.Tensor)]
    lab = couple(tracer, [(x, inf, c)] + [(p, tracer.info(p), 0) for p in params if p.dim() == 1], name)
    if lab is not None:
        labels[c] = lab
    if inf is not None and name == "batch_norm" and bool(arg(args, kwargs, 5, "training", False)):
        for d, l in inf.labels.items():
            if d != c:
                tracer.store.mark_inexact(l)  # batch statistics mix the batch
    tracer.set_info(out, TensorInfo(labels, False) if labels else None)


@op_rule("group_norm")
def group_norm(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    g = arg(args, kwargs, 1, "num_groups")
    w, b = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    store = tracer.store
    labels = _affine(tracer, x, inf, [1], [w, b])
    lab = labels.get(1)
    if lab is not None:
        if w is None:
            store.pin(lab, f"group_norm without affine in {tracer.module_path}")
        per = lab.size // g
        gax = store.new(g, "group", True) if g > 1 else None
        inner = store.new(per, "channel", True) if per > 1 else None
        store.add_product(lab.reshape(g, per), [gax, inner])
        if inner is not None:
            store.mark_inexact(inner)  # removing channels inside a group changes its statistics
        if gax is not None:
            mod = tracer.current_module()
            if mod is not None and getattr(mod, "num_groups", None) == g:
                store.add_counter(tracer.module_path, "num_groups", gax)
            else:
                store.pin(gax, f"group_norm groups fixed in code in {tracer.module_path}")
    for d, l in (inf.labels.items() if inf is not None else ()):
        if d > 1:
            store.mark_inexact(l)
    tracer.set_info(out, TensorInfo(labels, False) if labels else None)
