"""The fused kernels against the bit-exact reference path.

Tolerance: after 100 steps, every parameter and state tensor of the kernel path is within
``RTOL * scale`` of the reference (RTOL 1e-5 in float32, 1e-12 in float64). The scale is the
largest magnitude the tensor had during the run (parameters from their starting values on): an
element that passes near zero is the difference of operands of that scale, and its rounding
error is relative to them, not to the small result. The kernels evaluate the same formulas in
the same precision; they differ from torch only where torch's vectorized code fuses a
multiply-add and the kernel does not (or the reverse), and where a kernel saves a divider
operation: Adam multiplies by 1/sqrt(1 - beta2^t), Adadelta takes one square root of a
quotient. Each is a rounding of the last bit or two of one operation.
"""

import multiprocessing
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _parity import leaf_copies
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_db import DB, NAMES, OptimizerCase, each, each_option

import fastoptim
from fastoptim.planning import KERNEL_ARGUMENTS, reuse_layout

RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.complex64: 1e-5, torch.complex128: 1e-12}


def kernel_params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """0-d, 1-d, a 2-d tensor larger than one kernel chunk, and a transposed (dense) one."""
    generator = torch.Generator().manual_seed(seed)
    shapes: list[Any] = [(), (5,), (300, 250)]
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
    params.append(torch.randn(7, 30, generator=generator, dtype=dtype).t())
    return params


