"""The lab's report: ``report.html`` (self-contained: images embedded, readable offline), the
PNG plots, ``results.json`` and ``results.csv``."""

import base64
import csv
import html
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import fastoptim
from fastoptim.lab import plots
from fastoptim.lab.compare import Comparison
from fastoptim.lab.lr_find import LRFind

CSV_COLUMNS = [
    "problem",
    "optimizer",
    "seed",
    "lr",
    "rank",
    "final_loss",
    "test_accuracy",
    "steps_to_target",
    "ms_per_step",
    "diverged",
]


@dataclass
class TutorialRow:
    """One of the tutorial's examples: the line to learn and what the optimizer learned."""

    optimizer: str
    true_a: float
    true_b: float
    learned_a: float
    learned_b: float


def plain(data: Any) -> Any:
    """``data`` with tuples as lists and non-finite floats as None: strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: plain(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(value) for value in data]
    return data


def check_writable(out: Path) -> None:
    """Create ``out`` if needed; ``OSError`` saying why if files cannot be written there."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".fastoptim-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(f"cannot write to {out}: {error.strerror or error}") from error


def number(value: float | None, digits: int = 4) -> str:
    """``value`` for a table: '-' for None, 'diverged' for inf."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "diverged"
    return f"{value:.{digits}g}"


def comparison_rows(comparison: Comparison) -> list[list[str]]:
    """The results table of a comparison: one row per optimizer, best first."""
    several = len(comparison.seeds) > 1
    rows = []
    for row in comparison.standings():
        loss = number(row.final_loss)
        if several and math.isfinite(row.final_loss_std):
            loss += f" ± {number(row.final_loss_std, 2)}"
        rows.append(
            [
                str(row.rank),
                row.optimizer,
                number(row.lr, 3),
                loss,
                "-" if row.test_accuracy is None else f"{row.test_accuracy:.1%}",
                "not reached" if row.steps_to_target is None else number(row.steps_to_target),
                f"{row.seconds_per_step * 1e3:.3f}",
            ]
        )
    return rows


COMPARISON_HEADER = [
    "rank",
    "optimizer",
    "lr",
    "final loss",
    "test accuracy",
    "steps to target",
    "ms per step",
]


def comparison_plots(comparison: Comparison) -> dict[str, bytes]:
    """The plots of a comparison by file name."""
    name = comparison.problem.name
    images = {f"{name}-loss.png": plots.loss_plot(comparison)}
    if comparison.problem.surface is not None and comparison.runs[0].trajectory:
        images[f"{name}-trajectories.png"] = plots.trajectory_plot(comparison)
    if any(run.accuracy for run in comparison.runs):
        images[f"{name}-accuracy.png"] = plots.accuracy_plot(comparison)
    if comparison.sweeps:
        images[f"{name}-lr-sweep.png"] = plots.sweep_plot(comparison)
    return images


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(name: str, data: bytes) -> str:
    """An embedded PNG."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"></figure>'


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; }
td:nth-child(2) { text-align: left; }
figure { margin: 1rem 0; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9rem; }
"""


def write_report(
    out: Path,
    comparisons: Sequence[Comparison] = (),
    lr_finds: Sequence[LRFind] = (),
    tutorial: Sequence[TutorialRow] = (),
) -> Path:
    """Write the report of ``comparisons``, ``lr_finds`` and the ``tutorial`` rows into
    ``out`` (created if needed): report.html, one PNG per plot, results.json, results.csv.
    Returns the path of report.html."""
    check_writable(out)
    sections = []
    if tutorial:
        sections.append(
            "<h2>The tutorial's examples</h2><p>Each optimizer at lr 0.05 for 10 iterations, "
            "as in the tutorial (N=100, noise 0.1): the line it had to learn and the line it "
            "learned. One lr for all is the tutorial's point of departure; the comparisons "
            "below give each optimizer its own.</p>"
            + table(
                ["optimizer", "true A", "learned A", "true b", "learned b"],
                [
                    [
                        row.optimizer,
                        *(f"{v:.4f}" for v in (row.true_a, row.learned_a)),
                        *(f"{v:.4f}" for v in (row.true_b, row.learned_b)),
                    ]
                    for row in tutorial
                ],
            )
        )
    for comparison in comparisons:
        problem = comparison.problem
        lr_note = (
            "Learning rates chosen per optimizer by a sweep over half decades from 1e-4 to 30 "
            f"({max(10, comparison.steps // 2)} steps each, scored by the mean loss of the last "
            "quarter)."
            if comparison.sweeps
            else "Learning rates as given."
        )
        images = comparison_plots(comparison)
        for name, data in images.items():
            (out / name).write_bytes(data)
        sections.append(
            f"<h2>{html.escape(problem.name)}</h2><p>{html.escape(problem.description)}</p>"
            f'<p class="note">{comparison.steps} steps, seeds {comparison.seeds[0]}'
            f"..{comparison.seeds[-1]}; target loss {number(problem.target_loss)}. {lr_note} "
            "Ranked by steps to reach the target loss, then by final loss (on the whole "
            "training set after the last step; mean over seeds). Wall time per step includes "
            "the forward and backward pass.</p>"
            + table(COMPARISON_HEADER, comparison_rows(comparison))
            + "".join(image(name, data) for name, data in images.items())
        )
    for result in lr_finds:
        name = f"lr-find-{result.problem}-{result.optimizer}.png"
        data = plots.lr_find_plot(result)
        (out / name).write_bytes(data)
        sections.append(
            f"<h2>LR range test: {html.escape(result.problem)}, {html.escape(result.optimizer)}"
            f"</h2><p>Suggested lr: <b>{result.suggestion:.3g}</b> (a tenth of "
            f"{result.lrs[result.best]:.3g}, where the smoothed loss was lowest after a burn-in "
            f"of {result.burn_in} steps)."
            + (
                " The loss still fell at the last lr: the range ended too early, so this is"
                " a lower bound."
                if result.still_falling
                else ""
            )
            + "</p>"
            + image(name, data)
        )
    versions = (
        f"fastoptim {fastoptim.__version__}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {torch.get_num_threads()} threads"
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fastoptim lab report</title><style>{STYLE}</style></head><body>"
        f'<h1>fastoptim lab report</h1><p class="note">{html.escape(versions)}</p>'
        + "".join(sections)
        + "</body></html>"
    )
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    results: dict[str, Any] = {
        "versions": versions,
        "tutorial": [vars(row) for row in tutorial],
        "comparisons": [comparison.to_dict() for comparison in comparisons],
        "lr_finds": [result.to_dict() for result in lr_finds],
    }
    (out / "results.json").write_text(json.dumps(plain(results), indent=1) + "\n")
    with (out / "results.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for comparison in comparisons:
            ranks = {row.optimizer: row.rank for row in comparison.standings()}
            for run in comparison.runs:
                writer.writerow(
                    [
                        comparison.problem.name,
                        run.optimizer,
                        run.seed,
                        run.lr,
                        ranks[run.optimizer],
                        run.final_loss,
                        "" if run.test_accuracy is None else run.test_accuracy,
                        "" if run.steps_to_target is None else run.steps_to_target,
                        run.seconds_per_step * 1e3,
                        run.diverged,
                    ]
                )
    return report
