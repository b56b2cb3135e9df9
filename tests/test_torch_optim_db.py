"""torch's own test table (``optim_db`` in torch.testing._internal.common_optimizers) run
against fastoptim: for every optimizer of ours that torch.optim has,

- each of torch's error inputs raises (or warns) as torch's table says, at construction or at
  the step as it says;
- each of torch's CPU option inputs steps as torch's for-loop implementation (``foreach=False,
  fused=False``) on the same parameters and gradients: fastoptim's reference path
  (``fused=False``) bit for bit, after every step, parameters and state; the default (fused
  kernel) path within the kernels' tolerance (``RTOL`` times the largest magnitude each tensor
  reached, as tests/test_kernels.py states: 1e-5 in float32, 1e-12 in float64); and a
  state_dict moves from torch to fastoptim and back, each training on bit for bit.

Where fastoptim differs on purpose (README, "Where fastoptim differs from torch.optim on
purpose"), the input is listed below with the reason, and fastoptim's own behaviour asserted.
"""

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _parity import assert_same_state, leaf_copies, step_pair
from optim_db import OPTIMIZER_DB, OptimizerCase, each
from test_kernels import RTOL, gradient_like


def torch_optim_db() -> list[Any]:
    """torch's ``optim_db``. Importing it freezes torch.backends' global flags (torch's test
    utilities do), which are unfrozen again. (Its module needs ``expecttest``, a dev
    dependency.)"""
    frozen = torch.backends.flags_frozen()
    try:
        from torch.testing._internal import common_optimizers
    finally:
        setattr(torch.backends, "__allow_nonbracketed_mutation_flag", not frozen)
    return common_optimizers.optim_db


OPTIM_DB = torch_optim_db()
from torch.testing._internal.common_optimizers import OptimizerErrorEnum  # noqa: E402

TORCH_INFO = {info.optim_cls: info for info in OPTIM_DB}
WITH_TORCH = [case for case in OPTIMIZER_DB if case.torch_cls is not None]

# torch's error inputs where fastoptim differs on purpose: description -> (what fastoptim
# raises, the regex its message matches, what torch's table says (type), the reason).
DIFFERS_ON_PURPOSE: dict[str, tuple[type[BaseException], str, type[BaseException], str]] = {
    "a param group cannot have duplicate parameters": (
        ValueError,
        r"^a parameter appears twice in the same param group$",
        UserWarning,
        "README: a parameter twice in one group is an error (a warning in torch.optim)",
    ),
}

# torch's CPU option inputs that are not run: (optimizer, description) -> reason. None today:
# every input of torch's table for CPU runs (torch leaves its device-only ones, such as
# capturable=True, out of the CPU list).
SKIPPED_INPUTS: dict[tuple[str, str], str] = {}

# Divergences found by these tests and not yet fixed, in either table (error or option
# inputs): (optimizer, description) -> reason; each test expected to fail (strictly). None
# today.
DIVERGENCES: dict[tuple[str, str], str] = {}


def marks(name: str, desc: str) -> list[Any]:
    found = []
    if (name, desc) in SKIPPED_INPUTS:
        found.append(pytest.mark.skip(reason=SKIPPED_INPUTS[name, desc]))
    if (name, desc) in DIVERGENCES:
        found.append(pytest.mark.xfail(strict=True, reason=DIVERGENCES[name, desc]))
    return found


def error_inputs() -> list[Any]:
    return [
        pytest.param(
            case,
            error,
            id=f"{case.name}-{error.optimizer_error_input.desc}",
            marks=marks(case.name, error.optimizer_error_input.desc),
        )
        for case in WITH_TORCH
        for error in TORCH_INFO[case.torch_cls].optim_error_inputs_func(
            device="cpu", dtype=torch.float32
        )
    ]


def option_inputs() -> list[Any]:
    return [
        pytest.param(
            case,
            optim_input,
            id=f"{case.name}-{optim_input.desc}",
            marks=marks(case.name, optim_input.desc),
        )
        for case in WITH_TORCH
        for optim_input in TORCH_INFO[case.torch_cls].optim_inputs_func("cpu")
    ]


@pytest.mark.parametrize("case", each(lambda case: case.torch_cls is not None))
def test_torch_tests_every_optimizer_we_share(case: OptimizerCase) -> None:
    info = TORCH_INFO[case.torch_cls]
    assert info.optim_inputs_func("cpu") and info.optim_error_inputs_func("cpu", torch.float32)


