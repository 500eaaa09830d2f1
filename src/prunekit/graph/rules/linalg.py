"""Contractions: linear, convolutions, matmul/einsum, embedding, scaled dot-product attention.

A weight's output dim is a *source* of prunable units (active labels); its input dim is
coupled to the labels of the tensor it contracts with.
"""
from __future__ import annotations

import re

import numpy as np
import torch

from ..info import TensorInfo
from ..registry import op_rule
from .common import arg, couple, norm_dim, owner
from .elementwise import pin_cached


def _consume(tracer, inf, dims):
    """Contracting over ``dims``: non-zero soft-zeroed elements make these units inexact."""
    if inf is not None and inf.nz:
        for d in dims:
            if d in inf.labels:
                tracer.store.mark_inexact(inf.labels[d])


def _weight_dim(tracer, w, dim, active):
    name = tracer.name_of(w)
    if name is not None:
        return tracer.store.param_dim(name, dim, w.shape[dim], active=active)
    inf = tracer.info(w)
    lab = inf.labels.get(dim) if inf is not None else None
    if lab is not None and active:
        _activate_derived(tracer.store, lab)
    return lab


def _activate_derived(store, lab: np.ndarray) -> None:
    """A weight computed from a parameter (timm's ``ScaledStdConv2d`` standardizes ``weight.reshape(1, out, -1)``
    with ``F.batch_norm`` and reshapes it back; weight norm; a mask): when ``lab`` is exactly one parameter
    dim's labels, in any order, that dim is the output dim of the op the computed weight feeds, so its
    indices become sources, as if the parameter were used directly."""
    lo, hi = int(lab.min()), int(lab.max())
    for (pname, d), labels in store.param_dims.items():
        if labels.size == lab.size and int(labels[0]) == lo and int(labels[-1]) == hi \
                and np.unique(lab).size == lab.size:
            store.param_dim(pname, d, labels.size, active=True)
            return


@op_rule("linear")
def linear(tracer, name, args, kwargs, out):
    x, w = args[0], arg(args, kwargs, 1, "weight")
    b = arg(args, kwargs, 2, "bias")
    xinf, winf = tracer.info(x), tracer.info(w)
    store = tracer.store
    if tracer.name_of(w) is None:  # a parameter's input columns are zeroed with the unit: its value is then moot
        _consume(tracer, xinf, [x.dim() - 1])
    w_out = _weight_dim(tracer, w, 0, True) if w.shape[0] > 1 else None
    if w.shape[1] > 1:
        couple(tracer, [(x, xinf, x.dim() - 1), (w, tracer.info(w), 1)], "linear input")
    if b is not None and w_out is not None:
        couple(tracer, [(b, tracer.info(b), 0), (w, tracer.info(w), 0)], "linear bias")
    labels = {d: l for d, l in (xinf.labels.items() if xinf else ()) if d < x.dim() - 1}
    if w_out is not None:
        labels[out.dim() - 1] = w_out
    tracer.set_info(out, TensorInfo(labels, False) if labels else None)


