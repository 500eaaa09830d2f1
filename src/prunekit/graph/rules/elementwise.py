"""Elementwise ops: unary activations and broadcasting binary/ternary arithmetic."""
from __future__ import annotations

import math

import torch

from ..info import TensorInfo
from ..registry import op_rule
from .common import arg, elementwise

# f(0) == 0: a soft-zeroed unit stays zero through these.
ZERO_PRESERVING = (
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu",
    "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "mish", "mish_", "tanh", "tanh_",
    "hardtanh", "hardtanh_", "neg", "negative", "abs", "abs_", "sqrt", "square", "sin", "erf", "dropout",
    "dropout_", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "clone",
    "contiguous", "detach", "detach_", "to", "type", "float", "half", "double", "bfloat16", "type_as",
    "requires_grad_", "sign", "floor", "ceil", "round", "trunc", "nan_to_num", "threshold", "softshrink",
    "hardshrink", "tanhshrink", "log1p", "expm1", "bool", "long", "int", "cpu", "cuda", "attr.data",
    "attr.real", "rrelu", "relu6_", "positive", "conj", "resolve_conj", "resolve_neg", "sinh", "asinh",
    "atan", "tan", "asin", "arctan", "sgn", "fix", "frac", "deg2rad", "rad2deg", "pin_memory",
)
# f(0) != 0 (or undefined): the unit's elements are no longer zero after these.
NONZERO = (
    "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "exp_", "exp2", "cos", "cosh", "log",
    "log2", "log10", "reciprocal", "rsqrt", "softplus", "logsigmoid", "erfc", "logical_not",
    "bitwise_not", "invert", "acos", "i0", "sinc", "digamma", "lgamma",
)
BINARY = (
    "add", "add_", "sub", "sub_", "rsub", "radd", "mul", "mul_", "rmul", "div", "div_", "rdiv",
    "true_divide", "floor_divide", "maximum", "minimum", "fmax", "fmin", "pow", "pow_", "rpow", "eq",
    "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "remainder", "fmod",
    "atan2", "hypot", "copysign", "where", "masked_fill", "masked_fill_", "lerp", "lerp_", "addcmul",
    "addcmul_", "addcdiv", "addcdiv_", "clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_max",
    "clamp_min_", "clamp_max_", "copy_", "rremainder", "rfloor_divide", "xlogy", "mul_scalar",
)


def _set(tracer, out, labels, nz):
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for o in outs:
        if isinstance(o, torch.Tensor):
            tracer.set_info(o, TensorInfo(dict(labels), nz) if labels else None)


@op_rule(*ZERO_PRESERVING)
def unary_zero(tracer, name, args, kwargs, out):
    x = args[0] if args else next(iter(kwargs.values()))
    inf = tracer.info(x)
    if inf is None or not isinstance(out, torch.Tensor) or out.shape != x.shape:
        _set(tracer, out, {}, False)
        return
    _set(tracer, out, inf.labels, inf.nz)


@op_rule(*NONZERO)
def unary_nonzero(tracer, name, args, kwargs, out):
    x = args[0]
    inf = tracer.info(x)
    if inf is None:
        return
    _set(tracer, out, inf.labels, True)


