"""Train one problem with several optimizers, each at a learning rate that suits it, and rank
them. Runs are seeded: the same arguments give the same losses and the same ranking."""

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import fastoptim
from fastoptim.catalog import NAMES
from fastoptim.lab.problems import Problem, Task, load_problem

# The optimizers a comparison runs by default: all of fastoptim's (fastoptim.catalog).
OPTIMIZERS = NAMES

# The learning rates `lr="auto"` tries: half decades from 1e-4 to about 30.
SWEEP_LRS = [10 ** (k / 2 - 4) for k in range(12)]

# Called as progress(description, steps_done, steps_total) while a comparison runs.
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class Run:
    """One optimizer trained on one seeded task.

    ``losses``: the training loss before each step. ``final_loss``: the whole training set's
    loss after the last step (inf if the run diverged). ``accuracy``: (step, test accuracy)
    pairs along the way, where the problem has one. ``trajectory``: the (x, y) points of a
    2-D problem, from the start to after the last step. ``seconds_per_step``: the median wall
    time of a training step (forward, backward and the optimizer's step).
    """

    optimizer: str
    seed: int
    lr: float
    losses: list[float]
    final_loss: float
    diverged: bool
    steps_to_target: int | None
    seconds_per_step: float
    test_accuracy: float | None = None
    accuracy: list[tuple[int, float]] = field(default_factory=list)
    trajectory: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Standing:
    """An optimizer's result over all seeds: means (and deviations) of its runs' numbers."""

    rank: int
    optimizer: str
    lr: float
    final_loss: float
    final_loss_std: float
    test_accuracy: float | None
    steps_to_target: float | None
    seconds_per_step: float
    diverged: int


@dataclass
class Comparison:
    """The result of :func:`compare`: every run, the lrs chosen and how (``sweeps``: for
    ``lr="auto"``, each optimizer's (lr, score) pairs), and the ranking."""

    problem: Problem
    steps: int
    seeds: list[int]
    lrs: dict[str, float]
    sweeps: dict[str, list[tuple[float, float]]]
    runs: list[Run]

    def runs_of(self, optimizer: str) -> list[Run]:
        """The runs of ``optimizer``, one per seed."""
        return [run for run in self.runs if run.optimizer == optimizer]

    def standings(self) -> list[Standing]:
        """One row per optimizer, best first: those that reached the problem's target loss
        on every seed by mean steps to get there, then the rest; ties by mean final loss
        (diverged runs count as infinite), then name. Deterministic for fixed runs."""
        rows = []
        for optimizer in self.lrs:
            runs = self.runs_of(optimizer)
            losses = [run.final_loss for run in runs]
            accuracies = [run.test_accuracy for run in runs if run.test_accuracy is not None]
            reached = [run.steps_to_target for run in runs]
            rows.append(
                Standing(
                    rank=0,
                    optimizer=optimizer,
                    lr=self.lrs[optimizer],
                    final_loss=statistics.fmean(losses),
                    final_loss_std=statistics.pstdev(losses)
                    if all(map(math.isfinite, losses))
                    else math.nan,
                    test_accuracy=statistics.fmean(accuracies) if accuracies else None,
                    steps_to_target=statistics.fmean(reached)
                    if all(step is not None for step in reached)
                    else None,
                    seconds_per_step=statistics.median(run.seconds_per_step for run in runs),
                    diverged=sum(run.diverged for run in runs),
                )
            )

        def order(row: Standing) -> tuple[float, float, str]:
            reached = row.steps_to_target if row.steps_to_target is not None else math.inf
            loss = row.final_loss if math.isfinite(row.final_loss) else math.inf
            return (reached, loss, row.optimizer)

        rows.sort(key=order)
        for rank, row in enumerate(rows, 1):
            row.rank = rank
        return rows

    def ranking(self) -> list[str]:
        """The optimizers, best first (see :meth:`standings`)."""
        return [row.optimizer for row in self.standings()]

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready data."""
        return {
            "problem": self.problem.name,
            "description": self.problem.description,
            "steps": self.steps,
            "target_loss": self.problem.target_loss,
            "seeds": self.seeds,
            "lrs": self.lrs,
            "sweeps": {name: [list(pair) for pair in pairs] for name, pairs in self.sweeps.items()},
            "standings": [asdict(row) for row in self.standings()],
            "runs": [asdict(run) for run in self.runs],
        }


def check_optimizers(names: Sequence[str]) -> list[str]:
    """``names`` as fastoptim's class names (case-insensitive); ``ValueError`` listing the
    valid names for an unknown one or an empty list."""
    by_lower = {name.lower(): name for name in OPTIMIZERS}
    unknown = [name for name in names if name.lower() not in by_lower]
    if unknown or not names:
        raise ValueError(
            f"unknown optimizer {', '.join(map(repr, unknown)) or '(none given)'}: "
            f"choose from {', '.join(OPTIMIZERS)}"
        )
    return [by_lower[name.lower()] for name in names]


def check_lr(lr: object) -> None:
    """``ValueError`` unless ``lr`` is a finite number > 0."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"invalid lr {lr!r}: expected 'auto' or a finite number > 0")


