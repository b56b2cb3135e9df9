"""Drop-in behaviour beyond the update math: signatures, errors, state_dict, sparse, autograd."""

import copy
import inspect
import io
from typing import Any

import pytest
import torch
from _parity import assert_same_state, leaf_copies, make_pair, step_pair
from optim_db import ErrorInput, OptimizerCase, each, each_option

import fastoptim
from fastoptim import catalog

WITHOUT_TORCH_FUSED = [entry.name for entry in catalog.OPTIMIZERS if not entry.torch_fused]


def ours_and_torch(name: str) -> tuple[type, type]:
    entry = catalog.info(name)
    return entry.cls, entry.torch_cls


@pytest.mark.parametrize("case", each())
def test_is_a_torch_optimizer_and_not_torchs_class(case: OptimizerCase) -> None:
    ours, theirs = case.cls, case.torch_cls
    assert issubclass(ours, torch.optim.Optimizer)
    assert not issubclass(ours, theirs)
    assert isinstance(ours([torch.zeros(2, requires_grad=True)]), torch.optim.Optimizer)


@pytest.mark.parametrize("case", each())
def test_signature_matches_torch(case: OptimizerCase) -> None:
    """Same names, order, kinds, defaults and annotations; fastoptim's own keyword-only
    options come last: ``fused`` where torch has none, then the compact-state options."""
    ours, theirs = (inspect.signature(c.__init__).parameters for c in (case.cls, case.torch_cls))
    assert [n for n in ours if n in theirs] == list(theirs)
    for parameter_name, expected in theirs.items():
        actual = ours[parameter_name]
        assert (actual.kind, actual.default, actual.annotation) == (
            expected.kind,
            expected.default,
            expected.annotation,
        ), parameter_name
    added = [n for n in ours if n not in theirs]
    ours_only = ["state_dtype", "stochastic_rounding", "nonfinite"]
    assert added == (["fused"] if case.name in WITHOUT_TORCH_FUSED else []) + ours_only
    assert list(ours)[-len(added) :] == added
    assert all(ours[n].kind is inspect.Parameter.KEYWORD_ONLY for n in added)
    assert all(ours[n].default is None for n in added)


def raised_by(make: Any) -> BaseException:
    with pytest.raises(Exception) as caught:
        make()
    return caught.value


@pytest.mark.parametrize(("case", "error_input"), each_option("error_inputs"))
def test_bad_hyperparameters_raise_like_torch(case: OptimizerCase, error_input: ErrorInput) -> None:
    """As the reference raises them (same type, same message), or as the case states."""
    param = torch.zeros(3, requires_grad=True)
    options = error_input.options
    if error_input.error is not None:
        with pytest.raises(error_input.error, match=error_input.match):
            case.cls([param], **options)
        return
    expected = raised_by(lambda: case.reference([param], **options))
    actual = raised_by(lambda: case.cls([param], **options))
    assert type(actual) is type(expected)
    assert str(actual) == str(expected)


@pytest.mark.parametrize("case", each(lambda case: case.name in WITHOUT_TORCH_FUSED))
def test_fused_flag_conflicts_raise_as_in_torchs_fused_optimizers(case: OptimizerCase) -> None:
    cls = case.cls
    param = torch.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"^`fused` does not support `differentiable`$"):
        cls([param], fused=True, differentiable=True)
    with pytest.raises(RuntimeError, match=r"^`fused` and `foreach` cannot be `True` together\.$"):
        cls([param], fused=True, foreach=True)


@pytest.mark.parametrize("case", each())
def test_bad_params_raise_like_torch(case: OptimizerCase) -> None:
    ours, theirs = case.cls, case.reference
    param = torch.zeros(3, requires_grad=True)
    for params in ([], param, [{"params": [param]}, {"params": [param]}], [1.0]):
        expected = raised_by(lambda params=params: theirs(params))
        actual = raised_by(lambda params=params: ours(params))
        assert (type(actual), str(actual)) == (type(expected), str(expected))


@pytest.mark.parametrize("case", each(lambda case: case.capturable_like_torch))
def test_capturable_on_cpu_raises_like_torch(case: OptimizerCase) -> None:
    results = []
    for cls in (case.cls, case.reference):
        param = torch.zeros(3, requires_grad=True)
        param.grad = torch.ones(3)
        results.append(raised_by(cls([param], capturable=True).step))
    actual, expected = results
    assert (type(actual), str(actual)) == (type(expected), str(expected))


def test_adadeltas_capturable_refusal_names_xla_where_torchs_does_not() -> None:
    """As the README says: one list of device types for all (torch's for-loop Adam's)."""
    results = []
    for cls in ours_and_torch("Adadelta"):
        param = torch.zeros(3, requires_grad=True)
        param.grad = torch.ones(3)
        results.append(raised_by(cls([param], capturable=True).step))
    actual, expected = results
    assert type(actual) is type(expected) is AssertionError
    assert str(actual) == str(expected).replace("'privateuseone']", "'privateuseone', 'xla']")


