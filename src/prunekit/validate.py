"""Checks for user-given settings: every number is checked for type, finiteness and range, and every
error names the field (``"PruneConfig.ratio must be a number, got str '0.5'"``).

>>> number("PruneConfig.ratio", 0.5, lo=0.0, hi=1.0, hi_open=True)
0.5
>>> number("PruneConfig.ratio", float("nan"), lo=0.0, hi=1.0)
Traceback (most recent call last):
...
ValueError: PruneConfig.ratio must be a finite number, got nan
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable


def number(field: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, integer: bool = False) -> Any:
    """``value`` if it is a real (or, with ``integer``, an integral) finite number within the range.

    Booleans and strings are refused (``True`` is not a ratio, ``"0.5"`` is not a number).
    """
    kind = "an integer" if integer else "a number"
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_type):
        if integer and isinstance(value, numbers.Real) and not isinstance(value, bool):
            raise TypeError(f"{field} must be {kind}, got {value!r}")
        raise TypeError(f"{field} must be {kind}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{field} must be in {left}{'-inf' if lo is None else lo}, "
                         f"{'inf' if hi is None else hi}{right}, got {value}")
    return value


def names(field: str, value: Any, *, modules: bool = False) -> tuple:
    """A tuple of strings from one string or an iterable of strings (and ``nn.Module`` objects where
    ``modules``); anything else names the field."""
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{field} must be a string or a list of strings, got {type(value).__name__}") from None
    from torch import nn

    bad = [v for v in items if not (isinstance(v, str) or (modules and isinstance(v, nn.Module)))]
    if bad:
        raise TypeError(f"{field} must hold strings (module paths or globs), got {type(bad[0]).__name__} {bad[0]!r}")
    return items


def unmatched(field: str, wanted: Iterable[str], available: Iterable[str]) -> None:
    """Raise naming every entry of ``wanted`` that is none of ``available`` nor a prefix path of one."""
    avail = list(available)
    missing = [w for w in wanted if w != "" and not any(a == w or a.startswith(w + ".") for a in avail)]
    if missing:
        import difflib

        hints = [difflib.get_close_matches(m, avail, n=1) for m in missing]
        hint = "; ".join(f"{m!r} (did you mean {h[0]!r}?)" if h else repr(m) for m, h in zip(missing, hints))
        raise ValueError(f"{field} names modules that are not in the model: {hint}")
