"""A broad zoo beyond torchvision: prunekit vs Torch-Pruning on timm, Hugging Face, RNN and hand-written models.

Every model runs in its own subprocess (fork, one torch thread, a timeout), so a crash or a hang costs one row.
In that process: the model is built (random init, seed 0, eval mode) and copied; ``prunekit.prune_(model, x,
ratio=0.5)`` keeps the classifier/head's outputs (``keep_outputs=`` where PruneConfig has it, else ``ignore=``,
recorded per row); then Torch-Pruning 1.6.1 ``MagnitudePruner`` (L2, ratio 0.5, local, round_to None,
``ignored_layers=[head]``, ``num_heads`` for attention) prunes a fresh copy of the same model.

prunekit's returned model is checked here, not by prunekit: no tensor left on ``meta``, every output finite
and, for an exact plan, equal to ``prunekit.apply_plan(copy.deepcopy(original), plan, "soft")`` within 1e-4
relative (max abs difference / max abs reference), and for every plan (approximate ones too) equal to the
same plan applied hard to a fresh copy. A model prunekit returned without raising that fails any of these
is *silently wrong*. MACs are torch ``FlopCounterMode`` FLOPs / 2 on real forwards of the
original and the pruned models (plus analytic MACs for fused LSTM/GRU/RNN kernels, which it does not count).
Prune time is the wall time (and the process CPU time) of the prune call (prunekit's includes its own
verification and MAC count; Torch-Pruning's is pruner construction + ``step()``; the report spells out each span).

    python benchmarks/zoo_vs_torch_pruning.py [--family timm|hf|rnn|custom] [--only a,b] [--timeout 300]
                                              [--out zoo_vs_torch_pruning] [--repeats 3]

Writes benchmarks/results/<out>.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import custom_zoo, hf_zoo, rnn_zoo, timm_zoo  # noqa: E402
from zoo.spec import Spec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES: dict[str, list[Spec]] = {"timm": timm_zoo.SPECS, "hf": hf_zoo.SPECS, "rnn": rnn_zoo.SPECS,
                                   "custom": custom_zoo.SPECS}


def _child(spec: Spec, tools: tuple[str, ...], tp_limit_s: int, queue, repeats: int = 1) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    from zoo.worker import run_model

    try:
        row = run_model(spec, tools, tp_limit_s, repeats)
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        row = {"model": spec.name, "family": spec.family, "crash": f"{type(exc).__name__}: {str(exc)[:300]}"}
    queue.put(json.dumps(row, default=str))


def run_one(spec: Spec, timeout: float, tools: tuple[str, ...], tp_limit_s: int, repeats: int = 1) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(spec, tools, tp_limit_s, q, repeats))
    t0 = time.perf_counter()
    p.start()
    try:
        row = json.loads(q.get(timeout=timeout))  # read before join: a large row blocks the child's exit
    except Exception:  # noqa: BLE001 - timeout or crash
        row = None
    p.join(5)
    if p.is_alive():
        p.kill()
        p.join()
    if row is None:
        why = f"timeout > {timeout:.0f}s" if time.perf_counter() - t0 >= timeout else f"crashed (exit {p.exitcode})"
        row = {"model": spec.name, "family": spec.family, "crash": why}
    row["wall_s"] = time.perf_counter() - t0
    return row


# -- report ----------------------------------------------------------------------------------------------------

def _pk_cell(r: dict) -> str:
    if "crash" in r or "build_error" in r:
        return f"**{r.get('crash') or 'build: ' + r['build_error']}**"
    s = r.get("pk_status", "-")
    if s == "error":
        return f"error: {r['pk_error'][:140]}"
    if r.get("pk_silently_wrong"):
        return f"**SILENTLY WRONG** ({'; '.join(r['pk_problems'])[:160]})"
    if s == "nothing pruned":
        return f"nothing pruned ({_reason(r)[:160]})"
    tag = "verified" if r.get("pk_verified") else f"unverified ({r.get('pk_verify_note', '')[:100]})"
    return f"pruned, {tag}{'' if r.get('pk_exact', True) else ', approximate'}"


def _reason(r: dict) -> str:
    parts = [f"{r.get('pk_groups', 0)} groups"]
    if r.get("pk_unsupported"):
        parts.append(f"{len(r['pk_unsupported'])} unsupported: {r['pk_unsupported'][0]}")
    if r.get("pk_warnings"):
        parts.append(r["pk_warnings"][0])
    if r.get("pk_result_extra"):
        parts.append(json.dumps(r["pk_result_extra"])[:200])
    if len(parts) == 1:
        parts.append("no reason given")
    return "; ".join(parts)


def _tp_cell(r: dict) -> str:
    s = r.get("tp_status", "-")
    if s == "error":
        return f"error: {r['tp_error'][:100]}"
    if s == "pruned" and not r.get("tp_finite", True):
        return "pruned, NOT finite"
    return s


def _f(r: dict, k: str, spec: str = ".3f") -> str:
    v = r.get(k)
    return "-" if v is None or v != v else format(v, spec)  # None or NaN (no soft reference: approximate plan)


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    ok = [r for r in rows if r.get("pk_status") == "pruned" and r.get("pk_verified")]
    wrong = [r["model"] for r in rows if r.get("pk_silently_wrong")]
    both = [r for r in rows if r.get("pk_status") == "pruned" and r.get("pk_verified")
            and r.get("tp_status") == "pruned" and r.get("tp_finite") and "pk_macs_ratio" in r
            and "tp_macs_ratio" in r]
    timed = [r for r in rows if "pk_time_s" in r and r.get("tp_status") in ("pruned", "nothing pruned")
             and r.get("pk_status") in ("pruned", "nothing pruned")]
    s = {"models": n, "pruned_verified": len(ok), "pruned_verified_pct": 100.0 * len(ok) / max(n, 1),
         "silently_wrong": wrong, "both_pruned": len(both),
         "keep_options": sorted({r.get("pk_keep_option", "-") for r in rows if "pk_keep_option" in r}),
         "pk_errors": [r["model"] for r in rows if r.get("pk_status") == "error" or "crash" in r],
         "pk_nothing": [r["model"] for r in rows if r.get("pk_status") == "nothing pruned"],
         "approximate": [r["model"] for r in ok if not r.get("pk_exact", True)]}
    pk_ok = {r["model"] for r in ok}
    tp_ok = {r["model"] for r in rows if r.get("tp_status") == "pruned" and r.get("tp_finite")}
    s["only_pk"], s["only_tp"] = sorted(pk_ok - tp_ok), sorted(tp_ok - pk_ok)
    if both:
        s["pk_leq_tp"] = sum(r["pk_macs_ratio"] <= r["tp_macs_ratio"] + 1e-9 for r in both)
        s["median_macs_pk"] = statistics.median(r["pk_macs_ratio"] for r in both)
        s["median_macs_tp"] = statistics.median(r["tp_macs_ratio"] for r in both)
    if timed:
        s["timed"] = len(timed)
        s["median_time_pk"] = statistics.median(r["pk_time_s"] for r in timed)
        s["median_time_tp"] = statistics.median(r["tp_time_s"] for r in timed)
        s["median_time_ratio"] = statistics.median(r["pk_time_s"] / max(r["tp_time_s"], 1e-9) for r in timed)
        cpu = [r for r in timed if "pk_cpu_s" in r and "tp_cpu_s" in r]
        if cpu:  # process CPU time: what the machine's other load changes least
            s["cpu_timed"] = len(cpu)
            s["median_cpu_pk"] = statistics.median(r["pk_cpu_s"] for r in cpu)
            s["median_cpu_tp"] = statistics.median(r["tp_cpu_s"] for r in cpu)
            s["median_cpu_ratio"] = statistics.median(r["pk_cpu_s"] / max(r["tp_cpu_s"], 1e-9) for r in cpu)
            nv = [r for r in cpu if "pk_noverify_cpu_s" in r]
            if nv:  # prunekit with verify=False: the engine alone, as Torch-Pruning runs (it verifies nothing)
                s["nv_timed"] = len(nv)
                s["median_cpu_pk_noverify"] = statistics.median(r["pk_noverify_cpu_s"] for r in nv)
                s["median_cpu_tp_nv"] = statistics.median(r["tp_cpu_s"] for r in nv)
                s["median_cpu_ratio_noverify"] = statistics.median(
                    r["pk_noverify_cpu_s"] / max(r["tp_cpu_s"], 1e-9) for r in nv)
            fw = [r for r in cpu if "forward_cpu_s" in r]
            if fw:  # the floor with verification on: prunekit runs the model twice for real (reference, check)
                s["median_forward_cpu"] = statistics.median(r["forward_cpu_s"] for r in fw)
                s["median_two_forwards_over_tp"] = statistics.median(
                    2 * r["forward_cpu_s"] / max(r["tp_cpu_s"], 1e-9) for r in fw)
                s["median_pk_over_forward"] = statistics.median(
                    r["pk_cpu_s"] / max(r["forward_cpu_s"], 1e-9) for r in fw)
                s["median_tp_over_forward"] = statistics.median(
                    r["tp_cpu_s"] / max(r["forward_cpu_s"], 1e-9) for r in fw)
    return s


def _failures(rows: list[dict]) -> list[str]:
    """prunekit's problems, one line per model, under the kind of problem: what the engine fixes next."""
    kinds = {"silently wrong": [], "error or crash": [], "nothing pruned": [], "pruned, not verifiable": []}
    for r in rows:
        if r.get("pk_silently_wrong"):
            kinds["silently wrong"].append(f"{r['model']}: {'; '.join(r['pk_problems'])}")
        elif "crash" in r or "build_error" in r or r.get("pk_status") == "error":
            kinds["error or crash"].append(f"{r['model']}: {r.get('crash') or r.get('build_error') or r['pk_error']}")
        elif r.get("pk_status") == "nothing pruned":
            kinds["nothing pruned"].append(f"{r['model']}: {_reason(r)}")
        elif r.get("pk_status") == "pruned" and not r.get("pk_verified"):
            kinds["pruned, not verifiable"].append(f"{r['model']}: {r.get('pk_verify_note', '')}")
    out = ["", "## prunekit problems by kind", ""]
    for kind, items in kinds.items():
        out.append(f"- **{kind}** ({len(items)})" + ("" if items else ": none"))
        out += [f"  - {i[:300]}".replace("|", "/") for i in items]
    kept = [r for r in rows if r.get("pk_unsupported")]
    out.append(f"- **pruned with dims kept by unsupported ops** ({len(kept)})" + ("" if kept else ": none"))
    out += [f"  - {r['model']}: {'; '.join(r['pk_unsupported'])[:300]}".replace("|", "/") for r in kept]
    return out