def _conv(tracer, name, x, w, b, groups, transposed, out):
    store = tracer.store
    nsp = w.dim() - 2
    c = x.dim() - nsp - 1
    xinf = tracer.info(x)
    if groups != 1 or tracer.name_of(w) is None:  # as in linear: zeroed weight columns make a non-zero input moot
        _consume(tracer, xinf, [c])
    w_in_dim, w_out_dim = (0, 1) if transposed else (1, 0)
    cin, cout = x.shape[c], out.shape[c]
    w_out = _weight_dim(tracer, w, w_out_dim, True)  # (cout / g) if transposed else cout
    w_in = _weight_dim(tracer, w, w_in_dim, groups > 1 and not transposed and w.shape[w_in_dim] > 1)  # cin or cin/g
    x_lab = xinf.labels.get(c) if xinf is not None else None
    where = tracer.module_path or "<top>"
    if groups == 1:
        if x_lab is not None:
            store.unify(x_lab, w_in)
        out_lab = w_out
    else:
        gax = store.new(groups, "group", True)
        cin_g, cout_g = cin // groups, cout // groups
        if x_lab is None:  # the input's channels are fixed: neither a group nor a per-group input width may go
            store.pin(gax, f"grouped {name} on an unprunable input in {where}")
            x_lab = store.new(cin, "channel", False)
            store.pin(x_lab, f"grouped {name} on an unprunable input in {where}")
        if transposed:
            in_inner = store.new(cin_g, "channel", True) if cin_g > 1 else None
            store.add_product(x_lab.reshape(groups, cin_g), [gax, in_inner])
            store.add_product(w_in.reshape(groups, cin_g), [gax, in_inner])
            out_lab = store.new(cout, "merge", False)
            store.add_product(out_lab.reshape(groups, cout_g), [gax, w_out if cout_g > 1 else None])
        else:
            store.add_product(x_lab.reshape(groups, cin_g), [gax, w_in if cin_g > 1 else None])
            out_inner = store.new(cout_g, "channel", True) if cout_g > 1 else None
            store.add_product(w_out.reshape(groups, cout_g), [gax, out_inner])
            out_lab = w_out
        wname = tracer.name_of(w)
        mod = tracer.modules.get(owner(wname)) if wname else None
        if mod is not None and getattr(mod, "groups", None) == groups:
            store.add_counter(owner(wname), "groups", gax)
        else:
            store.pin(gax, f"grouped {name} with groups fixed in code in {where}")
    if b is not None:
        couple(tracer, [(b, tracer.info(b), 0), (out, TensorInfo({c: out_lab}), c)], "conv bias")
    labels = {d: l for d, l in (xinf.labels.items() if xinf else ()) if d < c}
    pointwise = all(k == 1 for k in w.shape[2:]) and all(x.shape[d] == out.shape[d] for d in range(c + 1, x.dim()))
    for d, l in (xinf.labels.items() if xinf else ()):
        if d > c:
            if pointwise:  # a 1x1 kernel, no stride or padding: each position on its own (CoaT's ``aggregate``)
                labels[d] = l
            else:
                store.pin(l, f"{name} over a prunable spatial dim in {where}")
    labels[c] = out_lab
    tracer.set_info(out, TensorInfo(labels, False))


