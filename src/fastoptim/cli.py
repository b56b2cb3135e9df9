"""The ``fastoptim`` command. Thin: each subcommand calls the lab."""

import argparse
import os
import sys

from fastoptim.lab import tutorial

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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tutorial":
            tutorial.run(seed=args.seed)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away, as in `fastoptim tutorial | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
