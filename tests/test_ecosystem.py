"""fastoptim with the tools around torch.optim: every learning-rate scheduler, SWA, GradScaler
with float16 autocast, bfloat16 autocast and torch.compile.

The reference path (``fused=False``) must match torch.optim bit for bit under all of them
(hyperparameters, parameters and state after every step); the default fused path must follow
the same schedule (identical hyperparameters) within the kernels' tolerance (1e-5 of the
tensors' scale, as tests/test_kernels.py states).
"""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _parity import assert_same_state, make_pair, step_pair
from optim_db import OptimizerCase, each
from torch import nn
from torch.optim import lr_scheduler, swa_utils

import fastoptim

KERNEL_RTOL = 1e-5


class HalvingEveryThree(lr_scheduler.LRScheduler):
    """A user-defined scheduler: the base class works too."""

    def get_lr(self) -> list[float]:
        factor = 0.5 if self.last_epoch and self.last_epoch % 3 == 0 else 1.0
        return [group["lr"] * factor for group in self.optimizer.param_groups]


def cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    return "momentum" in optimizer.defaults or "betas" in optimizer.defaults


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LRScheduler": HalvingEveryThree,
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
    "MultiplicativeLR": lambda opt: lr_scheduler.MultiplicativeLR(opt, lambda epoch: 0.9),
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "MultiStepLR": lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.3),
    "ConstantLR": lambda opt: lr_scheduler.ConstantLR(opt, factor=0.25, total_iters=4),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=6),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "SequentialLR": lambda opt: lr_scheduler.SequentialLR(
        opt,
        [
            lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=3),
            lr_scheduler.ExponentialLR(opt, gamma=0.9),
        ],
        milestones=[3],
    ),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=1e-4),
    "ChainedScheduler": lambda opt: lr_scheduler.ChainedScheduler(
        [lr_scheduler.StepLR(opt, 2, 0.5), lr_scheduler.ExponentialLR(opt, 0.95)]
    ),
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1),
    "CyclicLR": lambda opt: lr_scheduler.CyclicLR(
        opt,
        base_lr=0.001,
        max_lr=0.05,
        step_size_up=3,
        cycle_momentum=cycles_momentum(opt),
        base_momentum=0.8,
        max_momentum=0.95,
    ),
    "CosineAnnealingWarmRestarts": lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=3, T_mult=2
    ),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=13, cycle_momentum=cycles_momentum(opt)
    ),
    "PolynomialLR": lambda opt: lr_scheduler.PolynomialLR(opt, total_iters=8, power=2.0),
}

# ReduceLROnPlateau's metric: improves, then stalls, so it reduces the lr.
PLATEAU = [5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    keys = ("lr", "momentum", "betas", "initial_lr")
    return [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]


def test_every_torch_scheduler_is_covered() -> None:
    assert set(lr_scheduler.__all__) == set(SCHEDULERS)


def advance(schedulers: list[Any], step: int) -> None:
    for scheduler in schedulers:
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(PLATEAU[step])
        else:
            scheduler.step()


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("case", each())
def test_scheduler_drives_the_reference_path_as_torch(case: OptimizerCase, scheduler: str) -> None:
    ours, theirs = make_pair(case.name, case.ecosystem_options, torch.float32)
    schedulers = [SCHEDULERS[scheduler](ours), SCHEDULERS[scheduler](theirs)]
    seen = set()
    for step in range(12):
        step_pair(ours, theirs, steps=1, seed=step)  # asserts identical params and state
        advance(schedulers, step)
        assert hyperparameters(ours) == hyperparameters(theirs)
        seen.add(ours.param_groups[0]["lr"])
    assert len(seen) > 1  # the schedule did move the lr


@pytest.mark.parametrize("scheduler", ["CyclicLR", "OneCycleLR", "ReduceLROnPlateau"])
@pytest.mark.parametrize("case", each())
def test_scheduler_drives_the_fused_kernel(case: OptimizerCase, scheduler: str) -> None:
    options = case.ecosystem_options
    reference, _ = make_pair(case.name, options, torch.float32)
    fused, _ = make_pair(case.name, options, torch.float32, ours_only={"fused": None})
    schedulers = [SCHEDULERS[scheduler](reference), SCHEDULERS[scheduler](fused)]
    generator = torch.Generator().manual_seed(0)
    params = [
        (p, q)
        for g, h in zip(reference.param_groups, fused.param_groups, strict=True)
        for p, q in zip(g["params"], h["params"], strict=True)
    ]
    scale = max(p.abs().max().item() for p, _ in params)
    for step in range(12):
        for p, q in params:
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        reference.step()
        fused.step()
        advance(schedulers, step)
        assert hyperparameters(reference) == hyperparameters(fused)
        for p, q in params:
            scale = max(scale, p.abs().max().item())
            assert (p - q).abs().max().item() <= KERNEL_RTOL * scale


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)


