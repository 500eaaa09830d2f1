"""Registry of op rules: how each torch function couples the labels of its inputs and outputs.

A rule is ``rule(tracer, name, args, kwargs, out) -> None``; it reads input labels with
``tracer.info(t)``, couples them through ``tracer.store`` and labels outputs with
``tracer.set_info(t, info)``. Register one with ``@op_rule("name", ...)``; an op without
a rule pins every label it touches and is reported with its module path.
"""
from __future__ import annotations

from typing import Any, Callable

OpRule = Callable[..., None]
OP_RULES: dict[str, OpRule] = {}


def op_rule(*names: str) -> Callable[[OpRule], OpRule]:
    def register(fn: OpRule) -> OpRule:
        for name in names:
            if name in OP_RULES:
                raise ValueError(f"op rule {name!r} registered twice")
            OP_RULES[name] = fn
        return fn

    return register


# Ops whose outputs never carry labels and that need no coupling (creation, metadata).
NEUTRAL_OPS = frozenset({
    "size", "dim", "numel", "stride", "storage_offset", "data_ptr", "element_size", "is_contiguous",
    "is_floating_point", "is_complex", "tolist", "item", "__bool__", "__len__", "__format__",
    "__repr__", "__hash__", "__index__", "__int__", "__float__", "equal", "allclose",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "get_device", "_is_view",
    "is_nonzero", "untyped_storage", "_version", "nelement", "ndimension", "has_names",
    "__reduce_ex__", "__deepcopy__", "__setstate__", "__array__", "numpy", "isinf", "isnan",
    "isfinite", "_has_compatible_shallow_copy_type", "is_inference", "requires_grad", "attr.shape",
})


_NAMES: dict[Any, str] = {}


def op_name(func: Any) -> str:
    """A stable name for ``func``: ``add`` for torch.add, Tensor.add and ``x + y`` (cached per function:
    the tracer asks for every op it sees)."""
    try:
        return _NAMES[func]
    except KeyError:
        if len(_NAMES) > 4096:  # bounded: torch's functions, not an object per call
            _NAMES.clear()
        name = _NAMES[func] = _op_name(func)
        return name
    except TypeError:  # an unhashable callable
        return _op_name(func)


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # property access, e.g. ``x.T``
        owner = getattr(func, "__self__", None)
        return "attr." + str(getattr(owner, "__name__", "?"))
    if name.startswith("__") and name.endswith("__") and len(name) > 4:
        core = name[2:-2]
        if core.startswith("i") and core[1:] in _BINARY_DUNDERS:
            return _BINARY_DUNDERS[core[1:]] + "_"
        if core.startswith("r") and core[1:] in _BINARY_DUNDERS:
            return "r" + _BINARY_DUNDERS[core[1:]]
        if core in _BINARY_DUNDERS:
            return _BINARY_DUNDERS[core]
        if core in ("neg", "abs", "invert", "getitem", "setitem", "iter"):
            return {"getitem": "getitem", "setitem": "setitem", "iter": "iter"}.get(core, core)
    return name


_BINARY_DUNDERS = {
    "add": "add", "sub": "sub", "mul": "mul", "truediv": "div", "div": "div",
    "floordiv": "floor_divide", "matmul": "matmul", "pow": "pow", "mod": "remainder",
    "and": "logical_and", "or": "logical_or", "xor": "logical_xor", "eq": "eq", "ne": "ne",
    "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "lshift": "lshift", "rshift": "rshift",
}
