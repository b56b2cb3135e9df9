"""The test table: one ``OptimizerCase`` per optimizer of ``fastoptim.catalog``, modelled on
torch's ``OptimizerInfo``/``optim_db`` (torch.testing._internal.common_optimizers).

Every generic test (parity, kernels, compact state, reliability, distributed, factory,
ecosystem, api) iterates ``OPTIMIZER_DB`` and takes what it needs from a case: option grids,
single configurations, error inputs and capabilities. Adding an optimizer adds one case here
(``test_optim_db.py`` fails until it does); tests truly specific to one optimizer stay in
their own files.
"""

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

import fastoptim
from fastoptim import catalog


def grid(**axes: list[Any]) -> list[dict[str, Any]]:
    """Every combination of the given option values."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def starts(text: str) -> str:
    """A regex that matches messages starting with ``text``."""
    return "^" + re.escape(text)


@dataclass(frozen=True)
class ErrorInput:
    """Options the constructor refuses. Without ``error``, the error is torch.optim's (the same
    type and message from the reference class); otherwise ``error`` whose message matches the
    regex ``match``."""

    options: dict[str, Any]
    error: type[BaseException] | None = None
    match: str = ""


def like_torch(*options: dict[str, Any]) -> list[ErrorInput]:
    """Error inputs refused as the reference class refuses them."""
    return [ErrorInput(option) for option in options]


@dataclass(frozen=True)
class OptimizerCase:
    """What the generic tests need to know about one optimizer.

    Option sets (each used by the tests named):
    - ``parity_grid``: every option and their combinations (test_parity's bit-exact runs,
      test_kernels' kernel-against-reference runs and its property test).
    - ``rich_options``: one most-featured configuration (test_api: closure, state_dict both
      ways, pickling).
    - ``kernel_options``: one configuration for the kernel tests (bfloat16, layout reuse,
      GradScaler, found_inf, torch's implementation off the CPU).
    - ``complex_options``: configurations stepped on complex parameters against torch
      (test_parity); ``kernel_complex_options``: the one test_kernels runs on complex ones.
    - ``tensor_lr_options``: options besides a Tensor ``lr`` (test_parity).
    - ``differentiable_options``: configurations gradchecked with ``differentiable=True``;
      ``lr_gradient_options``: those whose gradient to a Tensor lr is gradchecked (test_api).
    - ``sparse_options``: configurations stepped on sparse gradients against torch (empty:
      sparse gradients unsupported); ``sparse_refused_options``: a configuration that refuses
      them as torch does (test_api).
    - ``ecosystem_options``: schedulers, SWA and autocast (test_ecosystem).
    - ``stateful_options``: the state-carrying options of the reliability tests;
      ``option_strategy``: the options drawn by its property-based round trip.
    - ``compact_options``: the compact-state tests; ``digits_options``: its digits training.
    - ``distributed_options``: DDP, ZeRO, FSDP2 and distributed checkpoints.

    Error inputs and capabilities:
    - ``error_inputs``: out-of-range values and conflicting flags (test_api);
      ``type_errors``: options of a wrong type or unknown ones (test_reliability).
    - ``tensor_betas``: ``betas`` may be Tensors; ``capturable_like_torch``: takes
      ``capturable`` and refuses it on the CPU with torch's error;
      ``torch_foreach_refuses_differentiable``: torch's foreach implementation raises at a
      differentiable step (fastoptim, which runs it, raises alike).

    The reference: ``torch_cls`` (the catalog's) unless ``reference_cls`` names another (for
    optimizers torch lacks: the class of their reference package); tests compare with
    ``reference``.

    Which state buffers exist and which are non-negative is the class's own
    (``cls.state_buffers``, ``cls.non_negative_state``).
    """

    name: str
    parity_grid: list[dict[str, Any]]
    rich_options: dict[str, Any]
    kernel_options: dict[str, Any]
    complex_options: list[dict[str, Any]]
    kernel_complex_options: dict[str, Any]
    differentiable_options: list[dict[str, Any]]
    ecosystem_options: dict[str, Any]
    stateful_options: dict[str, Any]
    option_strategy: st.SearchStrategy
    distributed_options: dict[str, Any]
    error_inputs: list[ErrorInput]
    type_errors: list[ErrorInput]
    sparse_refused_options: dict[str, Any]
    sparse_options: list[dict[str, Any]] = field(default_factory=list)
    tensor_lr_options: dict[str, Any] = field(default_factory=dict)
    lr_gradient_options: list[dict[str, Any]] = field(default_factory=list)
    compact_options: dict[str, Any] = field(default_factory=lambda: {"lr": 0.01})
    digits_options: dict[str, Any] = field(default_factory=lambda: {"lr": 1e-3})
    reference_cls: type[torch.optim.Optimizer] | None = None
    tensor_betas: bool = False
    capturable_like_torch: bool = False
    torch_foreach_refuses_differentiable: bool = True

    @property
    def entry(self) -> catalog.OptimizerInfo:
        return catalog.info(self.name)

    @property
    def cls(self) -> type[fastoptim.optimizer.BaseOptimizer]:
        return self.entry.cls

    @property
    def torch_cls(self) -> type[torch.optim.Optimizer] | None:
        """torch.optim's class of the same algorithm (from the catalog), None if torch has none."""
        return self.entry.torch_cls

    @property
    def reference(self) -> type[torch.optim.Optimizer] | None:
        """The class the tests compare with: ``reference_cls`` if given (an optimizer torch
        lacks, against its reference package), else torch.optim's."""
        return self.reference_cls or self.torch_cls


def sgd_grid() -> list[dict[str, Any]]:
    options = grid(
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.5],
        nesterov=[False, True],
        weight_decay=[0.0, 0.1],
        maximize=[False, True],
    )
    valid = [o for o in options if not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0)]
    return [{"lr": 0.05, **o} for o in valid]


