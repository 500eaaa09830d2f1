"""Run a model on the ``meta`` device: shapes and op sequence without computing anything.

Tracing and shape checks only need shapes, so we run the model with meta stand-ins swapped
into its parameter and buffer slots (:func:`swapped`) and meta copies of its inputs. A model
that needs real values (data-dependent control flow, ``.item()``, ops without meta kernels)
raises there, and callers fall back to a real forward.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..compat import dispatch_modes, module_slots, refresh_rnn_flat_weights, sdpa_flop_count, tree_leaves, tree_map
from ..measure.counting import MacCounter
from .shadows import Shadows, is_value, meta_of
from .walk import Walk, walk

# Ops whose output has the input's shape: on meta tensors we skip their (Python) meta kernels.
SHAPE_PRESERVING = frozenset({
    "batch_norm", "instance_norm", "layer_norm", "group_norm", "rms_norm", "relu", "relu6", "hardtanh", "gelu",
    "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "leaky_relu", "elu", "selu", "mish", "dropout",
    "relu_", "hardtanh_", "silu_", "hardswish_", "hardsigmoid_", "sigmoid_", "tanh_", "leaky_relu_",
})


# Ops that never reach a matmul, convolution or attention kernel: with a function-level
# counter they run without the FLOP-counting dispatch mode (whose per-op cost dominates a meta
# forward). Anything not listed here is counted by torch's own formulas, so a missing name only
# costs speed, never a wrong count.
MAC_FREE = SHAPE_PRESERVING | frozenset({
    "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__", "rsub",
    "mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "__truediv__", "__itruediv__",
    "__rtruediv__", "__floordiv__", "__mod__", "neg", "__neg__", "pow", "__pow__", "__rpow__", "sqrt", "rsqrt",
    "exp", "log", "abs", "clamp", "clamp_", "clip", "softmax", "log_softmax", "__get__", "size", "dim", "numel",
    "__len__", "__iter__", "__getitem__", "__setitem__", "__contains__", "__eq__", "__ne__", "__and__", "__or__",
    "eq", "ne", "gt", "lt", "ge", "le", "where", "masked_fill", "masked_fill_", "view", "reshape", "flatten",
    "unflatten", "permute", "transpose", "t", "contiguous", "squeeze", "unsqueeze", "expand", "expand_as",
    "repeat", "narrow", "select", "cat", "concat", "concatenate", "stack", "split", "chunk", "unbind", "roll",
    "flip", "pad", "interpolate", "upsample", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d",
    "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "mean", "sum", "amax", "amin", "max", "min",
    "argmax", "std", "var", "cumsum", "embedding", "to", "type", "float", "half", "double", "clone", "detach",
    "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full",
    "erf", "cos", "sin", "tanh_", "softplus", "glu", "logsumexp", "stochastic_depth", "dropout1d",
    "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "is_floating_point", "is_complex",
    "get_device", "__bool__", "__int__", "__float__", "__index__", "requires_grad_", "fill_", "zero_",
    "copy_", "masked_select", "index_select", "gather", "scatter", "arange", "zeros", "ones", "full",
    "_assert",  # torch._assert(condition, message): a check, reached through the mode for every call
})


class ShapeOnly(TorchFunctionMode):
    """On meta tensors, answer shape-preserving ops with an empty tensor of the input's shape,
    and convolutions with one of the output's shape (after checking the channel counts, as
    torch does), skipping their Python meta kernels.

    With a ``counter``, MACs are counted per call: convolutions, linear and 2-/3-d matmuls by
    torch's formulas on the shapes (on real tensors too: see :func:`counting`), :data:`MAC_FREE`
    ops not at all, every other op under the counter's dispatch mode (so whatever it decomposes
    into is counted by torch's FLOP formulas).
    """

    def __init__(self, counter: MacCounter | None = None, shadows: Shadows | None = None) -> None:
        super().__init__()
        self.counter = counter
        self.shadows = shadows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.call(func, args, kwargs or {})

    def call(self, func, args: tuple, kwargs: dict) -> Any:
        """Run one torch function call the shape-only way (the tracer calls this for every op); with
        ``shadows``, an op on tensors that all have real values runs on those too (see :mod:`.shadows`)."""
        name = getattr(func, "__name__", "")
        if self.shadows:
            ran, real = self.shadows.real_call(name, func, args, kwargs)
            if ran:
                return self._shadowed(name, func, args, kwargs, real)
        return self._meta_call(name, func, args, kwargs)

    def _shadowed(self, name: str, func, args: tuple, kwargs: dict, real: Any) -> Any:
        """The meta result of an op whose real result ``real`` (on the shadows) is known: a value (``item``,
        ``__bool__``, ``__contains__`` ...) is answered from it and recorded as read; tensors come from the
        meta path as usual (so MACs and views are as without shadows) and get ``real``'s tensors as shadows,
        or, where the meta path cannot run (an output shape that depends on values), are made from them."""
        if real is not None and is_value(real):
            self.shadows.read(name)
            return real
        if name in _FROM_SHADOW and isinstance(real, torch.Tensor) and real.dim() == 0:
            out = meta_of(real)  # a 0-d bool (``torch.all(mask == 1)``): what torch's meta path gives, without it
            self.shadows.pair(out, real)
            return out
        try:
            out = self._meta_call(name, func, args, kwargs)
        except Exception:
            out = meta_of(real)
            if out is None:
                raise
            self.shadows.read(name)
        self.shadows.pair(out, real)
        return out

    def _meta_call(self, name: str, func, args: tuple, kwargs: dict) -> Any:
        meta_first = bool(args) and isinstance(args[0], torch.Tensor) and args[0].is_meta
        if meta_first and name in _CONV_DIMS:
            out = _meta_conv(_CONV_DIMS[name], *args, **kwargs, _counter=self.counter)
            if out is not None:
                return out
        if meta_first and name == "linear":
            out = _meta_linear(*args, **kwargs, _counter=self.counter)
            if out is not None:
                return out
        if name in _BINARY and len(args) == 2 and not kwargs:
            out = _meta_binary(name, args[0], args[1])
            if out is not None:
                return out
        if name in ("cat", "concat", "concatenate") and args and isinstance(args[0], (list, tuple)):
            out = _meta_cat(*args, **kwargs)
            if out is not None:
                return out
        if meta_first and name in _ADAPTIVE_POOL:
            out = _meta_adaptive_pool(_ADAPTIVE_POOL[name], *args, **kwargs)
            if out is not None:
                return out
        if name in _MATMULS and len(args) >= 2 and not kwargs:
            out = _meta_matmul(name, args, _counter=self.counter)
            if out is not None:
                return out
        if meta_first and name == "scaled_dot_product_attention":
            out = _meta_sdpa(*args, **kwargs, _counter=self.counter)
            if out is not None:
                return out
        if meta_first and name in _RNN_GATES:
            out = _meta_rnn(_RNN_GATES[name], *args, _counter=self.counter)
            if out is not None:
                return out
        if meta_first and name in ("pow", "__pow__", "cumsum", "embedding"):
            out = _meta_unary(name, args, kwargs)
            if out is not None:
                return out
        if meta_first and name in _REDUCTIONS:
            out = _meta_reduction(name, args, kwargs)
            if out is not None:
                return out
        if meta_first and name == "interpolate":
            out = _meta_interpolate(func, args, kwargs)
            if out is not None:
                return out
        if meta_first and name in SHAPE_PRESERVING:
            if name.endswith("_") or kwargs.get("inplace") or (name in ("relu", "relu6", "hardtanh", "silu",
                                                                        "hardswish", "leaky_relu", "elu", "selu",
                                                                        "mish", "hardsigmoid", "dropout")
                                                               and _inplace_arg(name, args)):
                return args[0]
            return _meta_like(args[0])
        if self.counter is None or name in MAC_FREE:
            return func(*args, **kwargs)
        flops = _formula(name, args) if name in _FORMULA_OPS else None
        if flops is not None:  # a matmul or convolution on real tensors: counted from shapes
            out = func(*args, **kwargs)
            self.counter.flops += flops(out)
            return out
        with self.counter:
            return func(*args, **kwargs)


# Ops whose meta result, when it is 0-d, is made from their real result on the shadows (a 0-d tensor has no
# strides to differ; these ops are never views, never in-place, and have no FLOP formula): comparisons and
# logical reductions over masks and ids, whose meta kernels run Python reference code (0.1-0.4 ms a call:
# a Hugging Face model's ``torch.all(attention_mask == 1)``). Larger outputs keep the meta path: its
# reference code gives size-1 dims other strides than the real kernel.
_FROM_SHADOW = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
                          "__ge__", "logical_not", "logical_and", "logical_or", "logical_xor", "__and__", "__or__",
                          "__xor__", "__invert__", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "all",
                          "any"})


class _Counting(ShapeOnly):
    """:class:`ShapeOnly` for a real forward: a :data:`MAC_FREE` op, most of a forward's calls, goes straight
    to torch (what :meth:`ShapeOnly.call` does with real tensors too, after its meta checks, whose per-op
    Python was most of the counting's cost: mobileone_s0, 1358 calls, ~8 ms of a 25 ms forward), and so does
    torch's index-only ``ModIndex`` autograd Function (0 MACs); everything else through :meth:`ShapeOnly.call`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in MAC_FREE or (name == "custom_function_call" and args and _index_only(args[0])):
            return func(*args, **(kwargs or {}))
        return self.call(func, args, kwargs or {})


def _index_only(function: Any) -> bool:
    """Is this autograd Function torch's ``ModIndex`` (``torch._dynamo._trace_wrapped_higher_order_op``:
    forward ``aten.index``, which the FLOP counter counts as 0)? transformers builds attention masks with it
    under ``vmap``; counted under the counter's dispatch mode it cost 3.5 ms of hf_gpt2's 5 ms verification
    forward, for 0 MACs. Matched by name: importing ``torch._dynamo`` to compare classes costs seconds."""
    return getattr(function, "__name__", None) == "ModIndex" and \
        getattr(function, "__module__", None) == "torch._dynamo._trace_wrapped_higher_order_op"


def counting(counter: MacCounter) -> "ShapeOnly":
    """A function mode that counts a real forward's MACs into ``counter``, as the meta trace counts them:
    linear, convolutions and 2-/3-d matmuls (``mm``/``addmm``/``bmm``) by torch's formulas on their shapes,
    :data:`MAC_FREE` ops (and torch's index-only ``ModIndex``) not at all, every other op under ``counter``'s
    dispatch mode. The same count as running the whole forward under ``counter`` (torch's formulas for the
    ATen ops these lower to), at a fraction of its cost: the dispatch mode's Python runs for few ops instead
    of every ATen op."""
    return _Counting(counter)


_FORMULA_OPS = frozenset({"linear", "conv1d", "conv2d", "conv3d", "mm", "addmm", "bmm", "scaled_dot_product_attention"})


def sdpa_flops(q: Any, k: Any, v: Any) -> int:
    """torch's ``sdpa_flop_count`` for 4-d shapes ``(B, H, L, E) x (B, Hkv, S, E) x (B, Hkv, S, Ev)``: the
    two batched matmuls ``q @ k^T`` and ``attn @ v`` over the query's heads (without its pytree and
    signature wrappers, which cost more than a small model's attention)."""
    b, h, n_q, e = q
    n_k, e_v = k[2], v[3]
    return 2 * b * h * n_q * e * n_k + 2 * b * h * n_q * n_k * e_v


def _dims(t: Any, n: int) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == n


def _formula(name: str, args: tuple) -> Callable[[Any], int] | None:
    """FLOPs of one call of a :data:`_FORMULA_OPS` op as torch's flop formulas count the ATen op it lowers
    to, as a function of the call's output; ``None`` when the arguments are not the plain positional form
    whose lowering is known (the caller then counts under the dispatch mode)."""
    if name == "linear":  # -> mm/addmm over the flattened rows: 2 * rows * in * out (the bias add is free)
        if len(args) < 2 or not _dims(args[1], 2) or not isinstance(args[0], torch.Tensor) or args[0].dim() < 2:
            return None
        x, w = args[0], args[1]
        return lambda out: 2 * x.numel() * w.shape[0]
    if name in _CONV_DIMS:  # torch's conv formula: 2 * output elements * (in_channels / groups) * kernel size
        nd = _CONV_DIMS[name]
        if len(args) < 2 or not _dims(args[0], nd + 2) or not _dims(args[1], nd + 2):
            return None
        w = args[1]
        return lambda out: 2 * out.numel() * math.prod(w.shape[1:]) if isinstance(out, torch.Tensor) else 0
    if name == "scaled_dot_product_attention":  # the CPU kernel and the math path both count the two matmuls
        if len(args) < 3 or not all(_dims(t, 4) for t in args[:3]) or args[0].is_meta:
            return None
        q, k, v = args[:3]
        return lambda out: sdpa_flops(q.shape, k.shape, v.shape)
    operands = args[1:3] if name == "addmm" else args[:2]  # addmm(bias, mat1, mat2)
    if len(operands) != 2:
        return None
    a, b = operands
    if name in ("mm", "addmm") and _dims(a, 2) and _dims(b, 2):
        return lambda out: 2 * a.shape[0] * a.shape[1] * b.shape[1]  # (m, k) @ (k, n)
    if name == "bmm" and _dims(a, 3) and _dims(b, 3):
        return lambda out: 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]  # (b, m, k) @ (b, k, n)
    return None


