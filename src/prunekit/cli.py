"""The ``prunekit`` command. Subcommands live in one table so the CLI can grow."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .api import prune_
    from .zoo import demo_model

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
    p.add_argument("--model", default="mobilenet_v2", help="torchvision model name (default: mobilenet_v2)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove per group (0.5)")
    p.add_argument("--round-to", type=int, default=8, help="keep channel counts a multiple of this (8)")


COMMANDS["demo"] = ("prune a built-in model and print the before/after table", _demo_args, _demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Make trained PyTorch models smaller and faster by structural pruning.")
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
