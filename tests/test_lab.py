"""The optimizer lab: problems, compare, lr_find, the report and the command line."""

import csv
import json
import math
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from fastoptim import lab
from fastoptim.cli import main
from fastoptim.lab import problems
from fastoptim.lab.compare import SWEEP_LRS

# Where each built-in 2-D surface has its minimum 0.
MINIMA = {
    "rosenbrock": (1.0, 1.0),
    "rastrigin": (0.0, 0.0),
    "beale": (3.0, 0.5),
    "saddle": (0.0, math.sqrt(2.0)),
}


class Page(HTMLParser):
    """Collects every src/href of an HTML page and checks that tags are balanced."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.images: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href"):
                self.references.append(value or "")
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"


def parse_report(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == []
    return page


def strict_json(path: Path) -> object:
    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("name", list(problems.PROBLEMS))
def test_builtin_problems_make_seeded_tasks(name: str) -> None:
    problem = problems.PROBLEMS[name]
    task = problem.make(0)
    params = list(task.params)
    assert params and all(p.requires_grad for p in params)
    loss = task.loss(0)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in params)
    if task.test_accuracy:
        assert 0 <= task.test_accuracy() <= 1
    if task.full_loss:
        assert math.isfinite(task.full_loss())
    assert (problem.surface is None) == (task.position is None) == (name not in MINIMA)
    again = problem.make(0)
    assert again.loss(0).item() == problems.PROBLEMS[name].make(0).loss(0).item()


@pytest.mark.parametrize("name", list(MINIMA))
def test_surfaces_have_their_documented_minimum(name: str) -> None:
    problem = problems.PROBLEMS[name]
    point = torch.tensor(MINIMA[name], dtype=torch.float64, requires_grad=True)
    value = problem.surface(point[0], point[1])
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    assert point.grad.abs().max().item() < 1e-9
    x_min, x_max, y_min, y_max = problem.bounds
    assert x_min < MINIMA[name][0] < x_max and y_min < MINIMA[name][1] < y_max


def test_digits_split_is_real_and_disjoint() -> None:
    x_train, y_train, x_test, y_test = problems.digits_split()
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))


def test_compare_is_deterministic_under_a_seed() -> None:
    first = lab.compare("digits-logistic", steps=30, lr="auto", seed=3)
    second = lab.compare("digits-logistic", steps=30, lr="auto", seed=3)
    assert first.ranking() == second.ranking()
    assert sorted(first.ranking()) == sorted(lab.OPTIMIZERS)
    assert first.lrs == second.lrs
    assert all(lr in SWEEP_LRS for lr in first.lrs.values())
    for a, b in zip(first.runs, second.runs, strict=True):
        assert a.losses == b.losses and a.final_loss == b.final_loss
        assert a.test_accuracy == b.test_accuracy
    other = lab.compare("digits-logistic", ["SGD"], steps=30, lr=0.1, seed=4)
    assert (
        other.runs[0].losses
        != lab.compare("digits-logistic", ["SGD"], steps=30, lr=0.1, seed=3).runs[0].losses
    )


def test_compare_leaves_torch_random_state_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    lab.compare("linear-regression", ["Adam"], steps=10, lr=0.1)
    lab.lr_find("linear-regression", "Adam", steps=10)
    assert torch.equal(torch.get_rng_state(), before)


def test_auto_lr_picks_the_sweeps_best_score() -> None:
    result = lab.compare("linear-regression", ["SGD", "Adam"])
    for name, pairs in result.sweeps.items():
        assert [lr for lr, _ in pairs] == SWEEP_LRS
        best = min(score for _, score in pairs)
        assert dict(pairs)[result.lrs[name]] == best
        if name == "SGD":  # plain SGD diverges here above lr 1
            assert math.isinf(dict(pairs)[SWEEP_LRS[-1]])
    # A chosen lr trains to the target within the budget.
    assert all(row.steps_to_target is not None for row in result.standings())


def test_standings_rank_by_steps_to_target_then_loss() -> None:
    result = lab.compare("linear-regression", ["SGD", "Adadelta", "Adam"], steps=50, lr=0.05)
    rows = result.standings()
    assert [row.rank for row in rows] == [1, 2, 3]
    reached = [row for row in rows if row.steps_to_target is not None]
    assert reached == rows[: len(reached)]
    assert [row.steps_to_target for row in reached] == sorted(r.steps_to_target for r in reached)
    rest = rows[len(reached) :]
    assert [row.final_loss for row in rest] == sorted(row.final_loss for row in rest)
    sgd = result.runs_of("SGD")[0]
    assert sgd.steps_to_target == next(
        step for step, loss in enumerate(sgd.losses, 1) if loss <= 0.02
    )


def test_seeds_give_runs_and_spread() -> None:
    result = lab.compare("digits-mlp", ["Adam", "SGD"], steps=15, lr=0.05, seeds=3, seed=7)
    assert result.seeds == [7, 8, 9]
    assert [run.seed for run in result.runs_of("Adam")] == [7, 8, 9]
    row = next(row for row in result.standings() if row.optimizer == "Adam")
    losses = [run.final_loss for run in result.runs_of("Adam")]
    assert row.final_loss == pytest.approx(sum(losses) / 3)
    assert row.final_loss_std > 0
    assert len(result.runs_of("Adam")[0].accuracy) >= 2


def test_diverged_runs_rank_last_and_show_as_diverged() -> None:
    result = lab.compare(
        "linear-regression", ["SGD", "Adam"], steps=30, lr={"SGD": 30.0, "Adam": 0.1}
    )
    sgd = result.runs_of("SGD")[0]
    assert sgd.diverged and math.isinf(sgd.final_loss)
    assert result.ranking() == ["Adam", "SGD"]
    assert lab.report.comparison_rows(result)[1][3] == "diverged"


def test_trajectories_follow_the_point() -> None:
    result = lab.compare("rosenbrock", ["Adam"], steps=25, lr=0.01)
    run = result.runs[0]
    assert run.trajectory[0] == pytest.approx((-1.5, 2.0))
    assert len(run.trajectory) == 26
    point = torch.tensor(run.trajectory[-1])
    assert problems.rosenbrock_surface(point[0], point[1]).item() == pytest.approx(
        run.final_loss, rel=1e-5
    )


def test_options_reach_the_optimizer() -> None:
    plain = lab.compare("linear-regression", ["SGD"], steps=20, lr=0.01)
    momentum = lab.compare(
        "linear-regression", ["SGD"], steps=20, lr=0.01, options={"SGD": {"momentum": 0.9}}
    )
    assert momentum.runs[0].losses[2:] != plain.runs[0].losses[2:]
    assert momentum.runs[0].final_loss < plain.runs[0].final_loss


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"problem": "nope"}, "unknown problem 'nope': choose from linear-regression"),
        ({"optimizers": ["Adam", "Nosuch"]}, "unknown optimizer 'Nosuch': choose from SGD"),
        ({"optimizers": []}, "unknown optimizer (none given)"),
        ({"lr": -1.0}, "invalid lr -1.0: expected 'auto' or a finite number > 0"),
        ({"lr": "fast"}, "invalid lr 'fast'"),
        ({"lr": math.nan}, "invalid lr nan"),
        ({"lr": {"SGD": 0.1}}, "lr has no value for Adam"),
        ({"steps": 0}, "invalid steps 0: expected a whole number >= 1"),
        ({"seeds": 1.5}, "invalid seeds 1.5"),
        ({"options": {"Adamax": {}}}, "options given for Adamax, not among SGD, Adam"),
        ({"problem": "fastoptim:SGD_missing"}, "cannot load problem 'fastoptim:SGD_missing'"),
        ({"problem": "fastoptim:__version__"}, "problem 'fastoptim:__version__' is a str"),
        ({"problem": "/no/such.py:make"}, "cannot load problem '/no/such.py:make'"),
    ],
)
def test_compare_rejects_bad_arguments(arguments: dict, message: str) -> None:
    call = {"problem": "linear-regression", "optimizers": ["SGD", "Adam"], "steps": 5}
    call.update(arguments)
    problem = call.pop("problem")
    with pytest.raises(ValueError) as error:
        lab.compare(problem, **call)
    assert message in str(error.value)


USER_PROBLEM = """
import torch
from fastoptim.lab import Problem, Task


