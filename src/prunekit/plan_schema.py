"""What a :class:`~prunekit.plan.Plan` may say, checked before anything changes.

- **Schema** (:func:`parse`): a plan read from JSON has the right types throughout: tensor names
  are strings, dims are non-negative integers, indices are integers (``2.0`` and ``"2"`` are refused,
  not truncated), ``attrs`` set integer counts. Every problem is a ``PlanError`` naming the field.
- **Fingerprint** (:func:`check_model`): a plan made by prunekit records the name and shape of every
  parameter and buffer of the model it was made for (``Plan.shapes``). A model that differs -- another
  architecture, or the same one already pruned (a plan applied twice) -- is refused with what differs.
- **Attributes** (:func:`check_attrs`): a plan may only lower integer counts that the module already
  has (``num_heads``, ``hidden_size``, an element of a stored shape tuple): never ``training``,
  ``forward``, a method, a tensor, a flag or a private attribute.
- **Digest** (:func:`digest`): a hash of what the plan removes and rewrites, recorded when prunekit
  makes it and checked when a plan is read (``Plan.from_dict`` / ``from_json`` / ``load``). A plan file
  edited afterwards (say, its BatchNorm entries deleted so a conv is cut alone) no longer matches and
  is refused; :meth:`Plan.seal` records a new digest for a plan edited on purpose. In-memory plans
  changed by code are not refused for their digest: verifying the result (``example_inputs=``) is
  what catches a wrong one there.
"""
from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .errors import PlanError

FORBIDDEN_ATTRS = frozenset({"training", "forward", "dump_patches", "call_super_init"})


def _int(value: Any, what: str, *, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must be an integer, got {type(value).__name__} {value!r}")
    if value < lo:
        raise PlanError(f"{what} must be >= {lo}, got {value}")
    return value


def _dim_key(key: Any, name: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return _int(key, f"removed[{name!r}] dim")
    if not isinstance(key, str) or not key.isdigit():
        raise PlanError(f"removed[{name!r}] has dim {key!r}; dims are non-negative integers")
    return int(key)


def parse(d: Any) -> dict[str, Any]:
    """The fields of a plan from its JSON form, checked; raises ``PlanError`` naming the field."""
    if not isinstance(d, Mapping):
        raise PlanError(f"a plan is a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"removed", "attrs", "groups", "exact", "version", "renumber", "norm_only", "shapes", "digest",
                       "rescale"}
    if unknown:
        raise PlanError(f"unknown plan fields {sorted(unknown)}")
    removed_in = d.get("removed")
    if not isinstance(removed_in, Mapping):
        raise PlanError(f"plan field 'removed' must be an object of tensor name -> dim -> indices, got {removed_in!r}")
    removed: dict[str, dict[int, list[int]]] = {}
    for name, dims in removed_in.items():
        if not isinstance(dims, Mapping):
            raise PlanError(f"removed[{name!r}] must map dims to index lists, got {dims!r}")
        removed[name] = {}
        for key, idx in dims.items():
            dim = _dim_key(key, name)
            if not isinstance(idx, list):
                raise PlanError(f"removed[{name!r}][{dim}] must be a list of indices, got {idx!r}")
            removed[name][dim] = [_int(i, f"removed[{name!r}][{dim}] index") for i in idx]
    attrs = []
    for item in d.get("attrs", []):
        if not (isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], str)):
            raise PlanError(f"each plan attr is [module path, attribute, value], got {item!r}")
        attrs.append((item[0], item[1], _int(item[2], f"attr {item[0]}.{item[1]}")))
    renumber_in = d.get("renumber", {})
    if not isinstance(renumber_in, Mapping):
        raise PlanError(f"plan field 'renumber' must be an object, got {renumber_in!r}")
    renumber = {}
    for name, values in renumber_in.items():
        if not isinstance(values, list):
            raise PlanError(f"renumber[{name!r}] must be a list, got {values!r}")
        renumber[name] = [_int(v, f"renumber[{name!r}] value") for v in values]
    shapes_in = d.get("shapes", {})
    if not isinstance(shapes_in, Mapping):
        raise PlanError(f"plan field 'shapes' must be an object, got {shapes_in!r}")
    shapes = {}
    for name, shape in shapes_in.items():
        if not isinstance(shape, list):
            raise PlanError(f"shapes[{name!r}] must be a list, got {shape!r}")
        shapes[name] = [_int(s, f"shapes[{name!r}]") for s in shape]
    rescale = []
    for item in d.get("rescale", []):
        if not (isinstance(item, (list, tuple)) and len(item) == 4 and isinstance(item[0], str)
                and isinstance(item[2], (list, tuple))
                and isinstance(item[3], (int, float)) and not isinstance(item[3], bool)):
            raise PlanError(f"each plan rescale is [tensor, dim, indices, factor], got {item!r}")
        rescale.append((item[0], _int(item[1], f"rescale {item[0]} dim"),
                        [_int(i, f"rescale {item[0]} index") for i in item[2]], float(item[3])))
    groups = d.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise PlanError("plan field 'groups' must be a list of objects")
    for flag in ("exact", "norm_only"):
        if not isinstance(d.get(flag, False), bool):
            raise PlanError(f"plan field {flag!r} must be true or false, got {d.get(flag)!r}")
    dig = d.get("digest")
    if dig is not None and not isinstance(dig, str):
        raise PlanError(f"plan field 'digest' must be a string, got {dig!r}")
    return dict(removed=removed, attrs=attrs, groups=[dict(g) for g in groups], exact=d.get("exact", True),
                renumber=renumber, norm_only=d.get("norm_only", False), shapes=shapes, digest=dig,
                **({"rescale": rescale} if "rescale" in d else {}))


