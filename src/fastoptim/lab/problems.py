"""The lab's problems: what the optimizers are compared on, and how to add your own.

A :class:`Problem` has a name, a description, a step budget, an optional target loss and a
``make(seed)`` function that builds a fresh, seeded :class:`Task`: the parameters to train and
the loss at each step. Everything else (test accuracy, a 2-D position for trajectories, the
whole-training-set loss) is optional. A problem of your own is a ``Problem`` or just a
``make(seed) -> Task`` function; on the command line name it ``package.module:attribute`` or
``path/to/file.py:attribute``::

    def make(seed: int) -> Task:
        torch.manual_seed(seed)
        w = torch.zeros(3, requires_grad=True)
        return Task(params=[w], loss=lambda step: ((w - 1) ** 2).sum())

    my_problem = Problem("quadratic", "a bowl", make, steps=100, target_loss=1e-3)

``make`` may use torch's global random generator: the lab runs it inside a forked one.
"""

import functools
import importlib
import importlib.util
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Task:
    """One seeded instance of a problem.

    ``params``: what the optimizer trains (tensors or param-group dicts). ``loss(step)``: the
    training loss at step ``step`` (its minibatch, or all the data), with a graph to
    differentiate. Optional: ``full_loss()`` the loss on the whole training set (default:
    ``loss(steps)`` after the last step, without gradient), ``test_accuracy()`` a fraction
    in [0, 1], and
    ``position()`` the (x, y) point of a 2-D problem.
    """

    params: Iterable[Any]
    loss: Callable[[int], torch.Tensor]
    full_loss: Callable[[], float] | None = None
    test_accuracy: Callable[[], float] | None = None
    position: Callable[[], tuple[float, float]] | None = None


@dataclass
class Problem:
    """A named problem: ``make(seed)`` builds a :class:`Task`; ``steps`` is the default
    budget; ``target_loss`` (if any) is the loss that counts as solved. 2-D problems give the
    ``surface(x, y)`` they minimize and ``bounds`` (x_min, x_max, y_min, y_max) to draw it."""

    name: str
    description: str
    make: Callable[[int], Task]
    steps: int = 200
    target_loss: float | None = None
    surface: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    bounds: tuple[float, float, float, float] | None = None


def linear_regression(seed: int) -> Task:
    """The tutorial's example: fit t = A x + b + noise (N=100, noise 0.1) with nn.Linear(1, 1)."""
    torch.manual_seed(seed)
    x = torch.randn(100, 1)
    t = 5.1213945 * x + 3.2047893 + torch.randn(100, 1) * 0.1
    model = nn.Linear(1, 1)
    return Task(model.parameters(), lambda step: nn.functional.mse_loss(model(x), t))