def make(seed):
    torch.manual_seed(seed)
    w = torch.randn(3, requires_grad=True)
    return Task(params=[w], loss=lambda step: ((w - 1) ** 2).sum())


bowl = Problem("bowl", "a bowl", make, steps=30, target_loss=1e-3)
"""


def test_user_problems_from_a_file_a_module_and_a_function(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_problems.py").write_text(USER_PROBLEM)
    from_file = lab.load_problem(f"{tmp_path / 'my_problems.py'}:bowl")
    assert from_file.name == "bowl" and from_file.steps == 30
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = lab.load_problem("my_problems:make")
    assert from_module.name == "make"
    result = lab.compare(from_file, ["Adam"], lr=0.1)
    assert result.steps == 30 and result.runs[0].final_loss < 3
    function = lab.compare(from_module.make, ["SGD"], steps=50, lr=0.1)
    assert function.runs[0].final_loss < 1e-3


@pytest.fixture(scope="module")
def linear_regression_lrs() -> dict[str, float]:
    """Known good lrs on the linear regression: the sweep's choice for each optimizer."""
    return lab.compare("linear-regression").lrs


@pytest.mark.parametrize("name", lab.OPTIMIZERS)
def test_lr_find_lands_near_a_known_good_lr(name: str, linear_regression_lrs) -> None:
    good = linear_regression_lrs[name]
    # The known good lr is good: it reaches the target loss within the problem's budget.
    assert lab.train(problems.PROBLEMS["linear-regression"], name, good, 200, 0).steps_to_target
    # Adadelta's lr scales unit-corrected steps: it needs a range past the default 10.
    result = lab.lr_find("linear-regression", name, max_lr=100.0)
    assert good / 10 <= result.suggestion <= good * 10
    assert result.suggestion == pytest.approx(result.lrs[result.best] / 10)
    assert result.best >= result.burn_in == 10


