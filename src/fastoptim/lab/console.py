"""The lab in the terminal: progress bars and summary tables (rich)."""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fastoptim.lab.compare import Comparison, ProgressCallback
from fastoptim.lab.lr_find import LRFind
from fastoptim.lab.report import COMPARISON_HEADER, TutorialRow, comparison_rows


@contextmanager
def progress_bar(console: Console, quiet: bool) -> Iterator[ProgressCallback | None]:
    """A progress callback for :func:`fastoptim.lab.compare` that draws a bar per problem
    (removed when done), or None when ``quiet`` or not writing to a terminal."""
    if quiet or not console.is_terminal:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bars:
        tasks: dict[str, int] = {}

        def update(description: str, done: int, total: int) -> None:
            problem = description.split(":", 1)[0]
            if problem not in tasks:
                tasks[problem] = bars.add_task(description, total=total)
            bars.update(tasks[problem], description=description, completed=done, total=total)

        yield update


def comparison_table(comparison: Comparison) -> Table:
    """A comparison's results, best first."""
    problem = comparison.problem
    table = Table(title=f"{problem.name} ({comparison.steps} steps)", title_justify="left")
    for column in COMPARISON_HEADER:
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for row in comparison_rows(comparison):
        table.add_row(*row)
    return table


def tutorial_table(rows: list[TutorialRow]) -> Table:
    """The tutorial's examples: true and learned A and b after its 10 iterations."""
    table = Table(title="The tutorial's examples (lr 0.05, 10 iterations)", title_justify="left")
    for column in ["optimizer", "true A", "learned A", "true b", "learned b"]:
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for row in rows:
        table.add_row(
            row.optimizer,
            *(f"{value:.4f}" for value in (row.true_a, row.learned_a, row.true_b, row.learned_b)),
        )
    return table


def lr_find_line(result: LRFind) -> str:
    """One line: the suggested lr of a range test and where it came from."""
    return (
        f"{result.problem}, {result.optimizer}: suggested lr {result.suggestion:.3g} "
        f"(lowest smoothed loss at lr {result.lrs[result.best]:.3g}, "
        f"{len(result.lrs)} steps, burn-in {result.burn_in})"
        + (
            "; the loss still fell at the last lr: try a larger --max-lr"
            if result.still_falling
            else ""
        )
    )
