"""Real values beside a meta forward, for the tensors that derive from the example inputs alone.

A meta forward has shapes but no values, so a model that looks at a value (Hugging Face's
``pad_token_id in input_ids``, ``torch.all(attention_mask == 1)``, ``lengths.tolist()``) raises
there. Most such checks read the example inputs (token ids, masks, lengths) or tensors computed
from them alone (an ``arange`` of positions, a mask built by ``ones``/``full`` on the input's device),
never the model's weights. :class:`Shadows` keeps, for every meta tensor of that kind, the real
tensor it stands for (its *shadow*), computed by running each such op on the shadows too. An op
that reads a value (``item``, ``__bool__``, ``__contains__``, ``tolist`` ...) is answered from the
shadows, and recorded in :attr:`Shadows.reads` so the trace can say its branches were followed for
these inputs only. Anything touching a weight (or any meta tensor without a shadow) stays meta-only.

What this costs is the real forward's own work on those tensors (ids, masks, positions): shadows
are dropped for outputs larger than ``limit`` elements. An in-place op on a shadowed tensor that
cannot be mirrored on the shadows (one of its other arguments has none) drops every shadow: a
later value read then fails as it would without shadows, and the caller falls back to a real forward.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

# Ops that read metadata only: answered by the meta tensor itself (no need to run them twice).
METADATA = frozenset({"size", "dim", "numel", "__len__", "__get__", "is_floating_point", "is_complex",
                      "get_device", "stride", "element_size", "is_contiguous", "ndimension", "nelement",
                      "__hash__", "__repr__", "__format__", "storage_offset", "requires_grad_", "detach",
                      "__iter__", "__reversed__"})

# Tensor factories that take no tensor argument: run on the shadows' device when asked for ``meta``.
FACTORIES = frozenset({"arange", "zeros", "ones", "full", "empty", "tensor", "as_tensor", "eye", "linspace",
                       "logspace", "range", "tril_indices", "triu_indices"})
# Methods whose values do not depend on ``self`` (only its dtype): run on an empty tensor of that dtype.
NEW_FACTORIES = frozenset({"new_zeros", "new_ones", "new_full", "new_tensor", "new_empty"})


def _mutates(name: str, kwargs: dict) -> bool:
    """Does the op write into its first argument (or an ``out=`` tensor)?"""
    if "out" in kwargs or kwargs.get("inplace") is True:
        return True
    if name.startswith("__"):
        return name in ("__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__",
                        "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__")
    return name.endswith("_")


class _NoShadow(Exception):
    pass


class Shadows:
    """Meta tensor -> the real tensor it stands for (see the module docstring). ``device``: where
    factories asked for ``meta`` run (the example inputs' device); ``where``: the current module path
    (for :attr:`reads`); ``limit``: the largest shadow kept, in elements."""

    def __init__(self, device: torch.device | str = "cpu", where: Callable[[], str] | None = None,
                 limit: int = 1 << 20) -> None:
        self.device = torch.device(device)
        self.where = where if where is not None else (lambda: "")
        self.limit = limit
        self._real: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(meta) -> (meta, real): keeps ids alive
        self.reads: list[tuple[str, str]] = []  # (op, module path) of every value read answered from a shadow

    def __bool__(self) -> bool:
        return bool(self._real)

    def add(self, meta: torch.Tensor, real: torch.Tensor) -> None:
        """Record ``real`` as the value of ``meta`` (a copy when it is the caller's tensor)."""
        if real.numel() <= self.limit:
            self._real[id(meta)] = (meta, real)

    def of(self, t: torch.Tensor) -> torch.Tensor | None:
        hit = self._real.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def _sub(self, x: Any, depth: int = 0) -> Any:
        """``x`` with every meta tensor replaced by its shadow; raises :class:`_NoShadow` at the first one
        without (the common case: an activation)."""
        if isinstance(x, torch.Tensor):
            if not x.is_meta:
                return x
            hit = self._real.get(id(x))
            if hit is None or hit[0] is not x:
                raise _NoShadow
            return hit[1]
        if type(x) in (tuple, list) and depth < 2:
            return type(x)(self._sub(v, depth + 1) for v in x)
        if type(x) is torch.device and x.type == "meta":
            return self.device
        if isinstance(x, str) and x == "meta":
            return self.device
        return x

    def real_call(self, name: str, func, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Run the op on the shadows: ``(True, real output)``, or ``(False, None)`` when some meta argument
        has no shadow, the op reads metadata only, or no meta tensor is involved. An in-place op that
        cannot be mirrored drops every shadow (they could be stale)."""
        if name in METADATA:
            return False, None
        if not args and name in FACTORIES:
            dev = kwargs.get("device")
            if not ((isinstance(dev, torch.device) and dev.type == "meta") or dev == "meta"):
                return False, None
        elif name in NEW_FACTORIES and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            args = (torch.empty(0, dtype=args[0].dtype, device=self.device), *args[1:])
        else:
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.is_meta and id(first) not in self._real:
                return False, None  # fast path: an activation (most ops)
        try:
            rargs = tuple(self._sub(a) for a in args)
            rkwargs = {k: self._sub(v) for k, v in kwargs.items()} if kwargs else {}
        except _NoShadow:
            if args and isinstance(args[0], torch.Tensor) and self.of(args[0]) is not None and _mutates(name, kwargs):
                self._real.clear()
            return False, None
        if not any(isinstance(a, torch.Tensor) for a in (*rargs, *rkwargs.values())) and not (
                name in FACTORIES or name in NEW_FACTORIES):
            return False, None  # nothing of ours involved
        return True, func(*rargs, **rkwargs)

    def pair(self, meta_out: Any, real_out: Any) -> None:
        """Record the shadows of an op's outputs (same structure; shapes and dtypes must agree)."""
        if isinstance(meta_out, torch.Tensor):
            if isinstance(real_out, torch.Tensor) and meta_out.is_meta and meta_out.shape == real_out.shape \
                    and meta_out.dtype == real_out.dtype:
                self.add(meta_out, real_out)
        elif isinstance(meta_out, (tuple, list)) and isinstance(real_out, (tuple, list)) \
                and len(meta_out) == len(real_out):
            for m, r in zip(meta_out, real_out):
                self.pair(m, r)

    def read(self, name: str) -> None:
        self.reads.append((name, self.where()))


def meta_of(real: Any) -> Any:
    """Meta tensors with the shapes, strides and dtypes of ``real``'s tensors (a tensor, or a plain tuple
    or list of them); ``None`` for anything else."""
    if isinstance(real, torch.Tensor):
        return torch.empty_strided(real.size(), real.stride(), dtype=real.dtype, device="meta")
    if type(real) in (tuple, list) and all(isinstance(r, torch.Tensor) for r in real):
        return type(real)(meta_of(r) for r in real)
    return None


_VALUES = (bool, int, float, complex, str, type(None), torch.Size, torch.dtype)


def is_value(x: Any, depth: int = 0) -> bool:
    """A plain Python value (or a list/tuple of them): what reading a tensor's values returns."""
    if isinstance(x, _VALUES):
        return True
    return type(x) in (tuple, list) and depth < 8 and all(is_value(v, depth + 1) for v in x)