DIGEST_PREFIX = "v2:"  # digests written since the index arrays are hashed as bytes; older ones are v1 (no prefix)


def digest(plan) -> str:
    """SHA-256 of what ``plan`` removes, renumbers and rewrites, and of the shapes it expects, as
    ``"v2:<hex>"``. The removed indices of each ``(tensor, dim)`` are hashed as their sorted little-endian
    int64 bytes, after the name, dim and count (a JSON dump of every index cost ~4% of a prune); the rest
    as JSON. Deterministic: the same content gives the same digest in any process and on any machine."""
    parts = [b"prunekit plan digest v2\0"]  # hashed as one string: the same digest as update() per part
    for name, dims in sorted(plan.removed.items()):
        for dim, idx in sorted(dims.items()):
            head = (f"[{_json_str(name)}, {int(dim)}, {len(idx)}]" if type(name) is str  # json.dumps' text
                    else json.dumps([name, int(dim), len(idx)]))
            parts.append(head.encode() + b"\0")
            a = np.array(idx, dtype="<i8")  # a copy: sorted in place
            a.sort()
            parts.append(a.tobytes())
    h = hashlib.sha256(b"".join(parts))
    rest = {"renumber": {n: list(v) for n, v in sorted(plan.renumber.items())},
            "attrs": sorted([list(a) for a in plan.attrs]),
            "shapes": {n: list(s) for n, s in sorted(plan.shapes.items())},
            "rescale": sorted([[n, k, sorted(idx), f] for n, k, idx, f in getattr(plan, "rescale", [])]),
            "exact": plan.exact, "norm_only": plan.norm_only}
    h.update(json.dumps(rest, sort_keys=True).encode())
    return DIGEST_PREFIX + h.hexdigest()