def test_lr_find_schedule_smoothing_and_stop() -> None:
    result = lab.lr_find("linear-regression", "SGD", steps=50, min_lr=1e-4, max_lr=100.0)
    assert result.lrs[0] == pytest.approx(1e-4)
    ratio = (100.0 / 1e-4) ** (1 / 49)
    assert all(
        b / a == pytest.approx(ratio) for a, b in zip(result.lrs[:-1], result.lrs[1:], strict=True)
    )
    assert result.smoothed[0] == pytest.approx(result.losses[0])
    average = 0.0
    for i, loss in enumerate(result.losses):
        average = 0.9 * average + 0.1 * loss
        assert result.smoothed[i] == pytest.approx(average / (1 - 0.9 ** (i + 1)))
    # SGD diverges above lr 1 here: the test stops early, once 4x above the lowest.
    assert len(result.lrs) < 50
    assert result.smoothed[-1] > 4 * min(result.smoothed[result.burn_in :])
    assert not result.still_falling


def test_lr_find_burn_in_ignores_early_spikes() -> None:
    def make(seed: int) -> lab.Task:
        w = torch.zeros(1, requires_grad=True)
        # A bowl whose loss spikes on steps 3-7, as a model's can while state warms up.
        return lab.Task([w], lambda step: ((w - 3) ** 2).sum() + (1e3 if 3 <= step < 8 else 0))

    without = lab.lr_find(make, "Adam", steps=60, min_lr=1e-3, max_lr=10.0, burn_in=0.0)
    assert len(without.lrs) == 4 and without.best < 3  # fooled: stopped at the spike
    result = lab.lr_find(make, "Adam", steps=60, min_lr=1e-3, max_lr=10.0, burn_in=0.2)
    assert result.burn_in == 12
    assert len(result.lrs) > 30 and result.best >= 12
    assert result.suggestion > 100 * without.suggestion


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"optimizer": "nosuch"}, "unknown optimizer 'nosuch'"),
        ({"steps": 5}, "invalid steps 5: expected a whole number >= 10"),
        ({"min_lr": 0.0}, "invalid lr 0.0"),
        ({"min_lr": 1.0, "max_lr": 0.5}, "min_lr 1.0 must be below max_lr 0.5"),
        ({"burn_in": 1.0}, "invalid burn_in 1.0"),
        ({"smoothing": -0.1}, "invalid smoothing -0.1"),
        ({"min_lr": 1e5, "max_lr": 1e6}, "was not finite within the burn-in"),
    ],
)
def test_lr_find_rejects_bad_arguments(arguments: dict, message: str) -> None:
    call = {"optimizer": "SGD", **arguments}
    with pytest.raises(ValueError) as error:
        lab.lr_find("linear-regression", call.pop("optimizer"), **call)
    assert message in str(error.value)


