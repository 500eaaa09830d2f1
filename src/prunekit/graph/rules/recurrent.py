"""Recurrent layers (``_VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``) and packed sequences.

One ``nn.LSTM``/``GRU``/``RNN`` has one ``hidden_size`` (and one ``proj_size``), so hidden
unit ``i`` of every layer and direction is one unit of removal: its gate rows in
``weight_ih``/``weight_hh``/biases, its column in ``weight_hh`` (or in ``weight_hr`` with
projections), and its feature in the outputs. Removing it is exact: with its gate rows zeroed
the unit's state stays 0 from a zero initial state (LSTM: c = 0.5 c + 0.5 tanh(0); GRU:
h = 0.5 tanh(0) + 0.5 h; RNN: tanh/relu(0)), so it feeds nothing. Projection unit ``j``
(``proj_size``) is likewise one unit across layers and directions: row ``j`` of ``weight_hr``,
column ``j`` of ``weight_hh`` and of the next layer's ``weight_ih``, feature ``j`` of ``h``.

Because every layer's and direction's units are one class, the stacked final states
``h_n``/``c_n`` ``(layers * dirs, B, H)`` carry plain labels on their last dim: any slice,
concatenation or reshape of them is handled by the ordinary shape rules.

An initial state given by the caller pins the units it sizes (its shape is fixed by the
caller), unless it was computed from prunable units: then those are coupled to the hidden units.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from ...compat import MODULE_CALL_FRAME
from ..info import TensorInfo
from ..registry import op_rule
from .common import arg, owner

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _state_passed(module: nn.Module | None) -> bool:
    """Did the caller of ``module`` pass an initial state (``hx``)?

    ``nn.RNNBase`` subclasses replace a missing ``hx`` by zeros they create themselves, so the
    ``_VF`` call cannot tell the two apart; the module call's own arguments can. They are read
    from the frame of ``nn.Module._call_impl`` (its ``args``/``kwargs`` locals) that called
    ``module``. Anything else (a functional ``_VF`` call, no such frame) counts as passed.
    """
    if not isinstance(module, nn.RNNBase):
        return True
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == MODULE_CALL_FRAME and f.f_locals.get("self") is module:
            args = f.f_locals.get("args", ())
            kwargs = f.f_locals.get("kwargs", {}) or {}
            return (len(args) > 1 and args[1] is not None) or kwargs.get("hx") is not None
        f = f.f_back
    return True


def _split_args(args: tuple) -> tuple[Any, Any, Any, list, bool, int, bool]:
    """``(input, batch_sizes, hx, params, has_biases, num_layers, bidirectional)`` of either
    ``_VF`` signature: ``(input, hx, params, has_biases, num_layers, dropout, train,
    bidirectional, batch_first)`` or, packed, ``(data, batch_sizes, hx, params, has_biases,
    num_layers, dropout, train, bidirectional)``."""
    b = args[1]
    if isinstance(b, torch.Tensor) and b.dim() == 1 and not b.is_floating_point():
        x, batch_sizes, hx, params, has_biases, num_layers, _, _, bidirectional = args[:9]
    else:
        x, hx, params, has_biases, num_layers, _, _, bidirectional = args[:8]
        batch_sizes = None
    return x, batch_sizes, hx, list(params), bool(has_biases), int(num_layers), bool(bidirectional)


@op_rule("lstm", "gru", "rnn_tanh", "rnn_relu")
def recurrent(tracer, name, args, kwargs, out):
    store = tracer.store
    x, _, hx, params, has_biases, num_layers, bidirectional = _split_args(args)
    dirs = 2 if bidirectional else 1
    per = len(params) // (num_layers * dirs)
    n_bias = 2 if has_biases else 0
    if per not in (2 + n_bias, 3 + n_bias) or per * num_layers * dirs != len(params):
        raise ValueError(f"{len(params)} recurrent weights for {num_layers} layers x {dirs} directions")
    has_proj = per == 3 + n_bias
    gates = _GATES[name]
    names = [tracer.name_of(p) for p in params]
    if any(n is None for n in names):
        raise ValueError("recurrent weights are not parameters of the model")
    mod_path = owner(names[0])
    H = params[0].shape[0] // gates
    P = params[per - 1].shape[0] if has_proj else H
    units = store.new(H, "channel", True)  # hidden_size: one class per unit over layers and directions
    proj = store.new(P, "channel", True) if has_proj else None  # proj_size, likewise

    xinf = tracer.info(x)
    c = x.dim() - 1
    in_lab = xinf.labels.get(c) if xinf is not None else None
    if xinf is not None and xinf.nz and in_lab is not None:
        store.mark_inexact(in_lab)
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = (layer * dirs + d) * per
            n_ih, n_hh = names[k], names[k + 1]
            u = store.new(H, "channel", True)
            store.unify(u, units)
            rows_ih = store.param_dim(n_ih, 0, gates * H)
            rows_hh = store.param_dim(n_hh, 0, gates * H)
            for g in range(gates):
                store.unify(rows_ih[g * H:(g + 1) * H], u)
                store.unify(rows_hh[g * H:(g + 1) * H], u)
                for bias in names[k + 2:k + 2 + n_bias]:
                    store.unify(store.param_dim(bias, 0, gates * H)[g * H:(g + 1) * H], u)
            if has_proj:
                n_hr = names[k + per - 1]
                store.unify(store.param_dim(n_hr, 1, H), u)
                o = store.new(P, "channel", True)
                store.unify(o, proj)
                store.unify(store.param_dim(n_hr, 0, P), o)
            else:
                o = u
            store.unify(store.param_dim(n_hh, 1, P), o)
            cols = store.param_dim(n_ih, 1, params[k].shape[1])
            if in_lab is not None:
                store.unify(cols, in_lab)
            outs.append(o)
        in_lab = np.concatenate(outs)  # the next layer reads both directions' features
    store.add_counter(mod_path, "hidden_size", units)
    if has_proj:
        store.add_counter(mod_path, "proj_size", proj)
    h_lab = proj if has_proj else units
    state_labels = [h_lab, units] if name == "lstm" else [h_lab]

    nz = _initial_states(tracer, name, mod_path, hx, state_labels)
    output = out[0]
    labels = {d: l for d, l in (xinf.labels.items() if xinf else ()) if d != c}
    labels[output.dim() - 1] = in_lab
    tracer.set_info(output, TensorInfo(labels, nz))
    for state, lab in zip(out[1:], state_labels):
        if isinstance(state, torch.Tensor):
            tracer.set_info(state, TensorInfo({state.dim() - 1: lab}, nz))


def _initial_states(tracer, name: str, mod_path: str, hx: Any, state_labels: list[np.ndarray]) -> bool:
    """Couple or pin the initial states; True when pruned units may start non-zero (inexact)."""
    store = tracer.store
    states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    infos = [tracer.info(h) for h in states]
    if all(i is None or i.empty for i in infos) and not _state_passed(tracer.current_module()):
        return False  # the zeros the module made itself
    nz = False
    where = mod_path or "<top>"
    for h, inf, lab in zip(states, infos, state_labels):
        if not isinstance(h, torch.Tensor):
            continue
        last = h.dim() - 1
        src = inf.labels.get(last) if inf is not None else None
        if inf is not None:
            for d, other in inf.labels.items():
                if d != last:
                    store.pin(other, f"{name} initial state in {where}")
        if src is None or h.shape[last] != lab.size:
            store.pin(lab, f"initial state of fixed size passed to {name} in {where}")
            continue
        store.unify(src, lab)
        if inf.nz:
            store.mark_inexact(lab)
            nz = True
    return nz


@op_rule("_pack_padded_sequence")
def pack_padded(tracer, name, args, kwargs, out):
    """``(input (T, B, *F) or (B, T, *F), lengths, batch_first) -> (data (N, *F), batch_sizes)``."""
    x = args[0]
    inf = tracer.info(x)
    labels = {d - 1: l for d, l in inf.labels.items() if d >= 2}
    for d in (0, 1):
        if d in inf.labels:
            store_pin(tracer, inf.labels[d], "packing along a prunable dim")
    data = out[0]
    tracer.set_info(data, TensorInfo(labels, inf.nz) if labels else None)
    tracer.set_info(out[1], None)


@op_rule("_pad_packed_sequence")
def pad_packed(tracer, name, args, kwargs, out):
    """``(data (N, *F), batch_sizes, batch_first, padding_value, total_length) -> (padded, lengths)``."""
    data = args[0]
    inf = tracer.info(data)
    if 0 in inf.labels:
        store_pin(tracer, inf.labels[0], "padding along a prunable dim")
    padding = arg(args, kwargs, 3, "padding_value", 0.0)
    labels = {d + 1: l for d, l in inf.labels.items() if d >= 1}
    tracer.set_info(out[0], TensorInfo(labels, inf.nz or padding != 0) if labels else None)
    tracer.set_info(out[1], None)


@op_rule("pad_sequence")
def pad_sequence(tracer, name, args, kwargs, out):
    """``pad_sequence([(L_i, *F)], batch_first, padding_value) -> (B, T, *F) or (T, B, *F)``."""
    seqs = list(args[0])
    padding = arg(args, kwargs, 2, "padding_value", 0.0)
    labels: dict[int, np.ndarray] = {}
    nz = padding != 0
    infos = [tracer.info(s) for s in seqs]
    for d in range(1, out.dim() - 1):
        labeled = [i.labels[d] for i in infos if i is not None and d in i.labels]
        if not labeled:
            continue
        for s, i in zip(seqs, infos):
            if i is None or d not in i.labels:
                store_pin(tracer, labeled[0], "pad_sequence with an unprunable sequence")
            else:
                tracer.store.unify(i.labels[d], labeled[0])
        labels[d + 1] = labeled[0]
    for i in infos:
        if i is not None:
            nz = nz or i.nz
            if 0 in i.labels:
                store_pin(tracer, i.labels[0], "pad_sequence along a prunable dim")
    tracer.set_info(out, TensorInfo(labels, nz) if labels else None)


def store_pin(tracer, labels: np.ndarray, what: str) -> None:
    tracer.store.pin(labels, f"{what} in {tracer.module_path or '<top>'}")
