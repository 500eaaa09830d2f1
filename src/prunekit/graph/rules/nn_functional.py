"""Composite functional ops: multi-head attention, recurrent layers, PReLU."""
from __future__ import annotations

import numpy as np
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


_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


@op_rule("lstm", "gru", "rnn_tanh", "rnn_relu")
def recurrent(tracer, name, args, kwargs, out):
    store = tracer.store
    if isinstance(args[1], torch.Tensor) and args[1].dim() == 1 and args[1].dtype == torch.long:
        raise ValueError("packed sequences are not supported")
    x = args[0]
    hx = args[1]
    params = list(args[2])
    has_biases, num_layers, _, _, bidirectional = args[3:8]
    dirs = 2 if bidirectional else 1
    per = len(params) // (num_layers * dirs)
    if per not in (2, 4):
        raise ValueError("recurrent layers with projections (proj_size) are not supported")
    gates = _GATES[name]
    for h in (hx if isinstance(hx, (tuple, list)) else (hx,)):
        tracer.pin_info(tracer.info(h), f"{name} initial state")
    xinf = tracer.info(x)
    c = x.dim() - 1
    in_lab = xinf.labels.get(c) if xinf is not None else None
    if xinf is not None and xinf.nz and in_lab is not None:
        store.mark_inexact(in_lab)
    hidden = []
    wname0 = tracer.name_of(params[0])
    mod_path = owner(wname0) if wname0 else ""
    for layer in range(num_layers):
        layer_labels = []
        for d in range(dirs):
            ws = params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
            w_ih, w_hh = ws[0], ws[1]
            H = w_hh.shape[1]
            n_ih, n_hh = tracer.name_of(w_ih), tracer.name_of(w_hh)
            if n_ih is None or n_hh is None:
                raise ValueError("recurrent weights are not parameters of the model")
            units = store.new(H, "channel", True)
            for g in range(gates):
                store.unify(store.param_dim(n_ih, 0, gates * H)[g * H:(g + 1) * H], units)
                store.unify(store.param_dim(n_hh, 0, gates * H)[g * H:(g + 1) * H], units)
                if per == 4:
                    for bias in ws[2:4]:
                        store.unify(store.param_dim(tracer.name_of(bias), 0, gates * H)[g * H:(g + 1) * H], units)
            store.unify(store.param_dim(n_hh, 1, H), units)
            cols = store.param_dim(n_ih, 1, w_ih.shape[1])
            if in_lab is not None:
                store.unify(cols, in_lab)
            layer_labels.append(units)
        hidden.append(layer_labels)
        in_lab = np.concatenate(layer_labels)
    store.add_counter(mod_path, "hidden_size", hidden[0][0])
    for layer_labels in hidden[1:]:
        for units in layer_labels:
            store.unify(units, hidden[0][0])  # one hidden_size for every layer and direction
    output = out[0]
    labels = {d: l for d, l in (xinf.labels.items() if xinf else ()) if d != c}
    labels[output.dim() - 1] = in_lab
    tracer.set_info(output, TensorInfo(labels, False))
    grid = np.stack([u for layer_labels in hidden for u in layer_labels])  # (layers*dirs, H)
    for state in out[1:]:
        if isinstance(state, torch.Tensor):
            jd = 0 if state.dim() == 3 else None
            if jd is None:
                tracer.set_info(state, TensorInfo({state.dim() - 1: grid[0]}) if grid.shape[0] == 1 else None)
            else:
                tracer.set_info(state, TensorInfo({}, False, (0, 2, grid)))
