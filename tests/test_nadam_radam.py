"""NAdam and RAdam: what the generic tests (which iterate tests/optim_db.py) do not check.

- The kernel keeps ``step`` and NAdam's ``mu_product`` bit-identical to torch.optim's and the
  rest within test_kernels' tolerance (RTOL 1e-5 in float32, 1e-12 in float64, times the
  largest magnitude the tensor had) over 100 steps, with tensors of one kernel call at
  different step counts (RAdam: some rectified, some not; the first rectified step is t = 6
  with b2 = 0.999, t = 7 with b2 = 0.8, never with b2 = 0.5).
- Compact state runs, tracks the float32 state, and round-trips through state dicts,
  fastoptim's and torch's; a loaded ``mu_product`` follows ``step``'s dtype for the kernel.
"""

import io

import pytest
import torch
from _parity import leaf_copies

import fastoptim
from fastoptim.state import dequantize_like

NAMES = ["NAdam", "RAdam"]
SCALARS = {"NAdam": ["step", "mu_product"], "RAdam": ["step"]}
CASES = [
    pytest.param("NAdam", {"lr": 0.01, "weight_decay": 0.1, "maximize": True}, id="NAdam-l2"),
    pytest.param(
        "NAdam",
        {
            "lr": 0.01,
            "momentum_decay": 0.3,
            "betas": (0.5, 0.9),
            "weight_decay": 0.1,
            "decoupled_weight_decay": True,
        },
        id="NAdam-decoupled",
    ),
    pytest.param("RAdam", {"lr": 0.01, "weight_decay": 0.1}, id="RAdam-l2"),
    pytest.param(
        "RAdam",
        {"lr": 0.01, "betas": (0.5, 0.8), "weight_decay": 0.1, "decoupled_weight_decay": True},
        id="RAdam-decoupled-late-rectification",
    ),
    pytest.param("RAdam", {"lr": 0.01, "betas": (0.9, 0.5)}, id="RAdam-never-rectified"),
]
SECOND_GROUP = {"lr": 0.003, "weight_decay": 0.05}
COMPLEX_OPTIONS = {
    "NAdam": {"lr": 0.01, "weight_decay": 0.1, "momentum_decay": 0.01, "maximize": True},
    "RAdam": {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True},
}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


def round_trip(state_dict: dict) -> dict:
    """A state dict through torch.save and torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# (1) The kernel against torch.optim.

RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.complex64: 1e-5}


def kernel_params(dtype: torch.dtype) -> list[torch.Tensor]:
    """0-d, 1-d, a 2-d tensor larger than one kernel chunk, and a transposed (dense) one."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=generator, dtype=dtype) for shape in [(), (5,)]]
    params.append(torch.randn(300, 250, generator=generator, dtype=dtype))
    params.append(torch.randn(7, 30, generator=generator, dtype=dtype).t())
    return params


