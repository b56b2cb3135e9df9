"""float16 parameters in the fused kernels: computed in float32, stored rounded to nearest even.

Bounds used here, and why:
- Conversions: exact. Every float16 widens to torch's float32 value, and float32 values round
  to torch's ``.half()`` bits (NaN: a NaN); the integer fallback gives the hardware's bits.
- Against torch's fused CPU kernels (Adam, AdamW, Adagrad): after every step each stored
  value is torch's float16 or its neighbour, then both runs continue from torch's values, so
  nothing accumulates. Both compute in float32 and round once to nearest; their float32
  results differ only in operation order (a fused multiply-add, a product by
  1/sqrt(1 - beta2^t) for a division), a float32 unit or two, so both round to the same
  float16 or to the two around it (measured: Adam and AdamW one unit apart in a few elements,
  Adagrad identical). torch 2.13 rounds differently in two places, avoided here: its fused
  SGD for float16 leaves whole SIMD blocks of parameters unchanged and reads the momentum
  buffer as float32 (pytorch/pytorch#191763), so SGD is checked against the float32
  reference below only; its fused Adagrad rounds lr, eps and weight_decay to float16 in its
  vectorized loop, so Adagrad runs with values exact in float16.
- Against the float32 reference (torch.optim's for-loop on float32 copies that take our
  stored values before each step): each stored float16 value within half a float16 unit of
  the reference's float32 result (rounding to nearest), plus 2^-21 of the tensor's scale (its
  largest magnitude before and after the step, and the gradient's). The second term is
  float32 operation order again: a few float32 units of the operands, which shows only where
  a result cancels to far below them (a momentum buffer near zero). Measured: at most 2^-23.3
  of the scale beyond half a unit. float32 state: within 2^-21 of its scale.
- Compact state (bfloat16, 8-bit) of float16 parameters: test_compact_state's bounds against
  the float32-state run.
"""

import os
import platform
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from numba import njit
from optim_db import DB
from test_compact_state import STATE_BOUND, buffer

import fastoptim
from fastoptim import catalog
from fastoptim.kernels.checks import count_nonfinite
from fastoptim.kernels.formats import (
    _narrow_to_float16_by_arithmetic,
    _widen_float16_by_arithmetic,
)
from fastoptim.kernels.memory import load, put

# 0-d, odd 1-d, 2-d, and one larger than a kernel chunk (65536 elements).
SHAPES: list[Any] = [(), (7,), (33, 17), (257, 256)]
STEPS = 6
COMPACT_STEPS = 50
NONFINITE_FLOAT16 = 2 * 1024  # infinity and 1023 NaNs, of each sign
ORDER_SLACK = 2.0**-21


@njit(cache=True)
def _widen_all(bits, by_load, by_arithmetic):  # type: ignore[no-untyped-def]
    for i in range(bits.size):
        by_load[i] = load(bits, i)
        by_arithmetic[i] = _widen_float16_by_arithmetic(bits[i])


@njit(cache=True)
def _narrow_all(values, by_put, by_arithmetic):  # type: ignore[no-untyped-def]
    for i in range(values.size):
        put(by_put, i, values[i], by_put)
        by_arithmetic[i] = _narrow_to_float16_by_arithmetic(values[i])


def every_float16() -> np.ndarray:
    """All 65,536 float16 bit patterns, as int16."""
    return np.arange(-(2**15), 2**15).astype(np.int16)


