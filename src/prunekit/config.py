"""Typed, self-validating configuration for :func:`prunekit.prune_` (round-trips through JSON)."""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .validate import names, number

if TYPE_CHECKING:
    from .criteria import Criterion

KINDS = ("channel", "group", "head", "head_dim")


def _known_criterion(field_name: str, name: object) -> None:
    """A criterion name must be registered when the config is built (not found out at scoring time)."""
    from . import criteria  # noqa: F401  (registers the built-in criteria)
    from .criteria.base import CRITERIA

    if not isinstance(name, str):
        raise TypeError(f"{field_name} must be a registered criterion's name, got {type(name).__name__}; pass a "
                        "Criterion object as prune_(..., criterion=obj)")
    if name not in CRITERIA:
        import difflib

        close = difflib.get_close_matches(name, list(CRITERIA), n=1)
        raise ValueError(f"{field_name} {name!r} is not a registered criterion" +
                         (f" (did you mean {close[0]!r}?)" if close else "") + f"; known: {sorted(CRITERIA)}")


OBJECT = "__object__"  # key of a criterion argument recorded by type only (data, functions): {OBJECT: "DataLoader"}


def _json_value(value: Any) -> Any:
    """``value`` if it is plain JSON (None, bool, int, finite float, str, and lists / string-keyed dicts
    of them), else ``{OBJECT: type name}``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {OBJECT: f"float {value}"}
    if isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return items if not any(isinstance(v, dict) and OBJECT in v for v in items) else {OBJECT: type(value).__name__}
    return {OBJECT: getattr(value, "__qualname__", None) or type(value).__name__}


def describe_criterion(criterion: "Criterion") -> tuple[str, dict[str, Any]]:
    """A criterion object's record for a config: its registry name (for a class that is not registered,
    ``module.QualName``) and its constructor arguments, read from the attributes of the same names.
    Arguments that are not plain JSON (data, functions) are recorded by type as ``{"__object__": name}``;
    an argument the object does not keep as an attribute is recorded as ``{"__object__": "unrecorded"}``.

    >>> from prunekit.criteria.magnitude import MagnitudeCriterion
    >>> describe_criterion(MagnitudeCriterion(p=1))
    ('l2', {'p': 1})
    """
    from .criteria import CachedScores
    from .criteria.base import CRITERIA

    while isinstance(criterion, CachedScores):
        criterion = criterion.inner
    cls = type(criterion)
    name = getattr(criterion, "name", None)
    if not (isinstance(name, str) and CRITERIA.get(name) is cls):
        name = f"{cls.__module__}.{cls.__qualname__}"
    args: dict[str, Any] = {}
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        args[pname] = _json_value(getattr(criterion, pname)) if hasattr(criterion, pname) else {OBJECT: "unrecorded"}
    return name, args


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and what to leave alone.

    >>> PruneConfig(ratio=0.5, round_to=8, ignore=("fc",)).to_json() == PruneConfig.from_json(
    ...     PruneConfig(ratio=0.5, round_to=8, ignore=("fc",)).to_json()).to_json()
    True
    """

    ratio: float = field(default=0.5, metadata={"help": "fraction of each group's units to remove"})
    ratios: tuple[tuple[str, float], ...] = field(
        default=(), metadata={"help": "per-module or per-group ratios: (glob on the group's first module, or "
                                 "'<tensor>:<dim>' of its first tensor, ratio), first match wins"})
    round_to: int = field(default=1, metadata={"help": "keep a multiple of this many channels per group"})
    max_ratio: float = field(default=0.9, metadata={"help": "never remove more than this fraction of a group"})
    ignore: tuple[str, ...] = field(default=(), metadata={"help": "module paths whose tensors keep their shape "
                                                                  "(inputs and outputs)"})
    keep_outputs: tuple[str, ...] = field(default=(), metadata={
        "help": "module paths whose outputs keep their size while their inputs may be pruned (Torch-Pruning's "
                "ignored_layers); e.g. the classifier"})
    kinds: tuple[str, ...] = field(default=("channel", "group", "head"),
                                   metadata={"help": f"group kinds to prune, among {KINDS}; 'head' cuts each "
                                                     "attention's heads x head width together, the width only "
                                                     "where verifiable ('head_dim' also where not)"})
    min_ratio: float = field(default=0.0, metadata={"help": "never remove less than this fraction of a group"})
    scope: str = field(default="local", metadata={"help": "'local': every group to its ratio; 'global': one "
                                                          "ranking over all groups"})
    normalize: str = field(default="mean", metadata={"help": "per-group score normalization for global scope: "
                                                             "mean, max, sum, l2 or none"})
    threshold: float | None = field(default=None, metadata={"help": "remove units scoring below this "
                                                                    "(normalized in global scope) instead of a ratio"})
    criterion: str = field(default="l2", metadata={"help": "importance criterion (registry name)"})
    criterion_args: dict[str, Any] | None = field(
        default=None, hash=False, metadata={"help": "the criterion's constructor arguments (None: its defaults); "
                                                    "recorded by prune_ for a criterion passed as an object"})
    strict: bool = field(default=False, metadata={"help": "raise on ops without a rule instead of keeping their dims"})

    def __post_init__(self) -> None:
        ratios = self.ratios.items() if isinstance(self.ratios, Mapping) else self.ratios
        try:
            pairs = [(k, v) for k, v in ratios]
        except (TypeError, ValueError):
            raise TypeError("PruneConfig.ratios must be a mapping or (pattern, ratio) pairs, got "
                            f"{type(self.ratios).__name__} {self.ratios!r}") from None
        for k, _ in pairs:
            if not isinstance(k, str):
                raise TypeError(f"PruneConfig.ratios keys must be strings (globs), got {type(k).__name__} {k!r}")
        object.__setattr__(self, "ratios", tuple(
            (k, float(number(f"PruneConfig.ratios[{k!r}]", v, lo=0.0, hi=1.0, hi_open=True))) for k, v in pairs))
        for name in ("ignore", "keep_outputs"):
            object.__setattr__(self, name, names(f"PruneConfig.{name}", getattr(self, name), modules=True))
        object.__setattr__(self, "kinds", names("PruneConfig.kinds", self.kinds))
        number("PruneConfig.ratio", self.ratio, lo=0.0, hi=1.0, hi_open=True)
        number("PruneConfig.max_ratio", self.max_ratio, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        number("PruneConfig.min_ratio", self.min_ratio, lo=0.0, hi=self.max_ratio)
        number("PruneConfig.round_to", self.round_to, lo=1, integer=True)
        if self.threshold is not None:
            number("PruneConfig.threshold", self.threshold)
        if not isinstance(self.strict, bool):
            raise TypeError(f"PruneConfig.strict must be True or False, got {self.strict!r}")
        if self.criterion_args is not None:
            if not isinstance(self.criterion_args, Mapping) or not all(isinstance(k, str) for k in self.criterion_args):
                raise TypeError("PruneConfig.criterion_args must be a mapping of argument names to values, got "
                                f"{type(self.criterion_args).__name__}")
            object.__setattr__(self, "criterion_args", {k: _json_value(v) if not isinstance(v, dict) else v
                                                        for k, v in self.criterion_args.items()})
        if self.criterion_args is None or "." not in str(self.criterion):  # a dotted name: a record of a class
            _known_criterion("PruneConfig.criterion", self.criterion)  # that is not registered
        if self.scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', not {self.scope!r}")
        if self.normalize not in ("mean", "max", "sum", "l2", "none"):
            raise ValueError(f"normalize must be one of mean, max, sum, l2, none; not {self.normalize!r}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown group kinds {bad}; choose among {KINDS}")

    def make_criterion(self) -> "Criterion":
        """The criterion this config names, built with its recorded arguments. Raises ``ValueError``
        naming what is missing when the record holds arguments that are not plain values (data,
        functions) or the class is not registered: pass the object itself then (``criterion=obj``)."""
        from .criteria.base import CRITERIA, get_criterion

        if self.criterion_args is None:
            return get_criterion(self.criterion)
        if self.criterion not in CRITERIA:
            raise ValueError(f"PruneConfig.criterion records {self.criterion!r}, which is not a registered criterion; "
                             "pass the criterion object: prune_(..., criterion=obj)")
        objects = sorted(k for k, v in self.criterion_args.items() if isinstance(v, dict) and OBJECT in v)
        if objects:
            raise ValueError(f"PruneConfig.criterion_args for {self.criterion!r} record {objects} by type only "
                             f"({', '.join(str(self.criterion_args[k][OBJECT]) for k in objects)}); pass the criterion "
                             f"object: prune_(..., criterion={CRITERIA[self.criterion].__name__}(...))")
        return CRITERIA[self.criterion](**self.criterion_args)

    def only(self, ratios: Iterable[tuple[str, float]]) -> "PruneConfig":
        """This config pruning only the groups matched by ``ratios`` (default ratio 0), with
        ``max_ratio`` raised to the largest ratio given."""
        pairs = tuple(ratios)
        return PruneConfig(**{**self.to_dict(), "ratio": 0.0, "ratios": pairs,
                              "max_ratio": max([self.max_ratio, *(r for _, r in pairs)])})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = [list(r) for r in self.ratios]
        d["ignore"] = list(self.ignore)
        d["keep_outputs"] = list(self.keep_outputs)
        d["kinds"] = list(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PruneConfig":
        known = set(cls.__dataclass_fields__)
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown PruneConfig fields {sorted(extra)}")
        d = dict(d)
        if "ratios" in d:
            d["ratios"] = tuple(tuple(r) for r in d["ratios"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PruneConfig":
        return cls.from_dict(json.loads(text))