def assert_kernel_tracks_torch(name: str, options: dict, dtype: torch.dtype, steps: int) -> None:
    """The default (kernel) path and torch.optim, stepped on identical gradients in two
    groups; a rotating parameter gets no gradient for 10 steps at a time, so the tensors of
    one kernel call have different step counts (RAdam: some rectified, some not)."""
    params = kernel_params(dtype)
    pairs = list(zip(leaf_copies(params), leaf_copies(params), strict=True))
    optimizers = [
        module_cls([{"params": copies[:2]}, {"params": copies[2:], **SECOND_GROUP}], **options)
        for module_cls, copies in zip(
            (getattr(fastoptim, name), getattr(torch.optim, name)),
            ([a for a, _ in pairs], [b for _, b in pairs]),
            strict=True,
        )
    ]
    ours, theirs = optimizers
    scales = {(i, "param"): b.abs().max().item() for i, (_, b) in enumerate(pairs)}
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        for index, (a, b) in enumerate(pairs):
            if (step // 10 + index) % 4 == 3:
                a.grad = b.grad = None
                continue
            values = torch.randn(a.shape, generator=generator, dtype=dtype)
            a.grad = torch.empty_like(a).copy_(values)  # autograd's strides
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
        for index, (_, b) in enumerate(pairs):
            tensors = {"param": b.detach(), **theirs.state.get(b, {})}
            for key, value in tensors.items():
                scale = value.abs().max().item()
                scales[index, key] = max(scales.get((index, key), 0.0), scale)
    assert len(ours._layouts) == 2  # the kernel updated both groups
    for index, (a, b) in enumerate(pairs):
        assert list(ours.state[a]) == list(theirs.state[b])
        for key, expected in {"param": b.detach(), **theirs.state[b]}.items():
            actual = a.detach() if key == "param" else ours.state[a][key]
            assert actual.dtype == expected.dtype and actual.stride() == expected.stride()
            if key in SCALARS[name]:
                assert torch.equal(actual, expected), key
            else:
                bound = RTOL[dtype] * max(scales[index, key], 1e-30)
                assert (actual - expected).abs().max().item() <= bound, key


@DTYPES
@pytest.mark.parametrize(("name", "options"), CASES)
def test_kernel_matches_torch_within_tolerance(name: str, options: dict, dtype) -> None:
    assert_kernel_tracks_torch(name, options, dtype, steps=100)


@pytest.mark.parametrize("name", NAMES)
def test_kernel_takes_tensor_lr_and_complex_parameters(name: str) -> None:
    options = {**COMPLEX_OPTIONS[name], "lr": torch.tensor(0.01)}
    assert_kernel_tracks_torch(name, options, torch.float32, steps=30)
    assert_kernel_tracks_torch(name, COMPLEX_OPTIONS[name], torch.complex64, steps=30)


# (2) Compact state.

STATE_BOUND = {torch.bfloat16: 0.05, "int8": 0.5}  # as tests/test_compact_state.py
COMPACT = pytest.mark.parametrize("state_dtype", [torch.bfloat16, "int8"], ids=["bf16", "int8"])


def buffer(state: dict, key: str) -> torch.Tensor:
    """A state buffer as float32, dequantized if it is kept as 8-bit codes."""
    if key + "_codes" in state:
        return dequantize_like(state[key + "_codes"], state[key + "_absmax"])
    return state[key].float()


def compact_params() -> list[torch.Tensor]:
    """One parameter large enough for 8-bit state (64 x 128), one kept in float32 (300)."""
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=generator) for shape in [(64, 128), (300,)]]


