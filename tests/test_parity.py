"""Bit-for-bit parity of the reference path (fused=False) with torch.optim's for-loop path."""

import itertools
from typing import Any

import pytest
import torch
from _parity import make_pair, step_pair


def grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the given option values."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def sgd_options() -> list[dict[str, Any]]:
    options = grid(
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.5],
        nesterov=[False, True],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    )
    valid = [o for o in options if not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0)]
    return [{"lr": 0.05, **o} for o in valid]


OPTION_GRIDS: dict[str, list[dict[str, Any]]] = {
    "SGD": sgd_options(),
    "Adam": grid(
        lr=[0.01],
        amsgrad=[False, True],
        weight_decay=[0.0, 0.1],
        decoupled_weight_decay=[False, True],
        maximize=[False, True],
    )
    + grid(betas=[(0.5, 0.9), (0.0, 0.0)], eps=[1e-8, 0.1]),
    "AdamW": grid(lr=[0.01], amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])
    + grid(betas=[(0.5, 0.9)], eps=[1e-3]),
    "Adagrad": grid(
        lr=[0.1],
        lr_decay=[0.0, 0.1],
        weight_decay=[0.0, 0.1],
        initial_accumulator_value=[0.0, 0.5],
        eps=[1e-10, 1e-2],
        maximize=[False, True],
    ),
    "Adadelta": grid(
        lr=[1.0, 0.3],
        rho=[0.9, 0.5],
        eps=[1e-6, 1e-2],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    ),
    "Adamax": grid(
        lr=[0.02],
        betas=[(0.9, 0.999), (0.5, 0.8)],
        eps=[1e-8, 1e-2],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    ),
    "RMSprop": grid(
        lr=[0.01],
        alpha=[0.99, 0.5],
        momentum=[0.0, 0.9],
        centered=[False, True],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    ),
}

# A second param group differs in lr and weight decay from the first.
SECOND_GROUP = {"lr": 0.003, "weight_decay": 0.05}

CASES = [
    pytest.param(name, options, id=f"{name}-{i}")
    for name, grid_ in OPTION_GRIDS.items()
    for i, options in enumerate(grid_)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "options"), CASES)
def test_bit_parity_over_every_option(name: str, options: dict, dtype: torch.dtype) -> None:
    ours, theirs = make_pair(name, options, dtype, SECOND_GROUP)
    step_pair(ours, theirs)


@pytest.mark.parametrize("name", list(OPTION_GRIDS))
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
def test_tensor_lr(name: str, lr_dtype: torch.dtype) -> None:
    extra = {"momentum": 0.9} if name == "SGD" else {}
    for lr in (torch.tensor(0.01, dtype=lr_dtype), torch.tensor([0.01], dtype=lr_dtype)):
        ours, theirs = make_pair(name, {"lr": lr.clone(), **extra}, torch.float32)
        step_pair(ours, theirs)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_betas(name: str) -> None:
    betas = (torch.tensor(0.8), torch.tensor([0.95], dtype=torch.float64))
    ours, theirs = make_pair(name, {"lr": 0.01, "betas": betas}, torch.float64)
    step_pair(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}),
        ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
        ("AdamW", {"amsgrad": True}),
        ("Adagrad", {"lr_decay": 0.1, "initial_accumulator_value": 0.2, "weight_decay": 0.1}),
        ("Adadelta", {"weight_decay": 0.1}),
        ("Adamax", {"weight_decay": 0.1, "maximize": True}),
        ("RMSprop", {"centered": True, "momentum": 0.9, "weight_decay": 0.1}),
        ("RMSprop", {}),
    ],
)
def test_complex_parameters(name: str, options: dict, dtype: torch.dtype) -> None:
    ours, theirs = make_pair(name, options, dtype)
    step_pair(ours, theirs)


def test_float64_default_dtype_gives_float64_step() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs = make_pair("Adam", {}, torch.float64)
        step_pair(ours, theirs, steps=3)
        state = next(iter(ours.state.values()))
        assert state["step"].dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
