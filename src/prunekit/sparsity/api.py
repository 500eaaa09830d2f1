"""Parameter pruning in one call (:func:`sparsify_`) and during training (:class:`GradualPruner`)."""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .. import compat
from ..criteria import Criterion, get_criterion
from ..validate import names, number, unmatched
from .masks import nm_mask, sparsity_of, threshold_masks, unstructured_masks, zero_masks
from .parametrize import apply_masks, finalize, load_state_dict_, masks_of

PRUNABLE = (nn.Linear, compat.CONV)


@dataclass(frozen=True)
class SparsityConfig:
    """What to zero in which weights.

    >>> SparsityConfig.from_json(SparsityConfig(sparsity=0.9, scope="global").to_json()).sparsity
    0.9
    """

    sparsity: float = field(default=0.5, metadata={"help": "fraction of weights to remove (unstructured)"})
    pattern: str = field(default="unstructured", metadata={"help": "'unstructured' or 'N:M' such as '2:4'"})
    scope: str = field(default="local", metadata={"help": "'local' (each tensor) or 'global' (one threshold)"})
    threshold: float | None = field(default=None, metadata={"help": "remove weights scoring below this instead"})
    criterion: str = field(default="l1", metadata={"help": "per-weight criterion (registry name)"})
    ignore: tuple[str, ...] = field(default=(), metadata={"help": "module paths (and their children) left dense"})
    strict: bool = field(default=False, metadata={"help": "N:M: raise on a layer whose input size is not a multiple "
                                                          "of M instead of leaving it dense (listed in the result)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", names("SparsityConfig.ignore", self.ignore))
        number("SparsityConfig.sparsity", self.sparsity, lo=0.0, hi=1.0, hi_open=True)
        if self.threshold is not None:
            number("SparsityConfig.threshold", self.threshold)
        for name in ("pattern", "scope", "criterion"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"SparsityConfig.{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.strict, bool):
            raise TypeError(f"SparsityConfig.strict must be True or False, got {self.strict!r}")
        from ..config import _known_criterion

        _known_criterion("SparsityConfig.criterion", self.criterion)
        if self.scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', not {self.scope!r}")
        if self.pattern != "unstructured":
            self.nm  # validates

    @property
    def nm(self) -> tuple[int, int]:
        m = re.fullmatch(r"(\d+):(\d+)", self.pattern)
        if not m or not 0 < int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M, not {self.pattern!r}")
        return int(m.group(1)), int(m.group(2))

    def to_json(self) -> str:
        d = asdict(self)
        d["ignore"] = list(self.ignore)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SparsityConfig":
        d = json.loads(text)
        extra = set(d) - set(cls.__dataclass_fields__)
        if extra:
            raise ValueError(f"unknown SparsityConfig fields {sorted(extra)}")
        return cls(**d)


def prunable_weights(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The (effective) weights of Linear and Conv layers outside ``ignore``, by parameter name."""
    ignore = tuple(ignore)
    out = {}
    for path, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE):
            continue
        if any(path == p or path.startswith(p + ".") or p == "" for p in ignore):
            continue
        out[f"{path}.weight" if path else "weight"] = mod.weight  # masked weight if parametrized
    return out


@dataclass
class SparsityResult:
    """Per-tensor sparsity after a call, the masks that were applied, and the weights left dense
    because the pattern does not fit them (``skipped``: name -> reason)."""

    masks: dict[str, torch.Tensor]
    per_tensor: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def overall(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        zeros = sum(int((~m).sum()) for m in self.masks.values())
        return zeros / max(total, 1)

    def summary(self) -> str:
        lines = [f"{len(self.masks)} tensors, overall sparsity {self.overall:.3f}"]
        lines += [f"  {n}: {s:.3f}" for n, s in self.per_tensor.items()]
        lines += [f"  {n}: left dense ({why})" for n, why in self.skipped.items()]
        return "\n".join(lines)


def nm_misfits(weights: Mapping[str, torch.Tensor], m: int) -> dict[str, str]:
    """Weights an N:M pattern cannot cover: no input dimension, or an input size (``in * k * k`` for
    a conv) that is not a multiple of ``m`` -- as NVIDIA's ASP, these stay dense."""
    out = {}
    for name, w in weights.items():
        if w.dim() < 2:
            out[name] = f"shape {tuple(w.shape)} has no input dimension"
        elif (w[0].numel()) % m:
            out[name] = f"input size {w[0].numel()} is not a multiple of {m}"
    return out


def compute_masks(model: nn.Module, config: SparsityConfig, criterion: Criterion | None = None,
                  weights: Mapping[str, torch.Tensor] | None = None, sparsity: float | None = None) -> dict[str, torch.Tensor]:
    """Masks for ``weights`` (default: :func:`prunable_weights`) by the config; nothing changes.

    N:M: weights the pattern does not fit (:func:`nm_misfits`) get no mask (``strict`` raises)."""
    weights = dict(weights) if weights is not None else prunable_weights(model, config.ignore)
    if config.pattern != "unstructured":
        n, m = config.nm
        misfits = nm_misfits(weights, m)
        if misfits and config.strict:
            raise ValueError(f"N:M {config.pattern} does not fit (strict=True): " +
                             "; ".join(f"{k}: {v}" for k, v in misfits.items()))
        weights = {k: w for k, w in weights.items() if k not in misfits}
    crit = criterion if criterion is not None else get_criterion(config.criterion)
    with torch.no_grad():
        scores = {n: crit.score_weights_of(n, w) for n, w in weights.items()}
    if config.pattern != "unstructured":
        return {name: nm_mask(s, n, m) for name, s in scores.items()}
    if config.threshold is not None:
        return threshold_masks(scores, config.threshold)
    return unstructured_masks(scores, config.sparsity if sparsity is None else sparsity, config.scope)


def _check_ignore(model: nn.Module, config: SparsityConfig) -> None:
    unmatched("ignore", config.ignore, [n for n, _ in model.named_modules()])


def sparsify_(model: nn.Module, config: SparsityConfig | None = None, *, criterion: Criterion | None = None,
              finalize_now: bool = False, **overrides: Any) -> SparsityResult:
    """Mask the weights of ``model`` in place (as parametrizations; :func:`finalize` bakes them in).

    Every ``ignore`` entry must name a module. With an N:M ``pattern``, layers whose input size is
    not a multiple of M stay dense and are listed in ``result.skipped`` (with a warning);
    ``strict=True`` raises instead.

    >>> m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> sparsify_(m, sparsity=0.5, finalize_now=True).overall
    0.5
    """
    config = SparsityConfig(**{**(asdict(config) if config else {}), **overrides})
    _check_ignore(model, config)
    crit = criterion if criterion is not None else get_criterion(config.criterion)
    crit.prepare(model, None)
    masks = compute_masks(model, config, crit)
    skipped = nm_misfits(prunable_weights(model, config.ignore), config.nm[1]) if config.pattern != "unstructured" else {}
    if skipped:
        warnings.warn(f"sparsify_: {len(skipped)} weight(s) left dense, N:M {config.pattern} does not fit them: "
                      + "; ".join(f"{k} ({v})" for k, v in skipped.items()), stacklevel=2)
    apply_masks(model, masks)
    if finalize_now:
        finalize(model)
    return SparsityResult(masks, {n: sparsity_of(m) for n, m in masks.items()}, skipped)


def mark_zeros_(model: nn.Module, tol: float = 0.0, ignore: Iterable[str] = ()) -> SparsityResult:
    """"Basic" pruning: find weights that are already zero (``|w| <= tol``), mask them so they
    stay zero in training, and report how sparse each tensor already is."""
    number("mark_zeros_ tol", tol, lo=0.0)
    ignore = names("mark_zeros_ ignore", ignore)
    unmatched("ignore", ignore, [n for n, _ in model.named_modules()])
    masks = zero_masks(prunable_weights(model, ignore), tol)
    apply_masks(model, masks)
    return SparsityResult(masks, {n: sparsity_of(m) for n, m in masks.items()})


class GradualPruner:
    """Pruning during training, shaped like an optimizer: call :meth:`step` after each
    ``optimizer.step()``; masks follow ``schedule.sparsity_at(step)`` (e.g. :class:`~prunekit.schedules.Cubic`),
    re-scored on the current weights whenever the target changes. :meth:`finalize` leaves a
    plain model.

    >>> from prunekit.schedules import Cubic
    >>> m = nn.Linear(16, 16)
    >>> pruner = GradualPruner(m, Cubic(0.0, 0.5, begin_step=0, end_step=4))
    >>> print([round(pruner.step(), 3) for _ in range(5)])
    [0.289, 0.438, 0.492, 0.5, 0.5]
    """

    def __init__(self, model: nn.Module, schedule, config: SparsityConfig | None = None,
                 criterion: Criterion | None = None, **overrides: Any):
        self.model = model
        self.schedule = schedule
        self.config = SparsityConfig(**{**(asdict(config) if config else {}), **overrides})
        if self.config.pattern != "unstructured":
            raise ValueError("GradualPruner schedules unstructured sparsity; use sparsify_ for N:M")
        _check_ignore(model, self.config)
        self.criterion = criterion if criterion is not None else get_criterion(self.config.criterion)
        self.names = list(prunable_weights(model, self.config.ignore))
        self.step_count = 0
        self.current = 0.0

    def step(self) -> float:
        """Advance one step; re-mask if the scheduled sparsity changed. Returns the sparsity."""
        self.step_count += 1
        target = self.schedule.sparsity_at(self.step_count)
        if abs(target - self.current) > 1e-12:
            weights = prunable_weights(self.model, self.config.ignore)
            weights = {n: weights[n] for n in self.names}
            masks = compute_masks(self.model, self.config, self.criterion, weights, sparsity=target)
            apply_masks(self.model, masks)
            self.current = target
        return self.current

    def masks(self) -> dict[str, torch.Tensor]:
        return masks_of(self.model)

    def finalize(self) -> nn.Module:
        return finalize(self.model)

    def state_dict(self) -> dict[str, Any]:
        """Step, current sparsity and the masks now attached (bool tensors by parameter name)."""
        return {"step_count": self.step_count, "current": self.current,
                "masks": {n: m.detach().clone() for n, m in masks_of(self.model).items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume: restores the step and re-attaches the saved masks to this pruner's model, so a
        checkpoint of the masked model (``parametrizations.*.original`` keys) then loads into it."""
        masks = dict(state.get("masks", {}))
        unknown = set(masks) - set(self.names)
        if unknown:
            raise ValueError(f"GradualPruner state has masks for weights this pruner does not manage: {sorted(unknown)}")
        apply_masks(self.model, masks)
        self.step_count, self.current = int(state["step_count"]), float(state["current"])

    def load_checkpoint(self, model_state: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
        """Load a checkpoint taken during pruning: the pruner's ``state`` and the masked model's ``state_dict``."""
        self.load_state_dict(state)
        load_state_dict_(self.model, model_state)
