"""Composite functional ops: multi-head attention, PReLU (recurrent layers: recurrent.py)."""
from __future__ import annotations

import torch

from ..info import TensorInfo
from ..registry import op_rule
from .common import arg, couple, owner


@op_rule("prelu")
def prelu(tracer, name, args, kwargs, out):
    x, w = args[0], args[1]
    inf = tracer.info(x)
    labels = dict(inf.labels) if inf else {}
    if w.numel() > 1:
        c = 1 if x.dim() > 1 else 0
        lab = couple(tracer, [(x, inf, c), (w, tracer.info(w), 0)], "prelu")
        if lab is not None:
            labels[c] = lab
    tracer.set_info(out, TensorInfo(labels, bool(inf and inf.nz)) if labels else None)


@op_rule("multi_head_attention_forward")
def multi_head_attention(tracer, name, args, kwargs, out):
    """``nn.MultiheadAttention``: F.multi_head_attention_forward computes ``head_dim = E // num_heads``
    from the *input* width E, so the residual width, q/k/v widths and out_proj input are one
    (heads x head_dim) grid: removing a head or a head-width offset removes it everywhere."""
    names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight"]
    a = {n: arg(args, kwargs, i, n) for i, n in enumerate(names)}
    store = tracer.store
    q, k, v = a["query"], a["key"], a["value"]
    tensors = [t for t in (q, k, v) if isinstance(t, torch.Tensor)]
    if a["use_separate_proj_weight"] or a["bias_k"] is not None or a["add_zero_attn"] or not (q is k is v):
        raise ValueError("only self-attention with a packed in_proj is supported")
    E, nh = a["embed_dim_to_check"], a["num_heads"]
    hd = E // nh
    w_in, w_out = a["in_proj_weight"], a["out_proj_weight"]
    wname = tracer.name_of(w_in)
    if wname is None:
        raise ValueError("in_proj_weight is not a parameter of the model")
    mod_path = owner(wname)
    heads = store.new(nh, "head", True) if nh > 1 else None
    width = store.new(hd, "head_dim", True) if hd > 1 else None
    qinf = tracer.info(q)
    c = q.dim() - 1
    x_lab = qinf.labels.get(c) if qinf is not None else None
    if x_lab is None:
        x_lab = store.new(E, "channel", False)
        store.pin(x_lab, f"multi-head attention on an unprunable input in {mod_path}")
    store.add_product(x_lab.reshape(nh, hd), [heads, width])
    rows = store.param_dim(wname, 0, 3 * E, active=False)
    store.add_product(rows.reshape(3, nh, hd), [None, heads, width])
    store.unify(store.param_dim(wname, 1, E), x_lab)
    if a["in_proj_bias"] is not None:
        store.unify(store.param_dim(tracer.name_of(a["in_proj_bias"]), 0, 3 * E), rows)
    oname = tracer.name_of(w_out)
    o_in = store.param_dim(oname, 1, E)
    store.add_product(o_in.reshape(nh, hd), [heads, width])
    o_out = store.param_dim(oname, 0, E, active=True)
    store.unify(o_out, x_lab)  # out width must equal embed_dim as well
    if a["out_proj_bias"] is not None:
        store.unify(store.param_dim(tracer.name_of(a["out_proj_bias"]), 0, E), o_out)
    if heads is not None:
        store.add_counter(mod_path, "num_heads", heads)
    if width is not None:
        store.add_counter(mod_path, "head_dim", width)
        store.mark_inexact(width)  # the softmax scale 1/sqrt(head_dim) changes with it
    store.add_counter(mod_path, "embed_dim", x_lab)
    store.add_counter(mod_path, "kdim", x_lab)
    store.add_counter(mod_path, "vdim", x_lab)
    store.mark_inexact(x_lab) if qinf is not None and qinf.nz else None
    for mask in (a["key_padding_mask"], a["attn_mask"]):
        if isinstance(mask, torch.Tensor):
            tracer.pin_info(tracer.info(mask), "attention mask")
    o0 = out[0]
    labels = {d: l for d, l in (qinf.labels.items() if qinf else ()) if d != c}
    labels[o0.dim() - 1] = o_out
    tracer.set_info(o0, TensorInfo(labels, False))
    if isinstance(out[1], torch.Tensor):
        tracer.set_info(out[1], None)
