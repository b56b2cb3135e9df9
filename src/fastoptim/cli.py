"""The ``fastoptim`` command. Thin: each subcommand calls the lab."""

import argparse
import os
import sys
from pathlib import Path

from fastoptim.lab import tutorial

OPTIMIZERS = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "RMSprop"]
MIX_NAMES = ["transformer", "many-small"]

MAX_SEED = 2**63 - 1


def seed_value(text: str) -> int:
    """Parse a ``--seed``: a whole number from 0 to 2**63 - 1."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected a whole number from 0 to {MAX_SEED}"
        )
    return seed


def choices(allowed: list[str]) -> "argparse._ActionType":
    """Parse a comma-separated subset of ``allowed`` (case-insensitive), kept in given order."""

    def parse(text: str) -> list[str]:
        by_lower = {name.lower(): name for name in allowed}
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name.lower() not in by_lower]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                f"choose from {', '.join(allowed)}"
            )
        return [by_lower[name.lower()] for name in names]

    return parse


def positive(kind: type) -> "argparse._ActionType":
    """Parse a number of type ``kind`` that must be greater than zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a number > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fastoptim`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="fastoptim",
        description="fastoptim: fast, exact drop-in replacements for torch.optim's optimizers.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tutorial_parser = commands.add_parser(
        "tutorial",
        help="run the tutorial's seven linear-regression examples",
        description="Train the tutorial's linear regression with each of the seven "
        "optimizers (N=100, noise 0.1, lr 0.05, 10 iterations) and print the learned A and b "
        "after each iteration.",
    )
    tutorial_parser.add_argument(
        "--seed", type=seed_value, default=0, help="random seed for data and model (default: 0)"
    )
    bench_parser = commands.add_parser(
        "bench",
        help="time fastoptim against torch.optim's best mode",
        description="Median step time of fastoptim's default against the fastest of "
        "torch.optim's for-loop, foreach and fused modes, interleaved in one run, as ratios; "
        "plus each optimizer's fraction of the memory-bandwidth limit and the first step's "
        "time with a cold and a warm kernel cache.",
    )
    bench_parser.add_argument(
        "--optimizers",
        type=choices(OPTIMIZERS),
        default=OPTIMIZERS,
        help="comma-separated optimizers (default: all seven)",
    )
    bench_parser.add_argument(
        "--mix",
        type=choices(MIX_NAMES),
        default=MIX_NAMES,
        help="comma-separated parameter mixes: transformer (~8M in 75 tensors), many-small "
        "(400 tensors of 64..16k) (default: both)",
    )
    bench_parser.add_argument(
        "--repeats", type=positive(int), default=30, help="timed steps per candidate (default 30)"
    )
    bench_parser.add_argument(
        "--scale",
        type=positive(float),
        default=1.0,
        help="multiply tensor sizes (default 1; small values for a quick check)",
    )
    bench_parser.add_argument(
        "--out",
        type=Path,
        default=Path("fastoptim-bench.json"),
        help="JSON report path (default fastoptim-bench.json)",
    )
    bench_parser.add_argument(
        "--no-first-step", action="store_true", help="skip the cold/warm first-step timing"
    )
    bench_parser.add_argument(
        "--no-compact-state",
        action="store_true",
        help="skip timing bfloat16 and 8-bit state (state_dtype) against float32 state",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tutorial":
            tutorial.run(seed=args.seed)
        elif args.command == "bench":
            from fastoptim import bench  # imported here: it compiles a probe kernel

            out = args.out
            if out.parent and not out.parent.is_dir():
                print(f"fastoptim bench: error: --out: no directory {out.parent}", file=sys.stderr)
                return 2
            bench.run(
                args.optimizers,
                args.mix,
                args.repeats,
                args.scale,
                out,
                first_step=not args.no_first_step,
                compact_state=not args.no_compact_state,
            )
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away, as in `fastoptim tutorial | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
