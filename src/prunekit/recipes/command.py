"""The ``prunekit prune / sparsify / measure / export / report`` subcommands.

    prunekit prune torchvision:resnet18 --ratio 0.5 --round-to 8 --out out/
    prunekit prune timm:resnet10t --recipe recipe.yaml --out out/
    prunekit sparsify ./my_hf_folder --pattern 2:4 --out out/
    prunekit measure models.py:build --input-shape 1,3,64,64
    prunekit export out/ --onnx
    prunekit report out/

Every argument is checked when the command line is parsed (MODEL exists, the recipe parses, numbers
in range): a usage error ends with exit code 2 and one message, no traceback. A failure while running
(a model prunekit cannot prune, an export that does not match) prints one ``error:`` line and exits 1
(``PRUNEKIT_TRACEBACK=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from ..cliargs import (budget, criterion_name, fraction, model_or_folder, model_spec, output_folder,
                       output_of_prunekit, positive_int, recipe_file, shape, weights_file)

MODEL_HELP = ("torchvision:NAME or timm:NAME (random init unless --weights), a local Hugging Face folder "
              "(config.json; loaded offline), or path/to/file.py:factory (a function returning the nn.Module)")


def _model_args(p: argparse.ArgumentParser, folder_too: bool = False) -> None:
    p.add_argument("model", metavar="MODEL", type=model_or_folder if folder_too else model_spec,
                   help=MODEL_HELP + (" -- or a folder written by prunekit prune" if folder_too else ""))
    p.add_argument("--weights", type=weights_file, default=None,
                   help="weights to load first: .safetensors, or a state dict read with torch.load(weights_only=True)")
    p.add_argument("--input-shape", type=shape, default=None, metavar="1,3,224,224",
                   help="example input shape (default: from the model's config: timm input_size, Hugging Face "
                        "image_size / vocab_size; torchvision 1,3,224,224; a file's example_inputs())")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", type=recipe_file, default=None,
                   help="a YAML recipe: stages prune, sparsify, recover, measure, export with the field names of "
                        "PruneConfig, SparsityConfig, TrainConfig (see examples/recipes/); excludes the flags below")
    p.add_argument("--out", required=True, type=output_folder, help="output folder (files in it are replaced)")
    p.add_argument("--onnx", action="store_true", help="also export model.onnx (checked against ONNX Runtime)")
    p.add_argument("--seed", type=int, default=None, help="seed for random init and example inputs (default 0)")


def prune_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _run_args(p)
    g = p.add_argument_group("without --recipe: one prune stage")
    amount = g.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=fraction, default=None, help="fraction of each group's channels to remove (default 0.5)")
    amount.add_argument("--macs", type=budget, default=None, help="keep at most this fraction of the MACs")
    g.add_argument("--round-to", type=positive_int, default=None, help="keep channel counts a multiple of this")
    g.add_argument("--criterion", type=criterion_name, default=None,
                   help="data-free importance criterion (l2, l1, bn_scale, random; default l2)")
    g.add_argument("--scope", choices=("local", "global"), default=None)
    g.add_argument("--ignore", nargs="+", default=None, metavar="MODULE", help="module paths left whole")
    g.add_argument("--keep-outputs", nargs="+", default=None, metavar="MODULE",
                   help="module paths whose outputs keep their size (e.g. the classifier)")


def sparsify_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _run_args(p)
    g = p.add_argument_group("without --recipe: one sparsify stage")
    amount = g.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=fraction, default=None, help="fraction of weights set to zero")
    amount.add_argument("--pattern", default=None, help="N:M pattern, e.g. 2:4")
    g.add_argument("--criterion", type=criterion_name, default=None, help="per-weight criterion (default l1)")
    g.add_argument("--scope", choices=("local", "global"), default=None)
    g.add_argument("--ignore", nargs="+", default=None, metavar="MODULE", help="module paths left dense")


FLAGS = {"prune": {"ratio": "ratio", "macs": "macs", "round_to": "round_to", "criterion": "criterion",
                   "scope": "scope", "ignore": "ignore", "keep_outputs": "keep_outputs"},
         "sparsify": {"sparsity": "sparsity", "pattern": "pattern", "criterion": "criterion", "scope": "scope",
                      "ignore": "ignore"}}


def recipe_of(args: argparse.Namespace, command: str):
    """The recipe to run: ``--recipe`` as given, or one stage from the flags, then measure (and export
    with ``--onnx``). Raises ``ValueError`` for flags that cannot go together."""
    from .stages import ExportStage, MeasureStage, PruneStage, Recipe, SparsifyStage

    given = {f: getattr(args, a) for a, f in FLAGS[command].items() if getattr(args, a) is not None}
    if args.recipe is not None:
        if given:
            raise ValueError(f"--recipe excludes {', '.join('--' + k.replace('_', '-') for k in given)} "
                             "(put them in the recipe)")
        recipe = args.recipe
        if args.onnx and not recipe.find(ExportStage):
            recipe = Recipe((*recipe.stages, ExportStage()), recipe.seed)
    else:
        stage = PruneStage.from_fields(given) if command == "prune" else SparsifyStage.from_fields(given)
        recipe = Recipe((stage, MeasureStage(), *((ExportStage(),) if args.onnx else ())), 0)
    if args.seed is not None:
        recipe = Recipe(recipe.stages, args.seed)
    return recipe


def _fail(parser_prog: str, e: BaseException, code: int) -> int:
    if os.environ.get("PRUNEKIT_TRACEBACK"):
        raise e
    print(f"{parser_prog}: error: {e}", file=sys.stderr)
    return code


def _guard(prog: str, fn: Callable[[], int]) -> int:
    """Run ``fn``; a bad MODEL found on loading is a usage error (2), a prunekit failure exits 1."""
    from ..errors import PrunekitError
    from .folder import FolderError
    from .models import ModelSpecError

    try:
        return fn()
    except ModelSpecError as e:
        return _fail(prog, e, 2)
    except KeyError as e:  # the library names a module that is not there
        return _fail(prog, ValueError(e.args[0] if e.args else e), 1)
    except (PrunekitError, FolderError, ValueError, OSError) as e:
        return _fail(prog, e, 1)


def run_command(args: argparse.Namespace, command: str) -> int:
    """``prunekit prune`` / ``prunekit sparsify``."""
    from .run import run_recipe

    prog = f"prunekit {command}"
    try:
        recipe = recipe_of(args, command)
    except (TypeError, ValueError) as e:
        return _fail(prog, e, 2)

    def work() -> int:
        run_recipe(args.model, recipe, args.out, weights=args.weights, input_shape=args.input_shape)
        return 0

    return _guard(prog, work)


def prune(args: argparse.Namespace) -> int:
    return run_command(args, "prune")


def sparsify(args: argparse.Namespace) -> int:
    return run_command(args, "sparsify")


def measure_args(p: argparse.ArgumentParser) -> None:
    _model_args(p, folder_too=True)
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--threads", type=positive_int, default=1, help="threads for latency (default 1)")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed forwards (default 30)")
    p.add_argument("--per-layer", action="store_true", help="also print per-layer numbers")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def measure(args: argparse.Namespace) -> int:
    def work() -> int:
        from ..measure.compare import measure as measure_model
        from .folder import load_folder
        from .inputs import example_inputs
        from .models import load_weights

        if isinstance(args.model, Path):
            if args.weights or args.input_shape:
                raise ValueError("--weights and --input-shape are for a MODEL; an output folder has its own")
            loaded = load_folder(args.model)
            model, ex, name = loaded.model, loaded.example, str(args.model)
        else:
            import torch

            torch.manual_seed(0)
            model = args.model.build()
            if args.weights:
                load_weights(model, args.weights)
            model.eval()
            ex, name = example_inputs(args.model, model, args.input_shape), str(args.model)
        m = measure_model(model, ex.args, ex.kwargs, latency=not args.no_latency, threads=args.threads,
                          repeats=args.repeats, per_layer=args.per_layer)
        if args.json:
            print(json.dumps({"model": name, "inputs": ex.describe(), **m.to_dict()}, indent=1))
            return 0
        print(f"{name}, inputs {ex.describe()}")
        rows = [("params", f"{m.params:,}"), ("MACs", f"{m.macs:,}"), ("file MB", f"{m.file_bytes / 2**20:.2f}"),
                ("peak memory MB", f"{m.peak_memory_bytes / 2**20:.1f}")]
        if m.latency is not None:
            rows.append(("latency ms", str(m.latency)))
        w = max(len(r[0]) for r in rows)
        print("\n".join(f"{k.ljust(w)}  {v}" for k, v in rows))
        for layer in m.layers or ():
            print(f"  {layer.path or '(model)'}  {layer.type}  params {layer.params:,}  MACs {layer.macs:,}")
        return 0

    return _guard("prunekit measure", work)


def export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", type=output_of_prunekit, help="a folder written by prunekit prune")
    p.add_argument("--onnx", action="store_true", required=True, help="write DIR/model.onnx (ONNX is the one format)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="torch.export (default; falls back to the legacy exporter, saying so) or legacy only")
    p.add_argument("--opset", type=positive_int, default=18)
    p.add_argument("--no-check", action="store_true", help="skip the comparison with ONNX Runtime")


def export(args: argparse.Namespace) -> int:
    def work() -> int:
        from .folder import check_reload, export as export_model, load_folder
        from .stages import ExportStage

        loaded = load_folder(args.folder)
        err = check_reload(loaded)
        print(f"reloaded {args.folder} (plan replayed, weights loaded): outputs differ from the saved ones by "
              f"at most {err:.1e}")
        export_model(loaded.model, loaded.example, Path(args.folder) / "model.onnx",
                     ExportStage(True, args.opset, args.exporter, not args.no_check), print)
        return 0

    return _guard("prunekit export", work)


def report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", type=output_of_prunekit, help="a folder written by prunekit prune")
    p.add_argument("--no-latency", action="store_true", help="no latency measurement (and no latency plot)")
    p.add_argument("--rounds", type=positive_int, default=5, help="alternating latency rounds (default 5)")
    p.add_argument("--repeats", type=positive_int, default=15, help="timed forwards per round (default 15)")
    p.add_argument("--threads", type=positive_int, default=1, help="threads for latency (default 1)")
    p.add_argument("--per-layer", action="store_true", help="add the per-layer table")


def report(args: argparse.Namespace) -> int:
    def work() -> int:
        from ..measure.latency import LatencyConfig
        from .folder import load_folder, report as write
        from .stages import MeasureStage

        loaded = load_folder(args.folder)
        folder = Path(args.folder)
        try:
            old = json.loads((folder / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        stage = MeasureStage(LatencyConfig(threads=args.threads, repeats=args.repeats, rounds=args.rounds),
                             latency=not args.no_latency, per_layer=args.per_layer)
        keep = {k: old[k] for k in ("model", "inputs", "stages", "files", "manifest") if k in old}
        page = write(folder, old.get("title", f"prunekit: {folder}"), loaded.original(), loaded.model, loaded.example,
                     stage, notes=[f"re-measured by prunekit report; inputs: {loaded.example.describe()}"], extra=keep)
        print(f"report written: {page}")
        return 0

    return _guard("prunekit report", work)
