"""The one call for the common case: :func:`prune_` a model to a channel ratio."""
from __future__ import annotations

import contextlib
import copy
import gc
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch
from torch import nn

from .compat import module_slots
from .config import PruneConfig, describe_criterion
from .criteria import CachedScores, Criterion
from .errors import ApplyError, CounterConflict, PlanError, PrunekitError
from .graph.execute import counting, meta_forward
from .graph.groups import Blocked, Group
from .graph.tracer import DependencyGraph, Unsupported, as_inputs, iter_tensors, trace
from .graph.walk import Walk, eval_mode, recursion_headroom, walk
from .measure import Counts
from .measure.counting import MacCounter
from .plan import Plan, apply_plan, make_plan
from .selection import select_units


@dataclass
class PruneResult:
    plan: Plan
    before: Counts
    after: Counts
    groups: list[Group]
    unsupported: list[Unsupported] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    config: PruneConfig | None = None  # as applied (with ``macs=``: the ratio found)
    verified: dict[str, Any] = field(default_factory=dict)  # what the returned model was checked for
    graph: DependencyGraph | None = field(default=None, repr=False, compare=False)
    # with macs= / params=: metric, target and achieved fractions, how the ratios were allocated
    budget: dict[str, Any] = field(default_factory=dict)
    _blocked: list[Blocked] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def blocked(self) -> list[Blocked]:
        """Every parameter dim (or part of one) that no group could remove, with the op and module
        that kept it (model outputs, ``ignore=`` and ``keep_outputs=`` included)."""
        if self._blocked is None:
            self._blocked = self.graph.blocked() if self.graph is not None else []
        return self._blocked

    def kept_reasons(self, limit: int = 8) -> list[str]:
        """Why dims were kept, one line per (op, module, reason), most dims first; the model's
        outputs and the user's own ``ignore`` / ``keep_outputs`` are left out (they were asked for)."""
        counts: dict[tuple[str, str, str], int] = {}
        for b in self.blocked:
            if b.op in ("output", "ignore", "keep_outputs"):
                continue
            key = (b.op, b.module, b.reason)
            counts[key] = counts.get(key, 0) + 1
        lines = [f"op `{op}` in module `{mod or '<top-level forward>'}`: {why} ({n} parameter dim{'s' * (n != 1)})"
                 for (op, mod, why), n in sorted(counts.items(), key=lambda kv: -kv[1])]
        return lines[:limit] + ([f"... and {len(lines) - limit} more (result.blocked)"] if len(lines) > limit else [])

    @property
    def macs_ratio(self) -> float:
        return self.after.macs / max(self.before.macs, 1)

    @property
    def params_ratio(self) -> float:
        return self.after.params / max(self.before.params, 1)

    def summary(self) -> str:
        rows = [("", "before", "after", "ratio"),
                ("params", f"{self.before.params:,}", f"{self.after.params:,}", f"{self.params_ratio:.3f}"),
                ("MACs", f"{self.before.macs:,}", f"{self.after.macs:,}", f"{self.macs_ratio:.3f}")]
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        pruned = sum(1 for g in self.plan.groups)
        lines.append(f"{pruned} of {len(self.groups)} groups pruned in {self.seconds:.2f}s"
                     f"{'' if self.plan.exact else ' (some groups are approximate: normalization over pruned dims)'}")
        if self.budget:
            b = self.budget
            lines.append(f"budget: {b['metric']} <= {b['target']:.3f} of the original, {b['achieved']:.3f} reached "
                         f"({b['allocation']} ratios)")
        v = self.verified
        if self.plan.is_empty():
            lines.append("the model is unchanged")
        elif not v:
            lines.append("returned model not verified (verify=False)")
        elif v.get("checked") == "exact":
            lines.append(f"verified: outputs equal the zeroed original (max relative error {v['error']:.1e})")
        elif v.get("checked") == "exact-norm-aware":
            lines.append(f"verified: outputs equal the zeroed original with its norms over the kept channels "
                         f"(max relative error {v['error']:.1e})")
        else:
            lines.append("verified: outputs finite (approximate groups: not comparable to the zeroed original)")
        for u in self.unsupported:
            lines.append(f"kept (unsupported): {u}")
        for why in self.kept_reasons(5 if self.plan.groups else 8):
            lines.append(f"kept: {why}")
        for wmsg in self.warnings:
            lines.append(f"warning: {wmsg}")
        return "\n".join(lines)

    __str__ = summary


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic GC while pruning: tracing allocates many small objects, and full
    collections over a large model's object graph cost more than the prune (measured: 0.4 s of
    0.7 s on ResNet-50). Nothing we allocate is cyclic garbage; the previous state is restored."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _may_be_parametrized(m: nn.Module) -> bool:
    """Can ``parametrize.is_parametrized(m)`` be true: does ``m`` have a ``parametrizations`` attribute
    anywhere ``getattr`` looks? (``is_parametrized`` itself goes through ``nn.Module.__getattr__``, which
    raises and catches for every plain module: ~3 us a module.)"""
    return "parametrizations" in m.__dict__ or any("parametrizations" in slots for slots in module_slots(m)) or \
        hasattr(type(m), "parametrizations") or type(m).__getattr__ is not nn.Module.__getattr__ or \
        type(m).__getattribute__ is not nn.Module.__getattribute__


