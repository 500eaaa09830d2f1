"""Structured pruning of SmolLM2-135M on the LLM protocol (llm-protocol.md): depth, width by each
criterion, and prunekit's combined recipes, at 10% and 20% of the decoder-block parameters, each with no
recovery and after one identical short recovery; every pruned model is saved and reloaded (plain
transformers where its config expresses it, else prunekit.llm.from_pretrained) and its logits compared.

Parameters counted: the 30 decoder blocks (106.2M of 134.5M; the tied embedding / LM head and the final
norm are not counted and never pruned). Biases added by FLAP's compensation are counted.

    python benchmarks/llm_structured.py --rows depth,flap --budgets 0.1          # a subset
    python benchmarks/llm_structured.py --recover                                # recovery phase

Phase 1 (prune) writes one JSON row per (row, budget) as soon as it is measured and keeps the pruned
model under --work; phase 2 (--recover) reloads each saved model, fine-tunes it on the same text with
the same steps, and adds the recovered perplexity. Results: benchmarks/results/llm_structured.{json,md}.
Settings that deviate from the protocol (fewer evaluation/calibration windows) are recorded in each row.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from prunekit.llm import hf
from prunekit.llm.data import calibration_windows, eval_windows, smollm2
from prunekit.llm.eval import perplexity
from prunekit.llm.recipes import RefitConfig, WidthConfig, all_scores, prune_depth_, prune_width_, refit_mlp_, select_cuts
from prunekit.llm.scores import Calibration, collect_stats, collect_taylor
from prunekit.llm.structured import decoder_params, model_units

RESULTS = Path(__file__).parent / "results"
ROWS = ("depth", "flap", "refit", "depth_refit", "global_refit", "taylor", "wanda_sp", "random", "l2", "flap_global", "depth_flap")


def dense_model(work: Path):
    """The protocol's plain SmolLM2 (cached as safetensors under ``work`` after the first GGUF load)."""
    folder = work / "dense"
    if (folder / "config.json").exists():
        from transformers import AutoModelForCausalLM
        from prunekit.llm.data import smollm2_tokenizer
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), smollm2_tokenizer()
    model, tok = smollm2()
    model.save_pretrained(folder)
    return model, tok


def cached(path: Path, fn):
    if path.exists():
        return torch.load(path, weights_only=False)
    value = fn()
    torch.save(value, path)
    return value


def remap(cal: Calibration, kept_layers: list[int]) -> Calibration:
    """Statistics of the dense model re-indexed for a model that kept ``kept_layers`` (new i <- old)."""
    out = Calibration()
    for new, old in enumerate(kept_layers):
        for k in ("q", "mlp"):
            if (old, k) in cal.stats:
                out.stats[(new, k)] = cal.stats[(old, k)]
        for k in ("q", "kv", "mlp"):
            if (old, k) in cal.taylor:
                out.taylor[(new, k)] = cal.taylor[(old, k)]
    return out