def train(
    problem: Problem,
    optimizer: str,
    lr: float,
    steps: int,
    seed: int,
    options: dict[str, Any] | None = None,
    record: bool = True,
) -> Run:
    """Train a fresh ``problem.make(seed)`` task with ``fastoptim.<optimizer>`` at ``lr`` for
    ``steps`` steps. A non-finite loss ends the run as diverged. With ``record=False`` no test
    accuracy or trajectory is taken (for sweeps). torch's global random state is restored."""
    evaluate_every = max(1, steps // 20)
    losses: list[float] = []
    times: list[float] = []
    accuracy: list[tuple[int, float]] = []
    diverged = False
    with torch.random.fork_rng(devices=[]):
        task = problem.make(seed)
        opt = getattr(fastoptim, optimizer)(task.params, lr=lr, **(options or {}))
        trajectory = [task.position()] if record and task.position else []
        for step in range(steps):
            if record and task.test_accuracy and step % evaluate_every == 0:
                accuracy.append((step, task.test_accuracy()))
            started = time.perf_counter()
            opt.zero_grad()
            loss = task.loss(step)
            loss.backward()
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            opt.step()
            times.append(time.perf_counter() - started)
            losses.append(value)
            if trajectory:
                trajectory.append(task.position())
        if not diverged:
            final_loss = task.full_loss() if task.full_loss else _final_loss(task, steps)
            diverged = not math.isfinite(final_loss)
        if diverged:
            final_loss = math.inf
        test_accuracy = None
        if task.test_accuracy and record:
            test_accuracy = task.test_accuracy() if not diverged else 0.0
            accuracy.append((len(losses), test_accuracy))
    target = -math.inf if problem.target_loss is None else problem.target_loss
    reached = [step for step, value in enumerate(losses, 1) if value <= target]
    return Run(
        optimizer=optimizer,
        seed=seed,
        lr=lr,
        losses=losses,
        final_loss=final_loss,
        diverged=diverged,
        steps_to_target=reached[0] if reached else None,
        seconds_per_step=statistics.median(times[1:] or times or [math.nan]),
        test_accuracy=test_accuracy,
        accuracy=accuracy,
        trajectory=trajectory,
    )


@torch.no_grad()
def _final_loss(task: Task, steps: int) -> float:
    """The loss after training, for a task without ``full_loss``: ``loss(steps)``."""
    return task.loss(steps).item()


def sweep(
    problem: Problem,
    optimizer: str,
    steps: int,
    seed: int,
    options: dict[str, Any] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """The lr of :data:`SWEEP_LRS` with the lowest score after ``steps`` steps, and every
    (lr, score). Score: the mean training loss over the last quarter of the steps (inf if
    the run diverged), so a lucky last step does not win; ties go to the smaller lr."""
    scores = []
    for lr in SWEEP_LRS:
        run = train(problem, optimizer, lr, steps, seed, options, record=False)
        tail = run.losses[-max(1, steps // 4) :]
        score = math.inf if run.diverged else statistics.fmean(tail)
        scores.append((lr, score if math.isfinite(score) else math.inf))
    best = min(scores, key=lambda pair: pair[1])
    return best[0], scores


def compare(
    problem: "str | Problem | Callable[[int], Task]",
    optimizers: Sequence[str] = OPTIMIZERS,
    *,
    steps: int | None = None,
    lr: "str | float | dict[str, float]" = "auto",
    seeds: int = 1,
    seed: int = 0,
    options: dict[str, dict[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
) -> Comparison:
    """Train ``problem`` with each of ``optimizers`` (class names, case-insensitive) for
    ``steps`` steps (default: the problem's budget), on seeds ``seed`` .. ``seed + seeds - 1``.

    ``lr``: a number for all, a dict by optimizer name, or ``"auto"``: each optimizer's lr is
    chosen by :func:`sweep` over half the budget on the first seed. ``options``: extra
    constructor arguments by optimizer name, e.g. ``{"SGD": {"momentum": 0.9}}``.
    Raises ``ValueError`` naming the argument for an unknown problem or optimizer, a bad lr,
    steps or seeds.
    """
    problem = load_problem(problem)
    names = check_optimizers(list(optimizers))
    steps = problem.steps if steps is None else steps
    for argument, value in (("steps", steps), ("seeds", seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid {argument} {value!r}: expected a whole number >= 1")
    if isinstance(lr, dict):
        missing = [name for name in names if name not in lr]
        if missing:
            raise ValueError(f"lr has no value for {', '.join(missing)}")
        for value in lr.values():
            check_lr(value)
    elif lr != "auto":
        check_lr(lr)
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options given for {', '.join(unknown)}, not among {', '.join(names)}")

    sweep_steps = max(10, steps // 2)
    total = len(names) * (seeds * steps + (len(SWEEP_LRS) * sweep_steps if lr == "auto" else 0))
    done = 0
    lrs: dict[str, float] = {}
    sweeps: dict[str, list[tuple[float, float]]] = {}
    runs = []
    for name in names:
        if lr == "auto":
            if progress:
                progress(f"{problem.name}: {name} lr sweep", done, total)
            lrs[name], sweeps[name] = sweep(problem, name, sweep_steps, seed, options.get(name))
            done += len(SWEEP_LRS) * sweep_steps
        else:
            lrs[name] = lr[name] if isinstance(lr, dict) else float(lr)
        for run_seed in range(seed, seed + seeds):
            if progress:
                progress(f"{problem.name}: {name}", done, total)
            runs.append(train(problem, name, lrs[name], steps, run_seed, options.get(name)))
            done += steps
    if progress:
        progress(f"{problem.name}: done", done, total)
    return Comparison(problem, steps, list(range(seed, seed + seeds)), lrs, sweeps, runs)
