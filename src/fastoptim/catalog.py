"""The one list of fastoptim's optimizers: everything that lists optimizers reads it.

``fastoptim`` exports each class, ``create_optimizer`` finds them by name, the lab compares
them, the bench times them against torch.optim and the CLI offers them from ``OPTIMIZERS``.
(The module is not called ``registry`` because ``fastoptim.registry()`` is the public
function that lists their defaults.)
"""

from dataclasses import dataclass, field
from typing import Any

import torch

from fastoptim.algorithms.adadelta import Adadelta
from fastoptim.algorithms.adagrad import Adagrad
from fastoptim.algorithms.adam import Adam
from fastoptim.algorithms.adamax import Adamax
from fastoptim.algorithms.adamw import AdamW
from fastoptim.algorithms.nadam import NAdam
from fastoptim.algorithms.radam import RAdam
from fastoptim.algorithms.rmsprop import RMSprop
from fastoptim.algorithms.sgd import SGD
from fastoptim.optimizer import BaseOptimizer


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer: its class, torch.optim's class of the same algorithm (None where torch
    has none), whether torch has a fused CPU kernel for it, the bytes an ideal step moves per
    parameter element in units of the element size (reads + writes of param, grad and state,
    with the bench's options), and the options the bench and the lab use."""

    cls: type[BaseOptimizer]
    torch_cls: type[torch.optim.Optimizer] | None
    torch_fused: bool
    bytes_per_element: int
    bench_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The class name, as users write it (``fastoptim.Adam``)."""
        return self.cls.__name__


OPTIMIZERS: tuple[OptimizerInfo, ...] = (
    OptimizerInfo(SGD, torch.optim.SGD, True, 5, {"lr": 0.01, "momentum": 0.9}),
    OptimizerInfo(Adam, torch.optim.Adam, True, 7, {"lr": 1e-3}),
    OptimizerInfo(AdamW, torch.optim.AdamW, True, 7, {"lr": 1e-3}),
    OptimizerInfo(Adagrad, torch.optim.Adagrad, True, 5, {"lr": 0.01}),
    OptimizerInfo(Adadelta, torch.optim.Adadelta, False, 7, {"lr": 1.0}),
    OptimizerInfo(Adamax, torch.optim.Adamax, False, 7, {"lr": 2e-3}),
    OptimizerInfo(RMSprop, torch.optim.RMSprop, False, 5, {"lr": 0.01}),
    OptimizerInfo(NAdam, torch.optim.NAdam, False, 7, {"lr": 2e-3}),
    OptimizerInfo(RAdam, torch.optim.RAdam, False, 7, {"lr": 1e-3}),
)

NAMES: list[str] = [info.name for info in OPTIMIZERS]


def info(name: str) -> OptimizerInfo:
    """The entry of optimizer ``name`` (case-insensitive); ``ValueError`` listing the valid
    names otherwise."""
    found = {entry.name.lower(): entry for entry in OPTIMIZERS}.get(
        name.lower() if isinstance(name, str) else None
    )
    if found is None:
        raise ValueError(f"unknown optimizer {name!r}: choose from {', '.join(NAMES)}")
    return found
