"""The tutorial reproduction: `fastoptim tutorial`, examples/tutorial.py and the lab module."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastoptim import cli
from fastoptim.lab import tutorial

ROOT = Path(__file__).resolve().parents[1]


def learned_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("learned ")]


def test_tutorial_prints_a_and_b_for_every_iteration_of_all_seven(capsys) -> None:
    assert cli.main(["tutorial", "--seed", "4"]) == 0
    output = capsys.readouterr().out
    for name, _, _ in tutorial.EXAMPLES:
        assert f"=== {name}:" in output
    lines = learned_lines(output)
    assert len(lines) == 7 * 10 * 2
    assert lines[0].startswith("learned A = ") and lines[1].startswith("learned b = ")
    float(lines[0].removeprefix("learned A = "))


def test_tutorial_is_repeatable_under_a_seed(capsys) -> None:
    outputs = []
    for seed in ("1", "1", "2"):
        cli.main(["tutorial", "--seed", seed])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_tutorial_learns_what_torch_optim_learns(monkeypatch) -> None:
    """The default (fused) path gives the tutorial torch.optim's numbers, to float32 precision.

    Tolerance: 1e-5 relative, the fused-kernel bound in float32 (see tests/test_kernels.py).
    """
    ours = {name: tutorial.train(name, a, b, seed=5) for name, a, b in tutorial.EXAMPLES}
    monkeypatch.setattr(tutorial, "optim", torch.optim)
    theirs = {name: tutorial.train(name, a, b, seed=5) for name, a, b in tutorial.EXAMPLES}
    for name in ours:
        flat_ours = [value for pair in ours[name] for value in pair]
        flat_theirs = [value for pair in theirs[name] for value in pair]
        assert flat_ours == pytest.approx(flat_theirs, rel=1e-5, abs=1e-6)


def test_sgd_example_moves_towards_the_true_line() -> None:
    name, true_a, true_b = tutorial.EXAMPLES[0]
    learned = tutorial.train(name, true_a, true_b, seed=0)
    errors = [abs(a - true_a) + abs(b - true_b) for a, b in learned]
    assert errors == sorted(errors, reverse=True)


@pytest.mark.parametrize("bad", ["-1", "x", str(2**63)])
def test_bad_seed_is_a_clear_usage_error(bad: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tutorial", "--seed", bad])
    assert exit_info.value.code == 2
    assert f"invalid seed '{bad}'" in capsys.readouterr().err


def test_example_script_and_module_entry_point_run() -> None:
    script = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py"), "--seed", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    module = subprocess.run(
        [sys.executable, "-m", "fastoptim", "tutorial", "--seed", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout == module.stdout
    assert len(learned_lines(script.stdout)) == 140


def test_help_lists_the_tutorial(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "tutorial" in capsys.readouterr().out