def test_report_files_are_complete_and_self_contained(tmp_path) -> None:
    comparisons = [
        lab.compare("saddle", ["SGD", "RMSprop"], steps=20, seeds=2),
        lab.compare("digits-logistic", ["Adam"], steps=20, lr=0.01),
    ]
    finds = [lab.lr_find("linear-regression", "Adam", steps=20)]
    report = lab.write_report(tmp_path / "new" / "dir", comparisons, finds)
    out = report.parent
    assert report.name == "report.html"
    expected = {
        "report.html",
        "results.json",
        "results.csv",
        "saddle-loss.png",
        "saddle-trajectories.png",
        "saddle-lr-sweep.png",
        "digits-logistic-loss.png",
        "digits-logistic-accuracy.png",
        "lr-find-linear-regression-Adam.png",
    }
    assert {path.name for path in out.iterdir()} == expected
    for png in out.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = parse_report(report)
    assert len(page.images) == 6
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.references == page.images  # nothing but the embedded images is referenced
    text = report.read_text()
    assert "± " in text and "saddle" in text and "Suggested lr" in text
    results = strict_json(out / "results.json")
    assert [c["problem"] for c in results["comparisons"]] == ["saddle", "digits-logistic"]
    assert results["comparisons"][0]["standings"][0]["rank"] == 1
    assert results["lr_finds"][0]["suggestion"] == finds[0].suggestion
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 5
    assert {row["optimizer"] for row in rows} == {"SGD", "RMSprop", "Adam"}
    assert rows[0]["rank"] in {"1", "2"} and float(rows[0]["final_loss"]) >= 0


