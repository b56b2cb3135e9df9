"""Reliability: bad input gets a clear error and changes nothing; non-finite gradients; atomic
load_state_dict; property-based round trips; large and long runs (marked slow, run in CI)."""

import copy
import io
import resource
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_db import DB, NAMES, ErrorInput, OptimizerCase, each, each_option
from torch import nn

import fastoptim
from fastoptim.optimizer import NonFiniteGradientError


def model_and_optimizer(name: str, **options: Any) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A small model and optimizer ``name`` with its stateful options (and ``options``)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    case = DB[name]
    optimizer = case.cls(model.parameters(), **{**case.stateful_options, **options})
    return model, optimizer


def set_grads(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Everything a failed call must leave alone, as plain copies."""
    return copy.deepcopy(
        {
            "params": {k: v.detach() for k, v in model.state_dict().items()},
            "state": optimizer.state_dict(),
            "groups": [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
            ],
        }
    )


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["params"].keys() == after["params"].keys()
    for key in before["params"]:
        assert torch.equal(before["params"][key], after["params"][key]), key
    assert before["groups"] == after["groups"]
    assert_same_state_dict(before["state"], after["state"])


def assert_same_state_dict(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


# -- constructor and param groups --------------------------------------------------------


def tensor() -> torch.Tensor:
    return torch.zeros(3, requires_grad=True)


@pytest.mark.parametrize(("case", "error_input"), each_option("type_errors"))
def test_wrong_option_types_name_the_option(case: OptimizerCase, error_input: ErrorInput) -> None:
    with pytest.raises(error_input.error, match=error_input.match):
        case.cls([tensor()], **error_input.options)


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (nn.Linear(2, 2), TypeError, "got the module Linear: pass model.parameters()"),
        (torch.zeros(2, requires_grad=True), TypeError, "should be an iterable of Tensors"),
        ([], ValueError, "optimizer got an empty parameter list"),
        ([torch.zeros(2, requires_grad=True) * 2], ValueError, "can't optimize a non-leaf Tensor"),
        ([1.0], TypeError, "optimizer can only optimize Tensors"),
        ([{"lr": 0.1}], ValueError, "a param group needs 'params' (its parameters), got only"),
        ([{"params": [tensor()], "lr": "x"}], TypeError, "Adam: lr must be a number"),
    ],
)
def test_bad_params_are_refused(params: Any, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        fastoptim.Adam(params)
    assert message in str(raised.value)


def test_a_parameter_twice_is_refused() -> None:
    param = tensor()
    with pytest.raises(ValueError, match="a parameter appears twice in the same param group"):
        fastoptim.SGD([param, param], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        fastoptim.SGD([{"params": [param]}, {"params": [param]}], lr=0.1)


@pytest.mark.parametrize(
    ("group", "error", "message"),
    [
        ({"lr": 0.1}, ValueError, "a param group needs 'params'"),
        ([tensor()], TypeError, "param_group must be a dict, but got list"),
        ({"params": [tensor()], "momentum": "high"}, TypeError, "SGD: momentum must be a number"),
        (
            {"params": [tensor()], "nonfinite": "sometimes"},
            ValueError,
            "nonfinite must be None, 'skip' or 'raise', got 'sometimes'",
        ),
        ({"params": [tensor()], "lr": -1.0}, ValueError, "Invalid learning rate: -1.0"),
    ],
)
def test_bad_param_groups_change_nothing(group: Any, error: type, message: str) -> None:
    first = tensor()
    optimizer = fastoptim.SGD([first], lr=0.1)
    before = copy.deepcopy(optimizer.param_groups)
    with pytest.raises(error, match=message):
        optimizer.add_param_group(group)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["params"][0] is first
    assert optimizer.param_groups[0]["lr"] == before[0]["lr"]


# -- step --------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("case", each())
@pytest.mark.parametrize("what", ["shape", "dtype"])
def test_a_gradient_unlike_its_parameter_changes_nothing(
    case: OptimizerCase, fused, what: str
) -> None:
    model, optimizer = model_and_optimizer(case.name, fused=fused)
    set_grads(model, 0)
    optimizer.step()  # the kernel path now reuses this layout
    set_grads(model, 1)
    bad = model[2].bias.grad
    bad.data = torch.zeros(7) if what == "shape" else torch.zeros(2, dtype=torch.float64)
    before = snapshot(model, optimizer)
    with pytest.raises(RuntimeError) as error:
        optimizer.step()
    expected = "(7,)" if what == "shape" else "torch.float64"
    assert f"the gradient of parameter 3 of param group 0 has {what}" in str(error.value)
    assert expected in str(error.value) and "no parameter or state was changed" in str(error.value)
    assert_unchanged(before, snapshot(model, optimizer))


def test_a_bad_gradient_in_a_later_group_changes_no_group() -> None:
    first, second = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    optimizer = fastoptim.Adam([{"params": [first]}, {"params": [second], "lr": 0.5}])
    first.grad = torch.ones(4)
    second.grad = torch.ones(4)
    second.grad.data = torch.ones(5)
    with pytest.raises(RuntimeError, match="parameter 0 of param group 1 has shape"):
        optimizer.step()
    assert torch.equal(first, torch.ones(4)) and not optimizer.state


def test_named_parameters_are_named_in_errors() -> None:
    model = nn.Linear(3, 2)
    optimizer = fastoptim.Adam(model.named_parameters())
    model.weight.grad = torch.zeros(2, 3)
    model.weight.grad.data = torch.zeros(6)
    with pytest.raises(RuntimeError, match="the gradient of parameter 'weight' has shape"):
        optimizer.step()


# -- non-finite gradients ----------------------------------------------------------------


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("case", each())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_skip_skips_the_whole_step(case: OptimizerCase, fused, bad: float) -> None:
    model, optimizer = model_and_optimizer(case.name, fused=fused, nonfinite="skip")
    set_grads(model, 0)
    model[2].weight.grad[1, 3] = bad
    before = snapshot(model, optimizer)
    optimizer.step()
    assert_unchanged(before, snapshot(model, optimizer))
    assert optimizer.skipped_steps == 1
    # A finite step then runs as the first step of an optimizer that never saw the bad one.
    reference_model, reference = model_and_optimizer(case.name, fused=fused)
    for seed in (1, 2):
        set_grads(model, seed)
        set_grads(reference_model, seed)
        optimizer.step()
        reference.step()
    for a, b in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert optimizer.skipped_steps == 1
    assert optimizer.state_dict()["skipped_steps"] == 1


@pytest.mark.parametrize("case", each())
def test_nonfinite_raise_names_the_parameter(case: OptimizerCase) -> None:
    model = nn.Linear(300, 20)  # 6,000 weights: checked by the fused kernel
    optimizer = case.cls(model.named_parameters(), nonfinite="raise", **case.stateful_options)
    model.weight.grad = torch.ones(20, 300)
    model.bias.grad = torch.ones(20)
    optimizer.step()
    model.weight.grad[19, 299] = float("nan")
    before = copy.deepcopy(optimizer.state_dict())
    weight = model.weight.detach().clone()
    with pytest.raises(NonFiniteGradientError) as error:
        optimizer.step()
    assert str(error.value) == (
        "the gradient of parameter 'weight' holds NaN or infinity (nonfinite='raise'): no "
        "parameter or state was changed"
    )
    assert isinstance(error.value, FloatingPointError)
    assert torch.equal(model.weight, weight)
    assert_same_state_dict(before, optimizer.state_dict())


def test_nonfinite_checks_bfloat16_and_complex_parameters() -> None:
    for dtype in (torch.bfloat16, torch.complex64):
        param = torch.ones(5000, dtype=dtype, requires_grad=True)
        optimizer = fastoptim.Adam([param], nonfinite="skip")
        param.grad = torch.ones(5000, dtype=dtype)
        param.grad[4999] = complex(1, float("inf")) if dtype.is_complex else float("nan")
        optimizer.step()
        assert optimizer.skipped_steps == 1 and not optimizer.state


def test_nonfinite_off_behaves_as_torch() -> None:
    ours = torch.ones(3, requires_grad=True)
    theirs = torch.ones(3, requires_grad=True)
    optimizers = fastoptim.SGD([ours], lr=0.1), torch.optim.SGD([theirs], lr=0.1)
    for param, optimizer in zip((ours, theirs), optimizers, strict=True):
        param.grad = torch.tensor([1.0, float("nan"), 0.0])
        optimizer.step()
    assert torch.isnan(ours[1]) and torch.allclose(ours, theirs, equal_nan=True)


def test_nonfinite_skip_in_one_group_skips_every_group() -> None:
    first, second = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = fastoptim.SGD(
        [{"params": [first]}, {"params": [second], "nonfinite": "skip"}], lr=0.1
    )
    first.grad = torch.ones(3)
    second.grad = torch.full((3,), float("inf"))
    optimizer.step()
    assert torch.equal(first, torch.ones(3)) and optimizer.skipped_steps == 1


# -- load_state_dict ---------------------------------------------------------------------


def trained(name: str, **options: Any) -> tuple[nn.Module, torch.optim.Optimizer]:
    model, optimizer = model_and_optimizer(name, **options)
    for seed in range(3):
        set_grads(model, seed)
        optimizer.step()
    return model, optimizer


def mutate(state_dict: dict[str, Any], how: str) -> Any:
    state_dict = copy.deepcopy(state_dict)
    if how == "not a dict":
        return [state_dict]
    if how == "no state":
        del state_dict["state"]
    elif how == "one group more":
        state_dict["param_groups"].append(copy.deepcopy(state_dict["param_groups"][0]))
    elif how == "one parameter less":
        state_dict["param_groups"][0]["params"].pop()
    elif how == "group without params":
        del state_dict["param_groups"][0]["params"]
    elif how == "wrong shape":
        state_dict["state"][2]["exp_avg"] = torch.zeros(4, 4)
    elif how == "unknown parameter":
        state_dict["state"][99] = state_dict["state"][0]
    elif how == "another optimizer":
        state_dict["optimizer"] = "Adadelta"
    return state_dict


@pytest.mark.parametrize(
    ("how", "error", "message"),
    [
        ("not a dict", TypeError, "a state dict must be a dict, got list"),
        ("no state", ValueError, "not an optimizer state dict: it lacks ['state']"),
        ("one group more", ValueError, "the state dict has 2 param groups, Adam has 1"),
        (
            "one parameter less",
            ValueError,
            "param group 0 of the state dict has 3 parameters, Adam's has 4",
        ),
        ("group without params", ValueError, "param group 0 of the state dict has no 'params'"),
        (
            "wrong shape",
            ValueError,
            "the state 'exp_avg' of parameter 2 has shape (4, 4), Adam "
            "expects (2, 5) for its parameter of shape (2, 5)",
        ),
        ("unknown parameter", ValueError, "state for an unknown parameter 99"),
        ("another optimizer", ValueError, "the state dict is of Adadelta, not of Adam"),
    ],
)
def test_load_state_dict_refuses_a_mismatch_and_changes_nothing(
    how: str, error: type, message: str
) -> None:
    _, source = trained("Adam")
    model, optimizer = trained("Adam", lr=0.5)
    set_grads(model, 7)
    before = snapshot(model, optimizer)
    with pytest.raises(error) as raised:
        optimizer.load_state_dict(mutate(source.state_dict(), how))
    assert message in str(raised.value)
    assert_unchanged(before, snapshot(model, optimizer))


@pytest.mark.parametrize("other", ["Adadelta", "SGD", "RMSprop"])
def test_state_dict_of_another_optimizer_is_recognised_without_its_name(other: str) -> None:
    _, source = trained(other)
    state_dict = source.state_dict()
    del state_dict["optimizer"]  # as torch.optim or torch.distributed.checkpoint give it
    model, optimizer = trained("Adam")
    before = snapshot(model, optimizer)
    with pytest.raises(ValueError, match="a state dict of another optimizer"):
        optimizer.load_state_dict(state_dict)
    assert_unchanged(before, snapshot(model, optimizer))


def test_a_failure_part_way_through_loading_restores_everything(monkeypatch) -> None:
    _, source = trained("Adam")
    model, optimizer = trained("Adam", lr=0.5, state_dtype="int8")
    before = snapshot(model, optimizer)
    state_table, groups = optimizer.state, optimizer.param_groups
    calls = []

    def fail_on_third(param, group, state):  # type: ignore[no-untyped-def]
        calls.append(param)
        if len(calls) == 3:
            raise MemoryError("out of memory while converting")
        return original(param, group, state)

    original = optimizer._convert_state
    monkeypatch.setattr(optimizer, "_convert_state", fail_on_third)
    with pytest.raises(MemoryError):
        optimizer.load_state_dict(source.state_dict())
    assert optimizer.state is state_table and optimizer.param_groups is groups
    assert_unchanged(before, snapshot(model, optimizer))
    monkeypatch.undo()
    set_grads(model, 5)
    optimizer.step()  # and it still steps


def test_checkpoint_files_load_and_corrupt_ones_are_named(tmp_path: Path) -> None:
    _, source = trained("AdamW")
    path = tmp_path / "optimizer.pt"
    torch.save(source.state_dict(), path)
    _, optimizer = trained("AdamW", lr=0.3)
    optimizer.load_state_dict(path)
    assert_same_state_dict(optimizer.state_dict(), source.state_dict())
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage):
        _, fresh = trained("AdamW", lr=0.3)
        before = copy.deepcopy(fresh.state_dict())
        with pytest.raises(ValueError) as error:
            fresh.load_state_dict(bad)
        assert str(error.value).startswith(
            f"cannot read the optimizer checkpoint '{bad}': the "
            "file is truncated, corrupt or not a torch.save file"
        )
        assert_same_state_dict(before, fresh.state_dict())
    with pytest.raises(FileNotFoundError):
        fresh.load_state_dict(tmp_path / "missing.pt")


# -- property-based ----------------------------------------------------------------------


@st.composite
def optimizer_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[tuple[int, ...]], int]:
    name = draw(st.sampled_from(NAMES))
    options = draw(DB[name].option_strategy)
    options["state_dtype"] = draw(st.sampled_from([None, torch.bfloat16, "int8"]))
    shapes = draw(st.lists(st.sampled_from([(), (3,), (2, 5), (70, 70)]), min_size=1, max_size=4))
    return name, options, shapes, draw(st.integers(1, 4))


@settings(max_examples=30, deadline=None)
@given(optimizer_cases())
def test_state_dict_round_trip_continues_identically(case: tuple) -> None:
    name, options, shapes, steps = case
    generator = torch.Generator().manual_seed(len(shapes) * 10 + steps)
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [
        [torch.randn(shape, generator=generator) for shape in shapes] for _ in range(steps + 2)
    ]

    def run(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, which: range) -> None:
        for step in which:
            for param, grad in zip(params, grads[step], strict=True):
                param.grad = grad.clone()
            optimizer.step()

    params = [p.clone().requires_grad_() for p in start]
    optimizer = DB[name].cls(params, **options)
    run(params, optimizer, range(steps))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = DB[name].cls(resumed_params, **options)
    resumed.load_state_dict(saved)
    assert_same_state_dict(resumed.state_dict(), optimizer.state_dict())
    run(params, optimizer, range(steps, steps + 2))
    run(resumed_params, resumed, range(steps, steps + 2))
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
    assert_same_state_dict(resumed.state_dict(), optimizer.state_dict())


# -- scale and long runs -----------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_tensors() -> None:
    generator = torch.Generator().manual_seed(0)
    start = [
        torch.randn(int(size), generator=generator)
        for size in torch.randint(1, 40, (10_000,), generator=generator)
    ]
    results = []
    for fused in (None, False):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = fastoptim.Adam(params, lr=0.01, fused=fused)
        for step in range(2):
            for param in params:
                param.grad = torch.full_like(param, 0.5 + step)
            optimizer.step()
        results.append(torch.cat([p.detach() for p in params]))
    assert (results[0] - results[1]).abs().max().item() <= 1e-5 * results[1].abs().max().item()


@pytest.mark.slow
def test_one_tensor_of_a_hundred_million_elements() -> None:
    size = 100_000_000
    param = torch.zeros(size, requires_grad=True)
    param.grad = torch.ones(size)
    param.grad[::1000] = -2.0
    optimizer = fastoptim.Adam([param], lr=0.01)
    optimizer.step()
    optimizer.step()
    # Two Adam steps of a constant gradient g move every element by -2 lr sign(g).
    assert param[1].item() == pytest.approx(-0.02, rel=1e-5)
    assert param[size - 1].item() == pytest.approx(-0.02, rel=1e-5)
    assert param[0].item() == pytest.approx(0.02, rel=1e-5)
    assert param[size - 1000].item() == pytest.approx(0.02, rel=1e-5)
    assert optimizer.state[param]["exp_avg_sq"][size - 1].item() == pytest.approx(
        1 - 0.999**2, rel=1e-5
    )


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@pytest.mark.slow
def test_a_hundred_thousand_steps_keep_memory_flat() -> None:
    model, optimizer = model_and_optimizer("Adam")
    set_grads(model, 0)
    for _ in range(10_000):  # warm up: caches, kernel layout
        optimizer.step()
    start = resident_bytes()
    for _ in range(100_000):
        optimizer.step()
    growth = resident_bytes() - start
    # A leak of one small object per step would be several MB; allow 2 MB of noise.
    assert growth < 2 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB"
    assert optimizer.state[model[0].weight]["step"].item() == 110_000


def test_two_threads_step_two_optimizers() -> None:
    models = [model_and_optimizer(name) for name in ("Adam", "RMSprop")]
    expected = []
    for name in ("Adam", "RMSprop"):
        model, optimizer = model_and_optimizer(name)
        for seed in range(200):
            set_grads(model, seed % 7)
            optimizer.step()
        expected.append(model)
    errors = []

    def train(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        try:
            for seed in range(200):
                set_grads(model, seed % 7)
                optimizer.step()
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=train, args=pair) for pair in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for (model, _), reference in zip(models, expected, strict=True):
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            assert torch.equal(a, b)


def test_user_subclasses_are_checked_by_their_own_annotations() -> None:
    class Clipped(fastoptim.SGD):
        def __init__(self, params: Any, lr: float = 0.1, clip: float = 1.0) -> None:
            self.clip = clip
            super().__init__(params, lr=lr)

    class Unresolvable(fastoptim.SGD):
        def __init__(self, params: Any, lr: "NotDefinedAnywhere" = 0.1) -> None:  # noqa: F821
            super().__init__(params, lr=lr)

    with pytest.raises(TypeError, match="Clipped: clip must be a number, got str 'x'"):
        Clipped([tensor()], clip="x")
    assert Clipped([tensor()], clip=2).clip == 2
    assert Unresolvable([tensor()]).defaults["lr"] == 0.1
