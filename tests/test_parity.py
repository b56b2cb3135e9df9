"""Bit-for-bit parity of the reference path (fused=False) with torch.optim's for-loop path."""

import pytest
import torch
from _parity import make_pair, step_pair
from optim_db import OptimizerCase, each, each_option

# A second param group differs in lr and weight decay from the first.
SECOND_GROUP = {"lr": 0.003, "weight_decay": 0.05}

# Every option set of every optimizer's grid (ids Name-index).
CASES = each_option("parity_grid")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("case", "options"), CASES)
def test_bit_parity_over_every_option(case: OptimizerCase, options: dict, dtype) -> None:
    ours, theirs = make_pair(case.name, options, dtype, SECOND_GROUP)
    step_pair(ours, theirs)


@pytest.mark.parametrize("case", each())
@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
def test_tensor_lr(case: OptimizerCase, lr_dtype: torch.dtype) -> None:
    for lr in (torch.tensor(0.01, dtype=lr_dtype), torch.tensor([0.01], dtype=lr_dtype)):
        ours, theirs = make_pair(
            case.name, {"lr": lr.clone(), **case.tensor_lr_options}, torch.float32
        )
        step_pair(ours, theirs)


@pytest.mark.parametrize("case", each(lambda case: case.tensor_betas))
def test_tensor_betas(case: OptimizerCase) -> None:
    betas = (torch.tensor(0.8), torch.tensor([0.95], dtype=torch.float64))
    ours, theirs = make_pair(case.name, {"lr": 0.01, "betas": betas}, torch.float64)
    step_pair(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize(("case", "options"), each_option("complex_options"))
def test_complex_parameters(case: OptimizerCase, options: dict, dtype: torch.dtype) -> None:
    ours, theirs = make_pair(case.name, options, dtype)
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