def digest_v1(plan) -> str:
    """The digest prunekit wrote before ``v2`` (a bare hex SHA-256 of the JSON of the whole content):
    plans saved then still load, and are checked against it."""
    body = {"removed": {n: {str(k): sorted(v) for k, v in sorted(dims.items())} for n, dims in sorted(plan.removed.items())},
            "renumber": {n: list(v) for n, v in sorted(plan.renumber.items())},
            "attrs": sorted([list(a) for a in plan.attrs]),
            "shapes": {n: list(s) for n, s in sorted(plan.shapes.items())},
            "rescale": sorted([[n, k, sorted(idx), f] for n, k, idx, f in getattr(plan, "rescale", [])]),
            "exact": plan.exact, "norm_only": plan.norm_only}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_digest(plan) -> None:
    """Refuse a plan whose content no longer matches its recorded digest (``v2`` or, for plans saved
    before it, ``v1``); a digest of neither form is refused as unreadable."""
    if plan.digest is None:
        return
    if plan.digest.startswith(DIGEST_PREFIX):
        expected = digest(plan)
    elif len(plan.digest) == 64 and all(c in "0123456789abcdef" for c in plan.digest):
        expected = digest_v1(plan)
    else:
        raise PlanError(f"the plan's digest {plan.digest[:24]!r} is in no known format (expected "
                        f"'{DIGEST_PREFIX}<sha256 hex>' or, from older versions, a bare sha256 hex)")
    if plan.digest != expected:
        raise PlanError("the plan was changed after prunekit made it (its digest does not match its content); "
                        "a plan edited on purpose must be re-sealed with plan.seal()")


def check_model(plan, model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse a model whose parameter/buffer names and shapes differ from those the plan was made for."""
    if not plan.shapes:
        return  # a plan built by hand: no fingerprint to compare
    have = {n: list(t.shape) for n, t in tensors.items()}
    if have == plan.shapes:  # the common case: same names, same shapes (what differs is worked out below)
        return
    missing = sorted(set(plan.shapes) - set(have))
    extra = sorted(set(have) - set(plan.shapes))
    changed = [(n, plan.shapes[n], have[n]) for n in sorted(set(plan.shapes) & set(have)) if plan.shapes[n] != have[n]]
    if not (missing or extra or changed):
        return
    what = []
    if changed:
        shrunk = all(h[i] <= p[i] for _, p, h in changed for i in range(min(len(p), len(h)))) and \
            all(len(p) == len(h) for _, p, h in changed)
        what.append("; ".join(f"{n} is {h}, the plan expects {p}" for n, p, h in changed[:3]) +
                    (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "") +
                    (" -- already pruned? A plan applies once, to the model it was made for" if shrunk else ""))
    if missing:
        what.append(f"missing {missing[:3]}" + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""))
    if extra:
        what.append(f"not in the plan's model {extra[:3]}" + (f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""))
    raise PlanError(f"the plan was made for another model than this {type(model).__name__}: " + "; ".join(what))


def check_attrs(plan, modules: Mapping[str, nn.Module]) -> None:
    """Each attr is an existing integer count (or an integer element of a tuple/list) that is lowered."""
    from .plan import _split_attr

    for mod, attr, value in plan.attrs:
        base, index = _split_attr(attr)
        if base in FORBIDDEN_ATTRS or base.startswith("__") or not base.replace("_", "a").isalnum():
            raise PlanError(f"plan may not set {mod}.{attr}")
        if mod not in modules or not hasattr(modules[mod], base):
            raise PlanError(f"plan sets {mod}.{attr}, which the model does not have")
        current = getattr(modules[mod], base)
        if index is not None:
            if not isinstance(current, (tuple, list)) or not -len(current) <= index < len(current):
                raise PlanError(f"plan sets {mod}.{attr}, but {mod}.{base} is {current!r}")
            current = current[index]
        if isinstance(current, bool) or not isinstance(current, int):
            raise PlanError(f"plan sets {mod}.{attr}, which is a {type(current).__name__}, not an integer count")
        if not 0 <= value <= current:
            raise PlanError(f"plan sets {mod}.{attr} to {value}; pruning only lowers a count (now {current})")
