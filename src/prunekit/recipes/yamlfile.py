"""Recipes from YAML, with every error at its line: ``recipe.yaml:7: prune.ratio: PruneConfig.ratio
must be in [0.0, 1.0), got 1.5``. Unknown stages and fields name the field with a did-you-mean.

::

    seed: 0
    stages:
      - prune: {ratio: 0.5, round_to: 8, criterion: l2}
      - recover: {epochs: 1, lr: 1e-4, data: {source: random, batches: 8}}
      - measure: {rounds: 3}
      - export: {onnx: true}

Numbers such as ``1e-4`` are read as floats (plain YAML 1.1 reads them as strings).
"""
from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from .stages import NAMES, STAGES, Recipe


class RecipeError(ValueError):
    """A recipe that cannot run, with the file and line it comes from."""

    def __init__(self, message: str, source: str = "<recipe>", line: int | None = None):
        self.source, self.line, self.message = source, line, message
        super().__init__(f"{source}:{line}: {message}" if line is not None else f"{source}: {message}")


class _Loader(yaml.SafeLoader):
    """Safe YAML whose floats include ``1e-4`` and ``5E3`` (no dot needed)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _pairs(node: yaml.Node, what: str, source: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    """(key, key node, value node) of a mapping node; duplicate or non-string keys are errors."""
    if not isinstance(node, yaml.MappingNode):
        raise RecipeError(f"{what} must be a mapping (key: value lines), got {_kind(node)}", source, _line(node))
    seen: dict[str, int] = {}
    out = []
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise RecipeError(f"{what}: keys must be names, got {_kind(k)}", source, _line(k))
        if k.value in seen:
            raise RecipeError(f"{what}: {k.value!r} given twice (first on line {seen[k.value]})", source, _line(k))
        seen[k.value] = _line(k)
        out.append((k.value, k, v))
    return out


def _kind(node: yaml.Node) -> str:
    return {yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list"}.get(type(node), f"{node.value!r}")


def _blame(message: str, keys: list[str]) -> str | None:
    """The field a config's error message is about: ``Class.field`` first, else the earliest bare
    field name in the message."""
    hits = []
    for k in keys:
        m = re.search(rf"(?:\.|\b){re.escape(k)}\b", message)
        if m:
            hits.append((not m.group(0).startswith("."), m.start(), k))
    return min(hits)[2] if hits else None


def _stage(name: str, key: yaml.Node, body: yaml.Node | None, loader: _Loader, source: str) -> Any:
    cls = STAGES[name]
    known = cls.known()
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if body is not None and not (isinstance(body, yaml.ScalarNode) and body.tag == "tag:yaml.org,2002:null"):
        for field, knode, vnode in _pairs(body, name, source):
            if field not in known:
                raise RecipeError(f"{name}: unknown field {field!r}{_did_you_mean(field, known)}; {name} takes "
                                  f"{', '.join(known)}", source, _line(knode))
            values[field] = loader.construct_object(vnode, deep=True)
            lines[field] = _line(vnode)
            if isinstance(vnode, yaml.MappingNode):  # e.g. recover's data: each key's own line
                for k, v in vnode.value:
                    lines[f"{field}.{k.value}"] = _line(k)
    try:
        return cls.from_fields(values)
    except (TypeError, ValueError) as e:
        msg = str(e)
        if "data" in values and re.search(r"\bdata[.\s]", msg):
            field = "data"
            sub = _blame(msg, [k[5:] for k in lines if k.startswith("data.")])
            where = lines.get(f"data.{sub}", lines["data"])
        else:
            field = _blame(msg, list(values))
            where = lines.get(field, _line(key))
        raise RecipeError(f"{name}.{field}: {msg}" if field else f"{name}: {msg}", source, where) from None


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """A :class:`Recipe` from YAML text; :class:`RecipeError` names the line of any problem."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise RecipeError(f"not valid YAML: {e.problem or e}", source, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise RecipeError(f"not valid YAML: {e}", source) from None
    if root is None:
        raise RecipeError("the recipe is empty; it needs a 'stages:' list", source, 1)
    seed, stages = 0, None
    for key, knode, vnode in _pairs(root, "the recipe", source):
        if key == "seed":
            seed = loader.construct_object(vnode, deep=True)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise RecipeError(f"seed must be an integer >= 0, got {seed!r}", source, _line(vnode))
        elif key == "stages":
            stages = vnode
        else:
            raise RecipeError(f"unknown top-level key {key!r}{_did_you_mean(key, ['stages', 'seed'])}; a recipe "
                              "has 'stages:' (a list) and optionally 'seed:'", source, _line(knode))
    if stages is None:
        raise RecipeError("the recipe needs a 'stages:' list", source, _line(root))
    if not isinstance(stages, yaml.SequenceNode) or not stages.value:
        raise RecipeError(f"'stages:' must be a non-empty list of stages ({', '.join(NAMES)})", source, _line(stages))
    built = []
    for item in stages.value:
        if isinstance(item, yaml.ScalarNode) and item.value in STAGES:
            built.append(_stage(item.value, item, None, loader, source))
            continue
        pairs = _pairs(item, "a stage", source)
        if len(pairs) != 1:
            raise RecipeError(f"a stage is one key ({', '.join(NAMES)}) with its fields, got "
                              f"{[p[0] for p in pairs]}", source, _line(item))
        name, knode, body = pairs[0]
        if name not in STAGES:
            raise RecipeError(f"unknown stage {name!r}{_did_you_mean(name, list(NAMES))}; stages are "
                              f"{', '.join(NAMES)}", source, _line(knode))
        built.append(_stage(name, knode, body, loader, source))
    return Recipe(tuple(built), seed)


def load_recipe(path: str) -> Recipe:
    """A :class:`Recipe` from a YAML file (errors name ``path:line``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise RecipeError(f"cannot read the recipe: {e.strerror}", path) from None
    return parse_recipe(text, path)