def float32_sweep() -> np.ndarray:
    """float32 values to round: a stride through all bit patterns (every exponent, NaNs,
    float32 subnormals), every float16 value, the exact halfway points between neighbouring
    float16 values (subnormal ones, and 65520 between the largest and infinity, included) and
    the float32 values on either side of each."""
    strided = np.arange(0, 2**32, 4093, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = every_float16().view(np.float16)
    finite = np.unique(halves[np.isfinite(halves)].astype(np.float64))
    finite = np.append(finite, 65536.0)  # infinity's place in the rounding
    middle = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact in float32
    around = [np.nextafter(middle, np.float32(-np.inf)), np.nextafter(middle, np.float32(np.inf))]
    values = np.concatenate([strided, finite.astype(np.float32), middle, *around])
    return np.concatenate([values, -values])


def torch_half_bits(values: np.ndarray) -> np.ndarray:
    return torch.from_numpy(values).half().view(torch.int16).numpy()


def is_nan16(bits: np.ndarray) -> np.ndarray:
    return ((bits & 0x7C00) == 0x7C00) & ((bits & 0x3FF) != 0)


def assert_torch_conversions(widened: np.ndarray, rounded: np.ndarray) -> None:
    """``widened``: every_float16() as float32; ``rounded``: float32_sweep() as float16 bits.
    Equal to torch's, bit for bit, except that a NaN only has to be a NaN."""
    bits = every_float16()
    expected = torch.from_numpy(bits).view(torch.float16).float().numpy()
    nan = np.isnan(expected)
    assert np.array_equal(widened[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    assert np.isnan(widened[nan]).all()
    values = float32_sweep()
    nan = np.isnan(values)
    assert np.array_equal(rounded[~nan], torch_half_bits(values[~nan]))
    assert is_nan16(rounded[nan]).all()


def convert_both_ways(values: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(every_float16() widened, ``values`` rounded: float32_sweep() by default) through the
    kernels' ``load`` and ``put``, then by the fallback."""
    bits = every_float16()
    values = float32_sweep() if values is None else values
    widened = [np.empty(bits.size, np.float32) for _ in range(2)]
    rounded = [np.empty(values.size, np.int16) for _ in range(2)]
    _widen_all(bits, *widened)
    _narrow_all(values, *rounded)
    return widened[0], rounded[0], widened[1], rounded[1]


def test_conversions_match_torch() -> None:
    """The kernels' conversions (the hardware's where the CPU has them) and the integer
    fallback: torch's values, and the same bits as each other, NaN payloads included."""
    widened, rounded, widened_fallback, rounded_fallback = convert_both_ways()
    assert_torch_conversions(widened, rounded)
    assert_torch_conversions(widened_fallback, rounded_fallback)
    assert np.array_equal(widened.view(np.uint32), widened_fallback.view(np.uint32))
    assert np.array_equal(rounded, rounded_fallback)
    # By hand: ties to even (down, then up), the largest finite value, the tie at 65520 to
    # infinity, the tie at half the smallest subnormal to zero, and just above it.
    values = np.float32([1 + 2**-11, 1 + 3 * 2**-11, 65519.99, 65520, 2**-25, 1.5 * 2**-25])
    for by_put in convert_both_ways(values)[1::2]:
        assert by_put.tolist() == [0x3C00, 0x3C02, 0x7BFF, 0x7C00, 0, 1]


WITHOUT_FLOAT16_SCRIPT = """
import sys
import numpy as np
import torch
import fastoptim
from numba import njit
from fastoptim.kernels.formats import float16_in_hardware
from fastoptim.kernels.memory import load, put

assert not float16_in_hardware()

@njit
def widen_all(bits, values):
    for i in range(bits.size):
        values[i] = load(bits, i)

@njit
def narrow_all(values, bits):
    for i in range(values.size):
        put(bits, i, values[i], bits)

bits, values = np.load(sys.argv[1]), np.load(sys.argv[2])
widened, rounded = np.empty(bits.size, np.float32), np.empty(values.size, np.int16)
widen_all(bits, widened)
narrow_all(values, rounded)
np.save(sys.argv[3], widened)
np.save(sys.argv[4], rounded)
param, grad = torch.load(sys.argv[5])
param.requires_grad_()
param.grad = grad
fastoptim.SGD([param], lr=2**-4).step()
torch.save(param.detach(), sys.argv[6])
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 CPU features")
def test_float16_without_hardware_conversion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Compiled for a baseline x86-64 CPU (no F16C), where LLVM's float16 conversions would
    call runtime functions Numba does not link (the process would abort), the kernels take
    the integer fallback: torch's conversions, the same bits as in this process, and an SGD
    step equal to torch's float32 one rounded (lr a power of two: lr * grad is exact, so the
    result is one float32 rounding then one float16 rounding, with or without a fused
    multiply-add)."""
    files = {name: tmp_path / f"{name}.npy" for name in ("bits", "values", "widened", "rounded")}
    np.save(files["bits"], every_float16())
    np.save(files["values"], float32_sweep())
    param, grad = torch.randn(100_000).half(), torch.randn(100_000).half()
    torch.save((param, grad), tmp_path / "start.pt")
    environment = {
        **os.environ,
        "NUMBA_CPU_NAME": "x86-64",
        "NUMBA_CPU_FEATURES": "",
        "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
    }
    arguments = [*map(str, files.values()), str(tmp_path / "start.pt"), str(tmp_path / "end.pt")]
    subprocess.run(
        [sys.executable, "-c", WITHOUT_FLOAT16_SCRIPT, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    widened, rounded = np.load(files["widened"]), np.load(files["rounded"])
    assert_torch_conversions(widened, rounded)
    _, _, widened_here, rounded_here = convert_both_ways()
    assert np.array_equal(widened.view(np.uint32), widened_here.view(np.uint32))
    assert np.array_equal(rounded, rounded_here)
    expected = (param.float() - grad.float() * 2**-4).half()
    assert torch.equal(
        torch.load(tmp_path / "end.pt").view(torch.int16), expected.view(torch.int16)
    )


def units_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many float16 values lie between ``a`` and ``b`` and one of them, per element
    (0: equal, -0 and +0 included; 1: neighbours)."""

    def ordered(x: torch.Tensor) -> torch.Tensor:
        bits = x.view(torch.int16).int()
        return torch.where(bits < 0, -32768 - bits, bits)

    return (ordered(a) - ordered(b)).abs()


def float16_unit(x: torch.Tensor) -> torch.Tensor:
    """The spacing of float16 values at the magnitude of each element of ``x``."""
    _, exponent = torch.frexp(x.float().abs())
    return torch.ldexp(torch.ones(x.shape), (exponent - 11).clamp(min=-24))


def starting_params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator).half() for shape in SHAPES]


def set_gradients(params: list[list[torch.Tensor]], generator: torch.Generator) -> None:
    """The same random float16 gradient for the parameters at each position (a copy each, in
    its parameter's dtype)."""
    for twins in zip(*params, strict=True):
        grad = torch.randn(twins[0].shape, generator=generator).half()
        for param in twins:
            param.grad = grad.to(param.dtype, copy=True)


def stored_tensors(
    optimizer: torch.optim.Optimizer, param: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A parameter and its state tensors (the step counter left out), by name."""
    state = {k: v for k, v in optimizer.state[param].items() if k != "step"}
    return {"param": param.detach(), **state}


TORCH_FUSED = [
    ("Adam", {"lr": 0.01, "weight_decay": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("Adagrad", {"lr": 0.125, "weight_decay": 2.0**-6, "eps": 2.0**-20}),  # exact in float16
]


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize(("name", "options"), TORCH_FUSED, ids=[c[0] for c in TORCH_FUSED])
def test_torch_fused_parity(name: str, options: dict, maximize: bool) -> None:
    """Each stored value torch's fused kernel's or its neighbour, after every step."""
    start = starting_params()
    ours, theirs = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    optimizer = getattr(fastoptim, name)(ours, fused=True, maximize=maximize, **options)
    reference = getattr(torch.optim, name)(theirs, fused=True, maximize=maximize, **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        set_gradients([ours, theirs], generator)
        optimizer.step()
        reference.step()
        for mine, torch_param in zip(ours, theirs, strict=True):
            expected = stored_tensors(reference, torch_param)
            got = stored_tensors(optimizer, mine)
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                assert got[key].dtype == torch.float16, key
                assert units_apart(got[key], value).max() <= 1, key
                got[key].copy_(value)  # continue from torch's values


# (optimizer, options, state_dtype): each optimizer with float16 and with float32 state.
FLOAT32_REFERENCE = [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, None),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "maximize": True}, torch.float32),
    ("SGD", {"lr": 0.1, "weight_decay": 0.01}, None),
    ("Adam", {"lr": 0.01, "weight_decay": 0.01, "maximize": True}, None),
    ("Adam", {"lr": 0.01, "amsgrad": True}, torch.float32),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}, None),
    ("AdamW", {"lr": 0.01, "maximize": True}, torch.float32),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01}, None),
    ("Adagrad", {"lr": 0.1, "maximize": True}, torch.float32),
    ("Adadelta", {"lr": 1.0, "weight_decay": 0.01}, None),
    ("Adadelta", {"lr": 1.0, "maximize": True}, torch.float32),
    ("Adamax", {"lr": 0.01, "weight_decay": 0.01}, None),
    ("Adamax", {"lr": 0.01, "maximize": True}, torch.float32),
    ("RMSprop", {"lr": 0.01, "weight_decay": 0.01, "maximize": True}, None),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True}, None),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01}, torch.float32),
    ("RMSprop", {"lr": 0.01, "centered": True, "maximize": True}, torch.float32),
]


@pytest.mark.parametrize(
    ("name", "options", "state_dtype"),
    FLOAT32_REFERENCE,
    ids=[
        f"{name}-{'-'.join(options)}-{'float16' if state is None else 'float32'}"
        for name, options, state in FLOAT32_REFERENCE
    ],
)
def test_float32_reference(name: str, options: dict, state_dtype: torch.dtype | None) -> None:
    """float16 parameters (state float16 or float32) against torch.optim's for-loop in
    float32 from our stored values, one step at a time."""
    start = starting_params()
    ours = [p.clone().requires_grad_() for p in start]
    theirs = [p.float().requires_grad_() for p in start]
    optimizer = getattr(fastoptim, name)(ours, fused=True, state_dtype=state_dtype, **options)
    reference = getattr(torch.optim, name)(theirs, foreach=False, **options)
    stored = torch.float16 if state_dtype is None else state_dtype
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        if step:  # the reference continues from our values (exact in float32)
            for mine, reference_param in zip(ours, theirs, strict=True):
                targets = stored_tensors(reference, reference_param)
                for key, value in stored_tensors(optimizer, mine).items():
                    targets[key].copy_(value)
        before = [
            {key: value.abs().max() for key, value in stored_tensors(reference, p).items()}
            for p in theirs
        ]
        set_gradients([ours, theirs], generator)
        optimizer.step()
        reference.step()
        for mine, reference_param, old in zip(ours, theirs, before, strict=True):
            got = stored_tensors(optimizer, mine)
            expected = stored_tensors(reference, reference_param)
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                assert got[key].dtype == (torch.float16 if key == "param" else stored), key
                largest = [value.abs().max(), reference_param.grad.abs().max(), old.get(key, 0)]
                bound = ORDER_SLACK * max(largest)
                if got[key].dtype == torch.float16:
                    bound = bound + float16_unit(value) / 2
                assert ((got[key].float() - value).abs() <= bound).all(), key


def test_nonfinite_check_reads_float16() -> None:
    """The fused check counts exactly the 2048 infinite and NaN float16 patterns."""
    bits = torch.from_numpy(every_float16())
    sizes = np.array([bits.numel()])
    assert (
        count_nonfinite(np.array([bits.data_ptr()]), sizes, np.dtype(np.int16)) == NONFINITE_FLOAT16
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_float16_gradient_skips_the_step(bad: float) -> None:
    """nonfinite="skip" finds a NaN or infinity in a float16 gradient: nothing changes."""
    params = [p.clone().requires_grad_() for p in starting_params()]
    optimizer = fastoptim.Adam(params, nonfinite="skip")
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer.step()
    before = [p.detach().clone() for p in params]
    state = [{k: v.clone() for k, v in optimizer.state[p].items()} for p in params]
    params[3].grad[123, 45] = bad  # in the second chunk of the large tensor
    optimizer.step()
    assert optimizer.skipped_steps == 1
    for param, old, old_state in zip(params, before, state, strict=True):
        assert torch.equal(param, old)
        for key, value in old_state.items():
            assert torch.equal(optimizer.state[param][key], value), key


def test_grad_scale_unscales_float16_gradients() -> None:
    """GradScaler's ``grad_scale`` (a power of two, so unscaling is exact) gives the same
    steps as unscaled gradients."""
    start = starting_params()
    scaled, plain = ([p.clone().requires_grad_() for p in start] for _ in range(2))
    optimizers = [fastoptim.AdamW(params, lr=0.01) for params in (scaled, plain)]
    optimizers[0].grad_scale = torch.tensor(1024.0)
    optimizers[0].found_inf = torch.tensor(0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        set_gradients([scaled, plain], generator)
        for param in scaled:
            param.grad *= 1024
        for optimizer in optimizers:
            optimizer.step()
    for a, b in zip(scaled, plain, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("state_dtype", list(STATE_BOUND), ids=["bf16", "int8"])
@pytest.mark.parametrize("name", catalog.NAMES)
def test_compact_state_of_float16_parameters(name: str, state_dtype) -> None:
    """bfloat16 and 8-bit state of float16 parameters track the float32-state run within
    test_compact_state's bounds."""
    start = torch.randn(64, 256).half()
    compact, full = start.clone().requires_grad_(), start.clone().requires_grad_()
    cls = getattr(fastoptim, name)
    ours = cls([compact], **DB[name].compact_options, state_dtype=state_dtype)
    reference = cls([full], **DB[name].compact_options, state_dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    column_scales = torch.logspace(-3, 0, 256)
    for _ in range(COMPACT_STEPS):
        grad = (torch.randn(64, 256, generator=generator) * column_scales).half()
        compact.grad, full.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        for key, expected in reference.state[full].items():
            if key != "step":
                assert expected.dtype == torch.float32
                error = (buffer(ours.state[compact], key) - expected).norm() / expected.norm()
                assert error <= STATE_BOUND[state_dtype], key
    assert compact.dtype == torch.float16