def engine_commit() -> str:
    """The commit prunekit was imported from, with '+dirty' when src/ has uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - not a checkout
        return "unknown"
    return head + ("+dirty" if dirty else "")


def write(rows: list[dict], args, out: str, commit: str = "unknown") -> str:
    import torch

    s = summarize(rows)
    s["prunekit_commit"] = commit
    lines = ["# prunekit vs Torch-Pruning on a broad zoo (timm, Hugging Face, RNNs, hand-written patterns)", "",
             f"Channel ratio 0.5, L2 magnitude, head outputs kept, random init (seed 0), batch 1-2, small inputs. "
             f"{platform.machine()}, torch {torch.__version__}, 1 thread per model process, timeout "
             f"{args.timeout:.0f}s (Torch-Pruning {getattr(args, 'tp_timeout', 30)}s). prunekit at commit {commit}. "
             f"Each tool's prune timed {getattr(args, 'repeats', 1)}x per model (fresh copies; the best wall and CPU "
             "times are reported). "
             f"prunekit's head option: {', '.join(s['keep_options']) or '-'}"
             f"{' (ignore= also keeps the head inputs: not the same kept outputs as Torch-Pruning)' if 'ignore' in s['keep_options'] else ''}.",
             "",
             "Caveat on Torch-Pruning's error count: with torch 2.14.1, Torch-Pruning 1.6.1 also fails on a 3-layer "
             "net whose 16 channels are split by `torch.chunk` into two convs and concatenated (checked by hand: the "
             "pruned model does not run), so part of its errors here (CSP, DPN, Res2Net, ...) may be version "
             "incompatibility rather than design. It runs with `num_heads` for attention and gets a second try "
             "without it where that fails (`tp_attempts` in the JSON).",
             "",
             "## Summary", "",
             f"- models run: **{s['models']}**",
             f"- prunekit pruned and verified (finite; equal to the soft-zeroed original within 1e-4 for exact "
             f"plans; checked by this script): **{s['pruned_verified']} / {s['models']} "
             f"({s['pruned_verified_pct']:.1f}%)**; {len(s['approximate'])} of them approximate plans (normalization "
             f"over a pruned dim: finite check only)",
             f"- silently wrong (returned without error, but not finite / differs from the soft reference / "
             f"differs from its plan replayed on a copy / tensors on meta / fails to run): "
             f"**{len(s['silently_wrong'])}**"
             + (f": {', '.join(s['silently_wrong'])}" if s["silently_wrong"] else ""),
             f"- prunekit errors or crashes: {len(s['pk_errors'])}"
             + (f" ({', '.join(s['pk_errors'])})" if s["pk_errors"] else ""),
             f"- prunekit pruned nothing: {len(s['pk_nothing'])}"
             + (f" ({', '.join(s['pk_nothing'])})" if s["pk_nothing"] else "")]
    if "median_macs_pk" in s:
        lines.append(f"- median MACs ratio where both pruned (prunekit verified, TP finite), {s['both_pruned']} "
                     f"models: prunekit **{s['median_macs_pk']:.3f}** vs Torch-Pruning **{s['median_macs_tp']:.3f}**; prunekit "
                     f"removes at least as much on {s['pk_leq_tp']} of them")
    lines.append(f"- pruned (and verified) by prunekit only: {len(s['only_pk'])}; pruned (finite) by Torch-Pruning "
                 f"only: {len(s['only_tp'])}" + (f" ({', '.join(s['only_tp'])})" if s["only_tp"] else ""))
    if "median_time_pk" in s:
        lines.append(f"- median prune time over the {s['timed']} models both ran without error: prunekit "
                     f"{s['median_time_pk']:.2f}s vs Torch-Pruning {s['median_time_tp']:.2f}s (ratio of medians "
                     f"{s['median_time_pk'] / max(s['median_time_tp'], 1e-9):.2f}; median per-model ratio "
                     f"**{s['median_time_ratio']:.2f}**)")
    if "median_cpu_pk" in s:
        lines.append(f"- the same, in process CPU time ({s['cpu_timed']} models): prunekit {s['median_cpu_pk']:.2f}s vs "
                     f"Torch-Pruning {s['median_cpu_tp']:.2f}s (ratio of medians "
                     f"{s['median_cpu_pk'] / max(s['median_cpu_tp'], 1e-9):.2f}; median per-model ratio "
                     f"**{s['median_cpu_ratio']:.2f}**)")
    if "median_cpu_pk_noverify" in s:
        lines.append(f"- prunekit with `verify=False` (no zeroed reference, no verification forward; Torch-Pruning "
                     f"verifies nothing), process CPU ({s['nv_timed']} models): {s['median_cpu_pk_noverify']:.2f}s vs "
                     f"{s['median_cpu_tp_nv']:.2f}s (ratio of medians "
                     f"{s['median_cpu_pk_noverify'] / max(s['median_cpu_tp_nv'], 1e-9):.2f}; median per-model ratio "
                     f"**{s['median_cpu_ratio_noverify']:.2f}**)")
    if "median_forward_cpu" in s:
        lines.append(f"- one plain forward of the original model (no_grad, CPU time, median {s['median_forward_cpu']:.3f}s): "
                     f"prunekit's prune takes a median {s['median_pk_over_forward']:.1f} forwards, Torch-Pruning's "
                     f"{s['median_tp_over_forward']:.1f}; two real forwards alone (prunekit's zeroed reference and its "
                     f"verification, before any tracing or planning) are a median {s['median_two_forwards_over_tp']:.2f}x "
                     "of Torch-Pruning's whole prune")
    lines += ["", "What each timed span holds (same process, 1 thread, same input tensors, both tools warmed up on a tiny "
              "unrelated network first; the original model ran one real forward, its MAC count, before either): "
              "**prunekit** -- the whole `prune_` call: the trace (one forward on meta tensors, or a real one where the "
              "model needs values; it also counts the MACs before), grouping, L2 scores and selection, the plan, the "
              "zeroed-reference forward (real), the hard apply and the verification forward of the returned model "
              "(real; it also counts the MACs after). **Torch-Pruning** -- `MagnitudePruner(...)` (its dependency graph: "
              "one forward with autograd and the graph walk) + `step()` + the head-attribute rewrite; no verification "
              "and no MAC count. Neither span holds the deep copy, the script's own checks or MAC counts. prunekit runs "
              "first; where Torch-Pruning's attention-aware run fails, only its successful second run is timed."]
    fams = list(dict.fromkeys(r["family"] for r in rows))
    per = [f"{f} {sum(1 for r in rows if r['family'] == f and r.get('pk_status') == 'pruned' and r.get('pk_verified'))}"
           f"/{sum(1 for r in rows if r['family'] == f)}" for f in fams]
    tp_per = [f"{f} {sum(1 for r in rows if r['family'] == f and r.get('tp_status') == 'pruned' and r.get('tp_finite'))}"
              f"/{sum(1 for r in rows if r['family'] == f)}" for f in fams]
    lines.append(f"- per family, prunekit pruned and verified: {', '.join(per)}; Torch-Pruning pruned (finite, output "
                 f"shape kept): {', '.join(tp_per)}")
    lines += _failures(rows)
    lines += ["", "## Per model", "",
              "| model | family | MACs | prunekit | pk MACs | pk s | pk rel. err | kept (unsupported ops) | "
              "Torch-Pruning | TP MACs | TP s | pk CPU s | pk CPU s, verify=False | TP CPU s | forward CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unsup = "; ".join(r.get("pk_unsupported", []))[:160].replace("|", "/") or "-"
        cells = [r["model"], r["family"], f"{r.get('macs', 0) / 1e6:.1f}M", _pk_cell(r).replace("|", "/"),
                 _f(r, "pk_macs_ratio"), _f(r, "pk_time_s", ".2f"), _f(r, "pk_rel_error", ".1e"), unsup,
                 _tp_cell(r).replace("|", "/"), _f(r, "tp_macs_ratio"), _f(r, "tp_time_s", ".2f"),
                 _f(r, "pk_cpu_s", ".3f"), _f(r, "pk_noverify_cpu_s", ".3f"), _f(r, "tp_cpu_s", ".3f"),
                 _f(r, "forward_cpu_s", ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{out}.md").write_text(text)
    (RESULTS / f"{out}.json").write_text(json.dumps({"summary": s, "rows": rows}, indent=1, default=str))
    return text


def main(argv=None) -> int:
    import torch  # noqa: F401  (imported once; every model forks from here, before any torch op runs)
    import torch_pruning  # noqa: F401

    import prunekit  # noqa: F401

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), action="append", default=None)
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--tp-timeout", type=int, default=30, help="Torch-Pruning's own limit inside a model's process")
    ap.add_argument("--tools", default="prunekit,torch_pruning")
    ap.add_argument("--out", default="zoo_vs_torch_pruning")
    ap.add_argument("--repeats", type=int, default=1, help="time each tool's prune this many times (fresh copies); "
                                                          "the best wall and CPU times are reported")
    args = ap.parse_args(argv)
    specs = [s for f in (args.family or list(FAMILIES)) for s in FAMILIES[f]]
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for f in FAMILIES.values() for s in f if s.name in wanted]
        missing = wanted - {s.name for s in specs}
        if missing:
            ap.error(f"unknown models {sorted(missing)}")
    tools = tuple(args.tools.split(","))
    commit = engine_commit()
    rows = []
    for spec in specs:
        row = run_one(spec, args.timeout, tools, args.tp_timeout, args.repeats)
        rows.append(row)
        brief = {k: row.get(k) for k in ("model", "pk_status", "pk_verified", "pk_silently_wrong", "pk_macs_ratio",
                                         "pk_time_s", "tp_status", "tp_macs_ratio", "tp_time_s", "crash")}
        brief["err"] = (row.get("pk_error") or "; ".join(row.get("pk_problems", [])) or "")[:200]
        print(json.dumps(brief, default=str), flush=True)
        write(rows, args, args.out, commit)  # partial results survive an interrupted run
    print(write(rows, args, args.out, commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