def adam_decays() -> list[dict[str, Any]]:
    """Both weight decays, with and without maximize (NAdam's and RAdam's grids)."""
    return [
        {"lr": 0.01, **o}
        for o in grid(
            weight_decay=[0.0, 0.1], decoupled_weight_decay=[False, True], maximize=[False, True]
        )
    ]


OPTIMIZER_DB: list[OptimizerCase] = [
    OptimizerCase(
        name="SGD",
        parity_grid=sgd_grid(),
        rich_options={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True},
        kernel_options={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
        complex_options=[{"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}],
        kernel_complex_options={"lr": 0.01, "momentum": 0.9},
        tensor_lr_options={"momentum": 0.9},
        differentiable_options=[
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True},
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "maximize": True},
        ],
        lr_gradient_options=[{}, {"momentum": 0.9}],
        sparse_options=[
            {"lr": 0.1},
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.2},
            {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True},
        ],
        sparse_refused_options={"lr": 0.1, "weight_decay": 0.1},
        ecosystem_options={"lr": 0.05, "momentum": 0.9},
        stateful_options={"lr": 0.1, "momentum": 0.9},
        option_strategy=st.fixed_dictionaries(
            {
                "lr": st.sampled_from([0.01, 0.1]),
                "momentum": st.sampled_from([0.0, 0.9]),
                "nesterov": st.just(False),
            }
        ),
        compact_options={"lr": 0.01, "momentum": 0.9},
        digits_options={"lr": 0.1, "momentum": 0.9},
        distributed_options={"lr": 0.05, "momentum": 0.9},
        error_inputs=like_torch(
            {"lr": -0.1},
            {"lr": 0.1, "momentum": -0.5},
            {"lr": 0.1, "weight_decay": -1e-3},
            {"lr": 0.1, "nesterov": True},
            {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
            {"lr": torch.tensor([0.1, 0.2])},
            {"lr": 0.1, "fused": True, "differentiable": True},
            {"lr": 0.1, "fused": True, "foreach": True},
        ),
        type_errors=[
            ErrorInput(
                {"lr": 0.1, "momentum": None},
                TypeError,
                starts("SGD: momentum must be a number, got NoneType"),
            ),
            ErrorInput(
                {"lr": 0.1, "nesterov": 1},
                TypeError,
                starts("SGD: nesterov must be True or False, got int 1"),
            ),
            ErrorInput(
                {"momentun": 0.9},
                TypeError,
                starts(
                    "SGD: got an unexpected keyword argument 'momentun'; its "
                    "arguments are params, lr, momentum"
                ),
            ),
        ],
        torch_foreach_refuses_differentiable=False,
    ),
    OptimizerCase(
        name="Adam",
        parity_grid=grid(
            lr=[0.01],
            amsgrad=[False, True],
            weight_decay=[0.0, 0.1],
            decoupled_weight_decay=[False, True],
            maximize=[False, True],
        )
        + grid(betas=[(0.5, 0.9), (0.0, 0.0)], eps=[1e-8, 0.1]),
        rich_options={"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
        kernel_options={"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
        complex_options=[{"amsgrad": True, "weight_decay": 0.1}],
        kernel_complex_options={},
        differentiable_options=[
            {"lr": 0.1, "weight_decay": 0.1},
            {"lr": 0.1, "amsgrad": True, "maximize": True},
        ],
        lr_gradient_options=[{}],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.01},
        stateful_options={"lr": 0.01},
        option_strategy=st.fixed_dictionaries(
            {"amsgrad": st.booleans(), "weight_decay": st.sampled_from([0.0, 0.1])}
        ),
        compact_options={"lr": 1e-3, "amsgrad": True},
        distributed_options={"lr": 1e-3},
        error_inputs=like_torch(
            {"lr": -1.0},
            {"eps": -1e-8},
            {"betas": (1.0, 0.999)},
            {"betas": (0.9, 1.0)},
            {"betas": (-0.1, 0.999)},
            {"weight_decay": -0.1},
            {"betas": (0.9, torch.tensor(0.999))},
            {"betas": (torch.tensor([0.9, 0.8]), torch.tensor(0.999))},
            {"betas": (torch.tensor(0.9), torch.tensor(0.999)), "foreach": True},
            {"lr": torch.tensor(0.01), "foreach": True},
            {"lr": torch.tensor([0.01, 0.02])},
            {"fused": True, "differentiable": True},
            {"fused": True, "foreach": True},
        ),
        type_errors=[
            ErrorInput(
                {"lr": "0.1"},
                TypeError,
                starts("Adam: lr must be a number or a Tensor, got str '0.1'"),
            ),
            ErrorInput(
                {"betas": 0.9},
                TypeError,
                starts("Adam: betas must be a pair of (a number or a Tensor, a number"),
            ),
            ErrorInput({"betas": (0.9,)}, TypeError, starts("Adam: betas must be a pair of")),
            ErrorInput(
                {"eps": None}, TypeError, starts("Adam: eps must be a number, got NoneType None")
            ),
        ],
        tensor_betas=True,
        capturable_like_torch=True,
    ),
    OptimizerCase(
        name="AdamW",
        parity_grid=grid(
            lr=[0.01], amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True]
        )
        + grid(betas=[(0.5, 0.9)], eps=[1e-3]),
        rich_options={"lr": 0.01, "amsgrad": True},
        kernel_options={"lr": 0.01},
        complex_options=[{"amsgrad": True}],
        kernel_complex_options={},
        differentiable_options=[{"lr": 0.1, "amsgrad": True}],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.01, "amsgrad": True},
        stateful_options={"lr": 0.01},
        option_strategy=st.fixed_dictionaries({"amsgrad": st.booleans()}),
        distributed_options={"lr": 1e-3},
        error_inputs=like_torch(
            {"lr": -1.0},
            {"betas": (0.9, 1.5)},
            {"weight_decay": -1.0},
            {"fused": True, "differentiable": True},
        ),
        type_errors=[
            ErrorInput(
                {"amsgrad": "no"},
                TypeError,
                starts("AdamW: amsgrad must be True or False, got str 'no'"),
            ),
        ],
        tensor_betas=True,
        capturable_like_torch=True,
    ),
    OptimizerCase(
        name="Adagrad",
        parity_grid=grid(
            lr=[0.1],
            lr_decay=[0.0, 0.1],
            weight_decay=[0.0, 0.1],
            initial_accumulator_value=[0.0, 0.5],
            eps=[1e-10, 1e-2],
            maximize=[False, True],
        ),
        rich_options={"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1},
        kernel_options={"lr": 0.1, "lr_decay": 0.1},
        complex_options=[{"lr_decay": 0.1, "initial_accumulator_value": 0.2, "weight_decay": 0.1}],
        kernel_complex_options={},
        differentiable_options=[{"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1}],
        sparse_options=[{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.05, "maximize": True}],
        sparse_refused_options={"weight_decay": 0.1},
        ecosystem_options={"lr": 0.1},
        stateful_options={"lr": 0.1},
        option_strategy=st.fixed_dictionaries({"lr_decay": st.sampled_from([0.0, 0.01])}),
        digits_options={"lr": 0.05},
        distributed_options={"lr": 0.01},
        error_inputs=like_torch(
            {"lr": -0.1},
            {"lr_decay": -0.1},
            {"weight_decay": -0.1},
            {"initial_accumulator_value": -0.1},
            {"eps": -0.1},
            {"fused": True, "differentiable": True},
            {"fused": True, "foreach": True},
        ),
        type_errors=[
            ErrorInput(
                {"foreach": "yes"},
                TypeError,
                starts("Adagrad: foreach must be True or False or None"),
            ),
        ],
    ),
    OptimizerCase(
        name="Adadelta",
        parity_grid=grid(
            lr=[1.0, 0.3],
            rho=[0.9, 0.5],
            eps=[1e-6, 1e-2],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        ),
        rich_options={"lr": 0.5, "rho": 0.8, "weight_decay": 0.1},
        kernel_options={"weight_decay": 0.1},
        complex_options=[{"weight_decay": 0.1}],
        kernel_complex_options={},
        differentiable_options=[{"lr": 0.5, "weight_decay": 0.1}],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.5},
        stateful_options={"lr": 1.0},
        option_strategy=st.fixed_dictionaries({"rho": st.sampled_from([0.5, 0.9])}),
        digits_options={"lr": 1.0},
        distributed_options={"lr": 1.0},
        error_inputs=like_torch(
            {"lr": -0.1},
            {"rho": 1.1},
            {"rho": -0.1},
            {"eps": -0.1},
            {"weight_decay": -0.1},
            {"lr": torch.tensor([1.0, 2.0])},
        ),
        type_errors=[
            ErrorInput(
                {"rho": True}, TypeError, starts("Adadelta: rho must be a number, got bool True")
            ),
        ],
    ),
    OptimizerCase(
        name="Adamax",
        parity_grid=grid(
            lr=[0.02],
            betas=[(0.9, 0.999), (0.5, 0.8)],
            eps=[1e-8, 1e-2],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        ),
        rich_options={"lr": 0.02, "weight_decay": 0.1},
        kernel_options={"lr": 0.01},
        complex_options=[{"weight_decay": 0.1, "maximize": True}],
        kernel_complex_options={},
        differentiable_options=[{"lr": 0.1, "weight_decay": 0.1}],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.02},
        stateful_options={"lr": 0.01},
        option_strategy=st.fixed_dictionaries({"weight_decay": st.sampled_from([0.0, 0.1])}),
        digits_options={"lr": 2e-3},
        distributed_options={"lr": 2e-3},
        error_inputs=like_torch(
            {"lr": -0.1},
            {"eps": -0.1},
            {"betas": (1.0, 0.9)},
            {"betas": (0.9, -0.9)},
            {"weight_decay": -0.1},
        ),
        type_errors=[
            ErrorInput(
                {"nonfinite": 1},
                TypeError,
                starts("Adamax: nonfinite must be a string or None, got int 1"),
            ),
        ],
        capturable_like_torch=True,
    ),
    OptimizerCase(
        name="RMSprop",
        parity_grid=grid(
            lr=[0.01],
            alpha=[0.99, 0.5],
            momentum=[0.0, 0.9],
            centered=[False, True],
            weight_decay=[0.0, 0.1],
            maximize=[False, True],
        ),
        rich_options={"lr": 0.01, "momentum": 0.9, "centered": True},
        kernel_options={"lr": 0.01, "momentum": 0.9, "centered": True},
        complex_options=[{"centered": True, "momentum": 0.9, "weight_decay": 0.1}, {}],
        kernel_complex_options={"lr": 0.01, "momentum": 0.9},
        differentiable_options=[
            {"lr": 0.1, "weight_decay": 0.1},
            {"lr": 0.1, "momentum": 0.9, "centered": True},
        ],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.01, "momentum": 0.5},
        stateful_options={"lr": 0.01, "momentum": 0.5, "centered": True},
        option_strategy=st.fixed_dictionaries(
            {"centered": st.booleans(), "momentum": st.sampled_from([0.0, 0.5])}
        ),
        compact_options={"lr": 0.01, "momentum": 0.9, "centered": True},
        distributed_options={"lr": 1e-3, "momentum": 0.5},
        error_inputs=like_torch(
            {"lr": -0.1},
            {"eps": -0.1},
            {"momentum": -0.1},
            {"weight_decay": -0.1},
            {"alpha": -0.1},
        ),
        type_errors=[
            ErrorInput(
                {"alpha": [0.9]},
                TypeError,
                starts("RMSprop: alpha must be a number, got list [0.9]"),
            ),
        ],
        capturable_like_torch=True,
    ),
    OptimizerCase(
        name="NAdam",
        parity_grid=[
            *adam_decays(),
            {"lr": 0.01, "momentum_decay": 0.0},
            {"lr": 0.01, "momentum_decay": 0.3, "betas": (0.5, 0.9)},
            {"lr": 0.01, "betas": (0.0, 0.0), "eps": 0.1},
        ],
        rich_options={"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01, "maximize": True},
        kernel_options={"lr": 0.01, "weight_decay": 0.1},
        complex_options=[{"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01}],
        kernel_complex_options={"lr": 0.01},
        differentiable_options=[
            {"lr": 0.1, "weight_decay": 0.1},
            {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.01},
        stateful_options={"lr": 0.01, "weight_decay": 0.1},
        option_strategy=st.fixed_dictionaries(
            {"decoupled_weight_decay": st.booleans(), "weight_decay": st.sampled_from([0.0, 0.1])}
        ),
        digits_options={"lr": 2e-3},
        distributed_options={"lr": 2e-3},
        error_inputs=like_torch(
            {"lr": -1.0},
            {"lr": torch.tensor([0.01, 0.02])},
            {"eps": -1e-8},
            {"betas": (1.0, 0.999)},
            {"betas": (0.9, 1.0)},
            {"weight_decay": -0.1},
            {"momentum_decay": -4e-3},
        ),
        type_errors=[
            ErrorInput(
                {"momentum_decay": "4e-3"},
                TypeError,
                starts("NAdam: momentum_decay must be a number, got str '4e-3'"),
            ),
        ],
        capturable_like_torch=True,
    ),
    OptimizerCase(
        name="RAdam",
        parity_grid=[
            *adam_decays(),
            {"lr": 0.01, "betas": (0.5, 0.8)},
            {"lr": 0.01, "betas": (0.9, 0.5), "eps": 0.001},
            {"lr": 0.01, "betas": (0.0, 0.0), "eps": 0.1},
        ],
        rich_options={"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
        kernel_options={"lr": 0.01, "weight_decay": 0.1},
        complex_options=[{"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}],
        kernel_complex_options={"lr": 0.01},
        differentiable_options=[
            {"lr": 0.1, "weight_decay": 0.1},
            {"lr": 0.1, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ],
        sparse_refused_options={},
        ecosystem_options={"lr": 0.01},
        stateful_options={"lr": 0.01},
        option_strategy=st.fixed_dictionaries(
            {"decoupled_weight_decay": st.booleans(), "weight_decay": st.sampled_from([0.0, 0.1])}
        ),
        digits_options={"lr": 1e-3},
        distributed_options={"lr": 1e-3},
        error_inputs=like_torch(
            {"lr": -1.0},
            {"lr": torch.tensor([0.01, 0.02])},
            {"eps": -1e-8},
            {"betas": (-0.1, 0.999)},
            {"betas": (0.9, 1.0)},
            {"weight_decay": -0.1},
        ),
        type_errors=[
            ErrorInput(
                {"decoupled_weight_decay": 0},
                TypeError,
                starts("RAdam: decoupled_weight_decay must be True or False, got int 0"),
            ),
        ],
        capturable_like_torch=True,
    ),
]

DB: dict[str, OptimizerCase] = {case.name: case for case in OPTIMIZER_DB}
NAMES: list[str] = [case.name for case in OPTIMIZER_DB]


def each(where: Callable[[OptimizerCase], bool] | None = None) -> list[Any]:
    """``pytest.param(case)`` for every case (those for which ``where`` holds), id its name."""
    return [pytest.param(c, id=c.name) for c in OPTIMIZER_DB if where is None or where(c)]


def each_option(attribute: str) -> list[Any]:
    """``pytest.param(case, options)`` for every option set in the list ``attribute`` of every
    case, id ``Name-index``."""
    return [
        pytest.param(c, options, id=f"{c.name}-{i}")
        for c in OPTIMIZER_DB
        for i, options in enumerate(getattr(c, attribute))
    ]