def _output_shapes(out: Any) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in iter_tensors(out)]


def prune_(model: nn.Module, example_inputs: Any, config: PruneConfig | None = None, *,
           example_kwargs: Mapping[str, Any] | None = None, mode: str = "hard", macs: float | None = None,
           params: float | None = None, allocate: Any = None, verify: bool = True,
           optimizer: torch.optim.Optimizer | None = None, **overrides: Any) -> PruneResult:
    """Prune ``model`` in place to the config's ratio and return a :class:`PruneResult`.

    >>> import torchvision
    >>> m = torchvision.models.resnet18()
    >>> r = prune_(m, torch.randn(1, 3, 64, 64), ratio=0.5, round_to=8)
    >>> r.macs_ratio < 0.35
    True

    The model's inputs and outputs keep their shapes. Ops prunekit cannot prune through
    keep the dims they touch (listed in ``result.unsupported``; ``strict=True`` raises).
    If anything fails, the model is left exactly as it was.

    The returned model is verified on the example inputs (``verify=False`` skips it, e.g. for a
    model too large to run twice): every output finite and, when every pruned group is exact, equal
    within 1e-4 (relative) to the original model with the removed slices zeroed. A failure restores
    the model and raises :class:`~prunekit.errors.VerificationError` naming the first module whose
    output diverged. ``result.verified`` says what was checked.

    ``criterion`` may be a registry name or a :class:`~prunekit.criteria.Criterion` instance
    (data-driven ones carry their data: ``TaylorCriterion(data=loader)``). An instance is recorded in
    ``result.config`` by name and constructor arguments (``criterion="taylor"``, ``criterion_args=
    {"max_batches": 4, "data": {"__object__": "list"}, ...}``); a config whose arguments are all plain
    values replays as it is, one that records data or functions asks for the object again.

    Budgets -- the one entry for them: ``macs=0.5`` (or ``params=0.5``) prunes to at most that
    fraction of the model's MACs (parameters) instead of to ``ratio``. By default the smallest ratio
    (uniform, or the global fraction with ``scope="global"``) that gets there, with the config's
    rounding and bounds, is found by bisection on pruned copies (scores are computed once);
    ``result.config.ratio`` is the ratio used. In local scope, groups matched by ``ratios=`` keep
    their given ratio (e.g. 0 to leave them whole) and the search sets the rest. ``allocate=`` spends
    the budget per group instead: a :class:`~prunekit.decide.Sensitivity` (least score
    lost per unit saved along its curves) or a :class:`~prunekit.decide.RatioSearch` (candidate
    networks scored by your ``evaluate``); ``result.config.ratios`` holds the ratios chosen and
    ``result.budget`` what was asked and measured. A budget that cannot be met raises
    :class:`~prunekit.errors.PlanError` with the model unchanged.

    Pruning mid-training: the model's ``nn.Parameter`` objects stay the same (only their data shrinks),
    so an optimizer built before still trains them; pass it as ``optimizer=opt`` and its state (SGD
    momentum, Adam moments) is sliced along the same dims, as part of the same all-or-nothing apply.
    An optimizer whose state cannot be sliced raises :class:`~prunekit.errors.OptimizerStateError`
    naming the parameter and state key, before anything changes.
    """
    criterion = overrides.pop("criterion", None)
    if isinstance(criterion, str):
        overrides["criterion"], criterion = criterion, None
    config = replace(config, **overrides) if config is not None else PruneConfig(**overrides)
    if criterion is not None:  # the result's config says what was used: name and arguments
        name, args = describe_criterion(criterion)
        config = replace(config, criterion=name, criterion_args=args)
    elif config.criterion_args is not None:  # a recorded config replayed: the criterion it records
        criterion = config.make_criterion()
    from .decide.allocate import budget_of  # deciding imports the api: import it at call time

    budget = budget_of(macs, params)
    if budget is not None:
        if config.threshold is not None or (config.ratios and config.scope == "global" and allocate is None):
            raise ValueError(f"{budget[0]}= searches the ratios; it cannot be combined with threshold=, nor with "
                             "ratios= in global scope")
    elif allocate is not None:
        raise ValueError("allocate= spends a budget: give macs= or params= with it")
    with _gc_paused(), recursion_headroom(model):
        return _prune(model, example_inputs, config, example_kwargs, mode, criterion, budget, verify, optimizer,
                      allocate)