@pytest.mark.parametrize("case", each(lambda case: case.torch_foreach_refuses_differentiable))
def test_foreach_with_differentiable_is_refused_at_the_step_like_torch(
    case: OptimizerCase,
) -> None:
    """Without the kernel, torch's own implementation runs as the group asks (foreach
    included), so its refusal is torch's."""
    refusals = []
    for cls in (case.cls, case.reference):
        param = torch.randn(4, requires_grad=True) * 1.0
        param.grad = torch.ones(4)
        refusal = raised_by(cls([param], foreach=True, differentiable=True).step)
        refusals.append((type(refusal), str(refusal)))
    assert refusals[0] == refusals[1] == (AssertionError, "_foreach ops don't support autograd")


@pytest.mark.parametrize("case", each())
def test_step_returns_the_closure_loss_and_updates_like_torch(case: OptimizerCase) -> None:
    ours, theirs = make_pair(case.name, case.rich_options, torch.float32)
    losses = []
    for optimizer in (ours, theirs):
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def closure(optimizer=optimizer, params=params) -> torch.Tensor:
            optimizer.zero_grad()
            loss = sum((p**2).sum() for p in params)
            loss.backward()
            return loss

        losses.append([optimizer.step(closure) for _ in range(5)])
    assert [loss.item() for loss in losses[0]] == [loss.item() for loss in losses[1]]
    assert_same_state(ours, theirs)


@pytest.mark.parametrize("case", each())
@pytest.mark.parametrize("direction", ["torch-to-fastoptim", "fastoptim-to-torch"])
def test_state_dict_cross_loading_continues_identically(
    case: OptimizerCase, direction: str
) -> None:
    ours, theirs = make_pair(case.name, case.rich_options, torch.float32, {"lr": 0.002})
    step_pair(ours, theirs, steps=10)
    source, continued = (theirs, ours) if direction == "torch-to-fastoptim" else (ours, theirs)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    target_cls = type(continued)
    params = leaf_copies([p.detach() for group in source.param_groups for p in group["params"]])
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.002}]
    target = target_cls(groups, **case.rich_options)
    target.load_state_dict(saved)
    if direction == "torch-to-fastoptim":  # the loaded groups say fused=None: take the reference
        for group in target.param_groups:
            group["fused"] = False
    pair = (target, source) if direction == "torch-to-fastoptim" else (source, target)
    assert_same_state(*pair)
    step_pair(*pair, steps=10, seed=7)


@pytest.mark.parametrize("case", each())
def test_pickled_optimizer_keeps_its_state(case: OptimizerCase) -> None:
    ours, theirs = make_pair(case.name, case.rich_options, torch.float64)
    step_pair(ours, theirs, steps=3)
    clone = copy.deepcopy(ours)
    assert clone.state_dict()["param_groups"] == ours.state_dict()["param_groups"]
    assert len(clone.state) == len(ours.state)


def test_adagrad_state_exists_from_the_constructor_as_in_torch() -> None:
    ours, theirs = make_pair("Adagrad", {"initial_accumulator_value": 0.3}, torch.float32)
    assert_same_state(ours, theirs)
    assert len(ours.state) == 4


def test_sgd_without_momentum_keeps_no_state() -> None:
    ours, theirs = make_pair("SGD", {"lr": 0.1}, torch.float32)
    step_pair(ours, theirs, steps=3)
    assert ours.state_dict()["state"] == theirs.state_dict()["state"] == {}


def sparse_grad(rows: int, generator: torch.Generator) -> torch.Tensor:
    """A sparse COO gradient of a (rows, 3) parameter with a repeated row index."""
    indices = torch.tensor([[0, 3, 3, rows - 1]])
    values = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    return torch.sparse_coo_tensor(indices, values, (rows, 3), check_invariants=True)


@pytest.mark.parametrize(("case", "options"), each_option("sparse_options"))
def test_sparse_gradients_match_torch(case: OptimizerCase, options: dict) -> None:
    generator = torch.Generator().manual_seed(3)
    start = torch.randn(6, 3, dtype=torch.float64)
    ours_param, torch_param = leaf_copies([start, start])
    ours = case.cls([ours_param], **options)
    theirs = case.reference([torch_param], **options)
    for _ in range(10):
        grad = sparse_grad(6, generator)
        ours_param.grad, torch_param.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        assert_same_state(ours, theirs)


