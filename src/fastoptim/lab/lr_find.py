"""The learning-rate range test: train once while the lr grows geometrically, and suggest
the lr a tenth of the one where the smoothed loss was lowest."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

import fastoptim
from fastoptim.lab.compare import check_lr, check_optimizers
from fastoptim.lab.problems import Problem, Task, load_problem


@dataclass
class LRFind:
    """The result of :func:`lr_find`: the lr and loss of every step taken, the loss smoothed
    (bias-corrected exponential average), the steps ignored at the start (``burn_in``), the
    step with the lowest smoothed loss after them (``best``) and the suggested lr."""

    problem: str
    optimizer: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    burn_in: int
    best: int
    suggestion: float

    @property
    def still_falling(self) -> bool:
        """Whether the loss was lowest at the last lr: the range ended before the loss turned
        up, so the suggestion is only a lower bound (raise ``max_lr``)."""
        return self.best == len(self.lrs) - 1

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-ready data."""
        return {**asdict(self), "still_falling": self.still_falling}


def lr_find(
    problem: "str | Problem | Callable[[int], Task]",
    optimizer: str,
    *,
    steps: int = 100,
    min_lr: float = 1e-6,
    max_lr: float = 10.0,
    burn_in: float = 0.1,
    smoothing: float = 0.9,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> LRFind:
    """Range test of ``fastoptim.<optimizer>`` on a fresh ``problem`` task: step ``i`` of
    ``steps`` uses lr = min_lr * (max_lr / min_lr)^(i / (steps - 1)). The loss is smoothed as
    s_i = (a s_{i-1} + (1 - a) loss_i) / (1 - a^(i+1)) with a = ``smoothing``. The first
    ``burn_in`` fraction of the steps is ignored (early spikes while the optimizer's state
    warms up do not count); the test stops once the smoothed loss exceeds 4x its lowest value
    after the burn-in, or is not finite. Suggestion: a tenth of the lr at the lowest smoothed
    loss, where the loss still falls steadily.
    """
    problem = load_problem(problem)
    (name,) = check_optimizers([optimizer])
    check_lr(min_lr)
    check_lr(max_lr)
    if not min_lr < max_lr:
        raise ValueError(f"min_lr {min_lr} must be below max_lr {max_lr}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
        raise ValueError(f"invalid steps {steps!r}: expected a whole number >= 10")
    if not 0 <= burn_in < 1:
        raise ValueError(f"invalid burn_in {burn_in!r}: expected a fraction in [0, 1)")
    if not 0 <= smoothing < 1:
        raise ValueError(f"invalid smoothing {smoothing!r}: expected a number in [0, 1)")

    ratio = max_lr / min_lr
    schedule = [min_lr * ratio ** (i / (steps - 1)) for i in range(steps)]
    first = int(burn_in * steps)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    with torch.random.fork_rng(devices=[]):
        task = problem.make(seed)
        opt = getattr(fastoptim, name)(task.params, lr=min_lr, **(options or {}))
        for step, lr in enumerate(schedule):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            loss = task.loss(step)
            value = loss.item()
            if not math.isfinite(value):
                break
            loss.backward()
            opt.step()
            average = smoothing * average + (1 - smoothing) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - smoothing ** (step + 1)))
            lowest = min(smoothed[first:], default=math.inf)
            if step >= first and smoothed[-1] > 4 * lowest:
                break
    if len(smoothed) <= first:
        raise ValueError(
            f"the loss of {problem.name} with {name} was not finite within the burn-in "
            f"(lr up to {lrs[-1] if lrs else min_lr:.3g}): lower min_lr"
        )
    best = min(range(first, len(smoothed)), key=lambda i: smoothed[i])
    return LRFind(problem.name, name, lrs, losses, smoothed, first, best, lrs[best] / 10)