@op_rule("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv(tracer, name, args, kwargs, out):
    x, w = args[0], arg(args, kwargs, 1, "weight")
    b = arg(args, kwargs, 2, "bias")
    groups = arg(args, kwargs, 6, "groups", 1)  # 7th argument of both conv and conv_transpose
    _conv(tracer, name, x, w, b, groups, name.startswith("conv_transpose"), out)


@op_rule("embedding", "embedding_bag")
def embedding(tracer, name, args, kwargs, out):
    ids, w = args[0], arg(args, kwargs, 1, "weight")
    if name == "embedding_bag":
        raise ValueError("embedding_bag is not supported")
    iinf = tracer.info(ids)
    lab = _weight_dim(tracer, w, 1, True)
    labels = {d: l for d, l in (iinf.labels.items() if iinf else ())}
    labels[out.dim() - 1] = lab
    tracer.set_info(out, TensorInfo(labels, False))


def _activate_weight(tracer, t, dims):
    """A parameter used directly in a matmul is a weight: its kept dims become sources."""
    name = tracer.name_of(t)
    if name is None:
        return
    for d in dims:
        if t.shape[d] > 1:
            tracer.store.param_dim(name, d, t.shape[d], active=True)


def _matmul(tracer, name, a, b, out):
    """``a @ b`` with numpy broadcasting semantics; returns nothing, labels ``out``."""
    ainf, binf = tracer.info(a), tracer.info(b)
    a1, b1 = a.dim() == 1, b.dim() == 1
    ka = a.dim() - 1
    kb = 0 if b1 else b.dim() - 2
    _consume(tracer, ainf, [ka])
    _consume(tracer, binf, [kb])
    if a.shape[ka] > 1:
        couple(tracer, [(a, ainf, ka), (b, binf, kb)], name + " contraction")
    if not a1 and a.dim() >= 2:
        _activate_weight(tracer, a, [a.dim() - 2])
    if not b1:
        _activate_weight(tracer, b, [b.dim() - 1])
        ainf, binf = tracer.info(a), tracer.info(b)
    labels = {}
    nd = out.dim()
    # batch dims
    a_batch = a.dim() - 2 if not a1 else 0
    b_batch = b.dim() - 2 if not b1 else 0
    out_batch = nd - (0 if a1 else 1) - (0 if b1 else 1)
    for od in range(out_batch):
        size = out.shape[od]
        if size <= 1:
            continue
        entries = []
        for t, inf, nb in ((a, ainf, a_batch), (b, binf, b_batch)):
            k = od - (out_batch - nb)
            if k >= 0 and t.shape[k] == size:
                entries.append((t, inf, k))
        lab = couple(tracer, entries, name + " batch")
        if lab is not None:
            labels[od] = lab
    if not a1 and ainf is not None and (a.dim() - 2) in ainf.labels:
        labels[out_batch] = ainf.labels[a.dim() - 2]
    if not b1 and binf is not None and (b.dim() - 1) in binf.labels:
        labels[nd - 1] = binf.labels[b.dim() - 1]
    nz = bool((ainf and ainf.nz) and (binf and binf.nz))
    tracer.set_info(out, TensorInfo(labels, nz) if labels else None)


@op_rule("matmul", "mm", "bmm", "rmatmul")
def matmul(tracer, name, args, kwargs, out):
    a, b = args[0], args[1]
    if name == "rmatmul":
        a, b = b, a
    _matmul(tracer, name, a, b, out)


@op_rule("addmm", "baddbmm", "addbmm", "addmv")
def addmm(tracer, name, args, kwargs, out):
    bias, a, b = args[0], args[1], args[2]
    if name == "addbmm":
        raise ValueError("addbmm reduces the batch")
    _matmul(tracer, name, a, b, out)
    inf = tracer.info(out)
    from .common import elementwise

    labels = elementwise(tracer, name + " bias", [out, bias], out)
    tracer.set_info(out, TensorInfo(labels, bool(inf and inf.nz)) if labels else None)


@op_rule("einsum")
def einsum(tracer, name, args, kwargs, out):
    eq = args[0].replace(" ", "")
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    if "..." in eq:
        raise ValueError("einsum with ellipsis")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if not rhs and "->" not in eq:
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    infos = [tracer.info(t) for t in ops]
    labels = {}
    for letter in sorted(set("".join(terms))):
        entries = [(t, inf, term.index(letter)) for t, inf, term in zip(ops, infos, terms) if letter in term]
        contracted = letter not in rhs
        for t, inf, k in entries:
            if contracted:
                _consume(tracer, inf, [k])
            elif tracer.name_of(t) is not None and len(entries) > 1:
                _activate_weight(tracer, t, [k])
        infos = [tracer.info(t) for t in ops]
        entries = [(t, inf, term.index(letter)) for t, inf, term in zip(ops, infos, terms) if letter in term]
        entries = [e for e in entries if e[0].shape[e[2]] > 1]
        lab = couple(tracer, entries, "einsum")
        if lab is not None and not contracted:
            labels[rhs.index(letter)] = lab
    tracer.set_info(out, TensorInfo(labels, False) if labels else None)


def _view_rows(tracer, q: torch.Tensor) -> tuple[np.ndarray, str] | None:
    """Labels of the rows ``q``'s (..., H, N, D) elements are read from, when ``q`` is a view of a
    contiguous tensor whose last dim is one parameter's dim-0 rows (timm's ``qkv(x).reshape(B, N, 3, H, D)
    .permute(2, 0, 3, 1, 4).unbind(0)``): ``(H, D)`` row labels and the parameter's module path, or None.
    (That the rows' classes hold nothing but that module's rows is checked once the classes are final,
    by :class:`~prunekit.graph.groups.Resolver`.)"""
    base = q._base
    if base is None or q.dim() < 3 or not base.is_contiguous():
        return None
    binf = tracer.info(base)
    rows = binf.labels.get(base.dim() - 1) if binf is not None else None
    key = tracer.store.param_with_labels(rows) if rows is not None else None
    if key is None or key[1] != 0:
        return None  # not a parameter's own rows (a sum, a normalized tensor ...)
    wname = key[0]
    F = base.shape[-1]
    H, D = q.shape[-3], q.shape[-1]
    sH, sE = q.stride(-3), q.stride(-1)
    if any(q.stride(d) % F for d in range(q.dim()) if d not in (q.dim() - 3, q.dim() - 1) and q.shape[d] > 1):
        return None  # batch and sequence dims must step over whole rows
    start = (q.storage_offset() - base.storage_offset()) % F
    feat = start + sH * np.arange(H)[:, None] + sE * np.arange(D)[None, :]  # (H, D) positions in a row
    if feat.max() >= F or np.unique(feat).size != feat.size:
        return None
    return rows[feat], owner(wname)


@op_rule("scaled_dot_product_attention")
def sdpa(tracer, name, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    mask = arg(args, kwargs, 3, "attn_mask")
    scale = arg(args, kwargs, 6, "scale")
    pin_cached(tracer, [mask])
    qi, ki, vi = tracer.info(q), tracer.info(k), tracer.info(v)
    store = tracer.store
    E = q.dim() - 1
    H = q.dim() - 3
    _consume(tracer, qi, [E])
    _consume(tracer, ki, [E])
    qk = couple(tracer, [(q, qi, E), (k, ki, E)], "attention q.k")
    if qk is not None and scale is None:  # the default scale 1/sqrt(head width) changes with the width
        found = _view_rows(tracer, q)
        if found is not None:
            store.add_fold(qk, *found)  # ... unless the query's source rows are rescaled to give it back
        else:
            store.mark_inexact(qk)
    labels = {}
    if q.dim() >= 3:
        hq, hk = q.shape[H], k.shape[H]
        kv_heads = couple(tracer, [(k, ki, H), (v, vi, H)], "attention heads")
        q_heads = qi.labels.get(H) if qi is not None else None
        if hq == hk:
            lab = couple(tracer, [(q, qi, H), (k, ki, H), (v, vi, H)], "attention heads")
            q_heads = lab
        elif kv_heads is not None or q_heads is not None:
            rep = hq // hk
            if kv_heads is None:
                store.pin(q_heads, "grouped-query attention with unprunable k/v heads")
            elif q_heads is None:
                store.pin(kv_heads, "grouped-query attention with unprunable q heads")
            else:
                store.unify(q_heads, np.repeat(kv_heads, rep))  # (Hkv, rep) -> Hq
        if q_heads is not None:
            labels[H] = q_heads
        mh = H - (q.dim() - mask.dim()) if isinstance(mask, torch.Tensor) else -1  # the mask broadcasts from the right
        if mh >= 0 and mask.shape[mh] == hq and hq > 1:  # (B, H, L, S) or (H, L, S): a per-head bias (TinyViT)
            couple(tracer, [(q, TensorInfo({H: q_heads}) if q_heads is not None else None, H),
                            (mask, tracer.info(mask), mh)], "attention mask heads")
        for d in range(H):
            lab = couple(tracer, [(t, i, d) for t, i in ((q, qi), (k, ki), (v, vi)) if t.shape[d] == out.shape[d]
                                  and out.shape[d] > 1], "attention batch")
            if lab is not None:
                labels[d] = lab
    for t, i in ((q, qi), (k, ki), (v, vi)):  # sequence dims
        if i is not None and (t.dim() - 2) in i.labels:
            store.pin(i.labels[t.dim() - 2], "attention over a prunable sequence dim")
    if vi is not None and E in vi.labels:
        labels[E] = vi.labels[E]
    if isinstance(mask, torch.Tensor):
        mi = tracer.info(mask)
        mh = H - (q.dim() - mask.dim()) if q.dim() >= 3 else -1
        if mi is not None:
            for d, l in mi.labels.items():
                if d != mh:
                    store.pin(l, "attention mask")
    tracer.set_info(out, TensorInfo(labels, bool(vi and vi.nz)) if labels else None)