def _is_nonzero_scalar(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0 and not math.isnan(v)
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.device.type == "meta":
            return True  # unknown value: assume it moves zeros
        return bool(v.detach().reshape(-1)[0] != 0)
    return v is not None


# nn.Module's own state (parameters, buffers, submodules, hook dicts, flags): never a cache of a computed
# tensor, so not looked through (the hook dicts hold the tracer's own hooks on every module)
_MODULE_STATE = frozenset(vars(torch.nn.Module()))


def cached_attr(tracer, t) -> str | None:
    """The attribute of the module being traced that holds the computed tensor ``t`` (itself, or in a
    dict/list: timm's ``attention_bias_cache[device]`` in TinyViT and LeViT), if any."""
    mod = tracer.current_module()
    if mod is None or not isinstance(t, torch.Tensor) or tracer.name_of(t) is not None:
        return None
    for n, v in vars(mod).items():
        if n in _MODULE_STATE:
            continue
        if v is t:
            return n
        if isinstance(v, dict) and any(e is t for e in v.values()):
            return n
        if isinstance(v, (list, tuple)) and any(e is t for e in v):
            return n
    return None


def pin_cached(tracer, tensors) -> None:
    """A tensor computed from parameters and kept on a module outside its parameters and buffers (a
    cache) is reused as it is by later forwards: after a hard apply it would keep the pruned indices
    (a head-sized bias table meeting fewer heads). Its labelled dims are kept, with the attribute named."""
    for t in tensors:
        inf = tracer.info(t) if isinstance(t, torch.Tensor) else None
        if inf is None or inf.empty:
            continue
        attr = cached_attr(tracer, t)
        if attr is not None:
            where = tracer.module_path or "<top>"
            tracer.pin_info(inf, f"tensor cached in `{where}.{attr}`, computed from parameters: a pruned model "
                                 "would reuse the stale copy")


@op_rule(*BINARY)
def binary(tracer, name, args, kwargs, out):
    base = name.rstrip("_")
    operands = list(args) + [v for k, v in kwargs.items() if k in ("other", "input", "condition", "mask",
                                                                    "tensor1", "tensor2", "end", "weight",
                                                                    "min", "max", "exponent", "value")]
    pin_cached(tracer, operands)
    if base == "copy":
        dst, src = args[0], args[1]
        labels = elementwise(tracer, name, [dst, src], dst)
        sinf = tracer.info(src)
        _set(tracer, dst, labels, bool(sinf.nz) if sinf else False)
        return
    labels = elementwise(tracer, name, operands, out)
    infos = [(t, tracer.info(t)) for t in operands if isinstance(t, torch.Tensor)]
    labelled = [i for _, i in infos if i is not None and not i.empty]
    others = [t for t, i in infos if i is None or i.empty] + [a for a in operands if not isinstance(a, torch.Tensor)]
    any_nz = any(i.nz for i in labelled)
    if base in ("mul", "rmul", "logical_and", "mul_scalar"):
        nz = all(i.nz for i in labelled)
    elif base in ("div", "true_divide", "floor_divide", "remainder", "fmod"):
        first = tracer.info(args[0])
        nz = bool(first.nz) if first is not None and not first.empty else True
        second = args[1] if len(args) > 1 else None
        sinf = tracer.info(second)
        if sinf is not None and not sinf.empty:
            for lab in sinf.labels.values():
                tracer.store.mark_inexact(lab)  # x / 0 is not 0
    elif base in ("add", "sub", "rsub", "radd", "maximum", "minimum", "fmax", "fmin", "lerp", "addcmul",
                  "addcdiv", "where", "clamp", "clip", "clamp_min", "clamp_max", "atan2", "hypot", "copysign"):
        nz = any_nz or any(_is_nonzero_scalar(o) for o in others if not isinstance(o, str))
        if base in ("clamp", "clip", "clamp_min", "clamp_max", "maximum", "minimum"):
            nz = any_nz or _clamp_moves_zero(args, kwargs)
        if base in ("addcmul",):
            nz = any_nz
    elif base in ("masked_fill",):
        value = arg(args, kwargs, 2, "value", 0)
        nz = any_nz or _is_nonzero_scalar(value)
    elif base == "pow":
        exp_ = arg(args, kwargs, 1, "exponent", 1)
        nz = any_nz or not (isinstance(exp_, (int, float)) and exp_ > 0)
    else:  # comparisons and the like: False/True are not zero-preserving in general
        nz = True
    target = args[0] if name.endswith("_") and isinstance(args[0], torch.Tensor) else out
    _set(tracer, target, labels, nz)


def _clamp_moves_zero(args, kwargs) -> bool:
    lo = arg(args, kwargs, 1, "min", None)
    hi = arg(args, kwargs, 2, "max", None)
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        return True
    return (lo is not None and lo > 0) or (hi is not None and hi < 0)


@op_rule("zero_", "fill_", "normal_", "uniform_", "random_", "bernoulli_")
def fill(tracer, name, args, kwargs, out):
    inf = tracer.info(args[0])
    if inf is None:
        return
    value = arg(args, kwargs, 1, "value", 0)
    nz = name != "zero_" and not (name == "fill_" and not _is_nonzero_scalar(value))
    tracer.set_info(args[0], TensorInfo(dict(inf.labels), nz))