def prune_row(model, row: str, budget: float, cal: Calibration, taylor: Calibration, depth: dict[str, float],
              dense_params: int, example, calib: torch.Tensor):
    """Prune ``model`` in place for ``row``; returns (plans, base_config, details)."""
    target = int(round(budget * dense_params))
    n_layers = len(model_units(model))
    per_layer = dense_params // n_layers
    plans, details = [], {}
    if row == "depth":
        n = int(round(target / per_layer))
        details["removed_layers"] = prune_depth_(model, depth, n)
        return plans, copy.deepcopy(model.config), details
    kept = list(range(n_layers))
    if row in ("refit", "depth_refit", "global_refit"):
        if row == "depth_refit":
            details["removed_layers"] = prune_depth_(model, depth, max(1, int(round(0.5 * target / per_layer))))
        base = copy.deepcopy(model.config)
        units = model_units(model)
        rest = target - (dense_params - decoder_params(model))
        neuron_cost = 3 * model.config.hidden_size
        k = int(round(rest / (len(units) * neuron_cost)))
        counts = {i: k for i in range(len(units))}
        if row == "global_refit":   # per-layer counts from FLAP's global (z-scored) selection on the dense statistics
            sel = select_cuts(model, all_scores(model, "flap", cal, units), WidthConfig(allocation="global"), units, rest)
            counts = {i: len(c.neurons) for i, c in sel.items()}
        res = refit_mlp_(model, calib, RefitConfig(), neurons=counts, example_ids=example)
        plans.append(res.cut.plan)
        details.update(refit=vars(RefitConfig()), neurons_per_layer=[counts[i] for i in sorted(counts)], verify_error=res.cut.error,
                       layers=res.cut.layers[:3] + ["..."])
        return plans, base, details
    if row == "depth_flap":
        n = max(1, int(round(0.5 * target / per_layer)))
        removed = prune_depth_(model, depth, n)
        details["removed_layers"] = removed
        gone = {int(r.rsplit(".", 1)[1]) for r in removed}
        kept = [i for i in range(n_layers) if i not in gone]
        cal = remap(cal, kept)
    base = copy.deepcopy(model.config)
    rest = target - (dense_params - decoder_params(model))
    if row in ("taylor", "wanda_sp", "flap", "random", "l2"):
        cfg = WidthConfig(criterion=row, units="neurons", allocation="uniform", compensate=(row == "flap"))
        stats = taylor if row == "taylor" else cal
    elif row == "flap_global":
        cfg = WidthConfig(criterion="flap", units="neurons", allocation="global", compensate=True)
        stats = cal
    elif row == "depth_flap":
        cfg = WidthConfig(criterion="flap", units="neurons", allocation="uniform", compensate=True)
        stats = cal
    else:
        raise ValueError(row)
    res = prune_width_(model, cfg, stats, budget=rest, example_ids=example)
    plans.append(res.cut.plan)
    details.update(width=cfg.to_dict(), verify_error=res.cut.error, layers=res.cut.layers[:3] + ["..."],
                   compensated=len(res.compensated))
    return plans, base, details


def reload_check(model, folder: Path, plans, base, example) -> dict:
    """Save, reload (plain or prunekit), compare logits on ``example``."""
    if folder.exists():
        shutil.rmtree(folder)
    how = hf.save_pretrained(model, folder, plans=plans, base_config=base)
    again = hf.from_pretrained(folder)
    with torch.no_grad():
        a = model(input_ids=example, use_cache=False).logits
        b = again(input_ids=example, use_cache=False).logits
    return {"saved_as": how, "reload_max_abs_diff": float((a - b).abs().max()), "reload_identical": bool(torch.equal(a, b))}


