"""Kernel planning: which parameters a group's fused kernel updates, the calls that do it, and
the reuse of a group's layout between steps.

A group's parameters with a gradient are checked and split into kernel batches (one per
parameter dtype, state format and scalar dtype) and the rest (left to torch's
implementation). Each batch becomes a :class:`KernelCall` whose ``addresses`` hold one column
per tensor and one row per memory row of the kernel, found by name (``kernel.rows``). While the
same parameters have gradients laid out the same way and the same state tensors, the next step
reuses the calls and only gathers the gradients' addresses.
"""

import contextlib
import operator
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import torch
from torch import Tensor

from fastoptim.kernels.formats import QBLOCK
from fastoptim.options import CAPTURABLE_DEVICES, check_kernel_for_state, scalar_dtype
from fastoptim.state import (
    ABSMAX,
    CODES,
    INT8,
    Declaration,
    DTensor,
    StateFormat,
    buffers,
    local,
    scalars,
    state_format,
)

if TYPE_CHECKING:
    from fastoptim.optimizer import BaseOptimizer

# Storage type markers of the kernels (see fastoptim.kernels.memory); complex tensors are
# updated through their real view.
KERNEL_MARKERS = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bfloat16: np.dtype(np.uint16),
    torch.float16: np.dtype(np.int16),  # float16 bits: Numba has no float16 arrays on the CPU
    torch.complex64: np.dtype(np.float32),
    torch.complex128: np.dtype(np.float64),
}
SCALAR_MARKERS = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
STATE_MARKERS: dict[StateFormat, np.dtype] = {**KERNEL_MARKERS, INT8: np.dtype(np.int8)}

# Numba's default thread pool serves one kernel at a time: Python threads take turns.
KERNEL_LOCK = threading.Lock()


@contextlib.contextmanager
def kernel_turn() -> Iterator[None]:
    """This Python thread's turn to run kernels, on as many threads as torch uses. Numba's
    OpenMP pool, started by the first kernel, resets the thread count that torch shares with
    it (``torch.set_num_threads(1)`` would become 2): the user's count is put back."""
    with KERNEL_LOCK:
        threads = torch.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


@dataclass
class KernelBatch:
    """Parameters of one dtype, state format and scalar dtype that one kernel call updates;
    ``indices`` are their positions among the group's parameters with a gradient."""

    dtype: torch.dtype
    state_format: StateFormat
    scalar_dtype: torch.dtype
    params: list[Tensor] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)


# The arguments every kernel takes before its hyperparameters (KernelCall.arguments).
KERNEL_ARGUMENTS = (
    "memory",
    "sizes",
    "marker",
    "state_marker",
    "step_marker",
    "grad_factor",
    "fresh",
)