def gradient_like(param: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random gradient with the parameter's strides, as autograd makes it."""
    values = torch.randn(param.shape, generator=generator, dtype=param.dtype)
    return torch.empty_like(param).copy_(values)


Disruption = Callable[[torch.optim.Optimizer, list[torch.Tensor]], None]


class Run:
    """A kernel (fused=True) and a reference (fused=False) optimizer stepped on identical
    gradients, with the largest magnitude each reference tensor reached (keyed by parameter
    index and state key). Which parameter gets no gradient changes every 10 steps, so steps
    both reuse a group's kernel layout and plan it anew, and the fourth parameter gets its
    first gradient on step 10. ``disruptions[step]`` is applied to
    both optimizers before that step."""

    def __init__(
        self,
        name: str,
        options: dict,
        params: list[torch.Tensor],
        steps: int,
        disruptions: dict[int, Disruption] | None = None,
        fused: bool | None = True,
    ) -> None:
        self.fused_params, self.reference_params = leaf_copies(params), leaf_copies(params)
        cls = DB[name].cls
        self.fused = cls(self.fused_params, **options, fused=fused)
        self.reference = cls(self.reference_params, **options)
        for group in self.reference.param_groups:
            group["fused"] = False
        self.scales: dict[tuple[int, str], float] = {}
        self.record()
        generator = torch.Generator().manual_seed(1)
        for step in range(steps):
            pairs = zip(self.fused_params, self.reference_params, strict=True)
            for index, (a, b) in enumerate(pairs):
                if (step // 10 + index) % 4 == 3:  # a rotating parameter gets no gradient
                    a.grad = b.grad = None
                    continue
                grad = gradient_like(a, generator)
                a.grad, b.grad = grad.clone(), grad.clone()
            if disruptions and step in disruptions:
                disruptions[step](self.fused, self.fused_params)
                disruptions[step](self.reference, self.reference_params)
            self.fused.step()
            self.reference.step()
            self.record()

    def tensors(self, index: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Parameter ``index`` and its state tensors: name -> (fused, reference)."""
        a, b = self.fused_params[index], self.reference_params[index]
        pairs = {"param": (a.detach(), b.detach())}
        state_a, state_b = self.fused.state.get(a, {}), self.reference.state.get(b, {})
        assert state_a.keys() == state_b.keys()
        pairs.update({key: (state_a[key], state_b[key]) for key in state_b})
        return pairs

    def record(self) -> None:
        for index in range(len(self.reference_params)):
            for key, (_, b) in self.tensors(index).items():
                scale = b.abs().max().item()
                self.scales[index, key] = max(self.scales.get((index, key), 0.0), scale)

    def assert_close(self) -> None:
        for index in range(len(self.reference_params)):
            for key, (a, b) in self.tensors(index).items():
                assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
                bound = RTOL[b.dtype] * max(self.scales[index, key], 1e-30)
                assert (a - b).abs().max().item() <= bound, key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("case", "options"), each_option("parity_grid"))
def test_kernel_matches_reference_over_every_option(
    case: OptimizerCase, options: dict, dtype
) -> None:
    Run(case.name, options, kernel_params(dtype), steps=100).assert_close()


def replace_parameter_storage(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    params[2].data = params[2].data.clone()


def replace_a_state_tensor(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    state = optimizer.state[params[2]]
    key = next(key for key in state if key != "step")
    state[key] = state[key].clone()


def replace_a_state_dict(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    state = optimizer.state[params[2]]
    optimizer.state[params[2]] = {key: value.clone() for key, value in state.items()}


def clear_the_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    optimizer.state.clear()


def reload_the_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    optimizer.load_state_dict(optimizer.state_dict())


def transpose_a_gradient(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    params[2].grad = params[2].grad.t().contiguous().t()  # same values, other strides


@pytest.mark.parametrize(
    "disrupt",
    [
        replace_parameter_storage,
        replace_a_state_tensor,
        replace_a_state_dict,
        clear_the_state,
        reload_the_state,
        transpose_a_gradient,
    ],
)
@pytest.mark.parametrize("case", each())
def test_a_reused_kernel_layout_follows_changes(case: OptimizerCase, disrupt: Disruption) -> None:
    """After steps that reuse the group's kernel layout, a change to what it points at (new
    parameter storage, new state tensors, a gradient with other strides) is followed."""
    options = case.kernel_options
    run = Run(case.name, options, kernel_params(torch.float32), 8, {5: disrupt}, fused=None)
    run.assert_close()


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("case", each())
def test_kernel_updates_complex_parameters_like_the_reference(case: OptimizerCase, dtype) -> None:
    Run(case.name, case.kernel_complex_options, kernel_params(dtype), steps=30).assert_close()


def test_tensor_lr_reaches_the_kernel() -> None:
    options = {"lr": torch.tensor(0.05)}
    Run("Adam", options, kernel_params(torch.float32), steps=20).assert_close()


def assert_within_one_bfloat16_unit(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Elementwise within one bfloat16 unit in the last place (2^-7 relative), plus 1e-6 of the
    tensor's scale for values that cancel to nearly zero (where torch's fused multiply-adds and
    the kernel's separate roundings legitimately differ)."""
    expected = expected.float()
    bound = 2.0**-7 * expected.abs() + 1e-6 * expected.abs().max()
    assert ((actual.float() - expected).abs() <= bound).all()


@pytest.mark.parametrize("case", each())
def test_bfloat16_step_is_the_float32_step_rounded(case: OptimizerCase) -> None:
    """bfloat16 params and state: math in float32, each result rounded to nearest once.

    Two steps from bfloat16 values; after each, the kernel's parameters and state are within
    one bfloat16 unit of the float32 reference's (which then continues from the kernel's).
    """
    params = [p.to(torch.bfloat16) for p in kernel_params(torch.float32)]
    bf16 = leaf_copies(params)
    f32 = [p.detach().float().requires_grad_() for p in bf16]
    cls = case.cls
    fused = cls(bf16, **case.kernel_options, fused=True, stochastic_rounding=False)
    reference = cls(f32, **case.kernel_options, fused=False)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        for a, b in zip(bf16, f32, strict=True):
            a.grad = gradient_like(a, generator)
            b.grad = a.grad.float()
        fused.step()
        reference.step()
        for a, b in zip(bf16, f32, strict=True):
            with torch.no_grad():
                assert_within_one_bfloat16_unit(a, b)
                b.copy_(a.float())
            for key, value in reference.state[b].items():
                if key in cls.state_buffers:
                    assert fused.state[a][key].dtype == torch.bfloat16
                    assert_within_one_bfloat16_unit(fused.state[a][key], value)
                    value.copy_(fused.state[a][key].float())


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    choice=st.integers(min_value=0, max_value=10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    shapes=st.lists(
        st.lists(st.integers(min_value=1, max_value=40), min_size=0, max_size=3),
        min_size=1,
        max_size=4,
    ),
    steps=st.integers(min_value=1, max_value=25),
)
def test_property_kernel_matches_reference(name, choice, dtype, shapes, steps) -> None:
    grid = DB[name].parity_grid
    options = grid[choice % len(grid)]
    generator = torch.Generator().manual_seed(choice)
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]
    Run(name, options, params, steps).assert_close()


def scaled_training(
    optimizer_cls: type, options: dict, inject_inf_at: int | None = None
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[float]]:
    """Train a small model for 6 steps under torch.amp.GradScaler on the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = optimizer_cls(model.parameters(), **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    scales = []
    for step in range(6):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if step == inject_inf_at:
            model[0].weight.grad[0, 0] = float("inf")
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, optimizer, scales


@pytest.mark.parametrize("case", each())
def test_grad_scaler_unscales_inside_the_step_like_torch(case: OptimizerCase) -> None:
    options = case.kernel_options
    theirs, _, their_scales = scaled_training(case.reference, options)
    for fused, rtol in ((False, 0.0), (None, 1e-5)):
        ours, optimizer, our_scales = scaled_training(case.cls, {**options, "fused": fused})
        assert optimizer._step_supports_amp_scaling
        assert our_scales == their_scales
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert (a - b).abs().max().item() <= rtol * b.abs().max().item()


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("case", each())
def test_step_with_found_inf_changes_nothing(case: OptimizerCase, fused: bool | None) -> None:
    """An inf on the first step: no parameter, no state (not even SGD's momentum buffer)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = case.cls(model.parameters(), **case.kernel_options, fused=fused)
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    model.weight.grad[0, 0] = float("nan")
    scaler.step(optimizer)
    for param, expected in zip(model.parameters(), before, strict=True):
        assert torch.equal(param, expected)
    state_after = {id(p): s for p, s in optimizer.state.items()}
    assert state_after.keys() == state_before.keys()
    for key, values in state_before.items():
        for name_, value in values.items():
            assert torch.equal(state_after[key][name_], value)


def sparse_strided_leaf() -> torch.Tensor:
    """A leaf whose elements do not fill one block of memory (every other element of 6)."""
    return torch.ones(3, 2)[:, 0].detach().requires_grad_()


def test_fused_true_explains_why_it_cannot_run_and_changes_nothing() -> None:
    gapped = sparse_strided_leaf()
    dense = torch.ones(3, requires_grad=True)
    optimizer = fastoptim.Adam([{"params": [dense]}, {"params": [gapped]}], fused=True)
    dense.grad, gapped.grad = torch.ones(3), torch.ones_like(gapped)
    with pytest.raises(
        RuntimeError, match=r"^fused=True cannot update a parameter: it is not dense"
    ):
        optimizer.step()
    assert torch.equal(dense, torch.ones(3)) and len(optimizer.state) == 0

    table = torch.ones(4, 2, requires_grad=True)
    sgd = fastoptim.SGD([table], lr=0.1, fused=True)
    table.grad = torch.sparse_coo_tensor([[1]], torch.ones(1, 2), (4, 2), check_invariants=True)
    with pytest.raises(RuntimeError, match="its gradient is sparse"):
        sgd.step()


def test_default_falls_back_to_torch_where_no_kernel_applies() -> None:
    gapped = sparse_strided_leaf()
    twin = torch.ones(3, 2)[:, 0].detach().requires_grad_()
    ours, theirs = fastoptim.Adam([gapped], lr=0.1), torch.optim.Adam([twin], lr=0.1)
    for _ in range(3):
        gapped.grad, twin.grad = torch.ones_like(gapped), torch.ones_like(twin)
        ours.step()
        theirs.step()
    assert torch.equal(gapped, twin)


@pytest.mark.parametrize("case", each())
def test_torch_implementation_used_off_cpu_matches_the_reference(case: OptimizerCase) -> None:
    """The path for devices without kernels, run here on CPU tensors, equals the reference."""
    params = kernel_params(torch.float64)
    ours_params, torch_path_params = leaf_copies(params), leaf_copies(params)
    cls = case.cls
    reference = cls(ours_params, **case.kernel_options, fused=False)
    delegated = cls(torch_path_params, **case.kernel_options, fused=False)
    generator = torch.Generator().manual_seed(4)
    for _ in range(5):
        grads = [gradient_like(p, generator) for p in params]
        for a, b, grad in zip(ours_params, torch_path_params, grads, strict=True):
            a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        group = delegated.param_groups[0]
        with torch.no_grad():  # as inside step()
            delegated._torch_step(group, torch_path_params, [p.grad for p in torch_path_params])
    for a, b in zip(ours_params, torch_path_params, strict=True):
        assert torch.equal(a, b)


def test_parameters_off_cpu_go_to_torchs_implementation(monkeypatch) -> None:
    param = torch.empty(3, device="meta", requires_grad=True)
    param.grad = torch.empty(3, device="meta")
    optimizer = fastoptim.Adam([param])
    calls = []
    monkeypatch.setattr(optimizer, "_torch_step", lambda group, params, grads: calls.append(params))
    optimizer.step()
    assert calls == [[param]]


def train_steps(name: str, seed: int, steps: int = 20) -> list[torch.Tensor]:
    params = leaf_copies(kernel_params(torch.float32, seed))
    optimizer = DB[name].cls(params, **DB[name].kernel_options)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in params:
            param.grad = gradient_like(param, generator)
        optimizer.step()
    return [p.detach() for p in params]


def test_two_python_threads_step_two_optimizers_at_once() -> None:
    expected = {seed: train_steps("Adam", seed) for seed in (1, 2)}
    results: dict[int, list[torch.Tensor]] = {}
    threads = [
        threading.Thread(target=lambda s=seed: results.__setitem__(s, train_steps("Adam", s)))
        for seed in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(results[seed], expected[seed], strict=True))


THREAD_COUNT_SCRIPT = """
import torch
torch.set_num_threads(1)
import numba
import fastoptim
param = torch.zeros(8, requires_grad=True)
param.grad = torch.ones(8)
fastoptim.Adam([param], fused=True).step()  # the first kernel starts Numba's thread pool
print(torch.get_num_threads(), numba.get_num_threads())
"""


def test_the_first_kernel_keeps_torchs_thread_count() -> None:
    """Numba's OpenMP pool, started by the first kernel, would reset the thread count torch
    shares with it: a user's ``torch.set_num_threads(1)`` holds for torch and the kernels. In
    a new process, since the pool starts once per process."""
    run = subprocess.run(
        [sys.executable, "-c", THREAD_COUNT_SCRIPT], capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["1", "1"]


def train_in_child(name: str) -> list[torch.Tensor]:
    return train_steps(name, seed=3)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_kernels_work_in_a_forked_process(name: str) -> None:
    """A forked child (set up as torch's DataLoader sets up its workers: one torch thread,
    since torch's own OpenMP pool does not survive a fork) steps with the kernels."""
    expected = train_steps(name, seed=3)  # the parent has used the kernels before forking
    context = multiprocessing.get_context("fork")
    with context.Pool(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        result = pool.apply(train_in_child, (name,))
    for a, b in zip(result, expected, strict=True):  # the child's kernel is the serial build
        assert (a - b).abs().max().item() <= RTOL[torch.float32] * b.abs().max().item()


def test_wrapper_subclasses_without_memory_take_the_reference_path() -> None:
    from torch.testing._internal.two_tensor import TwoTensor

    param = torch.nn.Parameter(TwoTensor(torch.ones(4), torch.ones(4)))
    param.grad = TwoTensor(torch.full((4,), 0.5), torch.full((4,), 0.5))
    with pytest.raises(RuntimeError, match="TwoTensor without memory of its own"):
        fastoptim.SGD([param], lr=0.1, fused=True).step()
    fastoptim.SGD([param], lr=0.1).step()  # the reference path: torch's ops on the subclass
    assert torch.equal(param.detach().a, torch.full((4,), 0.95))


def test_layout_is_reused_with_empty_parameters() -> None:
    params = [torch.zeros(0, requires_grad=True), torch.ones(5, requires_grad=True)]
    optimizer = fastoptim.Adam(params, lr=0.1)
    for _ in range(2):
        for param in params:
            param.grad = torch.ones_like(param)
        optimizer.step()
        layout = optimizer._layouts[id(optimizer.param_groups[0])]
    params[1].grad = torch.ones(5)
    params[0].grad = torch.ones(0)
    assert reuse_layout(optimizer, optimizer.param_groups[0]) is not None
    params[1].grad.data = torch.ones(5, dtype=torch.float64)  # another dtype: planned anew
    assert reuse_layout(optimizer, optimizer.param_groups[0]) is None
    assert layout.empty.tolist() == [True, False]


@pytest.mark.parametrize("case", each())
def test_kernel_rows_are_named_by_the_state_they_hold(case: OptimizerCase) -> None:
    assert case.cls.kernel.parameters[: len(KERNEL_ARGUMENTS)] == KERNEL_ARGUMENTS
    rows = case.cls.kernel.rows
    assert (rows.param, rows.grad) == (0, 1)
    assert list(rows) == list(range(len(rows)))
    assert set(rows._fields[2:]) == {item.name for item in case.cls.declared_state}