_CONV_DIMS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}

# Binary elementwise ops answered by broadcasting (torch's meta kernels for them run Python
# reference code: ~0.3-1 ms per call, a large share of a meta forward). In-place ones end in "_".
_BINARY = frozenset({"add", "__add__", "__radd__", "sub", "__sub__", "__rsub__", "rsub", "mul", "__mul__",
                     "__rmul__", "div", "__truediv__", "__rtruediv__", "add_", "__iadd__", "sub_", "__isub__",
                     "mul_", "__imul__", "div_", "__itruediv__"})
_INPLACE = frozenset({"add_", "__iadd__", "sub_", "__isub__", "mul_", "__imul__", "div_", "__itruediv__"})
_ADAPTIVE_POOL = {"adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3}


def broadcast_shapes(*shapes) -> torch.Size:
    """``torch.broadcast_shapes`` for integer shapes, in plain Python (torch's runs its reference
    implementation: ~50-100 us a call, the most of a meta binary op); raises ``RuntimeError`` where
    torch's does (sizes that differ and are not 1)."""
    nd = max((len(s) for s in shapes), default=0)
    out = [1] * nd
    for s in shapes:
        off = nd - len(s)
        for i, v in enumerate(s):
            o = out[off + i]
            if v != o and v != 1:
                if o != 1:
                    raise RuntimeError(f"shapes {[tuple(x) for x in shapes]} cannot be broadcast together")
                out[off + i] = v
    return torch.Size(out)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t)`` for a meta tensor: by ``torch.empty`` when ``t`` is contiguous
    (``empty_like`` on meta runs a Python decomposition, ~100x slower)."""
    if t.is_contiguous():
        return torch.empty(t.shape, device="meta", dtype=t.dtype)
    return torch.empty_like(t)


def _meta_binary(name: str, a, b):
    """``a <op> b`` on meta tensors (or a meta tensor and a Python number) by broadcasting and
    torch's type promotion; ``None`` to let torch do it (other devices, non-float results, errors)."""
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    numbers = [v for v in (a, b) if isinstance(v, (int, float))]
    if not tensors or len(tensors) + len(numbers) != 2 or any(not t.is_meta for t in tensors):
        return None
    try:
        shape = broadcast_shapes(*(t.shape for t in tensors))
        dtype = torch.result_type(a, b)
    except RuntimeError:
        return None
    if not dtype.is_floating_point:  # integer true division and friends: torch's own rules
        return None
    if name in _INPLACE:
        return a if isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(shape) and a.dtype == dtype else None
    return torch.empty(shape, device="meta", dtype=dtype)