def recover_(model, text: torch.Tensor, steps: int, lr: float) -> float:
    """The one short recovery every row gets: ``steps`` AdamW steps of causal-LM loss on the rows of
    ``text`` [steps, T] in order (batch 1), constant ``lr``. Returns the last loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    loss = torch.tensor(float("nan"))
    for s in range(steps):
        ids = text[s:s + 1]
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return float(loss)


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def recovery_path(path: Path) -> Path:
    return path.with_name(path.stem + "_recovery.json")


def write(path: Path, rows: list[dict], meta: dict) -> None:
    """Merge ``rows`` into the file (another process may be writing other rows), atomically; the
    markdown table joins the recovery file (phase 2 writes there, so the phases never overwrite each other)."""
    on_disk = load_rows(path)
    mine = {(r["row"], r["budget"]) for r in rows}
    rows = [r for r in on_disk if (r["row"], r["budget"]) not in mine] + rows
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp, path)
    rec = {(r["row"], r["budget"]): r for r in load_rows(recovery_path(path)) if r.get("note") == meta["note"]}
    rows = [{**r, **{k: v for k, v in rec.get((r["row"], r["budget"]), {}).items() if k.startswith(("ppl_rec", "recover"))}}
            for r in rows]
    lines = [f"# Structured pruning, SmolLM2-135M ({meta['note']})", "",
             f"dense perplexity on these windows: {meta.get('dense_ppl', 'n/a')}", "",
             "| row | budget | decoder params kept | ppl (no recovery) | ppl (after recovery) | reload | prune s |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["budget"], r["row"])):
        rec = r.get("ppl_recovered")
        lines.append(f"| {r['row']} | {r['budget']:.0%} | {r['params_kept_frac']:.4f} | {r['ppl']:.2f} | "
                     f"{'' if rec is None else f'{rec:.2f}'} | {r['saved_as']}, "
                     f"{'identical' if r['reload_identical'] else 'max diff %.2g' % r['reload_max_abs_diff']} | "
                     f"{r['prune_s']:.0f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--recover", action="store_true", help="phase 2: recover every saved row")
    ap.add_argument("--until", default="", help="phase 2 waits for new rows until this wall-clock time (HH:MM)")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/prunekit/llm_structured"))
    ap.add_argument("--out", default=str(RESULTS / "llm_structured.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    t0 = time.time()
    model, tok = dense_model(work)
    windows = eval_windows(tok)[: args.eval_windows]
    calib = calibration_windows(tok)
    text = calib[32:32 + args.steps, : args.seq]   # recovery text: the windows after the calibration set
    example = windows[:1, :64]
    note = (f"{args.eval_windows} of 32 evaluation windows, calib[:{args.calib}], recovery {args.steps} AdamW steps "
            f"of 1x{args.seq} tokens (calib[32:]), lr {args.lr}, torch threads {torch.get_num_threads()}")
    meta = {"note": note, "args": vars(args), "counted": "decoder-block parameters (30 blocks, 106.2M); "
            "embeddings/LM head (tied) and final norm not counted"}
    rows = load_rows(out)
    old = json.loads(out.read_text())["meta"] if out.exists() else {}
    if old.get("note") and old["note"] != note:
        print(f"WARNING: {out} holds rows measured with other settings: {old['note']}")
    dense_file = work / f"dense_ppl_{args.eval_windows}.json"
    meta["dense_ppl"] = cached(dense_file, lambda: perplexity(model, windows))
    print(f"dense ppl {meta['dense_ppl']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    if args.recover:   # phase 2, into its own file; loops until --until (HH:MM) picking up rows phase 1 adds
        rec_file = recovery_path(out)
        while True:
            done = {(r["row"], r["budget"]) for r in load_rows(rec_file) if r.get("note") == note}
            order = args.rows.split(",")
            todo = sorted([r for r in load_rows(out) if r["note"] == note and r["row"] in order
                           and (r["row"], r["budget"]) not in done], key=lambda r: (order.index(r["row"]), r["budget"]))
            if not todo:
                if not args.until or time.strftime("%H:%M") >= args.until:
                    return
                time.sleep(60)
                continue
            r = todo[0]
            m = hf.from_pretrained(r["folder"])
            t = time.time()
            last = recover_(m, text, args.steps, args.lr)
            rec = {"row": r["row"], "budget": r["budget"], "note": note, "recovery_last_loss": last,
                   "recover_s": time.time() - t, "ppl_recovered": perplexity(m, windows)}
            have = [x for x in load_rows(rec_file) if (x["row"], x["budget"]) != (r["row"], r["budget"])]
            tmp = rec_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"meta": meta, "rows": have + [rec]}, indent=1))
            os.replace(tmp, rec_file)
            write(out, [], meta)   # refresh the markdown
            print(f"{r['row']} {r['budget']}: recovered ppl {rec['ppl_recovered']:.2f}", flush=True)
    c = calib[: args.calib]
    cal = cached(work / f"stats_{args.calib}.pt", lambda: collect_stats(model, c, progress=False))
    print(f"stats ({time.time() - t0:.0f} s)", flush=True)
    depth = {f"model.layers.{i}": v for i, v in cal.influence.items()}   # block influence, same pass
    dense_params = decoder_params(model)
    for budget in [float(b) for b in args.budgets.split(",")]:
        for row in args.rows.split(","):
            if any(r["row"] == row and r["budget"] == budget and r["note"] == note for r in rows):
                continue
            taylor = Calibration()
            if row == "taylor":
                taylor = cached(work / f"taylor_{args.calib}.pt", lambda: collect_taylor(model, c))
            m = copy.deepcopy(model)
            t = time.time()
            plans, base, details = prune_row(m, row, budget, cal, taylor, depth, dense_params, example, c)
            prune_s = time.time() - t
            folder = work / f"{row}_{budget}"
            rec = reload_check(m, folder, plans, base, example)
            ppl = perplexity(m, windows)
            r = {"row": row, "budget": budget, "params_kept": decoder_params(m), "params_dense": dense_params,
                 "params_kept_frac": decoder_params(m) / dense_params, "ppl": ppl, "prune_s": prune_s,
                 "folder": str(folder), "note": note, **rec, **details}
            rows = [x for x in rows if not (x["row"] == row and x["budget"] == budget)] + [r]
            write(out, [r], meta)
            print(f"{row} {budget}: ppl {ppl:.2f}, kept {r['params_kept_frac']:.4f}, {rec}", flush=True)
            del m


if __name__ == "__main__":
    main()
