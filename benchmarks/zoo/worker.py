"""One zoo model, both tools, in the calling process: returns the row the benchmark records."""
from __future__ import annotations

import copy
import dataclasses
import math
import signal
import time
import traceback
import warnings
from typing import Any

import torch

from . import measure
from .spec import Spec
from .tp_run import attention_layers, prune_tp

TOL = 1e-4  # relative: max |pruned - soft reference| / max |soft reference|
_KNOWN_RESULT_FIELDS = {"plan", "before", "after", "groups", "unsupported", "warnings", "seconds", "config", "graph"}


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:400]}"


def keep_option() -> str:
    """``keep_outputs`` (Torch-Pruning's ignored_layers meaning) where PruneConfig has it, else ``ignore``."""
    from prunekit import PruneConfig

    return "keep_outputs" if "keep_outputs" in PruneConfig.__dataclass_fields__ else "ignore"


def _run_prunekit(model, inputs, heads, original, base_macs, row: dict[str, Any], repeats: int = 1) -> None:
    import prunekit

    option = keep_option()
    row["pk_keep_option"] = option
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = prunekit.prune_(model, inputs, ratio=0.5, **{option: tuple(heads)})
        except Exception as exc:  # noqa: BLE001 - the benchmark records failures
            row["pk_time_s"], row["pk_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
            row.update(pk_status="error", pk_error=_err(exc), pk_verified=False, pk_silently_wrong=False)
            row["pk_traceback"] = traceback.format_exc()[-1500:]
            return
        row["pk_time_s"], row["pk_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        runs = [(row["pk_time_s"], row["pk_cpu_s"])]
        for _ in range(repeats - 1):  # the same prune on fresh copies of the original: the best run is reported
            again = copy.deepcopy(original)
            t0, c0 = time.perf_counter(), time.process_time()
            prunekit.prune_(again, inputs, ratio=0.5, **{option: tuple(heads)})
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        if len(runs) > 1:
            row["pk_runs_s"], row["pk_cpu_runs_s"] = [w for w, _ in runs], [c for _, c in runs]
            row["pk_time_s"], row["pk_cpu_s"] = min(w for w, _ in runs), min(c for _, c in runs)
        # the same prune without prunekit's own verification (Torch-Pruning verifies nothing): what the
        # engine costs, beside what the returned-model check (zeroed reference + verification forward) adds
        nv = []
        for _ in range(repeats):
            again = copy.deepcopy(original)
            c0 = time.process_time()
            prunekit.prune_(again, inputs, ratio=0.5, verify=False, **{option: tuple(heads)})
            nv.append(time.process_time() - c0)
        row["pk_noverify_cpu_s"] = min(nv)
    plan = result.plan
    row["pk_status"] = "nothing pruned" if plan.is_empty() else "pruned"
    row["pk_groups"] = len(result.groups)
    row["pk_groups_pruned"] = len(plan.groups)
    row["pk_group_kinds"] = sorted({g["kind"] for g in plan.groups if isinstance(g, dict) and "kind" in g})
    row["pk_exact"] = bool(plan.exact)
    row["pk_unsupported"] = [str(u)[:300] for u in result.unsupported]
    row["pk_warnings"] = list(dict.fromkeys([str(w)[:300] for w in result.warnings]
                                            + [str(w.message)[:300] for w in caught]))
    row["pk_reported_macs_ratio"] = result.macs_ratio
    extra = {f.name: str(getattr(result, f.name))[:600] for f in dataclasses.fields(result)
             if f.name not in _KNOWN_RESULT_FIELDS}
    if extra:
        row["pk_result_extra"] = extra  # fields added to PruneResult since this script was written
    _verify_prunekit(model, inputs, original, plan, base_macs, row)


def _verify_prunekit(model, inputs, original, plan, base_macs, row: dict[str, Any]) -> None:
    """Check the returned model ourselves: no meta tensors, finite outputs, equal to the soft-zeroed original
    (exact plans) and, for every plan, equal to the same plan applied hard to a fresh copy."""
    import prunekit

    problems: list[str] = []
    meta = measure.meta_tensors(model)
    if meta:
        problems.append(f"{len(meta)} tensors left on meta ({', '.join(meta[:3])})")
    try:
        out = measure.forward(model, inputs)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"returned model fails to run: {_err(exc)}")
        out = None
    if out is not None and not measure.finite(out):
        problems.append("returned model outputs NaN/inf")
    rel = math.nan
    if out is not None and (plan.exact or plan.is_empty()):
        try:
            ref_model = original if plan.is_empty() else prunekit.apply_plan(copy.deepcopy(original), plan, "soft")
            rel = measure.relative_error(out, measure.forward(ref_model, inputs))
            if not rel <= TOL:
                problems.append(f"differs from the soft-zeroed original: rel. error {rel:.3g}")
        except Exception as exc:  # noqa: BLE001 - cannot judge: not verified, not counted as silently wrong
            row["pk_verify_note"] = f"soft reference failed: {_err(exc)}"
    row["pk_rel_error"] = rel
    if out is not None and not plan.is_empty():  # every plan, approximate too: the returned model is its replay
        try:
            replay = measure.forward(prunekit.apply_plan(copy.deepcopy(original), plan, "hard"), inputs)
            row["pk_replay_error"] = rep = measure.relative_error(out, replay)
            if not rep <= TOL:
                problems.append(f"differs from its own plan replayed on a copy: rel. error {rep:.3g}")
        except Exception as exc:  # noqa: BLE001
            row["pk_replay_note"] = f"replay failed: {_err(exc)}"
    row["pk_problems"] = problems
    row["pk_verified"] = not problems and "pk_verify_note" not in row
    row["pk_silently_wrong"] = bool(problems)
    if out is not None and not any("meta" in p or "fails" in p for p in problems):
        try:
            row["pk_macs_ratio"] = measure.safe_ratio(measure.macs(model, inputs), base_macs)
            row["pk_params_ratio"] = measure.safe_ratio(measure.params(model), measure.params(original))
        except Exception as exc:  # noqa: BLE001
            row["pk_macs_error"] = _err(exc)


class _TPTimeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _TPTimeout


def _tp_attempt(original, inputs, heads, limit_s: int, with_heads: bool):
    """One Torch-Pruning run on a fresh copy: (model, (wall s, CPU s), outputs); raises on failure or timeout."""
    model = copy.deepcopy(original)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune_tp(model, inputs, heads, with_heads=with_heads)
    finally:
        seconds = (time.perf_counter() - t0, time.process_time() - c0)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    try:
        out = measure.forward(model, inputs)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"pruned model fails to run: {_err(exc)}") from exc
    return model, seconds, out