@pytest.mark.parametrize("case", each())
def test_unsupported_sparse_gradients_raise_like_torch(case: OptimizerCase) -> None:
    errors = []
    for cls in (case.cls, case.reference):
        param = torch.zeros(6, 3, dtype=torch.float64, requires_grad=True)
        param.grad = sparse_grad(6, torch.Generator().manual_seed(0))
        errors.append(raised_by(cls([param], **case.sparse_refused_options).step))
    actual, expected = errors
    assert (type(actual), str(actual)) == (type(expected), str(expected))


def first_state(cls: type, options: dict) -> dict[str, Any]:
    """The state that one step of ``cls`` creates for a parameter."""
    probe = torch.zeros(2, requires_grad=True)
    optimizer = cls([probe], **options)
    probe.grad = torch.ones(2)
    optimizer.step()
    return optimizer.state[probe]


def state_keys(cls: type, options: dict) -> list[str]:
    """The tensor state keys (besides ``step``) that one step of ``cls`` creates."""
    return [key for key in first_state(cls, options) if key != "step"]


def random_state(
    keys: list[str], non_negative: frozenset[str], shape: tuple[int, ...], seed: int
) -> list[torch.Tensor]:
    """State values that keep every square root real: the non-negative buffers (squared
    averages) >= 0.5, |grad_avg| small."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for key in keys:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key in non_negative:
            value = value.abs() + 0.5
        elif key == "grad_avg":
            value = value * 0.1
        values.append(value.requires_grad_())
    return values


def differentiable_step(cls: type, options: dict, keys: list[str], counts_steps: bool) -> Any:
    """One differentiable step at step count 3 (if the optimizer counts steps), as a function
    of param, grad and state."""

    def run(param: torch.Tensor, grad: torch.Tensor, *state: torch.Tensor) -> tuple:
        stepped = param.clone()
        optimizer = cls([stepped], differentiable=True, **options)
        optimizer.state[stepped] = {
            key: value.clone() for key, value in zip(keys, state, strict=True)
        }
        if counts_steps:
            optimizer.state[stepped]["step"] = torch.tensor(3.0, dtype=torch.float64)
        stepped.grad = grad
        optimizer.step()
        return (stepped, *(optimizer.state[stepped][key] for key in keys))

    return run


@pytest.mark.parametrize(("case", "options"), each_option("differentiable_options"))
def test_differentiable_step_passes_gradcheck_and_matches_torch(
    case: OptimizerCase, options: dict
) -> None:
    """Gradients flow to the parameter, the gradient and every state tensor."""
    ours_cls, torch_cls = case.cls, case.reference
    keys = state_keys(ours_cls, options)
    assert keys == state_keys(torch_cls, options)
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs = (param, grad, *random_state(keys, ours_cls.non_negative_state, (3, 2), seed=1))
    counts_steps = "step" in first_state(ours_cls, options)
    ours = differentiable_step(ours_cls, options, keys, counts_steps)
    theirs = differentiable_step(torch_cls, options, keys, counts_steps)
    for actual, expected in zip(ours(*inputs), theirs(*inputs), strict=True):
        assert torch.equal(actual, expected)
    assert torch.autograd.gradcheck(ours, inputs)


@pytest.mark.parametrize(("case", "options"), each_option("lr_gradient_options"))
def test_gradient_flows_to_a_tensor_learning_rate(case: OptimizerCase, options: dict) -> None:
    cls = case.cls
    keys = state_keys(cls, {"lr": 0.1, **options})
    counts_steps = "step" in first_state(cls, {"lr": 0.1, **options})
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(4, generator=generator, dtype=torch.float64)
    grad = torch.randn(4, generator=generator, dtype=torch.float64)
    state = [value.detach() for value in random_state(keys, cls.non_negative_state, (4,), seed=2)]

    def run(lr: torch.Tensor) -> torch.Tensor:
        step = differentiable_step(cls, {"lr": lr, **options}, keys, counts_steps)
        return step(param, grad, *state)[0]

    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (lr,))


@pytest.mark.parametrize("case", each())
def test_step_hooks_run(case: OptimizerCase) -> None:
    param = torch.zeros(2, requires_grad=True)
    optimizer = case.cls([param], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    param.grad = torch.ones(2)
    optimizer.step()
    assert calls == ["pre", "post"]
    assert not torch.equal(param, torch.zeros(2))


@pytest.mark.parametrize("case", each())
def test_nan_learning_rate_is_rejected(case: OptimizerCase) -> None:
    param = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"^Invalid learning rate: nan$"):
        case.cls([param], lr=float("nan"))


def test_rejected_step_changes_no_group() -> None:
    dense, embedding = torch.ones(3, requires_grad=True), torch.ones(6, 3, requires_grad=True)
    optimizer = fastoptim.Adam([{"params": [dense]}, {"params": [embedding]}])
    dense.grad = torch.ones(3)
    embedding.grad = sparse_grad(6, torch.Generator().manual_seed(0)).float()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    assert torch.equal(dense, torch.ones(3))
    assert len(optimizer.state) == 0
