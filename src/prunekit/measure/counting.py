"""Parameters and MACs, counted by running the model under torch's own FLOP formulas.

``MacCounter`` is a lean ``TorchDispatchMode`` over ``torch.utils.flop_counter.flop_registry``
(the same per-op formulas ``FlopCounterMode`` uses, without its per-module bookkeeping), so
it is cheap enough to run on every prune; MACs = FLOPs / 2.

Two CPU inference kernels have no formula in torch's registry, so ``FlopCounterMode`` counts
nothing for them: ``_scaled_dot_product_flash_attention_for_cpu`` (SDPA on CPU) and
``_native_multi_head_attention`` (``nn.MultiheadAttention``'s eval fast path). ``MacCounter``
counts them with the registry's own attention formula (and the projections' matmuls), so an
eval forward counts what the same model counts with the fast path off. Likewise the fused
recurrent kernels (``mkldnn_rnn_layer``: ``nn.LSTM`` on CPU; ``_cudnn_rnn``) are counted as the
matmuls of the unfused path that the meta device and packed sequences run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from ..compat import SHAPE_WRAPPED, TorchDispatchMode, aten_op, flop_registry, overload_packet, sdpa_flop_count


@dataclass(frozen=True)
class Counts:
    params: int
    macs: int


_PLAIN = (int, float, bool, type(None))


def _shapes(x: Any) -> Any:
    if type(x) in _PLAIN:  # most arguments (strides, paddings, flags): nothing to look into
        return x
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, (tuple, list)):
        if all(type(i) in _PLAIN for i in x):
            return x
        return type(x)([_shapes(i) for i in x])
    return x


def flops_of(rule, args: tuple, kwargs: dict, out: Any) -> int:
    """``rule(*args, **kwargs, out_val=out)`` for a ``flop_registry`` formula, calling the formula
    on shapes directly when torch wrapped it (its pytree-based wrapper costs more than the op)."""
    if getattr(rule, "__code__", None) is SHAPE_WRAPPED and hasattr(rule, "__wrapped__"):
        return rule.__wrapped__(*_shapes(args), out_shape=_shapes(out), **{k: _shapes(v) for k, v in kwargs.items()})
    return rule(*args, **kwargs, out_val=out)


def _native_mha_flops(query, key, value, embed_dim: int, num_head: int, *args, out_val=None, **kwargs) -> int:
    """``aten._native_multi_head_attention``: q/k/v in-projections, attention, out-projection."""
    b, tq, e = query.shape  # (B, Tq, E); the fast path only runs batched
    tk = key.shape[1]
    d = embed_dim // num_head
    projections = 2 * b * (tq + 2 * tk) * e * embed_dim + 2 * b * tq * embed_dim * embed_dim
    return projections + sdpa_flop_count((b, num_head, tq, d), (b, num_head, tk, d), (b, num_head, tk, d))


def _cpu_sdpa_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``: the registry's formula for the GPU kernels."""
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)


def _rnn_steps(x: Any, packed: bool) -> int:
    """Rows the recurrent matmuls run over: time x batch, or the packed data's rows."""
    shape = _shape_of(x)
    return shape[0] if packed else math.prod(shape[:-1])


def _mkldnn_rnn_layer_flops(input, weight0, weight1, *args, out_val=None, **kwargs) -> int:
    """``aten.mkldnn_rnn_layer`` (one layer and direction of a CPU ``nn.LSTM``): the input and hidden
    matmuls at every step, ``2 * steps * (w_ih + w_hh)``, as the ``addmm`` calls of the unfused path count."""
    return 2 * _rnn_steps(input, False) * (math.prod(_shape_of(weight0)) + math.prod(_shape_of(weight1)))


def _cudnn_rnn_flops(input, weight, *args, out_val=None, **kwargs) -> int:
    """``aten._cudnn_rnn`` (every layer and direction): ``2 * steps`` per weight-matrix element
    (``weight_ih``, ``weight_hh``, ``weight_hr``; the 1-d biases are not matmuls)."""
    batch_sizes = args[12] if len(args) > 12 else kwargs.get("batch_sizes")
    steps = _rnn_steps(input, bool(batch_sizes is not None and len(batch_sizes)))
    return 2 * steps * sum(math.prod(_shape_of(w)) for w in weight if len(_shape_of(w)) == 2)


# Formulas for the fused recurrent kernels, usable as ``FlopCounterMode(custom_mapping=RNN_FLOP_FORMULAS)``
# (they take tensors or, as FlopCounterMode passes them, shapes).
RNN_FLOP_FORMULAS = {torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
                     aten_op("_cudnn_rnn"): _cudnn_rnn_flops}


_MISSING_RULES = {  # ops whose FLOPs torch's registry does not know (looked up after it)
    name: rule for name, rule in (("_native_multi_head_attention", _native_mha_flops),
                                  ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
                                  ("mkldnn_rnn_layer", _mkldnn_rnn_layer_flops),
                                  ("_cudnn_rnn", _cudnn_rnn_flops))
}


def flop_rule(func) -> Any:
    """The FLOP formula for an ATen op: torch's registry first, then the CPU kernels it lacks."""
    packet = overload_packet(func)
    return flop_registry.get(packet) or _MISSING_RULES.get(packet.__name__)


_CONV = torch.ops.aten.convolution.default


class MacCounter(TorchDispatchMode):
    """Counts FLOPs of every ATen op that torch's flop counter knows (matmuls, convs, attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self._rules: dict[Any, Any] = {}  # op overload -> its FLOP formula (or None)

    @property
    def macs(self) -> int:
        return int(self.flops // 2)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rules = self._rules  # per op overload: looked up once per count
        rule = rules[func] if func in rules else rules.setdefault(func, flop_rule(func))
        if rule is not None:
            if func is _CONV and len(args) > 6 and not args[6] and isinstance(out, torch.Tensor):  # not transposed
                # torch's conv_flop_count: 2 * output elements * (in_channels / groups) * kernel size
                self.flops += 2 * out.numel() * math.prod(args[1].shape[1:])
            else:
                self.flops += flops_of(rule, args, kwargs, out)
        return out


def count(model: nn.Module, example_inputs: Any = (), example_kwargs: Mapping[str, Any] | None = None) -> Counts:
    """Parameters (unique tensors) and MACs of one eval forward (torch's FLOP formulas / 2)."""
    from ..graph.tracer import as_inputs  # the graph imports measure.counting: import at call time

    example_inputs = as_inputs(example_inputs)
    params = sum(p.numel() for p in model.parameters())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            counter = MacCounter()
            with counter:
                model(*example_inputs, **dict(example_kwargs or {}))
    finally:
        model.train(was)
    return Counts(params=params, macs=counter.macs)
