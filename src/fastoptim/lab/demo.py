"""``fastoptim demo``: the tutorial's examples, a comparison of every optimizer on every
built-in problem at learning rates chosen for each, LR range tests, and the report."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastoptim.lab import tutorial
from fastoptim.lab.compare import OPTIMIZERS, Comparison, ProgressCallback, compare
from fastoptim.lab.lr_find import LRFind, lr_find
from fastoptim.lab.problems import PROBLEMS, load_problem
from fastoptim.lab.report import TutorialRow, check_writable, write_report

# The range tests the demo shows: the tutorial's problem with its first two optimizers.
LR_FIND_OPTIMIZERS = ["SGD", "Adam"]


@dataclass
class Demo:
    """What :func:`demo` ran and where its report is."""

    report: Path
    tutorial: list[TutorialRow]
    comparisons: list[Comparison]
    lr_finds: list[LRFind]


def tutorial_rows(seed: int = 0) -> list[TutorialRow]:
    """The tutorial's seven examples: each line and what its optimizer learned."""
    rows = []
    for name, true_a, true_b in tutorial.EXAMPLES:
        learned_a, learned_b = tutorial.train(name, true_a, true_b, seed)[-1]
        rows.append(TutorialRow(name, true_a, true_b, learned_a, learned_b))
    return rows


def demo(
    out: Path = Path("fastoptim-report"),
    problems: Sequence[str] = tuple(PROBLEMS),
    *,
    scale: float = 1.0,
    seeds: int = 1,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> Demo:
    """Run the tutorial, compare every optimizer (``lr="auto"``) on ``problems`` with
    each problem's step budget times ``scale`` (at least 10 steps), run LR range tests on
    the linear regression, and write the report to ``out``. 1-1.5 minutes on 2 cores with
    the kernels compiled."""
    if not scale > 0:
        raise ValueError(f"invalid scale {scale!r}: expected a number > 0")
    chosen = [load_problem(name) for name in problems]
    check_writable(out)
    rows = tutorial_rows(seed)
    comparisons = [
        compare(
            problem,
            OPTIMIZERS,
            steps=max(10, round(problem.steps * scale)),
            seeds=seeds,
            seed=seed,
            progress=progress,
        )
        for problem in chosen
    ]
    finds = [
        lr_find("linear-regression", name, steps=max(10, round(100 * scale)), seed=seed)
        for name in LR_FIND_OPTIMIZERS
    ]
    return Demo(write_report(out, comparisons, finds, rows), rows, comparisons, finds)
