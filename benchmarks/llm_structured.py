"""Structured pruning of SmolLM2-135M on the LLM protocol (llm-protocol.md): depth, width by each
criterion, and prunekit's combined recipe, at 10% and 20% of the decoder-block parameters, each with
no recovery and after one identical short recovery (the same distillation from the unpruned model,
same steps, same text, for every row); every pruned and every recovered model is saved and reloaded
(plain transformers where its config expresses it, else prunekit.llm.from_pretrained) and its logits
compared.

Parameters counted: the 30 decoder blocks (106.2M of 134.5M; the tied embedding / LM head and the final
norm are not counted and never pruned). Biases added by compensation are counted.

    python benchmarks/llm_structured.py --rows depth,flap,combined --budgets 0.1

Rows (one process runs them one after another; each row is written as soon as it is measured):
  depth       blocks of lowest block influence (ShortGPT), the whole budget
  taylor / wanda_sp / flap / random / l2
              MLP neurons, the same count in every layer (flap with FLAP's bias compensation)
  combined    prunekit's combined recipe (llm.recipes.prune_combined_): the number of blocks chosen on
              held-out calibration windows (choose_blocks), their mean updates kept as biases, FLAP
              neurons with compensation for the rest
  combined:N[:nobias][:loss]  the same with N blocks fixed (nobias: without the blocks' mean updates;
              loss: blocks ordered by their removal perplexity on calib[8:10] (removal_perplexity)
              instead of block influence)
  depth_ls    the depth row's blocks (block influence) with least-squares compensation (llm.compensate,
              COMPENSATE below): the kept block before each removed run gets its MLP down_proj refit on
              calib[:COMPENSATE_FIT] to reproduce the dense hidden state after the run; the variant was
              chosen on held-out calibration windows (llm_structured_compensate.py), never the evaluation text
  best        the most depth-heavy combined split (see BEST): the split was picked after the first rows
              showed that recovery favours depth; block order and mean bias were decided on calibration
              windows only
Results: benchmarks/results/llm_structured.{json,md}. Settings that deviate from the protocol
(fewer evaluation/calibration windows) are in the header and in each row.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from pathlib import Path

import torch

from prunekit.llm import hf
from prunekit.llm.compensate import CompensateConfig
from prunekit.llm.data import calibration_windows, eval_windows, smollm2
from prunekit.llm.eval import perplexity
from prunekit.llm.recipes import (CombinedConfig, WidthConfig, choose_blocks, prune_combined_, prune_depth_,
                                  prune_depth_compensated_, prune_width_, removal_perplexity)
from prunekit.llm.recover import RecoverConfig, recover_
from prunekit.llm.scores import Calibration, collect_stats, collect_taylor
from prunekit.llm.structured import decoder_params, model_units

RESULTS = Path(__file__).parent / "results"
WORK = Path(os.path.expanduser("~/.cache/prunekit/llm_structured"))
CALIB: torch.Tensor = torch.empty(0, dtype=torch.long)   # set by main
WIDTH = ("taylor", "wanda_sp", "flap", "random", "l2")
COMPENSATE = CompensateConfig(mode="down", ridge=1e-1, sequential=True)   # chosen in llm_structured_compensate.py
COMPENSATE_FIT = 32   # refit on calib[:32] (16k tokens; calib[:8] overfits the 1536 x 576 down_proj)
BEST = "combined:{n}:nobias"   # blocks = the depth-only count minus one, by block influence, no mean bias; FLAP for the rest


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


def prune_row(model, row: str, budget: float, cal: Calibration, taylor: Calibration, dense_params: int, example,
              select: torch.Tensor, choices: dict):
    """Prune ``model`` in place for ``row``; returns (plans, base_config, details)."""
    target = int(round(budget * dense_params))
    n_layers = len(model_units(model))
    if row == "depth":
        n = int(round(budget * n_layers))
        depth = {f"model.layers.{i}": v for i, v in cal.influence.items()}
        return [], copy.deepcopy(model.config), {"removed_layers": prune_depth_(model, depth, n)}
    if row == "depth_ls":
        n = int(round(budget * n_layers))
        res = prune_depth_compensated_(model, CALIB[:COMPENSATE_FIT], n, cal.influence, COMPENSATE)
        return [], copy.deepcopy(model.config), {"removed_layers": res.removed_layers, "compensate": COMPENSATE.to_dict(),
                                                 "compensate_fit": f"calib[:{COMPENSATE_FIT}]",
                                                 "refit": {str(k): v for k, v in res.refit.items()},
                                                 "calib_errors": {str(k): v for k, v in res.errors.items()}}
    if row in WIDTH:
        cfg = WidthConfig(criterion=row, units="neurons", allocation="uniform", compensate=(row == "flap"))
        base = copy.deepcopy(model.config)
        res = prune_width_(model, cfg, taylor if row == "taylor" else cal, budget=target, example_ids=example)
        return [res.cut.plan], base, {"width": cfg.to_dict(), "verify_error": res.cut.error, "compensated": len(res.compensated)}
    if row == "best":
        row = BEST.format(n=int(round(budget * n_layers)) - 1)
    if row.startswith("combined"):
        parts = row.split(":")
        cfg = CombinedConfig(ratio=budget, depth_bias="nobias" not in parts)
        details = {}
        if len(parts) > 1:
            n = int(parts[1])
        else:   # chosen on held-out calibration windows, cached per budget
            key = f"{budget}:{cfg.depth_bias}"
            if key not in choices:
                t = time.time()
                n, trials = choose_blocks(model, cfg, cal, select)
                choices[key] = {"blocks": n, "trials": trials, "choose_s": time.time() - t}
            n = choices[key]["blocks"]
            details["choose_blocks"] = choices[key]
        cfg = CombinedConfig(ratio=budget, blocks=n, depth_bias=cfg.depth_bias)
        scores = None
        if "loss" in parts:
            scores = cached(WORK / "removal_ppl_8_10.pt", lambda: removal_perplexity(model, CALIB[8:10]))
            details["block_order"] = "removal perplexity on calib[8:10]"
        res = prune_combined_(model, cfg, cal, example_ids=example, block_scores=scores)
        details.update(recipe=row, combined=cfg.to_dict(), removed_layers=res.removed_layers, depth_bias=res.depth_bias)
        plans = [res.width.cut.plan] if res.width is not None else []
        if res.width is not None:
            details.update(verify_error=res.width.cut.error, compensated=len(res.width.compensated))
        return plans, res.base_config, details
    raise ValueError(f"unknown row {row!r}")


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


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.exists() else []


def write(path: Path, rows: list[dict], meta: dict) -> None:
    """Merge ``rows`` into the file atomically and rewrite the markdown table (rows of other settings are dropped)."""
    mine = {(r["row"], r["budget"]) for r in rows}
    rows = [r for r in load_rows(path) if (r["row"], r["budget"]) not in mine and r["note"] == meta["note"]] + rows
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    os.replace(tmp, path)
    header = path.with_suffix(".header.md")   # the target's status, written by hand from the rows below
    lines = [f"# Structured pruning, SmolLM2-135M", "", f"Settings: {meta['note']}.", ""]
    if header.exists():
        lines += [header.read_text().rstrip(), ""]
    lines += [
             f"Dense perplexity on these windows: {meta['dense_ppl']:.2f}.", "",
             "| row | budget | decoder params kept | ppl (no recovery) | ppl (after recovery) | reload pruned | reload recovered | prune s | recover s |",
             "|---|---|---|---|---|---|---|---|---|"]
    ident = lambda r, k: f"{r[k + 'saved_as']}, " + ("identical" if r[k + "reload_identical"] else "max diff %.2g" % r[k + "reload_max_abs_diff"])
    for r in sorted(rows, key=lambda r: (r["budget"], r["row"])):
        if r["ppl_recovered"] is None:   # --no-recover rows (e.g. the random baseline)
            lines.append(f"| {r['row']} | {r['budget']:.0%} | {r['params_kept_frac']:.4f} | {r['ppl']:.2f} | not run | "
                         f"{ident(r, '')} | | {r['prune_s']:.0f} | |")
            continue
        lines.append(f"| {r['row']} | {r['budget']:.0%} | {r['params_kept_frac']:.4f} | {r['ppl']:.2f} | {r['ppl_recovered']:.2f} | "
                     f"{ident(r, '')} | {ident(r, 'rec_')} | {r['prune_s']:.0f} | {r['recover_s']:.0f} |")
    notes = path.with_suffix(".notes.md")
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="depth,combined,flap,wanda_sp,taylor")
    ap.add_argument("--budgets", default="0.1,0.2")
    ap.add_argument("--eval-every", type=int, default=4, help="evaluation windows [::k] of the protocol's 32")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--select", default="120:123", help="calibration windows (a:b) that choose_blocks ranks on")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-recover", action="store_true", help="prune, reload and evaluate only (ppl_recovered null)")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/prunekit/llm_structured"))
    ap.add_argument("--out", default=str(RESULTS / "llm_structured.json"))
    args = ap.parse_args()
    global WORK, CALIB
    work = WORK = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    t0 = time.time()
    model, tok = dense_model(work)
    windows = eval_windows(tok)[:: args.eval_every]
    calib = CALIB = calibration_windows(tok)
    a, b = (int(x) for x in args.select.split(":"))
    select = calib[a:b]
    text = calib[32:32 + args.steps, : args.seq]   # recovery text: the windows after the calibration set
    example = windows[:1, :64]
    rcfg = RecoverConfig(method="distill", steps=args.steps, lr=args.lr)
    note = (f"{len(windows)} of the 32 evaluation windows (every {args.eval_every}th), statistics on calib[:{args.calib}], "
            f"block count of the combined recipe chosen on calib[{a}:{b}], recovery = distillation from the unpruned "
            f"model (KL on logits, T={rcfg.temperature}), {args.steps} AdamW steps of 1x{args.seq} tokens (calib[32:{32 + args.steps}]), "
            f"lr {args.lr} {rcfg.schedule}, grad clip {rcfg.grad_clip}, decoder blocks + final norm trained; torch threads {torch.get_num_threads()}")
    meta = {"note": note, "args": vars(args), "recover": rcfg.__dict__, "counted": "decoder-block parameters (30 blocks, "
            "106.2M); embeddings/LM head (tied) and final norm not counted"}
    meta["dense_ppl"] = cached(work / f"dense_ppl_every{args.eval_every}.json", lambda: perplexity(model, windows))
    print(f"dense ppl {meta['dense_ppl']:.3f} ({time.time() - t0:.0f} s)", flush=True)
    c = calib[: args.calib]
    cal = cached(work / f"stats_delta_{args.calib}.pt", lambda: collect_stats(model, c, progress=False))
    print(f"stats ({time.time() - t0:.0f} s)", flush=True)
    dense_params = decoder_params(model)
    choices = cached(work / "choices.pt", dict) if (work / "choices.pt").exists() else {}
    done = {(r["row"], r["budget"]) for r in load_rows(out) if r["note"] == note}
    for row in args.rows.split(","):
        for budget in [float(x) for x in args.budgets.split(",")]:
            if (row, budget) in done:
                continue
            taylor = cached(work / f"taylor_{args.calib}.pt", lambda: collect_taylor(model, c)) if row == "taylor" else Calibration()
            m = copy.deepcopy(model)
            t = time.time()
            plans, base, details = prune_row(m, row, budget, cal, taylor, dense_params, example, select, choices)
            torch.save(choices, work / "choices.pt")
            prune_s = time.time() - t
            folder = work / f"{row.replace(':', '_')}_{budget}"
            rec = reload_check(m, folder, plans, base, example)
            ppl = perplexity(m, windows)
            print(f"{row} {budget}: ppl {ppl:.2f}, kept {decoder_params(m) / dense_params:.4f}, {rec}", flush=True)
            if args.no_recover:
                r = {"row": row, "budget": budget, "params_kept": decoder_params(m), "params_dense": dense_params,
                     "params_kept_frac": decoder_params(m) / dense_params, "ppl": ppl, "ppl_recovered": None,
                     "prune_s": prune_s, "note": note, **rec, **details}
                write(out, [r], meta)
                continue
            t = time.time()
            student = hf.from_pretrained(folder)   # recover the reloaded model: what a user would do
            res = recover_(student, text, rcfg, teacher=model)
            recover_s = time.time() - t
            rrec = reload_check(student, work / f"{row.replace(':', '_')}_{budget}_rec", [], copy.deepcopy(student.config), example)
            ppl_rec = perplexity(student, windows)
            r = {"row": row, "budget": budget, "params_kept": decoder_params(m), "params_dense": dense_params,
                 "params_kept_frac": decoder_params(m) / dense_params, "ppl": ppl, "ppl_recovered": ppl_rec,
                 "prune_s": prune_s, "recover_s": recover_s, "recover_losses": [res.losses[0], res.losses[-1]] if getattr(res, "losses", None) else None,
                 "note": note, **rec, **{"rec_" + k: v for k, v in rrec.items()}, **details}
            write(out, [r], meta)
            print(f"{row} {budget}: recovered ppl {ppl_rec:.2f} ({recover_s:.0f} s)", flush=True)
            del m, student


if __name__ == "__main__":
    main()
