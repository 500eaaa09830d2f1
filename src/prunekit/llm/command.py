"""``prunekit llm``: one-shot sparsity of a local Hugging Face causal LM from the command line.

    prunekit llm MODEL_DIR|smollm2 --method wanda --sparsity 0.5 --calib protocol --out DIR
    prunekit llm MODEL_DIR --method sparsegpt --pattern 2:4 --refit --calib text.txt --eval text.txt --out DIR

Every argument is checked before any work (ratio range and NaN, pattern, method, an existing
``--out`` file or a non-empty folder, missing files). Then: load the model and tokenizer, cut the
calibration and evaluation text into windows, measure perplexity, sparsify block by block (a
progress bar per block on a terminal, plain lines in a log), measure perplexity again, save with
``save_pretrained`` (and/or compressed, see :mod:`.storage`) and write ``summary.json``.
With ``--low-memory`` the blocks are read one at a time from the folder's safetensors shards and
written to ``--out`` as they finish (:class:`~prunekit.llm.loading.ShardedSource`); perplexity is then
not measured (the whole model is never loaded).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

PROTOCOL = "protocol"
SMOLLM2 = "smollm2"


class UsageError(ValueError):
    """A command-line argument that cannot work; raised before any model is loaded."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``prunekit llm`` arguments."""
    from .sparse import GROUPS, METHODS

    p.add_argument("model", help=f"a local Hugging Face model folder, or '{SMOLLM2}' (the protocol's SmolLM2-135M GGUF)")
    p.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    amount = p.add_mutually_exclusive_group(required=True)
    amount.add_argument("--sparsity", type=float, help="fraction of each decoder Linear's weights set to zero, in [0, 1)")
    amount.add_argument("--pattern", help="N:M semi-structured pattern, e.g. 2:4 (keep N of every M inputs)")
    p.add_argument("--group", default=None, help=f"comparison group: {', '.join(GROUPS)} (default: the method's reference)")
    p.add_argument("--refit", action="store_true", help="wanda/sparsegpt: refit the kept weights by least squares after "
                                                        "the mask is chosen (prunekit's best with sparsegpt)")
    p.add_argument("--admm", action="store_true", help="with --refit: also prune each layer by gradual ADMM and keep, "
                                                       "per layer, the result with the lower calibration error")
    p.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=True,
                   help="true-sequential inside each block (q/k/v, then o, then gate/up, then down, each on inputs "
                        "from the pruned layers before it; one pass per block; default). --no-sequential: the "
                        "reference papers' order (all layers scored on the unpruned block's inputs)")
    p.add_argument("--batch", type=int, default=None, help="calibration windows per block call (default: all at once; "
                                                         "1 = least memory)")
    p.add_argument("--calib", default=PROTOCOL, help=f"'{PROTOCOL}' (the protocol's calibration windows) or a UTF-8 "
                                                   "text file (default protocol)")
    p.add_argument("--calib-windows", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--eval", default=None, help=f"'{PROTOCOL}', a UTF-8 text file, or 'none' (default: protocol when "
                                                f"--calib is protocol or the model is {SMOLLM2}, else the --calib file)")
    p.add_argument("--eval-windows", type=int, default=32, help="at most this many evaluation windows (default 32)")
    p.add_argument("--seq-len", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--save", default="dense", choices=("dense", "compressed", "both"),
                   help="dense: save_pretrained; compressed: prunekit's sparse encoding (both: dense in OUT, "
                        "compressed in OUT/compressed)")
    p.add_argument("--device", default=None, help="where each block is processed, e.g. cuda (default cpu)")
    p.add_argument("--low-memory", action="store_true", help="read blocks one at a time from the safetensors shards "
                                                             "(no perplexity)")
    p.add_argument("--no-progress", action="store_true", help="no per-block progress output")


def validate(args: argparse.Namespace) -> None:
    """Every check that needs no model; raises :class:`UsageError` naming the argument."""
    from .sparse import GROUPS, METHODS, parse_pattern

    if args.method not in METHODS:
        raise UsageError(f"--method {args.method!r} is not one of {', '.join(METHODS)}")
    if args.sparsity is not None and not (math.isfinite(args.sparsity) and 0 <= args.sparsity < 1):
        raise UsageError(f"--sparsity must be a number in [0, 1), got {args.sparsity}")
    if args.pattern is not None:
        try:
            parse_pattern(args.pattern)
        except ValueError as e:
            raise UsageError(f"--pattern: {e}") from None
    if args.group is not None and args.group not in GROUPS:
        raise UsageError(f"--group {args.group!r} is not one of {', '.join(GROUPS)}")
    if getattr(args, "refit", False) and args.method == "magnitude":
        raise UsageError("--refit needs calibration statistics: use --method wanda or sparsegpt")
    if getattr(args, "admm", False) and not getattr(args, "refit", False):
        raise UsageError("--admm compares each layer's ADMM result with the refitted one: add --refit")
    if getattr(args, "admm", False) and args.group == "global":
        raise UsageError("--admm chooses each layer's mask on its own; --group global ranks layers together")
    if getattr(args, "batch", None) is not None and args.batch < 1:
        raise UsageError(f"--batch must be >= 1 (calibration windows per block call), got {args.batch}")
    for name in ("calib_windows", "eval_windows", "seq_len"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.model != SMOLLM2:
        folder = Path(args.model)
        if not (folder / "config.json").is_file():
            raise UsageError(f"MODEL {args.model!r} is neither '{SMOLLM2}' nor a folder with a config.json")
    elif args.low_memory:
        raise UsageError(f"--low-memory reads safetensors shards; '{SMOLLM2}' is a GGUF file")
    for flag, value in (("--calib", args.calib), ("--eval", args.eval)):
        if value not in (None, PROTOCOL, "none") and not Path(value).is_file():
            raise UsageError(f"{flag} {value!r} is neither '{PROTOCOL}' nor an existing text file")
    if args.calib == "none":
        raise UsageError("--calib none: calibration text is needed (use 'protocol' or a text file)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is an existing file")
    if out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {args.out!r} is a folder that is not empty; choose a new one")
    if args.low_memory and args.save != "dense":
        raise UsageError("--low-memory writes the dense shards as blocks finish; --save compressed needs the model "
                         "in memory")


def _text_windows(tokenizer: Any, path: str, seq_len: int, limit: int) -> Any:
    """A text file's tokens cut into at most ``limit`` consecutive windows of ``seq_len``: LongTensor [n, T]."""
    import torch

    text = Path(path).read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = min(len(ids) // seq_len, limit)
    if rows == 0:
        raise UsageError(f"{path}: {len(ids)} tokens, fewer than one window of {seq_len} (lower --seq-len)")
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)  # [n, T]


def _windows(spec: str, tokenizer: Any, args: argparse.Namespace, calib: bool) -> Any:
    if spec != PROTOCOL:
        return _text_windows(tokenizer, spec, args.seq_len, args.calib_windows if calib else args.eval_windows)
    from . import data

    if args.seq_len != 512:
        raise UsageError("the protocol's windows are 512 tokens; --seq-len applies to text files")
    arts = data.articles(tokenizer)
    if calib:
        return data.calibration_windows(tokenizer, n=max(args.calib_windows, 1), arts=arts)[: args.calib_windows]
    return data.eval_windows(tokenizer, arts=arts)[: args.eval_windows]


def _say(msg: str) -> None:
    print(f"prunekit llm: {msg}", flush=True)


def run(args: argparse.Namespace) -> int:
    """The ``prunekit llm`` command (after :func:`validate`)."""
    import torch

    from .admm import AdmmConfig
    from .sparse import SparsifyConfig, sparsify_llm_

    cfg = SparsifyConfig(method=args.method, sparsity=args.sparsity if args.sparsity is not None else 0.5,
                         pattern=args.pattern, group=args.group, refit=args.refit,
                         admm=AdmmConfig() if args.admm else None, sequential=args.sequential, batch=args.batch)
    eval_spec = args.eval if args.eval is not None else (
        PROTOCOL if (args.calib == PROTOCOL or args.model == SMOLLM2) else args.calib)
    out = Path(args.out)
    summary: dict[str, Any] = {"model": args.model, "config": cfg.to_dict(), "calib": args.calib,
                               "eval": eval_spec, "seq_len": args.seq_len}
    t0 = time.perf_counter()
    if args.model == SMOLLM2:
        from .data import smollm2

        _say("loading SmolLM2-135M (GGUF, float32)")
        model, tok = smollm2()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
    calib = _windows(args.calib, tok, args, calib=True) if cfg.needs_data else None
    if calib is not None:
        summary["calib_windows"] = int(calib.shape[0])
    if args.low_memory:
        from .loading import ShardedSource, lean_malloc

        if not lean_malloc():
            _say("note: glibc's mallopt is not available here; the peak memory may be higher (heap fragmentation)")
        src = ShardedSource(args.model, out, compute_dtype=torch.float32)
        _say(f"{cfg.method} {cfg.pattern or cfg.sparsity}, blocks read one at a time from {args.model}")
        res = sparsify_llm_(src.model, calib, config=cfg, device=args.device, progress=not args.no_progress,
                            source=src)
        src.finish()
        summary.update(ppl_before=None, ppl_after=None, eval_note="--low-memory: perplexity not measured")
    else:
        if args.model != SMOLLM2:
            from transformers import AutoModelForCausalLM

            from .loading import _dtype_kw

            model = AutoModelForCausalLM.from_pretrained(args.model, **_dtype_kw("auto")).eval()
        from .eval import perplexity

        windows = _windows(eval_spec, tok, args, calib=False) if eval_spec != "none" else None
        if windows is not None:
            summary["eval_windows"] = int(windows.shape[0])
            before = perplexity(model, windows, device=args.device)
            _say(f"perplexity before: {before:.3f} ({windows.shape[0]} windows of {windows.shape[1]})")
            summary["ppl_before"] = before
        _say(f"{cfg.method} {cfg.pattern or cfg.sparsity} on {summary.get('calib_windows', 0)} calibration windows")
        res = sparsify_llm_(model, calib, config=cfg, device=args.device, progress=not args.no_progress)
        _say(f"pruned in {res.seconds:.1f} s; decoder Linear sparsity {res.sparsity:.4f}")
        if windows is not None:
            after = perplexity(model, windows, device=args.device)
            _say(f"perplexity after: {after:.3f}")
            summary["ppl_after"] = after
        from . import storage

        if args.save in ("dense", "both"):
            storage.save_dense(model, out)
            tok.save_pretrained(out)
        if args.save in ("compressed", "both"):
            target = out / "compressed" if args.save == "both" else out
            saved = storage.save_compressed(model, target)
            tok.save_pretrained(target)
            summary["compressed_bytes"] = saved.weight_bytes
        summary["sparsity"] = res.sparsity
        summary["layer_sparsity"] = res.layer_sparsity
    if res.admm_layers:
        summary["admm_layers"] = res.admm_layers
    summary["prune_seconds"] = res.seconds
    summary["total_seconds"] = time.perf_counter() - t0
    summary["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary["block_sparsity"] = res.block_sparsity
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _say(f"saved to {out} (summary.json)")
    return 0


def main(args: argparse.Namespace) -> int:
    """Validate, then run; a usage error prints one line and returns 2 before any work."""
    try:
        validate(args)
    except UsageError as e:
        print(f"prunekit llm: error: {e}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except UsageError as e:  # found once the tokenizer is known (e.g. a text shorter than one window)
        print(f"prunekit llm: error: {e}", file=sys.stderr)
        return 2
