"""Accuracy at equal budget over several seeds: the verdict one split cannot give.

``equal_budget_accuracy.py`` runs one split (``--seed``: training, validation and test subsets,
pretraining and recovery order). Its rows differ by about as much between seeds (~0.5 point)
as between recipes, so this script gathers the runs of several seeds and compares, seed by
seed on the same test images, prunekit's declared recipe -- ``pk_<best>_uniform``: one-shot,
one ratio by bisection on the MACs, the criterion chosen on the validation split -- with
Torch-Pruning's magnitude pruner (``tp_l2_uniform``) and with the unpruned network (the
stricter of ``unpruned_trained`` and ``unpruned_recovered``). It reports the paired
differences, their mean and standard error over seeds, and the verdicts on the issue's two
targets: prunekit at least as accurate as Torch-Pruning (mean difference >= 0), and within 1
point of the unpruned network at 2x (mean difference >= -1 point). Where a seed's runs include
``pk_<best>_depth4`` (4 blocks of least influence removed, then width to the budget), it is
compared the same way.

Usage: python benchmarks/equal_budget_seeds.py RUN.json [RUN.json ...]
(the default list is the committed runs). Writes benchmarks/results/equal_budget_seeds.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("equal_budget_accuracy", "equal_budget_depth_confirm_seed1", "equal_budget_seed1_third", "equal_budget_seed2",
        "equal_budget_seed3", "equal_budget_depth_dev", "equal_budget_depth_dev_third", "equal_budget_depth4_seed2",
        "equal_budget_depth4_seed3")


def load(paths: list[Path]) -> dict[int, dict]:
    """Per seed: the unpruned references and, per budget, the TP and prunekit-recipe accuracies."""
    seeds: dict[int, dict] = defaultdict(lambda: {"ref": {}, "budgets": defaultdict(dict), "files": []})
    for p in paths:
        d = json.loads(p.read_text())
        meta = d["meta"]
        s = seeds[meta["seed"]]
        s["files"].append(p.name)
        best = meta["best_criterion"]
        for r in d["rows"]:
            if r["budget"] == 1.0 and r["method"] in ("unpruned_trained", "unpruned_recovered"):
                s["ref"][r["method"]] = r["acc"]
            elif r["method"] == "tp_l2_uniform":
                s["budgets"][r["budget"]]["tp"] = r["acc"]
            elif r["method"] == f"pk_{best}_uniform":
                s["budgets"][r["budget"]]["pk"] = r["acc"]
                s["budgets"][r["budget"]]["criterion"] = best
            elif r["method"] == f"pk_{best}_depth4":
                s["budgets"][r["budget"]]["depth4"] = r["acc"]
    return seeds


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, default=[RESULTS / f"{r}.json" for r in RUNS])
    args = ap.parse_args()
    seeds = load([p for p in args.runs if p.exists()])
    budgets = sorted({b for s in seeds.values() for b in s["budgets"]})
    rows, summary = [], []
    for b in budgets:
        d_tp, d_ref = [], []
        for seed in sorted(seeds):
            s = seeds[seed]
            cell = s["budgets"].get(b, {})
            if "pk" not in cell or "tp" not in cell or not s["ref"]:
                continue
            ref = max(s["ref"].values())
            row = {"seed": seed, "budget": b, "criterion": cell["criterion"], "tp": cell["tp"], "pk": cell["pk"],
                   "ref": ref, "pk_minus_tp": cell["pk"] - cell["tp"], "pk_minus_ref": cell["pk"] - ref,
                   "tp_minus_ref": cell["tp"] - ref}
            if "depth4" in cell:
                row.update(depth4=cell["depth4"], depth4_minus_tp=cell["depth4"] - cell["tp"],
                           depth4_minus_ref=cell["depth4"] - ref)
            rows.append(row)
            d_tp.append(row["pk_minus_tp"])
            d_ref.append(row["pk_minus_ref"])
        if not d_tp:
            continue
        (m_tp, se_tp), (m_ref, se_ref) = mean_se(d_tp), mean_se(d_ref)
        wins = sum(d >= 0 for d in d_tp)
        line = (f"1/{b:g} MACs, {len(d_tp)} seeds: prunekit - Torch-Pruning {100 * m_tp:+.2f} points "
                f"(standard error {100 * se_tp:.2f}; prunekit >= TP on {wins} of {len(d_tp)} seeds) -> "
                f"{'at least as accurate' if m_tp >= 0 else 'LESS accurate'}; prunekit - unpruned "
                f"{100 * m_ref:+.2f} points (standard error {100 * se_ref:.2f}; within 1 point on "
                f"{sum(d >= -0.01 for d in d_ref)} of {len(d_ref)} seeds)")
        if b == 2.0:
            line += f" -> {'within' if m_ref >= -0.01 else 'NOT within'} 1 point on average"
        deep = [r for r in rows if r["budget"] == b and "depth4" in r]
        if deep:
            (m4_tp, se4_tp), (m4_ref, se4_ref) = (mean_se([r["depth4_minus_tp"] for r in deep]),
                                                  mean_se([r["depth4_minus_ref"] for r in deep]))
            line += (f". Depth then width (`pk_<best>_depth4`, {len(deep)} seeds): - Torch-Pruning {100 * m4_tp:+.2f} "
                     f"(standard error {100 * se4_tp:.2f}), - unpruned {100 * m4_ref:+.2f} (standard error "
                     f"{100 * se4_ref:.2f}; within 1 point on {sum(r['depth4_minus_ref'] >= -0.01 for r in deep)} "
                     f"of {len(deep)} seeds)")
        summary.append({"budget": b, "seeds": len(d_tp), "mean_pk_minus_tp": m_tp, "se_pk_minus_tp": se_tp,
                        "mean_pk_minus_ref": m_ref, "se_pk_minus_ref": se_ref, "text": line})
        print(line)
    out = {"runs": {str(k): v["files"] for k, v in sorted(seeds.items())}, "rows": rows, "summary": summary}
    (RESULTS / "equal_budget_seeds.json").write_text(json.dumps(out, indent=1))
    md = ["# Accuracy at equal budget over seeds: prunekit's recipe vs Torch-Pruning and the unpruned network", "",
          "Each seed is one full split of `equal_budget_accuracy.py --epochs 4` (other training, validation and "
          "test subsets, other pretraining and recovery order). prunekit's recipe, declared before the seeds 2-3 "
          "runs: `pk_<best>_uniform` (one-shot, uniform ratio by bisection on the MACs, criterion chosen on the "
          "validation split). Reference: the stricter of the unpruned network as trained and given the same "
          "recovery. Differences are paired (same test images within a seed), in points.", "",
          "| seed | budget | criterion | Torch-Pruning | prunekit | unpruned | prunekit - TP | prunekit - unpruned | "
          "depth4 + width | depth4 - unpruned |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d4 = (f"{r['depth4']:.4f} | {100 * r['depth4_minus_ref']:+.2f}" if "depth4" in r else "- | -")
        md.append(f"| {r['seed']} | 1/{r['budget']:g} | {r['criterion']} | {r['tp']:.4f} | {r['pk']:.4f} | "
                  f"{r['ref']:.4f} | {100 * r['pk_minus_tp']:+.2f} | {100 * r['pk_minus_ref']:+.2f} | {d4} |")
    md += ["", "## Summary", ""] + [f"- {s['text']}" for s in summary]
    md += ["", "Runs: " + "; ".join(f"seed {k}: {', '.join(v)}" for k, v in out["runs"].items())]
    (RESULTS / "equal_budget_seeds.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