def step_all(optimizers: list, params: list[list[torch.Tensor]], steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for copies in zip(*params, strict=True):
            grad = torch.randn(copies[0].shape, generator=generator)
            for copy in copies:
                copy.grad = grad.clone()
        for optimizer in optimizers:
            optimizer.step()


@COMPACT
@pytest.mark.parametrize("name", NAMES)
def test_compact_state_tracks_float32_and_its_state_dict_loads_back(name: str, state_dtype) -> None:
    torch.manual_seed(0)  # the rounding stream
    cls = getattr(fastoptim, name)
    compact, full = leaf_copies(compact_params()), leaf_copies(compact_params())
    ours = cls(compact, lr=0.01, state_dtype=state_dtype)
    reference = cls(full, lr=0.01)
    step_all([ours, reference], [compact, full], steps=50, seed=1)
    big = ours.state[compact[0]]
    if state_dtype == "int8":
        assert big["exp_avg_codes"].dtype == torch.int8
        assert big["exp_avg_sq_codes"].dtype == torch.uint8
        assert ours.state[compact[1]]["exp_avg"].dtype == torch.float32  # under 4096 elements
    else:
        assert big["exp_avg"].dtype == big["exp_avg_sq"].dtype == torch.bfloat16
    for param, expected_param in zip(compact, full, strict=True):
        state, expected = ours.state[param], reference.state[expected_param]
        for key in SCALARS[name]:
            assert torch.equal(state[key], expected[key])
        for key in ("exp_avg", "exp_avg_sq"):
            error = (buffer(state, key) - expected[key]).norm() / expected[key].norm()
            assert error <= STATE_BOUND[state_dtype], key

    resumed_params = leaf_copies([p.detach() for p in compact])
    resumed = cls(resumed_params, lr=0.01, state_dtype=state_dtype)
    resumed.load_state_dict(round_trip(ours.state_dict()))
    for state_a, state_b in zip(ours.state.values(), resumed.state.values(), strict=True):
        assert list(state_a) == list(state_b)
        assert all(
            torch.equal(v, state_b[k]) and v.dtype == state_b[k].dtype for k, v in state_a.items()
        )
    step_all([ours, resumed], [compact, resumed_params], steps=2, seed=2)  # same rounding stream
    assert all(torch.equal(a, b) for a, b in zip(compact, resumed_params, strict=True))
    for state_a, state_b in zip(ours.state.values(), resumed.state.values(), strict=True):
        assert all(torch.equal(v, state_b[k]) for k, v in state_a.items())


@pytest.mark.parametrize("name", NAMES)
def test_compact_state_dict_crosses_with_torch(name: str) -> None:
    """torch's state dict loads into 8-bit state (codes within 6.25% of torch's values, the
    scalars exact) and steps on the kernel; back in full precision, torch loads it and steps."""
    params = leaf_copies(compact_params())
    theirs = getattr(torch.optim, name)(params, lr=0.01)
    step_all([theirs], [params], steps=3, seed=4)
    ours = getattr(fastoptim, name)(params, lr=0.01, state_dtype="int8")
    ours.load_state_dict(round_trip(theirs.state_dict()))
    state, expected = ours.state[params[0]], theirs.state[params[0]]
    for key in SCALARS[name]:
        assert torch.equal(state[key], expected[key])
    for key in ("exp_avg", "exp_avg_sq"):
        got, want = buffer(state, key), expected[key]
        assert ((got - want).abs() <= 0.0625 * want.abs() + 2**-14 * want.abs().max()).all()
    step_all([ours], [params], steps=1, seed=5)
    assert len(ours._layouts) == 1  # the kernel ran
    back = getattr(torch.optim, name)(params, lr=0.01)
    back.load_state_dict(fastoptim.full_precision_state_dict(round_trip(ours.state_dict())))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(back.state[params[0]][key], buffer(ours.state[params[0]], key))
    for key in SCALARS[name]:
        assert torch.equal(back.state[params[0]][key], ours.state[params[0]][key])
    step_all([back], [params], steps=1, seed=6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_loaded_mu_product_stays_in_steps_dtype_for_the_kernel(dtype) -> None:
    """torch.optim's load_state_dict casts mu_product (not step) to the parameter's dtype,
    and torch keeps it so. Groups the kernel updates take it back to step's dtype (else the
    kernel would refuse the parameter: an error under state_dtype), holding the value torch's
    cast left (a bfloat16 rounding); fused=False keeps torch's cast."""
    param = torch.randn(5000, dtype=dtype, requires_grad=True)
    param.grad = torch.randn_like(param)
    theirs = torch.optim.NAdam([param])
    theirs.step()
    saved = round_trip(theirs.state_dict())
    torch_loaded = torch.optim.NAdam([param])
    torch_loaded.load_state_dict(saved)
    cast = torch_loaded.state[param]["mu_product"]
    assert cast.dtype == dtype
    ours = fastoptim.NAdam([param], state_dtype=torch.bfloat16)
    ours.load_state_dict(saved)
    assert torch.equal(ours.state[param]["mu_product"], cast.float())
    ours.step()
    assert ours._layouts  # on the kernel
    reference = fastoptim.NAdam([param], fused=False)
    reference.load_state_dict(saved)
    assert torch.equal(reference.state[param]["mu_product"], cast)