def _meta_cat(tensors, dim: int = 0, *, out=None):
    """``torch.cat`` of same-dtype meta tensors of equal rank by shape; ``None`` to let torch do it."""
    if out is not None or not tensors or not all(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
        return None
    first = tensors[0]
    nd = first.dim()
    if nd == 0 or not isinstance(dim, int) or not -nd <= dim < nd:
        return None
    d = dim % nd
    rest = [s for k, s in enumerate(first.shape) if k != d]
    for t in tensors[1:]:
        if t.dim() != nd or t.dtype != first.dtype or [s for k, s in enumerate(t.shape) if k != d] != rest:
            return None  # torch raises (or promotes) itself
    shape = list(first.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return torch.empty(shape, device="meta", dtype=first.dtype)


def _meta_adaptive_pool(nd: int, x, output_size):
    """``adaptive_avg_pool{nd}d`` on a meta tensor: the last ``nd`` dims become ``output_size``."""
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    if x.dim() not in (nd + 1, nd + 2) or len(size) != nd:
        return None
    size = tuple(x.shape[-nd + k] if v is None else int(v) for k, v in enumerate(size))
    return torch.empty((*x.shape[:-nd], *size), device="meta", dtype=x.dtype)


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _meta_conv(nd: int, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
               _counter: MacCounter | None = None):
    """``conv{nd}d`` on meta tensors by the output-size formula; ``None`` to let torch do it.

    FLOPs are still counted with torch's own formula, into ``_counter`` or the active
    :class:`MacCounter` dispatch mode.
    """
    if x.dim() != nd + 2 or weight.dim() != nd + 2 or not weight.is_meta:
        return None
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise RuntimeError(f"conv{nd}d: input with {x.shape[1]} channels does not fit weight "
                           f"{tuple(weight.shape)} with groups={groups}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise RuntimeError(f"conv{nd}d: bias of shape {tuple(bias.shape)} for {weight.shape[0]} output channels")
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    spatial = x.shape[2:]
    kernel = weight.shape[2:]
    if padding == "same":
        size = tuple(spatial)
    else:
        pad = (0,) * nd if padding == "valid" else _tuple(padding, nd)
        size = tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                     for i, p, d, k, s in zip(spatial, pad, dilation, kernel, stride))
    if any(v <= 0 for v in size):
        return None  # let torch raise its own error
    out = torch.empty((x.shape[0], weight.shape[0], *size), device="meta", dtype=x.dtype)
    # torch's conv formula (flop_counter.conv_flop_count, not transposed): 2 * output elements * weight
    # elements per output channel, i.e. (in_channels / groups) * kernel size
    _add_flops(_counter, lambda: 2 * out.numel() * math.prod(weight.shape[1:]))
    return out


def _add_flops(counter: MacCounter | None, flops: Callable[[], int]) -> None:
    """Add an op's FLOPs to ``counter``, or else to every :class:`MacCounter` dispatch mode active
    (callers that enter the counter themselves); ``flops`` is only evaluated when someone counts."""
    counters = [counter] if counter is not None else \
        [m for m in dispatch_modes() if isinstance(m, MacCounter)]
    for c in counters:
        c.flops += flops()


def _meta_linear(x, weight, bias=None, *, _counter: MacCounter | None = None):
    """``linear`` on meta tensors by shape; FLOPs as torch counts the ``mm``/``addmm`` it lowers to
    (``2 * rows * in * out``; the bias add is not counted). ``None`` to let torch do it."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_meta or x.dim() < 1:
        return None
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise RuntimeError(f"linear: input with {x.shape[-1]} features does not fit weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) not in ((n_out,), ()):
        raise RuntimeError(f"linear: bias of shape {tuple(bias.shape)} for {n_out} outputs")
    out = torch.empty((*x.shape[:-1], n_out), device="meta", dtype=x.dtype)
    _add_flops(_counter, lambda: 2 * x.numel() * n_out)
    return out


_MATMULS = frozenset({"mm", "addmm", "bmm"})


def _meta_matmul(name: str, args: tuple, *, _counter: MacCounter | None = None):
    """``mm`` / ``addmm`` / ``bmm`` on meta tensors of one dtype by shape (on meta, torch runs ``addmm``'s
    Python decomposition: ~1 ms per call, most of a GPT-2 trace). Sizes are checked as torch checks them;
    FLOPs by torch's formula (see :func:`_formula`). ``None`` to let torch do it (other devices, mixed
    dtypes, ``beta``/``alpha``/``out`` arguments, ranks it does not take)."""
    tensors = args if name != "addmm" else args[:3]
    if len(tensors) != (3 if name == "addmm" else 2) or len(args) != len(tensors) \
            or not all(isinstance(t, torch.Tensor) and t.is_meta for t in tensors) \
            or len({t.dtype for t in tensors}) != 1:
        return None
    a, b = tensors[-2:]
    rank = 3 if name == "bmm" else 2
    if a.dim() != rank or b.dim() != rank:
        return None
    if a.shape[-1] != b.shape[-2] or (rank == 3 and a.shape[0] != b.shape[0]):
        raise RuntimeError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied")
    shape = (*a.shape[:-1], b.shape[-1])
    if name == "addmm":
        try:
            if broadcast_shapes(tensors[0].shape, shape) != shape:
                return None
        except RuntimeError:
            return None  # torch raises its own error
    out = torch.empty(shape, device="meta", dtype=a.dtype)
    _add_flops(_counter, lambda: _formula(name, args)(out))
    return out


def _meta_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
               *, _counter: MacCounter | None = None):
    """``scaled_dot_product_attention`` on 4-d meta tensors by shape: ``(B, H, L, E) x (B, Hkv, S, E) x
    (B, Hkv, S, Ev) -> (B, H, L, Ev)`` (on meta, torch runs its Python math decomposition: milliseconds
    per call). FLOPs by torch's SDPA formula, the two matmuls the math path runs. ``None`` to let torch
    do it (other ranks, a mask that does not broadcast to ``(B, H, L, S)``, heads that do not fit)."""
    if not all(isinstance(t, torch.Tensor) and t.is_meta and t.dim() == 4 for t in (key, value)) \
            or query.dim() != 4:
        return None
    b, h, n_q, e = query.shape
    b2, h_kv, n_k, e2 = key.shape
    if (b2, h_kv, n_k) != tuple(value.shape[:3]) or b2 != b or e2 != e or not query.dtype == key.dtype == value.dtype:
        return None
    if h_kv != h and not (enable_gqa and h_kv > 0 and h % h_kv == 0):
        return None
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or not attn_mask.is_meta \
                or attn_mask.dtype not in (torch.bool, query.dtype):
            return None
        try:
            if broadcast_shapes(attn_mask.shape, (b, h, n_q, n_k)) != (b, h, n_q, n_k):
                return None
        except RuntimeError:
            return None
    out = torch.empty((b, h, n_q, value.shape[3]), device="meta", dtype=query.dtype)
    _add_flops(_counter, lambda: sdpa_flops(query.shape, key.shape, value.shape))
    return out


_RNN_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _meta_rnn(gates: int, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first=False,
              *, _counter: MacCounter | None = None):
    """``_VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu`` on meta tensors by shape (torch runs every
    time step's gate ops through Python meta kernels: seconds for one long sequence). Weight and
    state shapes are checked as torch checks them; FLOPs are the unfused path's ``addmm`` calls,
    ``2 * T * B`` per element of every weight matrix (ih, hh, hr). ``None`` to let torch do it
    (packed sequences, unbatched input, other devices)."""
    if isinstance(hx, torch.Tensor) and hx.dim() == 1 and not hx.is_floating_point():
        return None  # packed: (data, batch_sizes, hx, params, ...)
    params = list(params)
    dirs = 2 if bidirectional else 1
    n_bias = 2 if has_biases else 0
    per = len(params) // max(num_layers * dirs, 1)
    if x.dim() != 3 or per * num_layers * dirs != len(params) or per not in (2 + n_bias, 3 + n_bias) \
            or not all(isinstance(p, torch.Tensor) and p.is_meta for p in params):
        return None
    hidden = params[0].shape[0] // gates
    out_size = params[per - 1].shape[0] if per == 3 + n_bias else hidden  # proj_size or hidden_size
    in_size = x.shape[2]
    for k in range(num_layers * dirs):
        w = params[k * per:(k + 1) * per]
        want = [(gates * hidden, in_size if k < dirs else dirs * out_size), (gates * hidden, out_size)]
        want += [(gates * hidden,)] * n_bias + ([(out_size, hidden)] if per == 3 + n_bias else [])
        if [tuple(t.shape) for t in w] != want:
            raise RuntimeError(f"recurrent weights {[tuple(t.shape) for t in w]} do not fit {want} "
                               f"(layer {k // dirs}, input size {in_size}, hidden size {hidden})")
    T, B = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
    sizes = [out_size, hidden][:len(states)]
    for h, size in zip(states, sizes):
        if tuple(h.shape) != (num_layers * dirs, B, size):
            raise RuntimeError(f"recurrent state of shape {tuple(h.shape)}, expected {(num_layers * dirs, B, size)}")
    out_shape = (B, T, dirs * out_size) if batch_first else (T, B, dirs * out_size)
    outs = [torch.empty(out_shape, device="meta", dtype=x.dtype)]
    outs += [torch.empty(tuple(h.shape), device="meta", dtype=h.dtype) for h in states]
    _add_flops(_counter, lambda: 2 * T * B * sum(p.numel() for p in params if p.dim() == 2))
    return tuple(outs)


def _default_strides(t: torch.Tensor) -> bool:
    """``t`` has the strides ``torch.empty(t.shape)`` gives (contiguous, size-1 dims included)."""
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= max(size, 1)
    return tuple(reversed(expected)) == t.stride()


def _meta_unary(name: str, args: tuple, kwargs: dict):
    """``x.pow(number)``, ``x.cumsum(dim)`` and ``F.embedding(ids, weight)`` on meta tensors with default
    strides, by shape: an output of default strides, as torch's meta path gives for such inputs (it runs
    Python reference code: 0.2-2 ms a call). ``None`` to let torch do it (other argument forms or dtypes,
    ``max_norm`` (which renormalizes the weight), other strides)."""
    x = args[0]
    if not _default_strides(x):
        return None
    if name in ("pow", "__pow__"):
        if len(args) != 2 or kwargs or not x.is_floating_point() or type(args[1]) not in (int, float):
            return None
        return torch.empty(x.shape, device="meta", dtype=x.dtype)
    if name == "cumsum":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if len(args) > 2 or not kwargs.keys() <= {"dim"} or ("dim" in kwargs and len(args) > 1) \
                or type(dim) is not int or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
            return None
        if x.is_floating_point():
            dtype = x.dtype
        elif x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            dtype = torch.int64
        else:
            return None
        return torch.empty(x.shape, device="meta", dtype=dtype)
    # embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False)
    w = args[1] if len(args) > 1 else kwargs.get("weight")
    max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")
    if max_norm is not None or not isinstance(w, torch.Tensor) or not w.is_meta or w.dim() != 2 \
            or x.dtype not in (torch.int64, torch.int32) or not kwargs.keys() <= {"weight", "padding_idx"}:
        return None
    return torch.empty((*x.shape, w.shape[1]), device="meta", dtype=w.dtype)


_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})


def _meta_reduction(name: str, args: tuple, kwargs: dict):
    """``mean`` / ``sum`` / ``amax`` / ``amin`` of a contiguous floating meta tensor over given dims (``x.mean((2,
    3), keepdim=True)``, a squeeze-excite's pooling) by shape: the result is contiguous, of the input's dtype
    (torch's meta kernels run Python reference code: ~0.3 ms a call). ``None`` to let torch do it (other
    argument forms, ``dtype=``/``out=``, integer inputs, repeated or out-of-range dims)."""
    if len(args) > 3 or not kwargs.keys() <= {"dim", "keepdim"}:
        return None
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if "dim" in kwargs and len(args) > 1 or "keepdim" in kwargs and len(args) > 2 or type(keep) is not bool:
        return None
    if not x.is_floating_point() or not x.is_contiguous():
        return None
    nd = x.dim()
    if isinstance(dim, int) and not isinstance(dim, bool):
        dims = [dim]
    elif type(dim) in (tuple, list) and dim and all(type(d) is int for d in dim):
        dims = list(dim)
    elif dim is None and len(args) <= 1 and not kwargs and name in ("mean", "sum"):  # every dim
        return torch.empty((), device="meta", dtype=x.dtype)
    else:
        return None
    if nd == 0 or any(not -nd <= d < nd for d in dims):
        return None
    dims = {d % nd for d in dims}
    if len(dims) != len(dim if type(dim) in (tuple, list) else [dim]):
        return None  # a repeated dim: torch raises
    shape = [1 if k in dims else s for k, s in enumerate(x.shape)] if keep else \
        [s for k, s in enumerate(x.shape) if k not in dims]
    return torch.empty(shape, device="meta", dtype=x.dtype)


def _meta_interpolate(func, args: tuple, kwargs: dict):
    """``F.interpolate`` of a contiguous meta tensor (on meta, torch runs the upsampling's Python
    decomposition: ~1.4 ms a call): the output's spatial size is what the same call gives on a real
    ``(1, 1, *spatial)`` tensor (every mode, scale and rounding rule as torch's own), batch and channels
    as the input's; contiguous, of the input's dtype. ``None`` to let torch do it (tensor-valued sizes, a
    layout that could read as channels-last, large inputs, errors: torch raises its own)."""
    x = args[0]
    if not 3 <= x.dim() <= 5 or not x.is_floating_point() or not x.is_contiguous() or x.shape[1] < 2:
        return None
    spatial = tuple(x.shape[2:])
    if not 1 < math.prod(spatial) <= 1 << 16:
        return None
    if any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values())) or \
            any(isinstance(a, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in a)
                for a in (*args[1:], *kwargs.values())):
        return None
    try:
        proxy = func(torch.zeros((1, 1, *spatial)), *args[1:], **kwargs)
    except Exception:  # noqa: BLE001 - torch's meta path raises its own error
        return None
    if not isinstance(proxy, torch.Tensor) or proxy.dim() != x.dim():
        return None
    return torch.empty((x.shape[0], x.shape[1], *proxy.shape[2:]), device="meta", dtype=x.dtype)


def _inplace_arg(name: str, args: tuple) -> bool:
    pos = {"relu": 1, "relu6": 1, "silu": 1, "hardswish": 1, "mish": 1, "hardsigmoid": 1, "selu": 1,
           "elu": 2, "leaky_relu": 2, "hardtanh": 3, "dropout": 3}.get(name)
    return pos is not None and len(args) > pos and args[pos] is True


def meta_tensors(model: nn.Module, walked: Walk | None = None) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer (tied tensors share one stand-in)."""
    walked = walked if walked is not None else walk(model)
    out: dict[str, torch.Tensor] = {}
    for name, p in walked.params.items():
        out[name] = torch.empty_like(p, device="meta")
    for name, b in walked.buffers.items():
        out.setdefault(name, torch.empty_like(b, device="meta"))
    return out


def _first_device(inputs: Any, walked: Walk) -> torch.device:
    for t in tree_leaves(inputs):
        if isinstance(t, torch.Tensor) and not t.is_meta:
            return t.device
    for t in walked.params.values():
        return t.device
    return torch.device("cpu")


def meta_forward(model: nn.Module, inputs: tuple, kwargs: Mapping[str, Any],
                 tensors: dict[str, torch.Tensor] | None = None, mode: TorchFunctionMode | None = None,
                 counter: MacCounter | None = None, walked: Walk | None = None,
                 shadows: Shadows | None = None) -> Any:
    """``model(*inputs, **kwargs)`` on the meta device; ``tensors`` maps names to the stand-ins used
    (``walked``: the model's :func:`~prunekit.graph.walk.walk`, if the caller has it).

    ``mode`` (e.g. the tracer) sees every op first and must run it through its ``execute``
    attribute, which is set here to the shape-only executor: one Python mode per op instead of
    two stacked ones. With ``counter`` the forward's MACs are added to it (see :class:`ShapeOnly`).

    The example inputs (copies) and the integer/bool buffers are kept as the real values of their meta
    stand-ins (:class:`~prunekit.graph.shadows.Shadows`; ``shadows``: the caller's, to read which values
    were read), so checks on the inputs' values (``pad_token_id in input_ids``) run on meta too.
    """
    walked = walk(model) if walked is None else walked
    tensors = meta_tensors(model, walked) if tensors is None else tensors
    inputs, kwargs = tuple(inputs), dict(kwargs)
    if shadows is None:
        shadows = Shadows(_first_device((inputs, kwargs), walked))
    else:
        shadows.device = _first_device((inputs, kwargs), walked)

    def to_meta(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        m = x.to("meta")
        if not x.is_meta and x.numel() <= shadows.limit:
            shadows.add(m, x.detach().clone())  # a copy: in-place ops on shadows never touch the caller's inputs
        return m

    args = tree_map(to_meta, inputs)
    kw = tree_map(to_meta, kwargs)
    for name, b in walked.buffers.items():
        stand_in = tensors.get(name)
        if stand_in is not None and not (b.is_floating_point() or b.is_complex()) and not b.is_meta \
                and b.numel() <= shadows.limit:
            shadows.add(stand_in, b.detach().clone())
    shape = ShapeOnly(counter, shadows)
    if mode is not None:
        mode.execute = shape.call
    with torch.no_grad(), swapped(walked, tensors), (mode if mode is not None else shape):
        return model(*args, **kw)


@contextlib.contextmanager
def swapped(walked: Walk, tensors: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Every parameter and buffer slot of the model holds its stand-in from ``tensors`` (by tensor
    identity, so a module used at several paths and tied tensors get one stand-in) for the block;
    the original objects are put back afterwards, whatever happens.

    We swap the slots ourselves instead of using ``torch.func.functional_call``: with a module
    object reachable under two paths (CoaT's shared positional convs) its restore put a stand-in
    back, and the model kept ``meta`` parameters after the trace."""
    by_id: dict[int, torch.Tensor] = {}
    for name, p in walked.params.items():
        if name in tensors:
            by_id[id(p)] = tensors[name]
    for name, b in walked.buffers.items():
        if name in tensors:
            by_id.setdefault(id(b), tensors[name])
    undo: list[tuple[dict, str, torch.Tensor]] = []
    rnns = [m for m in walked.modules.values() if isinstance(m, nn.RNNBase)]
    try:
        for mod in walked.modules.values():
            for slots in module_slots(mod)[:2]:  # parameters, buffers
                for key, t in slots.items():
                    stand_in = by_id.get(id(t)) if t is not None else None
                    if stand_in is not None:
                        undo.append((slots, key, t))
                        slots[key] = stand_in
        for m in rnns:
            refresh_rnn_flat_weights(m)  # its flat weight list still points at the real parameters
        yield
    finally:
        for slots, key, t in reversed(undo):
            slots[key] = t
        for m in rnns:
            refresh_rnn_flat_weights(m)