def _macs_of(m: nn.Module, inputs: tuple, kwargs: Mapping[str, Any], modules: list[nn.Module],
             meta: bool = True) -> tuple[int, list]:
    """MACs of one eval forward (on meta tensors where the model allows) and its output shapes.
    ``meta=False``: straight to a real forward (the model's trace already needed real values)."""
    counter = MacCounter()
    with eval_mode(modules):
        try:
            if not meta:
                raise NotImplementedError("the trace needed real values")
            shapes = _output_shapes(meta_forward(m, inputs, kwargs, counter=counter))
        except Exception:  # noqa: BLE001 - needs real values: run for real
            counter = MacCounter()
            with torch.no_grad(), counting(counter):
                shapes = _output_shapes(m(*inputs, **kwargs))
    return counter.macs, shapes


class PrunedCopies:
    """Pruned copies of one model under many configs, from one trace: what a search over configs
    (a ratio bisection, a per-group ratio search) evaluates. ``copy(config)`` prunes a deep copy
    exactly as ``prune_(copy, x, config)`` would (same groups, selection and plan) and counts it.

    The trace is taken with ``config``'s ignored modules and strictness; every later config is
    expected to share them and its group kinds."""

    def __init__(self, model: nn.Module, example_inputs: Any, config: PruneConfig,
                 example_kwargs: Mapping[str, Any] | None = None, criterion: Criterion | str | None = None,
                 _walked: Walk | None = None) -> None:
        self.model, self.inputs, self.kwargs = model, as_inputs(example_inputs), dict(example_kwargs or {})
        if criterion is None or (criterion == config.criterion and config.criterion_args is not None):
            criterion = config.make_criterion()  # the name with its recorded arguments
        self.criterion = criterion if isinstance(criterion, CachedScores) else CachedScores(criterion)
        flops = MacCounter()
        # inside prune_, trace's recursion_headroom finds the room prune_ already holds for this model
        self.graph = trace(model, self.inputs, self.kwargs, ignore=config.ignore, strict=config.strict,
                           counter=flops, keep_outputs=config.keep_outputs, walked=_walked)
        params = _walked.params.values() if _walked is not None else model.parameters()  # the same unique tensors
        self.before = Counts(sum(p.numel() for p in params), flops.macs)
        self.groups = self.graph.groups(config.kinds)
        self.notes: list[str] = []

    def plan(self, config: PruneConfig) -> Plan:
        """The plan ``prune_`` makes under ``config``. Groups that share a module attribute with another
        group cut by a different amount (e.g. a ``dim`` that both an attention's query width and its
        key/value width must equal) are kept whole, and ``self.notes`` says which and why."""
        while True:
            chosen, summaries = select_units(self.model, self.groups, config, self.criterion, self.graph)
            try:
                return make_plan(self.graph, chosen, summaries)
            except CounterConflict as exc:
                drop = [g for g in self.groups if not exc.roots.isdisjoint(g.unit_roots(range(len(g))))]
                if not drop:
                    raise
                self.groups = [g for g in self.groups if all(g is not d for d in drop)]
                self.notes.append(f"kept {len(drop)} group(s) whole ({', '.join(str(d.root) for d in drop[:3])}"
                                  f"{'...' if len(drop) > 3 else ''}): {exc}")

    def drop_heads(self, exc: Exception) -> None:
        """After a plan cutting attention heads failed to apply: keep every head (and head width)
        group whole from now on, and say so in ``notes``; re-raise ``exc`` when there were none."""
        if not any(g.kind in ("head", "head_dim") for g in self.groups):
            raise exc
        self.notes.append(f"pruning attention heads failed ({exc}); heads were kept")
        self.groups = [g for g in self.groups if g.kind not in ("head", "head_dim")]

    def copy(self, config: PruneConfig) -> tuple[nn.Module, Counts]:
        """A pruned deep copy under ``config`` and its parameter and MAC counts (with the same fallback
        as ``prune_``: heads kept whole when a plan cutting them cannot be applied)."""
        while True:
            plan = self.plan(config)
            m = copy.deepcopy(self.model)
            try:
                if not plan.is_empty():
                    apply_plan(m, plan, "hard")
                macs = _macs_of(m, self.inputs, self.kwargs, list(m.modules()), self.graph.on_meta)[0]
            except (ApplyError, PlanError, RuntimeError) as exc:
                self.drop_heads(exc)
                continue
            return m, Counts(sum(p.numel() for p in m.parameters()), macs)