def test_report_refuses_an_unwritable_directory(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write to"):
        lab.write_report(blocker / "out", [])


def test_demo_command_writes_the_report(tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["demo", "--scale", "0.02", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "The tutorial's examples" in printed and "rank" in printed
    assert "suggested lr" in printed and f"report: {out / 'report.html'}" in printed
    page = parse_report(out / "report.html")
    assert all(src.startswith("data:image/png;base64,") for src in page.references)
    results = strict_json(out / "results.json")
    assert [c["problem"] for c in results["comparisons"]] == list(problems.PROBLEMS)
    assert [row["optimizer"] for row in results["tutorial"]] == [
        "SGD",
        "Adam",
        "Adagrad",
        "Adadelta",
        "AdamW",
        "Adamax",
        "RMSprop",
    ]
    assert len(results["lr_finds"]) == 2
    for name in [
        "rosenbrock-trajectories.png",
        "digits-mlp-accuracy.png",
        "sparse-features-loss.png",
        "lr-find-linear-regression-SGD.png",
    ]:
        assert (out / name).is_file()


def test_compare_command(tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--problem",
            "saddle",
            "--optimizers",
            "sgd,ADAM",
            "--steps",
            "15",
            "--lr",
            "0.1",
            "--seeds",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "saddle (15 steps)" in printed and "SGD" in printed and "Adam" in printed
    with (out / "results.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(row["optimizer"], row["seed"], row["lr"]) for row in rows] == [
        ("SGD", "0", "0.1"),
        ("SGD", "1", "0.1"),
        ("Adam", "0", "0.1"),
        ("Adam", "1", "0.1"),
    ]


def test_compare_command_quiet_prints_nothing(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "compare",
                "--problem",
                "linear-regression",
                "--optimizers",
                "adam",
                "--steps",
                "10",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (tmp_path / "report.html").is_file()


def test_lr_find_command(tmp_path, capsys) -> None:
    command = ["lr-find", "--problem", "linear-regression", "--optimizer", "sgd"]
    assert main([*command, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "linear-regression, SGD: suggested lr" in printed
    assert (tmp_path / "lr-find-linear-regression-SGD.png").is_file()
    assert main([*command, "--quiet", "--out", str(tmp_path)]) == 0
    suggestion = float(capsys.readouterr().out)  # printed with 6 significant digits
    assert suggestion == pytest.approx(lab.lr_find("linear-regression", "SGD").suggestion, 1e-5)


def test_user_problem_on_the_command_line(tmp_path, capsys) -> None:
    (tmp_path / "mine.py").write_text(USER_PROBLEM)
    assert (
        main(
            [
                "compare",
                "--problem",
                f"{tmp_path / 'mine.py'}:bowl",
                "--optimizers",
                "adam",
                "--lr",
                "0.1",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "bowl (30 steps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--problem", "nope"], "fastoptim compare: error: unknown problem 'nope'"),
        (
            ["lr-find", "--problem", "nope", "--optimizer", "sgd"],
            "fastoptim lr-find: error: unknown problem 'nope'",
        ),
        (
            ["compare", "--problem", "saddle", "--optimizers", "sgd,nosuch"],
            "unknown 'nosuch'; choose from SGD, Adam",
        ),
        (
            ["compare", "--problem", "saddle", "--lr", "-1"],
            "invalid lr '-1': expected 'auto' or a finite number > 0",
        ),
        (["compare", "--problem", "saddle", "--lr", "fast"], "invalid lr 'fast'"),
        (["compare", "--problem", "saddle", "--steps", "0"], "invalid value '0'"),
        (["demo", "--problems", "mnist"], "unknown 'mnist'; choose from linear-regression"),
        (
            [
                "lr-find",
                "--problem",
                "saddle",
                "--optimizer",
                "sgd",
                "--min-lr",
                "1",
                "--max-lr",
                "0.1",
            ],
            "fastoptim lr-find: error: min_lr 1.0 must be below max_lr 0.1",
        ),
    ],
)
def test_command_errors_are_one_clear_line(argv: list[str], message: str, capsys, tmp_path) -> None:
    try:
        code = main([*argv, "--out", str(tmp_path)])
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""


def test_command_refuses_an_unwritable_out(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv in (
        ["demo"],
        ["compare", "--problem", "saddle"],
        ["lr-find", "--problem", "saddle", "--optimizer", "adam"],
    ):
        assert main([*argv, "--out", str(blocker / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"error: cannot write to {blocker / 'out'}" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["demo", "compare", "lr-find", "tutorial", "bench"])
def test_every_subcommand_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert f"usage: fastoptim {command}" in capsys.readouterr().out


def test_python_module_entry_point_runs_demo_help() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "fastoptim", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--scale" in done.stdout


def test_progress_reports_every_run_up_to_the_total() -> None:
    calls: list[tuple[str, int, int]] = []
    lab.compare("saddle", ["SGD", "Adam"], steps=12, seeds=2, progress=lambda *c: calls.append(c))
    total = 2 * (2 * 12 + len(SWEEP_LRS) * 10)
    assert all(call[2] == total for call in calls)
    done = [call[1] for call in calls]
    assert done == sorted(done) and done[-1] == total
    assert calls[0][0] == "saddle: SGD lr sweep" and calls[-1][0] == "saddle: done"


def test_progress_bar_draws_on_a_terminal_only() -> None:
    import io

    from rich.console import Console

    from fastoptim.lab import console

    for terminal, drawn in ((True, True), (False, False)):
        screen = Console(file=io.StringIO(), force_terminal=terminal, width=100)
        with console.progress_bar(screen, quiet=False) as progress:
            assert (progress is not None) == drawn
            if progress:
                progress("saddle: SGD", 5, 10)
        assert bool(screen.file.getvalue()) == drawn
    with console.progress_bar(Console(force_terminal=True), quiet=True) as progress:
        assert progress is None


def test_smoothed_is_a_moving_geometric_mean() -> None:
    import numpy as np

    from fastoptim.lab.plots import smoothed

    values = np.array([[1.0, 100.0, 1e-2, 1e4], [2.0, 2.0, 2.0, 2.0]])
    assert np.allclose(smoothed(values, 2), [[10.0, 1.0, 10.0], [2.0, 2.0, 2.0]])
    assert smoothed(values, 1) is values
