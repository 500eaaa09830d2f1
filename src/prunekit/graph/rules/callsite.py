"""Where a size in a reshape came from, read off the source of the call being traced.

A traced ``view``/``reshape`` sees plain ints: ``x.view(-1, 2, 2, 16)`` and ``x.view(-1, 2, 2, C)``
with ``C = y.shape[-1]`` look the same, and so do ``reshape(B, N, self.attn_dim)`` and
``reshape(B, N, embed_dim)`` with ``embed_dim`` read from the residual stream. The user code that
made the call still holds the answer: this module finds that frame (the first one outside torch
and prunekit), takes the exact source span of the call from the code object's positions, parses
it and says, for each requested size, whether it is

* ``Literal()`` -- an integer written in the code, a module-level int constant, or arithmetic over
  those (it can never follow a pruned dim),
* ``Attr(module_path, name)`` -- ``self.name`` of a traced module (a plan can rewrite it),
* ``Name()`` / ``Expr()`` -- a local variable or any other expression (unknown origin; for a product,
  ``Expr.local_factors`` holds the values of its local-name factors).

``None`` means the source is not available (``exec``, a shape passed as one variable, ``*args``):
callers fall back to guessing from sizes.
"""
from __future__ import annotations

import ast
import itertools
import linecache
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

_SKIP = (os.path.dirname(torch.__file__) + os.sep,
         os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep)
_METHODS = {"view": ("view", "reshape"), "reshape": ("view", "reshape"), "split": ("split",)}


@dataclass(frozen=True)
class Literal:
    pass


@dataclass(frozen=True)
class Attr:
    module: str
    name: str


@dataclass(frozen=True)
class Name:
    pass


@dataclass(frozen=True)
class Expr:
    """Any other expression; ``local_factors``: for a product (``B * C * num_patch_h``), the int values of
    its factors that are local names (``C``), which may have been read from a tensor's shape."""

    local_factors: tuple[int, ...] = ()


SizeKind = Literal | Attr | Name | Expr

_parse_cache: dict[tuple[str, int, int, int, int], list[ast.expr] | None] = {}


def _user_frame():
    f = sys._getframe(1)
    while f is not None and (f.f_code.co_filename.startswith(_SKIP) or f.f_code.co_filename.startswith("<frozen")):
        f = f.f_back
    return f


def _call_args(frame, op: str) -> list[ast.expr] | None:
    """The size arguments (one expression per requested dim) of the ``view``/``reshape`` call ``frame`` is in."""
    code = frame.f_code
    try:
        pos = next(itertools.islice(code.co_positions(), frame.f_lasti // 2, None))
    except StopIteration:
        return None
    if None in pos:
        return None
    key = (code.co_filename, *pos)
    if key in _parse_cache:
        return _parse_cache[key]
    _parse_cache[key] = None
    line0, line1, col0, col1 = pos
    lines = linecache.getlines(code.co_filename, frame.f_globals)
    if not lines or line1 > len(lines):
        return None
    raw = [ln.encode() for ln in lines[line0 - 1:line1]]
    if len(raw) == 1:
        text = raw[0][col0:col1]
    else:
        text = raw[0][col0:] + b"".join(raw[1:-1]) + raw[-1][:col1]
    try:
        node = ast.parse(b"(" + text + b"\n)", mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) \
            or node.func.attr not in _METHODS.get(op, ()):
        return None
    args = list(node.args)
    if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
        args = args[1:]  # torch.reshape(x, shape)
    if not args:
        kw = [k.value for k in node.keywords if k.arg in ("shape", "size", "split_size_or_sections", "split_size")]
        args = kw
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        args = list(args[0].elts)
    if any(isinstance(a, ast.Starred) for a in args):
        return None
    _parse_cache[key] = args
    return args


def _constant(node: ast.expr, frame) -> bool:
    """Is ``node`` a size fixed in the code: an int literal, a module-level (global) int name such as
    ``C = 16`` read in ``view(C, 1, 1)``, or arithmetic over those (``2 * C``, ``-1``)? A local name
    is not (it may have been read from a tensor's shape); neither is a name shadowed by a local."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        if node.id in frame.f_locals:
            return False
        v = frame.f_globals.get(node.id)
        return isinstance(v, int) and not isinstance(v, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _constant(node.operand, frame)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
        return _constant(node.left, frame) and _constant(node.right, frame)
    return False


def size_kinds(tracer, op: str, n: int) -> list[SizeKind] | None:
    """What each of the ``n`` sizes requested by the ``op`` call being traced is; None when unknown."""
    if op not in _METHODS:
        return None
    frame = _user_frame()
    if frame is None:
        return None
    args = _call_args(frame, op)
    if args is None or len(args) != n:
        return None
    return [_classify(a, frame, tracer.path_of) for a in args]


def _classify(a: ast.expr, frame, paths: dict[int, str]) -> SizeKind:
    if _constant(a, frame):
        return Literal()
    if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name):
        owner = frame.f_locals.get(a.value.id)
        path = paths.get(id(owner))
        return Attr(path, a.attr) if path is not None else Expr()
    if isinstance(a, ast.Name):
        return Name()
    return Expr(_local_factors(a, frame))


def _local_factors(a: ast.expr, frame) -> tuple[int, ...]:
    """Int values of the local-name factors of a product ``x * y * ...`` (nothing for other expressions)."""
    factors: list[ast.expr] = []

    def flatten(node: ast.expr) -> bool:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return flatten(node.left) and flatten(node.right)
        factors.append(node)
        return True

    if not (isinstance(a, ast.BinOp) and isinstance(a.op, ast.Mult)):
        return ()
    flatten(a)
    values = [frame.f_locals.get(f.id) for f in factors if isinstance(f, ast.Name) and f.id in frame.f_locals]
    return tuple(v for v in values if isinstance(v, int) and not isinstance(v, bool))


def split_size_kind(tracer) -> SizeKind | None:
    """What the size argument of the ``split`` call being traced is (``x.split(16, 1)``: Literal;
    ``torch.split(x, self.in_channels // self.num_paths, 1)``: Expr); None when unknown."""
    frame = _user_frame()
    if frame is None:
        return None
    args = _call_args(frame, "split")
    if not args:
        return None
    return _classify(args[0], frame, tracer.path_of)


def kinds_for(tracer, op: str, requested: Sequence[int] | None) -> list[SizeKind] | None:
    return None if requested is None else size_kinds(tracer, op, len(requested))