def rosenbrock_surface(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2: a curved valley, minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rastrigin_surface(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """20 + x^2 - 10 cos(2 pi x) + y^2 - 10 cos(2 pi y): many local minima, 0 at (0, 0)."""
    return 20 + x**2 - 10 * torch.cos(2 * math.pi * x) + y**2 - 10 * torch.cos(2 * math.pi * y)


def beale_surface(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2: flat plateaus and steep
    walls, minimum 0 at (3, 0.5)."""
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def saddle_surface(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x^2 - y^2 + y^4 / 4 + 1: a saddle point at (0, 0) between minima 0 at (0, +-sqrt(2))."""
    return x**2 - y**2 + y**4 / 4 + 1


def surface_problem(
    name: str,
    description: str,
    surface: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    start: tuple[float, float],
    bounds: tuple[float, float, float, float],
    steps: int,
    target_loss: float = 1e-3,
) -> Problem:
    """A 2-D problem: minimize ``surface`` from the point ``start`` (the same for every
    seed); trajectories are drawn within ``bounds``."""

    def make(seed: int) -> Task:
        point = torch.tensor(start, requires_grad=True)
        return Task(
            [point],
            lambda step: surface(point[0], point[1]),
            position=lambda: (point[0].item(), point[1].item()),
        )

    return Problem(name, description, make, steps, target_loss, surface, bounds)


@functools.cache
def digits_split() -> tuple[torch.Tensor, ...]:
    """scikit-learn's bundled digits (8x8 images, 10 classes): a fixed stratified 75/25
    train/test split, features standardized with the training set's mean and deviation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    x_train, x_test = (torch.tensor(x, dtype=torch.float32) for x in (x_train, x_test))
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-3)
    return (
        (x_train - mean) / std,
        torch.tensor(y_train),
        (x_test - mean) / std,
        torch.tensor(y_test),
    )


def classifier_task(model: nn.Module, seed: int, batch_size: int = 128) -> Task:
    """Train ``model`` on the digits training set in shuffled minibatches (seeded order)."""
    x_train, y_train, x_test, y_test = digits_split()
    order = torch.Generator().manual_seed(seed)
    batches: list[torch.Tensor] = []

    def batch(step: int) -> torch.Tensor:
        while len(batches) <= step:
            batches.extend(torch.randperm(len(x_train), generator=order).split(batch_size))
        return batches[step]

    def loss(step: int) -> torch.Tensor:
        rows = batch(step)
        return nn.functional.cross_entropy(model(x_train[rows]), y_train[rows])

    @torch.no_grad()
    def full_loss() -> float:
        return nn.functional.cross_entropy(model(x_train), y_train).item()

    @torch.no_grad()
    def test_accuracy() -> float:
        return (model(x_test).argmax(1) == y_test).float().mean().item()

    return Task(model.parameters(), loss, full_loss, test_accuracy)


def digits_logistic(seed: int) -> Task:
    """Multinomial logistic regression (nn.Linear(64, 10)) on the digits."""
    torch.manual_seed(seed)
    return classifier_task(nn.Linear(64, 10), seed)


def digits_mlp(seed: int) -> Task:
    """A 64-64-10 ReLU network on the digits."""
    torch.manual_seed(seed)
    return classifier_task(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), seed)


@functools.cache
def sparse_data() -> tuple[torch.Tensor, ...]:
    """6,000 examples of 500 binary features, feature j present with probability
    0.5 / (j + 1)^0.8 (a few common, most rare), labelled by the sign of a weighted sum whose
    rare features weigh as much as common ones; split 5,000 train / 1,000 test. Fixed data."""
    generator = torch.Generator().manual_seed(0)
    frequency = 0.5 / torch.arange(1, 501, dtype=torch.float32) ** 0.8
    x = (torch.rand(6000, 500, generator=generator) < frequency).float()
    weights = torch.randn(500, generator=generator) * 2
    score = x @ weights
    y = (score > score.median()).float()
    return x[:5000], y[:5000], x[5000:], y[5000:]


def sparse_features(seed: int) -> Task:
    """Logistic regression on :func:`sparse_data`, all training examples each step. Rare
    features get rare, small gradients: SGD learns them slowly, adaptive methods do not."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = sparse_data()
    model = nn.Linear(500, 1)

    def loss(step: int) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(model(x_train)[:, 0], y_train)

    @torch.no_grad()
    def test_accuracy() -> float:
        return ((model(x_test)[:, 0] > 0).float() == y_test).float().mean().item()

    return Task(model.parameters(), loss, test_accuracy=test_accuracy)


PROBLEMS: dict[str, Problem] = {
    problem.name: problem
    for problem in [
        Problem(
            "linear-regression",
            "The tutorial's linear regression: fit t = 5.12 x + 3.20 + noise (N=100, noise "
            "0.1, mean squared error; the noise alone leaves about 0.01).",
            linear_regression,
            steps=200,
            target_loss=0.02,
        ),
        surface_problem(
            "rosenbrock",
            "Rosenbrock's banana valley from (-1.5, 2): minimum 0 at (1, 1).",
            rosenbrock_surface,
            start=(-1.5, 2.0),
            bounds=(-2.0, 2.0, -1.0, 3.0),
            steps=500,
        ),
        surface_problem(
            "rastrigin",
            "Rastrigin's egg crate from (-2.3, 2.6): local minima everywhere, global 0 at (0, 0).",
            rastrigin_surface,
            start=(-2.3, 2.6),
            bounds=(-4.0, 4.0, -4.0, 4.0),
            steps=300,
            target_loss=1e-2,
        ),
        surface_problem(
            "beale",
            "Beale's function from (1, 1.4): flat plateaus, steep walls, minimum 0 at (3, 0.5).",
            beale_surface,
            start=(1.0, 1.4),
            bounds=(-1.0, 4.5, -1.5, 2.0),
            steps=500,
        ),
        surface_problem(
            "saddle",
            "Escaping a saddle: x^2 - y^2 + y^4/4 + 1 from (1, 0.001), next to the saddle "
            "point (0, 0); minima 0 at (0, +-1.41).",
            saddle_surface,
            start=(1.0, 0.001),
            bounds=(-1.5, 1.5, -2.0, 2.0),
            steps=200,
        ),
        Problem(
            "digits-logistic",
            "Logistic regression on scikit-learn's digits (1,347 train / 450 test images of "
            "8x8 pixels, 10 classes), minibatches of 128, cross-entropy.",
            digits_logistic,
            steps=300,
            target_loss=0.1,
        ),
        Problem(
            "digits-mlp",
            "A 64-64-10 ReLU network on scikit-learn's digits, minibatches of 128.",
            digits_mlp,
            steps=300,
            target_loss=0.05,
        ),
        Problem(
            "sparse-features",
            "Logistic regression with 500 binary features, most of them rare (synthetic, "
            "5,000 train / 1,000 test): where adaptive methods differ from SGD.",
            sparse_features,
            steps=300,
            target_loss=0.3,
        ),
    ]
}


def load_problem(spec: "str | Problem | Callable[[int], Task]") -> Problem:
    """A problem from a built-in name, ``module:attribute``, ``file.py:attribute``, a
    ``Problem`` or a ``make(seed) -> Task`` function. Raises ``ValueError`` saying what is
    allowed when the name is unknown or the attribute is neither."""
    if isinstance(spec, Problem):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        return Problem(name, f"user problem {name}", spec)
    if spec in PROBLEMS:
        return PROBLEMS[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown problem {spec!r}: choose from {', '.join(PROBLEMS)}, or give "
            "'module:attribute' or 'file.py:attribute' for your own"
        )
    where, attribute = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            location = importlib.util.spec_from_file_location(Path(where).stem, where)
            if location is None or location.loader is None or not Path(where).is_file():
                raise ImportError(f"no file {where}")
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        found = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load problem {spec!r}: {error}") from error
    if isinstance(found, Problem) or callable(found):
        return load_problem(found)
    raise ValueError(
        f"problem {spec!r} is a {type(found).__name__}: expected a fastoptim.lab.Problem or "
        "a make(seed) -> Task function"
    )