@dataclass
class KernelCall:
    """What a fused kernel needs besides the group's hyperparameters.

    ``addresses`` holds one column per tensor and one row per memory row of the kernel (param,
    grad, then its state by name); ``scales`` holds, in the same places, the addresses of 8-bit
    buffers' block scales. ``fresh`` marks tensors whose state this step created; ``key``
    seeds the random bits of stochastic rounding.
    """

    addresses: np.ndarray
    scales: np.ndarray
    sizes: np.ndarray
    marker: np.dtype
    state_marker: np.dtype
    step_marker: np.dtype
    fresh: np.ndarray
    grad_factor: float = 1.0
    key: int = 0
    stochastic: bool = True

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments every kernel takes besides its hyperparameters: ``memory``
        (addresses, scale addresses, random key, stochastic rounding: see
        fastoptim.kernels.memory.open_buffer), sizes, storage markers, ``grad_factor`` (every
        gradient's multiplier: -1 for maximize, times 1/grad_scale) and ``fresh``."""
        return {
            "memory": (self.addresses, self.scales, self.key, self.stochastic),
            "sizes": self.sizes,
            "marker": self.marker,
            "state_marker": self.state_marker,
            "step_marker": self.step_marker,
            "grad_factor": self.grad_factor,
            "fresh": self.fresh,
        }


@dataclass
class LaidOutBatch:
    """One kernel call of a group's layout, with the state tensors its addresses point at
    (``state_keys`` name them in each parameter's state dict)."""

    indices: np.ndarray
    call: KernelCall
    states: list[dict[str, Any]]
    state_keys: list[str]
    state_tensors: list[list[Tensor]]


@dataclass
class GroupPlan:
    """One group's step: the parameters with a gradient, the kernel batches (or the calls
    reused from the group's layout), and the parameters left to torch's implementation."""

    group: dict[str, Any]
    params: list[Tensor]
    batches: list[KernelBatch] = field(default_factory=list)
    others: list[Tensor] = field(default_factory=list)
    calls: list[KernelCall] | None = None


@dataclass
class GroupLayout:
    """A group's kernel calls from its previous step, reused while the same parameters have
    gradients (same storage, same layout) and the same state tensors: then a step only gathers
    the gradients' addresses. ``params`` are those with a gradient."""

    group: dict[str, Any]
    state_table: dict[Tensor, Any]
    group_params: list[Tensor]
    without_grad: list[bool]
    params: list[Tensor]
    param_addresses: list[int]
    grad_specs: list[tuple[torch.Size, torch.dtype]]
    empty: np.ndarray
    distributed: bool
    strided: list[tuple[int, tuple[int, ...]]]
    kernel_keys: list[str]
    batches: list[LaidOutBatch]


def pointers_of(tensors: list[Tensor], distributed: bool = True) -> list[int]:
    """The ``data_ptr()`` of each tensor (of its local shard for a DTensor).
    ``distributed=False`` promises plain tensors (faster)."""
    if not distributed:
        return list(map(Tensor.data_ptr, tensors))
    return [local(t).data_ptr() for t in tensors]


def addresses_of(tensors: list[Tensor]) -> np.ndarray:
    """:func:`pointers_of` as int64, the kernels' address arrays."""
    return np.array(pointers_of(tensors), np.int64)


# A gradient's (shape, dtype): what the kernel layout of a group assumes between steps.
GRAD_SPEC = operator.attrgetter("shape", "dtype")


def kernel_blocker(param: Tensor) -> str | None:
    """Why the fused kernel cannot update ``param`` with its gradient, or None.

    torch already guarantees that ``param.grad`` has the parameter's shape, dtype and device.
    A DTensor (FSDP2) is judged by its local shard, which is what the kernel updates.
    """
    grad = local(param.grad)
    param = local(param)
    if not param.is_cpu:
        return f"it is on {param.device}; fastoptim's kernels run on the CPU"
    if grad.is_sparse:
        return "its gradient is sparse"
    if param.layout is not torch.strided or grad.layout is not torch.strided:
        return "it or its gradient is not a strided (dense) tensor"
    if param.numel() and (param.data_ptr() == 0 or grad.data_ptr() == 0):
        return f"it is a {type(param).__name__} without memory of its own (a wrapper subclass)"
    if param.dtype not in KERNEL_MARKERS:
        return (
            f"its dtype is {param.dtype}; kernels take float32, float64, bfloat16, float16 "
            "and complex"
        )
    if param.is_contiguous():
        if not grad.is_contiguous():
            return "its gradient is not contiguous like the parameter"
    elif not is_dense(param) or grad.stride() != param.stride():
        return "it is not dense, or its gradient has other strides"
    return None


def state_blocker(
    param: Tensor,
    state: dict[str, Any],
    keys: list[str],
    target: StateFormat,
    declared: Declaration,
) -> str | None:
    """Why the kernel cannot use ``param``'s state tensors ``keys`` (dtype, size, layout, or
    not kept in format ``target``), or None. Scalars must be CPU float32 or float64 scalars of
    one dtype. DTensors are judged by their local shards."""
    param = local(param)
    scalar_names = {item.name for item in scalars(declared)}
    signed = {item.name for item in buffers(declared) if not item.non_negative}
    scalar_dtypes = set()
    for key in keys:
        if key in scalar_names:
            value = state.get(key)
            usable = isinstance(value, Tensor) and value.is_cpu and value.numel() == 1
            if not usable or value.dtype not in SCALAR_MARKERS:
                return f"its {key} is not a float32 or float64 CPU scalar"
            scalar_dtypes.add(value.dtype)
            if len(scalar_dtypes) > 1:
                return f"its scalars {sorted(scalar_names)} differ in dtype"
            continue
        if target == INT8:
            codes, scales = state.get(key + CODES), state.get(key + ABSMAX)
            code_dtype = torch.int8 if key in signed else torch.uint8
            if codes is None or scales is None:
                return f"its state lacks {key + CODES!r} or {key + ABSMAX!r}"
            codes, scales = local(codes), local(scales)
            blocks = (param.numel() + QBLOCK - 1) // QBLOCK
            if (
                codes.dtype != code_dtype
                or codes.shape != param.shape
                or codes.stride() != param.stride()
                or scales.dtype != torch.float32
                or scales.shape != (blocks,)
            ):
                return f"its state {key + CODES!r} or {key + ABSMAX!r} has another layout"
            continue
        value = state.get(key)
        if value is None:
            return f"its state lacks {key!r}"
        value = local(value)
        if value.dtype != target or value.shape != param.shape or value.stride() != param.stride():
            return f"its state {key!r} differs from it in dtype, shape or strides"
    return None


def is_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill one block of memory, in some order of dimensions."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda d: d[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def plan_group(optimizer: "BaseOptimizer", group: dict[str, Any], same_states: bool) -> GroupPlan:
    """Check the group's parameters with a gradient and split them between the kernel
    (batches of one dtype) and torch's implementation. Nothing is changed here.
    ``same_states``: the state table holds the same per-parameter dicts as after the previous
    step."""
    if same_states and group["fused"] is not False and not group["differentiable"]:
        reused = reuse_layout(optimizer, group)
        if reused is not None:
            return reused
    optimizer._check_gradients(group)
    params = [p for p in group["params"] if p.grad is not None]
    sparse_error = optimizer._sparse_grad_error(group)
    if sparse_error is not None and any(p.grad.is_sparse for p in params):
        raise RuntimeError(sparse_error)
    if group.get("capturable") and any(p.device.type not in CAPTURABLE_DEVICES for p in params):
        kept = ["params", *(f"{s.name}s" for s in scalars(optimizer.declared_state)[1:])]
        raise AssertionError(  # torch's words: the tensors that must share the device
            f"If capturable=True, {', '.join(kept)} and state_steps must be on supported "
            f"devices: {CAPTURABLE_DEVICES}."
        )
    check_kernel_for_state(group)
    if group["fused"] is False or group["differentiable"] or not params:
        return GroupPlan(group, params, others=params)
    plan = GroupPlan(group, params)
    batches: dict[tuple[torch.dtype, StateFormat, torch.dtype], KernelBatch] = {}
    declared = optimizer.declared_state
    keys = optimizer._kernel_state_keys(group)
    first_scalar = next((item.name for item in scalars(declared)), None)
    for index, param in enumerate(params):
        state = optimizer.state.get(param)
        target = state_format(param, group["state_dtype"])
        blocker = kernel_blocker(param)
        if blocker is None and state:
            blocker = state_blocker(param, state, keys, target, declared)
        if blocker is not None:
            if group["state_dtype"] is not None:
                raise RuntimeError(
                    f"state_dtype={group['state_dtype']!r} needs fastoptim's kernel, which "
                    f"cannot update a parameter: {blocker}"
                )
            if group["fused"] and param.is_cpu:
                raise RuntimeError(f"fused=True cannot update a parameter: {blocker}")
            plan.others.append(param)
            continue
        counted = state and first_scalar is not None
        key = (param.dtype, target, state[first_scalar].dtype if counted else scalar_dtype())
        batch = batches.get(key)
        if batch is None:
            batch = batches[key] = KernelBatch(*key)
        batch.params.append(param)
        batch.indices.append(index)
    plan.batches = list(batches.values())
    return plan


def reuse_layout(optimizer: "BaseOptimizer", group: dict[str, Any]) -> GroupPlan | None:
    """The group's plan of its previous step with this step's gradient addresses, or None
    when anything it depends on has changed (then the group is planned anew). The caller
    has checked that every parameter's state dict is the one of the previous step."""
    layout = optimizer._layouts.get(id(group))
    group_params = group["params"]
    if (
        layout is None
        or layout.group is not group
        or layout.state_table is not optimizer.state
        or len(group_params) != len(layout.without_grad)
        or not all(map(operator.is_, group_params, layout.group_params))
        or optimizer._kernel_state_keys(group) != layout.kernel_keys
    ):
        return None
    grads = [p.grad for p in group_params]
    without_grad = [grad is None for grad in grads]
    if without_grad != layout.without_grad:
        return None
    if any(without_grad):
        grads = [grad for grad in grads if grad is not None]
    if list(map(GRAD_SPEC, grads)) != layout.grad_specs:
        return None
    distributed = layout.distributed
    params = layout.params
    if distributed:
        laid_out = [local(grad).is_contiguous() for grad in grads]
    else:
        laid_out = list(map(Tensor.is_contiguous, grads))
    for index, stride in layout.strided:
        grad = local(grads[index])
        laid_out[index] = grad.layout is torch.strided and grad.stride() == stride
    if not all(laid_out):
        return None
    for batch in layout.batches:
        for key, row in zip(batch.state_keys, batch.state_tensors, strict=True):
            if not all(map(operator.is_, [state.get(key) for state in batch.states], row)):
                return None
    if pointers_of(params, distributed) != layout.param_addresses:
        return None
    grad_pointers = pointers_of(grads, distributed)
    grad_addresses = np.array(grad_pointers, np.int64)
    if 0 in grad_pointers and not (grad_addresses | layout.empty).all():
        return None  # a gradient without memory (meta, ...)
    for batch in layout.batches:  # the calls are the layout's: only the gradients moved
        batch.call.addresses[1] = grad_addresses[batch.indices]
    return GroupPlan(group, params, calls=[batch.call for batch in layout.batches])


def new_calls(optimizer: "BaseOptimizer", plan: GroupPlan) -> list[KernelCall]:
    """Create missing state and the kernel calls of a freshly planned group; remember them
    as the group's layout when the kernel covers the whole group."""
    group, keys = plan.group, optimizer._kernel_state_keys(plan.group)
    scalar_names = {item.name for item in scalars(optimizer.declared_state)}
    rows = optimizer.kernel.rows
    calls, laid_out = [], []
    for batch in plan.batches:
        fresh = np.array([not optimizer.state.get(p) for p in batch.params], np.bool_)
        states = [optimizer._state_of(p, group) for p in batch.params]
        quantized = [key not in scalar_names and batch.state_format == INT8 for key in keys]
        data_keys = [key + CODES if q else key for key, q in zip(keys, quantized, strict=True)]
        scale_keys = [key + ABSMAX for key, q in zip(keys, quantized, strict=True) if q]
        state_tensors = [[state[key] for state in states] for key in data_keys + scale_keys]
        # Each tensor's addresses go in the kernel's row of its name; unused rows stay 0.
        addresses = np.zeros((len(rows), len(batch.params)), np.int64)
        addresses[rows.param] = addresses_of(batch.params)
        addresses[rows.grad] = addresses_of([p.grad for p in batch.params])
        scales = np.zeros_like(addresses)
        scale_rows = iter(state_tensors[len(keys) :])
        for key, q, row in zip(keys, quantized, state_tensors, strict=False):
            addresses[getattr(rows, key)] = addresses_of(row)
            if q:
                scales[getattr(rows, key)] = addresses_of(next(scale_rows))
        sizes = np.array([local(p).numel() for p in batch.params], np.int64)
        if batch.dtype.is_complex:
            sizes *= 2
        call = KernelCall(
            addresses,
            scales,
            sizes,
            KERNEL_MARKERS[batch.dtype],
            STATE_MARKERS[batch.state_format],
            SCALAR_MARKERS[batch.scalar_dtype],
            fresh,
        )
        calls.append(call)
        steady = replace(call, fresh=np.zeros_like(fresh))
        indices = np.array(batch.indices)
        laid_out.append(
            LaidOutBatch(indices, steady, states, data_keys + scale_keys, state_tensors)
        )
    if plan.batches and not plan.others:
        params = plan.params
        optimizer._layouts[id(group)] = GroupLayout(
            group=group,
            state_table=optimizer.state,
            group_params=list(group["params"]),
            without_grad=[p.grad is None for p in group["params"]],
            params=params,
            param_addresses=pointers_of(params),
            grad_specs=[(p.shape, p.dtype) for p in params],
            empty=np.array([p.numel() == 0 for p in params]),
            distributed=DTensor is not None and any(isinstance(p, DTensor) for p in params),
            strided=[
                (i, local(p).stride()) for i, p in enumerate(params) if not local(p).is_contiguous()
            ],
            kernel_keys=keys,
            batches=laid_out,
        )
    return calls


def grad_batch(batch: KernelBatch) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """A kernel batch's gradients as (addresses, sizes, storage marker)."""
    grads = [p.grad for p in batch.params]
    sizes = np.array([local(g).numel() for g in grads], np.int64)
    if batch.dtype.is_complex:
        sizes *= 2
    return addresses_of(grads), sizes, KERNEL_MARKERS[batch.dtype]