def _ratio_for_budget(copies: PrunedCopies, config: PruneConfig, metric: str, target: float) -> float:
    """Smallest ratio (to within max_ratio / 1024) whose pruned copy has at most ``target`` MACs or
    parameters (``metric``)."""
    def value_at(r: float) -> int:
        counts = copies.copy(replace(config, ratio=r))[1]
        return counts.macs if metric == "macs" else counts.params

    lo, hi = 0.0, config.max_ratio * 0.999999  # ratio must stay below max_ratio's bound and 1
    at_hi = value_at(hi)
    if at_hi > target:
        name = "MACs" if metric == "macs" else "parameters"
        raise PlanError(f"cannot reach {target:,.0f} {name}: at ratio {hi:.3f} (max_ratio) the model keeps "
                        f"{at_hi:,} {name}; raise max_ratio or the budget")
    for _ in range(10):
        mid = (lo + hi) / 2
        if value_at(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _prune(model: nn.Module, example_inputs: Any, config: PruneConfig, example_kwargs: Mapping[str, Any] | None,
           mode: str, criterion: Criterion | None, budget: tuple[str, float] | None = None,
           verify: bool = True, optimizer: torch.optim.Optimizer | None = None, allocate: Any = None) -> PruneResult:
    from torch.nn.utils import parametrize

    walked = walk(model)  # one pass over the model for this check, the trace and the counts
    masked = [n for n, m in walked.modules.items() if _may_be_parametrized(m) and parametrize.is_parametrized(m)]
    if masked:
        raise PrunekitError(f"prune_: {len(masked)} module(s) carry parametrizations (sparsity masks?), e.g. "
                            f"{masked[0] or type(model).__name__!r}; bake them in first "
                            "(prunekit.sparsity.finalize(model)), then prune the plain model")
    inputs = as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    t0 = time.perf_counter()
    modules = list(walked.modules.values())  # model.modules(); the same objects after a hard apply
    copies = PrunedCopies(model, inputs, config, kwargs, criterion, _walked=walked)  # one forward: trace + MACs
    criterion = copies.criterion  # scores each group once, however many configs the macs= bisection tries
    graph: DependencyGraph = copies.graph
    before, groups = copies.before, copies.groups
    ref_shapes = graph.output_shapes
    measured: dict[str, int] = {}

    def check(m: nn.Module, counter: MacCounter | None = None) -> None:
        """Verify the pruned model runs with unchanged output shapes (and count its MACs): from the
        verification forward that ``apply_plan`` just ran under ``counter`` where there was one, else
        by a forward of its own."""
        shapes = verified.pop("output_shapes", None)
        if counter is not None and shapes is not None:
            macs = counter.macs
        else:
            macs, shapes = _macs_of(m, inputs, kwargs, modules, graph.on_meta)
        if shapes != ref_shapes:
            raise PlanError(f"output shapes changed from {ref_shapes} to {shapes}")
        measured["macs"] = macs

    notes: list[str] = []
    budget_record: dict[str, Any] = {}
    if budget is not None:
        metric, fraction = budget
        if allocate is None:
            full = before.macs if metric == "macs" else before.params
            config = replace(config, ratio=_ratio_for_budget(copies, config, metric, fraction * full))
            budget_record = {"allocation": "uniform" if config.scope == "local" else "global"}
        else:
            from .decide.allocate import allocated_config

            config, budget_record = allocated_config(model, inputs, kwargs, config, criterion, metric, fraction,
                                                     allocate)
        budget_record = {"metric": metric, "target": fraction, **budget_record}
    verified: dict[str, Any] = {}

    def apply(plan: Plan) -> None:
        verified.clear()
        if plan.is_empty():
            return
        counter = MacCounter() if verify else None  # the verification forward counts the pruned MACs
        apply_plan(model, plan, mode=mode, check=lambda m: check(m, counter), example_inputs=inputs,
                   example_kwargs=kwargs, verify=verify, report=verified, counter=counter, optimizer=optimizer)
        verified.pop("output_shapes", None)

    plan = copies.plan(config)
    try:
        apply(plan)
    except (ApplyError, PlanError) as exc:
        copies.drop_heads(exc)
        plan = copies.plan(config)
        apply(plan)
    notes[:0] = copies.notes
    if "macs" not in measured:  # nothing was applied
        check(model)
    after = Counts(sum(p.numel() for p in model.parameters()), measured["macs"])
    if budget_record:
        budget_record["achieved"] = (after.macs / max(before.macs, 1) if budget_record["metric"] == "macs"
                                     else after.params / max(before.params, 1))
    result = PruneResult(plan, before, after, groups, graph.unsupported, notes, time.perf_counter() - t0, config,
                         dict(verified), graph, budget_record)
    if not plan.groups and (config.ratio > 0 or config.ratios or config.threshold is not None):
        reasons = [] if notes else result.kept_reasons(3)
        notes.append("nothing was pruned" + (" (see the warning above)" if notes else "") +
                     (": " + "; ".join(reasons) if reasons else "" if notes else
                                             f" ({len(groups)} groups, none selected at this config)"))
    for n in notes:
        warnings.warn(n)
    if graph.meta_fallback:  # reported in result.warnings and the summary (HF models often need it: no warning)
        result.warnings.append(f"traced with a real forward on the example inputs (the meta trace failed in "
                               f"{graph.meta_fallback}); branches that depend on tensor values were followed "
                               "for these inputs only")
    if graph.value_reads:  # the meta trace read the example's values (graph.shadows): say where, as for a fallback
        ops = sorted({f"`{op}` in module `{mod or '<top-level forward>'}`" for op, mod in graph.value_reads})
        result.warnings.append(f"the trace read values of the example inputs ({len(graph.value_reads)} read(s): "
                               f"{', '.join(ops[:3])}{', ...' if len(ops) > 3 else ''}); branches that depend "
                               "on them were followed for these inputs only")
    if graph.unsupported:
        warnings.warn("kept the dims touched by unsupported ops: " + "; ".join(map(str, graph.unsupported[:5])))
    return result
