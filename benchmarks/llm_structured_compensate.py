"""Calibration-only comparison of depth pruning with least-squares compensation on SmolLM2-135M
(prunekit.llm.compensate): which variant the benchmark rows of llm_structured.py use is chosen here,
on held-out calibration windows (default calib[120:124]), never on the evaluation text.

Each variant: the blocks of the depth row (lowest block influence on calib[:8], the cached statistics
of llm_structured.py) or a variant's own choice, the refit fitted on calib[:fit], perplexity on the
held-out calibration windows.

    python benchmarks/llm_structured_compensate.py --variants bare,down:1e-2:seq:32 --budgets 0.1,0.2

Variant syntax: ``dense`` (nothing removed), ``bare`` (plain removal) or ``MODE:RIDGE:seq|oneshot:FIT`` (MODE ``down`` or
``transform``; FIT calibration windows calib[:FIT]; optional ``:norm`` token weighting and ``:fN`` to refit the N kept blocks after each run too). Results: benchmarks/results/llm_structured_compensate.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from prunekit.llm.compensate import CompensateConfig
from prunekit.llm.data import calibration_windows
from prunekit.llm.eval import perplexity
from prunekit.llm.recipes import prune_depth_compensated_, prune_depth_
from prunekit.llm.structured import model_units

sys_path = Path(__file__).parent
import sys
sys.path.insert(0, str(sys_path))
from llm_structured import dense_model  # noqa: E402

OUT = Path(__file__).parent / "results" / "llm_structured_compensate.json"


def run_variant(model, variant: str, budget: float, influence: dict[int, float], calib: torch.Tensor,
                held: torch.Tensor) -> dict:
    m = copy.deepcopy(model)
    n_layers = len(model_units(m))
    n = int(round(budget * n_layers))
    t = time.time()
    rec = {"variant": variant, "budget": budget, "blocks": n}
    if variant == "dense":
        pass
    elif variant == "bare":
        prune_depth_(m, {f"model.layers.{i}": v for i, v in influence.items()}, n)
    else:
        mode, ridge, how, fit, *rest = variant.split(":")
        follow = [int(x[1:]) for x in rest if x.startswith("f")]
        cfg = CompensateConfig(mode=mode, ridge=float(ridge), sequential=(how == "seq"),
                               token_weight="norm" if "norm" in rest else "none", follow=follow[0] if follow else 0)
        res = prune_depth_compensated_(m, calib[: int(fit)], n, influence, cfg)
        rec.update(removed=res.removed_layers, errors={str(k): v for k, v in res.errors.items()})
    rec["prune_s"] = time.time() - t
    rec["ppl_held"] = perplexity(m, held)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="bare,down:1e-2:seq:32")
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument("--held", default="120:124")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/prunekit/llm_structured"))
    args = ap.parse_args()
    work = Path(args.work)
    model, tok = dense_model(work)
    calib = calibration_windows(tok)
    a, b = (int(x) for x in args.held.split(":"))
    held = calib[a:b]
    cal = torch.load(work / "stats_delta_8.pt", weights_only=False)   # llm_structured.py's statistics on calib[:8]
    rows = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    for v in args.variants.split(","):
        for budget in [float(x) for x in args.budgets.split(",")]:
            r = run_variant(model, v, budget, cal.influence, calib, held)
            r["held"] = f"calib[{a}:{b}]"
            r["threads"] = torch.get_num_threads()
            rows = [x for x in rows if (x["variant"], x["budget"], x["held"]) != (v, budget, r["held"])] + [r]
            OUT.write_text(json.dumps({"rows": rows}, indent=1))
            print(f"{v} {budget}: held ppl {r['ppl_held']:.2f} ({r['prune_s']:.0f} s) {r.get('errors', '')}", flush=True)


if __name__ == "__main__":
    main()