@pytest.mark.parametrize(("case", "error_input"), error_inputs())
def test_torchs_error_inputs(case: OptimizerCase, error_input: Any) -> None:
    optim_input = error_input.optimizer_error_input
    params, options = optim_input.params, optim_input.kwargs
    error, regex = error_input.error_type, error_input.error_regex
    if optim_input.desc in DIFFERS_ON_PURPOSE:
        error, regex, theirs, _ = DIFFERS_ON_PURPOSE[optim_input.desc]
        assert error_input.error_type is theirs  # torch's table still says what the README says
    act: Callable[[], Any]
    if error_input.error_on is OptimizerErrorEnum.STEP_ERROR:
        act = case.cls(params, **options).step
    else:
        assert error_input.error_on is OptimizerErrorEnum.CONSTRUCTION_ERROR
        act = lambda: case.cls(params, **options)  # noqa: E731
    if issubclass(error, Warning):
        with pytest.warns(error, match=regex):
            act()
    else:
        with pytest.raises(error, match=regex):
            act()


def for_loop(case: OptimizerCase, params: Any, options: dict[str, Any]) -> torch.optim.Optimizer:
    """torch's for-loop implementation of ``case`` with ``options``."""
    flags = {"foreach": False, **({"fused": False} if case.entry.torch_fused else {})}
    return case.torch_cls(params, **copy.deepcopy(options), **flags)


def reloaded(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def small_params(dtype: torch.dtype) -> list[torch.Tensor]:
    """0-d, 1-d, 2-d and a transposed (dense, non-contiguous) parameter; test_kernels covers
    tensors of several kernel chunks."""
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.randn(shape, generator=generator, dtype=dtype) for shape in [(), (5,), (40, 30)]
    ]
    params.append(torch.randn(7, 30, generator=generator, dtype=dtype).t())
    return params


def tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    """Every parameter and state tensor, keyed by (parameter index, "param" or state key)."""
    found = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        found[index, "param"] = param.detach()
        for key, value in optimizer.state.get(param, {}).items():
            found[index, key] = value
    return found


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("case", "optim_input"), option_inputs())
def test_torchs_option_inputs(case: OptimizerCase, optim_input: Any, dtype) -> None:
    options = optim_input.kwargs
    start = small_params(dtype)
    theirs_params, reference_params, fused_params = (leaf_copies(start) for _ in range(3))
    theirs = for_loop(case, theirs_params, options)
    reference = case.cls(reference_params, **copy.deepcopy(options), fused=False)
    fused = case.cls(fused_params, **copy.deepcopy(options))
    scales = {key: value.abs().max().item() for key, value in tensors(theirs).items()}
    generator = torch.Generator().manual_seed(1)
    for step in range(10):
        for index, params in enumerate(
            zip(theirs_params, reference_params, fused_params, strict=True)
        ):
            grad = gradient_like(params[0], generator)
            for param in params:  # a rotating parameter gets no gradient
                param.grad = None if (step + index) % 4 == 3 else grad.clone()
        for optimizer in (theirs, reference, fused):
            optimizer.step()
        assert_same_state(reference, theirs)
        expected, actual = tensors(theirs), tensors(fused)
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            scales[key] = max(scales.get(key, 0.0), value.abs().max().item())
            assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
            bound = RTOL[value.dtype] * max(scales[key], 1e-30)
            assert (actual[key] - value).abs().max().item() <= bound, key

    # torch -> fastoptim: the loaded optimizer continues as torch's loaded the same way does
    # (torch's load casts state but ``step`` to the parameters' dtype). fused=False (torch's
    # implementation) for a bit-for-bit comparison: a group the kernel updates keeps its
    # scalars in step's dtype instead.
    saved = theirs.state_dict()
    reference_options = {**copy.deepcopy(options), "fused": False}
    ours = case.cls(leaf_copies([p.detach() for p in theirs_params]), **reference_options)
    ours.load_state_dict(reloaded(saved))
    theirs = for_loop(case, leaf_copies([p.detach() for p in theirs_params]), options)
    theirs.load_state_dict(reloaded(saved))
    assert_same_state(ours, theirs)
    step_pair(ours, theirs, steps=3, seed=7)
    # fastoptim -> torch: and back.
    ours_params = [p for group in ours.param_groups for p in group["params"]]
    again = for_loop(case, leaf_copies([p.detach() for p in ours_params]), options)
    again.load_state_dict(reloaded(ours.state_dict()))
    assert_same_state(ours, again)
    step_pair(ours, again, steps=3, seed=8)