def _run_tp(original, inputs, heads, base_macs, row: dict[str, Any], limit_s: int, repeats: int = 1) -> None:
    """Torch-Pruning under its own time limit (SIGALRM: its group search can run for hours on a tiny Llama).
    Where the attention-aware run (``num_heads``) fails, a second run without ``num_heads`` is recorded."""
    ref = measure.forward(original, inputs)
    tries = [True, False] if attention_layers(original) else [False]
    for with_heads in tries:
        try:
            model, seconds, out = _tp_attempt(original, inputs, heads, limit_s, with_heads)
        except _TPTimeout:
            why = f"timeout > {limit_s}s (in its dependency-group search)"
            row.setdefault("tp_error", why)
            row.setdefault("tp_time_s", float(limit_s))
            row.setdefault("tp_attempts", []).append(f"num_heads={with_heads}: {why}")
            break  # the search without num_heads is the same search: no second try
        except Exception as exc:  # noqa: BLE001
            row.setdefault("tp_error", _err(exc))
            row.setdefault("tp_attempts", []).append(f"num_heads={with_heads}: {_err(exc)[:200]}")
            continue
        if [t.shape for t in out] != [t.shape for t in ref]:
            row.setdefault("tp_error", "output shape changed")
            continue
        if "tp_error" in row:
            row["tp_note"] = f"with num_heads: {row.pop('tp_error')}; this run without num_heads"
        runs = [seconds]
        for _ in range(repeats - 1):  # the same prune on fresh copies: the best run is reported
            runs.append(_tp_attempt(original, inputs, heads, limit_s, with_heads)[1])
        if len(runs) > 1:
            row["tp_runs_s"], row["tp_cpu_runs_s"] = [w for w, _ in runs], [c for _, c in runs]
        row["tp_time_s"], row["tp_cpu_s"] = min(w for w, _ in runs), min(c for _, c in runs)
        row["tp_status"] = "pruned" if measure.params(model) != measure.params(original) else "nothing pruned"
        row["tp_finite"] = measure.finite(out)
        row["tp_macs_ratio"] = measure.safe_ratio(measure.macs(model, inputs), base_macs)
        row["tp_params_ratio"] = measure.safe_ratio(measure.params(model), measure.params(original))
        return
    row["tp_status"] = "error"


def warm_up(tools: tuple[str, ...]) -> None:
    """Each tool prunes a tiny unrelated network once, untimed, so neither tool's timed run pays the
    process's first-call costs (lazy imports, torch's first meta/dispatch registrations) for the other."""
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "prunekit" in tools:
            import prunekit

            prunekit.prune_(copy.deepcopy(tiny), x, ratio=0.5, **{keep_option(): ("5",)})
        if "torch_pruning" in tools:
            try:
                prune_tp(copy.deepcopy(tiny), (x,), ["5"], with_heads=False)
            except Exception:  # noqa: BLE001 - a warm-up only
                pass


def _forward_cpu_s(model, inputs, repeats: int = 2) -> float:
    """Process CPU seconds of one plain eval forward (no_grad), the best of ``repeats``: the unit of a
    prune's floor (prunekit's verification runs the model twice for real)."""
    best = math.inf
    for _ in range(repeats):
        c0 = time.process_time()
        measure.forward(model, inputs)
        best = min(best, time.process_time() - c0)
    return best


def run_model(spec: Spec, tools: tuple[str, ...] = ("prunekit", "torch_pruning"), tp_limit_s: int = 60,
              repeats: int = 1) -> dict[str, Any]:
    """Both tools on one zoo model; with ``repeats`` > 1 each tool's prune is timed that many times (the first
    on the model whose result is checked, the rest on fresh copies) and the best wall and CPU times are kept."""
    torch.set_num_threads(1)
    warm_up(tools)
    row: dict[str, Any] = {"model": spec.name, "family": spec.family}
    try:
        built = spec.build()
    except Exception as exc:  # noqa: BLE001
        row["build_error"] = _err(exc)
        return row
    model, inputs = built.model, built.inputs
    row["heads"] = built.heads
    row["params"] = measure.params(model)
    original = copy.deepcopy(model)
    row["macs"] = base_macs = measure.macs(original, inputs)
    row["forward_cpu_s"] = _forward_cpu_s(original, inputs)
    if "prunekit" in tools:
        _run_prunekit(model, inputs, built.heads, original, base_macs, row, repeats)
    if "torch_pruning" in tools:
        _run_tp(original, inputs, built.heads, base_macs, row, tp_limit_s, repeats)
    return row
