"""The ``fastoptim`` command. Thin: each subcommand calls the lab."""

import argparse
import os
import sys
from pathlib import Path

from fastoptim.lab import tutorial
from fastoptim.lab.compare import OPTIMIZERS
from fastoptim.lab.problems import PROBLEMS

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


def learning_rate(text: str) -> "str | float":
    """Parse ``--lr``: 'auto' or a finite number > 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid lr {text!r}: expected 'auto' or a finite number > 0"
        )
    return value


PROBLEM_HELP = (
    f"built-in: {', '.join(PROBLEMS)}; or your own as package.module:attribute or "
    "file.py:attribute (a fastoptim.lab.Problem or a make(seed) -> Task function)"
)
REPORT_DIR = Path("fastoptim-report")


def add_lab_options(parser: argparse.ArgumentParser, seeds: bool = True) -> None:
    """Options shared by the lab's subcommands: --seed, --seeds, --out, --quiet."""
    parser.add_argument("--seed", type=seed_value, default=0, help="first random seed (default: 0)")
    if seeds:
        parser.add_argument(
            "--seeds",
            type=positive(int),
            default=1,
            help="run seeds SEED..SEED+K-1 and show their spread (default: 1)",
        )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPORT_DIR,
        help=f"report directory (default: ./{REPORT_DIR})",
    )
    parser.add_argument("--quiet", action="store_true", help="print only errors")


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
    demo_parser = commands.add_parser(
        "demo",
        help="tutorial, comparison on every problem, LR range tests, report",
        description="Run the tutorial's examples, compare every optimizer on every "
        "built-in problem at a learning rate swept for each, run LR range tests, and write "
        "report.html, the plots, results.json and results.csv (1-1.5 minutes on 2 cores "
        "once the kernels are compiled).",
    )
    demo_parser.add_argument(
        "--problems",
        type=choices(list(PROBLEMS)),
        default=list(PROBLEMS),
        help="comma-separated built-in problems (default: all)",
    )
    demo_parser.add_argument(
        "--scale",
        type=positive(float),
        default=1.0,
        help="multiply every problem's step budget (default 1; small for a quick look)",
    )
    add_lab_options(demo_parser)
    compare_parser = commands.add_parser(
        "compare",
        help="compare optimizers on one problem",
        description="Train one problem with each optimizer, rank them, and write the report.",
    )
    compare_parser.add_argument("--problem", required=True, help=PROBLEM_HELP)
    compare_parser.add_argument(
        "--optimizers",
        type=choices(OPTIMIZERS),
        default=OPTIMIZERS,
        help="comma-separated optimizers, case-insensitive (default: all)",
    )
    compare_parser.add_argument(
        "--steps", type=positive(int), help="training steps (default: the problem's budget)"
    )
    compare_parser.add_argument(
        "--lr",
        type=learning_rate,
        default="auto",
        help="'auto' (a sweep per optimizer over half decades, 1e-4..30) or one lr for all "
        "(default: auto)",
    )
    add_lab_options(compare_parser)
    find_parser = commands.add_parser(
        "lr-find",
        help="LR range test: suggest a learning rate",
        description="Train while the lr grows geometrically from --min-lr to --max-lr; "
        "suggest a tenth of the lr with the lowest smoothed loss after a burn-in; save the "
        "plot in --out.",
    )
    find_parser.add_argument("--problem", required=True, help=PROBLEM_HELP)
    find_parser.add_argument(
        "--optimizer",
        type=choices(OPTIMIZERS),
        required=True,
        help=f"one of {', '.join(OPTIMIZERS)}",
    )
    find_parser.add_argument(
        "--steps", type=positive(int), default=100, help="steps of the test (default 100)"
    )
    find_parser.add_argument(
        "--min-lr", type=positive(float), default=1e-6, help="first lr (default 1e-6)"
    )
    find_parser.add_argument(
        "--max-lr", type=positive(float), default=10.0, help="last lr (default 10)"
    )
    add_lab_options(find_parser, seeds=False)
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
        help="comma-separated optimizers (default: all)",
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
        elif args.command in ("demo", "compare", "lr-find"):
            return run_lab(args)
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


def run_lab(args: argparse.Namespace) -> int:
    """Run ``demo``, ``compare`` or ``lr-find``; print the summary unless --quiet. An error
    in the user's input is one line on stderr and exit status 2."""
    from rich.console import Console

    from fastoptim import lab
    from fastoptim.lab import console
    from fastoptim.lab.report import check_writable

    screen = Console(quiet=args.quiet, highlight=False)
    try:
        with console.progress_bar(screen, args.quiet) as progress:
            if args.command == "demo":
                result = lab.demo(
                    args.out,
                    args.problems,
                    scale=args.scale,
                    seeds=args.seeds,
                    seed=args.seed,
                    progress=progress,
                )
                comparisons, finds, report = result.comparisons, result.lr_finds, result.report
                screen.print(console.tutorial_table(result.tutorial))
            elif args.command == "compare":
                problem = lab.load_problem(args.problem)
                check_writable(args.out)
                comparisons = [
                    lab.compare(
                        problem,
                        args.optimizers,
                        steps=args.steps,
                        lr=args.lr,
                        seeds=args.seeds,
                        seed=args.seed,
                        progress=progress,
                    )
                ]
                finds = []
                report = lab.write_report(args.out, comparisons)
            else:
                check_writable(args.out)
                finds = [
                    lab.lr_find(
                        args.problem,
                        args.optimizer[0],
                        steps=args.steps,
                        min_lr=args.min_lr,
                        max_lr=args.max_lr,
                        seed=args.seed,
                    )
                ]
                comparisons = []
                report = lab.write_report(args.out, lr_finds=finds)
    except (ValueError, OSError) as error:
        print(f"fastoptim {args.command}: error: {error}", file=sys.stderr)
        return 2
    for comparison in comparisons:
        screen.print(console.comparison_table(comparison))
    for result in finds:
        screen.print(console.lr_find_line(result), soft_wrap=True)
    if args.command == "lr-find" and args.quiet:
        print(f"{finds[0].suggestion:.6g}")  # for scripts: the suggestion alone
    screen.print(f"report: {report}", soft_wrap=True)
    return 0