@pytest.mark.parametrize("case", each())
def test_stochastic_weight_averaging(case: OptimizerCase) -> None:
    results = []
    for cls, extra in ((case.cls, {"fused": False}), (case.reference, {})):
        model = small_model()
        optimizer = cls(model.parameters(), **case.ecosystem_options, **extra)
        averaged = swa_utils.AveragedModel(model)
        swa = swa_utils.SWALR(optimizer, swa_lr=0.005, anneal_epochs=3)
        lrs = []
        for step in range(10):
            x, y = data(step)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            if step >= 4:
                averaged.update_parameters(model)
                swa.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        results.append((averaged.state_dict(), lrs))
    (ours, our_lrs), (theirs, their_lrs) = results
    assert our_lrs == their_lrs
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def amp_run(
    cls: type, case: OptimizerCase, extra: dict[str, Any], dtype: torch.dtype, scaler: bool
) -> tuple[nn.Module, torch.optim.Optimizer, list[float]]:
    """Ten steps of ``cls`` (fastoptim's or the reference) with ``case``'s options under
    ``torch.autocast("cpu", dtype)``, with a GradScaler if ``scaler``. With the scaler, step
    4's input overflows float16: the scaler must skip that step and back off."""
    model = small_model()
    optimizer = cls(model.parameters(), **case.ecosystem_options, **extra)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    scales = []
    for step in range(10):
        x, y = data(step)
        if step == 4 and scaler:
            x = x * 6e4
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.mse_loss(model(x).float(), y)
        if scaler:
            grad_scaler.scale(loss).backward()
            grad_scaler.step(optimizer)
            grad_scaler.update()
            scales.append(grad_scaler.get_scale())
        else:
            loss.backward()
            optimizer.step()
    return model, optimizer, scales


@pytest.mark.parametrize("case", each())
def test_grad_scaler_with_float16_autocast(case: OptimizerCase) -> None:
    ours, our_opt, our_scales = amp_run(case.cls, case, {"fused": False}, torch.float16, True)
    theirs, their_opt, their_scales = amp_run(case.reference, case, {}, torch.float16, True)
    assert our_scales == their_scales
    assert our_scales[4] < our_scales[3]  # the overflowing step was found and skipped
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)
    assert_same_state(our_opt, their_opt)
    fused, _, fused_scales = amp_run(case.cls, case, {"fused": True}, torch.float16, True)
    assert fused_scales == our_scales
    for p, q in zip(fused.parameters(), ours.parameters(), strict=True):
        assert (p - q).abs().max().item() <= KERNEL_RTOL * max(1.0, q.abs().max().item())


@pytest.mark.parametrize("case", each())
def test_bfloat16_autocast(case: OptimizerCase) -> None:
    ours, our_opt, _ = amp_run(case.cls, case, {"fused": False}, torch.bfloat16, False)
    theirs, their_opt, _ = amp_run(case.reference, case, {}, torch.bfloat16, False)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p.dtype == torch.float32 and torch.equal(p, q)
    assert_same_state(our_opt, their_opt)


def test_compiled_model_trains_with_fastoptim() -> None:
    losses = {}
    for compiled in (False, True):
        model = small_model()
        forward = torch.compile(model) if compiled else model
        optimizer = fastoptim.Adam(model.parameters(), lr=0.01)
        losses[compiled] = []
        x, y = data(0)
        for _ in range(6):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(forward(x), y)
            loss.backward()
            optimizer.step()
            losses[compiled].append(loss.item())
    # The compiled model computes the same function (inductor may fuse differently: 1e-5).
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[True][-1] < losses[True][0]
